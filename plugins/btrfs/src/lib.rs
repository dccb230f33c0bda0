//! btrfs backend: read-only snapshots of the subvolumes that hold the database.
//!
//! A read-only snapshot is already a readable directory, so `mount` mounts nothing.
//! Snapshots of several subvolumes are not atomic; dbsnap's lock covers all of them.
//! Snapshots live in a directory on the same filesystem (default
//! `<mount point>/.dbsnap-snapshots`), named `<snapshot name>.<volume index>`.
//! A large snapshot about to be deleted is first freed in steps (`spread_release`, see
//! `spread.rs`): btrfs frees a deleted snapshot's extents in one burst otherwise.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use dbsnap_backend_api::command::Cmd;
use dbsnap_backend_api::mounts::{mount_of, read_mount_table, MountEntry};
use dbsnap_backend_api::{
    BackendError, Health, Probe, ReadPath, Result, RollbackOutcome, SnapshotBackend, SnapshotName,
    SnapshotSet, Volume, VolumeSnapshot, SNAPSHOT_PREFIX,
};
use serde::Deserialize;

mod send;
mod spread;

/// Every btrfs subvolume's root directory has this inode number.
pub(crate) const SUBVOLUME_ROOT_INODE: u64 = 256;
const DEFAULT_SNAPSHOT_DIR: &str = ".dbsnap-snapshots";
const NAME: &str = "btrfs";

/// `[snapshot.btrfs]` in the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BtrfsConfig {
    /// Where snapshots are created; must be on the same btrfs filesystem as the data.
    /// Default: `.dbsnap-snapshots` at the filesystem's mount point.
    pub snapshot_dir: Option<PathBuf>,
}

pub struct Btrfs {
    config: BtrfsConfig,
}

impl Btrfs {
    pub fn new(config: BtrfsConfig) -> Self {
        Btrfs { config }
    }

    /// The snapshot directory for a volume: configured, or at its filesystem's mount point.
    fn snapshot_dir(&self, mount: &MountEntry) -> PathBuf {
        match &self.config.snapshot_dir {
            Some(dir) => dir.clone(),
            None => mount.mount_point.join(DEFAULT_SNAPSHOT_DIR),
        }
    }

    fn unsupported(
        path: &Path,
        reason: impl Into<String>,
        hint: impl Into<String>,
    ) -> BackendError {
        BackendError::unsupported(NAME, path, reason, hint)
    }

    fn probe_path(&self, path: &Path, table: &[MountEntry]) -> Result<(Volume, PathBuf)> {
        let meta = std::fs::metadata(path)
            .map_err(|e| BackendError::io(format!("reading {}", path.display()), e))?;
        let mount = mount_of(table, path).ok_or_else(|| {
            Self::unsupported(path, "no mount holds it", "check that the path exists")
        })?;
        if mount.fstype != "btrfs" {
            return Err(Self::unsupported(
                path,
                format!(
                    "it is on a {} filesystem mounted at {}",
                    mount.fstype,
                    mount.mount_point.display()
                ),
                "Move the database files onto a btrfs subvolume, or set [snapshot] backend to the \
                 backend for this filesystem (lvm, zfs)",
            ));
        }
        let root = subvolume_root(path, meta.dev())?;
        let volume = Volume {
            id: root.display().to_string(),
            root: root.clone(),
            fstype: NAME.to_string(),
        };
        let dir = self.snapshot_dir(&mount);
        self.check_snapshot_dir(&dir, &mount, path, table)?;
        Ok((volume, dir))
    }

    fn check_snapshot_dir(
        &self,
        dir: &Path,
        data_mount: &MountEntry,
        path: &Path,
        table: &[MountEntry],
    ) -> Result<()> {
        // The directory may not exist yet; its nearest existing ancestor decides the filesystem.
        let existing = dir
            .ancestors()
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"));
        let existing = existing
            .canonicalize()
            .map_err(|e| BackendError::io(format!("resolving {}", existing.display()), e))?;
        let snap_mount = mount_of(table, &existing);
        if snap_mount.map(|m| m.device) != Some(data_mount.device.clone()) {
            return Err(Self::unsupported(
                path,
                format!("the snapshot directory {} is not on the same btrfs filesystem", dir.display()),
                "Set [snapshot.btrfs] snapshot_dir to a directory on the filesystem that holds the data",
            ));
        }
        Ok(())
    }
}

