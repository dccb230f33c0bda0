//! The ZFS backend against the real `zfs` command line of zfs-fuse, each test with its
//! own private daemon in its own mount namespace (see `dbsnap_test_support::zfs_fuse`).
//! Needs root, `unshare` and Debian's `zfs-fuse` package.
//!
//! zfs-fuse differs from OpenZFS where it matters here: no multi-dataset snapshot (so
//! not atomic) and no `.zfs/snapshot` (so the backend reads through clones). The guest
//! tier runs the OpenZFS side.

use std::path::{Path, PathBuf};
use std::time::Instant;

use dbsnap_backend_api::{Health, SnapshotBackend, SnapshotName, SnapshotSet, Volume};
use dbsnap_test_support::zfs_fuse::ZfsFuse;
use dbsnap_zfs::{ReadVia, Zfs, ZfsConfig};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime")
        .block_on(f)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn name(s: &str) -> SnapshotName {
    SnapshotName::new(s).unwrap()
}

/// A pool with the usual MySQL layout: datadir `P/db`, binlogs on `P/db/binlog` (a child
/// dataset mounted inside the datadir) and redo logs on `P/redo`.
struct Layout {
    pool: String,
    datadir: PathBuf,
    binlog: PathBuf,
    redo: PathBuf,
}

fn make_layout(zfs: &mut ZfsFuse, hint: &str) -> Layout {
    let pool = zfs.create_pool(hint);
    for ds in ["db", "db/binlog", "redo"] {
        zfs.zfs(&["create", &format!("{pool}/{ds}")]);
    }
    let root = zfs.mount_root(&pool);
    let layout = Layout {
        datadir: root.join("db"),
        binlog: root.join("db/binlog"),
        redo: root.join("redo"),
        pool,
    };
    write(&layout.datadir.join("t1.ibd"), "v1");
    write(&layout.binlog.join("mysql-bin.000001"), "log1");
    write(&layout.redo.join("ib_logfile0"), "redo1");
    layout
}

fn exists(zfs: &ZfsFuse, dataset: &str) -> bool {
    let all = zfs.zfs(&["list", "-H", "-o", "name", "-t", "all"]);
    all.lines().any(|l| l == dataset)
}

fn property(zfs: &ZfsFuse, name: &str, property: &str) -> String {
    let out = zfs.zfs(&["get", "-H", "-p", "-o", "value", property, name]);
    out.trim().to_string()
}

