//! The interface between dbsnap and its snapshot backends.
//!
//! A backend turns database paths into volumes (`probe`), snapshots a set of volumes
//! while dbsnap holds the database lock (`snapshot`), makes the snapshots readable
//! (`mount`), and removes everything again (`unmount`, `release`). Every step that
//! removes something is idempotent: dbsnap's crash cleanup replays it from the state
//! journal without knowing how far the interrupted run got.
//!
//! Backends never use a shell: every external command goes through [`command::run`].

pub mod command;
mod error;
#[cfg(feature = "memory")]
pub mod memory;
pub mod mounts;
mod name;
mod spread;
mod stream;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use error::{BackendError, Result};
pub use name::{
    validate_name, validate_name_up_to, SnapshotName, MAX_NAME_LEN, MAX_SNAPSHOT_NAME_LEN,
    SNAPSHOT_PREFIX,
};
pub use spread::ReleaseSteps;
pub use stream::{
    canonical_on, mount_table_on, CutOff, LocalHost, NativeStream, ReceiveAt, Received,
    ReceivingHost, Remains, StreamParent,
};

/// A filesystem volume that holds one or more database paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// The backend's identity for the volume: a btrfs subvolume path, `vg/lv`, a ZFS dataset.
    pub id: String,
    /// Where the volume's root is visible in the live filesystem tree.
    pub root: PathBuf,
    /// Filesystem type (`btrfs`, `xfs`, `ext4`, `zfs`, ...).
    pub fstype: String,
}

impl Volume {
    /// Whether `path` lives inside this volume's tree.
    pub fn contains(&self, path: &Path) -> bool {
        path.starts_with(&self.root)
    }
}

/// One volume's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSnapshot {
    pub volume: Volume,
    /// The backend's identity for the snapshot: a path, `vg/lv`, `dataset@name`.
    pub id: String,
}

/// The snapshots of all volumes taken in one lock window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSet {
    pub backend: String,
    pub name: SnapshotName,
    pub snapshots: Vec<VolumeSnapshot>,
}

/// Where a volume's frozen contents can be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadPath {
    /// The volume's root in the live tree (what the database paths are relative to).
    pub origin_root: PathBuf,
    /// The same tree, frozen, read-only.
    pub frozen_root: PathBuf,
}

/// What [`SnapshotBackend::probe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The volumes holding the paths, each once.
    pub volumes: Vec<Volume>,
    /// Whether one `snapshot` call over `volumes` captures them at one instant (one
    /// volume always is; several only where the backend snapshots them together, e.g.
    /// datasets of one ZFS pool). When not, dbsnap's lock covers all of them.
    pub atomic: bool,
}

/// How full the storage a snapshot depends on is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Health {
    /// Nothing to watch, or well within limits.
    Ok,
    /// Getting close to a limit; the copy continues. The text says what and how close.
    Warning(String),
    /// The snapshot is lost or about to be (e.g. LVM CoW space full): the copy must stop.
    Failed(String),
}

/// What a [`SnapshotBackend::rollback`] left behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackOutcome {
    /// The snapshots still exist, so the rollback can be repeated. `false` when rolling
    /// back consumed them (an LVM merge of a classic snapshot).
    pub snapshots_kept: bool,
    /// `Some` when the rollback is not complete yet: what the user has to do (or what has
    /// to happen, e.g. a reboot) before the volumes hold the snapshots' contents, written
    /// as instructions. The database server must not start before then.
    pub pending: Option<String>,
}

impl RollbackOutcome {
    /// Rolled back, snapshots still there: the usual case.
    pub fn complete_and_kept() -> Self {
        RollbackOutcome {
            snapshots_kept: true,
            pending: None,
        }
    }
}

/// A snapshot backend. See the crate documentation for the contract.
#[async_trait]
pub trait SnapshotBackend: Send + Sync {
    /// The name used in configuration and in the state journal.
    fn name(&self) -> &str;

    /// Map each path to the volume holding it and check this backend can snapshot it,
    /// and say whether one `snapshot` call over those volumes is atomic. Called before
    /// the lock; may be slow. Returns each volume once.
    async fn probe(&self, paths: &[PathBuf]) -> Result<Probe>;

    /// Decide the identities of the snapshots `snapshot` will create, without creating
    /// anything. dbsnap journals the plan before calling `snapshot`, so a crash in
    /// between leaves nothing that `release` cannot find.
    async fn plan(&self, volumes: &[Volume], name: &SnapshotName) -> Result<SnapshotSet>;

    /// Create the planned snapshots. Called while the database lock is held: do nothing
    /// here that could be done in `probe` or `plan`.
    async fn snapshot(&self, set: &SnapshotSet) -> Result<()>;

    /// Make the snapshots readable, using `workdir` (an empty directory dbsnap owns) for
    /// any mount points. Returns where each volume can be read.
    async fn mount(&self, set: &SnapshotSet, workdir: &Path) -> Result<Vec<ReadPath>>;

    /// Undo `mount`, also a partial one. Idempotent.
    async fn unmount(&self, set: &SnapshotSet, workdir: &Path) -> Result<()>;

    /// Destroy the snapshots. Idempotent: snapshots that do not exist are not an error.
    /// Also after [`SnapshotBackend::spread_release`]'s steps, finished or not.
    async fn release(&self, set: &SnapshotSet) -> Result<()>;

    /// For a snapshot set that is about to be destroyed (never one anything is kept or
    /// built on): steps that free its data bit by bit before `release`, where destroying
    /// it at once would free it in one burst on the origin's filesystem. `None` when
    /// there is too little to be worth it, or the backend has no such burst (this
    /// default). Changes nothing until the first step. Called after `unmount`, without
    /// the lock.
    async fn spread_release(&self, _set: &SnapshotSet) -> Result<Option<Box<dyn ReleaseSteps>>> {
        Ok(None)
    }

    /// dbsnap's snapshots (names starting with [`SNAPSHOT_PREFIX`]) that exist on these
    /// volumes, for finding leftovers the journal does not know about.
    async fn list(&self, volumes: &[Volume]) -> Result<Vec<SnapshotSet>>;

    /// Whether the snapshots are still intact; polled while the copy runs.
    async fn health(&self, set: &SnapshotSet) -> Result<Health>;

    /// The backend's native incremental stream (`btrfs send`), if it has one.
    fn native_stream(&self) -> Option<&dyn NativeStream> {
        None
    }

    /// Revert the live volumes to the snapshots (safety snapshots: undo a failed
    /// upgrade). dbsnap calls it only while no database server runs on the volumes.
    ///
    /// All or nothing where the backend can: check every volume before changing any, and
    /// on an error leave the volumes as they were (mounted where they were mounted).
    /// The outcome says whether the snapshots still exist (so the rollback can be
    /// repeated; dbsnap forgets the kept snapshot when they do not) and what, if anything,
    /// still has to happen before the volumes hold the snapshots' contents. Backends that
    /// cannot roll back keep this default.
    async fn rollback(&self, set: &SnapshotSet) -> Result<RollbackOutcome> {
        Err(BackendError::Invalid(format!(
            "the {} backend cannot roll back snapshot {} (not supported yet); restore from a \
             backup with `dbsnap restore` instead",
            self.name(),
            set.name
        )))
    }
}
