//! Native incremental streams (`btrfs send | btrfs receive`): a backend capability next
//! to the rsync copy. A stream of a snapshot relative to an earlier snapshot of the same
//! volume (the *parent*) carries only the blocks that changed between the two, and the
//! receiving side rebuilds a complete, independent copy from it.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::{Result, VolumeSnapshot};

/// A snapshot received at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The complete, read-only copy of the snapshot's volume.
    pub path: PathBuf,
    /// Bytes in the stream: what went over the pipe.
    pub stream_bytes: u64,
}

#[async_trait]
pub trait NativeStream: Send + Sync {
    /// The transfer method's name in configuration and manifests (`btrfs-send`).
    fn method(&self) -> &'static str;

    /// Whether received copies can be stored under `dest`; the error says why not and
    /// what to change. Called before the database lock.
    async fn check_destination(&self, dest: &Path) -> Result<()>;

    /// Send `snapshot` and receive it inside `into` (an existing directory dbsnap owns).
    /// With a `parent` (an earlier snapshot of the same volume, still present, whose
    /// received copy still exists at the destination), only the difference is sent.
    /// `progress` gets the stream bytes so far.
    async fn send(
        &self,
        snapshot: &VolumeSnapshot,
        parent: Option<&VolumeSnapshot>,
        into: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Received>;

    /// Delete a received copy (they are read-only: plain file removal cannot). Idempotent.
    async fn delete_received(&self, received: &Path) -> Result<()>;
}
