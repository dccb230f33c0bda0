//! LVM backend: snapshots of the logical volumes that hold the database.
//!
//! - A plain LV gets a classic snapshot (`lvcreate -s -l N`), whose copy-on-write space is
//!   sized in `probe` (see [`size`]) and watched by `health`: when it overflows, LVM
//!   invalidates the snapshot and the copy must fail.
//! - A thin LV gets a thin snapshot (no size; it shares the thin pool, whose data and
//!   metadata use `health` watches). Thin snapshots skip activation by default, so `mount`
//!   activates them with `--ignoreactivationskip` (outside the lock).
//! - Snapshots are named `<snapshot name>.<volume index>` in the origin's volume group and
//!   tagged `dbsnap` and `<snapshot name>`; `list` and `release` touch nothing without the
//!   `dbsnap` tag. Snapshots of several LVs are not atomic: dbsnap's lock covers all.
//! - `mount` mounts read-only under the workdir: XFS with `nouuid,norecovery` (the snapshot
//!   has the origin's UUID and an unreplayed log), ext4 with `noload` (no journal replay).
//!
//! - `rollback` merges the snapshots into their origins (see [`rollback`]): a thin set is
//!   kept, a set with a classic snapshot is consumed, and a merge into an origin that cannot
//!   be unmounted waits for its next activation.
//!
//! The probe remembers each volume's LV so that `snapshot`, which runs under the database
//! lock, runs `lvcreate` and nothing else.

mod busy;
mod device;
mod health;
mod lvs;
mod rollback;
mod size;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use dbsnap_backend_api::command::Cmd;
use dbsnap_backend_api::mounts::{mount_of, read_mount_table, MountEntry};
use dbsnap_backend_api::{
    validate_name, validate_name_up_to, BackendError, Health, Probe, ReadPath, Result,
    RollbackOutcome, SnapshotBackend, SnapshotName, SnapshotSet, Volume, VolumeSnapshot,
    SNAPSHOT_PREFIX,
};
use serde::Deserialize;

use device::{device_mapper_major, device_path, mount_options, parse_device, split_lv_id};
use health::assess_health;
use lvs::{list_lvs, Lv, LvKind};
pub use size::{Percent, SnapshotSize};

const NAME: &str = "lvm";
/// Every snapshot this backend creates carries this LVM tag.
pub const TAG: &str = "dbsnap";
const DEFAULT_WARN_PERCENT: Percent = Percent::new_const(80.0);
/// `lvremove` of a device that is still briefly open right after its umount (udev's
/// watch rule probes a device when it is closed) is retried, for about 7 s in all. Not
/// longer: a snapshot that stays busy is held by something, which the error names (see
/// [`busy`]). An invalidated snapshot is a case of that: dmeventd unmounts it lazily
/// (`umount -l`) at once, and its filesystem lives on, unseen in the mount table, while
/// a reader still has files of it open; dbsnap's copy engines let go of them before the
/// snapshot is released.
const REMOVE_ATTEMPTS: u32 = 4;
const REMOVE_RETRY_DELAY: Duration = Duration::from_millis(750);

/// `[snapshot.lvm]` in the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LvmConfig {
    /// Copy-on-write space of each classic snapshot: `"2G"`, `"512M"` or `"20%"` of the
    /// origin LV. Default: half of the volume group's free space, shared by the group's
    /// snapshots, at most the origin's size. Thin snapshots take no size.
    pub snapshot_size: Option<SnapshotSize>,
    /// `health` warns when a classic snapshot's CoW space, or a thin pool's data or metadata,
    /// is this full (percent). Default 80.
    pub warn_percent: Option<Percent>,
}

pub struct Lvm {
    config: LvmConfig,
    /// What `probe` found for each volume (by volume id `vg/lv`), for `snapshot`.
    probed: Mutex<HashMap<String, Prepared>>,
}

/// How to snapshot one volume, decided in `probe`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Prepared {
    Classic { extents: u64 },
    Thin,
}

impl Lvm {
    pub fn new(config: LvmConfig) -> Self {
        Lvm {
            config,
            probed: Mutex::new(HashMap::new()),
        }
    }

    fn warn_percent(&self) -> f64 {
        self.config
            .warn_percent
            .unwrap_or(DEFAULT_WARN_PERCENT)
            .value()
    }
}

