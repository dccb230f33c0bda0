//! Native streams, one suite for every backend that has one (`[backup] method =
//! "btrfs-send"`, `"zfs-send"`): backups received on a destination that can hold the
//! backend's copies, each incremental from the previous backup's snapshot, which stays
//! on the source as the next base. The shared cases (a chain of incrementals restored
//! from the last one under write load; the chain broken each way a user can break it)
//! run once per backend through [`Streams`]; what only one backend has follows.

mod common;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::zfs::{sh, Binlogs, ZfsSandbox};
use common::{restore, restore_with, stderr, stdout_json, time, Sandbox};
use dbsnap_test_support::bank::{self, Commit, Writers};
use dbsnap_test_support::btrfs::LoopBtrfs;
use dbsnap_test_support::mariadb::{self, MariaDb, ServerOptions};
use dbsnap_test_support::zfs_fuse::ZfsFuse;

/// What differs between backends; everything else is the shared body.
trait Streams {
    /// The method the backend names (`btrfs-send`).
    fn method(&self) -> &'static str;
    fn dbsnap(&self, args: &[&str]) -> Output;
    fn socket(&self) -> &Path;
    fn state(&self) -> &Path;
    /// Replace `[backup]`'s keys other than `dest` (and add sections after it).
    fn backup_keys(&self, keys: &str);
    fn backups(&self) -> Vec<PathBuf>;
    /// Everything a run could leave behind (empty = clean).
    fn leftovers(&self) -> Vec<String>;
    /// dbsnap's snapshots on the source, described.
    fn source_snapshots(&self) -> Vec<String>;
    /// How many snapshots one backup keeps on the source as the next base (one per
    /// volume), and that they are protected where the backend protects them.
    fn check_kept_base(&self, kept: &[String]);
    /// Delete a backup's base snapshot on the source, as a user could.
    fn destroy_on_source(&self, snapshot: &str);
    /// Delete a backup at the destination by hand, as a user could.
    fn delete_backup(&self, dir: &Path);
    /// The received copies at the destination hold exactly the backups `backups`.
    fn check_received(&self, backups: &[&serde_json::Value]);
    /// Restore `manifest`'s backup, start a server on it and check it like the
    /// end-to-end test.
    fn restore_and_check(&self, manifest: &serde_json::Value, commits: &[Commit]);
}

/// One backup under 4 bank writers (with MyISAM audit rows); the manifest and the
/// commits the writers saw.
fn backup_under_load(sb: &impl Streams) -> (serde_json::Value, Vec<Commit>) {
    let writers = Writers::start_with_audit(sb.socket(), 4);
    std::thread::sleep(Duration::from_millis(300));
    // --force: some destinations here are on the snapshotted btrfs itself.
    let out = sb.dbsnap(&["backup", "--json", "--force"]);
    let commits = writers.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    // Backups are named by the second.
    std::thread::sleep(Duration::from_millis(1100));
    (stdout_json(&out), commits)
}

