//! `dbsnap backup` end to end on ZFS (zfs-fuse, the host tier): a MariaDB whose
//! datadir and binary logs are on two datasets, under 8 writers with MyISAM audit rows.
//!
//! Each test re-runs itself in a private mount namespace with its own zfs-fuse daemon
//! (`dbsnap_test_support::zfs_fuse`), so the `dbsnap` it starts talks to that daemon
//! only. zfs-fuse takes one snapshot per call, so the set is not atomic (`atomic =
//! false` in the manifest) and the lock covers all the calls; it has no `.zfs`
//! directory, so dbsnap reads through read-only clones.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::stdout_json;
use common::zfs::{sh, Binlogs, ZfsSandbox};
use dbsnap_test_support::bank;
use dbsnap_test_support::mariadb::{self, MariaDb, ServerOptions};
use dbsnap_test_support::zfs_fuse::ZfsFuse;

fn sandbox(zfs: &mut ZfsFuse, binlogs: Binlogs) -> ZfsSandbox {
    let pool = zfs.create_pool("dbsnape");
    let root = zfs.mount_root(&pool);
    let template = zfs.dir().join("template");
    mariadb::install(&template);
    ZfsSandbox::new(&pool, &root, zfs.dir(), binlogs, &template, "")
}

fn consistent_backup(binlogs: Binlogs) {
    let t = Instant::now();
    let Some(mut zfs) = ZfsFuse::enter(match binlogs {
        Binlogs::ChildOfDatadir => "backup_under_load_binlogs_on_a_child_dataset",
        Binlogs::Separate => "backup_under_load_binlogs_on_a_separate_dataset",
    }) else {
        return;
    };
    let sb = sandbox(&mut zfs, binlogs);
    bank::create(&sb.server);
    // 8 MiB that only the binlog dataset holds: preflight must count it (it sizes the
    // destination check and the progress bar), although it is another filesystem.
    sh(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", sb.binlog_dir.join("padding").display()),
            "bs=1M",
            "count=8",
            "status=none",
        ],
    );
    let (manifest, log) = sb.backup_and_verify(&[], true);
    let (counted, copied) = (mib_in(&log, "preflight:"), mib_in(&log, "copied "));
    assert!(
        counted + 1.0 > copied,
        "preflight counted {counted} MiB, copied {copied} MiB"
    );
    // One `zfs snapshot` call per dataset, then a read-only clone of each.
    assert_eq!(log.matches("zfs snapshot").count(), 2, "{log}");
    // zfs-fuse snapshots one dataset per call: not one instant, so the lock covers it.
    assert_eq!(manifest["snapshot"]["atomic"], false);
    assert_eq!(manifest["lock"]["mode"], "backup-stage");
    assert_eq!(manifest["coordinates"]["exact"], true);
    // An InnoDB-only schema does not make `none` acceptable without one atomic snapshot.
    sb.server.sql("DROP TABLE bank.audit");
    let out = sb.dbsnap(&["backup", "--lock", "none"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    println!(
        "MEASURE zfs-fuse end to end ({binlogs:?}): {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// The size in MiB that the log line containing `marker` reports (`..., 45.7 MiB`).
fn mib_in(log: &str, marker: &str) -> f64 {
    let line = log
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no {marker:?} line in {log}"));
    let before = &line[..line
        .find(" MiB")
        .unwrap_or_else(|| panic!("no MiB in {line}"))];
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn backup_under_load_binlogs_on_a_child_dataset() {
    consistent_backup(Binlogs::ChildOfDatadir);
}

#[test]
fn backup_under_load_binlogs_on_a_separate_dataset() {
    consistent_backup(Binlogs::Separate);
}

/// Whether a backup is copying: its partial directory holds a file.
fn is_copying(dest: &Path) -> bool {
    std::fs::read_dir(dest)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .any(|e| {
            walkdir::WalkDir::new(e.path())
                .into_iter()
                .flatten()
                .any(|f| f.file_type().is_file())
        })
}

#[test]
fn sigkill_while_copying_then_cleanup_releases_clones_holds_and_snapshots() {
    let Some(mut zfs) =
        ZfsFuse::enter("sigkill_while_copying_then_cleanup_releases_clones_holds_and_snapshots")
    else {
        return;
    };
    let sb = sandbox(&mut zfs, Binlogs::ChildOfDatadir);
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 24);
    sb.write_config("", "bwlimit = \"2MiB\"");
    let mut child = std::process::Command::new(common::DBSNAP)
        .arg("--config")
        .arg(&sb.config)
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !is_copying(&sb.dest) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let copying = is_copying(&sb.dest);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(copying, "the backup never started copying");

    // What a killed run leaves: both snapshots, held, and their read-only clones.
    let left = sb.leftovers();
    let held = |ds: &str| format!("dataset {ds}@dbsnap-");
    for ds in &sb.datasets {
        assert!(
            left.iter()
                .any(|l| l.starts_with(&held(ds)) && l.ends_with("(userrefs 1)")),
            "no held snapshot of {ds}: {left:?}"
        );
    }
    assert!(
        left.iter()
            .filter(|l| l.starts_with("dataset ") && !l.contains('@'))
            .count()
            == 2,
        "expected two clones: {left:?}"
    );
    assert!(left.iter().any(|l| l.starts_with("mount ")), "{left:?}");
    assert!(
        left.iter().any(|l| l.starts_with("partial dir")),
        "{left:?}"
    );

    let out = sb.dbsnap(&["cleanup", "--json"]);
    assert!(out.status.success());
    assert_eq!(stdout_json(&out)["released"].as_array().unwrap().len(), 3);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());

    sb.write_config("", "");
    assert!(sb.dbsnap(&["backup"]).status.success());
    assert_eq!(sb.backups().len(), 1);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn paths_not_on_zfs_overlong_names_and_a_tampered_journal_are_refused() {
    let Some(mut zfs) =
        ZfsFuse::enter("paths_not_on_zfs_overlong_names_and_a_tampered_journal_are_refused")
    else {
        return;
    };
    let pool = zfs.create_pool("dbsnaph");
    // A legal dataset name so long that `<name>@dbsnap-<timestamp>` exceeds ZFS's
    // 255-byte limit: `zfs snapshot` would fail only inside the lock window.
    let long = format!("{pool}/{}", "x".repeat(240 - pool.len()));
    let datadir = zfs.dir().join("long");
    sh(
        "zfs",
        &[
            "create",
            "-o",
            &format!("mountpoint={}", datadir.display()),
            &long,
        ],
    );
    mariadb::install(&datadir);
    let not_zfs = zfs.dir().join("plain binlogs");
    std::fs::create_dir(&not_zfs).unwrap();
    let start = |log_bin: &Path| {
        let mut options = ServerOptions::new(&datadir, &zfs.dir().join("run"));
        options.log_bin = Some(log_bin.join("binlog"));
        MariaDb::start_existing(options)
    };
    let dest = zfs.dir().join("backups");
    std::fs::create_dir(&dest).unwrap();
    let state = zfs.dir().join("state");
    let config = zfs.dir().join("dbsnap.toml");

    let check = |server: &MariaDb, expect: &str| {
        std::fs::write(
            &config,
            format!(
                "state_dir = {state:?}\n[mysql]\nsocket = {:?}\nuser = \"root\"\n\
                 [snapshot]\nbackend = \"zfs\"\n[backup]\ndest = {dest:?}\n",
                server.socket
            ),
        )
        .unwrap();
        let out = common::dbsnap_with(&config, &["backup"]);
        assert_eq!(out.status.code(), Some(5), "{}", common::stderr(&out));
        let err = common::stderr(&out);
        assert!(err.contains(expect), "{err}");
        assert!(!err.contains("the lock was released"), "{err}");
        let snaps = sh("zfs", &["list", "-H", "-t", "snapshot", "-o", "name"]);
        assert!(snaps.trim().is_empty(), "left behind: {snaps}");
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
        let journal = std::fs::read_to_string(state.join("journal.json")).unwrap_or_default();
        assert!(
            journal.trim().is_empty() || journal.trim() == "[]",
            "{journal}"
        );
    };

    // Half the layout on ZFS, the binlogs on the root filesystem.
    let server = start(&not_zfs);
    check(&server, "not on a ZFS dataset");
    server.stop();

    // All on ZFS, but the datadir's dataset name leaves no room for the snapshot's.
    let server = start(&datadir);
    check(&server, "too long");
    server.stop();

    // A tampered journal: a snapshot with our prefix that dbsnap did not take (no
    // dbsnap:run tag), and a dataset name zfs would read as an option. Cleanup refuses
    // both, touches neither, and keeps them in the journal.
    let kept = format!("{pool}/kept");
    sh("zfs", &["create", &kept]);
    sh("zfs", &["snapshot", &format!("{kept}@dbsnap-manual")]);
    let entry = |name: &str, dataset: &str| {
        serde_json::json!({"run": "tampered", "resource": {"kind": "snapshot", "set": {
            "backend": "zfs", "name": name, "snapshots": [{
                "volume": {"id": dataset, "root": "/", "fstype": "zfs"},
                "id": format!("{dataset}@{name}")}]}}})
    };
    let journal = serde_json::json!([entry("dbsnap-manual", &kept), entry("dbsnap-h", "-R")]);
    std::fs::write(state.join("journal.json"), journal.to_string()).unwrap();
    let out = common::dbsnap_with(&config, &["cleanup"]);
    assert!(!out.status.success());
    let err = common::stderr(&out);
    assert_eq!(err.matches("refusing").count(), 2, "{err}");
    let snaps = sh("zfs", &["list", "-H", "-t", "snapshot", "-o", "name"]);
    assert_eq!(snaps.trim(), format!("{kept}@dbsnap-manual"));
    let journal: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("journal.json")).unwrap())
            .unwrap();
    assert_eq!(journal.as_array().unwrap().len(), 2);
}
