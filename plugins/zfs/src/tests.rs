//! Host tests of the ZFS backend: recorded `zfs` output, no pools.

use super::*;

fn volume(id: &str) -> Volume {
    Volume {
        id: id.into(),
        root: PathBuf::from("/srv").join(id),
        fstype: NAME.into(),
    }
}

fn name() -> SnapshotName {
    SnapshotName::new("dbsnap-t1").unwrap()
}

#[test]
fn config_keys() {
    let c: ZfsConfig = serde_json::from_str(r#"{"read_via":"clone"}"#).unwrap();
    assert_eq!(c.read_via, ReadVia::Clone);
    let c: ZfsConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(c.read_via, ReadVia::Auto);
    assert!(serde_json::from_str::<ZfsConfig>(r#"{"read_via":"magic"}"#).is_err());
    assert!(serde_json::from_str::<ZfsConfig>(r#"{"clone_dir":"/x"}"#).is_err());
}

#[tokio::test]
async fn plan_names_one_snapshot_per_dataset_and_refuses_hostile_ids() {
    let zfs = Zfs::new(ZfsConfig::default());
    let set = zfs
        .plan(&[volume("tank/data"), volume("tank/binlog")], &name())
        .await
        .unwrap();
    let ids: Vec<_> = set.snapshots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["tank/data@dbsnap-t1", "tank/binlog@dbsnap-t1"]);
    assert!(zfs.plan(&[volume("-R")], &name()).await.is_err());
    assert!(zfs.plan(&[volume("tank/a@b")], &name()).await.is_err());
    // Legal, but no room left for `@dbsnap-t1`: refused before any lock, as unsupported.
    let long = format!("tank/{}", "x".repeat(MAX_NAME_LEN - 8));
    assert!(validate_dataset(&long).is_ok());
    let err = zfs.plan(&[volume(&long)], &name()).await.unwrap_err();
    assert!(matches!(err, BackendError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("too long"), "{err}");
}

#[test]
fn atomic_only_within_one_pool_and_with_multi_snapshot_support() {
    let zfs = Zfs::new(ZfsConfig::default());
    let one_pool = [volume("tank/data"), volume("tank/binlog")];
    let two_pools = [volume("tank/data"), volume("fast/binlog")];
    // Unknown capability (probe not run): not atomic, except for a single dataset.
    assert!(!zfs.atomic(&one_pool));
    assert!(zfs.atomic(&one_pool[..1]));
    zfs.multi_snapshot.set(true).unwrap();
    assert!(zfs.atomic(&one_pool));
    assert!(!zfs.atomic(&two_pools));
    let fuse = Zfs::new(ZfsConfig::default());
    fuse.multi_snapshot.set(false).unwrap();
    assert!(!fuse.atomic(&one_pool));
}

#[tokio::test]
async fn release_refuses_snapshots_dbsnap_did_not_name() {
    let set = SnapshotSet {
        backend: NAME.into(),
        name: name(),
        snapshots: vec![VolumeSnapshot {
            volume: volume("tank/data"),
            id: "tank/data@precious".into(),
        }],
    };
    let err = Zfs::new(ZfsConfig::default())
        .release(&set)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refusing to touch"), "{err}");
}
