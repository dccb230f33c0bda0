//! ZFS backend: snapshots of the datasets that hold the database.
//!
//! * `probe` maps each path to its dataset through the mount table (which also covers
//!   `mountpoint=legacy`), adds datasets mounted below a path (a snapshot of a dataset
//!   does not contain its children), and checks each with `zfs get`.
//! * `snapshot` takes all datasets of one pool in ONE `zfs snapshot a@N b@N` call, which
//!   ZFS makes atomic. zfs-fuse accepts one snapshot per call; `probe` detects that (never
//!   under the lock) and `snapshot` then makes one call per dataset, which is not atomic.
//!   Every snapshot carries the user property `dbsnap:run=<name>`: list and cleanup
//!   only touch snapshots that carry it.
//! * `mount` places a `zfs hold` and reads `<mountpoint>/.zfs/snapshot/<name>` where it
//!   is reachable (OpenZFS), otherwise a read-only clone mounted under the work directory
//!   (zfs-fuse has no `.zfs`; admins may disable it).
//! * `unmount` destroys the clones; `release` releases the hold and destroys the snapshots.
//! * `native_stream`: `zfs send | zfs receive` into a ZFS destination (see `send.rs`).
//!
//! Works with OpenZFS 2.x and zfs-fuse 0.7: only `zfs get -H -p` and `zfs list -H` with
//! string columns are parsed, because zfs-fuse has no `zfs list -p`.

mod names;
mod output;
mod rollback;
mod send;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dbsnap_backend_api::command::{Cmd, CommandError};
use dbsnap_backend_api::mounts::{mount_of, read_mount_table, MountEntry};
use dbsnap_backend_api::{
    BackendError, Health, LocalHost, Probe, ReadPath, ReceivingHost, Result, RollbackOutcome,
    SnapshotBackend, SnapshotName, SnapshotSet, Volume, VolumeSnapshot, SNAPSHOT_PREFIX,
};
use serde::Deserialize;

pub use names::validate_dataset;
use names::{clone_id, dataset_of_snapshot, pool_of, snapshot_id, MAX_NAME_LEN};
use output::{parse_get, parse_snapshot_list, Properties};

const NAME: &str = "zfs";
/// The user property that marks dbsnap's snapshots and clones; its value is the set's name.
pub const RUN_PROPERTY: &str = "dbsnap:run";
/// The `zfs hold` tag dbsnap places on a snapshot while it is in use.
pub const HOLD_TAG: &str = "dbsnap";
/// Any argument without `@` makes `zfs snapshot` stop before it creates anything, in
/// every implementation; used to ask whether it accepts several snapshots per call.
const CAPABILITY_PROBE_ARG: &str = "dbsnap-capability-probe";
/// `zfs destroy` of a clone that was just unmounted can briefly report "busy".
const DESTROY_ATTEMPTS: u32 = 3;

/// How `mount` makes a snapshot readable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadVia {
    /// `.zfs/snapshot/<name>` where reachable, else a read-only clone.
    #[default]
    Auto,
    /// Only `.zfs/snapshot/<name>`; fail if it is not reachable.
    Snapdir,
    /// Always a read-only clone mounted under dbsnap's work directory.
    Clone,
}

/// `[snapshot.zfs]` in the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZfsConfig {
    /// `auto` (default), `snapdir` or `clone`; see [`ReadVia`].
    #[serde(default)]
    pub read_via: ReadVia,
}

pub struct Zfs {
    config: ZfsConfig,
    /// Whether `zfs snapshot` accepts several snapshots in one (atomic) call; learnt in
    /// `probe` so the lock window never pays for finding out.
    multi_snapshot: OnceLock<bool>,
}

impl Zfs {
    pub fn new(config: ZfsConfig) -> Self {
        Zfs {
            config,
            multi_snapshot: OnceLock::new(),
        }
    }

    fn unsupported(
        path: &Path,
        reason: impl Into<String>,
        hint: impl Into<String>,
    ) -> BackendError {
        BackendError::unsupported(NAME, path, reason, hint)
    }

