//! The LVM backend against real LVM and device-mapper, inside the TCG test guest.
//!
//! `lvm_on_real_device_mapper` (the only test that runs on the host) boots the guest once
//! and runs every `in_guest_` test of this binary inside it, one at a time, each on its own
//! virtual disk. Run one guest test: `DBSNAP_GUEST_TESTS=in_guest_thin cargo test -p
//! dbsnap-lvm --test guest_lvm`. Lines starting with `TIMING` are measurements.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use dbsnap_backend_api::{
    Health, RollbackOutcome, SnapshotBackend, SnapshotName, SnapshotSet, Volume,
};
use dbsnap_lvm::{Lvm, LvmConfig, SnapshotSize};
use dbsnap_test_support::guest;
use dbsnap_test_support::lvm::{follow_pending, run, run_suite, TestVg};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

const MIB: usize = 1 << 20;

/// `FLUSH TABLES WITH READ LOCK` held by one client session until `release`.
struct GlobalReadLock {
    client: std::process::Child,
}

impl GlobalReadLock {
    fn take(server: &MariaDb) -> GlobalReadLock {
        use std::io::{BufRead, Write};
        let mut client = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", server.socket.display()))
            .args(["-uroot", "-N", "-B", "--unbuffered"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting the mariadb client");
        let stdin = client.stdin.as_mut().unwrap();
        stdin
            .write_all(b"FLUSH TABLES WITH READ LOCK; SELECT 'LOCKED';\n")
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(client.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "LOCKED");
        GlobalReadLock { client }
    }

    fn release(mut self) {
        use std::io::Write;
        let mut stdin = self.client.stdin.take().unwrap();
        stdin.write_all(b"UNLOCK TABLES;\n").unwrap();
        drop(stdin);
        assert!(self.client.wait().unwrap().success());
    }
}

#[test]
fn lvm_on_real_device_mapper() {
    run_suite(
        "lvm",
        &[
            "xfs",
            "ext4",
            "thin",
            "overflow",
            "names",
            "mariadb",
            "rb-classic",
            "rb-thin",
            "rb-invalid",
            "rb-busy",
        ],
    )
    .assert_success();
}

fn write_file(path: &Path, byte: u8, size: usize) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&vec![byte; size]).unwrap();
    f.sync_all().unwrap();
}

fn assert_all_bytes(path: &Path, byte: u8, size: usize) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(data.len(), size, "{}", path.display());
    assert!(
        data.iter().all(|b| *b == byte),
        "{} changed in the snapshot",
        path.display()
    );
}

fn timed<T>(what: &str, started: Instant, value: T) -> T {
    println!("TIMING {what} {} ms", started.elapsed().as_millis());
    value
}

fn name(text: &str) -> SnapshotName {
    SnapshotName::new(text).unwrap()
}

/// Probe, snapshot, change the origin, mount, check the frozen view, release twice.
async fn snapshot_roundtrip(lvm: &Lvm, origin: &Path, label: &str) -> SnapshotSet {
    let datadir = origin.join("mysql");
    std::fs::create_dir_all(&datadir).unwrap();
    write_file(&datadir.join("ibdata1"), b'A', 8 * MIB);

    let volumes = timed(
        &format!("{label} probe"),
        Instant::now(),
        lvm.probe(std::slice::from_ref(&datadir)).await.unwrap(),
    )
    .volumes;
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].root, origin);
    let set = lvm
        .plan(&volumes, &name(&format!("dbsnap-{label}")))
        .await
        .unwrap();
    let started = Instant::now();
    lvm.snapshot(&set).await.unwrap();
    timed(&format!("{label} snapshot (under the lock)"), started, ());

    // The origin moves on; the snapshot must not.
    write_file(&datadir.join("ibdata1"), b'B', 8 * MIB);
    write_file(&datadir.join("after-snapshot"), b'C', 4096);

    let workdir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let read_paths = lvm.mount(&set, workdir.path()).await.unwrap();
    timed(&format!("{label} mount"), started, ());
    assert_eq!(read_paths.len(), 1);
    assert_eq!(read_paths[0].origin_root, origin);
    let frozen = read_paths[0].frozen_root.join("mysql");
    assert_all_bytes(&frozen.join("ibdata1"), b'A', 8 * MIB);
    assert!(!frozen.join("after-snapshot").exists());
    assert!(
        std::fs::write(frozen.join("x"), b"x").is_err(),
        "the snapshot is writable"
    );
    // Mounting again is harmless (a resumed run).
    lvm.mount(&set, workdir.path()).await.unwrap();

    let started = Instant::now();
    lvm.unmount(&set, workdir.path()).await.unwrap();
    timed(&format!("{label} unmount"), started, ());
    lvm.unmount(&set, workdir.path()).await.unwrap();
    set
}

