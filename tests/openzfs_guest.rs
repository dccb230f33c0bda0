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
use std::time::Instant;

use common::zfs::{Binlogs, ZfsSandbox};
use dbsnap_test_support::bank;
use dbsnap_test_support::openzfs::{self, OpenZfs, Pool};

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
