//! dbsnap's own copy engine for a destination on this host: the same tree that
//! `rsync --archive --hard-links --numeric-ids --sparse --one-file-system --delete`
//! makes, at disk speed (clones, or large chunks read and written, a few files in
//! flight), writing back as it goes (see [`file`]) and making the whole tree durable
//! (one `syncfs`, see [`SyncFs`]) before it returns, so publishing finds nothing left
//! to flush.
//!
//! Incremental copies come in two shapes (see [`Seed`]): into a reflink copy of the
//! previous backup, files that pass rsync's quick check (size, time, mode, owner) are
//! left as they are and of the others only the blocks that differ are written; beside
//! a previous backup on a filesystem without reflinks, files that pass the quick check
//! become hard links into it. A partial that an interrupted run left is continued: its
//! files are compared block by block (never trusted on their size and time), so only
//! what it lacks or holds wrong is written.
//!
//! Every stored file gets its BLAKE3 checksum ([`Moved::checksums`]) and its block
//! digests ([`Moved::blocks`], see [`super::blocks`]), from the data the copy reads (see
//! [`file`]); a file left as the previous backup holds it keeps that backup's checksum
//! and digests, or is hashed from the snapshot if that backup has no checksum. Into a
//! reflink copy of the previous backup, a changed file whose digests that backup
//! recorded is compared with them: only the snapshot is read. Given the parent snapshot
//! (the one that backup was copied from, [`Request::parent`]), not even all of the
//! snapshot: blocks whose extents are the parent's ([`extents`]) are left unread, their
//! digests the previous backup's.

pub mod extents;
mod file;
mod meta;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::blocks::{Blocks, FileBlocks};
use super::checksums::Checksums;
use super::pace::Throttle;
use super::rsync::CopyItem;

/// How the destination relates to the previous backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seed {
    /// An empty destination.
    None,
    /// Each item's destination already holds a reflink copy of the previous backup's.
    Reflinked,
    /// The previous backup's copy of each item (same order as the items).
    Linked(Vec<PathBuf>),
    /// Each item's destination holds what an interrupted run copied; what it lacks is
    /// linked to the previous backup's copy of each item, if there is one, as with
    /// [`Seed::Linked`].
    Resumed(Option<Vec<PathBuf>>),
}

impl Seed {
    /// Whether the destination may already hold files, updated in place.
    pub fn in_place(&self) -> bool {
        matches!(self, Seed::Reflinked | Seed::Resumed(_))
    }

    /// The previous backup's copy of item `i`, for hard links.
    fn link_to(&self, i: usize) -> Option<&Path> {
        match self {
            Seed::Linked(bases) | Seed::Resumed(Some(bases)) => Some(bases[i].as_path()),
            Seed::None | Seed::Reflinked | Seed::Resumed(None) => None,
        }
    }
}

/// Makes what the engine wrote durable. The real one flushes the destination's
/// filesystem; tests record.
pub trait Durable: Send + Sync {
    /// Everything written below `partial` (contents, metadata, directory entries) onto
    /// stable storage; called once, after the last write.
    fn tree(&self, partial: &Path) -> io::Result<()>;
}

/// One `syncfs` of the destination's filesystem. The copy has already written back
/// every file's data as it went (see [`file`]), so this flushes metadata and the
/// disk's cache, once, where an `fsync` per file and directory committed the journal
/// once per file (thousands of commits for a datadir of many small tables).
pub struct SyncFs;

impl Durable for SyncFs {
    fn tree(&self, partial: &Path) -> io::Result<()> {
        let dir = File::open(partial)?;
        nix::unistd::syncfs(&dir).map_err(io::Error::from)
    }
}

/// What the copy shares with whoever watches it.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes of the source handled so far.
    pub done: AtomicU64,
    /// Set to stop the copy at the next chunk.
    pub cancelled: AtomicBool,
    /// Bytes read from the source (the snapshot).
    pub source_read: AtomicU64,
    /// Files whose extents could not be compared with the parent snapshot's although
    /// it was given, and the first reason: they were read as without a parent.
    pub extents_unknown: AtomicU64,
    pub extents_unknown_because: std::sync::OnceLock<String>,
}

