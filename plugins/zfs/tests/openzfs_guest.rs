//! The ZFS backend against real OpenZFS (2.1, Debian's zfs-dkms), which the host kernel
//! lacks: `openzfs_guest_suite` boots the TCG guest once and runs every `in_guest_` test
//! of this binary inside. How OpenZFS gets into the guest (built once by
//! `tests/guest/zfs-openzfs-build.sh`, then cached) and where the pools live: see
//! `dbsnap_test_support::openzfs`.
//!
//! What only OpenZFS can show: the multi-dataset snapshot is one call and one
//! transaction group, and the read path is `.zfs/snapshot` (also for a dataset with
//! `mountpoint=legacy`), with clones still available on request.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use dbsnap_backend_api::{SnapshotBackend, SnapshotName};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};
use dbsnap_test_support::openzfs::{self, OpenZfs};
use dbsnap_test_support::sh;
use dbsnap_zfs::{ReadVia, Zfs, ZfsConfig};

/// One small server per pool fits a 384 MiB pool with the ARC at its default size.
const OPENZFS: OpenZfs = OpenZfs {
    guest: "openzfs",
    suite: "OpenZFS guest suite",
    arc_max_mib: None,
    tmpfs_mib: 600,
    pool_mib: 384,
};

#[test]
fn openzfs_guest_suite() {
    OPENZFS.run_suite();
}

fn copy_tree(from: &Path, to: &Path) {
    sh(
        "cp",
        &["-a", &from.to_string_lossy(), &to.to_string_lossy()],
    );
}

