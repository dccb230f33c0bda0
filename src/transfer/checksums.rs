//! A checksum of every file a backup stored, in `NAME/checksums` beside the manifest.
//!
//! The format is `b3sum`'s (BLAKE3, `HASH  PATH` per line, paths relative to the
//! backup directory; a name holding `\` or a newline is escaped as b3sum does and its
//! line starts with `\`), so the host holding a backup can check it with
//! `b3sum --check checksums` alone, and `dbsnap verify --checksums` checks it anywhere.
//!
//! The checksums are computed while rsync copies, from the frozen snapshot, without a
//! second unpaced read of it:
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

fn unescape(name: &str) -> String {
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

    pub fn write(&self, backup_dir: &Path) -> anyhow::Result<()> {
        let path = backup_dir.join(CHECKSUMS_FILE);
        std::fs::write(&path, self.render()).with_context(|| format!("writing {}", path.display()))
    }
}

/// How fast the hasher may read.
pub enum Pace<'a> {
    /// No further than `copied` bytes (plus one chunk) in total, until `done`; then at
    /// `after_rate` bytes per second.
    Follow {
        copied: &'a AtomicU64,
        done: &'a AtomicBool,
        after_rate: &'a AtomicU64,
    },
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
                Pace::Follow { copied, done, .. } if !done.load(Ordering::Relaxed) => {
                    if self.read + n <= copied.load(Ordering::Relaxed) + CHUNK as u64 {
                        self.since = Instant::now();
                        self.read_since = 0;
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Pace::Follow { after_rate, .. } => after_rate.load(Ordering::Relaxed),
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

/// Shared between the copy and the hasher thread.
#[derive(Default)]
pub struct Progress {
    pub copied: AtomicU64,
    pub done: AtomicBool,
    pub after_rate: AtomicU64,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let mut reader = Reader::new(Pace::Follow {
                copied: &p.copied,
                done: &p.done,
                after_rate: &p.after_rate,
            });
            reader.hash(&file).unwrap();
            reader.bytes_read()
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!hasher.is_finished(), "waits while nothing was copied");
        progress.copied.store(4 << 20, Ordering::Relaxed);
        assert_eq!(hasher.join().unwrap(), 4 << 20);
    }
}