/// One copy.
pub struct Request {
    pub items: Vec<CopyItem>,
    /// The partial backup, made durable as a whole when the copy is done.
    pub partial: PathBuf,
    pub seed: Seed,
    /// Files modified at or after this time are compared by content, never trusted on
    /// the quick check: the base was copied from a snapshot taken within that second,
    /// and a write after the snapshot in the same clock tick leaves size and time as
    /// they were (see `incremental::recheck_since`).
    pub recheck_since: Option<std::time::SystemTime>,
    /// The checksums of the previous backup the seed comes from (by stored path), for
    /// the files left as it holds them.
    pub base_checksums: Option<Checksums>,
    /// The block digests of the previous backup the seed comes from (by stored path,
    /// only entries that match `base_checksums`): a reflink seed's changed files are
    /// compared with them instead of read.
    pub base_blocks: Option<Blocks>,
    /// The parent snapshot's copy of each item (same order as the items): the snapshot
    /// the previous backup was copied from, kept for this (see `tree::keeps_parent`).
    /// With `base_blocks`, blocks whose extents are the parent's are not read.
    pub parent: Option<Vec<PathBuf>>,
    /// Files in flight.
    pub threads: usize,
    pub throttle: Arc<Throttle>,
    pub counters: Arc<Counters>,
    pub durable: Arc<dyn Durable>,
}

/// What it moved.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Moved {
    /// Bytes in the copied files.
    pub bytes: u64,
    /// Bytes actually written (not cloned, linked or unchanged).
    pub bytes_written: u64,
    /// Regular files copied, cloned or updated (not hard-linked to a previous backup).
    pub files: u64,
    /// Bytes the copy read to hash files it did not otherwise read (clones, and files
    /// left as a previous backup without checksums holds them).
    pub hashed_only: u64,
    /// Files whose checksum is the previous backup's.
    pub checksums_kept: u64,
    /// Files of a seeded copy compared with the previous backup's block digests, the
    /// seed unread.
    pub compared_by_digest: u64,
    /// Bytes read from a seeded copy to compare with (files without base digests).
    pub seed_bytes_read: u64,
    /// Bytes of changed files left unread: their extents are the parent snapshot's.
    pub unread_by_extents: u64,
    /// Every stored regular file (path relative to the partial) → BLAKE3 hex digest.
    pub checksums: BTreeMap<PathBuf, String>,
    /// Every stored regular file the copy has block digests for (all but those left
    /// as a previous backup without digests holds them).
    pub blocks: BTreeMap<PathBuf, FileBlocks>,
}

impl Moved {
    fn add(&mut self, other: Moved) {
        self.bytes += other.bytes;
        self.bytes_written += other.bytes_written;
        self.files += other.files;
        self.hashed_only += other.hashed_only;
        self.checksums_kept += other.checksums_kept;
        self.compared_by_digest += other.compared_by_digest;
        self.seed_bytes_read += other.seed_bytes_read;
        self.unread_by_extents += other.unread_by_extents;
        self.checksums.extend(other.checksums);
        self.blocks.extend(other.blocks);
    }
}

/// What the worker threads share.
pub struct Shared<'a> {
    pub throttle: &'a Throttle,
    pub counters: &'a Counters,
}

