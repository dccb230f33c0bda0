//! A destination directory on this host: `DEST/NAME/` (manifest and files) once
//! complete, `DEST/NAME.partial/` while written or removed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use dbsnap_backend_api::{mounts, LocalHost};

use super::{Backup, Destination, Entry, Partial, ReceivedCopies, ServerFiles};
use crate::error::{fail, Class};
use crate::journal::{Journal, Resource};
use crate::manifest::{Manifest, FILES_DIR, MANIFEST_FILE};

pub struct LocalDir {
    dir: PathBuf,
}

impl LocalDir {
    pub fn new(dir: impl Into<PathBuf>) -> LocalDir {
        LocalDir { dir: dir.into() }
    }

    fn partial_dir(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{}", super::PARTIAL_SUFFIX))
    }

    /// One directory entry, by the rule of the module documentation.
    fn entry(path: PathBuf, name: String) -> Option<Entry> {
        if !path.is_dir() {
            return None;
        }
        let manifest = path
            .join(MANIFEST_FILE)
            .is_file()
            .then(|| Manifest::read(&path));
        super::classify(name, path, manifest)
    }
}

/// `dir` if it is a backup directory (it holds a manifest), in canonical form. A
/// partial copy is never one, even one that has its manifest (a run stopped between
/// writing it and publishing).
pub fn backup_dir_at(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let partial = dir
        .file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(super::PARTIAL_SUFFIX));
    if partial || !dir.join(MANIFEST_FILE).is_file() {
        return Ok(None);
    }
    let dir = dir.canonicalize()?;
    Manifest::open_backup(&dir)?;
    Ok(Some(dir))
}

