//! Host tests of the LVM rollback: recorded `lvs` reports and mount tables, no devices.

use std::path::PathBuf;

use super::*;
use crate::lvs::parse_report;
use dbsnap_backend_api::mounts::parse_mountinfo;
use dbsnap_backend_api::{Volume, VolumeSnapshot};

fn fixture(name: &str) -> Vec<Lv> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    parse_report(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `dbsnap-fixture.0` is classic (of `data`), `.1` thin (of `thindata`).
fn set(members: &[(&str, &str)]) -> SnapshotSet {
    SnapshotSet {
        backend: "lvm".into(),
        name: SnapshotName::new("dbsnap-fixture").unwrap(),
        snapshots: members
            .iter()
            .map(|(id, volume)| VolumeSnapshot {
                volume: Volume {
                    id: volume.to_string(),
                    root: PathBuf::from("/srv/x"),
                    fstype: "xfs".into(),
                },
                id: id.to_string(),
            })
            .collect(),
    }
}

fn refusal(set: &SnapshotSet, lvs: &[Lv]) -> String {
    let text = check(set, lvs).unwrap_err().to_string();
    assert!(
        text.contains("nothing was rolled back"),
        "a refusal must say nothing changed: {text}"
    );
    text
}

#[test]
fn checks_pass_for_healthy_classic_and_thin_snapshots() {
    let lvs = fixture("lvs-snapshots.json");
    let members = check(
        &set(&[
            ("vgfix/dbsnap-fixture.0", "vgfix/data"),
            ("vgfix/dbsnap-fixture.1", "vgfix/thindata"),
        ]),
        &lvs,
    )
    .unwrap();
    assert_eq!(
        members,
        [
            Member {
                vg: "vgfix".into(),
                snapshot: "dbsnap-fixture.0".into(),
                origin: "data".into(),
                thin: false,
                origin_device: Some((253, 0)),
            },
            Member {
                vg: "vgfix".into(),
                snapshot: "dbsnap-fixture.1".into(),
                origin: "thindata".into(),
                thin: true,
                origin_device: Some((253, 6)),
            }
        ]
    );
}

#[test]
fn an_invalid_classic_snapshot_is_never_merged() {
    let lvs = fixture("lvs-overflowed.json");
    let text = refusal(&set(&[("vgfix/dbsnap-fixture.0", "vgfix/data")]), &lvs);
    assert!(text.contains("invalidated"), "{text}");
    // Also when only the fill level shows it.
    let mut lvs = fixture("lvs-snapshots.json");
    let snap = lvs
        .iter_mut()
        .find(|l| l.name == "dbsnap-fixture.0")
        .unwrap();
    snap.snap_percent = Some(100.0);
    let text = refusal(&set(&[("vgfix/dbsnap-fixture.0", "vgfix/data")]), &lvs);
    assert!(text.contains("invalidated"), "{text}");
}

#[test]
fn refuses_foreign_missing_and_mismatched_snapshots() {
    let lvs = fixture("lvs-snapshots.json");
    for (members, expected) in [
        (
            ("vgfix/foreign-snap", "vgfix/logs"),
            "not a dbsnap snapshot",
        ),
        (
            ("vgfix/dbsnap-fixture.0", "vgfix/logs"),
            "not of the recorded volume",
        ),
        (("vgfix/dbsnap-fixture.7", "vgfix/data"), "no longer exists"),
        (("vgfix/dbsnap-fixture.0", "vgfix/gone"), "no longer exists"),
        (
            ("vgfix/dbsnap-fixture.0", "other/data"),
            "not a dbsnap snapshot",
        ),
    ] {
        let text = check(&set(&[members]), &lvs).unwrap_err().to_string();
        assert!(text.contains(expected), "{members:?}: {text}");
    }
    let mut untagged = lvs.clone();
    untagged
        .iter_mut()
        .find(|l| l.name == "dbsnap-fixture.0")
        .unwrap()
        .tags
        .clear();
    let text = refusal(&set(&[("vgfix/dbsnap-fixture.0", "vgfix/data")]), &untagged);
    assert!(text.contains("lacks the `dbsnap` tag"), "{text}");
}

#[test]
fn refuses_an_open_snapshot_and_a_pending_merge() {
    let mut lvs = fixture("lvs-snapshots.json");
    lvs.iter_mut()
        .find(|l| l.name == "dbsnap-fixture.0")
        .unwrap()
        .attr = "swi-aos---".into();
    let text = refusal(&set(&[("vgfix/dbsnap-fixture.0", "vgfix/data")]), &lvs);
    assert!(text.contains("in use"), "{text}");

    let mut lvs = fixture("lvs-snapshots.json");
    lvs.iter_mut().find(|l| l.name == "thindata").unwrap().attr = "Owi-aotz--".into();
    let text = refusal(&set(&[("vgfix/dbsnap-fixture.1", "vgfix/thindata")]), &lvs);
    assert!(
        text.contains("pending already") && text.contains("lvchange -an vgfix/thindata"),
        "{text}"
    );
}

#[test]
fn an_interrupted_thin_rollback_is_explained() {
    // Renamed aside, copy not yet made.
    let mut lvs = fixture("lvs-snapshots.json");
    lvs.iter_mut()
        .find(|l| l.name == "dbsnap-fixture.1")
        .unwrap()
        .name = "dbsnap-fixture.1-merge".into();
    let text = refusal(&set(&[("vgfix/dbsnap-fixture.1", "vgfix/thindata")]), &lvs);
    assert!(
        text.contains("lvrename vgfix dbsnap-fixture.1-merge dbsnap-fixture.1"),
        "{text}"
    );
    // Copy made, merge not started: the copy's origin is the renamed snapshot.
    let mut lvs = fixture("lvs-snapshots.json");
    let mut aside = lvs
        .iter()
        .find(|l| l.name == "dbsnap-fixture.1")
        .unwrap()
        .clone();
    aside.name = "dbsnap-fixture.1-merge".into();
    lvs.iter_mut()
        .find(|l| l.name == "dbsnap-fixture.1")
        .unwrap()
        .origin = Some(aside.name.clone());
    lvs.push(aside);
    let text = refusal(&set(&[("vgfix/dbsnap-fixture.1", "vgfix/thindata")]), &lvs);
    assert!(text.contains("interrupted rollback"), "{text}");
}

#[test]
fn the_aside_name_is_never_a_member_of_a_set() {
    let member = Member {
        vg: "vg".into(),
        snapshot: "dbsnap-x.0".into(),
        origin: "data".into(),
        thin: true,
        origin_device: None,
    };
    assert_eq!(member.aside(), "dbsnap-x.0-merge");
    assert_eq!(set_name_of(&member.aside()), None);
}

#[test]
fn remount_uses_the_mount_flags_then_the_filesystem_options() {
    let table = parse_mountinfo(
        "34 28 253:5 / /srv/a\\040b rw,noatime - xfs /dev/mapper/vg-xd rw,attr2,inode64,logbufs=8,logbsize=32k,noquota\n\
         33 28 253:4 / /srv/x rw,relatime - ext4 /dev/mapper/vg-data rw,stripe=64\n",
    );
    assert_eq!(
        remount_options(&table[0]),
        "rw,noatime,attr2,inode64,logbufs=8,logbsize=32k,noquota"
    );
    assert_eq!(remount_options(&table[1]), "rw,relatime,stripe=64");
    assert_eq!(
        mount_command(
            &table[0],
            Path::new("/dev/vg/xd"),
            &remount_options(&table[0])
        )
        .display(),
        "mount -t xfs -o rw,noatime,attr2,inode64,logbufs=8,logbsize=32k,noquota /dev/vg/xd \
         '/srv/a b'"
    );
}

#[test]
fn pending_instructions_say_exactly_what_to_run() {
    let table = parse_mountinfo("33 28 253:4 / /srv/x rw,relatime - ext4 /dev/mapper/vg-data rw\n");
    let member = Member {
        vg: "vg".into(),
        snapshot: "dbsnap-x.0".into(),
        origin: "data".into(),
        thin: false,
        origin_device: Some((253, 4)),
    };
    let text = pending_instructions(
        &member,
        "vg/dbsnap-x.0",
        "it cannot be unmounted: busy.",
        &table,
        Path::new("/dev/vg/data"),
    );
    assert_eq!(
        text,
        "the merge of vg/dbsnap-x.0 into vg/data completes on the next activation of \
         vg/data, because it cannot be unmounted: busy. Stop what uses it, then run: umount \
         /srv/x; lvchange -an vg/data; lvchange -ay vg/data; mount -t ext4 -o rw,relatime \
         /dev/vg/data /srv/x (or reboot). Do not start the database server before that."
    );
}