#[test]
fn datadir_and_binlog_datasets_snapshot_read_hold_release() {
    let Some(mut zfs) = ZfsFuse::enter("datadir_and_binlog_datasets_snapshot_read_hold_release")
    else {
        return;
    };
    let l = make_layout(&mut zfs, "dbsnapa");
    let workdir = zfs.dir().join("work");
    std::fs::create_dir(&workdir).unwrap();
    let backend = Zfs::new(ZfsConfig::default());
    block_on(async {
        // probe: the binlog dataset inside the datadir is found without being named.
        let volumes = backend
            .probe(&[l.datadir.clone(), l.redo.clone()])
            .await
            .unwrap();
        let (volumes, atomic) = (volumes.volumes, volumes.atomic);
        let ids: Vec<&str> = volumes.iter().map(|v| v.id.as_str()).collect();
        let p = &l.pool;
        assert_eq!(
            ids,
            [
                format!("{p}/db"),
                format!("{p}/db/binlog"),
                format!("{p}/redo")
            ]
        );
        assert_eq!(volumes[1].root, l.binlog);
        // zfs-fuse takes one snapshot per call: not atomic across datasets.
        assert!(!atomic);
        assert!(backend.atomic(&volumes[..1]));

        let set = backend.plan(&volumes, &name("dbsnap-t1")).await.unwrap();
        let started = Instant::now();
        backend.snapshot(&set).await.unwrap();
        println!(
            "MEASURE zfs-fuse snapshot of 3 datasets: {} ms",
            started.elapsed().as_millis()
        );
        for snap in &set.snapshots {
            assert_eq!(property(&zfs, &snap.id, "dbsnap:run"), "dbsnap-t1");
        }

        // The live data moves on; the snapshot must not.
        write(&l.datadir.join("t1.ibd"), "v2");
        write(&l.datadir.join("t2.ibd"), "new");
        write(&l.binlog.join("mysql-bin.000001"), "log2");

        let started = Instant::now();
        let paths = backend.mount(&set, &workdir).await.unwrap();
        println!(
            "MEASURE zfs-fuse hold+clone+mount of 3 datasets: {} ms",
            started.elapsed().as_millis()
        );
        assert_eq!(paths.len(), 3);
        assert_eq!(paths[0].origin_root, l.datadir);
        // zfs-fuse has no .zfs directory: the backend fell back to clones in the workdir.
        assert!(paths.iter().all(|p| p.frozen_root.starts_with(&workdir)));
        assert_eq!(read(&paths[0].frozen_root.join("t1.ibd")), "v1");
        assert!(!paths[0].frozen_root.join("t2.ibd").exists());
        assert_eq!(read(&paths[1].frozen_root.join("mysql-bin.000001")), "log1");
        assert_eq!(read(&paths[2].frozen_root.join("ib_logfile0")), "redo1");
        assert!(
            std::fs::write(paths[0].frozen_root.join("x"), "x").is_err(),
            "the clone must be read-only"
        );
        // Held while in use: nobody can destroy it underneath the copy.
        for snap in &set.snapshots {
            assert_eq!(property(&zfs, &snap.id, "userrefs"), "1");
        }
        assert!(std::process::Command::new("zfs")
            .args(["destroy", &set.snapshots[2].id])
            .output()
            .is_ok_and(|o| !o.status.success()));
        assert_eq!(backend.health(&set).await.unwrap(), Health::Ok);

        let listed = backend.list(&volumes).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, set.name);
        assert_eq!(listed[0].snapshots.len(), 3);

        backend.unmount(&set, &workdir).await.unwrap();
        assert!(!exists(&zfs, &format!("{p}/dbsnap-t1.db")));
        assert!(!exists(&zfs, &format!("{p}/db/dbsnap-t1.binlog")));
        assert_eq!(std::fs::read_dir(&workdir).unwrap().count(), 0);
        backend.unmount(&set, &workdir).await.unwrap();

        backend.release(&set).await.unwrap();
        for snap in &set.snapshots {
            assert!(!exists(&zfs, &snap.id), "{} survived release", snap.id);
        }
        backend.release(&set).await.unwrap();
        assert!(matches!(
            backend.health(&set).await.unwrap(),
            Health::Failed(_)
        ));
        // The live data is untouched.
        assert_eq!(read(&l.datadir.join("t1.ibd")), "v2");
    });
}

