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
    let name = manifest["name"].as_str().unwrap();
    assert_eq!(
        last_read_path(&paths),
        sb.datadir.join(format!(".zfs/snapshot/dbsnap-{name}"))
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
            let name = manifest["name"].as_str().unwrap();
            assert_eq!(
                read,
                sb.datadir.join(format!(".zfs/snapshot/dbsnap-{name}"))
            );
        }
    }
    drop(sb);
    println!(
        "MEASURE OpenZFS end to end (lock none, snapdir then clone): {:.1} s",
        t.elapsed().as_secs_f64()
    );
}