impl Shared<'_> {
    pub fn progress_add(&self, bytes: u64) {
        self.counters.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `bytes` were read from the source.
    pub fn source_read(&self, bytes: u64) {
        self.counters
            .source_read
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// The extents of `path` could not be compared with the parent's: `why`.
    fn extents_unknown(&self, path: &Path, why: &io::Error) {
        self.counters
            .extents_unknown
            .fetch_add(1, Ordering::Relaxed);
        let _ = self
            .counters
            .extents_unknown_because
            .set(format!("{}: {why}", path.display()));
    }

    /// Wait until `bytes` may be moved at the throttle's rate; an error as soon as the
    /// copy is cancelled, even in the middle of a long wait.
    pub fn take(&self, bytes: u64) -> io::Result<()> {
        match self.throttle.take(bytes, &self.counters.cancelled) {
            true => Ok(()),
            false => Err(cancelled()),
        }
    }
}

fn check_cancelled(counters: &Counters) -> io::Result<()> {
    match counters.cancelled.load(Ordering::Relaxed) {
        true => Err(cancelled()),
        false => Ok(()),
    }
}

fn cancelled() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "copy cancelled")
}

/// A regular file to copy.
struct Job {
    from: PathBuf,
    to: PathBuf,
    /// `to` relative to the partial, as the checksums name it.
    stored: PathBuf,
    meta: Metadata,
    /// Into an existing reflink copy, or beside a previous backup's copy.
    basis: JobBasis,
    /// The previous backup's checksum of this file, if it recorded one.
    base_hash: Option<String>,
    /// The previous backup's block digests of this file, if it recorded them.
    base_blocks: Option<FileBlocks>,
    /// Whether the seed is a reflink copy of the previous backup, so that its block
    /// digests describe it.
    compare_by_digest: bool,
    /// The parent snapshot's copy of this file (it may not exist).
    parent: Option<PathBuf>,
}

enum JobBasis {
    New,
    Seeded,
    LinkIfUnchanged(PathBuf),
}

/// Everything the walk found, in the order it is finished.
#[derive(Default)]
struct Walked {
    jobs: Vec<Job>,
    /// Further names of a hard-linked file: (first copy, this name).
    links: Vec<(PathBuf, PathBuf)>,
    /// Directories, parents first, with the source's metadata.
    dirs: Vec<(PathBuf, Metadata)>,
    /// Bytes in files a seeded copy already holds.
    unchanged: u64,
    /// Those files (stored path) with the previous backup's checksum.
    kept: Vec<(PathBuf, String)>,
    /// And with its block digests, where it recorded them.
    kept_blocks: Vec<(PathBuf, FileBlocks)>,
}

/// Copy every item. Blocking: run it on a thread of its own.
pub fn run(request: &Request) -> anyhow::Result<Moved> {
    let mut walked = Walked::default();
    for (i, item) in request.items.iter().enumerate() {
        let parent = request.parent.as_ref().map(|p| p[i].as_path());
        walk(request, item, request.seed.link_to(i), parent, &mut walked)?;
    }
    let shared = Shared {
        throttle: &request.throttle,
        counters: &request.counters,
    };
    shared.progress_add(walked.unchanged);
    let mut moved = copy_files(&walked.jobs, request.threads, &shared)?;
    moved.bytes += walked.unchanged;
    moved.checksums_kept += walked.kept.len() as u64;
    moved.checksums.extend(walked.kept);
    moved.blocks.extend(walked.kept_blocks);
    for (first, name) in &walked.links {
        std::fs::hard_link(first, name).map_err(|e| at(e, "hard-linking", name))?;
        let hash = moved.checksums.get(&stored(request, first)).cloned();
        let hash = hash.expect("the first name of a hard-linked file was copied");
        moved.checksums.insert(stored(request, name), hash);
        if let Some(blocks) = moved.blocks.get(&stored(request, first)).cloned() {
            moved.blocks.insert(stored(request, name), blocks);
        }
    }
    // Children before parents: a directory's time is set after its entries changed it.
    for (dir, meta) in walked.dirs.iter().rev() {
        let open = File::open(dir).map_err(|e| at(e, "opening", dir))?;
        meta::apply(&open, meta).map_err(|e| at(e, "setting owner, mode and times of", dir))?;
    }
    request
        .durable
        .tree(&request.partial)
        .map_err(|e| at(e, "syncing", &request.partial))?;
    Ok(moved)
}

