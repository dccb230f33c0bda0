//! `zfs rollback` of every dataset to its snapshot; the snapshots stay. Refused when a
//! dataset has newer snapshots: `zfs rollback -r` would destroy them, which dbsnap
//! never does on its own.

use dbsnap_backend_api::command::Cmd;
use dbsnap_backend_api::{BackendError, Result, RollbackOutcome, SnapshotSet};

use crate::{dataset_of_snapshot, get_properties, Zfs, RUN_PROPERTY};

pub(crate) async fn rollback(zfs: &Zfs, set: &SnapshotSet) -> Result<RollbackOutcome> {
    // Clones of the set (a read path left mounted) would keep the datasets busy.
    zfs.destroy_clones(set).await?;
    for snap in &set.snapshots {
        dataset_of_snapshot(&snap.id, &set.name)?;
        let props = get_properties(&snap.id, &[RUN_PROPERTY]).await?;
        if props.and_then(|p| p.get(RUN_PROPERTY).cloned()) != Some(set.name.to_string()) {
            return Err(BackendError::Invalid(format!(
                "cannot roll back to {}: it does not exist or does not carry {RUN_PROPERTY}={}",
                snap.id, set.name
            )));
        }
    }
    // All or nothing: check every dataset before rolling any back.
    for snap in &set.snapshots {
        let dataset = dataset_of_snapshot(&snap.id, &set.name)?;
        let snapshots = crate::send::snapshots_of(&dbsnap_backend_api::LocalHost, dataset).await?;
        let position = snapshots.iter().position(|s| *s == snap.id);
        let newer = position.map(|p| &snapshots[p + 1..]).unwrap_or_default();
        if !newer.is_empty() {
            return Err(BackendError::Invalid(format!(
                "cannot roll back to {}: {dataset} has newer snapshots ({}), and rolling back would \
                 destroy them; nothing was rolled back. Release the newer dbsnap snapshots first \
                 (dbsnap snapshot release NAME), or run `zfs rollback -r {}` yourself if you \
                 accept losing them",
                snap.id,
                newer.join(", "),
                snap.id
            )));
        }
    }
    for snap in &set.snapshots {
        Cmd::new("zfs").arg("rollback").arg(&snap.id).run().await?;
    }
    Ok(RollbackOutcome::complete_and_kept())
}
