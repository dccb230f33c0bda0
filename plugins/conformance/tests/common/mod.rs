//! Fixtures shared by the conformance test targets.

use std::path::{Path, PathBuf};
use std::process::Command;

use dbsnap_conformance::Fixture;
use dbsnap_test_support::btrfs::LoopBtrfs;

/// A mount point name a backend must treat as just a name.
pub const HOSTILE_MOUNT: &str = "mnt $(touch pwned) ;'q' \"d\" `x` &";

pub fn run(argv: &[&Path]) {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A btrfs on a loop device with two subvolumes (two volumes for the suite), snapshots
/// that are not dbsnap's in the snapshot directory, and a directory off btrfs.
pub struct BtrfsFixture {
    pub fixture: Fixture,
    pub fs: LoopBtrfs,
    pub _tmp: tempfile::TempDir,
}

pub fn btrfs_fixture() -> BtrfsFixture {
    let tmp = tempfile::Builder::new()
        .prefix("dbsnap conformance ")
        .tempdir()
        .unwrap();
    let fs = LoopBtrfs::new(tmp.path(), HOSTILE_MOUNT, 256);
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

/// The reference plugins in plugins/examples.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}
