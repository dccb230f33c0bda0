//! Resuming a native stream that was cut off, where the backend and the receiving side
//! can keep what it delivered (ZFS's resumable receive; see
//! [`NativeStream::resumable`]):
//!
//! - before its first stream a run writes a *resumable record*,
//!   `state_dir/resumable/SET.toml`: its snapshot set, the received copy each volume's
//!   stream makes, and the parent the streams start from. While the run's journal still
//!   names the snapshot and the copies, the record only marks them: a run that stops
//!   without a stream failing (the copy was stopped to protect the server, SIGTERM)
//!   releases them as always, and the record with them. A run whose streams all
//!   arrive forgets the record before it publishes;
//! - a stream that fails hands the snapshot and the copies from the journal to the
//!   record ([`hand_over`]): the snapshot stays on the source (unmounted, like a
//!   parent), what arrived stays at the destination. A run killed mid-stream (kill -9)
//!   leaves them journaled; the next backup hands them over when it starts
//!   ([`names_received`], [`is_resumable`]: `release` keeps them then);
//! - the next backup checks the newest record before the lock ([`find`]): its snapshot
//!   still on the source, and each copy complete (and still the newest in its chain),
//!   partly received with a token that continues exactly that snapshot, or not started
//!   (then from the record's parent). It then first completes the interrupted run's
//!   streams ([`Interrupted::complete`]: `zfs send -t TOKEN`, or the stream not started
//!   then) and sends its own snapshot incrementally from the interrupted one: about one
//!   full stream plus the churn, not two. Its manifest records the interrupted run's
//!   name (`transfer.resumed_from`); once it is published, the interrupted run's copies
//!   (only steps towards the new ones) and snapshot are released with the record;
//! - a record that cannot be continued (its snapshot gone, a token for another
//!   snapshot, nothing arrived) is released before the next stream starts (partial
//!   receives aborted), and that stream starts as it would have without it, saying why;
//! - a resuming run's own stream is not made resumable: cut off, the interrupted run's
//!   record (complete by then) stays, and the next run sends only the increment again;
//! - `dbsnap cleanup` releases every record ([`release_records`]), as does a backup
//!   that is no longer a stream.
//!
//! A record's copies are never a backup: never listed, restored, or a base for anything
//! but the resuming stream. This module is the only one that reads or writes
//! resumable records.

use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use dbsnap_backend_api::{
    BackendError, CutOff, LocalHost, NativeStream, ReceiveAt, ReceivingHost, Remains,
    SnapshotBackend, SnapshotName, SnapshotSet, StreamParent, Volume,
};
use serde::{Deserialize, Serialize};

use super::chain::{self, Parent};
use crate::backends::Backends;
use crate::destination::Destination;
use crate::journal::{Journal, RemoteDest, Resource};
use crate::records::Records;

/// The streams of a run that may be cut off, and what the next run needs to go on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resumable {
    pub set: SnapshotSet,
    /// The backup the run was writing (never published).
    pub backup: String,
    /// The received copy each volume's stream makes ([`dbsnap_backend_api::Received::id`]).
    pub received: Vec<String>,
    /// What the streams start from (a published backup's copies, kept by its parent
    /// record); none for full streams.
    pub parent: Option<Parent>,
    pub dest: PathBuf,
    pub datadir: PathBuf,
    /// The stream (`zfs-send`).
    pub method: String,
    /// The backup host, for an ssh destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteDest>,
    pub created_at: DateTime<Utc>,
}

const RECORDS: Records = Records("resumable");

/// Why `release` leaves a record's snapshot and copies at the start of a backup.
pub const HANDED_OVER: &str =
    "its stream was cut off; the next backup resumes it (`dbsnap cleanup` releases it)";

/// Whether the snapshot set `name` is a resumable record's.
pub fn is_resumable(state_dir: &Path, name: &SnapshotName) -> bool {
    RECORDS.exists(state_dir, name)
}

/// Whether a resumable record names the received copy `id`.
pub fn names_received(state_dir: &Path, id: &str) -> anyhow::Result<bool> {
    Ok(Resumable::list(state_dir)?
        .iter()
        .any(|r| r.received.iter().any(|i| i == id)))
}

/// Forget the record of `name`, whose snapshot was released, if there is one.
pub fn forget(state_dir: &Path, name: &SnapshotName) -> anyhow::Result<()> {
    match is_resumable(state_dir, name) {
        true => RECORDS.remove(state_dir, name),
        false => Ok(()),
    }
}

impl Resumable {
    pub fn write(&self, state_dir: &Path) -> anyhow::Result<()> {
        RECORDS.write(state_dir, &self.set.name, self)
    }

