//! Host tests of the LVM backend: recorded `lvs` reports, no devices.

use super::*;
use crate::device::parse_device_mapper_major;

fn fixture(name: &str) -> Vec<Lv> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    lvs::parse_report(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn volume(id: &str) -> Volume {
    Volume {
        id: id.into(),
        root: PathBuf::from("/srv").join(id),
        fstype: "xfs".into(),
    }
}

fn fixture_set(ids: &[&str]) -> SnapshotSet {
    SnapshotSet {
        backend: NAME.into(),
        name: SnapshotName::new("dbsnap-fixture").unwrap(),
        snapshots: ids
            .iter()
            .map(|id| VolumeSnapshot {
                volume: volume("vgfix/data"),
                id: id.to_string(),
            })
            .collect(),
    }
}

#[test]
fn finds_the_device_mapper_major() {
    let text = "Character devices:\n  1 mem\n 10 misc\n\nBlock devices:\n  7 loop\n  8 sd\n253 device-mapper\n254 mdp\n";
    assert_eq!(parse_device_mapper_major(text), Some(253));
    assert_eq!(
        parse_device_mapper_major("Character devices:\n 10 misc\n\nBlock devices:\n  7 loop\n"),
        None
    );
}

#[test]
fn mount_options_per_filesystem() {
    assert_eq!(mount_options("xfs").unwrap(), "ro,nouuid,norecovery");
    assert_eq!(mount_options("ext4").unwrap(), "ro,noload");
    assert!(mount_options("btrfs").is_err());
}

#[test]
fn lv_ids_are_checked() {
    assert_eq!(split_lv_id("vg0/data").unwrap(), ("vg0", "data"));
    for bad in [
        "vg0",
        "vg0/",
        "/data",
        "vg0/a/b",
        "vg0/-x",
        "vg 0/data",
        "vg0/$(id)",
        "../x",
    ] {
        assert!(split_lv_id(bad).is_err(), "{bad:?} was accepted");
    }
}

#[tokio::test]
async fn plan_names_snapshots_after_the_set() {
    let lvm = Lvm::new(LvmConfig::default());
    let name = SnapshotName::new("dbsnap-20261125T000000Z").unwrap();
    let set = lvm
        .plan(&[volume("vg0/data"), volume("vg1/logs")], &name)
        .await
        .unwrap();
    let ids: Vec<&str> = set.snapshots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "vg0/dbsnap-20261125T000000Z.0",
            "vg1/dbsnap-20261125T000000Z.1"
        ]
    );
    assert!(lvm.plan(&[volume("vg0/a;b")], &name).await.is_err());
    // A label of the documented 64 characters fits LVM's and device-mapper's limits.
    let labelled =
        SnapshotName::new(format!("dbsnap-20261125T000000Z-{}", "L".repeat(64))).unwrap();
    let set = lvm.plan(&[volume("vg0/data")], &labelled).await.unwrap();
    assert_eq!(set.snapshots[0].id.len(), "vg0/".len() + 88 + 2);
    // One whose doubled '-' overflow the device-mapper name is refused before the lock.
    let dashes = SnapshotName::new(format!("dbsnap-20261125T000000Z-L{}", "-".repeat(63))).unwrap();
    let err = lvm.plan(&[volume("vg0/data")], &dashes).await.unwrap_err();
    assert!(err.to_string().contains("device-mapper"), "{err}");
    assert!(atomic(&[volume("vg0/a")]));
    assert!(!atomic(&[volume("vg0/a"), volume("vg0/b")]));
}

#[test]
fn set_names_come_from_lv_names() {
    assert_eq!(
        set_name_of("dbsnap-x.0"),
        Some(SnapshotName::new("dbsnap-x").unwrap())
    );
    assert_eq!(
        set_name_of("dbsnap-1.2.10"),
        Some(SnapshotName::new("dbsnap-1.2").unwrap())
    );
    assert_eq!(set_name_of("dbsnap-x"), None);
    assert_eq!(set_name_of("other.0"), None);
}

