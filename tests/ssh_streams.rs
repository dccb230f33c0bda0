//! Native streams to a backup host over ssh (`btrfs send | ssh HOST btrfs receive`,
//! `zfs send | ssh HOST zfs receive`): a real sshd started by the test serves (a) a
//! btrfs loop filesystem and (b) a zfs-fuse pool. For zfs, the test runs in the private
//! mount namespace of its zfs-fuse daemon (tests/support/src/zfs_fuse.rs) and starts
//! its sshd there, so the sessions' `zfs` commands reach that daemon.
//!
//! Each backend: a full stream and two incrementals under 8 bank writers, the last
//! restored from the backup host and checked; prune over ssh deletes the received
//! copies there but not the base; a stream cut off by a lost connection fails with exit
//! code 14 and one cut off by `kill -9` of dbsnap is cleaned up by `dbsnap cleanup`,
//! both leaving nothing on the backup host, and the next run succeeds.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::zfs::{sh, Binlogs, ZfsSandbox};
use common::{dbsnap_with, stderr, stdout_json, time, Sandbox, DBSNAP};
use dbsnap_test_support::bank::{self, Commit, Writers};
use dbsnap_test_support::btrfs::LoopBtrfs;
use dbsnap_test_support::mariadb::{self, MariaDb, ServerOptions};
use dbsnap_test_support::sshd::Sshd;
use dbsnap_test_support::zfs_fuse::ZfsFuse;

/// The configuration of a backup over ssh: `backend` snapshots, `[backup] dest` the
/// `url`, with `backup_keys` in `[backup]` and `sections` after `[backup.ssh]`.
struct Config<'a> {
    path: &'a Path,
    state: &'a Path,
    socket: &'a Path,
    backend: &'a str,
    url: String,
    sshd: &'a Sshd,
}

impl Config<'_> {
    fn write(&self, backup_keys: &str, sections: &str) {
        std::fs::write(
            self.path,
            format!(
                "state_dir = {state:?}\n\n[mysql]\nsocket = {socket:?}\nuser = \"root\"\n\n\
                 [snapshot]\nbackend = {backend:?}\n\n[backup]\ndest = {dest:?}\n{backup_keys}\n\n\
                 [backup.ssh]\nidentity_file = {key:?}\nknown_hosts = {known:?}\n\n{sections}\n",
                state = self.state,
                socket = self.socket,
                backend = self.backend,
                dest = self.url,
                key = self.sshd.identity,
                known = self.sshd.known_hosts,
            ),
        )
        .unwrap();
    }

    fn dbsnap(&self, args: &[&str]) -> Output {
        dbsnap_with(self.path, args)
    }

    /// `dbsnap backup` in the background, its log going to `log`.
    fn spawn_backup(&self, log: &Path) -> Child {
        Command::new(DBSNAP)
            .arg("--config")
            .arg(self.path)
            .arg("backup")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    }
}

/// One backup under 8 bank writers: its manifest and the commits the writers saw.
fn backup_under_load(config: &Config, socket: &Path) -> (serde_json::Value, Vec<Commit>) {
    let writers = Writers::start(socket, 8);
    std::thread::sleep(Duration::from_millis(300));
    let out = config.dbsnap(&["backup", "--json"]);
    let commits = writers.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    // Backups are named by the second.
    std::thread::sleep(Duration::from_millis(1100));
    (stdout_json(&out), commits)
}

/// Sessions sshd accepted so far (each is one ssh connection).
fn connections(sshd: &Sshd) -> usize {
    sshd.log_text().matches("Accepted publickey").count()
}

/// A full backup and two incrementals, each over one ssh connection, each incremental
/// sending less than `1 / fraction` of the full one. Returns them with the commits each
/// saw.
fn a_full_stream_and_two_incrementals(
    config: &Config,
    socket: &Path,
    method: &str,
    fraction: u64,
) -> Vec<(serde_json::Value, Vec<Commit>)> {
    let mut chain: Vec<(serde_json::Value, Vec<Commit>)> = Vec::new();
    for _ in 0..3 {
        let before = connections(config.sshd);
        let (manifest, commits) = backup_under_load(config, socket);
        assert_eq!(
            connections(config.sshd) - before,
            1,
            "one ssh connection for the whole backup: {}",
            config.sshd.log_text()
        );
        let t = &manifest["transfer"];
        assert_eq!(t["method"], method, "{t}");
        match chain.last() {
            None => assert!(t["base"].is_null() && t["full_because"].is_null(), "{t}"),
            Some((previous, _)) => assert_eq!(t["base"], previous["name"], "{t}"),
        }
        chain.push((manifest, commits));
    }
    let full = chain[0].0["transfer"]["bytes"].as_u64().unwrap();
    println!("MEASURE {method} over ssh, full stream: {full} bytes");
    for (m, _) in &chain[1..] {
        let sent = m["transfer"]["bytes"].as_u64().unwrap();
        println!("MEASURE {method} over ssh, incremental stream: {sent} bytes");
        assert!(
            sent < full / fraction,
            "an incremental sent {sent} of {full} bytes"
        );
    }
    chain
}

