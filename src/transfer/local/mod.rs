//! dbsnap's own copy engine for a destination on this host: the same tree that
//! `rsync --archive --hard-links --numeric-ids --sparse --one-file-system --delete`
//! makes, at disk speed (clones or in-kernel copies in large chunks, a few files in
//! flight), writing back as it goes (see [`file`]) and making every file and directory
//! durable before it returns, so publishing finds nothing left to flush.
//!
//! Incremental copies come in two shapes (see [`Seed`]): into a reflink copy of the
//! previous backup, files that pass rsync's quick check (size, time, mode, owner) are
//! left as they are and of the others only the blocks that differ are written; beside
//! a previous backup on a filesystem without reflinks, files that pass the quick check
//! become hard links into it.

mod file;
mod meta;

use std::collections::{HashMap, HashSet};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

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
}

/// Makes what the engine wrote durable. The real one calls `fsync`; tests record.
pub trait Durable: Send + Sync {
    fn file(&self, file: &File, path: &Path) -> io::Result<()>;
    fn dir(&self, path: &Path) -> io::Result<()>;
}

/// `fsync` on every file and directory.
pub struct Fsync;

impl Durable for Fsync {
    fn file(&self, file: &File, _: &Path) -> io::Result<()> {
        file.sync_all()
    }
    fn dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
}

/// What the copy shares with whoever watches it.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes of the source handled so far.
    pub done: AtomicU64,
    /// Set to stop the copy at the next chunk.
    pub cancelled: AtomicBool,
}

/// One copy.
pub struct Request {
    pub items: Vec<CopyItem>,
    /// The partial backup: its directories down to each item are made durable too.
    pub partial: PathBuf,
    pub seed: Seed,
    /// Files modified at or after this time are compared by content, never trusted on
    /// the quick check: the base was copied from a snapshot taken within that second,
    /// and a write after the snapshot in the same clock tick leaves size and time as
    /// they were (see `incremental::recheck_since`).
    pub recheck_since: Option<std::time::SystemTime>,
    /// Files in flight.
    pub threads: usize,
    pub throttle: Arc<Throttle>,
    pub counters: Arc<Counters>,
    pub durable: Arc<dyn Durable>,
}

/// What it moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Bytes in the copied files.
    pub bytes: u64,
    /// Bytes actually written (not cloned, linked or unchanged).
    pub bytes_written: u64,
    /// Regular files copied, cloned or updated (not hard-linked to a previous backup).
    pub files: u64,
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
    meta: Metadata,
    /// Into an existing reflink copy, or beside a previous backup's copy.
    basis: JobBasis,
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
}

/// Copy every item. Blocking: run it on a thread of its own.
pub fn run(request: &Request) -> anyhow::Result<Moved> {
    let mut walked = Walked::default();
    for (i, item) in request.items.iter().enumerate() {
        let linked = match &request.seed {
            Seed::Linked(bases) => Some(bases[i].as_path()),
            _ => None,
        };
        let seeded = request.seed == Seed::Reflinked;
        let how = WalkAs {
            seeded,
            linked,
            recheck_since: request.recheck_since,
            counters: &request.counters,
        };
        walk(item, &how, &mut walked)?;
    }
    let shared = Shared {
        throttle: &request.throttle,
        counters: &request.counters,
    };
    shared.progress_add(walked.unchanged);
    let mut moved = copy_files(&walked.jobs, request.threads, &shared, &*request.durable)?;
    moved.bytes += walked.unchanged;
    for (first, name) in &walked.links {
        std::fs::hard_link(first, name).map_err(|e| at(e, "hard-linking", name))?;
    }
    // Children before parents: a directory's time is set after its entries changed it.
    for (dir, meta) in walked.dirs.iter().rev() {
        let open = File::open(dir).map_err(|e| at(e, "opening", dir))?;
        meta::apply(&open, meta).map_err(|e| at(e, "setting owner, mode and times of", dir))?;
        request
            .durable
            .dir(dir)
            .map_err(|e| at(e, "syncing", dir))?;
    }
    for item in &request.items {
        for dir in item.to.ancestors().skip(1) {
            request
                .durable
                .dir(dir)
                .map_err(|e| at(e, "syncing", dir))?;
            if dir == request.partial {
                break;
            }
        }
    }
    Ok(moved)
}

