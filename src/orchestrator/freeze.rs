//! Phases 2–4, `freeze`: lock, snapshot and coordinates, unlock. The snapshot set is
//! journaled before it is created; nothing else happens while writers wait.

use std::time::Instant;

use dbsnap_backend_api::{SnapshotBackend, SnapshotName, SnapshotSet, Volume};

use super::plan::{LockPlan, Plan};
use super::prepare::Prepared;
use crate::db::lock;
use crate::db::{stall_guard, Coordinates, Layout, LockRecord};
use crate::error::{backend_error, fail, Class};
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
    mut prepared: Prepared,
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
    run: &str,
    name: &SnapshotName,
) -> anyhow::Result<Frozen> {
    let set = backend
        .plan(&prepared.volumes, name)
        .await
        .map_err(backend_error)?;
    journal.record(run, Resource::Snapshot { set: set.clone() })?;
    let (lock, coordinates) = lock_and_snapshot(&plan.lock, &mut prepared, backend, &set).await?;
    let Prepared {
        server,
        conn,
        layout,
        volumes,
        atomic,
        data_bytes,
        ..
    } = prepared;
    let _ = conn.disconnect().await;
    Ok(Frozen {
        run: run.to_string(),
        server: ServerRecord {
            version: server.version.text.clone(),
            hostname: server.hostname.clone(),
            datadir: layout.datadir.clone(),
            binlog_basename: layout.binlog_basename.clone(),
        },
        layout,
        volumes,
        atomic,
        data_bytes,
        set,
        lock,
        coordinates,
    })
}

/// Lock, snapshot and coordinates, unlock. Nothing else happens while writers wait.
/// The lock is released before any error from inside the window is returned.
pub async fn lock_and_snapshot(
    plan: &LockPlan,
    pre: &mut Prepared,
    backend: &dyn SnapshotBackend,
    set: &SnapshotSet,
) -> anyhow::Result<(LockRecord, Coordinates)> {
    let max_hold = plan.max_hold;
    let mode = pre.lock.mode;
    let lock_conn = pre.server.open().await?;
    // A snapshot commits the filesystem's dirty data; writing it out now, before the
    // lock, keeps that work out of the window where writers wait.
    sync_filesystems(&pre.volumes);
    stall_guard::guard(
        &mut pre.conn,
        mode,
        plan.long_queries,
        plan.long_query_threshold,
    )
    .await?;

    let mut held = lock::acquire(
        mode,
        &pre.server.version,
        lock_conn,
        &mut pre.conn,
        plan.settings,
    )
    .await?;
    // ── writers wait from here ──
    let coordinates = held.coordinates(pre.is_replica).await;
    let snapshot = match coordinates {
        Ok(_) => Some(
            tokio::time::timeout(
                max_hold.saturating_sub(held.held_for()),
                backend.snapshot(set),
            )
            .await,
        ),
        Err(_) => None,
    };
    let released = held.release(pre.lock.reason.clone()).await;
    // ── writers run again ──
    let record = released?;
    let coordinates = coordinates?;
    match snapshot {
        Some(Ok(Ok(()))) => {}
        Some(Ok(Err(e))) => return Err(backend_error(e).context("taking the snapshot (the lock was released)")),
        Some(Err(_)) | None => {
            return Err(fail(
                Class::Lock,
                format!(
                    "the snapshot did not finish within [mysql] max_lock_hold = {}; the lock was released \
                     after {:.0} ms and the snapshot is discarded. Check the storage ({} backend) for \
                     what made it slow",
                    humantime::format_duration(max_hold),
                    record.hold_ms,
                    backend.name()
                ),
            ))
        }
    }
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

fn sync_filesystems(volumes: &[Volume]) {
    let started = Instant::now();
    for v in volumes {
        if let Err(e) = crate::destination::local::sync_tree(&v.root) {
            tracing::warn!(
                "flushing {} before the lock failed: {e:#}",
                v.root.display()
            );
        }
    }
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "flushed dirty data before the lock"
    );
}