    /// `zfs snapshot` with several arguments: OpenZFS accepts it, zfs-fuse answers "too
    /// many arguments". Both refuse the argument (it has no `@`) before creating anything.
    /// One `zfs snapshot a@s b@s` is one transaction group: atomic within a pool, where
    /// the daemon takes several snapshots in one call (OpenZFS; not zfs-fuse).
    pub fn atomic(&self, volumes: &[Volume]) -> bool {
        let one_pool = volumes
            .windows(2)
            .all(|w| pool_of(&w[0].id) == pool_of(&w[1].id));
        volumes.len() <= 1 || (one_pool && self.multi_snapshot.get() == Some(&true))
    }

    async fn detect_multi_snapshot() -> bool {
        let result = Cmd::new("zfs")
            .args(["snapshot", CAPABILITY_PROBE_ARG, CAPABILITY_PROBE_ARG])
            .run()
            .await;
        let multi = !matches!(&result, Err(e) if e.stderr.contains("too many arguments"));
        tracing::debug!(multi, "zfs snapshot accepts several snapshots per call");
        multi
    }

    /// Where `.zfs/snapshot/<name>` of a volume is, if it can be read.
    fn snapdir_path(volume: &Volume, name: &SnapshotName) -> Option<PathBuf> {
        let path = volume
            .root
            .join(".zfs")
            .join("snapshot")
            .join(name.as_str());
        // Listing it (not just stat) makes OpenZFS mount the snapshot on demand.
        std::fs::read_dir(&path).ok().map(|_| path)
    }

    async fn read_via_clone(
        &self,
        snap: &VolumeSnapshot,
        dataset: &str,
        name: &SnapshotName,
        mount_point: &Path,
    ) -> Result<PathBuf> {
        let clone = clone_id(dataset, name);
        Cmd::new("zfs")
            .arg("clone")
            .args(["-o", "readonly=on", "-o"])
            .arg(format!("mountpoint={}", mount_point.display()))
            .arg("-o")
            .arg(format!("{RUN_PROPERTY}={name}"))
            .arg(&snap.id)
            .arg(&clone)
            .run()
            .await?;
        // Both implementations mount a new clone; make sure, since the transfer would
        // otherwise copy an empty directory.
        let mounted = read_mount_table()?
            .iter()
            .any(|m| m.mount_point == mount_point && m.source == clone);
        if !mounted {
            Cmd::new("zfs").arg("mount").arg(&clone).run().await?;
        }
        Ok(mount_point.to_path_buf())
    }

    /// Destroy the read-only clones of a set's snapshots; clones that do not exist are fine.
    async fn destroy_clones(&self, set: &SnapshotSet) -> Result<()> {
        for snap in &set.snapshots {
            let dataset = dataset_of_snapshot(&snap.id, &set.name)?;
            let clone = clone_id(dataset, &set.name);
            let Some(props) = get_properties(&clone, &[RUN_PROPERTY, "origin"]).await? else {
                continue;
            };
            if props.get(RUN_PROPERTY) != Some(&set.name.to_string())
                || props.get("origin") != Some(&snap.id)
            {
                return Err(BackendError::Invalid(format!(
                    "refusing to destroy ZFS dataset {clone}: it is not dbsnap's clone of {} \
                     (its {RUN_PROPERTY} or origin property differs). Rename or destroy it \
                     yourself, then run dbsnap cleanup again",
                    snap.id
                )));
            }
            destroy(&clone).await?;
        }
        Ok(())
    }
}

/// `zfs get` of some properties of one dataset or snapshot; `None` if it does not exist.
async fn get_properties(name: &str, properties: &[&str]) -> Result<Option<Properties>> {
    get_properties_on(&LocalHost, name, properties).await
}

