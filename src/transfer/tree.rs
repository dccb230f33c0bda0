//! A backup as a plain file tree: the mounted snapshot copied into
//! `NAME.partial/files/<absolute path>`, incremental from the previous backup (see
//! [`super::incremental`]), by one of two engines behind one interface ([`TreeCopy`]):
//! dbsnap's own ([`LocalEngine`]) or rsync ([`RsyncEngine`]).
//!
//! The rules both engines follow are applied here, once: which backup seeds the copy
//! and how, that a partial an interrupted run left is continued, which files are
//! compared by content (the stale-page rule, [`incremental::recheck_since`]), that
//! every stored file has its checksum in the `checksums` file (checked on the
//! destination's host when that is another host), that the local engine's block
//! digests go into the `blocks` file and the base's are handed to it, and what the
//! manifest records.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use async_trait::async_trait;
use dbsnap_backend_api::ReadPath;

use bytesize::ByteSize;

use super::blocks::Blocks;
use super::chain;
use super::checksums::{self, Checksums};
use super::incremental::{self, Basis};
use super::local::{self, Counters, Seed};
use super::pace::Throttle;
use super::{rsync, writeback, Copied, CopyItem, Finish, Source, Target, Transfer};
use crate::config::Method;
use crate::db::Layout;
use crate::destination::Destination;
use crate::manifest::{Manifest, TransferStats};

/// Who copies the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// dbsnap's own ([`local`]): a destination on this host.
    Local,
    /// rsync: any destination rsync reaches, or `[backup] method = "rsync"`.
    Rsync,
}

/// Files in flight in the local engine: enough to keep a disk's queue busy while one
/// file waits for its writeback, few enough not to thrash a spinning disk.
const COPY_THREADS: usize = 3;

impl Engine {
    /// The one rule: the local engine wherever the destination is a directory on this
    /// host, unless rsync is asked for.
    pub fn choose(method: &Method, dest: &dyn Destination) -> Engine {
        match (method, dest.local_dir()) {
            (Method::Rsync, _) | (_, None) => Engine::Rsync,
            (_, Some(_)) => Engine::Local,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Engine::Local => "dbsnap's local copy engine",
            Engine::Rsync => "rsync",
        }
    }
}

/// One copy of file trees into a partial backup, with the shared rules applied (see
/// the module documentation): what an engine is given.
pub struct TreeJob<'a> {
    /// From the snapshot into the partial, in order (parents first).
    pub items: Vec<CopyItem>,
    /// The partial backup the items' destinations lie in.
    pub partial: &'a Path,
    /// How the copy relates to the previous backup; a reflink seed is already made.
    pub basis: Basis,
    /// The interrupted run whose partial this one continues (the partial holds its
    /// files, never trusted on their size and time alone).
    pub resumed_from: Option<String>,
    /// Files modified at or after this are compared by content.
    pub recheck_since: Option<SystemTime>,
    /// The base's checksums, for files left as the base holds them.
    pub base_checksums: Option<Checksums>,
    /// The base's block digests (the local engine's, on this host), matching
    /// `base_checksums`.
    pub base_blocks: Option<Blocks>,
    /// The parent snapshot's copy of each item (same order), for the local engine: the
    /// base was copied from it, so blocks whose extents are its need not be read.
    pub parent: Option<Vec<PathBuf>>,
    pub progress: &'a (dyn Fn(u64) + Sync),
    pub throttle: &'a Arc<Throttle>,
}

/// What an engine did: its byte counts and a checksum of every stored file.
pub struct TreeCopied {
    pub stats: TransferStats,
    pub checksums: Checksums,
    /// Block digests of the stored files, from an engine that makes them.
    pub blocks: Option<Blocks>,
}

/// A way of copying file trees: the same result (contents, owners, modes, times,
/// hard links, holes, symlinks, special files, as `rsync --archive --hard-links
/// --numeric-ids --sparse --one-file-system --delete` makes them) and the same
/// checksums for the same job, whichever engine runs it (`conformance` proves it).
///
/// - `copy` writes only below the items' destinations; it never modifies the base.
/// - It removes from a seeded or resumed destination what the source does not have.
/// - A file it does not read (unchanged against the base) keeps the base's checksum
///   only if the base recorded one; otherwise it is hashed from the snapshot, paced.
#[async_trait]
pub trait TreeCopy: Send + Sync {
    fn engine(&self) -> Engine;

    /// Whether the copy follows [`TreeJob::throttle`] while it runs.
    fn paced(&self) -> bool;

