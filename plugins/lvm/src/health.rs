//! How full the storage a snapshot set depends on is: classic snapshots' copy-on-write
//! space, thin pools' data and metadata.

use dbsnap_backend_api::{Health, SnapshotSet};

use crate::lvs::{Lv, LvKind};
use crate::size;

/// The worst state of the set's snapshots given an `lvs` report of their volume groups.
pub fn assess_health(set: &SnapshotSet, lvs: &[Lv], warn_percent: f64) -> Health {
    let mut warnings = Vec::new();
    for snap in &set.snapshots {
        let Some(lv) = lvs.iter().find(|lv| lv.full_name() == snap.id) else {
            return Health::Failed(format!(
                "snapshot {} no longer exists; the copy cannot be trusted. Check who removed \
                 it (lvs, the system journal) and run the backup again",
                snap.id
            ));
        };
        if lv.kind() == LvKind::ClassicSnapshot {
            let used = lv.snap_percent.unwrap_or(0.0);
            if lv.is_invalid_snapshot() || used >= 100.0 {
                return Health::Failed(format!(
                    "classic snapshot {} overflowed its {} of copy-on-write space and LVM \
                     invalidated it: its contents are lost and this copy is unusable. Set \
                     [snapshot.lvm] snapshot_size larger (or free space in the volume group, or \
                     use a thin LV) and run the backup again",
                    snap.id,
                    size::human(lv.size)
                ));
            }
            if used >= warn_percent {
                warnings.push(format!(
                    "classic snapshot {} has used {used:.1} % of its {} copy-on-write space; at \
                     100 % it is lost",
                    snap.id,
                    size::human(lv.size)
                ));
            }
            continue;
        }
        let Some(pool_name) = &lv.pool else {
            return Health::Failed(format!(
                "{} is neither a classic nor a thin snapshot (lv_attr {})",
                snap.id, lv.attr
            ));
        };
        let Some(pool) = lvs.iter().find(|p| p.vg == lv.vg && &p.name == pool_name) else {
            return Health::Failed(format!(
                "the thin pool {}/{pool_name} of snapshot {} is not in the lvs report",
                lv.vg, snap.id
            ));
        };
        for (what, value) in [
            ("data", pool.data_percent),
            ("metadata", pool.metadata_percent),
        ] {
            let used = value.unwrap_or(0.0);
            if used >= 100.0 {
                return Health::Failed(format!(
                    "thin pool {} is out of {what} space: writes to its volumes fail, including \
                     the database's, and snapshot {} cannot be trusted. Extend the pool \
                     (lvextend) and run the backup again",
                    pool.full_name(),
                    snap.id
                ));
            }
            if used >= warn_percent {
                warnings.push(format!(
                    "thin pool {} has used {used:.1} % of its {what} space (snapshot {}); at \
                     100 % writes fail",
                    pool.full_name(),
                    snap.id
                ));
            }
        }
    }
    if warnings.is_empty() {
        Health::Ok
    } else {
        Health::Warning(warnings.join("; "))
    }
}
