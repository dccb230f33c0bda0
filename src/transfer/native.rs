//! Native streams (`[backup] method = "btrfs-send"` or `"zfs-send"`): the backend sends each snapshot
//! as a stream and the destination rebuilds a complete read-only copy from it. After
//! the first backup only the difference from the previous backup's snapshot (the
//! *parent*) is sent, so the parent must outlive its backup run:
//!
//! - the newest backup's snapshot stays on the source, recorded in
//!   `state_dir/parents/NAME.toml` (a *parent record*). `cleanup` never touches it (it
//!   is not in the journal), `prune` keeps the backup that holds its received copy, and
//!   it is released as soon as a newer backup takes its place;
//! - a chain that cannot be continued (parent snapshot or base backup gone, volumes
//!   changed) gives a full stream, and the manifest says why (`full_because`).
//!
//! Every received copy is complete on its own: deleting or pruning an older backup
//! never breaks a newer one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use dbsnap_backend_api::{
    NativeStream, SnapshotBackend, SnapshotName, SnapshotSet, StreamParent, Volume,
};
use serde::{Deserialize, Serialize};

use crate::config::{Method, SnapshotConfig};
use crate::destination::{BaseOf, Destination};
use crate::error::{fail, Class};
use crate::journal::{Journal, Resource};
use crate::manifest::StoredVolume;
use crate::records::Records;
use crate::transfer::TransferStats;

/// A snapshot kept on the source as the base of the next incremental stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parent {
    pub set: SnapshotSet,
    /// The backup that holds the snapshot's received copy.
    pub backup: String,
    /// The received copy of each snapshot of `set` ([`Received::id`]).
    pub received: Vec<String>,
    pub dest: PathBuf,
    pub datadir: PathBuf,
    /// The stream (`btrfs-send`).
    pub method: String,
    pub created_at: DateTime<Utc>,
}

const RECORDS: Records = Records("parents");

/// Whether `name` is kept as a parent.
pub fn is_parent(state_dir: &Path, name: &SnapshotName) -> bool {
    RECORDS.exists(state_dir, name)
}

impl Parent {
    pub fn write(&self, state_dir: &Path) -> anyhow::Result<()> {
        RECORDS.write(state_dir, &self.set.name, self)
    }

    /// Every parent record, oldest first.
    pub fn list(state_dir: &Path) -> anyhow::Result<Vec<Parent>> {
        let mut all: Vec<Parent> = RECORDS.list(state_dir)?;
        all.sort_by_key(|p| p.created_at);
        Ok(all)
    }

    fn remove(&self, state_dir: &Path) -> anyhow::Result<()> {
        RECORDS.remove(state_dir, &self.set.name)
    }

    fn serves(&self, dest: &Path, datadir: &Path) -> bool {
        self.dest == dest && self.datadir == datadir
    }
}

/// The one place that decides between rsync and the backend's native stream. Runs
/// before the lock: an impossible choice fails before anything is created.
pub async fn choose<'a>(
    method: Method,
    backend: &'a dyn SnapshotBackend,
    dest: &Path,
) -> anyhow::Result<Option<&'a dyn NativeStream>> {
    let wanted = match method {
        Method::Rsync => return Ok(None),
        Method::BtrfsSend => Some("btrfs-send"),
        Method::ZfsSend => Some("zfs-send"),
        Method::Auto => None,
    };
    let stream = match (backend.native_stream(), wanted) {
        (Some(stream), Some(w)) if stream.method() == w => stream,
        (None, Some(w)) | (Some(_), Some(w)) => {
            return Err(fail(
                Class::Config,
                format!(
                    "[backup] method = \"{w}\" needs the backend that makes those streams, but \
                     [snapshot] backend is {}. Use method = \"rsync\" or \"auto\"",
                    backend.name()
                ),
            ))
        }
        (Some(stream), None) => stream,
        (None, None) => {
            tracing::info!(
                "method auto: the {} backend has no native stream; copying with rsync",
                backend.name()
            );
            return Ok(None);
        }
    };
    match stream.check_destination(dest).await {
        Ok(()) => {
            tracing::info!("transfer method {}", stream.method());
            Ok(Some(stream))
        }
        Err(why) if method == Method::Auto => {
            tracing::info!(
                "method auto: copying with rsync, not {}: {why}",
                stream.method()
            );
            Ok(None)
        }
        Err(why) => Err(fail(Class::Destination, why.to_string())),
    }
}