    async fn copy(&self, job: TreeJob<'_>) -> anyhow::Result<TreeCopied>;
}

/// The engine that copies to `dest` for `method`.
pub fn engine_for<'a>(
    method: &Method,
    dest: &'a dyn Destination,
    bwlimit: Option<ByteSize>,
    compress: Option<crate::config::Compress>,
) -> Box<dyn TreeCopy + 'a> {
    match Engine::choose(method, dest) {
        Engine::Local => Box::new(LocalEngine),
        Engine::Rsync => Box::new(RsyncEngine {
            dest,
            bwlimit,
            compress,
        }),
    }
}

/// A backup as a file tree.
pub struct TreeTransfer<'a> {
    pub dest: &'a dyn Destination,
    pub engine: Box<dyn TreeCopy + 'a>,
    pub incremental: bool,
    pub needed_bytes: u64,
    /// Where parent records are kept.
    pub state_dir: PathBuf,
    /// Decided by `copy` ([`keeps_parent`]), done by `finish`.
    pub keep_parent: AtomicBool,
}

/// Whether this backup's snapshot is kept as the parent of the next incremental (a
/// [`chain::COPY_PARENT`] record): the one place that decides. Only where it pays: a
/// btrfs source (its extents say what is unchanged since a snapshot), dbsnap's engine
/// (the one that reads them), incremental copies on, and a destination here that
/// reflinks (the next backup is seeded from this one and compares changed files by
/// block digests; without reflinks, changed files are written whole and read anyway).
/// The cost, as btrfs-send's parent's: until the next backup, the kept snapshot holds
/// every block the server overwrites on its filesystem.
pub async fn keeps_parent(
    backend: &str,
    engine: Engine,
    remote: bool,
    incremental: bool,
    partial: &Path,
) -> bool {
    backend == "btrfs"
        && engine == Engine::Local
        && !remote
        && incremental
        && incremental::reflinks_within(partial).await
}

#[async_trait]
impl Transfer for TreeTransfer<'_> {
    fn describe(&self) -> String {
        match self.engine.engine() {
            Engine::Local => "copy".into(),
            Engine::Rsync => "rsync".into(),
        }
    }

    fn needed_bytes(&self) -> u64 {
        self.needed_bytes
    }

    fn paced(&self) -> bool {
        self.engine.paced()
    }

    /// Both engines continue an interrupted run's partial (the destination decides
    /// which partial that is, see [`Destination::resume_partial`]).
    fn resumes(&self) -> bool {
        true
    }

    async fn copy(&self, from: Source<'_>, into: Target<'_>) -> anyhow::Result<Copied> {
        let partial = &into.partial.dir;
        let datadir = &from.layout.datadir;
        let items = plan_copy(from.layout, from.read_paths, partial)?;
        let resumed = into.resumed_from.is_some();
        let remote = self.dest.remote();
        let basis = match (self.incremental, remote) {
            (false, _) => Basis::Full,
            (true, None) => incremental::prepare(self.dest, partial, datadir, resumed).await?,
            (true, Some(r)) => incremental::prepare_remote(r, partial, datadir, resumed).await?,
        };
        let engine = self.engine.engine();
        if let Some(base) = basis.base() {
            let method = basis.method_with(engine);
            tracing::info!("incremental copy from backup {base} ({method})");
        }
        if remote.is_none() {
            for item in &items {
                std::fs::create_dir_all(&item.to)
                    .with_context(|| format!("creating {}", item.to.display()))?;
            }
        }
        let base_checksums = match basis.base_path() {
            Some(base) => self.base_checksums(base).await,
            None => None,
        };
        // Only dbsnap's engine uses digests, and only on this host.
        let base_blocks = match (engine, remote, basis.base_path(), &base_checksums) {
            (Engine::Local, None, Some(base), Some(sums)) => Blocks::read(base, sums),
            _ => None,
        };
        let keep = keeps_parent(
            &from.set.backend,
            engine,
            remote.is_some(),
            self.incremental,
            partial,
        )
        .await;
        self.keep_parent.store(keep, Ordering::Relaxed);
        let parent = match (&basis, keep, &base_blocks) {
            (Basis::Reflinked { base, .. }, true, Some(_)) => {
                self.parent_items(&from, base, partial)
            }
            _ => None,
        };
        let (parent_snapshot, parent) = parent.unzip();
        let job = TreeJob {
            parent,
            items,
            partial,
            recheck_since: incremental::recheck_since(&basis, into.resumed_from.as_deref()),
            basis: basis.clone(),
            resumed_from: into.resumed_from.clone(),
            base_checksums,
            base_blocks,
            progress: into.progress,
            throttle: into.throttle,
        };
        let TreeCopied {
            mut stats,
            checksums,
            blocks,
        } = self.engine.copy(job).await?;
        match remote {
            Some(r) => r.check_checksums(partial, &checksums).await?,
            None => checksums.write(partial)?,
        }
        if let (None, Some(blocks)) = (remote, blocks) {
            blocks.write(partial, &checksums)?;
        }
        stats.method = basis.method_with(engine);
        stats.base = basis.base();
        stats.parent_snapshot = parent_snapshot;
        stats.resumed_from = into.resumed_from;
        Ok(Copied {
            stats,
            stored: Vec::new(),
        })
    }

    async fn finish(&self, done: Finish<'_>) -> anyhow::Result<()> {
        match self.keep_parent.load(Ordering::Relaxed) {
            true => done.keep_snapshot_as_copy_parent().await,
            false => done.release_snapshot_and_parents().await,
        }
    }
}

