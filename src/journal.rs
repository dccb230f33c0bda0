//! The state journal and the run lock.
//!
//! Every resource a run creates (snapshot, mount, partial directory) is written here
//! *before* it is created and removed after it is released. Whatever stops a run —
//! an error, SIGINT, kill -9, power loss — the next run or `dbsnap cleanup` finds the
//! leftovers here and releases them. The file is rewritten atomically (write, fsync,
//! rename) so a crash never leaves it half-written.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use dbsnap_backend_api::SnapshotSet;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{fail, Class};

const JOURNAL_FILE: &str = "journal.json";
const LOCK_FILE: &str = "run.lock";

/// A resource a run may leave behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resource {
    /// Snapshots (planned or created) of one lock window.
    Snapshot { set: SnapshotSet },
    /// The snapshots made readable using `workdir`.
    Mount { set: SnapshotSet, workdir: PathBuf },
    /// A backup directory being filled (`DEST/NAME.partial`).
    Partial { dir: PathBuf },
    /// A copy being received by a native stream for the backup being written in
    /// `partial` ([`dbsnap_backend_api::Received::id`]); it may live outside `partial`
    /// (ZFS). Released only while `partial` exists: once the backup is published, the
    /// copy is the backup's.
    Received {
        backend: String,
        id: String,
        partial: PathBuf,
    },
    /// A verification's scratch copy of a backup (`.dbsnap-verify-NAME`) and the run
    /// directory (socket, pid file) of the throwaway server started on it.
    Scratch { dir: PathBuf, run_dir: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The run that created the resource.
    pub run: String,
    pub resource: Resource,
}

/// Exclusive use of a state directory: one run at a time.
pub struct RunLock {
    _lock: Flock<File>,
}

impl RunLock {
    /// Take the run lock or fail at once, naming the process that holds it.
    pub fn acquire(state_dir: &Path) -> anyhow::Result<RunLock> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            fail(
                Class::Config,
                format!("cannot create the state directory {}: {e}. Set state_dir to a writable directory", state_dir.display()),
            )
        })?;
        let path = state_dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(fail(
                    Class::Busy,
                    format!(
                        "another dbsnap run is active (process {}; lock file {}). Wait for it to \
                         finish; two runs against one server must never interleave",
                        holder.trim(),
                        path.display()
                    ),
                ));
            }
            Err((_, e)) => return Err(anyhow::anyhow!("locking {}: {e}", path.display())),
        };
        lock.set_len(0)?;
        write!(&*lock, "{}", std::process::id())?;
        Ok(RunLock { _lock: lock })
    }
}

/// The journal of one state directory. Only the holder of the [`RunLock`] writes it.
pub struct Journal {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl Journal {
    pub fn open(state_dir: &Path, _lock: &RunLock) -> anyhow::Result<Journal> {
        let path = state_dir.join(JOURNAL_FILE);
        let entries = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                fail(
                    Class::Internal,
                    format!(
                        "the state journal {} is unreadable ({e}); inspect it, release what it lists \
                         by hand, then delete it",
                        path.display()
                    ),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        };
        Ok(Journal { path, entries })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Record a resource before creating it.
    pub fn record(&mut self, run: &str, resource: Resource) -> anyhow::Result<()> {
        self.entries.push(Entry {
            run: run.to_string(),
            resource,
        });
        self.save()
    }

    /// Forget a resource after releasing it.
    pub fn forget(&mut self, resource: &Resource) -> anyhow::Result<()> {
        self.entries.retain(|e| &e.resource != resource);
        self.save()
    }

    /// Forget a partial backup that is published now, with the copies received into
    /// it: they are the backup's, no longer leftovers.
    pub fn forget_published(&mut self, partial: &Path) -> anyhow::Result<()> {
        self.entries.retain(|e| match &e.resource {
            Resource::Partial { dir } => dir != partial,
            Resource::Received { partial: p, .. } => p != partial,
            Resource::Snapshot { .. } | Resource::Mount { .. } | Resource::Scratch { .. } => true,
        });
        self.save()
    }

    fn save(&self) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.entries)?;
        let mut file = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbsnap_backend_api::SnapshotName;

    fn set(name: &str) -> SnapshotSet {
        SnapshotSet {
            backend: "btrfs".into(),
            name: SnapshotName::new(name).unwrap(),
            snapshots: vec![],
        }
    }

    #[test]
    fn survives_reopen_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        let mut j = Journal::open(dir.path(), &lock).unwrap();
        j.record(
            "r1",
            Resource::Snapshot {
                set: set("dbsnap-a"),
            },
        )
        .unwrap();
        j.record(
            "r1",
            Resource::Partial {
                dir: "/b/x.partial".into(),
            },
        )
        .unwrap();
        let j2 = Journal::open(dir.path(), &lock).unwrap();
        assert_eq!(j2.entries().len(), 2);
        j.forget(&Resource::Partial {
            dir: "/b/x.partial".into(),
        })
        .unwrap();
        let j3 = Journal::open(dir.path(), &lock).unwrap();
        assert_eq!(j3.entries().len(), 1);
    }

    #[test]
    fn second_run_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RunLock::acquire(dir.path()).unwrap();
        let err = RunLock::acquire(dir.path()).err().unwrap();
        assert_eq!(crate::error::class_of(&err), Class::Busy);
        assert!(err.to_string().contains(&std::process::id().to_string()));
    }
}
