//! Phases 2–4, `freeze`: lock, snapshot and coordinates, unlock. The snapshot set is
//! journaled before it is created; nothing else happens while writers wait.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use dbsnap_backend_api::{SnapshotBackend, SnapshotName, SnapshotSet, Volume};
use mysql_async::Conn;

use super::plan::{LockPlan, Plan};
use super::prepare::{Prepared, Survey};
use crate::db::lock;
use crate::db::{stall_guard, Coordinates, Layout, LockRecord, Server};
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
    let held = locker.lock(plan, survey).await?;
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

/// What takes the lock: the database connection from `prepare`, or a fake in tests.
#[async_trait]
pub trait Locker: Send {
    /// Everything before the window that needs the server (flushing dirty data, the
    /// long-query policy), then the lock itself, bounded by `plan.settings`.
    async fn lock(&mut self, plan: &LockPlan, survey: &Survey) -> anyhow::Result<Box<dyn Window>>;

    /// Done with the server.
    async fn close(self: Box<Self>);
}

/// The server: the preparing connection (the watchdog during the lock) and a second
/// one that takes the lock.
pub struct DbLocker {
    pub server: Server,
    pub conn: Conn,
}

#[async_trait]
impl Locker for DbLocker {
    async fn lock(&mut self, plan: &LockPlan, survey: &Survey) -> anyhow::Result<Box<dyn Window>> {
        let mode = survey.lock.mode;
        let lock_conn = self.server.open().await?;
        // A snapshot commits the filesystem's dirty data; writing it out now, before
        // the lock, keeps that work out of the window where writers wait.
        sync_filesystems(&survey.volumes);
        stall_guard::guard(
            &mut self.conn,
            mode,
            plan.long_queries,
            plan.long_query_threshold,
        )
        .await?;
        let held = lock::acquire(
            mode,
            &self.server.version,
            lock_conn,
            &mut self.conn,
            plan.settings,
        )
        .await?;
        Ok(Box::new(held))
    }

    async fn close(self: Box<Self>) {
        let _ = self.conn.disconnect().await;
    }
}

/// What the window needs besides the lock.
pub struct Inside {
    /// The server replicates: the source's coordinates are read too.
    pub replica: bool,
    /// Why this lock mode (for the record).
    pub reason: String,
    pub max_hold: Duration,
}

/// The lock window: coordinates, the snapshot (bounded by what is left of
/// `max_hold`), release. The lock is released before any error from inside the window
/// is examined.
pub async fn window(
    mut held: Box<dyn Window>,
    inside: Inside,
    backend: &dyn SnapshotBackend,
    set: &SnapshotSet,
) -> anyhow::Result<(LockRecord, Coordinates)> {
    let max_hold = inside.max_hold;
    // ── writers wait from here ──
    let coordinates = held.coordinates(inside.replica).await;
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
    let released = held.release(inside.reason).await;
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
    Ok((record, coordinates))
}

/// The held lock as the window uses it: the database's [`lock::HeldLock`], or a fake
/// in tests of the window.
#[async_trait]
pub trait Window: Send {
    async fn coordinates(&mut self, replica: bool) -> anyhow::Result<Coordinates>;
    fn held_for(&self) -> Duration;
    async fn release(self: Box<Self>, reason: String) -> anyhow::Result<LockRecord>;
}

#[async_trait]
impl Window for lock::HeldLock {
    async fn coordinates(&mut self, replica: bool) -> anyhow::Result<Coordinates> {
        lock::HeldLock::coordinates(self, replica).await
    }

    fn held_for(&self) -> Duration {
        lock::HeldLock::held_for(self)
    }

    async fn release(self: Box<Self>, reason: String) -> anyhow::Result<LockRecord> {
        lock::HeldLock::release(*self, reason).await
    }
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