async fn release_twice(lvm: &Lvm, set: &SnapshotSet, vg: &TestVg, label: &str) {
    let started = Instant::now();
    lvm.release(set).await.unwrap();
    timed(&format!("{label} release"), started, ());
    lvm.release(set).await.unwrap();
    let names = vg.lv_names();
    for snap in &set.snapshots {
        let (_, lv) = snap.id.split_once('/').unwrap();
        assert!(!names.iter().any(|n| n == lv), "{} left behind", snap.id);
    }
}

#[tokio::test]
#[ignore = "runs inside the TCG guest, started by lvm_on_real_device_mapper"]
async fn in_guest_classic_snapshot_of_xfs() {
    guest::require_guest();
    let vg = TestVg::new("xfs", "dbtxfs");
    let origin = vg.lv("data", "320M", "xfs");
    let lvm = Lvm::new(LvmConfig::default());
    let set = snapshot_roundtrip(&lvm, &origin, "classic-xfs").await;
    assert_eq!(set.snapshots[0].id, "dbtxfs/dbsnap-classic-xfs.0");
    let attrs = run(&[
        "lvs",
        "--noheadings",
        "-o",
        "lv_attr,origin,lv_tags",
        &set.snapshots[0].id,
    ]);
    assert!(
        attrs.trim().starts_with('s'),
        "not a classic snapshot: {attrs}"
    );
    assert!(attrs.contains("dbsnap,dbsnap-classic-xfs"), "{attrs}");
    assert_eq!(lvm.health(&set).await.unwrap(), Health::Ok);
    release_twice(&lvm, &set, &vg, "classic-xfs").await;
}

#[tokio::test]
#[ignore = "runs inside the TCG guest, started by lvm_on_real_device_mapper"]
async fn in_guest_classic_snapshot_of_ext4() {
    guest::require_guest();
    let vg = TestVg::new("ext4", "dbtext4");
    let origin = vg.lv("data", "200M", "ext4");
    let lvm = Lvm::new(LvmConfig {
        snapshot_size: Some(SnapshotSize::PercentOfOrigin(50.0)),
        ..LvmConfig::default()
    });
    let set = snapshot_roundtrip(&lvm, &origin, "classic-ext4").await;
    let size = run(&[
        "lvs",
        "--noheadings",
        "--units",
        "m",
        "--nosuffix",
        "-o",
        "lv_size",
        &set.snapshots[0].id,
    ]);
    assert_eq!(size.trim(), "100.00", "50 % of a 200 MiB origin");
    release_twice(&lvm, &set, &vg, "classic-ext4").await;
}

