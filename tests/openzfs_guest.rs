//! `dbsnap backup` end to end on real OpenZFS (2.1, Debian's zfs-dkms), which the host
//! kernel lacks: `openzfs_backup_suite` boots the TCG guest once and runs every
//! `in_guest_` test of this binary inside (see `dbsnap_test_support::openzfs`).
//!
//! What only OpenZFS shows: both datasets are snapshotted in ONE `zfs snapshot` call (one
//! transaction group), so the manifest says `atomic = true` and `--lock none` is accepted
//! for an InnoDB-only schema; and the copy reads `.zfs/snapshot/<name>` instead of a
//! clone (a clone on request, `read_via = "clone"`).
//!
//! The modules and userland come from `tests/guest/zfs-openzfs-build.sh` (cached; CI runs
//! it as its own step first, so its minutes show up there and not here).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::zfs::{sh, Binlogs, ZfsSandbox};
use dbsnap_test_support::bank;
use dbsnap_test_support::openzfs::{self, OpenZfs, Pool};
use dbsnap_test_support::sshd::Sshd;

/// Each pool holds a server under the bank workload plus its backups' read paths.
const OPENZFS: OpenZfs = OpenZfs {
    guest: "openzfs-backup",
    suite: "OpenZFS backup suite",
    // The pools live on files in tmpfs, i.e. in this guest's RAM already; an ARC of up to
    // half the RAM on top squeezes the servers and copies (2 GiB guest).
    arc_max_mib: Some(256),
    tmpfs_mib: 700,
    pool_mib: 640,
};

#[test]
fn openzfs_backup_suite() {
    OPENZFS.run_suite();
}

/// A MariaDB on two datasets of `pool`; `zfs` is the `[snapshot.zfs]` section. Declare the
/// pool before the sandbox, so that it is dropped after the server.
fn sandbox(pool: &Pool, binlogs: Binlogs, zfs: &str) -> ZfsSandbox {
    let scratch = pool.dir().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    ZfsSandbox::new(
        &pool.name,
        &pool.root,
        &scratch,
        binlogs,
        &openzfs::template_datadir(),
        zfs,
    )
}

/// `[hooks]` that append the path the copy reads the datadir from to `file`.
fn record_read_path(file: &Path) -> String {
    let script = format!("echo \"$DBSNAP_SNAPSHOT_PATH\" >> '{}'", file.display());
    format!("[hooks]\npost_snapshot = [\"/bin/sh\", \"-c\", {script:?}]\n")
}

/// The last path recorded by [`record_read_path`].
fn last_read_path(file: &Path) -> PathBuf {
    let text = std::fs::read_to_string(file).unwrap();
    PathBuf::from(text.lines().last().unwrap())
}

/// The log line(s) of the `zfs snapshot` calls.
fn snapshot_calls(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("zfs snapshot")).collect()
}

