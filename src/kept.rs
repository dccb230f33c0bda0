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
