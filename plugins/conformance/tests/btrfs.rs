//! The built-in btrfs backend and the shell btrfs plugin, through the same suite on a
//! loop-device btrfs whose mount point and subvolumes have hostile names.

mod common;

use std::path::Path;

use dbsnap_btrfs::{Btrfs, BtrfsConfig};
use dbsnap_conformance::{run_all, Fixture};
use dbsnap_test_support::btrfs::LoopBtrfs;

use common::{run, HOSTILE_MOUNT};
use dbsnap_exec::{Exec, ExecConfig};

#[tokio::test]
async fn builtin_btrfs_conforms() {
    let f = btrfs_fixture();
    let report = run_all(&Btrfs::new(BtrfsConfig::default()), &f.fixture).await;
    println!("{report}");
    report.assert_passed();
    assert_eq!(f.fs.subvolumes_matching("dbsnap-conf").len(), 0);
}

#[tokio::test]
async fn shell_btrfs_plugin_conforms() {
    let f = btrfs_fixture();
    let config = ExecConfig {
        plugin_dir: Some(common::examples_dir()),
        ..Default::default()
    };
    let backend = Exec::new("btrfs-sh", config).unwrap();
    let report = run_all(&backend, &f.fixture).await;
    println!("{report}");
    report.assert_passed();
    assert_eq!(f.fs.subvolumes_matching("dbsnap-conf").len(), 0);
}

/// A btrfs on a loop device with two subvolumes (two volumes for the suite), snapshots
/// that are not dbsnap's in the snapshot directory, and a directory off btrfs.
struct BtrfsFixture {
    fixture: Fixture,
    fs: LoopBtrfs,
    _tmp: tempfile::TempDir,
}

fn btrfs_fixture() -> BtrfsFixture {
    let tmp = tempfile::Builder::new()
        .prefix("dbsnap conformance ")
        .tempdir()
        .unwrap();
    // Room for the spread check's 320 MiB file.
    let fs = LoopBtrfs::new(tmp.path(), HOSTILE_MOUNT, 768);
    let data = fs.subvolume("data dir");
    let binlog = fs.subvolume("binlog;dir");
    // Foreign snapshots list must ignore: not named dbsnap-*.N, or not a subvolume.
    let snapshots = fs.mountpoint.join(".dbsnap-snapshots");
    std::fs::create_dir_all(&snapshots).unwrap();
    for foreign in [
        "manual.0",
        "dbsnapshot.0",
        "dbsnap-no-index",
        "dbsnap-a b.0",
    ] {
        let target = snapshots.join(foreign);
        run(&[
            Path::new("btrfs"),
            Path::new("subvolume"),
            Path::new("snapshot"),
            Path::new("-r"),
            &data,
            &target,
        ]);
    }
    std::fs::create_dir(snapshots.join("dbsnap-plain-dir.0")).unwrap();
    let workdir = tmp.path().join("work dir");
    std::fs::create_dir(&workdir).unwrap();
    BtrfsFixture {
        fixture: Fixture {
            data_dirs: vec![data, binlog],
            workdir,
            unsupported_dir: Some(tmp.path().to_path_buf()),
        },
        fs,
        _tmp: tmp,
    }
}
