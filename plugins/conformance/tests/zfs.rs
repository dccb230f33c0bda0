//! The ZFS backend through the suite, on zfs-fuse (a private daemon per test). On
//! zfs-fuse snapshots are read through read-only clones; OpenZFS's `.zfs/snapshot`
//! path is covered by the ZFS crate's own guest tests.

use dbsnap_conformance::{run_all, Fixture};
use dbsnap_test_support::zfs_fuse::ZfsFuse;
use dbsnap_zfs::{Zfs, ZfsConfig};

#[test]
fn zfs_conforms_on_zfs_fuse() {
    let Some(mut zfs) = ZfsFuse::enter("zfs_conforms_on_zfs_fuse") else {
        return;
    };
    let pool = zfs.create_pool("conf");
    for dataset in ["data dir", "bin:log"] {
        zfs.zfs(&["create", &format!("{pool}/{dataset}")]);
    }
    let root = zfs.mount_root(&pool);
    let workdir = zfs.dir().join("work dir");
    std::fs::create_dir(&workdir).unwrap();
    let fixture = Fixture {
        data_dirs: vec![root.join("data dir"), root.join("bin:log")],
        workdir,
        unsupported_dir: Some(zfs.dir().to_path_buf()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(run_all(&Zfs::new(ZfsConfig::default()), &fixture));
    println!("{report}");
    report.assert_passed();
}