fn unsupported(path: &Path, reason: impl Into<String>, hint: impl Into<String>) -> BackendError {
    BackendError::unsupported(NAME, path, reason, hint)
}

/// LVM allows 127 characters in an LV name, and device-mapper 127 in the device's
/// name, `VG-LV` with every `-` inside VG and LV doubled. A longer name would make
/// `lvcreate` fail inside the lock window: refused here, in `plan`.
const MAX_LVM_NAME_LEN: usize = 127;

fn check_snapshot_lv_name(vg: &str, lv_name: &str, root: &Path) -> Result<()> {
    validate_name_up_to("snapshot LV name", lv_name, MAX_LVM_NAME_LEN)?;
    let dm_name_len = |s: &str| s.len() + s.matches('-').count();
    let dm_len = dm_name_len(vg) + 1 + dm_name_len(lv_name);
    if dm_len > MAX_LVM_NAME_LEN {
        return Err(unsupported(
            root,
            format!(
                "the snapshot {vg}/{lv_name} would need a {dm_len}-character device-mapper name \
                 (every '-' doubled), over the limit of {MAX_LVM_NAME_LEN}"
            ),
            "Use a shorter label, with fewer '-'",
        ));
    }
    Ok(())
}

/// The volume groups named in a set's snapshot ids, each once.
fn volume_groups(set: &SnapshotSet) -> Result<Vec<String>> {
    let mut vgs = Vec::new();
    for snap in &set.snapshots {
        let (vg, _) = split_lv_id(&snap.id)?;
        if !vgs.iter().any(|v| v == vg) {
            vgs.push(vg.to_string());
        }
    }
    Ok(vgs)
}

/// One `lvcreate` per LV: several snapshots are not one instant.
fn atomic(volumes: &[Volume]) -> bool {
    volumes.len() <= 1
}

/// Whether `lv` is one of dbsnap's snapshots: prefixed name, `dbsnap` tag, an origin.
fn is_ours(lv: &Lv) -> bool {
    lv.name.starts_with(SNAPSHOT_PREFIX) && lv.has_tag(TAG) && lv.origin.is_some()
}

/// The set name of one of our snapshot LVs, `<set name>.<index>`.
fn set_name_of(lv_name: &str) -> Option<SnapshotName> {
    let (name, index) = lv_name.rsplit_once('.')?;
    index.parse::<usize>().ok()?;
    SnapshotName::new(name).ok()
}

impl Lvm {
    fn probe_path(
        &self,
        path: &Path,
        table: &[MountEntry],
        dm_major: Option<u32>,
        all_lvs: &[Lv],
    ) -> Result<(Volume, Lv)> {
        let canonical = path
            .canonicalize()
            .map_err(|e| BackendError::io(format!("resolving {}", path.display()), e))?;
        let mount = mount_of(table, &canonical)
            .ok_or_else(|| unsupported(path, "no mount holds it", "check that the path exists"))?;
        let not_lvm = || {
            unsupported(
                path,
                format!(
                    "it is on {} ({}) mounted at {}, not on an LVM logical volume",
                    mount.source,
                    mount.fstype,
                    mount.mount_point.display()
                ),
                "Move the database files onto an LVM logical volume, or set [snapshot] backend \
                 to the backend for this filesystem (btrfs, zfs)",
            )
        };
        let device = parse_device(&mount.device).ok_or_else(not_lvm)?;
        if dm_major != Some(device.0) {
            return Err(not_lvm());
        }
        let lv = all_lvs
            .iter()
            .find(|lv| lv.device == Some(device))
            .ok_or_else(not_lvm)?
            .clone();
        match lv.kind() {
            LvKind::Plain | LvKind::Thin => {}
            LvKind::ClassicSnapshot | LvKind::Other => {
                return Err(unsupported(
                    path,
                    format!(
                        "it is on {}, which is a snapshot or pool (lv_attr {})",
                        lv.full_name(),
                        lv.attr
                    ),
                    "Point dbsnap at the database on its origin logical volume",
                ))
            }
        }
        mount_options(&mount.fstype).map_err(|e| {
            unsupported(
                path,
                e.to_string(),
                "Use xfs or ext4 on the logical volume, or another backend",
            )
        })?;
        validate_name("volume group name", &lv.vg)?;
        validate_name("logical volume name", &lv.name)?;
        let volume = Volume {
            id: lv.full_name(),
            root: mount.mount_point.clone(),
            fstype: mount.fstype.clone(),
        };
        Ok((volume, lv))
    }

