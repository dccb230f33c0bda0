//! Records that keep a snapshot alive between runs, one TOML file per snapshot name in a
//! directory of the state dir: kept snapshots (`snapshots/`, see `kept`) and the bases
//! of native streams (`parents/`, see `transfer::native`). Neither `cleanup` nor the
//! journal touches them; a record goes only after its snapshot was released.

use std::path::{Path, PathBuf};

use anyhow::Context;
use dbsnap_backend_api::SnapshotName;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::journal::{open_state_file, read_state_file, OpenFor};

/// One kind of record: the directory below the state dir that holds them.
pub struct Records(pub &'static str);

impl Records {
    pub fn path(&self, state_dir: &Path, name: &SnapshotName) -> PathBuf {
        state_dir.join(self.0).join(format!("{name}.toml"))
    }

    pub fn exists(&self, state_dir: &Path, name: &SnapshotName) -> bool {
        self.path(state_dir, name).exists()
    }

    /// Write a record atomically (write, fsync, rename, fsync the directory).
    pub fn write(
        &self,
        state_dir: &Path,
        name: &SnapshotName,
        record: &impl Serialize,
    ) -> anyhow::Result<()> {
        let dir = state_dir.join(self.0);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = self.path(state_dir, name);
        let tmp = path.with_extension("toml.tmp");
        let mut file = open_state_file(&tmp, OpenFor::Replace)?;
        std::io::Write::write_all(&mut file, toml::to_string_pretty(record)?.as_bytes())
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    }

    /// Every record, in no particular order. An unreadable one is an error, not skipped:
    /// it stands for a snapshot that still pins disk space.
    pub fn list<T: DeserializeOwned>(&self, state_dir: &Path) -> anyhow::Result<Vec<T>> {
        let dir = state_dir.join(self.0);
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
            let text = read_state_file(&path)?;
            all.push(toml::from_str(&text).with_context(|| {
                format!(
                    "parsing {}: fix or remove it (the snapshot it names is still on disk)",
                    path.display()
                )
            })?);
        }
        Ok(all)
    }

    pub fn remove(&self, state_dir: &Path, name: &SnapshotName) -> anyhow::Result<()> {
        let path = self.path(state_dir, name);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }
}