/// Delete a backup directory or a partial one with the received copies its manifest
/// names. A receive interrupted before the manifest was written has its own journal
/// entry ([`Resource::Received`]), released before the partial directory.
pub async fn remove_dir(
    dir: &Path,
    received: &(impl ReceivedCopies + ?Sized),
) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if let Ok(manifest) = Manifest::read(dir) {
        for stored in &manifest.stored {
            received
                .delete_received(&manifest.snapshot.backend, &stored.id, &LocalHost)
                .await?;
        }
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// A destination on a filesystem that is being snapshotted takes its room from the
/// live server's filesystem, where the snapshot already pins every block the copy
/// duplicates: a full filesystem there crashes the server. Refused unless `--force`.
pub fn check_filesystem(
    dest: &Path,
    canonical: &Path,
    server: &ServerFiles<'_>,
) -> anyhow::Result<()> {
    let table = mounts::read_mount_table().map_err(crate::error::backend_error)?;
    let Some(dest_mount) = mounts::mount_of(&table, canonical) else {
        return Ok(());
    };
    let shared = server
        .volumes
        .iter()
        .find(|v| mounts::mount_of(&table, &v.root).is_some_and(|m| m.device == dest_mount.device));
    let Some(volume) = shared else {
        return Ok(());
    };
    let what = format!(
        "the destination {} is on the filesystem being snapshotted ({}, which holds the server's \
         files at {}): every backup there uses the live filesystem's space, and while the copy \
         runs the snapshot pins the blocks it duplicates; a full filesystem crashes the server",
        dest.display(),
        dest_mount.source,
        volume.root.display()
    );
    if !server.force {
        return Err(fail(
            Class::Destination,
            format!(
                "{what}. Choose a [backup] dest on another filesystem, or pass --force to accept it"
            ),
        ));
    }
    tracing::warn!("{what} (accepted with --force)");
    Ok(())
}

/// Make the files under `dir` durable (before a rename publishes them).
pub fn sync_tree(dir: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(dir)?;
    nix::unistd::syncfs(&file).with_context(|| format!("syncfs {}", dir.display()))?;
    Ok(())
}

#[async_trait]
impl Destination for LocalDir {
    fn location(&self) -> &Path {
        &self.dir
    }

    fn local_dir(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    async fn check(&self, server: &ServerFiles<'_>) -> anyhow::Result<()> {
        let dest = &self.dir;
        let meta = std::fs::metadata(dest).map_err(|e| {
            fail(
                Class::Destination,
                format!(
                    "the destination {} cannot be used: {e}. Create it (mkdir -p) or fix [backup] dest",
                    dest.display()
                ),
            )
        })?;
        if !meta.is_dir() {
            return Err(fail(
                Class::Destination,
                format!("the destination {} is not a directory", dest.display()),
            ));
        }
        let canonical = dest.canonicalize()?;
        if let Some(d) = server.dirs.iter().find(|d| canonical.starts_with(&d.path)) {
            return Err(fail(
                Class::Destination,
                format!(
                    "the destination {} is inside the server's {} directory {}: choose a directory outside it",
                    dest.display(),
                    d.role,
                    d.path.display()
                ),
            ));
        }
        tempfile::tempfile_in(dest).map_err(|e| {
            fail(
                Class::Destination,
                format!("the destination {} is not writable: {e}", dest.display()),
            )
        })?;
        check_filesystem(dest, &canonical, server)
    }

    async fn free_bytes(&self) -> anyhow::Result<Option<u64>> {
        let stat = nix::sys::statvfs::statvfs(&self.dir)
            .with_context(|| format!("statvfs {}", self.dir.display()))?;
        Ok(Some(
            stat.blocks_available() as u64 * stat.fragment_size() as u64,
        ))
    }

    async fn entries(&self) -> anyhow::Result<Vec<Entry>> {
        let dir = std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading {}", self.dir.display()))?;
        let mut entries: Vec<Entry> = dir
            .flatten()
            .filter_map(|e| Self::entry(e.path(), e.file_name().to_string_lossy().into_owned()))
            .collect();
        entries.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(entries)
    }

    async fn resolve(&self, name: &str) -> anyhow::Result<Option<Backup>> {
        let backup = match Self::entry(self.dir.join(name), name.to_string()) {
            Some(Entry::Backup(backup)) => backup,
            // Say what is wrong with its manifest, not that it is not there.
            Some(Entry::Invalid { path, .. }) => {
                Manifest::open_backup(&path)?;
                return Ok(None);
            }
            _ => return Ok(None),
        };
        let mut backup = *backup;
        backup.path = backup.path.canonicalize()?;
        Ok(Some(backup))
    }

    async fn create_partial(
        &self,
        at: DateTime<Utc>,
        journal: &mut Journal,
    ) -> anyhow::Result<Partial> {
        super::claim_first(at, journal, |name, journal| {
            if self.dir.join(name).exists() {
                return Ok(None);
            }
            let dir = self.partial_dir(name);
            Partial::claim(name, dir, journal, |d| std::fs::create_dir(d))
        })
    }

    /// Only a partial this state directory's journal still records is continued: an
    /// interrupted run of ours left it (the run lock rules out a live one), while a
    /// partial here that another state directory's run is filling is never touched.
    /// Of it, only the server's files are kept (a manifest or checksums written before
    /// the run was killed are not this backup's).
    async fn resume_partial(
        &self,
        partial: &Partial,
        journal: &mut Journal,
    ) -> anyhow::Result<Option<String>> {
        let left: Vec<String> = journal
            .entries()
            .iter()
            .filter_map(|e| match &e.resource {
                Resource::Partial { dir }
                    if dir.parent() == Some(self.dir.as_path()) && dir.is_dir() =>
                {
                    let name = dir.file_name()?.to_str()?;
                    Some(name.strip_suffix(super::PARTIAL_SUFFIX)?.to_string())
                }
                _ => None,
            })
            .collect();
        let (Some(newest), older) = super::partial_to_resume(left, &partial.name) else {
            return Ok(None);
        };
        for name in older {
            let dir = self.partial_dir(&name);
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            journal.forget(&Resource::Partial { dir })?;
        }
        let from = self.partial_dir(&newest);
        // rename(2) replaces an empty directory: the claimed partial stays claimed.
        std::fs::rename(&from, &partial.dir).with_context(|| {
            format!(
                "taking over {} as {}",
                from.display(),
                partial.dir.display()
            )
        })?;
        journal.forget(&Resource::Partial { dir: from })?;
        for entry in std::fs::read_dir(&partial.dir)
            .with_context(|| format!("reading {}", partial.dir.display()))?
        {
            let entry = entry?;
            if entry.file_name() == FILES_DIR {
                continue;
            }
            let path = entry.path();
            match entry.file_type()?.is_dir() {
                true => std::fs::remove_dir_all(&path),
                false => std::fs::remove_file(&path),
            }
            .with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(Some(newest))
    }

    async fn publish(
        &self,
        partial: Partial,
        mut manifest: Manifest,
        journal: &mut Journal,
    ) -> anyhow::Result<Backup> {
        let path = self.dir.join(&partial.name);
        manifest.path = path.clone();
        manifest.write(&partial.dir)?;
        sync_tree(&partial.dir)?;
        std::fs::rename(&partial.dir, &path)
            .with_context(|| format!("renaming {} to {}", partial.dir.display(), path.display()))?;
        journal.forget_published(&partial.dir)?;
        Ok(Backup {
            name: partial.name,
            path,
            manifest,
        })
    }

    async fn remove(
        &self,
        backup: &Backup,
        journal: &mut Journal,
        received: &dyn ReceivedCopies,
    ) -> anyhow::Result<()> {
        let partial = self.partial_dir(&backup.name);
        let resource = Resource::Partial {
            dir: partial.clone(),
        };
        journal.record(&backup.name, resource.clone())?;
        if backup.path.exists() {
            // From this instant it is no longer a backup.
            std::fs::rename(&backup.path, &partial).with_context(|| {
                format!(
                    "renaming {} to {}",
                    backup.path.display(),
                    partial.display()
                )
            })?;
        }
        remove_dir(&partial, received).await?;
        journal.forget(&resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_directory_passes_the_destination_conformance_checks() {
        let dest = tempfile::tempdir().unwrap();
        let local = LocalDir::new(dest.path());
        super::super::conformance::check(&local).await;
    }

    #[tokio::test]
    async fn a_name_whose_partial_another_run_holds_is_skipped_and_left_alone() {
        let dest = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let lock = crate::journal::RunLock::acquire(state.path()).unwrap();
        let mut journal = Journal::open(state.path(), &lock).unwrap();
        let theirs = dest.path().join("20261125T214500Z.partial");
        std::fs::create_dir(&theirs).unwrap();
        let at = "2026-11-25T21:45:00Z".parse().unwrap();
        let local = LocalDir::new(dest.path());
        let ours = local.create_partial(at, &mut journal).await.unwrap();
        assert_eq!(ours.name, "20261125T214500Z.1");
        let journaled: Vec<_> = journal.entries().iter().map(|e| &e.resource).collect();
        assert_eq!(journaled, vec![&Resource::Partial { dir: ours.dir }]);
        assert!(theirs.is_dir());
    }

    #[tokio::test]
    async fn the_newest_partial_a_killed_run_left_is_taken_over_with_only_its_files() {
        let dest = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let lock = crate::journal::RunLock::acquire(state.path()).unwrap();
        let mut journal = Journal::open(state.path(), &lock).unwrap();
        let local = LocalDir::new(dest.path());
        // Two killed runs of this state directory, and another's partial being filled.
        let mut left = Vec::new();
        for name in ["20261124T000000Z", "20261125T000000Z"] {
            let dir = local.partial_dir(name);
            journal
                .record(name, Resource::Partial { dir: dir.clone() })
                .unwrap();
            std::fs::create_dir_all(dir.join("files/var/lib/mysql")).unwrap();
            std::fs::write(dir.join("files/var/lib/mysql/ibdata1"), name).unwrap();
            std::fs::write(dir.join(MANIFEST_FILE), "written before the kill").unwrap();
            left.push(dir);
        }
        let theirs = local.partial_dir("20261125T120000Z");
        std::fs::create_dir(&theirs).unwrap();
        let at = "2026-11-26T00:00:00Z".parse().unwrap();
        let ours = local.create_partial(at, &mut journal).await.unwrap();

        let resumed = local.resume_partial(&ours, &mut journal).await.unwrap();
        assert_eq!(resumed.as_deref(), Some("20261125T000000Z"));
        assert_eq!(
            std::fs::read_to_string(ours.dir.join("files/var/lib/mysql/ibdata1")).unwrap(),
            "20261125T000000Z"
        );
        assert!(!ours.dir.join(MANIFEST_FILE).exists());
        assert!(!left[0].exists() && !left[1].exists());
        assert!(
            theirs.is_dir(),
            "a partial the journal does not record is not ours"
        );
        let journaled: Vec<_> = journal.entries().iter().map(|e| &e.resource).collect();
        assert_eq!(
            journaled,
            vec![&Resource::Partial {
                dir: ours.dir.clone()
            }]
        );
        assert_eq!(
            local.resume_partial(&ours, &mut journal).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn only_a_directory_whose_manifest_names_it_is_a_backup() {
        let dest = tempfile::tempdir().unwrap();
        std::fs::create_dir(dest.path().join("lost+found")).unwrap();
        std::fs::write(dest.path().join("notes.txt"), "x").unwrap();
        let other = dest.path().join("copied");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join(MANIFEST_FILE), "not toml [").unwrap();
        let renamed = dest.path().join("renamed");
        std::fs::create_dir(&renamed).unwrap();
        let manifest = crate::manifest::tests::sample();
        manifest.write(&renamed).unwrap();
        let entries = LocalDir::new(dest.path()).entries().await.unwrap();
        assert_eq!(
            entries,
            vec![
                Entry::Invalid {
                    name: "copied".into(),
                    path: other
                },
                Entry::Renamed {
                    name: "renamed".into(),
                    path: renamed,
                    manifest: Box::new(manifest)
                }
            ]
        );
    }
}
