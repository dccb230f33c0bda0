//! `rollback` on zfs-fuse: a safety snapshot of two datasets brings both back, the
//! snapshots stay (a rollback can be repeated), and a rollback that would destroy newer
//! snapshots is refused with nothing changed.

use std::path::Path;

use dbsnap_backend_api::{RollbackOutcome, SnapshotBackend, SnapshotName};
use dbsnap_test_support::zfs_fuse::ZfsFuse;
use dbsnap_zfs::{Zfs, ZfsConfig};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn rollback_restores_every_dataset_and_refuses_to_destroy_newer_snapshots() {
    let Some(mut zfs) =
        ZfsFuse::enter("rollback_restores_every_dataset_and_refuses_to_destroy_newer_snapshots")
    else {
        return;
    };
    let pool = zfs.create_pool("rb");
    for dataset in ["db", "logs"] {
        zfs.zfs(&["create", &format!("{pool}/{dataset}")]);
    }
    let root = zfs.mount_root(&pool);
    let (data, logs) = (root.join("db"), root.join("logs"));
    std::fs::write(data.join("t.ibd"), "before").unwrap();
    std::fs::write(logs.join("bin.000001"), "log before").unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend = Zfs::new(ZfsConfig::default());
    runtime.block_on(async {
        let volumes = backend
            .probe(&[data.clone(), logs.clone()])
            .await
            .unwrap()
            .volumes;
        let set = backend
            .plan(&volumes, &SnapshotName::new("dbsnap-safety").unwrap())
            .await
            .unwrap();
        backend.snapshot(&set).await.unwrap();

        // The "upgrade": both datasets change.
        std::fs::write(data.join("t.ibd"), "after").unwrap();
        std::fs::write(logs.join("bin.000001"), "log after").unwrap();
        std::fs::write(data.join("new.ibd"), "new").unwrap();
        assert_eq!(
            backend.rollback(&set).await.unwrap(),
            RollbackOutcome::complete_and_kept()
        );
        assert_eq!(read(&data.join("t.ibd")), "before");
        assert_eq!(read(&logs.join("bin.000001")), "log before");
        assert!(!data.join("new.ibd").exists());

        // The snapshots stay: the rollback can be repeated.
        std::fs::write(data.join("t.ibd"), "again").unwrap();
        backend.rollback(&set).await.unwrap();
        assert_eq!(read(&data.join("t.ibd")), "before");

        // A newer snapshot of one dataset: refused, and neither dataset is touched.
        std::fs::write(data.join("t.ibd"), "later").unwrap();
        std::fs::write(logs.join("bin.000001"), "log later").unwrap();
        let newer = backend
            .plan(&volumes[..1], &SnapshotName::new("dbsnap-newer").unwrap())
            .await
            .unwrap();
        backend.snapshot(&newer).await.unwrap();
        let err = backend.rollback(&set).await.unwrap_err().to_string();
        assert!(
            err.contains("newer snapshots") && err.contains("dbsnap-newer"),
            "{err}"
        );
        assert_eq!(read(&data.join("t.ibd")), "later");
        assert_eq!(read(&logs.join("bin.000001")), "log later");

        // Once the newer one is released, the rollback goes through.
        backend.release(&newer).await.unwrap();
        backend.rollback(&set).await.unwrap();
        assert_eq!(read(&data.join("t.ibd")), "before");
        backend.release(&set).await.unwrap();
    });
}
