//! How the frozen files reach the destination: one interface, [`Transfer`], for every
//! method, so the backup flow never knows which it drives.
//!
//! - [`tree::TreeTransfer`]: a plain file tree copied from the mounted snapshot, by
//!   dbsnap's own engine ([`local`]) to a destination on this host or by rsync
//!   ([`rsync`]), both behind [`tree::TreeCopy`], incremental from the previous backup
//!   ([`incremental`]), with a checksum of every file ([`checksums`]) and, from the
//!   local engine, block digests for the next incremental ([`blocks`]), continuing an
//!   interrupted run's partial.
//! - [`stream::StreamTransfer`]: the backend's own stream (`btrfs send`, `zfs send`, or
//!   whatever an exec plugin names), incremental along the parent chain ([`chain`]),
//!   a cut-off one resumed where the backend can ([`resume`]).
//!
//! - [`repository::RepositoryTransfer`]: a destination that reads the frozen files
//!   itself (`restic backup` into a restic repository).
//!
//! [`choose`] is the one place that picks one, before the lock.

pub mod blocks;
pub mod chain;
pub mod checksums;
#[cfg(test)]
pub mod conformance;
pub mod incremental;
pub mod local;
pub mod pace;
pub mod repository;
pub mod resume;
pub mod rsync;
pub mod stream;
pub mod tree;
pub mod writeback;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use dbsnap_backend_api::{LocalHost, NativeStream, ReadPath, SnapshotBackend, SnapshotSet, Volume};

use crate::backends::Backends;
use crate::config::Method;
use crate::db::Layout;
use crate::destination::{Destination, Partial};
use crate::error::{fail, Class};
use crate::journal::Journal;
use crate::manifest::{Manifest, StoredVolume};
pub use crate::manifest::{TransferMethod, TransferStats};
pub use rsync::CopyItem;

/// What a transfer reads: the frozen, mounted snapshot of the server's directories.
pub struct Source<'a> {
    pub set: &'a SnapshotSet,
    pub layout: &'a Layout,
    pub read_paths: &'a [ReadPath],
}

/// Where a transfer writes: the partial backup, and the run's journal, which records
/// anything the transfer creates outside plain files (received copies) first.
pub struct Target<'a> {
    pub partial: &'a Partial,
    pub journal: &'a mut Journal,
    /// Called with the bytes moved so far.
    pub progress: &'a (dyn Fn(u64) + Sync),
    /// The rate the copy may move at, changed while it runs (see [`pace`]); transfers
    /// that cannot change their rate once started take it at the start.
    pub throttle: &'a Arc<pace::Throttle>,
    /// The interrupted run whose partial this one continues (see
    /// [`Transfer::resumes`]).
    pub resumed_from: Option<String>,
}

/// What a transfer moved, for the manifest.
pub struct Copied {
    pub stats: TransferStats,
    /// Received copies (streams); empty for a file tree.
    pub stored: Vec<StoredVolume>,
}

/// A published backup and the snapshot it was copied from: what
/// [`Transfer::finish`] decides about.
pub struct Finish<'a> {
    pub backend: &'a dyn SnapshotBackend,
    pub journal: &'a mut Journal,
    pub set: &'a SnapshotSet,
    /// Where the snapshot is mounted.
    pub workdir: &'a Path,
    pub manifest: &'a Manifest,
    /// The destination's location (parent records name it).
    pub dest: &'a Path,
    pub state_dir: &'a Path,
    /// For releasing snapshots made by another backend than the configured one.
    pub backends: &'a dyn Backends,
    /// What paces the snapshot's release in steps, if it is released and the backend
    /// offers steps — or, if it is kept as the next parent, the release of the parent it
    /// replaces (`None`: deleted at once).
    pub spread: Option<crate::release::ReleasePace>,
}