/// `to` (inside the partial) as the checksums name it.
fn stored(request: &Request, to: &Path) -> PathBuf {
    to.strip_prefix(&request.partial)
        .expect("items are inside the partial")
        .to_path_buf()
}

/// Walk one item's source: make its directories, symlinks and special files at once,
/// queue its regular files. Into a seeded destination, whatever the source no longer
/// has (or has as another kind of file) is removed first.
fn walk(
    request: &Request,
    item: &CopyItem,
    linked: Option<&Path>,
    parent: Option<&Path>,
    walked: &mut Walked,
) -> anyhow::Result<()> {
    let seeded = request.seed.in_place();
    // Only a reflink copy of the previous backup is trusted on the quick check; what an
    // interrupted run left is compared.
    let seed_trusted = request.seed == Seed::Reflinked;
    let mut first_names: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut present: HashSet<PathBuf> = HashSet::new();
    let entries = walkdir::WalkDir::new(&item.from)
        .same_file_system(true)
        .into_iter()
        .filter_entry(|e| {
            let relative = e.path().strip_prefix(&item.from).unwrap_or(e.path());
            !item.exclude.iter().any(|x| x == relative)
        });
    for entry in entries {
        // A cancelled copy stops walking too.
        check_cancelled(&request.counters)?;
        let entry = entry.map_err(|e| anyhow::anyhow!("reading {}: {e}", item.from.display()))?;
        let relative = entry.path().strip_prefix(&item.from)?.to_path_buf();
        let to = item.to.join(&relative);
        let meta = entry
            .metadata()
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", entry.path().display()))?;
        if seeded {
            clear_for(&to, &meta)?;
        }
        present.insert(relative.clone());
        let kind = meta.file_type();
        if kind.is_dir() {
            match std::fs::create_dir(&to) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && to.is_dir() => {}
                other => other.map_err(|e| at(e, "creating", &to))?,
            }
            walked.dirs.push((to, meta));
        } else if kind.is_symlink() {
            let target = std::fs::read_link(entry.path()).map_err(|e| at(e, "reading", &to))?;
            std::os::unix::fs::symlink(&target, &to).map_err(|e| at(e, "creating", &to))?;
            meta::apply_at(&to, &meta).map_err(|e| at(e, "setting owner and times of", &to))?;
        } else if kind.is_file() {
            if meta.nlink() > 1 {
                if let Some(first) = first_names.get(&(meta.dev(), meta.ino())) {
                    walked.links.push((first.clone(), to));
                    continue;
                }
                first_names.insert((meta.dev(), meta.ino()), to.clone());
            }
            let trusted = match request.recheck_since {
                None => true,
                Some(t) => meta.modified().is_ok_and(|m| m < t),
            };
            let seed = seeded
                .then(|| std::fs::symlink_metadata(&to).ok())
                .flatten();
            let stored = stored(request, &to);
            let base_hash = request
                .base_checksums
                .as_ref()
                .and_then(|b| b.0.get(&stored))
                .cloned();
            // Digests only with the checksum they were recorded with.
            let base_blocks = base_hash
                .as_ref()
                .and_then(|_| request.base_blocks.as_ref()?.0.get(&stored).cloned());
            let quick_check = seed.as_ref().is_some_and(|s| meta::unchanged(&meta, s));
            if let (true, true, Some(hash)) = (seed_trusted && trusted, quick_check, &base_hash) {
                // rsync's quick check: same size, time, mode and owner as the previous
                // backup's copy, so the same contents (and checksum); not read again.
                walked.unchanged += meta.len();
                walked.kept.push((stored.clone(), hash.clone()));
                if let Some(blocks) = base_blocks {
                    walked.kept_blocks.push((stored, blocks));
                }
                continue;
            }
            let basis = match (seed.is_some(), linked) {
                (true, _) => JobBasis::Seeded,
                (false, Some(base)) if trusted => JobBasis::LinkIfUnchanged(base.join(&relative)),
                (false, _) => JobBasis::New,
            };
            walked.jobs.push(Job {
                from: entry.path().to_path_buf(),
                to,
                stored,
                meta,
                basis,
                base_hash,
                base_blocks,
                compare_by_digest: seed_trusted,
                parent: parent.map(|p| p.join(&relative)),
            });
        } else {
            meta::make_special(&to, &meta).map_err(|e| at(e, "creating", &to))?;
        }
    }
    if seeded {
        remove_absent(&item.to, &present)?;
    }
    Ok(())
}

