//! The ZFS backend against real OpenZFS (2.1, Debian's zfs-dkms), which the host kernel
//! lacks: `openzfs_guest_suite` boots the TCG guest once (see
//! `dbsnap_test_support::guest`) and runs every `in_guest_` test of this binary inside.
//!
//! The kernel modules and the userland come from `tests/guest/zfs-openzfs-build.sh`,
//! which this test runs first (about 4 minutes the first time, then cached). In the
//! guest the userland is copied into the throw-away overlay root and the modules are
//! loaded with insmod; pools live on files in a tmpfs.
//!
//! What only OpenZFS can show: the multi-dataset snapshot is one call and one
//! transaction group, and the read path is `.zfs/snapshot` (also for a dataset with
//! `mountpoint=legacy`), with clones still available on request.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use dbsnap_backend_api::{SnapshotBackend, SnapshotName};
use dbsnap_test_support::guest::{self, Guest};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};
use dbsnap_zfs::{ReadVia, Zfs, ZfsConfig};

/// Where the build script's output is, passed into the guest.
const ENV_OPENZFS: &str = "DBSNAP_OPENZFS_DIR";
/// A MariaDB datadir initialised on the host (1 s there, 7-13 s under TCG).
const ENV_DATADIR: &str = "DBSNAP_OPENZFS_TEMPLATE_DATADIR";
/// Load order: each module needs the ones before it.
const MODULES: [&str; 9] = [
    "spl", "znvpair", "zcommon", "icp", "zavl", "zlua", "zzstd", "zunicode", "zfs",
];

#[test]
fn openzfs_guest_suite() {
    let template = tempfile::tempdir().unwrap();
    let datadir = template.path().join("datadir");
    dbsnap_test_support::mariadb::install(&datadir);
    let filter = std::env::var("DBSNAP_GUEST_TESTS").unwrap_or_else(|_| "in_guest_".into());
    let mut guest = Guest::new("openzfs")
        .env(ENV_DATADIR, &datadir.to_string_lossy())
        .memory_mib(2048);
    if std::env::var_os("DBSNAP_GUEST_NATIVE").is_some() {
        // A throw-away machine (vagrant/) runs its own OpenZFS, installed from packages.
        guest = guest.module("zfs");
    } else {
        guest = guest.env(ENV_OPENZFS, &build_openzfs());
    }
    let run = guest.run_this_binary(&["--include-ignored", &filter]);
    println!(
        "MEASURE OpenZFS guest suite: {:.1} s wall (job started at {:?} s uptime)",
        run.wall.as_secs_f64(),
        run.boot_seconds
    );
    run.assert_success();
}