/// The parent for this backup's stream: the newest parent record for this destination
/// and datadir. `Err` says why it cannot be used (the stream is then full); `Ok(None)`:
/// there is no earlier backup made with this stream.
pub async fn find_parent(
    state_dir: &Path,
    dest: &dyn Destination,
    datadir: &Path,
    stream: &dyn NativeStream,
    backend: &dyn SnapshotBackend,
    volumes: &[Volume],
) -> anyhow::Result<Result<Option<Parent>, String>> {
    let Some(parent) = Parent::list(state_dir)?
        .into_iter()
        .rfind(|p| p.serves(dest.location(), datadir) && p.method == stream.method())
    else {
        return Ok(Ok(None));
    };
    if parent.received.len() != parent.set.snapshots.len() {
        return Ok(Err(format!(
            "the record of base snapshot {} is incomplete",
            parent.set.name
        )));
    }
    let Some(base) = dest.resolve(&parent.backup).await? else {
        return Ok(Err(format!(
            "the base backup {} is gone",
            dest.location().join(&parent.backup).display()
        )));
    };
    if let Some(missing) = base
        .manifest
        .stored
        .iter()
        .map(|s| base.path.join(&s.path))
        .find(|p| !p.exists())
    {
        return Ok(Err(format!(
            "the base backup's copy {} is gone",
            missing.display()
        )));
    }
    if let Some(newer) = dest
        .newest_base(datadir, BaseOf::Stream(stream.method()))
        .await?
        .map(|b| b.name)
        .filter(|n| *n != parent.backup)
    {
        // Its snapshot could not be kept as the next base (the run failed after
        // publishing). Its copy is the newest in the chain, and a stream from the older
        // base would have to replace it.
        return Ok(Err(format!(
            "backup {newer} is newer than the base backup {}",
            parent.backup
        )));
    }
    let roots = |vs: Vec<&Volume>| vs.into_iter().map(|v| v.root.clone()).collect::<Vec<_>>();
    if roots(parent.set.snapshots.iter().map(|s| &s.volume).collect())
        != roots(volumes.iter().collect())
    {
        return Ok(Err(format!(
            "the server's volumes changed since the base backup {}",
            parent.backup
        )));
    }
    let on_source = backend.list(volumes).await.is_ok_and(|sets| {
        sets.iter().any(|s| {
            s.name == parent.set.name
                && s.snapshots
                    .iter()
                    .map(|v| &v.id)
                    .eq(parent.set.snapshots.iter().map(|v| &v.id))
        })
    });
    if !on_source {
        return Ok(Err(format!(
            "the base backup's snapshot {} is gone from the source",
            parent.set.name
        )));
    }
    Ok(Ok(Some(parent)))
}

/// The free space an incremental stream needs at `dest`: twice the largest increment
/// of this datadir and method so far, at least a quarter of the data, at most all of
/// it. Not a guarantee (a day of heavy writes can exceed it); a stream that fills the
/// destination fails, its partial copy is removed and the base is kept, so the next
/// run can try again. Requiring room for a full copy would refuse exactly the
/// incremental backups a small backup disk is meant for.
pub async fn room_for_increment(
    dest: &dyn Destination,
    datadir: &Path,
    method: &str,
    data_bytes: u64,
) -> anyhow::Result<u64> {
    let largest = dest
        .backups()
        .await?
        .into_iter()
        .map(|b| b.manifest)
        .filter(|m| {
            m.server.datadir == datadir
                && BaseOf::Stream(method).fits(m)
                && m.transfer.base.is_some()
        })
        .map(|m| m.transfer.bytes_written)
        .max()
        .unwrap_or(0);
    Ok(largest
        .saturating_mul(2)
        .max(data_bytes / 4)
        .min(data_bytes))
}

/// Where a stream goes: the backup being written (`DEST/NAME.partial`), and the run
/// whose journal records each received copy before its stream starts.
pub struct Target<'a> {
    pub partial: &'a Path,
    pub journal: &'a mut Journal,
    pub run: &'a str,
}