/// [`get_properties`] on `host` (where received copies live).
async fn get_properties_on(
    host: &dyn ReceivingHost,
    name: &str,
    properties: &[&str],
) -> Result<Option<Properties>> {
    let get = Cmd::new("zfs")
        .args(["get", "-H", "-p", "-o", "name,property,value"])
        .arg(properties.join(","))
        .arg(name);
    match host.run(&get).await {
        Ok(out) => Ok(parse_get(&out.stdout)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, props)| props)),
        Err(e) if does_not_exist(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn does_not_exist(e: &CommandError) -> bool {
    e.stderr.contains("dataset does not exist")
}

/// `zfs destroy` (no `-r`/`-R`: dbsnap never destroys anything it did not name).
async fn destroy(name: &str) -> Result<()> {
    destroy_on(&LocalHost, name).await
}

/// [`destroy`] on `host` (where received copies live).
async fn destroy_on(host: &dyn ReceivingHost, name: &str) -> Result<()> {
    let mut attempt = 1;
    loop {
        match host.run(&Cmd::new("zfs").arg("destroy").arg(name)).await {
            Ok(_) => return Ok(()),
            Err(e) if does_not_exist(&e) => return Ok(()),
            Err(e) if e.stderr.contains("busy") && attempt < DESTROY_ATTEMPTS => {
                tracing::debug!(%name, attempt, "zfs destroy: busy, retrying");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) if e.stderr.contains("busy") => {
                return Err(BackendError::Invalid(format!(
                    "{e}. Something still uses {name} or holds it: stop processes reading it \
                     (`fuser -vm` on its mount point), check `zfs holds {name}` / `zfs get \
                     userrefs {name}`, then run dbsnap cleanup again"
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether a mount-table entry is a ZFS filesystem: `zfs` with OpenZFS, `fuse.zfs` with
/// zfs-fuse. Both put the dataset name in the source column.
fn is_zfs_mount(m: &MountEntry) -> bool {
    m.fstype == "zfs" || m.fstype == "fuse.zfs"
}

fn volume_of(mount: &MountEntry) -> Result<Volume> {
    validate_dataset(&mount.source)?;
    Ok(Volume {
        id: mount.source.clone(),
        root: mount.mount_point.clone(),
        fstype: NAME.to_string(),
    })
}

#[async_trait]
impl SnapshotBackend for Zfs {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn probe(&self, paths: &[PathBuf]) -> Result<Probe> {
        let table = read_mount_table()?;
        let mut volumes: Vec<Volume> = Vec::new();
        let mut add = |v: Volume| {
            if !volumes.contains(&v) {
                volumes.push(v);
            }
        };
        for path in paths {
            let path = path
                .canonicalize()
                .map_err(|e| BackendError::io(format!("resolving {}", path.display()), e))?;
            let mount = mount_of(&table, &path).ok_or_else(|| {
                Self::unsupported(&path, "no mount holds it", "check that the path exists")
            })?;
            if !is_zfs_mount(&mount) {
                return Err(Self::unsupported(
                    &path,
                    format!(
                        "it is on a {} filesystem mounted at {}, not on a ZFS dataset",
                        mount.fstype,
                        mount.mount_point.display()
                    ),
                    "Move the database files onto a ZFS dataset, or set [snapshot] backend to \
                     the backend for this filesystem (btrfs, lvm)",
                ));
            }
            if mount.source.contains('@') {
                return Err(Self::unsupported(
                    &path,
                    format!("it is inside the ZFS snapshot {}", mount.source),
                    "Point dbsnap at the live database directory, not at a snapshot",
                ));
            }
            add(volume_of(&mount)?);
            // A snapshot of a dataset does not contain the datasets mounted inside it
            // (e.g. a binlog dataset below the datadir): snapshot those too.
            for child in table.iter().filter(|m| {
                is_zfs_mount(m)
                    && m.mount_point != mount.mount_point
                    && m.mount_point.starts_with(&path)
                    && !m.source.contains('@')
            }) {
                add(volume_of(child)?);
            }
        }
        // The mount table names the dataset; ask ZFS that it is a filesystem it manages.
        for volume in &volumes {
            let props = get_properties(&volume.id, &["type"]).await?;
            if props
                .as_ref()
                .and_then(|p| p.get("type"))
                .map(String::as_str)
                != Some("filesystem")
            {
                return Err(Self::unsupported(
                    &volume.root,
                    format!(
                        "`zfs get type {}` does not report a ZFS filesystem",
                        volume.id
                    ),
                    "Check `zfs list` and that the zfs command talks to the pool's daemon or \
                     kernel module",
                ));
            }
        }
        if self.multi_snapshot.get().is_none() {
            let _ = self.multi_snapshot.set(Self::detect_multi_snapshot().await);
        }
        Ok(Probe {
            atomic: self.atomic(&volumes),
            volumes,
        })
    }

    async fn plan(&self, volumes: &[Volume], name: &SnapshotName) -> Result<SnapshotSet> {
        let mut snapshots = Vec::new();
        for volume in volumes {
            validate_dataset(&volume.id)?;
            let id = snapshot_id(&volume.id, name);
            // A legal dataset name can leave no room for `@<name>`: `zfs snapshot` would
            // then fail inside the lock window, and cleanup could not even name the clone.
            let longest = id.len().max(clone_id(&volume.id, name).len());
            if longest > MAX_NAME_LEN {
                return Err(Self::unsupported(
                    &volume.root,
                    format!(
                        "the ZFS dataset name {} is too long: its snapshot {name} would need a \
                         {longest}-byte name, over ZFS's limit of {MAX_NAME_LEN}",
                        volume.id
                    ),
                    "Rename the dataset (zfs rename) to a shorter name",
                ));
            }
            snapshots.push(VolumeSnapshot {
                volume: volume.clone(),
                id,
            });
        }
        Ok(SnapshotSet {
            backend: NAME.to_string(),
            name: name.clone(),
            snapshots,
        })
    }

    async fn snapshot(&self, set: &SnapshotSet) -> Result<()> {
        // One call per pool where the implementation allows it (ZFS cannot snapshot
        // across pools atomically); otherwise (zfs-fuse, or probe not run) one per dataset.
        let multi = self.multi_snapshot.get() == Some(&true);
        let mut calls: Vec<Vec<&str>> = Vec::new();
        for snap in &set.snapshots {
            let dataset = dataset_of_snapshot(&snap.id, &set.name)?;
            let same_pool = calls
                .iter_mut()
                .find(|call| multi && pool_of(call[0]) == pool_of(dataset));
            match same_pool {
                Some(call) => call.push(&snap.id),
                None => calls.push(vec![&snap.id]),
            }
        }
        for call in calls {
            let started = Instant::now();
            Cmd::new("zfs")
                .arg("snapshot")
                .arg("-o")
                .arg(format!("{RUN_PROPERTY}={}", set.name))
                .args(&call)
                .run()
                .await?;
            tracing::info!(
                snapshots = ?call,
                ms = started.elapsed().as_millis() as u64,
                "zfs snapshot"
            );
        }
        Ok(())
    }

    async fn mount(&self, set: &SnapshotSet, workdir: &Path) -> Result<Vec<ReadPath>> {
        let workdir = workdir
            .canonicalize()
            .map_err(|e| BackendError::io(format!("resolving {}", workdir.display()), e))?;
        let mut paths = Vec::new();
        for (index, snap) in set.snapshots.iter().enumerate() {
            let dataset = dataset_of_snapshot(&snap.id, &set.name)?;
            // A hold keeps anyone from destroying the snapshot while dbsnap reads it.
            match Cmd::new("zfs")
                .arg("hold")
                .arg(HOLD_TAG)
                .arg(&snap.id)
                .run()
                .await
            {
                Ok(_) => {}
                Err(e) if e.stderr.contains("tag already exists") => {}
                Err(e) => return Err(e.into()),
            }
            let snapdir = match self.config.read_via {
                ReadVia::Clone => None,
                ReadVia::Auto | ReadVia::Snapdir => Self::snapdir_path(&snap.volume, &set.name),
            };
            let frozen_root =
                match (snapdir, self.config.read_via) {
                    (Some(path), _) => path,
                    (None, ReadVia::Snapdir) => return Err(Self::unsupported(
                        &snap.volume.root,
                        format!(
                            "{}/.zfs/snapshot/{} cannot be read",
                            snap.volume.root.display(),
                            set.name
                        ),
                        "Set [snapshot.zfs] read_via = \"auto\" or \"clone\" to read through a \
                         temporary read-only clone (zfs-fuse has no .zfs directory)",
                    )),
                    (None, _) => {
                        let at = workdir.join(index.to_string());
                        self.read_via_clone(snap, dataset, &set.name, &at).await?
                    }
                };
            paths.push(ReadPath {
                origin_root: snap.volume.root.clone(),
                frozen_root,
            });
        }
        Ok(paths)
    }

    async fn unmount(&self, set: &SnapshotSet, workdir: &Path) -> Result<()> {
        self.destroy_clones(set).await?;
        // `zfs destroy` unmounts a clone but may leave its (now empty) mount point behind.
        for index in 0..set.snapshots.len() {
            let dir = workdir.join(index.to_string());
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BackendError::io(format!("removing {}", dir.display()), e)),
            }
        }
        Ok(())
    }

    // No `spread_release`: `zfs destroy` frees a snapshot's blocks asynchronously in the
    // background (the pool's `freeing` property), bounded per transaction group already.
    async fn release(&self, set: &SnapshotSet) -> Result<()> {
        // A snapshot with a clone cannot be destroyed; unmount may not have run.
        self.destroy_clones(set).await?;
        for snap in &set.snapshots {
            dataset_of_snapshot(&snap.id, &set.name)?;
            let Some(props) = get_properties(&snap.id, &[RUN_PROPERTY, "userrefs"]).await? else {
                continue;
            };
            if props.get(RUN_PROPERTY) != Some(&set.name.to_string()) {
                return Err(BackendError::Invalid(format!(
                    "refusing to destroy ZFS snapshot {}: it does not carry {RUN_PROPERTY}={} \
                     so dbsnap did not take it. Destroy it yourself if it is not needed",
                    snap.id, set.name
                )));
            }
            if props.get("userrefs").map(String::as_str) != Some("0") {
                match Cmd::new("zfs")
                    .arg("release")
                    .arg(HOLD_TAG)
                    .arg(&snap.id)
                    .run()
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.stderr.contains("no such tag") || does_not_exist(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            destroy(&snap.id).await?;
        }
        Ok(())
    }

    /// See [`rollback`].
    async fn rollback(&self, set: &SnapshotSet) -> Result<RollbackOutcome> {
        rollback::rollback(self, set).await
    }

    async fn list(&self, volumes: &[Volume]) -> Result<Vec<SnapshotSet>> {
        if volumes.is_empty() {
            return Ok(Vec::new());
        }
        for volume in volumes {
            validate_dataset(&volume.id)?;
        }
        let out = Cmd::new("zfs")
            .args(["list", "-H", "-t", "snapshot", "-d", "1", "-o"])
            .arg(format!("name,{RUN_PROPERTY}"))
            .args(volumes.iter().map(|v| &v.id))
            .run()
            .await?;
        let mut sets: BTreeMap<SnapshotName, Vec<VolumeSnapshot>> = BTreeMap::new();
        for line in parse_snapshot_list(&out.stdout)? {
            // Ours: named with our prefix AND tagged with that same name.
            if !line.snapshot.starts_with(SNAPSHOT_PREFIX) || line.value != line.snapshot {
                continue;
            }
            let (Ok(name), Some(volume)) = (
                SnapshotName::new(line.snapshot.clone()),
                volumes.iter().find(|v| v.id == line.dataset),
            ) else {
                continue;
            };
            sets.entry(name).or_default().push(VolumeSnapshot {
                volume: volume.clone(),
                id: format!("{}@{}", line.dataset, line.snapshot),
            });
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

    fn native_stream(&self) -> Option<&dyn dbsnap_backend_api::NativeStream> {
        Some(self)
    }

    async fn health(&self, set: &SnapshotSet) -> Result<Health> {
        for snap in &set.snapshots {
            dataset_of_snapshot(&snap.id, &set.name)?;
            if get_properties(&snap.id, &[RUN_PROPERTY]).await?.is_none() {
                return Ok(Health::Failed(format!(
                    "ZFS snapshot {} no longer exists (destroyed outside dbsnap?)",
                    snap.id
                )));
            }
        }
        let mut pools: Vec<&str> = set.snapshots.iter().map(|s| pool_of(&s.id)).collect();
        pools.dedup();
        for pool in pools {
            let out = Cmd::new("zpool")
                .args(["list", "-H", "-o", "health"])
                .arg(pool)
                .run()
                .await?;
            match out.stdout.trim() {
                "ONLINE" => {}
                "DEGRADED" => {
                    return Ok(Health::Warning(format!(
                        "ZFS pool {pool} is DEGRADED (see `zpool status {pool}`)"
                    )))
                }
                other => {
                    return Ok(Health::Failed(format!(
                        "ZFS pool {pool} is {other} (see `zpool status {pool}`)"
                    )))
                }
            }
        }
        Ok(Health::Ok)
    }
}

#[cfg(test)]
mod tests;