#[test]
#[ignore = "runs inside the TCG guest, started by openzfs_backup_suite"]
fn in_guest_backup_under_load_is_atomic_and_reads_the_snapdir() {
    let t = Instant::now();
    let pool = OPENZFS.pool("ozb1");
    let sb = sandbox(&pool, Binlogs::ChildOfDatadir, "");
    let paths = sb.dir.join("read-paths");
    sb.write_config("", &record_read_path(&paths));
    bank::create(&sb.server);
    let (manifest, log) = sb.backup_and_verify(&[], true);
    assert_eq!(manifest["snapshot"]["atomic"], true);
    // MyISAM present: auto still locks (BACKUP STAGE), and the coordinates are exact.
    assert_eq!(manifest["lock"]["mode"], "backup-stage");
    assert_eq!(manifest["coordinates"]["exact"], true);
    // Both datasets in ONE call (one transaction group).
    let calls = snapshot_calls(&log);
    assert_eq!(calls.len(), 1, "{log}");
    assert!(
        sb.datasets.iter().all(|d| calls[0].contains(d.as_str())),
        "{calls:?}"
    );
    let name = manifest["snapshot"]["name"].as_str().unwrap();
    assert_eq!(
        last_read_path(&paths),
        sb.datadir.join(format!(".zfs/snapshot/{name}"))
    );
    drop(sb);
    println!(
        "MEASURE OpenZFS end to end (backup-stage, snapdir): {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "runs inside the TCG guest, started by openzfs_backup_suite"]
fn in_guest_lock_none_on_an_atomic_snapshot_is_crash_consistent_snapdir_and_clone() {
    let t = Instant::now();
    let pool = OPENZFS.pool("ozb2");
    let sb = sandbox(&pool, Binlogs::Separate, "");
    let paths = sb.dir.join("read-paths");
    bank::create(&sb.server);
    // MyISAM makes `none` unsafe even on an atomic snapshot: refused, nothing left.
    let out = sb.dbsnap(&["backup", "--lock", "none"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    sb.server.sql(
        "DROP TABLE bank.audit; CREATE TABLE bank.audit (client INT NOT NULL, seq INT NOT NULL, \
         PRIMARY KEY (client, seq)) ENGINE=InnoDB",
    );

    for (read_via, clone) in [("auto", false), ("clone", true)] {
        sb.write_config(
            &format!("read_via = {read_via:?}"),
            &record_read_path(&paths),
        );
        let (manifest, log) = sb.backup_and_verify(&["--lock", "none"], false);
        assert_eq!(manifest["lock"]["mode"], "none");
        assert_eq!(manifest["snapshot"]["atomic"], true);
        assert_eq!(manifest["coordinates"]["exact"], false);
        assert_eq!(snapshot_calls(&log).len(), 1, "{log}");
        let read = last_read_path(&paths);
        if clone {
            assert!(read.starts_with(sb.state.join("runs")), "{read:?}");
        } else {
            let name = manifest["snapshot"]["name"].as_str().unwrap();
            assert_eq!(read, sb.datadir.join(format!(".zfs/snapshot/{name}")));
        }
    }
    drop(sb);
    println!(
        "MEASURE OpenZFS end to end (lock none, snapdir then clone): {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// `method = "zfs-send"` on real OpenZFS: a full stream and two incremental ones under
/// write load into a second pool, restored from the last with `dbsnap restore`.
#[test]
#[ignore = "runs inside the TCG guest, started by openzfs_backup_suite"]
fn in_guest_zfs_send_chain_restores_from_the_last_increment() {
    let t = Instant::now();
    let pool = OPENZFS.pool("ozb3");
    let mut sb = sandbox(&pool, Binlogs::ChildOfDatadir, "");
    let backups = OPENZFS.pool("ozb3d");
    let dest_dataset = format!("{}/backups", backups.name);
    dbsnap_test_support::sh("zfs", &["create", &dest_dataset]);
    sb.dest = backups.root.join("backups");
    sb.write_config("", "method = \"zfs-send\"");
    bank::create(&sb.server);

    let mut chain: Vec<(serde_json::Value, Vec<bank::Commit>)> = Vec::new();
    for _ in 0..3 {
        let writers = bank::Writers::start_with_audit(&sb.server.socket, 4);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let out = sb.dbsnap(&["backup", "--json"]);
        let commits = writers.stop();
        assert!(out.status.success(), "{}", common::stderr(&out));
        chain.push((common::stdout_json(&out), commits));
        // Backups are named by the second.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let full = &chain[0].0["transfer"];
    assert_eq!(full["method"], "zfs-send");
    assert!(full["base"].is_null(), "{full}");
    for pair in chain.windows(2) {
        let t = &pair[1].0["transfer"];
        assert_eq!(t["base"], pair[0].0["name"], "{t}");
        assert!(
            t["bytes"].as_u64().unwrap() < full["bytes"].as_u64().unwrap() / 2,
            "{t} against the full {full}"
        );
    }

    let (last, commits) = chain.last().unwrap();
    let backup = PathBuf::from(last["path"].as_str().unwrap());
    let restored = sb.dir.join("restored");
    let out = common::restore_with(&sb.config, &backup, &restored, &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let mut options =
        dbsnap_test_support::mariadb::ServerOptions::new(&restored, &sb.dir.join("run restored"));
    options.server_id = 2;
    options.log_bin = Some(restored.join("binlog").join("binlog"));
    let copy = dbsnap_test_support::mariadb::MariaDb::start_existing(options);
    bank::assert_consistent(
        &copy,
        commits,
        common::time(&last["lock"]["acquired_at"]),
        common::time(&last["lock"]["released_at"]),
    );
    assert_eq!(
        copy.sql("SELECT @@gtid_binlog_pos"),
        last["coordinates"]["gtid_binlog_pos"].as_str().unwrap()
    );
    copy.stop();
    println!(
        "MEASURE OpenZFS zfs-send: full {} bytes in {} ms, incrementals {} / {} bytes in {} / {} ms; test {:.1} s",
        full["bytes"],
        full["duration_ms"],
        chain[1].0["transfer"]["bytes"],
        chain[2].0["transfer"]["bytes"],
        chain[1].0["transfer"]["duration_ms"],
        chain[2].0["transfer"]["duration_ms"],
        t.elapsed().as_secs_f64()
    );
}

/// The pid of a running resumable receive (`zfs receive -u -s`), if any.
fn resumable_receiver() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let resumable = argv.first()?.ends_with(b"zfs")
                && argv.get(1) == Some(&&b"receive"[..])
                && argv.contains(&&b"-s"[..]);
            resumable.then_some(pid)
        })
}

/// `dbsnap backup` started in the background (its log in `log`), once its resumable
/// receive has run for a few seconds (the config's `bwlimit` keeps the stream going
/// far longer). Returns the run and the receiver's pid.
fn backup_until_streaming(sb: &ZfsSandbox, log: &Path) -> (Child, u32) {
    let mut child = Command::new(common::DBSNAP)
        .arg("--config")
        .arg(&sb.config)
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let said = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(300);
    let receiver = loop {
        if let Some(pid) = resumable_receiver() {
            break pid;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the backup ended ({status}) before its stream started:\n{}",
                said()
            );
        }
        assert!(Instant::now() < deadline, "no stream started:\n{}", said());
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the stream finished before it could be cut off (make the filler larger):\n{}",
        said()
    );
    (child, receiver)
}

/// 48 MiB that does not compress, in the datadir's dataset: a full stream long enough
/// to be cut off at the test's `bwlimit`.
fn add_filler(datadir: &Path) {
    let of = format!("of={}", datadir.join("filler.bin").display());
    sh(
        "dd",
        &["if=/dev/urandom", &of, "bs=1M", "count=48", "status=none"],
    );
}

/// Datasets below `dataset` (itself included) holding a resume token.
fn resume_tokens(dataset: &str) -> Vec<(String, String)> {
    let out = sh(
        "zfs",
        &[
            "get",
            "-H",
            "-r",
            "-t",
            "filesystem",
            "-o",
            "name,value",
            "receive_resume_token",
            dataset,
        ],
    );
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, token)| *token != "-")
        .map(|(name, token)| (name.to_string(), token.to_string()))
        .collect()
}

/// Wait (up to a minute) for the resume tokens a killed receive leaves below `dataset`.
fn wait_for_resume_tokens(dataset: &str) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tokens = resume_tokens(dataset);
        if !tokens.is_empty() || Instant::now() > deadline {
            return tokens;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The resumable records in the state directory.
fn resumable_records(state: &Path) -> Vec<toml::Value> {
    let Ok(dir) = std::fs::read_dir(state.join("resumable")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .map(|e| toml::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap())
        .collect()
}

/// Every dataset and snapshot in `pool`.
fn everything_in(pool: &str) -> Vec<String> {
    sh(
        "zfs",
        &["list", "-H", "-t", "all", "-o", "name", "-r", pool],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// The size of a full stream of `snapshot` (`zfs send -nP`).
/// The next backup, under 4 bank writers: it resumes the `interrupted` backup's stream
/// from its token (sending less than the `full` stream) and leaves no token at
/// `dest_dataset` and no resumable record. Its manifest, and the writers' commits.
fn next_backup_resumes(
    sb: &ZfsSandbox,
    interrupted: &str,
    full: u64,
    dest_dataset: &str,
) -> (serde_json::Value, Vec<bank::Commit>) {
    let writers = bank::Writers::start_with_audit(&sb.server.socket, 4);
    std::thread::sleep(Duration::from_millis(300));
    let out = sb.dbsnap(&["backup", "--json"]);
    let commits = writers.stop();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let resumed = common::stdout_json(&out);
    let transfer = &resumed["transfer"];
    assert_eq!(transfer["resumed_from"], interrupted, "{transfer}");
    assert!(transfer["full_because"].is_null(), "{transfer}");
    let bytes = transfer["bytes"].as_u64().unwrap();
    assert!(
        bytes < full,
        "{transfer}: the resumed run sent more than the full stream ({full} bytes)"
    );
    assert!(resume_tokens(dest_dataset).is_empty());
    assert!(resumable_records(&sb.state).is_empty());
    (resumed, commits)
}

fn full_stream_size(snapshot: &str) -> u64 {
    let out = sh("zfs", &["send", "-nP", snapshot]);
    out.lines()
        .find_map(|l| l.strip_prefix("size\t"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no size in `zfs send -nP {snapshot}`: {out}"))
}

/// A zfs-send stream cut off by a killed receiver keeps its state at the destination
/// (`zfs receive -s`) and its snapshot on the source; the next backup completes it from
/// the resume token (`zfs send -t`) and sends its own snapshot incrementally from it:
/// fewer bytes than one full stream, `transfer.resumed_from` in the manifest, nothing of
/// the interrupted run left afterwards, and the backup restores consistent.
#[test]
#[ignore = "runs inside the TCG guest, started by openzfs_backup_suite"]
fn in_guest_zfs_send_cut_off_by_a_killed_receiver_is_resumed_from_its_token() {
    let t = Instant::now();
    let pool = OPENZFS.pool("ozb4");
    let mut sb = sandbox(&pool, Binlogs::ChildOfDatadir, "");
    let backups = OPENZFS.pool("ozb4d");
    let dest_dataset = format!("{}/backups", backups.name);
    sh("zfs", &["create", &dest_dataset]);
    sb.dest = backups.root.join("backups");
    bank::create(&sb.server);
    add_filler(&sb.datadir);
    sb.write_config("", "method = \"zfs-send\"\nbwlimit = \"4MiB\"");

    let log = sb.dir.join("cut-off.log");
    let (mut run, receiver) = backup_until_streaming(&sb, &log);
    sh("kill", &["-KILL", &receiver.to_string()]);
    let status = run.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(10), "{said}");
    assert!(
        said.contains("the next backup resumes the stream"),
        "{said}"
    );
    let tokens = wait_for_resume_tokens(&dest_dataset);
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let records = resumable_records(&sb.state);
    assert_eq!(records.len(), 1, "{records:?}");
    let interrupted = records[0]["backup"].as_str().unwrap().to_string();
    let set = records[0]["set"]["name"].as_str().unwrap().to_string();
    let snapshots: Vec<String> = records[0]["set"]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    // What the token says (recorded for the unit test of its parser), and the full
    // stream the cut-off one was.
    println!(
        "zfs send -nvP -t: {}",
        sh("zfs", &["send", "-nvP", "-t", &tokens[0].1])
    );
    let full: u64 = snapshots.iter().map(|s| full_stream_size(s)).sum();

    sb.write_config("", "method = \"zfs-send\"");
    let (resumed, commits) = next_backup_resumes(&sb, &interrupted, full, &dest_dataset);
    let bytes = resumed["transfer"]["bytes"].as_u64().unwrap();
    // Nothing of the interrupted run is left: its snapshots on the source, its received
    // snapshots and copies at the destination (the chains it started go on).
    let copies: Vec<String> = (0..snapshots.len())
        .map(|i| format!("{dest_dataset}/dbsnap-received/{set}.{i}"))
        .collect();
    let left: Vec<String> = everything_in(&pool.name)
        .into_iter()
        .chain(everything_in(&backups.name))
        .filter(|n| n.ends_with(&format!("@{set}")) || copies.contains(n))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let backup = PathBuf::from(resumed["path"].as_str().unwrap());
    let restored = sb.dir.join("restored");
    let out = common::restore_with(&sb.config, &backup, &restored, &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let mut options =
        dbsnap_test_support::mariadb::ServerOptions::new(&restored, &sb.dir.join("run restored"));
    options.server_id = 2;
    options.log_bin = Some(restored.join("binlog").join("binlog"));
    let copy = dbsnap_test_support::mariadb::MariaDb::start_existing(options);
    bank::assert_consistent(
        &copy,
        &commits,
        common::time(&resumed["lock"]["acquired_at"]),
        common::time(&resumed["lock"]["released_at"]),
    );
    assert_eq!(
        copy.sql("SELECT @@gtid_binlog_pos"),
        resumed["coordinates"]["gtid_binlog_pos"].as_str().unwrap()
    );
    copy.stop();

    // The chain goes on from the resumed backup.
    std::thread::sleep(Duration::from_millis(1100));
    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let next = common::stdout_json(&out);
    assert_eq!(next["transfer"]["base"], resumed["name"], "{next}");
    assert!(next["transfer"]["resumed_from"].is_null(), "{next}");
    println!(
        "MEASURE OpenZFS zfs-send resume: full stream {full} bytes, resumed run {bytes} bytes \
         ({:.2} of the full), next increment {} bytes; test {:.1} s",
        bytes as f64 / full as f64,
        next["transfer"]["bytes"],
        t.elapsed().as_secs_f64()
    );
}

/// dbsnap killed mid-stream: the receive keeps its state; `dbsnap cleanup` aborts it
/// and releases the snapshot. Killed again, and its snapshot then destroyed on the
/// source: the next backup cannot continue the token, aborts what the receive kept and
/// sends a full stream, saying why (`transfer.full_because`).
#[test]
#[ignore = "runs inside the TCG guest, started by openzfs_backup_suite"]
fn in_guest_zfs_send_killed_mid_stream_is_cleaned_up_or_sent_in_full_when_its_snapshot_is_gone() {
    let t = Instant::now();
    let pool = OPENZFS.pool("ozb5");
    let mut sb = sandbox(&pool, Binlogs::ChildOfDatadir, "");
    let backups = OPENZFS.pool("ozb5d");
    let dest_dataset = format!("{}/backups", backups.name);
    sh("zfs", &["create", &dest_dataset]);
    sb.dest = backups.root.join("backups");
    bank::create(&sb.server);
    add_filler(&sb.datadir);
    sb.write_config("", "method = \"zfs-send\"\nbwlimit = \"4MiB\"");
    let received = format!("{dest_dataset}/dbsnap-received");

    let (mut run, _) = backup_until_streaming(&sb, &sb.dir.join("killed-1.log"));
    run.kill().unwrap();
    run.wait().unwrap();
    assert_eq!(wait_for_resume_tokens(&dest_dataset).len(), 1);
    assert_eq!(resumable_records(&sb.state).len(), 1);
    let out = sb.dbsnap(&["cleanup", "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(resume_tokens(&dest_dataset).is_empty());
    assert!(resumable_records(&sb.state).is_empty());
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    assert_eq!(everything_in(&received), vec![received.clone()]);

    let (mut run, _) = backup_until_streaming(&sb, &sb.dir.join("killed-2.log"));
    run.kill().unwrap();
    run.wait().unwrap();
    assert_eq!(wait_for_resume_tokens(&dest_dataset).len(), 1);
    for snapshot in everything_in(&pool.name)
        .into_iter()
        .filter(|n| n.contains("@dbsnap-"))
    {
        let _ = Command::new("zfs")
            .args(["release", "dbsnap", &snapshot])
            .status();
        sh("zfs", &["destroy", &snapshot]);
    }
    sb.write_config("", "method = \"zfs-send\"");
    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let full = common::stdout_json(&out);
    let transfer = &full["transfer"];
    assert!(
        transfer["full_because"]
            .as_str()
            .is_some_and(|w| w.contains("is gone from the source")),
        "{transfer}"
    );
    assert!(transfer["resumed_from"].is_null(), "{transfer}");
    assert!(transfer["base"].is_null(), "{transfer}");
    assert!(common::stderr(&out).contains("not resuming the stream of interrupted backup"));
    assert!(resume_tokens(&dest_dataset).is_empty());
    assert!(resumable_records(&sb.state).is_empty());

    // What is left is this backup's: its copies, and its snapshot kept as the next base.
    let out = sb.dbsnap(&["cleanup"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let name = full["snapshot"]["name"].as_str().unwrap();
    let left: Vec<String> = sb
        .leftovers()
        .into_iter()
        .filter(|l| !l.contains(name))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let chains: Vec<String> = everything_in(&received)
        .into_iter()
        .filter(|n| *n != received && !n.contains(name))
        .collect();
    assert!(chains.is_empty(), "{chains:?}");
    println!(
        "MEASURE OpenZFS zfs-send killed, cleaned up, killed, snapshot gone: test {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// The same over ssh, to a backup host on 127.0.0.1 in the guest (an OpenSSH server
/// started by the test, serving a dataset of the second pool): the connection killed
/// mid-stream (the sshd processes serving it, as a network drop would: exit 14) leaves
/// the receive's state there, and the next backup, under the bank workload, resumes it
/// there from its token (read and continued over the run's one connection): fewer
/// bytes than one full stream, `transfer.resumed_from` in the manifest, and the backup
/// restored from the backup host passes the bank check.
#[test]
#[ignore = "runs inside the TCG guest, started by openzfs_backup_suite"]
fn in_guest_zfs_send_over_ssh_cut_off_by_a_lost_connection_is_resumed_on_the_backup_host() {
    let t = Instant::now();
    let pool = OPENZFS.pool("ozb6");
    let mut sb = sandbox(&pool, Binlogs::ChildOfDatadir, "");
    let backups = OPENZFS.pool("ozb6d");
    let dest_dataset = format!("{}/backups", backups.name);
    sh("zfs", &["create", &dest_dataset]);
    sb.dest = backups.root.join("backups");
    let sshd = Sshd::start();
    bank::create(&sb.server);
    add_filler(&sb.datadir);
    let write_config = |backup: &str| {
        std::fs::write(
            &sb.config,
            format!(
                "state_dir = {state:?}\n\n[mysql]\nsocket = {socket:?}\nuser = \"root\"\n\n\
                 [snapshot]\nbackend = \"zfs\"\n\n[backup]\ndest = {dest:?}\n\
                 method = \"zfs-send\"\n{backup}\n\n[backup.ssh]\nidentity_file = {key:?}\n\
                 known_hosts = {known:?}\n",
                state = sb.state,
                socket = sb.server.socket,
                dest = sshd.url(&sb.dest),
                key = sshd.identity,
                known = sshd.known_hosts,
            ),
        )
        .unwrap()
    };
    write_config("bwlimit = \"4MiB\"");

    let log = sb.dir.join("lost-connection.log");
    let (mut run, _) = backup_until_streaming(&sb, &log);
    let streaming = t.elapsed();
    assert!(sshd.kill_sessions() > 0);
    let status = run.wait().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(14), "{said}");
    assert!(said.contains("the next run resumes the stream"), "{said}");
    let tokens = wait_for_resume_tokens(&dest_dataset);
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let records = resumable_records(&sb.state);
    assert_eq!(records.len(), 1, "{records:?}");
    let interrupted = records[0]["backup"].as_str().unwrap().to_string();
    let full: u64 = records[0]["set"]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| full_stream_size(s["id"].as_str().unwrap()))
        .sum();

    write_config("");
    let (resumed, commits) = next_backup_resumes(&sb, &interrupted, full, &dest_dataset);
    let bytes = resumed["transfer"]["bytes"].as_u64().unwrap();

    // Restored by name from the backup host (pulled over ssh).
    let name = resumed["name"].as_str().unwrap();
    let restored = sb.dir.join("restored");
    common::restore_with(&sb.config, Path::new(name), &restored, &[]);
    let mut options =
        dbsnap_test_support::mariadb::ServerOptions::new(&restored, &sb.dir.join("run restored"));
    options.server_id = 2;
    options.log_bin = Some(restored.join("binlog").join("binlog"));
    let copy = dbsnap_test_support::mariadb::MariaDb::start_existing(options);
    bank::assert_consistent(
        &copy,
        &commits,
        common::time(&resumed["lock"]["acquired_at"]),
        common::time(&resumed["lock"]["released_at"]),
    );
    assert_eq!(
        copy.sql("SELECT @@gtid_binlog_pos"),
        resumed["coordinates"]["gtid_binlog_pos"].as_str().unwrap()
    );
    copy.stop();
    println!(
        "MEASURE OpenZFS zfs-send over ssh resume: full stream {full} bytes, resumed run {bytes} \
         bytes ({:.2} of the full); stream under way after {:.1} s; test {:.1} s",
        bytes as f64 / full as f64,
        streaming.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}