/// Restore the backup `manifest` names from the backup host (by name: pulled over
/// ssh), check its binlog ends at the recorded position (`binlog_dir` relative to the
/// restored datadir), start a server on it and check it against the commits.
fn restore_from_the_backup_host_and_check(
    config: &Config,
    scratch: &Path,
    binlog_dir: &str,
    manifest: &serde_json::Value,
    commits: &[Commit],
) {
    let name = manifest["name"].as_str().unwrap();
    let restored = scratch.join(format!("restored {name}"));
    let out = config.dbsnap(&["restore", name, "--datadir", restored.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let binlogs = restored.join(binlog_dir);
    let binlog = manifest["coordinates"]["binlog_file"].as_str().unwrap();
    let position = manifest["coordinates"]["binlog_position"].as_u64().unwrap();
    assert_eq!(
        std::fs::metadata(binlogs.join(binlog)).unwrap().len(),
        position,
        "the restored binlog ends at the recorded position"
    );
    let mut options = ServerOptions::new(&restored, &scratch.join(format!("run {name}")));
    options.server_id = 2;
    options.log_bin = Some(binlogs.join("binlog"));
    let copy = MariaDb::start_existing(options);
    let verdict = bank::assert_consistent(
        &copy,
        commits,
        time(&manifest["lock"]["acquired_at"]),
        time(&manifest["lock"]["released_at"]),
    );
    eprintln!("{name}: {verdict:?}");
    assert_eq!(
        copy.sql("SELECT @@gtid_binlog_pos"),
        manifest["coordinates"]["gtid_binlog_pos"].as_str().unwrap(),
        "the restored copy's GTID position is not the manifest's"
    );
    copy.stop();
}

/// Wait (up to a minute) until `receiving()`, then a moment more, so the stream is
/// under way.
fn wait_until(receiving: impl Fn() -> bool, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !receiving() && Instant::now() < deadline {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before it received anything"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(receiving(), "the backup never started receiving");
    std::thread::sleep(Duration::from_millis(500));
}

/// The ssh connection cut off mid-stream (every sshd session killed): exit code 14
/// naming the backup host, and the run deletes what was received. Then dbsnap killed
/// mid-stream: `dbsnap cleanup` deletes it. `clean` asserts nothing is left.
fn interrupted_streams_leave_nothing(
    config: &Config,
    receiving: &dyn Fn() -> bool,
    clean: &dyn Fn(&str),
) {
    let log = config.state.with_extension("backup.log");
    let mut child = config.spawn_backup(&log);
    wait_until(receiving, &mut child);
    assert!(config.sshd.kill_sessions() >= 1);
    let status = child.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(14), "{said}");
    assert!(said.contains("connection to the backup host"), "{said}");
    clean("after the lost connection");
    // The cut-off receive may take a moment to end on the backup host.
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiving() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut child = config.spawn_backup(&log);
    wait_until(receiving, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    let out = config.dbsnap(&["cleanup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let released = stdout_json(&out)["released"].clone();
    assert!(
        released
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().contains("received copy")),
        "{released}"
    );
    clean("after kill -9 and cleanup");
}

// ── btrfs ──

/// The backups (directories with a manifest) in `dir`.
fn backups_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("manifest.toml").exists())
        .collect();
    v.sort();
    v
}

fn partials_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect()
}

/// A server on btrfs and a backup host whose destination directory (named to break
/// any shell that would see it) is on a btrfs filesystem of its own.
struct BtrfsHost {
    sb: Sandbox,
    disk: LoopBtrfs,
    sshd: Sshd,
    dir: PathBuf,
}

impl BtrfsHost {
    fn new(filler_mib: u64) -> BtrfsHost {
        let sb = Sandbox::with_fs_size(1024);
        bank::create(&sb.server);
        bank::add_filler(&sb.server, filler_mib);
        let disk_dir = sb.dir.path().join("disk");
        std::fs::create_dir(&disk_dir).unwrap();
        let disk = LoopBtrfs::new(&disk_dir, "backup disk", 1024);
        let dir = disk.mountpoint.join("db backups; $(touch pwned) 'q'");
        std::fs::create_dir(&dir).unwrap();
        let sshd = Sshd::start();
        BtrfsHost {
            sb,
            disk,
            sshd,
            dir,
        }
    }

    fn config(&self) -> Config<'_> {
        Config {
            path: &self.sb.config,
            state: &self.sb.state,
            socket: &self.sb.server.socket,
            backend: "btrfs",
            url: self.sshd.url(&self.dir),
            sshd: &self.sshd,
        }
    }

    /// Received copies on the backup disk.
    fn received(&self) -> Vec<String> {
        self.disk.subvolumes_matching("dbsnap-")
    }

    fn nothing_executed(&self) {
        for canary in [
            self.dir.join("pwned"),
            PathBuf::from("pwned"),
            "/root/pwned".into(),
        ] {
            assert!(!canary.exists(), "{} was created", canary.display());
        }
    }
}