impl TreeTransfer<'_> {
    /// The kept snapshot of backup `base` (the seed's) and its copy of each item, if
    /// its record holds and it is still there; else `None`, and the log says why (every
    /// changed file is then read).
    fn parent_items(
        &self,
        from: &Source<'_>,
        base: &str,
        partial: &Path,
    ) -> Option<(String, Vec<PathBuf>)> {
        let found = chain::copy_parent(
            &self.state_dir,
            self.dest.location(),
            &from.layout.datadir,
            base,
            from.set,
        )
        .and_then(|parent| {
            let reads = from
                .read_paths
                .iter()
                .map(|read| {
                    // The parent is read where its snapshot is, as this one is.
                    let index = from
                        .set
                        .snapshots
                        .iter()
                        .position(|s| Path::new(&s.id) == read.frozen_root)
                        .ok_or_else(|| {
                            format!(
                                "the snapshot of {} is not read at its own path",
                                read.origin_root.display()
                            )
                        })?;
                    let frozen_root = PathBuf::from(&parent.set.snapshots[index].id);
                    if !frozen_root.is_dir() {
                        return Err(format!(
                            "the kept snapshot {} is gone",
                            frozen_root.display()
                        ));
                    }
                    Ok(ReadPath {
                        origin_root: read.origin_root.clone(),
                        frozen_root,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let items = plan_copy(from.layout, &reads, partial).map_err(|e| format!("{e:#}"))?;
            Ok((
                parent.set.name.to_string(),
                items.into_iter().map(|i| i.from).collect(),
            ))
        });
        match found {
            Ok(parent) => {
                tracing::info!(
                    "blocks of changed files whose extents are those of snapshot {} (base \
                     backup {base}'s) are not read",
                    parent.0
                );
                Some(parent)
            }
            Err(why) => {
                tracing::info!("{why}: changed files are read whole");
                None
            }
        }
    }

    /// The base backup's checksums, if it has them (older backups do not).
    async fn base_checksums(&self, base: &Path) -> Option<Checksums> {
        let found = match self.dest.remote() {
            Some(r) => r.read_checksums(base).await,
            None => Checksums::read(base),
        };
        found.unwrap_or_else(|e| {
            tracing::warn!(
                "the base backup's checksums cannot be read ({e:#}); every file is hashed"
            );
            None
        })
    }
}

/// dbsnap's own engine ([`local`]), on threads of its own; progress reported from
/// here, the rate set through the throttle while it runs.
pub struct LocalEngine;

#[async_trait]
impl TreeCopy for LocalEngine {
    fn engine(&self) -> Engine {
        Engine::Local
    }

    fn paced(&self) -> bool {
        true
    }

    async fn copy(&self, job: TreeJob<'_>) -> anyhow::Result<TreeCopied> {
        let started = Instant::now();
        let links = job.basis.link_dest(&job.items, job.partial);
        let seed = match (&job.resumed_from, &job.basis) {
            (Some(_), _) => Seed::Resumed(links),
            (None, Basis::Full) => Seed::None,
            (None, Basis::Reflinked { .. }) => Seed::Reflinked,
            (None, Basis::Linked { .. }) => {
                Seed::Linked(links.expect("a linked basis has link destinations"))
            }
        };
        let in_place = seed.in_place();
        let counters = Arc::new(Counters::default());
        let request = local::Request {
            items: job.items,
            partial: job.partial.to_path_buf(),
            recheck_since: job.recheck_since,
            base_checksums: job.base_checksums,
            base_blocks: job.base_blocks,
            parent: job.parent,
            seed,
            threads: COPY_THREADS,
            throttle: job.throttle.clone(),
            counters: counters.clone(),
            durable: Arc::new(local::SyncFs),
        };
        let (done, mut copying) = tokio::sync::oneshot::channel();
        // Dropped with this future (the copy was stopped), it stops the threads and
        // waits for them: nothing may hold a file of the snapshot once it is released.
        let _thread = CopyThread {
            counters: counters.clone(),
            thread: Some(std::thread::spawn(move || {
                let _ = done.send(local::run(&request));
            })),
        };
        let moved = loop {
            tokio::select! {
                done = &mut copying => break done.context("the copy thread failed")??,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    (job.progress)(counters.done.load(Ordering::Relaxed));
                }
            }
        };
        (job.progress)(counters.done.load(Ordering::Relaxed));
        tracing::info!(
            "checksums of {} files: {} hashed as copied, {} read only to hash (clones, \
             unchanged files without a base checksum), {} kept from the base",
            moved.checksums.len(),
            moved.checksums.len() as u64 - moved.checksums_kept,
            ByteSize::b(moved.hashed_only).display().iec(),
            moved.checksums_kept
        );
        if in_place {
            tracing::info!(
                "changed files: {} compared with the base's block digests (the seed unread), \
                 {} read from the seed to compare the others, {} left unread (their extents \
                 are the parent snapshot's)",
                moved.compared_by_digest,
                ByteSize::b(moved.seed_bytes_read).display().iec(),
                ByteSize::b(moved.unread_by_extents).display().iec()
            );
        }
        let unknown = counters.extents_unknown.load(Ordering::Relaxed);
        if let Some(why) = counters.extents_unknown_because.get() {
            tracing::warn!(
                "{unknown} files read whole: their extents could not be compared with the \
                 parent snapshot's (first: {why})"
            );
        }
        let source_read = counters.source_read.load(Ordering::Relaxed);
        Ok(TreeCopied {
            stats: TransferStats {
                bytes: moved.bytes,
                bytes_written: moved.bytes_written,
                files: moved.files,
                duration_ms: started.elapsed().as_millis() as u64,
                seed_bytes_read: in_place.then_some(moved.seed_bytes_read),
                source_bytes_read: Some(source_read),
                ..Default::default()
            },
            checksums: Checksums(moved.checksums),
            blocks: Some(Blocks(moved.blocks)),
        })
    }
}

/// rsync, to a directory here or over ssh, hashing behind it (see [`checksums`]).
pub struct RsyncEngine<'a> {
    pub dest: &'a dyn Destination,
    pub bwlimit: Option<ByteSize>,
    pub compress: Option<crate::config::Compress>,
}

#[async_trait]
impl TreeCopy for RsyncEngine<'_> {
    fn engine(&self) -> Engine {
        Engine::Rsync
    }

    /// rsync takes its rate (`bwlimit`) once, at the start.
    fn paced(&self) -> bool {
        false
    }

    async fn copy(&self, job: TreeJob<'_>) -> anyhow::Result<TreeCopied> {
        let rsync_remote = match self.dest.remote() {
            Some(r) => Some(
                r.rsync_remote(
                    rsync::Side::Dest,
                    crate::config::Compress::level(self.compress),
                )
                .await?,
            ),
            None => None,
        };
        // rsync leaves a resumed partial's files it finds up to date unnamed: they may
        // be the interrupted run's, not the base's, so none keeps the base's checksum.
        let base_checksums = match job.resumed_from {
            Some(_) => None,
            None => job.base_checksums,
        };
        let link_dest = job.basis.link_dest(&job.items, job.partial);
        let options = rsync::Options {
            writes: job.basis.writes(),
            link_dest: link_dest.as_deref(),
            bwlimit: self.bwlimit,
            remote: rsync_remote.as_ref(),
            recheck_since: job.recheck_since,
        };
        let copying = checksums::copy_and_hash(
            &job.items,
            options,
            job.partial,
            base_checksums,
            job.progress,
        );
        let (stats, checksums, hashing) = tokio::select! {
            copied = copying => copied?,
            never = writeback::flush_every(job.partial, writeback::EVERY), if rsync_remote.is_none() => never,
        };
        tracing::info!(
            "checksums of {} files: {} read behind the copy, {} after it, {} kept from the base",
            checksums.0.len(),
            ByteSize::b(hashing.during_copy).display().iec(),
            ByteSize::b(hashing.after_copy).display().iec(),
            hashing.reused
        );
        Ok(TreeCopied {
            stats,
            checksums,
            blocks: None,
        })
    }
}