    /// Every record, oldest first.
    pub fn list(state_dir: &Path) -> anyhow::Result<Vec<Resumable>> {
        let mut all: Vec<Resumable> = RECORDS.list(state_dir)?;
        all.sort_by_key(|r| r.created_at);
        Ok(all)
    }

    fn serves(&self, dest: &Path, datadir: &Path) -> bool {
        self.dest == dest && self.datadir == datadir
    }

    fn describe(&self) -> String {
        format!(
            "snapshot {} and the {} stream of interrupted backup {}",
            self.set.name, self.method, self.backup
        )
    }
}

/// A stream failed: the record (written before it started) takes the run's snapshot and
/// received copies from the journal, so that releasing the failed run leaves them for
/// the next backup. Recorded first, forgotten after: never neither.
pub fn hand_over(record: &Resumable, journal: &mut Journal) -> anyhow::Result<()> {
    let received: Vec<Resource> = journal
        .entries()
        .iter()
        .filter(|e| matches!(&e.resource, Resource::Received { id, .. } if record.received.contains(id)))
        .map(|e| e.resource.clone())
        .collect();
    for resource in &received {
        journal.forget(resource)?;
    }
    journal.forget(&Resource::Snapshot {
        set: record.set.clone(),
    })?;
    tracing::warn!(
        "kept snapshot {} and what its stream delivered: the next backup resumes the stream \
         (`dbsnap cleanup` releases them instead)",
        record.set.name
    );
    Ok(())
}

/// An interrupted run's streams, checked: what the receiving side holds of each copy.
#[derive(Debug)]
pub struct Interrupted {
    pub record: Resumable,
    /// Of each volume's copy, in the set's order.
    pub remains: Vec<Remains>,
}

/// A record that cannot be continued, and why.
#[derive(Debug)]
pub struct Dropped {
    pub record: Resumable,
    pub why: String,
}

/// What this backup does about interrupted runs' streams.
#[derive(Debug, Default)]
pub struct Found {
    /// The newest interrupted run, to be completed first.
    pub interrupted: Option<Interrupted>,
    /// Records to release before streaming.
    pub dropped: Vec<Dropped>,
}

/// Whether `set` is on the source, with the same snapshots.
async fn on_source(backend: &dyn SnapshotBackend, volumes: &[Volume], set: &SnapshotSet) -> bool {
    backend.list(volumes).await.is_ok_and(|sets| {
        sets.iter().any(|s| {
            s.name == set.name
                && s.snapshots
                    .iter()
                    .map(|v| &v.id)
                    .eq(set.snapshots.iter().map(|v| &v.id))
        })
    })
}

/// The interrupted runs whose streams went to `dest` for `datadir`: the newest one, if
/// it can be continued, and the others to release. Only reads (before the lock).
pub async fn find(
    state_dir: &Path,
    dest: &dyn Destination,
    datadir: &Path,
    stream: &dyn NativeStream,
    backend: &dyn SnapshotBackend,
    volumes: &[Volume],
) -> anyhow::Result<Found> {
    let mut records: Vec<Resumable> = Resumable::list(state_dir)?
        .into_iter()
        .filter(|r| r.serves(dest.location(), datadir))
        .collect();
    let Some(newest) = records.pop() else {
        return Ok(Found::default());
    };
    let mut dropped: Vec<Dropped> = records
        .into_iter()
        .map(|record| Dropped {
            why: format!("backup {} was interrupted later", newest.backup),
            record,
        })
        .collect();
    let host: &dyn ReceivingHost = match dest.remote() {
        Some(remote) => remote,
        None => &LocalHost,
    };
    match check(&newest, stream, backend, volumes, host).await? {
        Ok(remains) => Ok(Found {
            interrupted: Some(Interrupted {
                record: newest,
                remains,
            }),
            dropped,
        }),
        Err(why) => {
            dropped.push(Dropped {
                record: newest,
                why,
            });
            Ok(Found {
                interrupted: None,
                dropped,
            })
        }
    }
}