#[test]
fn btrfs_send_over_ssh_a_chain_under_load_restores_from_the_backup_host_and_prune_keeps_the_base() {
    let host = BtrfsHost::new(64);
    let config = host.config();
    config.write("method = \"btrfs-send\"", "");
    let chain =
        a_full_stream_and_two_incrementals(&config, &host.sb.server.socket, "btrfs-send", 4);
    assert_eq!(host.received().len(), 3, "{:?}", host.received());
    assert!(partials_in(&host.dir).is_empty());
    host.nothing_executed();

    let (last, commits) = chain.last().unwrap();
    restore_from_the_backup_host_and_check(&config, host.sb.dir.path(), "", last, commits);

    // Prune deletes the older backups' received copies there; the base stays.
    config.write("method = \"btrfs-send\"", "[retention]\nkeep_last = 1\n");
    let out = config.dbsnap(&["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        backups_in(&host.dir),
        vec![PathBuf::from(last["path"].as_str().unwrap())]
    );
    let received = host.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(
        received[0].contains(last["name"].as_str().unwrap()),
        "{received:?}"
    );

    // The chain goes on from the kept base.
    let (next, _) = backup_under_load(&config, &host.sb.server.socket);
    assert_eq!(next["transfer"]["base"], last["name"]);
    let kept = next["snapshot"]["name"].as_str().unwrap().to_string();
    let left: Vec<String> = host
        .sb
        .leftovers()
        .into_iter()
        .filter(|l| !l.contains(&kept))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    host.nothing_executed();
}

#[test]
fn btrfs_send_over_ssh_a_lost_connection_exits_14_and_kill_9_is_cleaned_up_then_the_next_run_succeeds(
) {
    let host = BtrfsHost::new(48);
    let config = host.config();
    // Slowed down so that it can be caught mid-stream.
    config.write("method = \"btrfs-send\"\nbwlimit = \"4MiB\"", "");
    let receiving = || {
        partials_in(&host.dir)
            .iter()
            .any(|p| std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some()))
    };
    let clean = |when: &str| {
        assert!(
            partials_in(&host.dir).is_empty(),
            "{when}: {:?}",
            partials_in(&host.dir)
        );
        assert!(host.received().is_empty(), "{when}: {:?}", host.received());
        let left = host.sb.leftovers();
        assert!(left.is_empty(), "{when}: {left:?}");
    };
    interrupted_streams_leave_nothing(&config, &receiving, &clean);

    config.write("method = \"btrfs-send\"", "");
    let (next, commits) = backup_under_load(&config, &host.sb.server.socket);
    assert!(next["transfer"]["base"].is_null(), "{}", next["transfer"]);
    restore_from_the_backup_host_and_check(&config, host.sb.dir.path(), "", &next, &commits);
    host.nothing_executed();
}

// ── zfs (zfs-fuse, in the test's mount namespace) ──

/// A server on two datasets of one pool, and a backup host (an sshd in this namespace)
/// whose destination is the dataset `<backup pool>/db backups`. Returns the sandbox,
/// the destination's dataset and the sshd.
fn zfs_host(zfs: &mut ZfsFuse, filler_mib: u64) -> (ZfsSandbox, String, Sshd) {
    let pool = zfs.create_pool_sized("dbsnaps", 768);
    let root = zfs.mount_root(&pool);
    let template = zfs.dir().join("template");
    mariadb::install(&template);
    let mut sb = ZfsSandbox::new(
        &pool,
        &root,
        zfs.dir(),
        Binlogs::ChildOfDatadir,
        &template,
        "",
    );
    bank::create(&sb.server);
    bank::add_filler(&sb.server, filler_mib);
    let backup_pool = zfs.create_pool_sized("dbsnapd", 1024);
    let dest_dataset = format!("{backup_pool}/db backups");
    sh("zfs", &["create", &dest_dataset]);
    sb.dest = zfs.mount_root(&backup_pool).join("db backups");
    (sb, dest_dataset, Sshd::start())
}

