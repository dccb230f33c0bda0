//! Native incremental streams (`btrfs send | btrfs receive`, `zfs send | zfs receive`): a backend capability next
//! to the rsync copy. A stream of a snapshot relative to an earlier snapshot of the same
//! volume (the *parent*) carries only the blocks that changed between the two, and the
//! receiving side rebuilds a complete, independent copy from it.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::{Result, VolumeSnapshot};

/// A snapshot received at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The backend's identity for the received copy (a subvolume path, `dataset@snap`):
    /// what `delete_received` and the next stream's parent refer to.
    pub id: String,
    /// Where the complete, read-only copy of the snapshot's volume can be read. Inside
    /// the backup directory where the backend can put it there.
    pub path: PathBuf,
    /// Bytes in the stream: what went over the pipe.
    pub stream_bytes: u64,
}

/// The base of an incremental stream.
#[derive(Debug, Clone, Copy)]
pub struct StreamParent<'a> {
    /// An earlier snapshot of the same volume, still on the source.
    pub snapshot: &'a VolumeSnapshot,
    /// Its received copy at the destination ([`Received::id`]), still there.
    pub received: &'a str,
}

#[async_trait]
pub trait NativeStream: Send + Sync {
    /// The transfer method's name in configuration and manifests (`btrfs-send`, `zfs-send`).
    fn method(&self) -> &'static str;

    /// Whether received copies can be stored under `dest`; the error says why not and
    /// what to change. Called before the database lock.
    async fn check_destination(&self, dest: &Path) -> Result<()>;

    /// The id ([`Received::id`]) the received copy of `snapshot`, the set's `index`th
    /// volume, will have, decided before anything is received: dbsnap journals it first,
    /// so `delete_received` can remove what an interrupted receive left, also where the
    /// backend keeps received copies outside `into`.
    fn plan_received(
        &self,
        snapshot: &VolumeSnapshot,
        index: usize,
        parent: Option<StreamParent<'_>>,
        into: &Path,
    ) -> Result<String>;

    /// Send `snapshot` and receive it as `received` (from [`NativeStream::plan_received`])
    /// for the backup being written in `into` (an existing directory dbsnap owns,
    /// `DEST/NAME.partial`). With a `parent`, only the difference is sent. `bwlimit` caps
    /// the stream's rate in bytes per second (pass it to [`crate::command::pipe`]);
    /// `progress` gets the stream bytes so far.
    async fn send(
        &self,
        snapshot: &VolumeSnapshot,
        parent: Option<StreamParent<'_>>,
        into: &Path,
        received: &str,
        bwlimit: Option<u64>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Received>;

    /// Delete a received copy ([`Received::id`]); plain file removal cannot (they are
    /// read-only). Idempotent.
    async fn delete_received(&self, id: &str) -> Result<()>;
}
