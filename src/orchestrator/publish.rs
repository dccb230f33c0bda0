//! Phases 7–9: `publish` (the manifest, then the destination's atomic publish),
//! `release` (the transfer releases the snapshot or keeps it as the next base) and
//! `verify` (`[backup] verify`).

use anyhow::Context;
use chrono::{DateTime, Utc};
use dbsnap_backend_api::SnapshotBackend;

use super::copy::Filled;
use super::mount::Mounted;
use super::plan::Plan;
use crate::destination::Destination;
use crate::journal::Journal;
use crate::manifest::{Manifest, SnapshotRecord, VolumeRecord, FORMAT};
use crate::release::ReleasePace;
use crate::transfer::{Finish, Transfer};

/// Write the manifest into the partial and publish it: from here on it is a backup.
pub async fn publish(
    mounted: &Mounted,
    filled: Filled,
    started_at: DateTime<Utc>,
    dest: &dyn Destination,
    journal: &mut Journal,
) -> anyhow::Result<Manifest> {
    let frozen = &mounted.frozen;
    let manifest = Manifest {
        format: FORMAT,
        name: frozen.run.clone(),
        path: Default::default(),
        dbsnap_version: env!("CARGO_PKG_VERSION").into(),
        started_at,
        finished_at: Utc::now(),
        server: frozen.server.clone(),
        lock: frozen.lock.clone(),
        coordinates: frozen.coordinates.clone(),
        snapshot: SnapshotRecord {
            backend: frozen.set.backend.clone(),
            name: frozen.set.name.to_string(),
            atomic: frozen.atomic,
            volumes: frozen
                .set
                .snapshots
                .iter()
                .map(|s| VolumeRecord {
                    volume: s.volume.id.clone(),
                    root: s.volume.root.clone(),
                    fstype: s.volume.fstype.clone(),
                    snapshot: s.id.clone(),
                })
                .collect(),
        },
        paths: frozen.layout.dirs.clone(),
        transfer: filled.copied.stats,
        stored: filled.copied.stored,
        verification: None,
    };
    let backup = dest.publish(filled.partial, manifest, journal).await?;
    tracing::info!("backup complete: {}", backup.path.display());
    Ok(backup.manifest)
}

/// How a published backup's snapshot is let go of: by its transfer, which releases it
/// (in steps paced by `spread`, where the backend offers them) or keeps it as the next
/// stream's base.
pub struct Releasing<'a> {
    pub transfer: &'a dyn Transfer,
    pub dest: &'a dyn Destination,
    /// See `Pacing::for_release`.
    pub spread: Option<ReleasePace>,
}

/// The published backup's snapshot: released, or kept as the next stream's base.
pub async fn release(
    plan: &Plan,
    mounted: &Mounted,
    manifest: &Manifest,
    how: Releasing<'_>,
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
) -> anyhow::Result<()> {
    how.transfer
        .finish(Finish {
            spread: how.spread,
            backend,
            journal,
            set: &mounted.frozen.set,
            workdir: &mounted.workdir,
            manifest,
            dest: how.dest.location(),
            state_dir: &plan.state_dir,
            backends: &plan.backends,
        })
        .await
}

/// Prove the published backup restores (`dbsnap verify`, its own journaled step). A
/// failed verification is an error; the backup stays, marked failed.
pub async fn verify(
    state_dir: &std::path::Path,
    dest: &dyn Destination,
    journal: &mut Journal,
    manifest: Manifest,
) -> anyhow::Result<Manifest> {
    let backup = crate::destination::Backup {
        name: manifest.name.clone(),
        path: manifest.path.clone(),
        manifest: manifest.clone(),
    };
    let verified = crate::readback::verify(state_dir, dest, &backup, journal)
        .await
        .with_context(|| {
            format!(
                "backup {} is complete but could not be verified",
                manifest.name
            )
        })?;
    if verified
        .verification
        .as_ref()
        .is_some_and(|v| v.verdict == crate::manifest::Verdict::Failed)
    {
        return Err(crate::verify::failed_error(&verified, &verified.path));
    }
    Ok(verified)
}