fn zfs_config<'a>(sb: &'a ZfsSandbox, sshd: &'a Sshd) -> Config<'a> {
    Config {
        path: &sb.config,
        state: &sb.state,
        socket: &sb.server.socket,
        backend: "zfs",
        url: sshd.url(&sb.dest),
        sshd,
    }
}

/// Received datasets and snapshots below the destination's dataset.
fn zfs_received(dest_dataset: &str) -> Vec<String> {
    sh(
        "zfs",
        &[
            "list",
            "-H",
            "-t",
            "filesystem,snapshot",
            "-o",
            "name",
            "-r",
            dest_dataset,
        ],
    )
    .lines()
    .filter(|n| n.contains("/dbsnap-received/"))
    .map(str::to_string)
    .collect()
}

#[test]
fn zfs_send_over_ssh_a_chain_under_load_restores_from_the_backup_host_and_prune_keeps_the_base() {
    let name =
        "zfs_send_over_ssh_a_chain_under_load_restores_from_the_backup_host_and_prune_keeps_the_base";
    let Some(mut zfs) = ZfsFuse::enter(name) else {
        return;
    };
    let (sb, dest_dataset, sshd) = zfs_host(&mut zfs, 64);
    let config = zfs_config(&sb, &sshd);
    config.write("method = \"zfs-send\"", "");
    // zfs-fuse here is slow (a backup under load takes tens of seconds, all of them
    // churn for the next increment: redo log, undo, binlog) and sends whole records:
    // below half the full stream, as in native_streams.
    let chain = a_full_stream_and_two_incrementals(&config, &sb.server.socket, "zfs-send", 2);
    // Two datasets: per backup a received snapshot and a read-only copy of each; one
    // chain dataset per dataset.
    let received = zfs_received(&dest_dataset);
    let snapshots = received.iter().filter(|r| r.contains('@')).count();
    let chains = received.iter().filter(|r| r.ends_with(".stream")).count();
    assert_eq!(
        (snapshots, chains, received.len()),
        (6, 2, 14),
        "{received:?}"
    );

    let (last, commits) = chain.last().unwrap();
    restore_from_the_backup_host_and_check(&config, &sb.dir, "binlog", last, commits);

    config.write("method = \"zfs-send\"", "[retention]\nkeep_last = 1\n");
    let out = config.dbsnap(&["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        sb.backups(),
        vec![PathBuf::from(last["path"].as_str().unwrap())]
    );
    let set = last["snapshot"]["name"].as_str().unwrap();
    let received = zfs_received(&dest_dataset);
    let snapshots: Vec<&String> = received.iter().filter(|r| r.contains('@')).collect();
    assert_eq!(snapshots.len(), 2, "{received:?}");
    assert!(
        snapshots.iter().all(|s| s.ends_with(&format!("@{set}"))),
        "{received:?}"
    );

    let (next, _) = backup_under_load(&config, &sb.server.socket);
    assert_eq!(next["transfer"]["base"], last["name"]);
    let kept = format!("@{}", next["snapshot"]["name"].as_str().unwrap());
    let mut left = sb.leftovers();
    left.retain(|l| !l.contains(&kept));
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn zfs_send_over_ssh_a_lost_connection_exits_14_and_kill_9_is_cleaned_up_then_the_next_run_succeeds(
) {
    let name = "zfs_send_over_ssh_a_lost_connection_exits_14_and_kill_9_is_cleaned_up_then_the_next_run_succeeds";
    let Some(mut zfs) = ZfsFuse::enter(name) else {
        return;
    };
    let (sb, dest_dataset, sshd) = zfs_host(&mut zfs, 24);
    let config = zfs_config(&sb, &sshd);
    config.write("method = \"zfs-send\"\nbwlimit = \"2MiB\"", "");
    // The receive runs on the backup host, under its sshd: found by its target.
    let pattern = format!("zfs receive -u {dest_dataset}/");
    let receiving = || {
        Command::new("pgrep")
            .args(["-f", &pattern])
            .status()
            .unwrap()
            .success()
    };
    let clean = |when: &str| {
        let received = zfs_received(&dest_dataset);
        assert!(received.is_empty(), "{when}: {received:?}");
        let left = sb.leftovers();
        assert!(left.is_empty(), "{when}: {left:?}");
    };
    interrupted_streams_leave_nothing(&config, &receiving, &clean);

    config.write("method = \"zfs-send\"", "");
    let (next, commits) = backup_under_load(&config, &sb.server.socket);
    assert_eq!(next["transfer"]["method"], "zfs-send");
    restore_from_the_backup_host_and_check(&config, &sb.dir, "binlog", &next, &commits);
}