#[tokio::test]
#[ignore = "runs inside the TCG guest, started by lvm_on_real_device_mapper"]
async fn in_guest_thin_snapshot() {
    guest::require_guest();
    let vg = TestVg::new("thin", "dbtthin");
    vg.thin_pool("pool", "400M");
    let origin = vg.thin_lv("pool", "data", "320M", "xfs");
    let lvm = Lvm::new(LvmConfig::default());
    let set = snapshot_roundtrip(&lvm, &origin, "thin").await;
    let attrs = run(&[
        "lvs",
        "--noheadings",
        "-o",
        "lv_attr,pool_lv",
        &set.snapshots[0].id,
    ]);
    assert!(
        attrs.trim().starts_with('V'),
        "not a thin snapshot: {attrs}"
    );
    assert!(attrs.contains("pool"), "{attrs}");
    // Health follows the pool's fill level: a 1 % threshold must warn and name the pool.
    let picky = Lvm::new(LvmConfig {
        warn_percent: Some(1.0.try_into().unwrap()),
        ..LvmConfig::default()
    });
    match picky.health(&set).await.unwrap() {
        Health::Warning(text) => assert!(text.contains("thin pool dbtthin/pool"), "{text}"),
        other => panic!("expected a warning, got {other:?}"),
    }
    assert_eq!(lvm.health(&set).await.unwrap(), Health::Ok);
    release_twice(&lvm, &set, &vg, "thin").await;
}

#[tokio::test]
#[ignore = "runs inside the TCG guest, started by lvm_on_real_device_mapper"]
async fn in_guest_overflowed_classic_snapshot_fails_health() {
    guest::require_guest();
    let vg = TestVg::new("overflow", "dbtover");
    let origin = vg.lv("data", "320M", "xfs");
    let lvm = Lvm::new(LvmConfig {
        snapshot_size: Some(SnapshotSize::Bytes(8 << 20)),
        warn_percent: Some(10.0.try_into().unwrap()),
    });
    let volumes = lvm
        .probe(std::slice::from_ref(&origin))
        .await
        .unwrap()
        .volumes;
    let set = lvm.plan(&volumes, &name("dbsnap-overflow")).await.unwrap();
    lvm.snapshot(&set).await.unwrap();
    assert_eq!(lvm.health(&set).await.unwrap(), Health::Ok);

    // A few MiB of changes: past the 10 % warning, not yet full.
    write_file(&origin.join("some"), b'1', 2 * MIB);
    match lvm.health(&set).await.unwrap() {
        Health::Warning(text) => assert!(text.contains("copy-on-write"), "{text}"),
        other => panic!("expected a warning, got {other:?}"),
    }
    // Far more changes than the 8 MiB of CoW space: LVM invalidates the snapshot.
    write_file(&origin.join("lots"), b'2', 48 * MIB);
    match lvm.health(&set).await.unwrap() {
        Health::Failed(text) => {
            println!("overflow health: {text}");
            assert!(text.contains("invalidated"), "{text}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    release_twice(&lvm, &set, &vg, "overflow").await;
}

#[tokio::test]
#[ignore = "runs inside the TCG guest, started by lvm_on_real_device_mapper"]
async fn in_guest_list_release_and_refusals() {
    guest::require_guest();
    let vg = TestVg::new("names", "dbtnames");
    let origin = vg.lv("data", "320M", "xfs");
    let lvm = Lvm::new(LvmConfig::default());

    // Not on LVM: a tmpfs (the guest's root is an overlay, a real VM's may be on LVM).
    let tmpfs = PathBuf::from("/srv/dbtnames-tmpfs");
    std::fs::create_dir_all(&tmpfs).unwrap();
    run(&[
        "mount",
        "-t",
        "tmpfs",
        "dbsnap-test",
        tmpfs.to_str().unwrap(),
    ]);
    let err = lvm.probe(std::slice::from_ref(&tmpfs)).await.unwrap_err();
    run(&["umount", tmpfs.to_str().unwrap()]);
    assert!(
        err.to_string().contains("not on an LVM logical volume"),
        "{err}"
    );

    // Foreign snapshots that look like ours: one untagged with our prefix, one tagged
    // without it. Neither is listed, and neither may be removed.
    run(&[
        "lvcreate",
        "-q",
        "-y",
        "-s",
        "-L",
        "8M",
        "-n",
        "dbsnap-foreign.0",
        "dbtnames/data",
    ]);
    run(&[
        "lvcreate",
        "-q",
        "-y",
        "-s",
        "-L",
        "8M",
        "-n",
        "other.0",
        "--addtag",
        "dbsnap",
        "dbtnames/data",
    ]);
    let volumes = lvm
        .probe(std::slice::from_ref(&origin))
        .await
        .unwrap()
        .volumes;
    let set = lvm.plan(&volumes, &name("dbsnap-ours")).await.unwrap();
    lvm.snapshot(&set).await.unwrap();
    let listed = lvm.list(&volumes).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, set.name);
    assert_eq!(listed[0].snapshots, set.snapshots);

    let foreign = SnapshotSet {
        name: name("dbsnap-foreign"),
        snapshots: vec![dbsnap_backend_api::VolumeSnapshot {
            volume: volumes[0].clone(),
            id: "dbtnames/dbsnap-foreign.0".into(),
        }],
        ..set.clone()
    };
    let err = lvm.release(&foreign).await.unwrap_err();
    assert!(err.to_string().contains("lacks the `dbsnap` tag"), "{err}");

    // Hostile ids from a tampered journal never reach a command line.
    for id in [
        "dbtnames/data",
        "dbtnames/dbsnap-ours.0 --force",
        "dbtnames/../x",
        "-ff/x",
    ] {
        let mut bad = set.clone();
        bad.snapshots[0].id = id.into();
        assert!(lvm.release(&bad).await.is_err(), "{id:?} was accepted");
    }
    let hostile = Volume {
        id: "dbtnames/data;reboot".into(),
        ..volumes[0].clone()
    };
    assert!(lvm.plan(&[hostile], &name("dbsnap-x")).await.is_err());

    // An interrupted run leaves its snapshot mounted; release alone must clean that up.
    let workdir = tempfile::tempdir().unwrap();
    lvm.mount(&set, workdir.path()).await.unwrap();
    release_twice(&lvm, &set, &vg, "names (mounted)").await;
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains("dbsnap--ours"), "{mounts}");
    let names = vg.lv_names();
    assert!(names.contains(&"dbsnap-foreign.0".to_string()), "{names:?}");
    assert!(names.contains(&"other.0".to_string()), "{names:?}");

    // No room: fill the VG, then the automatic size has nothing to work with.
    run(&[
        "lvcreate", "-q", "-y", "-l", "100%FREE", "-n", "filler", "dbtnames",
    ]);
    let err = Lvm::new(LvmConfig::default())
        .probe(std::slice::from_ref(&origin))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("free"), "{err}");
    println!("no-room refusal: {err}");
}