fn parent_records(state: &Path) -> usize {
    std::fs::read_dir(state.join("parents"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Four backups under load, the full one and three incrementals; prune all but the last
/// (the next base), restore it on its own, and go on from it.
fn a_chain_of_incremental_streams_restores_from_the_last_one(sb: &impl Streams) {
    let method = sb.method();
    let mut chain = Vec::new();
    for _ in 0..4 {
        chain.push(backup_under_load(sb));
        // Only the newest backup's snapshots stay on the source.
        sb.check_kept_base(&sb.source_snapshots());
        assert_eq!(parent_records(sb.state()), 1);
    }
    let full = &chain[0].0["transfer"];
    assert_eq!(full["method"], method);
    assert!(
        full["base"].is_null() && full["full_because"].is_null(),
        "{full}"
    );
    let full_bytes = full["bytes"].as_u64().unwrap();
    println!(
        "MEASURE {method} full stream: {full_bytes} bytes in {} ms",
        full["duration_ms"]
    );
    for pair in chain.windows(2) {
        let (previous, (m, _)) = (&pair[0].0, &pair[1]);
        let t = &m["transfer"];
        assert_eq!(t["base"], previous["name"], "{t}");
        assert_eq!(t["parent_snapshot"], previous["snapshot"]["name"], "{t}");
        let sent = t["bytes"].as_u64().unwrap();
        println!(
            "MEASURE {method} incremental stream: {sent} bytes in {} ms",
            t["duration_ms"]
        );
        assert!(
            sent < full_bytes / 2,
            "an incremental sent {sent} of {full_bytes} bytes"
        );
    }
    sb.check_received(&chain.iter().map(|(m, _)| m).collect::<Vec<_>>());
    let out = sb.dbsnap(&["list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout_json(&out);
    assert_eq!(listed.as_array().unwrap().len(), 4, "{listed}");
    let out = sb.dbsnap(&["list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    let base = chain[3].0["name"].as_str().unwrap();
    let said = format!("{base} is the base of the next {method}");
    assert!(listed.contains(&said), "{listed}");

    // Older backups go with their received copies; the newest (the next base) stays
    // and restores on its own.
    sb.backup_keys(&format!(
        "method = {method:?}\n[retention]\nkeep_last = 1\n"
    ));
    let out = sb.dbsnap(&["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (last, commits) = chain.last().unwrap();
    assert_eq!(
        sb.backups(),
        vec![PathBuf::from(last["path"].as_str().unwrap())]
    );
    sb.check_received(&[last]);
    sb.restore_and_check(last, commits);
    let out = sb.dbsnap(&["verify", last["path"].as_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // After the prune, the chain goes on from the kept base.
    let (next, _) = backup_under_load(sb);
    assert_eq!(next["transfer"]["base"], last["name"]);
    let kept = next["snapshot"]["name"].as_str().unwrap().to_string();
    let left: Vec<String> = sb
        .leftovers()
        .into_iter()
        .filter(|l| !l.contains(&kept))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The base snapshot deleted on the source, then the base backup deleted at the
/// destination: each time a full stream says why, and the chain starts again. Back
/// to rsync, the kept base is released.
fn a_broken_chain_falls_back_to_a_full_stream_and_says_why(sb: &impl Streams) {
    let method = sb.method();
    let (first, _) = backup_under_load(sb);
    let parent = first["snapshot"]["volumes"][0]["snapshot"]
        .as_str()
        .unwrap();
    sb.destroy_on_source(parent);
    let (second, _) = backup_under_load(sb);
    let t = &second["transfer"];
    assert!(t["base"].is_null(), "{t}");
    let why = t["full_because"].as_str().unwrap();
    assert!(why.contains("gone from the source"), "{t}");
    // The full stream started new chains; the first backup's stayed intact.
    sb.check_received(&[&first, &second]);

    // The chain starts again from the full one.
    let (third, _) = backup_under_load(sb);
    assert_eq!(third["transfer"]["base"], second["name"]);

    sb.delete_backup(Path::new(third["path"].as_str().unwrap()));
    let (fourth, commits) = backup_under_load(sb);
    let t = &fourth["transfer"];
    assert!(t["base"].is_null(), "{t}");
    let why = t["full_because"].as_str().unwrap();
    assert!(why.contains("is gone"), "{t}");
    sb.restore_and_check(&fourth, &commits);

    sb.backup_keys("method = \"rsync\"\n");
    let (rsynced, _) = backup_under_load(sb);
    assert_eq!(rsynced["transfer"]["method"], "rsync");
    let kept = sb.source_snapshots();
    assert!(kept.is_empty(), "{method}: {kept:?}");
    assert_eq!(parent_records(sb.state()), 0);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

// ── btrfs ──

/// A sandbox on btrfs whose destination is a directory on a btrfs filesystem.
struct Btrfs<'a>(&'a Sandbox);

impl Deref for Btrfs<'_> {
    type Target = Sandbox;
    fn deref(&self) -> &Sandbox {
        self.0
    }
}

fn use_method(sb: &Sandbox, dest: &Path, backup_keys: &str) {
    std::fs::create_dir_all(dest).unwrap();
    let config = std::fs::read_to_string(&sb.config).unwrap();
    let start = config.find("[backup]").unwrap();
    sb.write_raw_config(&format!(
        "{}[backup]\ndest = {dest:?}\n{backup_keys}",
        &config[..start]
    ));
}

fn configured_dest(sb: &Sandbox) -> PathBuf {
    let config = std::fs::read_to_string(&sb.config).unwrap();
    let line = config.lines().find(|l| l.starts_with("dest = ")).unwrap();
    PathBuf::from(line["dest = ".len()..].trim_matches('"'))
}

impl Streams for Btrfs<'_> {
    fn method(&self) -> &'static str {
        "btrfs-send"
    }

    fn dbsnap(&self, args: &[&str]) -> Output {
        self.0.dbsnap(args)
    }

    fn socket(&self) -> &Path {
        &self.server.socket
    }

    fn state(&self) -> &Path {
        &self.0.state
    }

    fn backup_keys(&self, keys: &str) {
        use_method(self, &configured_dest(self), keys);
    }

    fn backups(&self) -> Vec<PathBuf> {
        let dest = configured_dest(self);
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dest)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("manifest.toml").exists())
            .collect();
        v.sort();
        v
    }

    fn leftovers(&self) -> Vec<String> {
        // Received copies are subvolumes named like snapshots: only the source's count.
        self.0
            .leftovers()
            .into_iter()
            .filter(|l| !l.starts_with("snapshot ") || l.contains(".dbsnap-snapshots/"))
            .collect()
    }

    /// The dbsnap snapshots on the source (received copies on the same filesystem are
    /// not in the snapshot directory).
    fn source_snapshots(&self) -> Vec<String> {
        self.fs.subvolumes_matching(".dbsnap-snapshots/")
    }

    fn check_kept_base(&self, kept: &[String]) {
        assert_eq!(kept.len(), 1, "{kept:?}");
    }

    fn destroy_on_source(&self, snapshot: &str) {
        let deleted = std::process::Command::new("btrfs")
            .args(["subvolume", "delete", snapshot])
            .status()
            .unwrap();
        assert!(deleted.success());
    }

    fn delete_backup(&self, dir: &Path) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            if entry.path().is_dir() {
                std::process::Command::new("btrfs")
                    .args(["subvolume", "delete"])
                    .arg(entry.path())
                    .status()
                    .unwrap();
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// One read-only subvolume per backup and volume, inside the backup, and no other
    /// received subvolume on the destination's filesystem.
    fn check_received(&self, backups: &[&serde_json::Value]) {
        let dest = configured_dest(self);
        let listed = std::process::Command::new("btrfs")
            .args(["subvolume", "list"])
            .arg(&dest)
            .output()
            .unwrap();
        let received: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter(|l| l.contains("dbsnap-") && !l.contains(".dbsnap-snapshots/"))
            .map(str::to_string)
            .collect();
        let volumes: usize = backups
            .iter()
            .map(|m| m["snapshot"]["volumes"].as_array().unwrap().len())
            .sum();
        assert_eq!(received.len(), volumes, "{received:?}");
        for backup in backups {
            let name = backup["name"].as_str().unwrap();
            assert!(
                received
                    .iter()
                    .any(|r| r.contains(&format!("{name}/dbsnap-"))),
                "{name}: {received:?}"
            );
        }
    }

    fn restore_and_check(&self, manifest: &serde_json::Value, commits: &[Commit]) {
        let backup = PathBuf::from(manifest["path"].as_str().unwrap());
        let name = manifest["name"].as_str().unwrap();
        let restored = self.dir.path().join(format!("restored {name}"));
        let out = restore(self, &backup, &restored, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let copy = MariaDb::start_existing(ServerOptions {
            server_id: 2,
            ..ServerOptions::new(&restored, &self.dir.path().join(format!("run {name}")))
        });
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
    }
}

#[test]
fn btrfs_send_a_chain_of_incremental_streams_restores_from_the_last_one() {
    let sb = Sandbox::with_fs_size(1024);
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 64);
    // A separate btrfs filesystem, as a backup disk would be.
    let disk_dir = sb.dir.path().join("disk");
    std::fs::create_dir(&disk_dir).unwrap();
    let disk = LoopBtrfs::new(&disk_dir, "backup disk", 1024);
    use_method(
        &sb,
        &disk.mountpoint.join("db backups"),
        "method = \"btrfs-send\"\n",
    );
    a_chain_of_incremental_streams_restores_from_the_last_one(&Btrfs(&sb));
}

#[test]
fn btrfs_send_a_broken_chain_falls_back_to_a_full_stream_and_says_why() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let dest = sb.fs.mountpoint.join("backups");
    use_method(&sb, &dest, "method = \"btrfs-send\"\n");
    a_broken_chain_falls_back_to_a_full_stream_and_says_why(&Btrfs(&sb));
}

#[test]
fn btrfs_send_a_destination_that_cannot_receive_is_refused_before_the_lock() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    // The sandbox's destination is on the test machine's own filesystem, not btrfs.
    let dest = sb.dest.clone();
    use_method(&sb, &dest, "method = \"btrfs-send\"\n");
    for command in ["check", "backup"] {
        let out = sb.dbsnap(&[command]);
        assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
        assert!(stderr(&out).contains("not on btrfs"), "{}", stderr(&out));
    }
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    assert!(sb.backups().is_empty());

    // `auto` copies files there instead (dbsnap's local copy engine).
    use_method(&sb, &dest, "method = \"auto\"\n");
    let out = sb.dbsnap(&["check", "--json"]);
    assert_eq!(
        stdout_json(&out)["transfer_method"],
        "copy",
        "{}",
        stderr(&out)
    );
    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)["transfer"]["method"], "copy");
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

/// A full btrfs-send stream (`manifest`'s base snapshot deleted first), slowed down and
/// `kill -9`ed once it has received something.
fn kill_a_full_btrfs_stream_while_receiving(
    sb: &Sandbox,
    dest: &Path,
    manifest: &serde_json::Value,
    log: &Path,
) {
    let parent = manifest["snapshot"]["volumes"][0]["snapshot"]
        .as_str()
        .unwrap();
    assert!(std::process::Command::new("btrfs")
        .args(["subvolume", "delete", parent])
        .status()
        .unwrap()
        .success());
    use_method(sb, dest, "method = \"btrfs-send\"\nbwlimit = \"8MiB\"\n");
    let mut child = std::process::Command::new(common::DBSNAP)
        .arg("--config")
        .arg(&sb.config)
        .args(["backup", "--force"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let receiving = || {
        std::fs::read_dir(dest).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().ends_with(".partial")
                && std::fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_some())
        })
    };
    // Generous: under the whole suite's load on 2 cores the run may take a while to
    // reach its stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !receiving() && std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the backup ended ({status}) before it received anything:\n{said}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        receiving(),
        "the backup never started receiving:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    use_method(sb, dest, "method = \"btrfs-send\"\n");
}

fn partials_in(dest: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dest)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect()
}

/// A stream killed by `kill -9`: `dbsnap cleanup` leaves only the base; killed again,
/// the next backup itself removes the killed run's partial (emptied when its received
/// copy is deleted; a stream never continues one) instead of keeping it for `cleanup`.
#[test]
fn btrfs_send_sigkill_while_receiving_then_cleanup_leaves_only_the_base() {
    // Room for the data and three full streams of it: btrfs frees a deleted copy only
    // at its next commit (up to 30 s later), so the free-space check before the second
    // killed stream may not see the room the first one's left.
    let sb = Sandbox::with_fs_size(1536);
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 48);
    let dest = sb.fs.mountpoint.join("backups");
    use_method(&sb, &dest, "method = \"btrfs-send\"\n");
    let (first, _) = backup_under_load(&Btrfs(&sb));

    kill_a_full_btrfs_stream_while_receiving(
        &sb,
        &dest,
        &first,
        &sb.dir.path().join("killed-run.log"),
    );
    let out = sb.dbsnap(&["cleanup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(partials_in(&dest).is_empty(), "{:?}", partials_in(&dest));
    assert_eq!(
        sb.fs.subvolumes_matching("backups/").len(),
        1,
        "only the first backup's received copy may remain: {:?}",
        sb.fs.subvolumes_matching("backups/")
    );
    assert!(
        Btrfs(&sb).source_snapshots().is_empty(),
        "{:?}",
        Btrfs(&sb).source_snapshots()
    );
    let journal = std::fs::read_to_string(sb.state.join("journal.json")).unwrap();
    assert_eq!(journal.trim(), "[]");

    let (next, commits) = backup_under_load(&Btrfs(&sb));
    Btrfs(&sb).restore_and_check(&next, &commits);

    kill_a_full_btrfs_stream_while_receiving(
        &sb,
        &dest,
        &next,
        &sb.dir.path().join("killed-again.log"),
    );
    assert_eq!(partials_in(&dest).len(), 1);
    let (after, _) = backup_under_load(&Btrfs(&sb));
    assert!(partials_in(&dest).is_empty(), "{:?}", partials_in(&dest));
    assert!(after["transfer"]["resumed_from"].is_null(), "{after}");
    let journal = std::fs::read_to_string(sb.state.join("journal.json")).unwrap();
    assert_eq!(journal.trim(), "[]");
}

/// A subvolume nested in the datadir (here: one database's directory) is not in the
/// datadir's snapshot: it is snapshotted as a volume of its own, and both methods
/// bring it back in the restore.
#[test]
fn btrfs_send_a_subvolume_nested_in_the_datadir_is_backed_up_by_both_methods() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let datadir = sb.fs.mountpoint.join("mysql");
    assert!(std::process::Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(datadir.join("nested_db"))
        .status()
        .unwrap()
        .success());
    sb.server.sql(
        "CREATE TABLE nested_db.t (i INT PRIMARY KEY) ENGINE=InnoDB;
         INSERT INTO nested_db.t SELECT seq FROM bank.seq_1_to_100",
    );
    let on_btrfs = sb.fs.mountpoint.join("backups");
    for (dest, keys) in [
        (sb.dest.clone(), "method = \"rsync\"\n"),
        (on_btrfs, "method = \"btrfs-send\"\n"),
    ] {
        use_method(&sb, &dest, keys);
        let (manifest, commits) = backup_under_load(&Btrfs(&sb));
        assert_eq!(
            manifest["snapshot"]["volumes"].as_array().unwrap().len(),
            2,
            "{}",
            manifest["snapshot"]
        );
        Btrfs(&sb).restore_and_check(&manifest, &commits);
        let name = manifest["name"].as_str().unwrap();
        let restored = MariaDb::start_existing(ServerOptions {
            server_id: 3,
            ..ServerOptions::new(
                &sb.dir.path().join(format!("restored {name}")),
                &sb.dir.path().join(format!("run again {name}")),
            )
        });
        assert_eq!(
            restored.sql("SELECT COUNT(*) FROM nested_db.t"),
            "100",
            "{keys}"
        );
    }
}

/// A backup disk with room for one full copy but not two: an incremental stream needs
/// only room for an increment, not for the whole data again.
#[test]
fn btrfs_send_a_small_backup_disk_takes_increments_it_has_no_room_to_take_in_full() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 96);
    let disk_dir = sb.dir.path().join("disk");
    std::fs::create_dir(&disk_dir).unwrap();
    let disk = LoopBtrfs::new(&disk_dir, "small disk", 480);
    let dest = disk.mountpoint.join("backups");
    use_method(&sb, &dest, "method = \"btrfs-send\"\n");
    let (first, _) = backup_under_load(&Btrfs(&sb));
    let free = nix::sys::statvfs::statvfs(&dest).unwrap();
    let free = free.blocks_available() as u64 * free.fragment_size() as u64;
    let data: u64 = walkdir::WalkDir::new(sb.fs.mountpoint.join("mysql"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "full stream {} bytes; {free} bytes free afterwards; data {data} bytes",
        first["transfer"]["bytes"]
    );
    assert!(
        free < data,
        "the disk is too big for this test: {free} free, data {data}"
    );

    let out = sb.dbsnap(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("btrfs-send, incremental from backup"),
        "{said}"
    );
    let (second, commits) = backup_under_load(&Btrfs(&sb));
    assert_eq!(second["transfer"]["base"], first["name"]);
    Btrfs(&sb).restore_and_check(&second, &commits);
}

// ── zfs (zfs-fuse on the host) ──

/// A sandbox on zfs-fuse whose destination is a dataset of a second pool.
struct Zfs<'a> {
    sb: &'a ZfsSandbox,
    /// The destination's dataset; received copies go below it.
    dest_dataset: &'a str,
}

