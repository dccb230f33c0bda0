//! A checksum of every file a backup stored, in `NAME/checksums` beside the manifest.
//!
//! The format is `b3sum`'s (BLAKE3, `HASH  PATH` per line, paths relative to the
//! backup directory; a name holding `\` or a newline is escaped as b3sum does and its
//! line starts with `\`), so the host holding a backup can check it with
//! `b3sum --check checksums` alone, and `dbsnap verify --checksums` checks it anywhere.
//!
//! dbsnap's own copy engine hashes what it reads as it copies (see
//! `transfer::local`). With rsync, the checksums are computed while it copies, from
//! the frozen snapshot, without a second unpaced read of it:
//! - every file rsync sends is hashed as soon as rsync names it (`--out-format`), while
//!   its pages are in the cache rsync just filled; the hasher never reads more than
//!   rsync has reported copied (plus one chunk), so it runs at the copy's pace;
//! - a file rsync did not send (unchanged against the seed, which is the previous
//!   backup) keeps the previous backup's checksum;
//! - what is left (a resumed partial: files an interrupted run sent) is hashed after
//!   the copy at a bounded rate (the bandwidth limit, else the copy's own rate).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::rsync::{self, CopyItem};
use crate::manifest::TransferStats;

pub const CHECKSUMS_FILE: &str = "checksums";

const CHUNK: usize = 1 << 20;

/// Stored path (relative to the backup directory) → BLAKE3 hex digest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checksums(pub BTreeMap<PathBuf, String>);

fn escape(name: &str) -> (bool, String) {
    let escaped = name.contains(['\\', '\n', '\r']);
    (
        escaped,
        name.replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\r', "\\r"),
    )
}