#[tokio::test]
#[ignore = "runs inside the TCG guest, started by lvm_on_real_device_mapper"]
async fn in_guest_mariadb_datadir_and_binlogs_on_two_lvs() {
    guest::require_guest();
    let vg = TestVg::new("mariadb", "dbtdb");
    let data = vg.lv("data", "320M", "xfs");
    let logs = vg.lv("logs", "100M", "ext4");
    let mut options = ServerOptions::new(&data.join("mysql"), Path::new("/run/mysqld/t"));
    options.log_bin = Some(logs.join("binlog"));
    let server = MariaDb::start(options.clone());
    server.sql(
        "CREATE DATABASE t; CREATE TABLE t.a (id INT PRIMARY KEY AUTO_INCREMENT, v INT) \
         ENGINE=InnoDB; INSERT INTO t.a (v) SELECT seq FROM t.seq_1_to_5000;",
    );

    let lvm = Lvm::new(LvmConfig::default());
    let volumes = lvm
        .probe(&[options.datadir.clone(), logs.clone()])
        .await
        .unwrap();
    let (volumes, atomic) = (volumes.volumes, volumes.atomic);
    assert_eq!(volumes.len(), 2);
    assert!(!atomic);
    let set = lvm.plan(&volumes, &name("dbsnap-mariadb")).await.unwrap();
    // What dbsnap does: the lock covers both snapshots because they are not atomic.
    let lock = GlobalReadLock::take(&server);
    let started = Instant::now();
    lvm.snapshot(&set).await.unwrap();
    timed("mariadb two-LV snapshot (under FTWRL)", started, ());
    lock.release();
    server.sql("INSERT INTO t.a (v) VALUES (-1)");

    let workdir = tempfile::tempdir().unwrap();
    let read_paths = lvm.mount(&set, workdir.path()).await.unwrap();
    let copy = tempfile::tempdir().unwrap();
    let copy_datadir = copy.path().join("mysql");
    run(&[
        "cp",
        "-a",
        read_paths[0].frozen_root.join("mysql").to_str().unwrap(),
        copy_datadir.to_str().unwrap(),
    ]);
    // The binlogs too: with the binary log on, InnoDB's commit record may reach disk
    // after the binlog's, so recovery can find a transaction prepared and needs the
    // binlog to commit it (a server started without it refuses to start).
    let copy_logs = copy.path().join("binlog");
    run(&[
        "cp",
        "-a",
        read_paths[1].frozen_root.to_str().unwrap(),
        copy_logs.to_str().unwrap(),
    ]);
    // The index names the live logs by absolute path.
    let index = copy_logs.join("binlog.index");
    let rewritten: String = std::fs::read_to_string(&index)
        .unwrap()
        .lines()
        .map(|l| {
            format!(
                "{}\n",
                copy_logs.join(Path::new(l).file_name().unwrap()).display()
            )
        })
        .collect();
    std::fs::write(&index, rewritten).unwrap();
    let binlogs = std::fs::read_dir(&read_paths[1].frozen_root)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("binlog."))
        })
        .count();
    assert!(binlogs >= 1, "no binlog in the frozen logs volume");
    lvm.unmount(&set, workdir.path()).await.unwrap();
    lvm.release(&set).await.unwrap();

    let mut restored = ServerOptions::new(&copy_datadir, Path::new("/run/mysqld/r"));
    restored.log_bin = Some(copy_logs.join("binlog"));
    let copy_server = MariaDb::start_existing(restored);
    assert_eq!(
        copy_server.sql("SELECT COUNT(*), SUM(v) FROM t.a").trim(),
        "5000\t12502500"
    );
    let check = copy_server.sql("CHECK TABLE t.a");
    assert!(check.contains("OK"), "{check}");
    copy_server.stop();
    server.stop();
}