/// Into a seeded destination: what stands at `to` must go unless it is what the
/// source's entry will update in place: a directory, or a regular file with one name
/// on both sides (writing into a file with more names would change the others too, and
/// a source file with more names is copied once and linked again).
fn clear_for(to: &Path, meta: &Metadata) -> anyhow::Result<()> {
    let Ok(existing) = std::fs::symlink_metadata(to) else {
        return Ok(());
    };
    let keep = (meta.is_dir() && existing.is_dir())
        || (meta.is_file() && meta.nlink() == 1 && existing.is_file() && existing.nlink() == 1);
    if keep {
        return Ok(());
    }
    match existing.is_dir() {
        true => std::fs::remove_dir_all(to),
        false => std::fs::remove_file(to),
    }
    .map_err(|e| at(e, "removing", to))
}

/// `rsync --delete`: remove what the seed has below `root` and the source does not.
fn remove_absent(root: &Path, present: &HashSet<PathBuf>) -> anyhow::Result<()> {
    let mut walk = walkdir::WalkDir::new(root).min_depth(1).into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.map_err(|e| anyhow::anyhow!("reading {}: {e}", root.display()))?;
        let relative = entry.path().strip_prefix(root)?;
        if present.contains(relative) {
            continue;
        }
        let path = entry.path();
        if entry.file_type().is_dir() {
            std::fs::remove_dir_all(path).map_err(|e| at(e, "removing", path))?;
            walk.skip_current_dir();
        } else {
            std::fs::remove_file(path).map_err(|e| at(e, "removing", path))?;
        }
    }
    Ok(())
}