impl Deref for Zfs<'_> {
    type Target = ZfsSandbox;
    fn deref(&self) -> &ZfsSandbox {
        self.sb
    }
}

/// A server on two datasets of one pool (datadir, binlogs in a child dataset inside
/// it), and the destination on the dataset `<backup pool>/db backups` (its mount point;
/// received copies then appear in `dest/dbsnap-received`, which list and prune must
/// ignore).
fn zfs_sandbox(zfs: &mut ZfsFuse, method: &str) -> (ZfsSandbox, String) {
    // Room for the filler, its binlog events and the blocks the kept base snapshot pins
    // (256 MiB filled up on a loaded machine, where the writers commit longer).
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
    // Room for several full copies: dbsnap checks the destination has room for one
    // before every backup, even one that will be an incremental stream.
    let backup_pool = zfs.create_pool_sized("dbsnapd", 1024);
    let dest_dataset = format!("{backup_pool}/db backups");
    sh("zfs", &["create", &dest_dataset]);
    sb.dest = zfs.mount_root(&backup_pool).join("db backups");
    sb.write_config("", &format!("method = {method:?}"));
    (sb, dest_dataset)
}

fn zfs_names(kind: &str, root: &str) -> Vec<String> {
    sh("zfs", &["list", "-H", "-t", kind, "-o", "name", "-r", root])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Received snapshots and datasets below the destination's dataset (the container
/// itself excluded).
fn received(dest_dataset: &str) -> (Vec<String>, Vec<String>) {
    let container = format!("{dest_dataset}/dbsnap-received");
    let datasets = zfs_names("filesystem", dest_dataset)
        .into_iter()
        .filter(|d| d.starts_with(&format!("{container}/")))
        .collect();
    (zfs_names("snapshot", dest_dataset), datasets)
}

impl Streams for Zfs<'_> {
    fn method(&self) -> &'static str {
        "zfs-send"
    }

    fn dbsnap(&self, args: &[&str]) -> Output {
        self.sb.dbsnap(args)
    }

    fn socket(&self) -> &Path {
        &self.server.socket
    }

    fn state(&self) -> &Path {
        &self.sb.state
    }

    fn backup_keys(&self, keys: &str) {
        self.write_config("", keys);
    }

    fn backups(&self) -> Vec<PathBuf> {
        self.sb.backups()
    }

    fn leftovers(&self) -> Vec<String> {
        self.sb.leftovers()
    }

    /// dbsnap's snapshots on the source datasets, with their hold counts.
    fn source_snapshots(&self) -> Vec<String> {
        zfs_names("snapshot", &self.pool)
            .into_iter()
            .map(|s| {
                let refs = sh("zfs", &["get", "-H", "-p", "-o", "value", "userrefs", &s]);
                format!("{s} (userrefs {})", refs.trim())
            })
            .collect()
    }

    /// One per dataset, held.
    fn check_kept_base(&self, kept: &[String]) {
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(kept.iter().all(|s| s.ends_with("(userrefs 1)")), "{kept:?}");
    }

    fn destroy_on_source(&self, snapshot: &str) {
        sh("zfs", &["release", "dbsnap", snapshot]);
        sh("zfs", &["destroy", snapshot]);
    }

    /// By hand, like a user would (prune keeps the base).
    fn delete_backup(&self, dir: &Path) {
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A chain per dataset: one received snapshot per backup and dataset whose chain
    /// goes on, and one read-only copy per backup and dataset.
    fn check_received(&self, backups: &[&serde_json::Value]) {
        let (snapshots, datasets) = received(self.dest_dataset);
        let copies = datasets.iter().filter(|d| !d.ends_with(".stream")).count();
        assert_eq!(copies, 2 * backups.len(), "{datasets:?}");
        assert_eq!(snapshots.len(), 2 * backups.len(), "{snapshots:?}");
        // A chain starts with each backup whose base is not among them.
        let names: Vec<&serde_json::Value> = backups.iter().map(|b| &b["name"]).collect();
        let starts = backups
            .iter()
            .filter(|b| !names.contains(&&b["transfer"]["base"]))
            .count();
        let streams = datasets.iter().filter(|d| d.ends_with(".stream")).count();
        assert_eq!(streams, 2 * starts, "{datasets:?}");
        for backup in backups {
            let set = backup["snapshot"]["name"].as_str().unwrap();
            let theirs = snapshots.iter().filter(|s| s.ends_with(&format!("@{set}")));
            assert_eq!(theirs.count(), 2, "{set}: {snapshots:?}");
        }
    }

    fn restore_and_check(&self, manifest: &serde_json::Value, commits: &[Commit]) {
        let backup = PathBuf::from(manifest["path"].as_str().unwrap());
        let name = manifest["name"].as_str().unwrap();
        let restored = self.dir.join(format!("restored {name}"));
        restore_with(&self.config, &backup, &restored, &[]);
        let mut options = ServerOptions::new(&restored, &self.dir.join(format!("run {name}")));
        options.server_id = 2;
        options.log_bin = Some(restored.join("binlog").join("binlog"));
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
}

#[test]
fn zfs_send_a_chain_of_incremental_streams_restores_from_the_last_one() {
    let name = "zfs_send_a_chain_of_incremental_streams_restores_from_the_last_one";
    let Some(mut zfs) = ZfsFuse::enter(name) else {
        return;
    };
    let (sb, dest_dataset) = zfs_sandbox(&mut zfs, "zfs-send");
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 16);
    let sb = Zfs {
        sb: &sb,
        dest_dataset: &dest_dataset,
    };
    a_chain_of_incremental_streams_restores_from_the_last_one(&sb);
}