/// The mountinfo line of the mount at `at`: (device, mount options, filesystem options).
fn mount_at(at: &Path) -> Option<(String, String, String)> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        (Path::new(left[4]) == at).then(|| (left[2].into(), left[5].into(), right[2].into()))
    })
}

/// `lv_attr` and `origin` of `vg/lv`, `None` when it does not exist (hidden LVs included).
fn lv_state(id: &str) -> Option<(String, String)> {
    let (vg, lv) = id.split_once('/').unwrap();
    let out = run(&[
        "lvs",
        "-a",
        "--noheadings",
        "--separator",
        "|",
        "-o",
        "lv_name,lv_attr,origin",
        vg,
    ]);
    out.lines().find_map(|line| {
        let fields: Vec<&str> = line.trim().split('|').collect();
        let name = fields[0].trim_start_matches('[').trim_end_matches(']');
        (name == lv).then(|| (fields[1].to_string(), fields[2].to_string()))
    })
}

/// Snapshot the volume at `origin` (a file `f` holding `A`s), then change `f` to `B`s and
/// add a file: what a rollback has to undo.
async fn snapshot_then_change(lvm: &Lvm, origin: &Path, label: &str) -> SnapshotSet {
    write_file(&origin.join("f"), b'A', 4 * MIB);
    let volumes = lvm.probe(&[origin.to_path_buf()]).await.unwrap().volumes;
    let set = lvm
        .plan(&volumes, &name(&format!("dbsnap-{label}")))
        .await
        .unwrap();
    lvm.snapshot(&set).await.unwrap();
    write_file(&origin.join("f"), b'B', 4 * MIB);
    write_file(&origin.join("new"), b'N', 4096);
    set
}