fn prop(name: &str, property: &str) -> String {
    sh("zfs", &["get", "-H", "-p", "-o", "value", property, name])
        .trim()
        .to_string()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
#[ignore = "runs inside the TCG guest, started by openzfs_guest_suite"]
fn in_guest_atomic_snapshot_snapdir_holds_release() {
    let pool = OPENZFS.pool("ozfs1");
    let (p, root) = (pool.name.clone(), pool.root.clone());
    // Recorded output for the parser's unit tests (src/output.rs).
    println!("RECORD zfs version:\n{}", sh("zfs", &["version"]));
    for ds in ["db", "db/binlog", "redo", "leg"] {
        sh("zfs", &["create", &format!("{p}/{ds}")]);
    }
    // A legacy mountpoint: only the mount table knows where it is.
    sh("zfs", &["set", "mountpoint=legacy", &format!("{p}/leg")]);
    let legacy = pool.dir().join("legacy-undo");
    std::fs::create_dir_all(&legacy).unwrap();
    sh(
        "mount",
        &["-t", "zfs", &format!("{p}/leg"), &legacy.to_string_lossy()],
    );
    let (datadir, redo) = (root.join("db"), root.join("redo"));
    std::fs::write(datadir.join("t1.ibd"), "v1").unwrap();
    std::fs::write(datadir.join("binlog/b.000001"), "log1").unwrap();
    std::fs::write(legacy.join("undo001"), "undo1").unwrap();
    let workdir = pool.dir().join("work");
    std::fs::create_dir_all(&workdir).unwrap();

    let backend = Zfs::new(ZfsConfig::default());
    block_on(async {
        let volumes = backend
            .probe(&[datadir.clone(), redo.clone(), legacy.clone()])
            .await
            .unwrap();
        let (volumes, atomic) = (volumes.volumes, volumes.atomic);
        let ids: Vec<&str> = volumes.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                format!("{p}/db"),
                format!("{p}/db/binlog"),
                format!("{p}/redo"),
                format!("{p}/leg")
            ]
        );
        assert_eq!(volumes[3].root, legacy);
        // OpenZFS snapshots the whole set in one call.
        assert!(atomic);

        let set = backend
            .plan(&volumes, &SnapshotName::new("dbsnap-oz1").unwrap())
            .await
            .unwrap();
        let t = Instant::now();
        backend.snapshot(&set).await.unwrap();
        println!(
            "MEASURE OpenZFS snapshot of 4 datasets (one call): {} ms",
            t.elapsed().as_millis()
        );
        // One call = one transaction group for all of them.
        let txgs: Vec<String> = set
            .snapshots
            .iter()
            .map(|s| prop(&s.id, "createtxg"))
            .collect();
        assert!(txgs.windows(2).all(|w| w[0] == w[1]), "{txgs:?}");

        std::fs::write(datadir.join("t1.ibd"), "v2").unwrap();
        std::fs::write(legacy.join("undo001"), "undo2").unwrap();
        let t = Instant::now();
        let paths = backend.mount(&set, &workdir).await.unwrap();
        println!(
            "MEASURE OpenZFS hold + .zfs/snapshot of 4 datasets: {} ms",
            t.elapsed().as_millis()
        );
        // Read through .zfs/snapshot, nothing cloned.
        assert_eq!(
            paths[0].frozen_root,
            datadir.join(".zfs/snapshot/dbsnap-oz1")
        );
        assert_eq!(
            paths[3].frozen_root,
            legacy.join(".zfs/snapshot/dbsnap-oz1")
        );
        assert_eq!(
            std::fs::read_to_string(paths[0].frozen_root.join("t1.ibd")).unwrap(),
            "v1"
        );
        assert_eq!(
            std::fs::read_to_string(paths[1].frozen_root.join("b.000001")).unwrap(),
            "log1"
        );
        assert_eq!(
            std::fs::read_to_string(paths[3].frozen_root.join("undo001")).unwrap(),
            "undo1"
        );
        assert!(std::fs::write(paths[0].frozen_root.join("x"), "x").is_err());
        // Recorded output for the parser's unit tests (src/output.rs, tests/fixtures/).
        let get = sh(
            "zfs",
            &[
                "get",
                "-H",
                "-p",
                "-o",
                "name,property,value",
                "type,mountpoint,dbsnap:run,userrefs,createtxg",
                &volumes[0].id,
                &set.snapshots[0].id,
            ],
        );
        println!("RECORD zfs get:\n{get}");
        let ids: Vec<&str> = volumes.iter().map(|v| v.id.as_str()).collect();
        let mut args = vec![
            "list",
            "-H",
            "-t",
            "snapshot",
            "-d",
            "1",
            "-o",
            "name,dbsnap:run",
        ];
        args.extend(&ids);
        println!("RECORD zfs list:\n{}", sh("zfs", &args));
        let probe = Command::new("zfs")
            .args([
                "snapshot",
                "dbsnap-capability-probe",
                "dbsnap-capability-probe",
            ])
            .output()
            .unwrap();
        println!(
            "RECORD capability probe: {} {}",
            probe.status,
            String::from_utf8_lossy(&probe.stderr)
        );
        let holds = sh("zfs", &["holds", "-H", &set.snapshots[0].id]);
        assert!(holds.contains("\tdbsnap\t"), "{holds}");
        assert_eq!(backend.list(&volumes).await.unwrap().len(), 1);

        backend.unmount(&set, &workdir).await.unwrap();
        backend.release(&set).await.unwrap();
        backend.release(&set).await.unwrap();
        let left = sh(
            "zfs",
            &["list", "-H", "-t", "snapshot", "-o", "name", "-r", &p],
        );
        assert!(left.trim().is_empty(), "left behind: {left}");

        // read_via = "clone" works on OpenZFS too, and cleans up after itself.
        let cloning = Zfs::new(ZfsConfig {
            read_via: ReadVia::Clone,
        });
        cloning.probe(std::slice::from_ref(&datadir)).await.unwrap();
        let set = cloning
            .plan(&volumes[..1], &SnapshotName::new("dbsnap-oz2").unwrap())
            .await
            .unwrap();
        cloning.snapshot(&set).await.unwrap();
        let t = Instant::now();
        let paths = cloning.mount(&set, &workdir).await.unwrap();
        println!(
            "MEASURE OpenZFS hold + clone + mount of 1 dataset: {} ms",
            t.elapsed().as_millis()
        );
        assert_eq!(paths[0].frozen_root, workdir.join("0"));
        assert_eq!(
            std::fs::read_to_string(paths[0].frozen_root.join("t1.ibd")).unwrap(),
            "v2"
        );
        assert!(std::fs::write(paths[0].frozen_root.join("x"), "x").is_err());
        cloning.unmount(&set, &workdir).await.unwrap();
        cloning.release(&set).await.unwrap();
        let left = sh("zfs", &["list", "-H", "-t", "all", "-o", "name", "-r", &p]);
        assert!(!left.contains("dbsnap-"), "left behind: {left}");
    });
    sh("umount", &[&legacy.to_string_lossy()]);
}