/// The regular files, largest first, `threads` at a time.
fn copy_files(jobs: &[Job], threads: usize, shared: &Shared) -> anyhow::Result<Moved> {
    let mut order: Vec<&Job> = jobs.iter().collect();
    order.sort_by_key(|j| std::cmp::Reverse(j.meta.len()));
    let next = AtomicUsize::new(0);
    let results: Vec<anyhow::Result<Moved>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.clamp(1, order.len().max(1)))
            .map(|_| {
                scope.spawn(|| {
                    super::pace::lower_io_priority();
                    let mut moved = Moved::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = order.get(i) else {
                            return Ok(moved);
                        };
                        let one = copy_one(job, shared).inspect_err(|_| {
                            // The others stop at their next chunk.
                            shared.counters.cancelled.store(true, Ordering::Relaxed);
                        })?;
                        moved.add(one);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("copy thread panicked"))
            .collect()
    });
    let mut total = Moved::default();
    let mut first_error = None;
    for result in results {
        match result {
            Ok(m) => total.add(m),
            // The cancellation that one failure caused is not the story.
            Err(e) if first_error.is_none() || is_cancelled(first_error.as_ref()) => {
                first_error = Some(e)
            }
            Err(_) => {}
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

fn is_cancelled(e: Option<&anyhow::Error>) -> bool {
    e.and_then(|e| e.downcast_ref::<io::Error>())
        .is_some_and(|e| e.kind() == io::ErrorKind::Interrupted)
}

fn copy_one(job: &Job, shared: &Shared) -> anyhow::Result<Moved> {
    let len = job.meta.len();
    let from = File::open(&job.from).map_err(|e| at(e, "opening", &job.from))?;
    if let JobBasis::LinkIfUnchanged(previous) = &job.basis {
        if let Ok(before) = std::fs::metadata(previous) {
            if meta::unchanged(&job.meta, &before) {
                std::fs::hard_link(previous, &job.to)
                    .map_err(|e| at(e, "hard-linking", &job.to))?;
                let (hash, blocks, hashed_only, checksums_kept) = match &job.base_hash {
                    Some(hash) => {
                        shared.progress_add(len);
                        (hash.clone(), job.base_blocks.clone(), 0, 1)
                    }
                    None => {
                        let (hash, blocks) = file::hash_source(&from, len, shared)
                            .map_err(|e| at(e, "reading", &job.from))?;
                        (hash, Some(blocks), len, 0)
                    }
                };
                return Ok(Moved {
                    bytes: len,
                    hashed_only,
                    checksums_kept,
                    checksums: BTreeMap::from([(job.stored.clone(), hash)]),
                    blocks: blocks
                        .map(|b| BTreeMap::from([(job.stored.clone(), b)]))
                        .unwrap_or_default(),
                    ..Default::default()
                });
            }
        }
    }
    let to = match job.basis {
        JobBasis::Seeded => OpenOptions::new().read(true).write(true).open(&job.to),
        _ => OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&job.to),
    }
    .map_err(|e| at(e, "creating", &job.to))?;
    let base_blocks = job.base_blocks.as_ref().filter(|_| job.compare_by_digest);
    let unread = match (&job.basis, base_blocks, &job.parent) {
        (JobBasis::Seeded, Some(base), Some(parent)) => {
            unchanged_since_parent(&from, parent, len, base, shared)
        }
        _ => None,
    };
    let copied = match job.basis {
        JobBasis::Seeded => {
            file::update_seeded(&from, &to, len, base_blocks, unread.as_deref(), shared)
        }
        _ => file::copy_new(&from, &to, len, shared),
    }
    .map_err(|e| at(e, "copying to", &job.to))?;
    meta::apply(&to, &job.meta).map_err(|e| at(e, "setting owner, mode and times of", &job.to))?;
    Ok(Moved {
        bytes: len,
        bytes_written: copied.written,
        files: 1,
        hashed_only: if copied.cloned { len } else { 0 },
        compared_by_digest: u64::from(copied.by_digest),
        seed_bytes_read: copied.seed_read,
        unread_by_extents: copied.unread,
        checksums: BTreeMap::from([(job.stored.clone(), copied.hash)]),
        blocks: BTreeMap::from([(job.stored.clone(), copied.blocks)]),
        ..Default::default()
    })
}

/// The blocks of `from` (the snapshot's file) whose extents are those of `parent` (the
/// parent snapshot's copy), so that they hold the bytes `base` describes. `None` where
/// the parent has no such file (new since), or its extents cannot be compared (said
/// once in the log, after the copy): the file is read whole, as without a parent.
fn unchanged_since_parent(
    from: &File,
    parent: &Path,
    len: u64,
    base: &FileBlocks,
    shared: &Shared,
) -> Option<Vec<bool>> {
    let parent_file = match File::open(parent) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            shared.extents_unknown(parent, &e);
            return None;
        }
    };
    match extents::unchanged_since_parent(from, &parent_file, len, base) {
        Ok(unread) => Some(unread),
        Err(e) => {
            shared.extents_unknown(parent, &e);
            None
        }
    }
}

/// An I/O error with what was done to what; a full destination is the destination's
/// error, with what to do.
fn at(e: io::Error, doing: &str, path: &Path) -> anyhow::Error {
    if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
        return crate::error::fail(
            crate::error::Class::Destination,
            format!(
                "the destination is full ({doing} {}: {e}): free space there or point [backup] dest elsewhere",
                path.display()
            ),
        );
    }
    if e.kind() == io::ErrorKind::Interrupted {
        return anyhow::Error::new(e);
    }
    anyhow::Error::new(e).context(format!("{doing} {}", path.display()))
}

#[cfg(test)]
mod tests;