#[tokio::test]
#[ignore = "runs inside the TCG guest, started by lvm_on_real_device_mapper"]
async fn in_guest_rollback_of_a_classic_snapshot_of_a_mounted_xfs() {
    guest::require_guest();
    let vg = TestVg::new("rb-classic", "dbtrbc");
    let origin = vg.lv("data", "320M", "xfs");
    // A non-default option, to see that the volume comes back mounted the same way.
    run(&["mount", "-o", "remount,noatime", origin.to_str().unwrap()]);
    let before = mount_at(&origin).unwrap();
    assert!(before.1.contains("noatime"), "{before:?}");
    let lvm = Lvm::new(LvmConfig::default());
    let set = snapshot_then_change(&lvm, &origin, "rb-classic").await;

    let started = Instant::now();
    let outcome = lvm.rollback(&set).await.unwrap();
    timed("classic xfs rollback (unmount, merge, mount)", started, ());
    assert_eq!(
        outcome,
        RollbackOutcome {
            snapshots_kept: false,
            pending: None
        }
    );
    let after = mount_at(&origin).expect("the origin is mounted again");
    assert_eq!((&after.1, &after.2), (&before.1, &before.2));
    assert_all_bytes(&origin.join("f"), b'A', 4 * MIB);
    assert!(!origin.join("new").exists());
    // The merge consumed the snapshot; nothing of it is left, hidden or not.
    assert_eq!(lv_state(&set.snapshots[0].id), None);
    assert!(lvm.list(&set_volumes(&set)).await.unwrap().is_empty());
    let (attr, _) = lv_state("dbtrbc/data").unwrap();
    assert!(attr.starts_with('-'), "still an origin: {attr}");
}

fn set_volumes(set: &SnapshotSet) -> Vec<Volume> {
    set.snapshots.iter().map(|s| s.volume.clone()).collect()
}

#[tokio::test]
#[ignore = "runs inside the TCG guest, started by lvm_on_real_device_mapper"]
async fn in_guest_rollback_of_a_thin_snapshot_keeps_it_and_repeats() {
    guest::require_guest();
    let vg = TestVg::new("rb-thin", "dbtrbt");
    vg.thin_pool("pool", "400M");
    let origin = vg.thin_lv("pool", "data", "320M", "xfs");
    let lvm = Lvm::new(LvmConfig::default());
    let set = snapshot_then_change(&lvm, &origin, "rb-thin").await;

    for round in 1..=2 {
        let started = Instant::now();
        let outcome = lvm.rollback(&set).await.unwrap();
        timed(&format!("thin rollback {round}"), started, ());
        assert_eq!(outcome, RollbackOutcome::complete_and_kept());
        assert!(mount_at(&origin).is_some(), "not mounted again");
        assert_all_bytes(&origin.join("f"), b'A', 4 * MIB);
        assert!(!origin.join("new").exists());
        // The kept snapshot is still there, under its name, of the volume, tagged.
        let (attr, from) = lv_state(&set.snapshots[0].id).expect("the kept snapshot is gone");
        assert!(attr.starts_with('V'), "{attr}");
        assert_eq!(from, "data");
        assert_eq!(lv_state("dbtrbt/dbsnap-rb-thin.0-merge"), None);
        let listed = lvm.list(&set_volumes(&set)).await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].snapshots, set.snapshots);
        // The next "upgrade".
        write_file(&origin.join("f"), b'C', 4 * MIB);
    }
    release_twice(&lvm, &set, &vg, "rb-thin").await;
}

