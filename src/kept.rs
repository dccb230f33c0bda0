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

const DIR: &str = "snapshots";

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

fn record_path(state_dir: &Path, name: &SnapshotName) -> PathBuf {
    state_dir.join(DIR).join(format!("{name}.toml"))
}

/// Whether `name` is a kept snapshot.
pub fn is_kept(state_dir: &Path, name: &SnapshotName) -> bool {
    record_path(state_dir, name).exists()
}

impl KeptSnapshot {
    /// Write the record atomically (write, fsync, rename).
    pub fn write(&self, state_dir: &Path) -> anyhow::Result<()> {
        let path = record_path(state_dir, &self.name);
        let dir = state_dir.join(DIR);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, toml::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    }

    pub fn read(state_dir: &Path, name: &str) -> anyhow::Result<KeptSnapshot> {
        let name = SnapshotName::new(name).map_err(|e| fail(Class::Config, e.to_string()))?;
        let path = record_path(state_dir, &name);
        let text = std::fs::read_to_string(&path).map_err(|_| {
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

    /// Every kept snapshot, oldest first. Unreadable records are reported, not skipped
    /// silently: they stand for snapshots that still pin disk space.
    pub fn list(state_dir: &Path) -> anyhow::Result<Vec<KeptSnapshot>> {
        let dir = state_dir.join(DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", dir.display())),
        };
        let mut all = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().map_or(true, |e| e != "toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let record: KeptSnapshot = toml::from_str(&text).with_context(|| {
                format!(
                    "parsing {}: fix or remove it (the snapshot it names is still on disk)",
                    path.display()
                )
            })?;
            all.push(record);
        }
        all.sort_by_key(|k| k.created_at);
        Ok(all)
    }

    /// Forget the record (after the snapshot was released).
    pub fn remove(&self, state_dir: &Path) -> anyhow::Result<()> {
        let path = record_path(state_dir, &self.name);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
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
