//! The btrfs backend's spread release: a deleted snapshot's exclusive extents are freed
//! by btrfs's cleaner in the seconds after `btrfs subvolume delete`, in a few large
//! transactions that stall the origin's writers (measured: worst commit 591 ms, the
//! slowest second at 23 % of the baseline's commits; bench/results/release-2026-12-01.md).
//! Truncating the snapshot's large files from the end, a bounded chunk per step, frees
//! the same extents in many small transactions instead; the delete then frees little.
//!
//! The bar: only files holding more than [`LARGE_FILE`] are truncated (the delete frees
//! the many small ones cheaply), and only when those hold more than [`WORTH_SPREADING`]
//! together (below that the cleaner's burst is short).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use dbsnap_backend_api::command::Cmd;
use dbsnap_backend_api::{BackendError, ReleaseSteps, Result};

/// Files holding more than this are truncated in steps.
pub const LARGE_FILE: u64 = 1 << 20;
/// A snapshot whose large files hold more than this together is released in steps.
pub const WORTH_SPREADING: u64 = 256 << 20;

/// A snapshot's large regular files, truncated from the end one budget at a time, the
/// largest file first, one file at a time.
#[derive(Debug)]
pub struct Truncation {
    /// Each file and the bytes it holds, smallest first: the next one to cut is last.
    files: Vec<(PathBuf, u64)>,
    total: u64,
}

/// The bytes a file holds on disk (a sparse file holds less than its length).
fn held(meta: &std::fs::Metadata) -> u64 {
    meta.blocks() * 512
}

impl Truncation {
    /// The large files in the trees under `roots`, not following symbolic links and not
    /// entering another filesystem or subvolume (each has its own device number).
    pub fn of(roots: &[PathBuf]) -> io::Result<Truncation> {
        let mut files = Vec::new();
        for root in roots {
            let dev = std::fs::symlink_metadata(root)?.dev();
            collect(root, dev, &mut files)?;
        }
        files.sort_by_key(|(_, bytes)| *bytes);
        let total = files.iter().map(|(_, bytes)| bytes).sum();
        Ok(Truncation { files, total })
    }

    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    pub fn worth_spreading(&self) -> bool {
        self.total > WORTH_SPREADING
    }

    /// Cut up to `budget` bytes (at least one) off the end of the largest file left.
    /// The bytes freed, or `None` when every file is empty.
    pub fn step(&mut self, budget: u64) -> io::Result<Option<u64>> {
        let Some((path, _)) = self.files.last() else {
            return Ok(None);
        };
        // Never a link out of the snapshot.
        let opened = OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path);
        let file = match opened {
            Ok(file) => file,
            // Gone (or replaced by a link): nothing of it for the steps to free.
            Err(_) => {
                self.files.pop();
                return Ok(Some(0));
            }
        };
        let before = file.metadata()?;
        let len = before.len().saturating_sub(budget.max(1));
        file.set_len(len)?;
        let after = file.metadata()?;
        if len == 0 {
            self.files.pop();
        }
        Ok(Some(held(&before).saturating_sub(held(&after))))
    }
}

fn collect(dir: &Path, dev: u64, files: &mut Vec<(PathBuf, u64)>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            collect(&entry.path(), dev, files)?;
        } else if meta.is_file() && held(&meta) > LARGE_FILE {
            files.push((entry.path(), held(&meta)));
        }
    }
    Ok(())
}

/// The steps of one snapshot set: its snapshots made writable by the first, then
/// truncated.
pub struct Steps {
    /// Still read-only, to be made writable by the first step.
    read_only: Vec<PathBuf>,
    truncation: Option<Truncation>,
    total: u64,
}

impl Steps {
    pub fn new(snapshots: Vec<PathBuf>, truncation: Truncation) -> Steps {
        Steps {
            read_only: snapshots,
            total: truncation.total_bytes(),
            truncation: Some(truncation),
        }
    }

    /// Make each snapshot writable (`-f`: also one received with `btrfs receive`, which
    /// has a received UUID and is refused without it).
    async fn make_writable(&mut self) -> Result<()> {
        while let Some(path) = self.read_only.pop() {
            Cmd::new("btrfs")
                .args(["property", "set", "-f", "-ts"])
                .arg(&path)
                .args(["ro", "false"])
                .run()
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl ReleaseSteps for Steps {
    fn total_bytes(&self) -> u64 {
        self.total
    }

    async fn step(&mut self, budget: u64) -> Result<Option<u64>> {
        self.make_writable().await?;
        let Some(mut truncation) = self.truncation.take() else {
            return Ok(None);
        };
        let (truncation, stepped) = tokio::task::spawn_blocking(move || {
            let stepped = truncation.step(budget);
            (truncation, stepped)
        })
        .await
        .map_err(|e| BackendError::Invalid(format!("a release step panicked: {e}")))?;
        self.truncation = Some(truncation);
        stepped.map_err(|e| BackendError::io("truncating a snapshot's file".to_string(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn file(dir: &Path, name: &str, bytes: u64) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![7u8; bytes as usize]).unwrap();
        path
    }

    fn len(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    #[test]
    fn steps_cut_the_largest_file_from_the_end_one_file_at_a_time_and_skip_small_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("db")).unwrap();
        let big = file(&dir.path().join("db"), "big.ibd", 5 * MB);
        let medium = file(dir.path(), "ib_logfile0", 3 * MB);
        let small = file(dir.path(), "t.frm", MB / 2);
        let mut steps = Truncation::of(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(steps.total_bytes(), 8 * MB, "the small file is not counted");

        let freed = steps.step(2 * MB).unwrap().unwrap();
        assert_eq!((len(&big), len(&medium)), (3 * MB, 3 * MB), "largest first");
        assert_eq!(freed, 2 * MB);
        steps.step(2 * MB).unwrap();
        steps.step(2 * MB).unwrap();
        assert_eq!((len(&big), len(&medium)), (0, 3 * MB), "one file at a time");
        let mut freed = 0;
        while let Some(bytes) = steps.step(2 * MB).unwrap() {
            freed += bytes;
        }
        assert_eq!((len(&medium), freed), (0, 3 * MB));
        assert_eq!(len(&small), MB / 2, "left for the delete");
        assert_eq!(steps.step(2 * MB).unwrap(), None, "done stays done");
    }

    #[test]
    fn a_zero_budget_still_makes_progress() {
        let dir = tempfile::tempdir().unwrap();
        let big = file(dir.path(), "big", 2 * MB);
        let mut steps = Truncation::of(&[dir.path().to_path_buf()]).unwrap();
        steps.step(0).unwrap();
        assert_eq!(len(&big), 2 * MB - 1);
    }

    #[test]
    fn symbolic_links_are_never_followed_out_of_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = file(outside.path(), "victim", 2 * MB);
        std::os::unix::fs::symlink(&victim, dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("dirlink")).unwrap();
        let mut steps = Truncation::of(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(steps.total_bytes(), 0);
        assert_eq!(steps.step(MB).unwrap(), None);
        assert_eq!(len(&victim), 2 * MB);
    }

    #[test]
    fn only_large_files_holding_more_than_the_bar_together_are_worth_spreading() {
        let below = Truncation {
            files: vec![("a".into(), WORTH_SPREADING)],
            total: WORTH_SPREADING,
        };
        assert!(!below.worth_spreading());
        let above = Truncation {
            files: vec![("a".into(), WORTH_SPREADING + 1)],
            total: WORTH_SPREADING + 1,
        };
        assert!(above.worth_spreading());
    }
}
