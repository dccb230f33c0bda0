//! Phases 2–4, `freeze`: lock, snapshot and coordinates, unlock. The snapshot set is
//! journaled before it is created; nothing else happens while writers wait.

use dbsnap_backend_api::{SnapshotBackend, SnapshotName, SnapshotSet, Volume};

use super::plan::{LockPlan, Plan};
use super::prepare::{Prepared, Survey};
use super::window::{window, Inside, Locker};
use crate::db::{Coordinates, Layout, LockRecord};
use crate::error::backend_error;
use crate::journal::{Journal, Resource};
use crate::manifest::ServerRecord;

/// The snapshot exists, the lock is released, and the server is no longer needed.
pub struct Frozen {
    /// The run's name in the journal.
    pub run: String,
    pub server: ServerRecord,
    pub layout: Layout,
    pub volumes: Vec<Volume>,
    /// Whether the backend snapshotted all volumes at one instant.
    pub atomic: bool,
    pub data_bytes: u64,
    pub set: SnapshotSet,
    pub lock: LockRecord,
    pub coordinates: Coordinates,
}

/// Plan the snapshot set `name`, journal it under `run`, and take it inside the lock
/// window.
pub async fn freeze(
    plan: &Plan,
    prepared: Prepared,
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
    run: &str,
    name: &SnapshotName,
) -> anyhow::Result<Frozen> {
    let Prepared { survey, mut locker } = prepared;
    let set = backend
        .plan(&survey.volumes, name)
        .await
        .map_err(backend_error)?;
    journal.record(run, Resource::Snapshot { set: set.clone() })?;
    let (lock, coordinates) =
        lock_and_snapshot(&plan.lock, &survey, locker.as_mut(), backend, &set).await?;
    locker.close().await;
    Ok(Frozen {
        run: run.to_string(),
        server: survey.server,
        layout: survey.layout,
        volumes: survey.volumes,
        atomic: survey.atomic,
        data_bytes: survey.data_bytes,
        set,
        lock,
        coordinates,
    })
}

/// Lock, snapshot and coordinates, unlock. Nothing else happens while writers wait.
/// The lock is released before any error from inside the window is returned.
pub async fn lock_and_snapshot(
    plan: &LockPlan,
    survey: &Survey,
    locker: &mut dyn Locker,
    backend: &dyn SnapshotBackend,
    set: &SnapshotSet,
) -> anyhow::Result<(LockRecord, Coordinates)> {
    let held = locker.lock(plan, survey.lock.mode, &survey.volumes).await?;
    let inside = Inside {
        replica: survey.is_replica,
        reason: survey.lock.reason.clone(),
        max_hold: plan.max_hold,
    };
    let (record, coordinates) = window(held, inside, backend, set).await?;
    tracing::info!(
        wait_ms = record.wait_ms,
        hold_ms = record.hold_ms,
        attempts = record.attempts,
        "{} released; writers waited {:.1} ms for the lock and {:.1} ms while it was held",
        record.mode,
        record.wait_ms,
        record.hold_ms
    );
    Ok((record, coordinates))
}