/// The local engine's thread: when the copy is abandoned, stopped and joined.
struct CopyThread {
    counters: Arc<Counters>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CopyThread {
    fn drop(&mut self) {
        self.counters.cancelled.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // Blocking on purpose: a drop cannot await, and nothing may read the
            // snapshot once the copy is given up.
            let _ = thread.join();
        }
    }
}

/// What to copy: each server directory, read from its frozen volume, into
/// `<backup>/files/<absolute path>`.
/// Each server directory, plus every volume mounted inside one (a ZFS child dataset is
/// not part of its parent's snapshot), parents first so that the child lands in the
/// directory its parent's copy created.
pub fn plan_copy(
    layout: &Layout,
    read_paths: &[ReadPath],
    backup_dir: &Path,
) -> anyhow::Result<Vec<CopyItem>> {
    let roots = layout.copy_roots();
    let mut sources: Vec<PathBuf> = roots.clone();
    for read in read_paths {
        let nested = roots
            .iter()
            .any(|r| read.origin_root.starts_with(r) && read.origin_root != *r);
        if nested && !sources.contains(&read.origin_root) {
            sources.push(read.origin_root.clone());
        }
    }
    sources.sort_by_key(|s| s.components().count());
    sources
        .into_iter()
        .map(|source| {
            let exclude = layout
                .runtime_files
                .iter()
                .filter_map(|f| f.strip_prefix(&source).ok().map(PathBuf::from))
                .collect();
            Ok(CopyItem {
                from: frozen_path(read_paths, &source)?,
                to: Manifest::stored_path(backup_dir, &source),
                exclude,
            })
        })
        .collect()
}

