//! Manifests read from the repository, kept under `state_dir/restic-manifests/ID.toml`
//! by the full id of their snapshot, so that `dbsnap list` (and every command that
//! looks for a base or a backup) runs `restic dump` once per manifest, not once per
//! manifest each time.
//!
//! Always valid: a restic snapshot id is the hash of the snapshot's file as stored, and
//! that file names the hash of the snapshot's tree: an id never stands for other
//! contents, in any repository. A verdict recorded later is a new manifest snapshot,
//! with a new id. A manifest that is read wrongly is simply read
//! again (the cache is only a shortcut: failing to write it is no error).

use std::path::{Path, PathBuf};

pub struct ManifestCache {
    dir: PathBuf,
}

impl ManifestCache {
    pub fn new(state_dir: &Path) -> ManifestCache {
        ManifestCache {
            dir: state_dir.join("restic-manifests"),
        }
    }

    /// The file for snapshot `id`; `None` for anything but a full hex id (never a path
    /// outside the cache, whatever a repository answers).
    fn file(&self, id: &str) -> Option<PathBuf> {
        let full = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
        full.then(|| self.dir.join(format!("{id}.toml")))
    }

    pub fn get(&self, id: &str) -> Option<String> {
        std::fs::read_to_string(self.file(id)?).ok()
    }

    /// Keep `text` as the manifest of snapshot `id` (written whole, then renamed: a
    /// concurrent `list` never reads half of it).
    pub fn put(&self, id: &str, text: &str) {
        let Some(file) = self.file(id) else {
            return;
        };
        let written = std::fs::create_dir_all(&self.dir).and_then(|()| {
            let mut temp = tempfile::NamedTempFile::new_in(&self.dir)?;
            std::io::Write::write_all(&mut temp, text.as_bytes())?;
            temp.persist(&file).map(drop).map_err(|e| e.error)
        });
        if let Err(e) = written {
            tracing::debug!("not caching the manifest of snapshot {id}: {e}");
        }
    }

    /// Drop the manifests of forgotten snapshots.
    pub fn forget<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        for file in ids.into_iter().filter_map(|id| self.file(id)) {
            let _ = std::fs::remove_file(file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_kept_by_full_snapshot_id_only() {
        let state = tempfile::tempdir().unwrap();
        let cache = ManifestCache::new(state.path());
        let id = "a".repeat(64);
        assert_eq!(cache.get(&id), None);
        cache.put(&id, "name = \"x\"\n");
        assert_eq!(cache.get(&id).as_deref(), Some("name = \"x\"\n"));
        for bad in ["../../etc/passwd", "abcd1234", &"g".repeat(64)] {
            cache.put(bad, "x");
            assert_eq!(cache.get(bad), None, "{bad}");
        }
        cache.forget([id.as_str()]);
        assert_eq!(cache.get(&id), None);
        let left: Vec<_> = std::fs::read_dir(state.path().join("restic-manifests"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