/// The root of the subvolume holding `path`: the topmost ancestor on the same device
/// (each btrfs subvolume has its own device number).
fn subvolume_root(path: &Path, dev: u64) -> Result<PathBuf> {
    let mut root = path.to_path_buf();
    for ancestor in path.ancestors().skip(1) {
        match std::fs::metadata(ancestor) {
            Ok(m) if m.dev() == dev => root = ancestor.to_path_buf(),
            _ => break,
        }
    }
    let ino = std::fs::metadata(&root)
        .map_err(|e| BackendError::io(format!("reading {}", root.display()), e))?
        .ino();
    if ino != SUBVOLUME_ROOT_INODE {
        return Err(Btrfs::unsupported(
            path,
            format!(
                "could not find the subvolume root above it ({} has inode {ino})",
                root.display()
            ),
            "Make the database directory a btrfs subvolume (`btrfs subvolume create`)",
        ));
    }
    Ok(root)
}

/// The subvolume roots below `dir` (not `dir` itself), shallowest first within each
/// branch. Only directories are examined; symbolic links are not followed.
fn nested_subvolumes(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let dev = std::fs::symlink_metadata(dir)?.dev();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.ino() == SUBVOLUME_ROOT_INODE && meta.dev() != dev {
            found.push(entry.path());
        }
        nested_subvolumes(&entry.path(), found)?;
    }
    Ok(())
}

fn snapshot_path(dir: &Path, name: &SnapshotName, index: usize) -> PathBuf {
    dir.join(format!("{name}.{index}"))
}

/// A snapshot of `set` as a path, if it is one dbsnap named (a subvolume called
/// `<set name>.<n>`): only those are ever changed or deleted.
fn ours<'a>(set: &SnapshotSet, snap: &'a VolumeSnapshot) -> Result<&'a Path> {
    let path = Path::new(&snap.id);
    let named = path
        .file_name()
        .and_then(|f| f.to_str())
        .is_some_and(|f| f.starts_with(&format!("{}.", set.name)));
    if !named {
        return Err(BackendError::Invalid(format!(
            "refusing to delete {}: it is not a dbsnap snapshot of {}",
            path.display(),
            set.name
        )));
    }
    Ok(path)
}

/// Whether `path` is a btrfs subvolume (or snapshot) root.
fn is_subvolume(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.ino() == SUBVOLUME_ROOT_INODE)
}

#[async_trait]
impl SnapshotBackend for Btrfs {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn probe(&self, paths: &[PathBuf]) -> Result<Probe> {
        let table = read_mount_table()?;
        let mut volumes: Vec<Volume> = Vec::new();
        // A snapshot of a subvolume holds an empty directory where a subvolume nested in
        // it was: every nested subvolume is a volume of its own.
        let mut nested = Vec::new();
        for path in paths {
            nested_subvolumes(path, &mut nested)
                .map_err(|e| BackendError::io(format!("reading {}", path.display()), e))?;
        }
        for path in paths.iter().chain(&nested) {
            let (volume, _) = self.probe_path(path, &table)?;
            if !volumes.contains(&volume) {
                volumes.push(volume);
            }
        }
        // A snapshot directory inside a database path would be copied into the backup,
        // and would appear to the server as a database.
        for volume in &volumes {
            let dir = self.planned_dir(volume, &table)?;
            if let Some(inside) = paths.iter().find(|p| dir.starts_with(p)) {
                return Err(Self::unsupported(
                    inside,
                    format!("the snapshot directory {} would be inside it", dir.display()),
                    "Set [snapshot.btrfs] snapshot_dir to a directory on the same filesystem outside \
                     the database's directories",
                ));
            }
        }
        // Several subvolumes are snapshotted one by one.
        Ok(Probe {
            atomic: volumes.len() <= 1,
            volumes,
        })
    }

    async fn plan(&self, volumes: &[Volume], name: &SnapshotName) -> Result<SnapshotSet> {
        let table = read_mount_table()?;
        let mut snapshots = Vec::new();
        for (index, volume) in volumes.iter().enumerate() {
            let dir = self.planned_dir(volume, &table)?;
            snapshots.push(VolumeSnapshot {
                volume: volume.clone(),
                id: snapshot_path(&dir, name, index).display().to_string(),
            });
        }
        Ok(SnapshotSet {
            backend: NAME.to_string(),
            name: name.clone(),
            snapshots,
        })
    }