#[test]
fn list_and_cleanup_touch_only_ours() {
    let Some(mut zfs) = ZfsFuse::enter("list_and_cleanup_touch_only_ours") else {
        return;
    };
    let l = make_layout(&mut zfs, "dbsnapb");
    let p = l.pool.clone();
    let workdir = zfs.dir().join("work");
    std::fs::create_dir(&workdir).unwrap();
    // Snapshots that are not ours: a manual one, one with our prefix but no tag, one
    // tagged for a different run.
    zfs.zfs(&["snapshot", &format!("{p}/db@manual")]);
    zfs.zfs(&["snapshot", &format!("{p}/db@dbsnap-untagged")]);
    zfs.zfs(&[
        "snapshot",
        "-o",
        "dbsnap:run=dbsnap-other",
        &format!("{p}/db@dbsnap-mislabelled"),
    ]);
    block_on(async {
        let volumes = Zfs::new(ZfsConfig::default())
            .probe(&[l.datadir.clone(), l.redo.clone()])
            .await
            .unwrap()
            .volumes;

        // A run that "crashes" after mounting: its backend object is gone.
        {
            let crashed = Zfs::new(ZfsConfig::default());
            let volumes = crashed
                .probe(std::slice::from_ref(&l.datadir))
                .await
                .unwrap()
                .volumes;
            let set = crashed
                .plan(&volumes, &name("dbsnap-crashed"))
                .await
                .unwrap();
            crashed.snapshot(&set).await.unwrap();
            crashed.mount(&set, &workdir).await.unwrap();
        }

        // Cleanup finds it from ZFS alone, and nothing else.
        let backend = Zfs::new(ZfsConfig::default());
        let listed = backend.list(&volumes).await.unwrap();
        let names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["dbsnap-crashed"]);
        for set in &listed {
            backend.unmount(set, &workdir).await.unwrap();
            backend.release(set).await.unwrap();
        }
        assert!(backend.list(&volumes).await.unwrap().is_empty());
        assert!(!exists(&zfs, &format!("{p}/dbsnap-crashed.db")));
        for kept in ["manual", "dbsnap-untagged", "dbsnap-mislabelled"] {
            assert!(
                exists(&zfs, &format!("{p}/db@{kept}")),
                "{kept} was touched"
            );
        }

        // Releasing a set that names snapshots we did not tag is refused.
        for foreign in ["dbsnap-untagged", "dbsnap-mislabelled"] {
            let set = backend.plan(&volumes[..1], &name(foreign)).await.unwrap();
            let err = backend.release(&set).await.unwrap_err();
            assert!(err.to_string().contains("refusing"), "{err}");
            assert!(exists(&zfs, &format!("{p}/db@{foreign}")));
        }

        // A dataset squatting on our clone's name is not destroyed either.
        let set = backend.plan(&volumes, &name("dbsnap-squat")).await.unwrap();
        backend.snapshot(&set).await.unwrap();
        zfs.zfs(&[
            "create",
            "-o",
            "mountpoint=none",
            &format!("{p}/dbsnap-squat.db"),
        ]);
        let err = backend.release(&set).await.unwrap_err();
        assert!(err.to_string().contains("refusing to destroy"), "{err}");
        assert!(exists(&zfs, &format!("{p}/dbsnap-squat.db")));
        zfs.zfs(&["destroy", &format!("{p}/dbsnap-squat.db")]);
        backend.release(&set).await.unwrap();

        // Hostile dataset names (e.g. from a tampered journal) never reach zfs.
        let hostile = Volume {
            id: "-R".into(),
            root: l.datadir.clone(),
            fstype: "zfs".into(),
        };
        assert!(backend
            .plan(std::slice::from_ref(&hostile), &name("dbsnap-h"))
            .await
            .is_err());
        assert!(backend.list(&[hostile]).await.is_err());
        let tampered = SnapshotSet {
            snapshots: vec![dbsnap_backend_api::VolumeSnapshot {
                volume: volumes[0].clone(),
                id: format!("{p}/db@manual"),
            }],
            ..set.clone()
        };
        assert!(backend.release(&tampered).await.is_err());
        assert!(exists(&zfs, &format!("{p}/db@manual")));

        // A path that is not on ZFS is refused with a hint.
        let err = backend.probe(&[std::env::temp_dir()]).await.unwrap_err();
        assert!(err.to_string().contains("not on a ZFS dataset"), "{err}");

        // read_via = "snapdir" cannot work on zfs-fuse and says what to do instead.
        let snapdir_only = Zfs::new(ZfsConfig {
            read_via: ReadVia::Snapdir,
        });
        let set = snapdir_only
            .plan(&volumes[..1], &name("dbsnap-sd"))
            .await
            .unwrap();
        snapdir_only.snapshot(&set).await.unwrap();
        let err = snapdir_only.mount(&set, &workdir).await.unwrap_err();
        assert!(err.to_string().contains("read_via"), "{err}");
        snapdir_only.unmount(&set, &workdir).await.unwrap();
        snapdir_only.release(&set).await.unwrap();
        assert!(!exists(&zfs, &format!("{p}/db@dbsnap-sd")));
    });
}

#[test]
fn a_pool_root_dataset_works_too() {
    let Some(mut zfs) = ZfsFuse::enter("a_pool_root_dataset_works_too") else {
        return;
    };
    let pool = zfs.create_pool("dbsnapr");
    let root = zfs.mount_root(&pool);
    write(&root.join("ibdata1"), "v1");
    let workdir = zfs.dir().join("work");
    std::fs::create_dir(&workdir).unwrap();
    let backend = Zfs::new(ZfsConfig::default());
    block_on(async {
        let volumes = backend
            .probe(std::slice::from_ref(&root))
            .await
            .unwrap()
            .volumes;
        assert_eq!(volumes[0].id, pool);
        let set = backend.plan(&volumes, &name("dbsnap-root")).await.unwrap();
        backend.snapshot(&set).await.unwrap();
        write(&root.join("ibdata1"), "v2");
        let paths = backend.mount(&set, &workdir).await.unwrap();
        // The clone of a pool's root dataset is its child `<pool>/<name>`.
        assert!(exists(&zfs, &format!("{pool}/dbsnap-root")));
        assert_eq!(read(&paths[0].frozen_root.join("ibdata1")), "v1");
        assert_eq!(backend.health(&set).await.unwrap(), Health::Ok);
        backend.unmount(&set, &workdir).await.unwrap();
        backend.release(&set).await.unwrap();
        assert!(!exists(&zfs, &format!("{pool}/dbsnap-root")));
        assert!(!exists(&zfs, &format!("{pool}@dbsnap-root")));
    });
}
