//! Freeing a snapshot's data in steps before it is destroyed (a spread release).
//!
//! Destroying a snapshot whose data has since been overwritten on the origin frees all
//! of that data at once. Where the freeing lands on the origin's filesystem in one
//! burst (btrfs: its cleaner frees a deleted snapshot's extents in a few transactions
//! right after `btrfs subvolume delete`), writers stall behind it. A backend that can
//! free the data piecemeal first offers [`ReleaseSteps`] through
//! [`crate::SnapshotBackend::spread_release`]; dbsnap drives it at the pace the server's
//! commits allow, then calls `release` as always.

use async_trait::async_trait;

use crate::Result;

/// Frees a snapshot set's data one bounded step at a time. Making the steps changes
/// nothing (dropping them unused leaves the snapshots as they were); once the first
/// step ran, the snapshots are garbage: nothing may read them any more, only `release`
/// them.
#[async_trait]
pub trait ReleaseSteps: Send {
    /// The bytes the steps will free, at most (known when the steps are made).
    fn total_bytes(&self) -> u64;

    /// Free about `budget` bytes (at least one byte's worth of progress, whatever the
    /// budget). Returns the bytes freed, or `None` once nothing is left for steps: then
    /// `release` destroys what remains.
    async fn step(&mut self, budget: u64) -> Result<Option<u64>>;
}