#[tokio::test]
#[ignore = "runs inside the TCG guest, started by lvm_on_real_device_mapper"]
async fn in_guest_rollback_to_an_invalid_snapshot_is_refused() {
    guest::require_guest();
    let vg = TestVg::new("rb-invalid", "dbtrbi");
    let origin = vg.lv("data", "320M", "xfs");
    let lvm = Lvm::new(LvmConfig {
        snapshot_size: Some(SnapshotSize::Bytes(8 << 20)),
        ..LvmConfig::default()
    });
    let set = snapshot_then_change(&lvm, &origin, "rb-invalid").await;
    write_file(&origin.join("lots"), b'2', 48 * MIB);
    let (attr, _) = lv_state(&set.snapshots[0].id).unwrap();
    assert_eq!(attr.chars().nth(4), Some('I'), "not invalidated: {attr}");

    let err = lvm.rollback(&set).await.unwrap_err().to_string();
    println!("invalid snapshot rollback: {err}");
    assert!(
        err.contains("invalidated") && err.contains("nothing was rolled back"),
        "{err}"
    );
    // Untouched: still mounted, still the new data, no merge pending.
    assert!(mount_at(&origin).is_some());
    assert_all_bytes(&origin.join("f"), b'B', 4 * MIB);
    let (attr, _) = lv_state("dbtrbi/data").unwrap();
    assert!(attr.starts_with('o'), "{attr}");
    release_twice(&lvm, &set, &vg, "rb-invalid").await;
}

#[tokio::test]
#[ignore = "runs inside the TCG guest, started by lvm_on_real_device_mapper"]
async fn in_guest_rollback_of_a_busy_origin_is_pending_until_reactivation() {
    guest::require_guest();
    let vg = TestVg::new("rb-busy", "dbtrbb");
    vg.thin_pool("pool", "300M");
    let thin = vg.thin_lv("pool", "thin", "200M", "ext4");
    let classic = vg.lv("classic", "200M", "ext4");
    let lvm = Lvm::new(LvmConfig::default());

    for (origin, label, kept) in [
        (&thin, "rb-busy-thin", true),
        (&classic, "rb-busy-classic", false),
    ] {
        let set = snapshot_then_change(&lvm, origin, label).await;
        // Something works in the volume: it cannot be unmounted.
        let mut holder = Command::new("sleep")
            .arg("600")
            .current_dir(origin)
            .spawn()
            .unwrap();
        let outcome = lvm.rollback(&set).await.unwrap();
        holder.kill().unwrap();
        holder.wait().unwrap();
        println!("{label}: {outcome:?}");
        assert_eq!(outcome.snapshots_kept, kept, "{label}");
        let pending = outcome
            .pending
            .expect("a busy origin leaves the merge pending");
        assert!(
            pending.contains("target is busy") && pending.contains("lvchange -an"),
            "{pending}"
        );
        // Nothing changed yet, and the volume stayed mounted.
        assert!(mount_at(origin).is_some());
        assert_all_bytes(&origin.join("f"), b'B', 4 * MIB);
        // A second rollback now would merge into a merging origin: refused.
        let err = lvm.rollback(&set).await.unwrap_err().to_string();
        assert!(err.contains("pending already"), "{err}");

        follow_pending(&pending);
        assert!(mount_at(origin).is_some());
        assert_all_bytes(&origin.join("f"), b'A', 4 * MIB);
        assert!(!origin.join("new").exists());
        let snapshot = lv_state(&set.snapshots[0].id);
        if kept {
            let (attr, from) = snapshot.expect("the kept thin snapshot is gone");
            assert!(attr.starts_with('V'), "{attr}");
            assert_eq!(from, "thin");
            release_twice(&lvm, &set, &vg, label).await;
        } else {
            // A classic merge started by the activation copies in the background (the
            // volume already reads as merged); LVM removes the snapshot when it is done.
            let started = Instant::now();
            while lv_state(&set.snapshots[0].id).is_some() {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(60),
                    "the merged classic snapshot is still there after 60 s: {snapshot:?}"
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            timed("background merge after reactivation", started, ());
        }
    }
}