impl Finish<'_> {
    /// An error after the backup was published: the backup stays.
    pub fn after_publish(&self, e: anyhow::Error, what: &str) -> anyhow::Error {
        e.context(format!(
            "the backup {} is complete, but {what} failed; run `dbsnap cleanup`",
            self.manifest.path.display()
        ))
    }

    /// Nothing is built on the snapshot: release it, and the parents a stream method
    /// left (switching back from a stream releases the kept snapshot). What every
    /// transfer but a stream does when it is done.
    pub async fn release_snapshot_and_parents(mut self) -> anyhow::Result<()> {
        let spread = self.spread.take();
        let own = crate::release::OwnRun {
            state_dir: self.state_dir,
            spread,
        };
        crate::release::release_own(self.backend, self.journal, self.set, self.workdir, own)
            .await
            .map_err(|e| self.after_publish(e, "releasing the snapshot"))?;
        chain::retire_parents(&mut self, None).await;
        release_interrupted_streams(
            self.state_dir,
            self.backends,
            self.dest,
            &self.manifest.server.datadir,
        )
        .await;
        Ok(())
    }

    /// Keep the snapshot as the parent of the next incremental made with `method` (a
    /// stream's, whose copies on the destination are `received`, or the copy engine's
    /// [`chain::COPY_PARENT`]), and release the parents it replaces.
    pub async fn keep_snapshot_as_parent(
        &mut self,
        method: &str,
        received: Vec<String>,
    ) -> anyhow::Result<chain::Parent> {
        let parent = chain::Parent {
            set: self.set.clone(),
            backup: self.manifest.name.clone(),
            received,
            dest: self.dest.to_path_buf(),
            datadir: self.manifest.server.datadir.clone(),
            method: method.into(),
            created_at: self.manifest.started_at,
        };
        chain::keep_as_parent(
            self.state_dir,
            self.backend,
            self.journal,
            self.workdir,
            &parent,
        )
        .await
        .map_err(|e| self.after_publish(e, "keeping its snapshot as the next parent"))?;
        chain::retire_parents(self, Some(&parent.set.name)).await;
        Ok(parent)
    }

    /// Keep the snapshot as the parent of the next file-tree incremental, and release
    /// the parents it replaces and what interrupted streams left.
    pub async fn keep_snapshot_as_copy_parent(mut self) -> anyhow::Result<()> {
        self.keep_snapshot_as_parent(chain::COPY_PARENT, Vec::new())
            .await?;
        release_interrupted_streams(
            self.state_dir,
            self.backends,
            self.dest,
            &self.manifest.server.datadir,
        )
        .await;
        Ok(())
    }
}

/// Release what interrupted streams into `dest` of `datadir` left. A free function, not
/// a method of [`Finish`]: a future holding `&Finish` would need its release pace's
/// probe to be `Sync`.
async fn release_interrupted_streams(
    state_dir: &Path,
    backends: &dyn Backends,
    dest: &Path,
    datadir: &Path,
) {
    if let Err(e) = resume::release_records(state_dir, backends, Some((dest, datadir))).await {
        tracing::warn!(
            "could not release what an interrupted stream left: {e:#}; the next backup tries again"
        );
    }
}

/// One way of moving a backup's data.
///
/// - Everything that can fail slowly or be refused is decided in [`choose`], before
///   the lock: a transfer exists only once it is possible.
/// - `copy` writes only into the partial, and journals anything it creates elsewhere
///   before creating it (a received copy outside the partial, a remote file). It never
///   modifies an earlier backup, also when building on one.
/// - `finish` runs once the backup is published: it releases the snapshot, or keeps it
///   as the base of the next backup (recording it so that nothing leaks), and releases
///   bases that are no longer needed. A failure there leaves the backup complete.
#[async_trait]
pub trait Transfer: Send + Sync {
    /// What this backup will be, for `dbsnap check` (`btrfs-send, full stream`).
    fn describe(&self) -> String;

    /// Free space the destination needs for it, in bytes.
    fn needed_bytes(&self) -> u64;

    /// Whether `copy` follows [`Target::throttle`] while it runs (else it takes the
    /// rate once, at the start, and pacing by the server's latency does not apply).
    fn paced(&self) -> bool {
        false
    }