pub fn unescape(name: &str) -> String {
    let mut out = String::new();
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

impl Checksums {
    pub fn render(&self) -> String {
        let mut text = String::new();
        for (path, hash) in &self.0 {
            let (escaped, name) = escape(&path.to_string_lossy());
            if escaped {
                text.push('\\');
            }
            text.push_str(&format!("{hash}  {name}\n"));
        }
        text
    }

    pub fn parse(text: &str) -> anyhow::Result<Checksums> {
        let mut map = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let (escaped, line) = match line.strip_prefix('\\') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let (hash, name) = line.split_once("  ").with_context(|| {
                format!("line {} of {CHECKSUMS_FILE} is not `HASH  PATH`", n + 1)
            })?;
            let name = if escaped {
                unescape(name)
            } else {
                name.to_string()
            };
            map.insert(PathBuf::from(name), hash.to_string());
        }
        Ok(Checksums(map))
    }

    pub fn read(backup_dir: &Path) -> anyhow::Result<Option<Checksums>> {
        let path = backup_dir.join(CHECKSUMS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Checksums::parse(&text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Write the checksums file into `backup_dir`, durably (file and directory
    /// synced), like everything else published with it.
    pub fn write(&self, backup_dir: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let path = backup_dir.join(CHECKSUMS_FILE);
        let written = std::fs::File::create(&path).and_then(|mut file| {
            file.write_all(self.render().as_bytes())?;
            file.sync_all()?;
            std::fs::File::open(backup_dir)?.sync_all()
        });
        written.with_context(|| format!("writing {}", path.display()))
    }
}

/// How fast the hasher may read.
pub enum Pace<'a> {
    /// No further than `copied` bytes (plus one chunk) in total, until `done`; then at
    /// `after_rate` bytes per second.
    Follow(&'a Progress),
    /// At most this many bytes per second.
    Rate(u64),
}

/// Counts what the hasher read, and holds it to its [`Pace`].
pub struct Reader<'a> {
    pace: Pace<'a>,
    read: u64,
    since: Instant,
    read_since: u64,
}

impl<'a> Reader<'a> {
    pub fn new(pace: Pace<'a>) -> Reader<'a> {
        Reader {
            pace,
            read: 0,
            since: Instant::now(),
            read_since: 0,
        }
    }

    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    fn wait_for(&mut self, n: u64) {
        loop {
            let rate = match &self.pace {
                Pace::Follow(p) if !p.done.load(Ordering::Relaxed) => {
                    if self.read + n <= p.copied.load(Ordering::Relaxed) + CHUNK as u64 {
                        self.since = Instant::now();
                        self.read_since = 0;
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Pace::Follow(p) => p.after_rate.load(Ordering::Relaxed),
                Pace::Rate(r) => *r,
            };
            if rate == 0 {
                return;
            }
            let allowed = self.since.elapsed().as_secs_f64() * rate as f64;
            if (self.read_since + n) as f64 <= allowed + CHUNK as f64 {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The BLAKE3 digest of `path`, read in chunks at this reader's pace.
    pub fn hash(&mut self, path: &Path) -> anyhow::Result<String> {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            self.wait_for(CHUNK as u64);
            if let Pace::Follow(p) = &self.pace {
                if p.abort.load(Ordering::Relaxed) {
                    anyhow::bail!("the copy failed; hashing stopped");
                }
            }
            let n = file
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            self.read += n as u64;
            self.read_since += n as u64;
        }
        Ok(hasher.finalize().to_hex().to_string())
    }
}

/// A stored file that does not match its checksum.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub path: PathBuf,
    pub why: String,
}

/// Check every file `checksums` names under `backup_dir` (unpaced: the backup is not
/// the live server's storage).
pub fn verify_dir(backup_dir: &Path, checksums: &Checksums) -> Vec<Mismatch> {
    let mut reader = Reader::new(Pace::Rate(0));
    checksums
        .0
        .iter()
        .filter_map(|(path, want)| match reader.hash(&backup_dir.join(path)) {
            Ok(got) if got == *want => None,
            Ok(got) => Some(Mismatch {
                path: path.clone(),
                why: format!("checksum {got}, recorded {want}"),
            }),
            Err(e) => Some(Mismatch {
                path: path.clone(),
                why: format!("{e:#}"),
            }),
        })
        .collect()
}

type Hashed = (BTreeMap<PathBuf, String>, u64);

/// The thread hashing behind the copy. Dropped before it was joined (the copy future
/// was cancelled: the snapshot was lost, or dbsnap was interrupted), it is stopped and
/// joined at once: it would otherwise wait for copy progress that never comes, holding
/// a file of the snapshot open (an LVM snapshot then cannot be removed).
struct HasherThread {
    /// The files rsync sends; closed (dropped) when the copy is over.
    files: Option<std::sync::mpsc::Sender<(usize, PathBuf)>>,
    shared: Arc<Progress>,
    thread: Option<std::thread::JoinHandle<Hashed>>,
}

impl Drop for HasherThread {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.files = None;
            self.shared.abort.store(true, Ordering::Relaxed);
            self.shared.done.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

/// Shared between the copy and the hasher thread.
#[derive(Default)]
pub struct Progress {
    /// Bytes rsync reported copied.
    pub copied: AtomicU64,
    /// rsync finished: read on at `after_rate`.
    pub done: AtomicBool,
    pub after_rate: AtomicU64,
    /// rsync failed: stop.
    pub abort: AtomicBool,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress::default())
    }
}

/// What hashing cost, for the log and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HashStats {
    /// Read while rsync copied, behind it.
    pub during_copy: u64,
    /// Read after the copy, at the bounded rate.
    pub after_copy: u64,
    /// Files whose checksum was the base backup's (rsync left them as seeded).
    pub reused: u64,
}

/// The floor of the rate the files left after the copy are hashed at, when there is
/// no bandwidth limit (so that a copy that moved little does not make it crawl).
const MIN_AFTER_RATE: u64 = 32 << 20;

/// After the copy: every stored file under `roots` (snapshot side, stored path) that
/// the hasher did not see takes the checksum of another name of the same file that it
/// did see (rsync links a hard-linked file's further names instead of sending them),
/// else keeps the base's checksum, else is hashed at `rate`.
fn hash_the_rest(
    roots: &[(PathBuf, PathBuf)],
    excludes: &[Vec<PathBuf>],
    hashed: &mut BTreeMap<PathBuf, String>,
    base: Option<&Checksums>,
    rate: u64,
) -> anyhow::Result<HashStats> {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    for ((from, stored), exclude) in roots.iter().zip(excludes) {
        for entry in walkdir::WalkDir::new(from).same_file_system(true) {
            let entry = entry.with_context(|| format!("walking {}", from.display()))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let relative = entry.path().strip_prefix(from).expect("under the root");
            if exclude.iter().any(|x| relative.starts_with(x)) {
                continue;
            }
            let meta = entry
                .metadata()
                .with_context(|| format!("reading {}", entry.path().display()))?;
            let inode = (meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
            let path = stored.join(relative);
            files.push((entry.into_path(), path, inode));
        }
    }
    let mut by_inode: std::collections::HashMap<(u64, u64), String> = files
        .iter()
        .filter_map(|(_, path, inode)| Some(((*inode)?, hashed.get(path)?.clone())))
        .collect();
    let mut reader = Reader::new(Pace::Rate(rate));
    let mut reused = 0;
    for (source, path, inode) in files {
        if hashed.contains_key(&path) {
            continue;
        }
        let seen = inode.and_then(|i| by_inode.get(&i)).cloned();
        let hash = match (seen, base.and_then(|b| b.0.get(&path))) {
            (Some(hash), _) => hash,
            (None, Some(hash)) => {
                reused += 1;
                hash.clone()
            }
            (None, None) => reader.hash(&source)?,
        };
        if let Some(i) = inode {
            by_inode.insert(i, hash.clone());
        }
        hashed.insert(path, hash);
    }
    Ok(HashStats {
        during_copy: 0,
        after_copy: reader.bytes_read(),
        reused,
    })
}

/// rsync `items` with `options`, hashing every stored file from the snapshot as
/// described in the module documentation. `partial` is the backup directory the
/// items' `to` lie in; `base` the checksums of the backup the partial was seeded from
/// (none when there is no base, or when the partial is a resumed one).
pub async fn copy_and_hash(
    items: &[CopyItem],
    options: rsync::Options<'_>,
    partial: &Path,
    base: Option<Checksums>,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<(TransferStats, Checksums, HashStats)> {
    let shared = Progress::new();
    // (snapshot side, stored path relative to the backup directory) of each item.
    let roots: Vec<(PathBuf, PathBuf)> = items
        .iter()
        .map(|i| {
            let stored = i.to.strip_prefix(partial).unwrap_or(&i.to).to_path_buf();
            (i.from.clone(), stored)
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel::<(usize, PathBuf)>();
    let mut hasher = HasherThread {
        files: Some(tx),
        shared: shared.clone(),
        thread: Some({
            let (shared, roots) = (shared.clone(), roots.clone());
            std::thread::spawn(move || {
                let mut reader = Reader::new(Pace::Follow(&shared));
                let mut hashed = BTreeMap::new();
                for (i, relative) in rx {
                    let (from, stored) = &roots[i];
                    if let Ok(hash) = reader.hash(&from.join(&relative)) {
                        hashed.insert(stored.join(&relative), hash);
                    }
                }
                (hashed, reader.bytes_read())
            })
        }),
    };
    let copied = {
        let report = |bytes| {
            shared.copied.store(bytes, Ordering::Relaxed);
            progress(bytes)
        };
        let sent = |i, path| {
            if let Some(files) = &hasher.files {
                let _ = files.send((i, path));
            }
        };
        rsync::copy_with(items, options, &report, &sent).await
    };
    hasher.files = None;
    let after_rate = match (&copied, options.bwlimit) {
        (_, Some(limit)) => limit.as_u64(),
        (Ok(stats), None) => (stats.bytes * 1000 / stats.duration_ms.max(1)).max(MIN_AFTER_RATE),
        (Err(_), None) => MIN_AFTER_RATE,
    };
    shared.after_rate.store(after_rate, Ordering::Relaxed);
    shared.abort.store(copied.is_err(), Ordering::Relaxed);
    shared.done.store(true, Ordering::Relaxed);
    let thread = hasher.thread.take().expect("joined only here or on drop");
    let (mut hashed, during_copy) = tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the checksum thread panicked"))?;
    let stats = copied?;
    let excludes: Vec<Vec<PathBuf>> = items.iter().map(|i| i.exclude.clone()).collect();
    let (rest, hash_stats) = tokio::task::spawn_blocking(move || {
        let mut hash_stats =
            hash_the_rest(&roots, &excludes, &mut hashed, base.as_ref(), after_rate)?;
        hash_stats.during_copy = during_copy;
        anyhow::Ok((Checksums(hashed), hash_stats))
    })
    .await??;
    Ok((stats, rest, hash_stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancelled_copy_leaves_no_file_of_the_snapshot_open() {
        let (snapshot, partial) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let big = snapshot.path().join("ibdata1");
        std::fs::write(&big, vec![7u8; 16 << 20]).unwrap();
        let item = CopyItem {
            from: snapshot.path().into(),
            to: partial.path().join("files"),
            exclude: vec![],
        };
        std::fs::create_dir(&item.to).unwrap();
        let options = rsync::Options {
            bwlimit: Some(bytesize::ByteSize::mib(2)),
            ..rsync::Options::default()
        };
        let items = [item];
        let copy = copy_and_hash(&items, options, partial.path(), None, &|_| {});
        // The copy is cancelled in the middle of the file, as when the snapshot is lost.
        let cancelled = tokio::time::timeout(Duration::from_millis(1500), copy).await;
        assert!(
            cancelled.is_err(),
            "the copy finished before it was cancelled"
        );
        let held_open = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.unwrap().path()).ok())
            .any(|target| target == big);
        assert!(!held_open, "the hasher still holds {} open", big.display());
    }

    #[test]
    fn the_file_reads_back_and_matches_b3sum() {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("files");
        std::fs::create_dir(&files).unwrap();
        let odd = "we ird\\name\nwith newline";
        std::fs::write(files.join("a"), vec![7u8; 3 << 20]).unwrap();
        std::fs::write(files.join(odd), b"x").unwrap();
        let mut reader = Reader::new(Pace::Rate(0));
        let mut sums = Checksums::default();
        for name in ["a", odd] {
            let path = Path::new("files").join(name);
            sums.0
                .insert(path.clone(), reader.hash(&dir.path().join(&path)).unwrap());
        }
        assert_eq!(reader.bytes_read(), (3 << 20) + 1);
        sums.write(dir.path()).unwrap();
        assert_eq!(Checksums::read(dir.path()).unwrap().unwrap(), sums);
        assert!(verify_dir(dir.path(), &sums).is_empty());
        let check = std::process::Command::new("b3sum")
            .args(["--check", "--quiet", CHECKSUMS_FILE])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );

        std::fs::write(files.join("a"), vec![8u8; 3 << 20]).unwrap();
        let bad = verify_dir(dir.path(), &sums);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].path, Path::new("files/a"));
    }

    #[test]
    fn following_the_copy_the_hasher_waits_for_what_was_copied() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, vec![1u8; 4 << 20]).unwrap();
        let progress = Progress::new();
        let p = progress.clone();
        let hasher = std::thread::spawn(move || {
            let mut reader = Reader::new(Pace::Follow(&p));
            reader.hash(&file).unwrap();
            reader.bytes_read()
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!hasher.is_finished(), "waits while nothing was copied");
        progress.copied.store(4 << 20, Ordering::Relaxed);
        assert_eq!(hasher.join().unwrap(), 4 << 20);
    }
}