#[test]
fn zfs_send_a_broken_chain_falls_back_to_a_full_stream_and_says_why() {
    let name = "zfs_send_a_broken_chain_falls_back_to_a_full_stream_and_says_why";
    let Some(mut zfs) = ZfsFuse::enter(name) else {
        return;
    };
    let (sb, dest_dataset) = zfs_sandbox(&mut zfs, "zfs-send");
    bank::create(&sb.server);
    let sb = Zfs {
        sb: &sb,
        dest_dataset: &dest_dataset,
    };
    a_broken_chain_falls_back_to_a_full_stream_and_says_why(&sb);
}

/// What a run left behind, apart from the snapshots kept as the next base.
fn leftovers(sb: &Zfs, kept: &serde_json::Value) -> Vec<String> {
    let kept = format!("@{}", kept["snapshot"]["name"].as_str().unwrap());
    let mut left = sb.sb.leftovers();
    left.retain(|l| !l.contains(&kept));
    left
}

/// The `zfs receive` processes that dbsnap `pid` started.
fn receiving(pid: u32) -> bool {
    let out = std::process::Command::new("pgrep")
        .args(["-P", &pid.to_string(), "-f", "zfs receive"])
        .output()
        .unwrap();
    out.status.success()
}

#[test]
fn zfs_send_a_destination_not_on_zfs_is_refused_before_the_lock() {
    let Some(mut zfs) =
        ZfsFuse::enter("zfs_send_a_destination_not_on_zfs_is_refused_before_the_lock")
    else {
        return;
    };
    let pool = zfs.create_pool("dbsnapn");
    let root = zfs.mount_root(&pool);
    let template = zfs.dir().join("template");
    mariadb::install(&template);
    // The sandbox's own destination is on the test machine's filesystem, not ZFS.
    let sb = ZfsSandbox::new(
        &pool,
        &root,
        zfs.dir(),
        Binlogs::ChildOfDatadir,
        &template,
        "",
    );
    bank::create(&sb.server);
    sb.write_config("", "method = \"zfs-send\"");
    let out = sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("not on ZFS"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("lock was released"),
        "{}",
        stderr(&out)
    );
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    assert!(sb.backups().is_empty());

    // `auto` copies files there instead (dbsnap's local copy engine).
    sb.write_config("", "method = \"auto\"");
    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)["transfer"]["method"], "copy");
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn zfs_send_sigkill_during_a_stream_then_cleanup_leaves_nothing() {
    let Some(mut zfs) =
        ZfsFuse::enter("zfs_send_sigkill_during_a_stream_then_cleanup_leaves_nothing")
    else {
        return;
    };
    let (sb, dest_dataset) = zfs_sandbox(&mut zfs, "zfs-send");
    let sb = Zfs {
        sb: &sb,
        dest_dataset: &dest_dataset,
    };
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 24);
    // `auto` chooses the stream for the zfs backend and a destination on ZFS.
    sb.write_config("", "method = \"auto\"");
    let (first, _) = backup_under_load(&sb);
    assert_eq!(first["transfer"]["method"], "zfs-send");
    let before = received(&dest_dataset);

    // Killed while receiving: first an incremental, then (after the base is gone) a
    // full stream into a new chain.
    for kind in ["incremental", "full"] {
        if kind == "full" {
            let parent = first["snapshot"]["volumes"][0]["snapshot"]
                .as_str()
                .unwrap();
            sh("zfs", &["release", "dbsnap", parent]);
            sh("zfs", &["destroy", parent]);
        } else {
            bank::add_filler(&sb.server, 16);
        }
        let mut child = std::process::Command::new(common::DBSNAP)
            .arg("--config")
            .arg(&sb.config)
            .arg("backup")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !receiving(child.id()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let was_receiving = receiving(child.id());
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            was_receiving,
            "the {kind} backup never started receiving: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let out = sb.dbsnap(&["cleanup", "--json"]);
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
        assert!(
            leftovers(&sb, &first).is_empty(),
            "{:?}",
            leftovers(&sb, &first)
        );
        assert_eq!(received(&dest_dataset), before, "after the {kind} one");
    }
}