#[test]
#[ignore = "runs inside the TCG guest, started by openzfs_guest_suite"]
fn in_guest_mariadb_on_openzfs() {
    let pool = OPENZFS.pool("ozfs2");
    let (p, root) = (pool.name.clone(), pool.root.clone());
    sh(
        "zfs",
        &["create", "-o", "recordsize=16k", &format!("{p}/mysql")],
    );
    sh("zfs", &["create", &format!("{p}/binlog")]);
    let (datadir, binlog) = (root.join("mysql"), root.join("binlog"));
    let template = openzfs::template_datadir();
    sh(
        "cp",
        &[
            "-a",
            &format!("{}/.", template.display()),
            &datadir.to_string_lossy(),
        ],
    );
    let mut options = ServerOptions::new(&datadir, &pool.dir().join("run1"));
    options.log_bin = Some(binlog.join("binlog"));
    let server = MariaDb::start_existing(options);
    server.sql(
        "CREATE DATABASE t; CREATE TABLE t.a (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(20)) \
         ENGINE=InnoDB; INSERT INTO t.a (v) SELECT CONCAT('r', seq) FROM t.seq_1_to_1000",
    );
    let backend = Zfs::new(ZfsConfig::default());
    let workdir = pool.dir().join("work");
    std::fs::create_dir_all(&workdir).unwrap();
    block_on(async {
        let volumes = backend
            .probe(&[datadir.clone(), binlog.clone()])
            .await
            .unwrap();
        assert!(volumes.atomic);
        let volumes = volumes.volumes;
        let set = backend
            .plan(&volumes, &SnapshotName::new("dbsnap-ozm").unwrap())
            .await
            .unwrap();
        // One atomic snapshot of an InnoDB-only server needs no lock: crash recovery on
        // the copy must give exactly the committed rows.
        let t = Instant::now();
        backend.snapshot(&set).await.unwrap();
        println!(
            "MEASURE OpenZFS snapshot of a running MariaDB (2 datasets, no lock): {} ms",
            t.elapsed().as_millis()
        );
        server.sql("INSERT INTO t.a (v) VALUES ('after')");
        let paths = backend.mount(&set, &workdir).await.unwrap();
        let copy = pool.dir().join("copy");
        std::fs::create_dir_all(&copy).unwrap();
        copy_tree(&paths[0].frozen_root, &copy.join("mysql"));
        copy_tree(&paths[1].frozen_root, &copy.join("binlog"));
        backend.unmount(&set, &workdir).await.unwrap();
        backend.release(&set).await.unwrap();
        let mut options = ServerOptions::new(&copy.join("mysql"), &pool.dir().join("run2"));
        options.log_bin = Some(copy.join("binlog/binlog"));
        options.server_id = 2;
        let restored = MariaDb::start_existing(options);
        assert_eq!(restored.sql("SELECT COUNT(*) FROM t.a"), "1000");
        assert!(restored.sql("CHECK TABLE t.a").ends_with("OK"));
        restored.stop();
    });
    server.stop();
}