/// How to walk one item (see [`walk`]).
struct WalkAs<'a> {
    /// Into a reflink copy of the previous backup.
    seeded: bool,
    /// Beside the previous backup's copy of the item.
    linked: Option<&'a Path>,
    recheck_since: Option<std::time::SystemTime>,
    /// Looked at for every entry: a cancelled copy stops walking too.
    counters: &'a Counters,
}

/// Walk one item's source: make its directories, symlinks and special files at once,
/// queue its regular files. Into a seeded destination, whatever the source no longer
/// has (or has as another kind of file) is removed first.
fn walk(item: &CopyItem, how: &WalkAs, walked: &mut Walked) -> anyhow::Result<()> {
    let WalkAs {
        seeded,
        linked,
        recheck_since,
        counters,
    } = *how;
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
        check_cancelled(counters)?;
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
            let trusted = match recheck_since {
                None => true,
                Some(t) => meta.modified().is_ok_and(|m| m < t),
            };
            let seed = seeded
                .then(|| std::fs::symlink_metadata(&to).ok())
                .flatten();
            if trusted && seed.as_ref().is_some_and(|s| meta::unchanged(&meta, s)) {
                // rsync's quick check: same size, time, mode and owner as the previous
                // backup's copy, so the same contents; not read again.
                walked.unchanged += meta.len();
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
                meta,
                basis,
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
/// source's entry will update in place (a directory, or a regular file with one name,
/// since writing into a file with more names would change the others too).
fn clear_for(to: &Path, meta: &Metadata) -> anyhow::Result<()> {
    let Ok(existing) = std::fs::symlink_metadata(to) else {
        return Ok(());
    };
    let keep = (meta.is_dir() && existing.is_dir())
        || (meta.is_file() && existing.is_file() && existing.nlink() == 1);
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
fn copy_files(
    jobs: &[Job],
    threads: usize,
    shared: &Shared,
    durable: &dyn Durable,
) -> anyhow::Result<Moved> {
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
                        let one = copy_one(job, shared, durable).inspect_err(|_| {
                            // The others stop at their next chunk.
                            shared.counters.cancelled.store(true, Ordering::Relaxed);
                        })?;
                        moved.bytes += one.bytes;
                        moved.bytes_written += one.bytes_written;
                        moved.files += one.files;
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
            Ok(m) => {
                total.bytes += m.bytes;
                total.bytes_written += m.bytes_written;
                total.files += m.files;
            }
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

fn copy_one(job: &Job, shared: &Shared, durable: &dyn Durable) -> anyhow::Result<Moved> {
    let len = job.meta.len();
    if let JobBasis::LinkIfUnchanged(previous) = &job.basis {
        if let Ok(before) = std::fs::metadata(previous) {
            if meta::unchanged(&job.meta, &before) {
                std::fs::hard_link(previous, &job.to)
                    .map_err(|e| at(e, "hard-linking", &job.to))?;
                shared.progress_add(len);
                return Ok(Moved {
                    bytes: len,
                    ..Default::default()
                });
            }
        }
    }
    let from = File::open(&job.from).map_err(|e| at(e, "opening", &job.from))?;
    let to = match job.basis {
        JobBasis::Seeded => OpenOptions::new().read(true).write(true).open(&job.to),
        _ => OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&job.to),
    }
    .map_err(|e| at(e, "creating", &job.to))?;
    let copied = match job.basis {
        JobBasis::Seeded => file::update_seeded(&from, &to, len, shared),
        _ => file::copy_new(&from, &to, len, shared),
    }
    .map_err(|e| at(e, "copying to", &job.to))?;
    meta::apply(&to, &job.meta).map_err(|e| at(e, "setting owner, mode and times of", &job.to))?;
    durable
        .file(&to, &job.to)
        .map_err(|e| at(e, "syncing", &job.to))?;
    Ok(Moved {
        bytes: len,
        bytes_written: copied.written,
        files: 1,
    })
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