    /// Decide each volume's snapshot: thin, or classic with a size that fits its VG.
    fn prepare(&self, found: &[(Volume, Lv, PathBuf)]) -> Result<HashMap<String, Prepared>> {
        let mut prepared = HashMap::new();
        let mut classic_by_vg: BTreeMap<&str, Vec<&(Volume, Lv, PathBuf)>> = BTreeMap::new();
        for entry in found {
            let (volume, lv, _) = entry;
            if lv.kind() == LvKind::Thin {
                prepared.insert(volume.id.clone(), Prepared::Thin);
            } else {
                classic_by_vg.entry(lv.vg.as_str()).or_default().push(entry);
            }
        }
        for (vg, entries) in classic_by_vg {
            let origins: Vec<size::Origin> = entries
                .iter()
                .map(|(_, lv, _)| size::Origin {
                    name: lv.full_name(),
                    size: lv.size,
                })
                .collect();
            let first = &entries[0].1;
            let extents = size::snapshot_extents(
                self.config.snapshot_size,
                &origins,
                vg,
                first.extent_size,
                first.vg_free_extents,
            )
            .map_err(|reason| {
                unsupported(
                    &entries[0].2,
                    reason,
                    "Free space in the volume group (vgextend, or shrink another LV), set \
                     [snapshot.lvm] snapshot_size, or move the data onto a thin LV",
                )
            })?;
            for ((volume, _, _), extents) in entries.iter().zip(extents) {
                prepared.insert(volume.id.clone(), Prepared::Classic { extents });
            }
        }
        Ok(prepared)
    }