    async fn snapshot(&self, set: &SnapshotSet) -> Result<()> {
        for snap in &set.snapshots {
            let target = Path::new(&snap.id);
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| BackendError::io(format!("creating {}", dir.display()), e))?;
            }
            Cmd::new("btrfs")
                .args(["subvolume", "snapshot", "-r"])
                .arg(&snap.volume.root)
                .arg(target)
                .run()
                .await?;
        }
        Ok(())
    }

    async fn mount(&self, set: &SnapshotSet, _workdir: &Path) -> Result<Vec<ReadPath>> {
        Ok(set
            .snapshots
            .iter()
            .map(|s| ReadPath {
                origin_root: s.volume.root.clone(),
                frozen_root: PathBuf::from(&s.id),
            })
            .collect())
    }

    async fn unmount(&self, _set: &SnapshotSet, _workdir: &Path) -> Result<()> {
        Ok(())
    }

    async fn release(&self, set: &SnapshotSet) -> Result<()> {
        for snap in &set.snapshots {
            let path = ours(set, snap)?;
            if !is_subvolume(path) {
                continue;
            }
            Cmd::new("btrfs")
                .args(["subvolume", "delete"])
                .arg(path)
                .run()
                .await?;
        }
        Ok(())
    }

    async fn spread_release(
        &self,
        set: &SnapshotSet,
    ) -> Result<Option<Box<dyn dbsnap_backend_api::ReleaseSteps>>> {
        let mut snapshots = Vec::new();
        for snap in &set.snapshots {
            let path = ours(set, snap)?;
            if is_subvolume(path) {
                snapshots.push(path.to_path_buf());
            }
        }
        // A datadir of many tables is many files to stat: off the async threads.
        let listed = snapshots.clone();
        let truncation = tokio::task::spawn_blocking(move || spread::Truncation::of(&listed))
            .await
            .map_err(|e| BackendError::Invalid(format!("listing a snapshot's files: {e}")))?
            .map_err(|e| BackendError::io(format!("listing the files of {}", set.name), e))?;
        if !truncation.worth_spreading() {
            return Ok(None);
        }
        Ok(Some(Box::new(spread::Steps::new(snapshots, truncation))))
    }

    async fn list(&self, volumes: &[Volume]) -> Result<Vec<SnapshotSet>> {
        let table = read_mount_table()?;
        let mut dirs: Vec<PathBuf> = Vec::new();
        for volume in volumes {
            let dir = self.planned_dir(volume, &table)?;
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        let mut sets: BTreeMap<SnapshotName, Vec<VolumeSnapshot>> = BTreeMap::new();
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let Some((name, index)) = file.rsplit_once('.') else {
                    continue;
                };
                let (Ok(name), Ok(index)) = (SnapshotName::new(name), index.parse::<usize>())
                else {
                    continue;
                };
                if !name.as_str().starts_with(SNAPSHOT_PREFIX) || !is_subvolume(&entry.path()) {
                    continue;
                }
                // The index names the volume's position in the set it was taken with.
                let volume = volumes.get(index).cloned().unwrap_or_else(|| Volume {
                    id: String::new(),
                    root: PathBuf::new(),
                    fstype: NAME.to_string(),
                });
                sets.entry(name).or_default().push(VolumeSnapshot {
                    volume,
                    id: entry.path().display().to_string(),
                });
            }
        }
        Ok(sets
            .into_iter()
            .map(|(name, snapshots)| SnapshotSet {
                backend: NAME.to_string(),
                name,
                snapshots,
            })
            .collect())
    }

    async fn health(&self, _set: &SnapshotSet) -> Result<Health> {
        // btrfs snapshots reserve nothing; free space is watched by dbsnap for every backend.
        Ok(Health::Ok)
    }

    fn native_stream(&self) -> Option<&dyn dbsnap_backend_api::NativeStream> {
        Some(self)
    }

    /// Swap each volume's subvolume for a writable snapshot of the kept one. The live
    /// subvolume is renamed aside first and deleted only once its replacement exists,
    /// so a failure at any step leaves the data where it was.
    async fn rollback(&self, set: &SnapshotSet) -> Result<RollbackOutcome> {
        let table = read_mount_table()?;
        for snap in &set.snapshots {
            let root = &snap.volume.root;
            let frozen = Path::new(&snap.id);
            if !is_subvolume(frozen) {
                return Err(BackendError::Invalid(format!(
                    "the snapshot {} of {} no longer exists; nothing was rolled back for it",
                    frozen.display(),
                    root.display()
                )));
            }
            // A mounted subvolume (or the filesystem's top level) cannot be renamed aside.
            if table.iter().any(|m| &m.mount_point == root) {
                return Err(Self::unsupported(
                    root,
                    "it is a mount point, so it cannot be swapped for the snapshot",
                    "Roll back by hand: stop the server, unmount it, and mount the snapshot \
                     (or a writable snapshot of it) in its place",
                ));
            }
            let file = root.file_name().map(|f| f.to_string_lossy().into_owned());
            let aside = root.with_file_name(format!(
                "{}.{}.rollback-old",
                file.unwrap_or_default(),
                set.name
            ));
            if aside.exists() {
                return Err(BackendError::Invalid(format!(
                    "{} exists from an earlier rollback: check it and remove it (btrfs subvolume \
                     delete) before rolling back again",
                    aside.display()
                )));
            }
            std::fs::rename(root, &aside).map_err(|e| {
                BackendError::io(
                    format!("moving {} aside to {}", root.display(), aside.display()),
                    e,
                )
            })?;
            let restored = Cmd::new("btrfs")
                .args(["subvolume", "snapshot"])
                .arg(frozen)
                .arg(root)
                .run()
                .await;
            if let Err(e) = restored {
                // Put the live data back; the volume is as it was before.
                if let Err(back) = std::fs::rename(&aside, root) {
                    return Err(BackendError::Invalid(format!(
                        "rolling back {} failed ({e}) and moving the original back failed too \
                         ({back}): the original data is at {}; rename it to {} by hand",
                        root.display(),
                        aside.display(),
                        root.display()
                    )));
                }
                return Err(e.into());
            }
            Cmd::new("btrfs")
                .args(["subvolume", "delete"])
                .arg(&aside)
                .run()
                .await
                .map_err(|e| {
                    BackendError::Invalid(format!(
                        "{} was rolled back, but its previous contents at {} could not be \
                         deleted ({e}); delete them with `btrfs subvolume delete`",
                        root.display(),
                        aside.display()
                    ))
                })?;
        }
        Ok(RollbackOutcome::complete_and_kept())
    }
}