/// Send every snapshot of `set` into the target, incrementally from `parent` if given.
pub async fn send(
    stream: &dyn NativeStream,
    set: &SnapshotSet,
    parent: Option<&Parent>,
    target: Target<'_>,
    bwlimit: Option<bytesize::ByteSize>,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<(TransferStats, Vec<StoredVolume>)> {
    let Target {
        partial,
        journal,
        run,
    } = target;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut stored = Vec::new();
    for (index, snapshot) in set.snapshots.iter().enumerate() {
        let from = parent.map(|p| StreamParent {
            snapshot: &p.set.snapshots[index],
            received: &p.received[index],
        });
        let so_far = sent;
        let id = stream
            .plan_received(snapshot, index, from, partial)
            .map_err(|e| fail(Class::Transfer, e.to_string()))?;
        journal.record(run, received_resource(&set.backend, &id, partial))?;
        let received = stream
            .send(
                snapshot,
                from,
                partial,
                &id,
                bwlimit.map(|b| b.as_u64()),
                &|n| progress(so_far + n),
            )
            .await
            .map_err(|e| fail(Class::Transfer, e.to_string()))?;
        sent += received.stream_bytes;
        stored.push(StoredVolume {
            root: snapshot.volume.root.clone(),
            path: received
                .path
                .strip_prefix(partial)
                .unwrap_or(&received.path)
                .to_path_buf(),
            id: received.id,
        });
    }
    let stats = TransferStats {
        method: stream.method().into(),
        base: parent.map(|p| p.backup.clone()),
        parent_snapshot: parent.map(|p| p.set.name.to_string()),
        bytes: sent,
        bytes_written: sent,
        duration_ms: started.elapsed().as_millis() as u64,
        ..TransferStats::default()
    };
    Ok((stats, stored))
}

/// The journal entry of a copy received for the backup being written in `partial`.
pub fn received_resource(backend: &str, id: &str, partial: &Path) -> Resource {
    Resource::Received {
        backend: backend.to_string(),
        id: id.to_string(),
        partial: partial.to_path_buf(),
    }
}

/// Release the parents of this destination and datadir other than `keep`: a newer
/// backup took their place, or backups are no longer made with a stream. A failure
/// is a warning: the backup is complete, and the next run tries again.
pub async fn retire_parents(
    state_dir: &Path,
    snapshot_config: &SnapshotConfig,
    dest: &Path,
    datadir: &Path,
    keep: Option<&SnapshotName>,
) {
    let parents = match Parent::list(state_dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("{e:#}");
            return;
        }
    };
    for parent in parents {
        if !parent.serves(dest, datadir) || Some(&parent.set.name) == keep {
            continue;
        }
        let released = async {
            let backend = crate::backends::open_named(&parent.set.backend, snapshot_config)?;
            backend.release(&parent.set).await?;
            parent.remove(state_dir)
        };
        match released.await {
            Ok(()) => tracing::info!(
                "released snapshot {} (the base of backup {}; no longer needed)",
                parent.set.name,
                parent.backup
            ),
            Err(e) => tracing::warn!(
                "could not release the earlier base snapshot {}: {e:#}; the next backup tries again",
                parent.set.name
            ),
        }
    }
}

/// The backups that prune must keep: their received copies are the bases of the next
/// incremental streams.
pub fn protected_backups(state_dir: &Path, dest: &Path) -> anyhow::Result<Vec<String>> {
    Ok(Parent::list(state_dir)?
        .into_iter()
        .filter(|p| p.dest == dest)
        .map(|p| p.backup)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbsnap_backend_api::VolumeSnapshot;

    fn parent(name: &str, backup: &str, dest: &str, minutes: i64) -> Parent {
        Parent {
            set: SnapshotSet {
                backend: "btrfs".into(),
                name: SnapshotName::new(name).unwrap(),
                snapshots: vec![VolumeSnapshot {
                    volume: Volume {
                        id: "/srv/db".into(),
                        root: "/srv/db".into(),
                        fstype: "btrfs".into(),
                    },
                    id: format!("/srv/.dbsnap-snapshots/{name}.0"),
                }],
            },
            backup: backup.into(),
            received: vec![format!("{dest}/{backup}/{name}.0")],
            dest: dest.into(),
            datadir: "/srv/db/data".into(),
            method: "btrfs-send".into(),
            created_at: DateTime::from_timestamp(1_800_000_000 + minutes * 60, 0).unwrap(),
        }
    }

    #[test]
    fn records_round_trip_and_list_oldest_first() {
        let state = tempfile::tempdir().unwrap();
        let newer = parent("dbsnap-b", "b", "/backups", 2);
        let older = parent("dbsnap-a", "a", "/backups", 1);
        newer.write(state.path()).unwrap();
        older.write(state.path()).unwrap();
        assert_eq!(
            Parent::list(state.path()).unwrap(),
            vec![older.clone(), newer]
        );
        assert!(is_parent(state.path(), &older.set.name));
        older.remove(state.path()).unwrap();
        assert!(!is_parent(state.path(), &older.set.name));
    }

    #[test]
    fn prune_protects_only_the_bases_in_its_destination() {
        let state = tempfile::tempdir().unwrap();
        parent("dbsnap-a", "a", "/backups", 1)
            .write(state.path())
            .unwrap();
        parent("dbsnap-z", "z", "/elsewhere", 1)
            .write(state.path())
            .unwrap();
        assert_eq!(
            protected_backups(state.path(), Path::new("/backups")).unwrap(),
            vec!["a".to_string()]
        );
    }
}