/// Run tests/guest/zfs-openzfs-build.sh (cached after the first run); returns its output
/// directory.
fn build_openzfs() -> String {
    let started = Instant::now();
    let script = guest::guest_files().join("zfs-openzfs-build.sh");
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed (it needs root, linux-headers-amd64 and Debian's contrib component; \
         see scripts/install-deps.sh):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "MEASURE OpenZFS build (or cache hit): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pool on a file in a tmpfs of its own, under a temporary directory. Dropping it
/// destroys the pool and unmounts the tmpfs.
struct Pool {
    name: String,
    /// Where the pool's root dataset is mounted.
    root: PathBuf,
    dir: tempfile::TempDir,
}

impl Pool {
    /// Install OpenZFS into the guest (once), then make the pool.
    fn create(name: &str) -> Pool {
        guest::require_guest();
        install_openzfs();
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir(&files).unwrap();
        sh(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                "size=600m",
                "zfs-files",
                &files.to_string_lossy(),
            ],
        );
        let image = files.join(format!("{name}.img"));
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(384 << 20))
            .unwrap();
        let root = dir.path().join("mnt");
        sh(
            "zpool",
            &[
                "create",
                "-m",
                &root.to_string_lossy(),
                name,
                &image.to_string_lossy(),
            ],
        );
        Pool {
            name: name.to_string(),
            root,
            dir,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = Command::new("zpool")
            .args(["destroy", "-f", &self.name])
            .status();
        let _ = Command::new("umount")
            .arg(self.dir.path().join("files"))
            .status();
    }
}

/// In the TCG guest: copy the userland into the throw-away overlay root (shadowing the
/// host's zfs-fuse commands only there) and insmod the modules. On a native machine the
/// harness has already loaded its own OpenZFS.
fn install_openzfs() {
    let Ok(dir) = std::env::var(ENV_OPENZFS) else {
        assert!(
            Path::new("/sys/module/zfs").exists(),
            "no OpenZFS kernel module on this machine"
        );
        return;
    };
    if Path::new("/sys/module/zfs").exists() {
        return;
    }
    let t = Instant::now();
    sh("cp", &["-a", &format!("{dir}/root/."), "/"]);
    for m in MODULES {
        sh("insmod", &[&format!("{dir}/ko/{m}.ko")]);
    }
    println!(
        "MEASURE OpenZFS userland + insmod in guest: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Recorded output for the parser's unit tests (src/output.rs).
    println!("RECORD zfs version:\n{}", sh("zfs", &["version"]));
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
    let pool = Pool::create("ozfs1");
    let (p, root) = (pool.name.clone(), pool.root.clone());
    for ds in ["db", "db/binlog", "redo", "leg"] {
        sh("zfs", &["create", &format!("{p}/{ds}")]);
    }
    // A legacy mountpoint: only the mount table knows where it is.
    sh("zfs", &["set", "mountpoint=legacy", &format!("{p}/leg")]);
    let legacy = pool.dir.path().join("legacy-undo");
    std::fs::create_dir_all(&legacy).unwrap();
    sh(
        "mount",
        &["-t", "zfs", &format!("{p}/leg"), &legacy.to_string_lossy()],
    );
    let (datadir, redo) = (root.join("db"), root.join("redo"));
    std::fs::write(datadir.join("t1.ibd"), "v1").unwrap();
    std::fs::write(datadir.join("binlog/b.000001"), "log1").unwrap();
    std::fs::write(legacy.join("undo001"), "undo1").unwrap();
    let workdir = pool.dir.path().join("work");
    std::fs::create_dir_all(&workdir).unwrap();

    let backend = Zfs::new(ZfsConfig::default());
    block_on(async {
        let volumes = backend
            .probe(&[datadir.clone(), redo.clone(), legacy.clone()])
            .await
            .unwrap();
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
        assert!(backend.snapshot_is_atomic(&volumes));

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
    let pool = Pool::create("ozfs2");
    let (p, root) = (pool.name.clone(), pool.root.clone());
    sh(
        "zfs",
        &["create", "-o", "recordsize=16k", &format!("{p}/mysql")],
    );
    sh("zfs", &["create", &format!("{p}/binlog")]);
    let (datadir, binlog) = (root.join("mysql"), root.join("binlog"));
    let template = std::env::var(ENV_DATADIR).expect("DBSNAP_OPENZFS_TEMPLATE_DATADIR");
    sh(
        "cp",
        &["-a", &format!("{template}/."), &datadir.to_string_lossy()],
    );
    let mut options = ServerOptions::new(&datadir, &pool.dir.path().join("run1"));
    options.log_bin = Some(binlog.join("binlog"));
    let server = MariaDb::start_existing(options);
    server.sql(
        "CREATE DATABASE t; CREATE TABLE t.a (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(20)) \
         ENGINE=InnoDB; INSERT INTO t.a (v) SELECT CONCAT('r', seq) FROM t.seq_1_to_1000",
    );
    let backend = Zfs::new(ZfsConfig::default());
    let workdir = pool.dir.path().join("work");
    std::fs::create_dir_all(&workdir).unwrap();
    block_on(async {
        let volumes = backend
            .probe(&[datadir.clone(), binlog.clone()])
            .await
            .unwrap();
        assert!(backend.snapshot_is_atomic(&volumes));
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
        let copy = pool.dir.path().join("copy");
        std::fs::create_dir_all(&copy).unwrap();
        copy_tree(&paths[0].frozen_root, &copy.join("mysql"));
        copy_tree(&paths[1].frozen_root, &copy.join("binlog"));
        backend.unmount(&set, &workdir).await.unwrap();
        backend.release(&set).await.unwrap();
        let mut options = ServerOptions::new(&copy.join("mysql"), &pool.dir.path().join("run2"));
        options.log_bin = Some(copy.join("binlog/binlog"));
        options.server_id = 2;
        let restored = MariaDb::start_existing(options);
        assert_eq!(restored.sql("SELECT COUNT(*) FROM t.a"), "1000");
        assert!(restored.sql("CHECK TABLE t.a").ends_with("OK"));
        restored.stop();
    });
    server.stop();
}