impl Btrfs {
    fn planned_dir(&self, volume: &Volume, table: &[MountEntry]) -> Result<PathBuf> {
        let mount = mount_of(table, &volume.root).ok_or_else(|| {
            Self::unsupported(
                &volume.root,
                "no mount holds it",
                "check that the path exists",
            )
        })?;
        Ok(self.snapshot_dir(&mount))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_paths_are_name_dot_index() {
        let name = SnapshotName::new("dbsnap-20261125T000000Z").unwrap();
        assert_eq!(
            snapshot_path(Path::new("/srv/x y/.dbsnap-snapshots"), &name, 2),
            PathBuf::from("/srv/x y/.dbsnap-snapshots/dbsnap-20261125T000000Z.2")
        );
    }

    #[tokio::test]
    async fn refuses_a_path_not_on_btrfs() {
        let dir = tempfile::tempdir().unwrap();
        let table = read_mount_table().unwrap();
        if mount_of(&table, dir.path()).unwrap().fstype == "btrfs" {
            return;
        }
        let err = Btrfs::new(BtrfsConfig::default())
            .probe(&[dir.path().to_path_buf()])
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot be snapshotted by the btrfs backend"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn release_refuses_foreign_paths() {
        let set = SnapshotSet {
            backend: NAME.into(),
            name: SnapshotName::new("dbsnap-x").unwrap(),
            snapshots: vec![VolumeSnapshot {
                volume: Volume {
                    id: "/".into(),
                    root: "/".into(),
                    fstype: NAME.into(),
                },
                id: "/var/lib/mysql".into(),
            }],
        };
        let err = Btrfs::new(BtrfsConfig::default())
            .release(&set)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("refusing to delete"), "{err}");
    }
}
