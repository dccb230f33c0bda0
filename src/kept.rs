//! Kept snapshots (`dbsnap snapshot create`): safety snapshots before an upgrade, or
//! for an outside backup tool. Each has a record in `state_dir/snapshots/NAME.toml`,
//! beside the journal. The record is what makes a snapshot *kept*: `dbsnap cleanup`
//! releases journaled snapshots, never recorded ones, and `prune` and `snapshot
//! release` remove only snapshots that have a record.

use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use dbsnap_backend_api::{SnapshotName, SnapshotSet};
use serde::{Deserialize, Serialize};

use crate::db::{Coordinates, DbPath, LockRecord};
use crate::error::{fail, Class};
use crate::manifest::ServerRecord;
use crate::records::Records;

/// The record of one kept snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptSnapshot {
    pub name: SnapshotName,
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
    pub set: SnapshotSet,
    pub server: ServerRecord,
    pub lock: LockRecord,
    pub coordinates: Coordinates,
    /// The server's directories; a rollback refuses while a server runs in any of them.
    pub paths: Vec<DbPath>,
    /// Hook mode: where the snapshot is mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<KeptMount>,
    /// When `cleanup` (or the next run) may release it; never, if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

const RECORDS: Records = Records("snapshots");

/// Whether `name` is a kept snapshot.
pub fn is_kept(state_dir: &Path, name: &SnapshotName) -> bool {
    RECORDS.exists(state_dir, name)
}

impl KeptSnapshot {
    pub fn write(&self, state_dir: &Path) -> anyhow::Result<()> {
        RECORDS.write(state_dir, &self.name, self)
    }

    pub fn read(state_dir: &Path, name: &str) -> anyhow::Result<KeptSnapshot> {
        let name = SnapshotName::new(name).map_err(|e| fail(Class::Config, e.to_string()))?;
        let path = RECORDS.path(state_dir, &name);
        let text = crate::journal::read_state_file(&path).map_err(|_| {
            fail(
                Class::Config,
                format!(
                    "there is no kept snapshot {name} (no {}); see `dbsnap snapshot list`",
                    path.display()
                ),
            )
        })?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Every kept snapshot, oldest first.
    pub fn list(state_dir: &Path) -> anyhow::Result<Vec<KeptSnapshot>> {
        let mut all: Vec<KeptSnapshot> = RECORDS.list(state_dir)?;
        all.sort_by_key(|k| k.created_at);
        Ok(all)
    }

    /// Forget the record (after the snapshot was released).
    pub fn remove(&self, state_dir: &Path) -> anyhow::Result<()> {
        RECORDS.remove(state_dir, &self.name)
    }
}

/// Hook mode (`snapshot create --mount DIR`): where a kept snapshot is readable, so
/// that `release` can undo it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptMount {
    /// The directory the user named; the server's files appear under their absolute paths.
    pub dir: PathBuf,
    /// Where the backend mounted the snapshots (`state_dir/runs/NAME`).
    pub workdir: PathBuf,
    /// Read-only bind mounts, parents before the volumes nested in them.
    pub binds: Vec<Bind>,
}

/// One server directory's frozen copy, bound read-only at `at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bind {
    /// The live directory.
    pub path: PathBuf,
    /// Its frozen copy inside `workdir`.
    pub from: PathBuf,
    /// `dir` + `path`.
    pub at: PathBuf,
}

impl KeptMount {
    /// Bind each frozen directory read-only. A read-only bind takes two calls: the
    /// kernel ignores MS_RDONLY on the first, so the bind is remounted read-only.
    pub fn bind_all(&self) -> anyhow::Result<()> {
        use nix::mount::{mount, MsFlags};
        for b in &self.binds {
            std::fs::create_dir_all(&b.at)
                .with_context(|| format!("creating {}", b.at.display()))?;
            mount(
                Some(&b.from),
                &b.at,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting {} at {}", b.from.display(), b.at.display()))?;
            let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
            mount(None::<&str>, &b.at, None::<&str>, ro, None::<&str>)
                .with_context(|| format!("making {} read-only", b.at.display()))?;
        }
        Ok(())
    }

    /// Undo `bind_all`, also a partial one, and remove the directories it created so
    /// that `dir` is empty again for the next run. Idempotent.
    pub fn unbind_all(&self) -> anyhow::Result<()> {
        use nix::errno::Errno;
        for b in self.binds.iter().rev() {
            match nix::mount::umount(&b.at) {
                // EINVAL: not a mount point (never bound, or already unbound).
                Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "unmounting {}: {e}. Stop whatever still reads it (e.g. the backup tool), then run `dbsnap snapshot release {}` again",
                        b.at.display(),
                        self.dir.display()
                    ))
                }
            }
        }
        // Only empty directories go: remove_dir refuses anything else.
        for b in &self.binds {
            let mut d = b.at.as_path();
            while d != self.dir && d.starts_with(&self.dir) {
                if std::fs::remove_dir(d).is_err() {
                    break;
                }
                d = d.parent().unwrap_or(&self.dir);
            }
        }
        Ok(())
    }
}