/// Where the frozen copy of the live path `source` can be read: inside the deepest
/// volume that holds it.
pub fn frozen_path(read_paths: &[ReadPath], source: &Path) -> anyhow::Result<PathBuf> {
    let read = read_paths
        .iter()
        .filter(|r| source.starts_with(&r.origin_root))
        .max_by_key(|r| r.origin_root.components().count())
        .with_context(|| format!("no snapshot covers {}", source.display()))?;
    let relative = source
        .strip_prefix(&read.origin_root)
        .expect("filtered by starts_with");
    Ok(match relative.as_os_str().is_empty() {
        true => read.frozen_root.clone(),
        false => read.frozen_root.join(relative),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::layout::ServerPaths;
    use crate::db::Layout;

    #[test]
    fn child_volumes_inside_a_server_directory_are_copied_after_their_parent() {
        let layout = Layout::from_server(
            "/tank/mysql".into(),
            ServerPaths {
                log_bin_basename: Some("/tank/mysql/binlog/bin".into()),
                pid_file: Some("/tank/mysql/db.pid".into()),
                ..Default::default()
            },
        );
        let read = |origin: &str, frozen: &str| ReadPath {
            origin_root: origin.into(),
            frozen_root: frozen.into(),
        };
        let reads = [
            read("/tank/mysql/binlog", "/run/clone/1"),
            read("/tank/mysql", "/tank/mysql/.zfs/snapshot/s"),
        ];
        let items = plan_copy(&layout, &reads, Path::new("/b/n")).unwrap();
        let pairs: Vec<(String, String)> = items
            .iter()
            .map(|i| (i.from.display().to_string(), i.to.display().to_string()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                (
                    "/tank/mysql/.zfs/snapshot/s".into(),
                    "/b/n/files/tank/mysql".into()
                ),
                ("/run/clone/1".into(), "/b/n/files/tank/mysql/binlog".into()),
            ]
        );
        assert_eq!(items[0].exclude, vec![PathBuf::from("db.pid")]);
    }

    #[test]
    fn a_directory_below_a_volume_root_is_read_from_inside_the_snapshot() {
        let layout = Layout::from_server("/srv/db/data".into(), ServerPaths::default());
        let reads = [ReadPath {
            origin_root: "/srv/db".into(),
            frozen_root: "/srv/.snaps/s.0".into(),
        }];
        let items = plan_copy(&layout, &reads, Path::new("/b/n")).unwrap();
        assert_eq!(items[0].from, PathBuf::from("/srv/.snaps/s.0/data"));
    }
}