#[tokio::test]
async fn release_refuses_what_is_not_ours() {
    let lvm = Lvm::new(LvmConfig::default());
    // The origin itself, another set's snapshot, and a hostile id are never removed,
    // and nothing runs before the check (lvs is not even called).
    for id in [
        "vgfix/data",
        "vgfix/dbsnap-other.0",
        "vgfix/dbsnap-fixture.0;rm",
    ] {
        let err = lvm.release(&fixture_set(&[id])).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("refusing") || text.contains("not allowed"),
            "{id}: {text}"
        );
    }
}

#[test]
fn only_tagged_prefixed_snapshots_are_ours() {
    let lvs = fixture("lvs-snapshots.json");
    let ours: Vec<&str> = lvs
        .iter()
        .filter(|lv| is_ours(lv))
        .map(|lv| lv.name.as_str())
        .collect();
    assert_eq!(ours, ["dbsnap-fixture.0", "dbsnap-fixture.1"]);
}

#[test]
fn health_of_healthy_snapshots() {
    let lvs = fixture("lvs-snapshots.json");
    let set = fixture_set(&["vgfix/dbsnap-fixture.0", "vgfix/dbsnap-fixture.1"]);
    assert_eq!(assess_health(&set, &lvs, 99.0), Health::Ok);
}

#[test]
fn health_warns_past_the_threshold() {
    let lvs = fixture("lvs-snapshots.json");
    let classic = lvs.iter().find(|l| l.name == "dbsnap-fixture.0").unwrap();
    let used = classic.snap_percent.unwrap();
    let set = fixture_set(&["vgfix/dbsnap-fixture.0"]);
    match assess_health(&set, &lvs, used / 2.0) {
        Health::Warning(text) => assert!(text.contains("copy-on-write"), "{text}"),
        other => panic!("{other:?}"),
    }
    // The thin snapshot's pool is watched instead.
    let set = fixture_set(&["vgfix/dbsnap-fixture.1"]);
    match assess_health(&set, &lvs, 1.0) {
        Health::Warning(text) => assert!(text.contains("thin pool vgfix/pool"), "{text}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn health_fails_on_overflow_and_on_a_missing_snapshot() {
    let lvs = fixture("lvs-overflowed.json");
    let set = fixture_set(&["vgfix/dbsnap-fixture.0"]);
    match assess_health(&set, &lvs, 80.0) {
        Health::Failed(text) => assert!(text.contains("invalidated"), "{text}"),
        other => panic!("{other:?}"),
    }
    let set = fixture_set(&["vgfix/dbsnap-gone.0"]);
    match assess_health(&set, &lvs, 80.0) {
        Health::Failed(text) => assert!(text.contains("no longer exists"), "{text}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn health_fails_when_the_thin_pool_is_full() {
    let mut lvs = fixture("lvs-snapshots.json");
    let pool = lvs.iter_mut().find(|l| l.name == "pool").unwrap();
    pool.data_percent = Some(100.0);
    let set = fixture_set(&["vgfix/dbsnap-fixture.1"]);
    match assess_health(&set, &lvs, 80.0) {
        Health::Failed(text) => assert!(text.contains("out of data space"), "{text}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn config_rejects_unknown_keys_and_bad_values() {
    let ok: LvmConfig =
        serde_json::from_str(r#"{"snapshot_size":"20%","warn_percent":90}"#).unwrap();
    assert_eq!(ok.snapshot_size, Some(SnapshotSize::PercentOfOrigin(20.0)));
    assert!(serde_json::from_str::<LvmConfig>(r#"{"snapshot_sise":"1G"}"#).is_err());
    assert!(serde_json::from_str::<LvmConfig>(r#"{"snapshot_size":"lots"}"#).is_err());
}

#[tokio::test]
async fn probe_refuses_a_path_not_on_lvm() {
    // On the host (no device-mapper) or a non-LVM path in the guest: a clear refusal.
    let dir = tempfile::tempdir().unwrap();
    let err = Lvm::new(LvmConfig::default())
        .probe(&[dir.path().to_path_buf()])
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("cannot be snapshotted by the lvm backend"),
        "{text}"
    );
}