    /// Remove one of our snapshot LVs, retrying while it is busy; explain who holds it if
    /// it stays busy.
    async fn remove(&self, lv: &Lv) -> Result<()> {
        let full_name = lv.full_name();
        let mut attempt = 1;
        loop {
            match Cmd::new("lvremove").args(["--yes", &full_name]).run().await {
                Ok(_) => return Ok(()),
                Err(e) if attempt >= REMOVE_ATTEMPTS => {
                    return Err(BackendError::Invalid(format!(
                        "could not remove snapshot {full_name} after {attempt} attempts: {e}. {}",
                        diagnose_busy(lv)
                    )))
                }
                Err(e) => {
                    tracing::warn!(snapshot = %full_name, attempt, error = %e, "lvremove failed; retrying");
                    tokio::time::sleep(REMOVE_RETRY_DELAY * attempt).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// Who keeps the LV's device open (see [`busy`]).
fn diagnose_busy(lv: &Lv) -> String {
    match lv.device {
        Some((major, minor)) => busy::diagnose(major, minor),
        None => {
            "The LV is not active, so nothing holds it open; see the lvremove error above.".into()
        }
    }
}

#[async_trait]
impl SnapshotBackend for Lvm {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn probe(&self, paths: &[PathBuf]) -> Result<Probe> {
        let table = read_mount_table()?;
        let dm_major = device_mapper_major()?;
        if dm_major.is_none() {
            let path = paths.first().cloned().unwrap_or_default();
            return Err(unsupported(
                &path,
                "this kernel has no device-mapper, so nothing here is on LVM",
                "Load it (`modprobe dm_snapshot`) if the data is on LVM, or choose the backend \
                 for this filesystem",
            ));
        }
        let all_lvs = list_lvs(&[]).await?;
        let mut found: Vec<(Volume, Lv, PathBuf)> = Vec::new();
        for path in paths {
            let (volume, lv) = self.probe_path(path, &table, dm_major, &all_lvs)?;
            match found.iter().find(|(v, _, _)| v.id == volume.id) {
                None => found.push((volume, lv, path.clone())),
                Some((v, _, _)) if v.root == volume.root => {}
                Some((v, _, _)) => {
                    return Err(unsupported(
                        path,
                        format!(
                            "its LV {} is mounted both at {} and at {}",
                            volume.id,
                            v.root.display(),
                            volume.root.display()
                        ),
                        "Configure the database paths through one mount of each LV",
                    ))
                }
            }
        }
        let prepared = self.prepare(&found)?;
        self.probed
            .lock()
            .expect("probe cache lock poisoned")
            .extend(prepared);
        let volumes: Vec<Volume> = found.into_iter().map(|(volume, _, _)| volume).collect();
        Ok(Probe {
            atomic: atomic(&volumes),
            volumes,
        })
    }

    async fn plan(&self, volumes: &[Volume], name: &SnapshotName) -> Result<SnapshotSet> {
        let mut snapshots = Vec::new();
        for (index, volume) in volumes.iter().enumerate() {
            let (vg, _) = split_lv_id(&volume.id)?;
            let lv_name = format!("{name}.{index}");
            check_snapshot_lv_name(vg, &lv_name, &volume.root)?;
            snapshots.push(VolumeSnapshot {
                volume: volume.clone(),
                id: format!("{vg}/{lv_name}"),
            });
        }
        Ok(SnapshotSet {
            backend: NAME.to_string(),
            name: name.clone(),
            snapshots,
        })
    }

    async fn snapshot(&self, set: &SnapshotSet) -> Result<()> {
        let prepared = self
            .probed
            .lock()
            .expect("probe cache lock poisoned")
            .clone();
        for snap in &set.snapshots {
            let (_, lv_name) = split_lv_id(&snap.id)?;
            let how = prepared.get(&snap.volume.id).ok_or_else(|| {
                BackendError::Invalid(format!(
                    "volume {} was not probed by this LVM backend before its snapshot; probe \
                     decides the snapshot's kind and size (a bug in the caller)",
                    snap.volume.id
                ))
            })?;
            let mut cmd = Cmd::new("lvcreate")
                .args(["--snapshot", "--yes", "--name", lv_name])
                .args(["--addtag", TAG, "--addtag", set.name.as_str()]);
            if let Prepared::Classic { extents } = how {
                cmd = cmd.args(["--extents", &extents.to_string()]);
            }
            cmd.arg(&snap.volume.id).run().await?;
        }
        Ok(())
    }

    async fn mount(&self, set: &SnapshotSet, workdir: &Path) -> Result<Vec<ReadPath>> {
        let lvs = list_lvs(&volume_groups(set)?).await?;
        let mut read_paths = Vec::new();
        for (index, snap) in set.snapshots.iter().enumerate() {
            let (vg, lv_name) = split_lv_id(&snap.id)?;
            let options = mount_options(&snap.volume.fstype)?;
            let lv = lvs
                .iter()
                .find(|lv| lv.full_name() == snap.id)
                .ok_or_else(|| {
                    BackendError::Invalid(format!(
                        "snapshot {} does not exist, so it cannot be mounted; it was released or \
                     never created (see `lvs {vg}`)",
                        snap.id
                    ))
                })?;
            // Thin snapshots are created with the activation-skip flag, so they start
            // inactive; classic ones are active with their origin.
            if lv.device.is_none() {
                Cmd::new("lvchange")
                    .args(["--activate", "y", "--ignoreactivationskip", &snap.id])
                    .run()
                    .await?;
            }
            let dir = workdir.join(index.to_string());
            std::fs::create_dir_all(&dir)
                .map_err(|e| BackendError::io(format!("creating {}", dir.display()), e))?;
            let table = read_mount_table()?;
            if !table.iter().any(|m| m.mount_point == dir) {
                Cmd::new("mount")
                    .args(["-t", &snap.volume.fstype, "-o", options])
                    .arg(device_path(vg, lv_name))
                    .arg(&dir)
                    .run()
                    .await?;
            }
            // If the origin's mount shows a subdirectory of its filesystem (a bind mount),
            // the same subdirectory of the snapshot is the frozen view of it.
            let inner = mount_of(&table, &snap.volume.root)
                .filter(|m| m.mount_point == snap.volume.root)
                .map(|m| m.fs_root)
                .unwrap_or_else(|| PathBuf::from("/"));
            read_paths.push(ReadPath {
                origin_root: snap.volume.root.clone(),
                frozen_root: dir.join(inner.strip_prefix("/").unwrap_or(&inner)),
            });
        }
        Ok(read_paths)
    }

    async fn unmount(&self, set: &SnapshotSet, workdir: &Path) -> Result<()> {
        for index in 0..set.snapshots.len() {
            let dir = workdir.join(index.to_string());
            while read_mount_table()?.iter().any(|m| m.mount_point == dir) {
                Cmd::new("umount").arg(&dir).run().await?;
            }
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(BackendError::io(format!("removing {}", dir.display()), e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    // No `spread_release`: a classic snapshot's CoW area is its own LV, so `lvremove`
    // frees nothing on the origin's filesystem; a thin snapshot's blocks return to the
    // pool's metadata without touching the origin's filesystem either.
    async fn release(&self, set: &SnapshotSet) -> Result<()> {
        // Check every id before removing anything: only `<vg>/<set name>.<n>`.
        for snap in &set.snapshots {
            let (_, lv_name) = split_lv_id(&snap.id)?;
            if set_name_of(lv_name).as_ref() != Some(&set.name) {
                return Err(BackendError::Invalid(format!(
                    "refusing to remove {}: it is not a dbsnap snapshot of {}",
                    snap.id, set.name
                )));
            }
        }
        let vgs = volume_groups(set)?;
        if vgs.is_empty() {
            return Ok(());
        }
        let lvs = list_lvs(&vgs).await?;
        for snap in &set.snapshots {
            let Some(lv) = lvs.iter().find(|lv| lv.full_name() == snap.id) else {
                continue; // already gone
            };
            if !is_ours(lv) {
                return Err(BackendError::Invalid(format!(
                    "refusing to remove {}: it lacks the `{TAG}` tag or is not a snapshot, so \
                     dbsnap did not create it",
                    snap.id
                )));
            }
            // A mount left by an interrupted run keeps the LV open.
            if let Some((major, minor)) = lv.device {
                let device = format!("{major}:{minor}");
                for m in read_mount_table()?.iter().filter(|m| m.device == device) {
                    Cmd::new("umount").arg(&m.mount_point).run().await?;
                }
            }
            self.remove(lv).await?;
        }
        Ok(())
    }

    async fn list(&self, volumes: &[Volume]) -> Result<Vec<SnapshotSet>> {
        let mut vgs: Vec<String> = Vec::new();
        for volume in volumes {
            let (vg, _) = split_lv_id(&volume.id)?;
            if !vgs.iter().any(|v| v == vg) {
                vgs.push(vg.to_string());
            }
        }
        if vgs.is_empty() {
            return Ok(Vec::new());
        }
        let mut sets: BTreeMap<SnapshotName, Vec<VolumeSnapshot>> = BTreeMap::new();
        for lv in list_lvs(&vgs).await?.iter().filter(|lv| is_ours(lv)) {
            let Some(name) = set_name_of(&lv.name) else {
                continue;
            };
            let origin = format!("{}/{}", lv.vg, lv.origin.as_deref().unwrap_or_default());
            let volume = volumes
                .iter()
                .find(|v| v.id == origin)
                .cloned()
                .unwrap_or_else(|| Volume {
                    id: origin,
                    root: PathBuf::new(),
                    fstype: String::new(),
                });
            sets.entry(name).or_default().push(VolumeSnapshot {
                volume,
                id: lv.full_name(),
            });
        }
        Ok(sets
            .into_iter()
            .map(|(name, mut snapshots)| {
                snapshots.sort_by(|a, b| a.id.cmp(&b.id));
                SnapshotSet {
                    backend: NAME.to_string(),
                    name,
                    snapshots,
                }
            })
            .collect())
    }

    async fn health(&self, set: &SnapshotSet) -> Result<Health> {
        let lvs = list_lvs(&volume_groups(set)?).await?;
        Ok(assess_health(set, &lvs, self.warn_percent()))
    }

    /// `lvconvert --merge`: see [`rollback`]. Thin sets are kept, sets with a classic
    /// snapshot are consumed; a busy origin leaves the merge pending.
    async fn rollback(&self, set: &SnapshotSet) -> Result<RollbackOutcome> {
        rollback::rollback(set).await
    }
}

#[cfg(test)]
mod tests;