/// What the receiving side holds of each of `record`'s copies, or why the record cannot
/// be continued.
async fn check(
    record: &Resumable,
    stream: &dyn NativeStream,
    backend: &dyn SnapshotBackend,
    volumes: &[Volume],
    host: &dyn ReceivingHost,
) -> anyhow::Result<Result<Vec<Remains>, String>> {
    let interrupted = &record.backup;
    if record.method != stream.method() {
        return Ok(Err(format!(
            "the interrupted backup {interrupted} was a {} stream",
            record.method
        )));
    }
    if record.received.len() != record.set.snapshots.len() {
        return Ok(Err(format!(
            "the record of interrupted backup {interrupted} is incomplete"
        )));
    }
    let roots = |set: &SnapshotSet| {
        set.snapshots
            .iter()
            .map(|s| s.volume.root.clone())
            .collect::<Vec<_>>()
    };
    if roots(&record.set) != volumes.iter().map(|v| v.root.clone()).collect::<Vec<_>>() {
        return Ok(Err(format!(
            "the server's volumes changed since the interrupted backup {interrupted}"
        )));
    }
    if !on_source(backend, volumes, &record.set).await {
        return Ok(Err(format!(
            "the snapshot {} of the interrupted backup {interrupted} is gone from the source",
            record.set.name
        )));
    }
    let mut remains = Vec::new();
    for (snapshot, id) in record.set.snapshots.iter().zip(&record.received) {
        match stream.remains(snapshot, host, id).await? {
            Remains::Unusable(why) => return Ok(Err(why)),
            r => remains.push(r),
        }
    }
    if remains.iter().all(|r| *r == Remains::Nothing) {
        return Ok(Err(format!(
            "nothing of the interrupted backup {interrupted}'s stream reached the destination"
        )));
    }
    if let Some(parent) = record
        .parent
        .as_ref()
        .filter(|_| remains.contains(&Remains::Nothing))
    {
        if !on_source(backend, volumes, &parent.set).await {
            return Ok(Err(format!(
                "the base snapshot {} of the interrupted backup {interrupted} is gone from \
                 the source",
                parent.set.name
            )));
        }
        // A stream not started then goes from the base: its copy must still end its chain.
        let not_started = remains
            .iter()
            .enumerate()
            .filter(|(_, r)| **r == Remains::Nothing);
        for (index, _) in not_started {
            let base = &parent.received[index];
            if stream
                .remains(&parent.set.snapshots[index], host, base)
                .await?
                != Remains::Complete
            {
                return Ok(Err(format!(
                    "the base copy {base} of the interrupted backup {interrupted} no longer ends \
                     its chain at the destination"
                )));
            }
        }
    }
    Ok(Ok(remains))
}

