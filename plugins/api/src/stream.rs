//! Native incremental streams (`btrfs send | btrfs receive`, `zfs send | zfs receive`): a backend capability next
//! to the rsync copy. A stream of a snapshot relative to an earlier snapshot of the same
//! volume (the *parent*) carries only the blocks that changed between the two, and the
//! receiving side rebuilds a complete, independent copy from it.
//!
//! The receiving side is this host or a backup host reached over ssh: the backend runs
//! every command there through a [`ReceivingHost`] (the receive itself, and every look
//! at or deletion of a received copy), so one implementation serves every destination.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::command::{Cmd, CommandError, Output};
use crate::mounts::{parse_mountinfo, MountEntry};
use crate::{BackendError, Result, Volume, VolumeSnapshot};

/// Where a stream is received and its copies live.
#[async_trait]
pub trait ReceivingHost: Send + Sync {
    /// `cmd` as this process must start it to run it there: `cmd` itself on this host
    /// ([`LocalHost`]); for a backup host, the `ssh` client that runs it there over the
    /// run's connection, its argv quoted for the remote shell (so that the receiving
    /// end of [`crate::command::pipe`] can be either). Fails when the host cannot be
    /// reached.
    async fn command(&self, cmd: &Cmd) -> Result<Cmd, CommandError>;

    /// Run `cmd` there to completion; a non-zero exit is an error carrying its stderr.
    async fn run(&self, cmd: &Cmd) -> Result<Output, CommandError> {
        self.command(cmd).await?.run().await
    }
}

/// This host: commands run as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalHost;

#[async_trait]
impl ReceivingHost for LocalHost {
    async fn command(&self, cmd: &Cmd) -> Result<Cmd, CommandError> {
        Ok(cmd.clone())
    }
}

/// The mount table of `host` (`/proc/self/mountinfo` read there).
pub async fn mount_table_on(host: &dyn ReceivingHost) -> Result<Vec<MountEntry>> {
    let out = host
        .run(&Cmd::new("cat").arg("/proc/self/mountinfo"))
        .await?;
    Ok(parse_mountinfo(&out.stdout))
}

/// `path` on `host` with every symbolic link resolved (`realpath -e`); fails if it does
/// not exist there.
pub async fn canonical_on(host: &dyn ReceivingHost, path: &Path) -> Result<PathBuf> {
    let out = host
        .run(&Cmd::new("realpath").args(["-e", "-z", "--"]).arg(path))
        .await?;
    Ok(PathBuf::from(out.stdout.trim_end_matches('\0')))
}

/// A snapshot received at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The backend's identity for the received copy (a subvolume path, `dataset@snap`):
    /// what `delete_received` and the next stream's parent refer to.
    pub id: String,
    /// Where the complete, read-only copy of the snapshot's volume can be read on the
    /// receiving host. Inside the backup directory where the backend can put it there.
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

/// Where a copy is received: the backup being written in `dir` (an existing directory
/// dbsnap owns, `DEST/NAME.partial`, a path on `host`).
#[derive(Clone, Copy)]
pub struct ReceiveAt<'a> {
    pub host: &'a dyn ReceivingHost,
    pub dir: &'a Path,
    /// Keep what a cut-off receive got, for a later run to continue (only where
    /// [`NativeStream::resumable`] said so).
    pub resumable: bool,
}

/// What the receiving side holds of a copy whose stream was cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remains {
    /// Nothing: the stream never started, or what it left is gone.
    Nothing,
    /// All of it: the stream had finished.
    Complete,
    /// Part of it; a stream from `token` on completes it (checked against the snapshot
    /// it continues).
    Partial { token: String },
    /// Something that cannot be continued, and why: it must be aborted.
    Unusable(String),
}

/// A received copy ([`Received::id`]) whose stream was cut off, and what the receiving
/// side holds of it ([`NativeStream::remains`]).
#[derive(Debug, Clone, Copy)]
pub struct CutOff<'a> {
    pub received: &'a str,
    pub remains: &'a Remains,
}

#[async_trait]
pub trait NativeStream: Send + Sync {
    /// The transfer method's name in configuration and manifests (`btrfs-send`, `zfs-send`).
    fn method(&self) -> &'static str;

    /// The programs the receiving side runs (a backup host must have them; checked
    /// before the database lock).
    fn receiving_programs(&self) -> &'static [&'static str];

    /// Whether received copies can be stored under `dest` on `host`; the error says why
    /// not and what to change. Called before the database lock.
    async fn check_destination(&self, host: &dyn ReceivingHost, dest: &Path) -> Result<()>;

    /// The id ([`Received::id`]) the received copy of `snapshot`, the set's `index`th
    /// volume, will have, decided before anything is received: dbsnap journals it first,
    /// so `delete_received` can remove what an interrupted receive left, also where the
    /// backend keeps received copies outside `at.dir`. Only reads.
    async fn plan_received(
        &self,
        snapshot: &VolumeSnapshot,
        index: usize,
        parent: Option<StreamParent<'_>>,
        at: ReceiveAt<'_>,
    ) -> Result<String>;

    /// Send `snapshot` and receive it as `received` (from [`NativeStream::plan_received`])
    /// `at` the backup being written. With a `parent`, only the difference is sent.
    /// The stream goes through [`crate::command::pipe`] (its receiving end started by
    /// [`ReceivingHost::command`]) with `bwlimit`, the cap on its rate in bytes per
    /// second; `progress` gets the stream bytes so far.
    async fn send(
        &self,
        snapshot: &VolumeSnapshot,
        parent: Option<StreamParent<'_>>,
        at: ReceiveAt<'_>,
        received: &str,
        bwlimit: Option<u64>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Received>;

    /// Delete a received copy ([`Received::id`]) on `host`; plain file removal cannot
    /// (they are read-only). What a cut-off receive of it kept is aborted too. Refuses
    /// an id dbsnap would not have made. Idempotent.
    async fn delete_received(&self, host: &dyn ReceivingHost, id: &str) -> Result<()>;

    /// Whether a stream to `dest` on `host` that is cut off part-way can be continued by
    /// a later run (both this host's sender and the receiver there must be able to).
    /// Called before the database lock; says why not in the log where it matters.
    async fn resumable(
        &self,
        _sending: &[Volume],
        _host: &dyn ReceivingHost,
        _dest: &Path,
    ) -> Result<bool> {
        Ok(false)
    }

    /// What `host` holds of the received copy `received` of `snapshot`, whose stream
    /// was cut off. Only reads.
    async fn remains(
        &self,
        _snapshot: &VolumeSnapshot,
        _host: &dyn ReceivingHost,
        _received: &str,
    ) -> Result<Remains> {
        Ok(Remains::Nothing)
    }

    /// Complete the received copy of `snapshot` whose stream was `cut` off: continue it
    /// from a [`Remains::Partial`], or send it whole again from `parent`
    /// ([`Remains::Nothing`]). It is not made readable: it is the base of the next
    /// stream, not a backup's copy. Returns the stream bytes.
    async fn complete(
        &self,
        _snapshot: &VolumeSnapshot,
        _parent: Option<StreamParent<'_>>,
        _at: ReceiveAt<'_>,
        _cut: CutOff<'_>,
        _bwlimit: Option<u64>,
        _progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64> {
        Err(BackendError::Invalid(format!(
            "{} streams cannot be resumed",
            self.method()
        )))
    }
}