    /// Whether it can continue a partial an interrupted run left (a file tree can:
    /// either engine writes only what the partial lacks or holds wrong).
    fn resumes(&self) -> bool {
        false
    }

    /// Move the frozen files into the partial.
    async fn copy(&self, from: Source<'_>, into: Target<'_>) -> anyhow::Result<Copied>;

    /// Release or keep the snapshot once the backup is published.
    async fn finish(&self, done: Finish<'_>) -> anyhow::Result<()>;
}

/// What the choice depends on, learned in preflight.
pub struct Facts<'a> {
    pub datadir: &'a Path,
    pub volumes: &'a [Volume],
    /// Bytes in the server's directories.
    pub data_bytes: u64,
}

/// How `[backup]` wants the data moved.
pub struct Settings<'a> {
    pub method: &'a Method,
    pub bwlimit: Option<bytesize::ByteSize>,
    pub compress: Option<crate::config::Compress>,
    pub incremental: bool,
}

/// The one place that decides how this backup's data travels: rsync, or the backend's
/// native stream (from its parent, or in full and why), and the room that needs. Runs
/// before the lock: an impossible choice fails before anything is created.
pub async fn choose<'a>(
    settings: Settings<'_>,
    backend: &'a dyn SnapshotBackend,
    dest: &'a dyn Destination,
    state_dir: &Path,
    facts: Facts<'_>,
) -> anyhow::Result<Box<dyn Transfer + 'a>> {
    if let Some(ingest) = dest.ingest() {
        return repository_transfer(settings.method, ingest, dest, facts).await;
    }
    let stream = stream_for(settings.method, backend, dest).await?;
    let Some(stream) = stream else {
        let engine = tree::engine_for(settings.method, dest, settings.bwlimit, settings.compress);
        tracing::info!("copying a file tree with {}", engine.engine().describe());
        return Ok(Box::new(tree::TreeTransfer {
            dest,
            engine,
            incremental: settings.incremental,
            needed_bytes: facts.data_bytes,
            state_dir: state_dir.to_path_buf(),
            keep_parent: Default::default(),
        }));
    };
    let host: &dyn dbsnap_backend_api::ReceivingHost = match dest.remote() {
        Some(remote) => remote,
        None => &LocalHost,
    };
    let receiving_dir = match dest.remote() {
        Some(remote) => remote.target().path.as_path(),
        None => dest.location(),
    };
    let resumable = stream
        .resumable(facts.volumes, host, receiving_dir)
        .await
        .map_err(|e| fail(Class::Destination, e.to_string()))?;
    let found = match resumable {
        true => {
            resume::find(
                state_dir,
                dest,
                facts.datadir,
                stream,
                backend,
                facts.volumes,
            )
            .await?
        }
        false => resume::Found::default(),
    };
    let dropped_because = found.dropped.last().map(|d| d.why.clone());
    let (parent, full_because) = match &found.interrupted {
        // Its own record names the parent it continues from.
        Some(interrupted) => {
            tracing::info!(
                "{}: the stream of interrupted backup {} is completed first, then this \
                 backup's is sent incrementally from it",
                stream.method(),
                interrupted.record.backup
            );
            (None, None)
        }
        None => {
            let chain = chain::find_parent(
                state_dir,
                dest,
                facts.datadir,
                stream,
                backend,
                facts.volumes,
            )
            .await?;
            match chain {
                chain::Chain::Continue(parent) => {
                    tracing::info!(
                        "incremental {} from backup {} (snapshot {})",
                        stream.method(),
                        parent.backup,
                        parent.set.name
                    );
                    (Some(parent), None)
                }
                chain::Chain::Start => (None, dropped_because),
                chain::Chain::Broken(why) => {
                    tracing::warn!("{why}: this backup is a full stream, the chain starts again");
                    (None, Some(why))
                }
            }
        }
    };
    let needed_bytes = match (&parent, &found.interrupted) {
        (Some(_), None) => {
            chain::room_for_increment(dest, facts.datadir, stream.method(), facts.data_bytes)
                .await?
        }
        _ => facts.data_bytes,
    };
    Ok(Box::new(stream::StreamTransfer {
        stream,
        backend,
        dest,
        parent,
        full_because,
        bwlimit: settings.bwlimit,
        needed_bytes,
        resumable,
        found,
        state_dir: state_dir.to_path_buf(),
        datadir: facts.datadir.to_path_buf(),
    }))
}