impl Interrupted {
    /// Complete the interrupted run's streams: the first part of the backup that resumes
    /// them. Returns the stream bytes.
    pub async fn complete(
        &self,
        stream: &dyn NativeStream,
        at: ReceiveAt<'_>,
        bwlimit: Option<u64>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64, BackendError> {
        let record = &self.record;
        let mut sent = 0u64;
        let volumes = record.set.snapshots.iter().zip(&record.received);
        for (index, ((snapshot, received), remains)) in volumes.zip(&self.remains).enumerate() {
            let how = match remains {
                Remains::Complete => continue,
                Remains::Partial { .. } => "from where it was cut off",
                Remains::Nothing | Remains::Unusable(_) => "whole (it had not started)",
            };
            tracing::info!(
                "completing the stream of {} into {received} (interrupted backup {}) {how}",
                snapshot.id,
                record.backup
            );
            let parent = record.parent.as_ref().map(|p| StreamParent {
                snapshot: &p.set.snapshots[index],
                received: &p.received[index],
            });
            let so_far = sent;
            let report = |n| progress(so_far + n);
            let cut = CutOff { received, remains };
            sent += stream
                .complete(snapshot, parent, at, cut, bwlimit, &report)
                .await?;
        }
        Ok(sent)
    }

    /// The interrupted run's snapshot and (completed) copies, as the base of this run's
    /// streams.
    pub fn as_parent(&self) -> Parent {
        let r = &self.record;
        Parent {
            set: r.set.clone(),
            backup: r.backup.clone(),
            received: r.received.clone(),
            dest: r.dest.clone(),
            datadir: r.datadir.clone(),
            method: r.method.clone(),
            created_at: r.created_at,
        }
    }
}

/// Release a record: delete its copies on `host` (what arrived, and what a cut-off
/// receive kept: aborted), release its snapshot (unless it became a parent), forget the
/// record. Idempotent.
pub async fn retire(
    state_dir: &Path,
    record: &Resumable,
    backend: &dyn SnapshotBackend,
    host: &dyn ReceivingHost,
) -> anyhow::Result<()> {
    let stream = backend.native_stream().ok_or_else(|| {
        anyhow::anyhow!(
            "the {} backend has no stream to delete {} with",
            backend.name(),
            record.received.join(", ")
        )
    })?;
    for id in &record.received {
        stream.delete_received(host, id).await.with_context(|| {
            format!(
                "deleting {id}, a copy of interrupted backup {}",
                record.backup
            )
        })?;
    }
    if !chain::is_parent(state_dir, &record.set.name) {
        backend
            .release(&record.set)
            .await
            .with_context(|| format!("releasing snapshot {}", record.set.name))?;
    }
    RECORDS.remove(state_dir, &record.set.name)
}

/// Release the records for `only` (a destination and datadir; every record when
/// `None`), each on the host its copies are on. Returns what was released.
pub async fn release_records(
    state_dir: &Path,
    backends: &dyn Backends,
    only: Option<(&Path, &Path)>,
) -> anyhow::Result<Vec<String>> {
    let mut released = Vec::new();
    for record in Resumable::list(state_dir)? {
        if only.is_some_and(|(dest, datadir)| !record.serves(dest, datadir)) {
            continue;
        }
        let backend = backends.open_named(&record.set.backend)?;
        match &record.remote {
            Some(remote) => {
                let host = crate::destination::ssh::SshDir::reopen(remote, state_dir)?;
                retire(state_dir, &record, backend.as_ref(), &host).await?;
            }
            None => retire(state_dir, &record, backend.as_ref(), &LocalHost).await?,
        }
        tracing::info!("released {}", record.describe());
        released.push(record.describe());
    }
    Ok(released)
}

/// The interrupted runs `dbsnap list` shows for `dest`.
pub fn pending(state_dir: &Path, dest: &Path) -> anyhow::Result<Vec<String>> {
    Ok(Resumable::list(state_dir)?
        .into_iter()
        .filter(|r| r.dest == dest)
        .map(|r| {
            format!(
                "backup {} was cut off: the next backup resumes its {} (snapshot {} stays on \
                 the source until then; `dbsnap cleanup` releases it)",
                r.backup, r.method, r.set.name
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbsnap_backend_api::VolumeSnapshot;

    fn record(name: &str, backup: &str, minutes: i64) -> Resumable {
        Resumable {
            set: SnapshotSet {
                backend: "zfs".into(),
                name: SnapshotName::new(name).unwrap(),
                snapshots: vec![VolumeSnapshot {
                    volume: Volume {
                        id: "tank/db".into(),
                        root: "/srv/db".into(),
                        fstype: "zfs".into(),
                    },
                    id: format!("tank/db@{name}"),
                }],
            },
            backup: backup.into(),
            received: vec![format!("bk/dbsnap-received/{name}.0.stream@{name}")],
            parent: None,
            dest: "/backups".into(),
            datadir: "/srv/db/data".into(),
            method: "zfs-send".into(),
            remote: None,
            created_at: DateTime::from_timestamp(1_800_000_000 + minutes * 60, 0).unwrap(),
        }
    }

    #[test]
    fn records_round_trip_list_oldest_first_and_name_their_copies() {
        let state = tempfile::tempdir().unwrap();
        let newer = record("dbsnap-b", "b", 2);
        let older = record("dbsnap-a", "a", 1);
        newer.write(state.path()).unwrap();
        older.write(state.path()).unwrap();
        assert_eq!(
            Resumable::list(state.path()).unwrap(),
            vec![older.clone(), newer.clone()]
        );
        assert!(is_resumable(state.path(), &older.set.name));
        assert!(names_received(state.path(), &newer.received[0]).unwrap());
        assert!(!names_received(state.path(), "bk/dbsnap-received/x.0.stream@x").unwrap());
        forget(state.path(), &older.set.name).unwrap();
        forget(state.path(), &older.set.name).unwrap();
        assert!(!is_resumable(state.path(), &older.set.name));
        assert_eq!(
            pending(state.path(), Path::new("/backups")).unwrap().len(),
            1
        );
        assert!(pending(state.path(), Path::new("/elsewhere"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_failed_stream_hands_its_snapshot_and_copies_to_the_record() {
        let state = tempfile::tempdir().unwrap();
        let lock = crate::journal::RunLock::acquire(state.path()).unwrap();
        let mut journal = Journal::open(state.path(), &lock).unwrap();
        let r = record("dbsnap-a", "a", 1);
        let partial = PathBuf::from("/backups/a.partial");
        let snapshot = Resource::Snapshot { set: r.set.clone() };
        let mount = Resource::Mount {
            set: r.set.clone(),
            workdir: state.path().join("runs/a"),
        };
        let received = Resource::Received {
            backend: "zfs".into(),
            id: r.received[0].clone(),
            partial: partial.clone(),
            remote: None,
        };
        let other = Resource::Partial { dir: partial };
        for resource in [&snapshot, &mount, &other, &received] {
            journal.record("a", resource.clone()).unwrap();
        }
        r.write(state.path()).unwrap();
        hand_over(&r, &mut journal).unwrap();
        let left: Vec<&Resource> = journal.entries().iter().map(|e| &e.resource).collect();
        assert_eq!(left, vec![&mount, &other]);
        assert!(is_resumable(state.path(), &r.set.name));
    }
}
