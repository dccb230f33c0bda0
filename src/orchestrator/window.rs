//! The lock window and what takes the lock. The window reads like the invariant it
//! keeps: the lock is held across the coordinates and the snapshot call, nothing else,
//! and released before any error from inside it is examined.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use dbsnap_backend_api::{SnapshotBackend, SnapshotSet, Volume};
use mysql_async::Conn;

use super::plan::LockPlan;
use crate::db::lock;
use crate::db::lock_mode::LockMode;
use crate::db::{stall_guard, Coordinates, LockRecord, Server};
use crate::error::{backend_error, fail, Class};

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
    // Made outside the window and polled in place (it is boxed), so that on a timeout
    // it can be dropped after the unlock, not inside the window.
    let mut taking = backend.snapshot(set);
    // ── writers wait from here ──
    let coordinates = held.coordinates(inside.replica).await;
    let snapshot = match coordinates {
        Ok(_) => Some(
            tokio::time::timeout(max_hold.saturating_sub(held.held_for()), taking.as_mut()).await,
        ),
        Err(_) => None,
    };
    let released = held.release(inside.reason).await;
    // ── writers run again ──
    // A snapshot command still running is killed here, and reaped before this returns
    // (see `command::ProcessGroup`): whatever it made exists by now, is journaled, and
    // is released with the run's other resources.
    drop(taking);
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

/// What takes the lock: the database connection from `prepare`, or a fake in tests.
#[async_trait]
pub trait Locker: Send {
    /// Everything before the window that needs the server (flushing dirty data, the
    /// long-query policy), then the lock itself, bounded by `plan.settings`.
    async fn lock(
        &mut self,
        plan: &LockPlan,
        mode: LockMode,
        volumes: &[Volume],
    ) -> anyhow::Result<Box<dyn Window>>;

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
    async fn lock(
        &mut self,
        plan: &LockPlan,
        mode: LockMode,
        volumes: &[Volume],
    ) -> anyhow::Result<Box<dyn Window>> {
        let lock_conn = self.server.open().await?;
        // A snapshot commits the filesystem's dirty data; writing it out now, before
        // the lock, keeps that work out of the window where writers wait.
        sync_filesystems(volumes);
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