/// `restic backup` into a repository; it needs room for what changed since the
/// previous snapshot of this datadir (sized like a stream's increment), or for all of
/// it the first time.
async fn repository_transfer<'a>(
    method: &Method,
    ingest: &'a dyn crate::destination::Ingest,
    dest: &'a dyn Destination,
    facts: Facts<'_>,
) -> anyhow::Result<Box<dyn Transfer + 'a>> {
    if let Method::Stream(name) = method {
        return Err(fail(
            Class::Config,
            format!(
                "[backup] method = \"{name}\" cannot write into {}: restic reads the files \
                 itself. Use method = \"auto\" (or leave it out)",
                dest.location().display()
            ),
        ));
    }
    let restic = crate::destination::BaseOf::Stream(TransferMethod::Restic.as_str());
    let base = dest.newest_base(facts.datadir, restic).await?;
    let needed_bytes = match &base {
        Some(_) => {
            chain::room_for_increment(
                dest,
                facts.datadir,
                TransferMethod::Restic.as_str(),
                facts.data_bytes,
            )
            .await?
        }
        None => facts.data_bytes,
    };
    Ok(Box::new(repository::RepositoryTransfer {
        ingest,
        base: base.map(|b| b.name),
        needed_bytes,
    }))
}

/// The backend's stream, if `method` asks for it and the destination (here, or the
/// backup host of an ssh destination) can receive it.
async fn stream_for<'a>(
    method: &Method,
    backend: &'a dyn SnapshotBackend,
    dest: &dyn Destination,
) -> anyhow::Result<Option<&'a dyn NativeStream>> {
    let wanted = match method {
        Method::Files | Method::Rsync => return Ok(None),
        Method::Stream(name) => Some(name.as_str()),
        Method::Auto => None,
    };
    let stream = match (backend.native_stream(), wanted) {
        (Some(stream), Some(w)) if stream.method() == w => stream,
        (None, Some(w)) | (Some(_), Some(w)) => {
            return Err(fail(
                Class::Config,
                format!(
                    "[backup] method = \"{w}\" needs the backend that makes those streams, but \
                     [snapshot] backend is {}{}. Use method = \"rsync\" or \"auto\"",
                    backend.name(),
                    backend
                        .native_stream()
                        .map(|s| format!(" (its stream is \"{}\")", s.method()))
                        .unwrap_or_default()
                ),
            ))
        }
        (Some(stream), None) => stream,
        (None, None) => {
            tracing::info!(
                "method auto: the {} backend has no native stream; copying files",
                backend.name()
            );
            return Ok(None);
        }
    };
    let receivable = match dest.remote() {
        Some(remote) => can_receive_on(stream, remote).await,
        None => stream
            .check_destination(&LocalHost, dest.location())
            .await
            .map_err(|why| fail(Class::Destination, why.to_string())),
    };
    match receivable {
        Ok(()) => {
            tracing::info!("transfer method {}", stream.method());
            Ok(Some(stream))
        }
        Err(why) if *method == Method::Auto => {
            tracing::info!(
                "method auto: copying files, not {}: {why:#}",
                stream.method()
            );
            Ok(None)
        }
        Err(why) => Err(why),
    }
}

/// Whether the backup host of `remote` can receive `stream` into its directory: it has
/// the stream's programs, and the directory is where they can store the copies.
async fn can_receive_on(
    stream: &dyn NativeStream,
    remote: &crate::destination::ssh::SshDir,
) -> anyhow::Result<()> {
    remote.check_with(stream.receiving_programs()).await?;
    stream
        .check_destination(remote, &remote.target().path)
        .await
        .map_err(|why| {
            fail(
                Class::Destination,
                format!("on {}: {why}", remote.target().display_host()),
            )
        })
}
