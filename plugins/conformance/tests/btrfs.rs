//! The built-in btrfs backend and the shell btrfs plugin, through the same suite on a
//! loop-device btrfs whose mount point and subvolumes have hostile names.

mod common;

use dbsnap_btrfs::{Btrfs, BtrfsConfig};
use dbsnap_conformance::run_all;
use dbsnap_exec::{Exec, ExecConfig};

#[tokio::test]
async fn builtin_btrfs_conforms() {
    let f = common::btrfs_fixture();
    let report = run_all(&Btrfs::new(BtrfsConfig::default()), &f.fixture).await;
    println!("{report}");
    report.assert_passed();
    assert_eq!(f.fs.subvolumes_matching("dbsnap-conf").len(), 0);
}

#[tokio::test]
async fn shell_btrfs_plugin_conforms() {
    let f = common::btrfs_fixture();
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
