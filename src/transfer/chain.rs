//! The parent chain of native streams: after the first backup only the difference
//! from the previous backup's snapshot (the *parent*) is sent, so the parent must
//! outlive its backup run:
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
//!
//! dbsnap's copy engine keeps a parent too, by the same rules ([`COPY_PARENT`]): the
//! snapshot a file-tree backup was copied from, whose extents tell the next incremental
//! which blocks it need not read (see `tree::keeps_parent`, `local::extents`). Its
//! record has no received copies: the backup's files are its copy.
//!
//! This module is the only one that reads or writes parent records.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use dbsnap_backend_api::{NativeStream, SnapshotBackend, SnapshotName, SnapshotSet, Volume};
use serde::{Deserialize, Serialize};

use crate::destination::{BaseOf, Destination};
use crate::journal::{Journal, Resource};
use crate::records::Records;

/// A snapshot kept on the source as the base of the next incremental stream, or of the
/// next file-tree copy ([`COPY_PARENT`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parent {
    pub set: SnapshotSet,
    /// The backup that holds the snapshot's received copy.
    pub backup: String,
    /// The received copy of each snapshot of `set` ([`Received::id`]).
    pub received: Vec<String>,
    pub dest: PathBuf,
    pub datadir: PathBuf,
    /// The stream (`btrfs-send`), or [`COPY_PARENT`].
    pub method: String,
    pub created_at: DateTime<Utc>,
}

const RECORDS: Records = Records("parents");

/// The `method` of a parent kept for dbsnap's copy engine.
pub const COPY_PARENT: &str = "copy";

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

/// Where this backup's stream starts.
#[derive(Debug)]
pub enum Chain {
    /// No earlier backup made with this stream: a full stream, the first of a chain.
    Start,
    /// From this parent: only the difference is sent.
    Continue(Parent),
    /// The chain cannot continue, for this reason: a full stream, the chain starts again.
    Broken(String),
}

/// The chain for this backup's stream: the newest parent record for this destination
/// and datadir, if it still holds.
pub async fn find_parent(
    state_dir: &Path,
    dest: &dyn Destination,
    datadir: &Path,
    stream: &dyn NativeStream,
    backend: &dyn SnapshotBackend,
    volumes: &[Volume],
) -> anyhow::Result<Chain> {
    let Some(parent) = Parent::list(state_dir)?
        .into_iter()
        .rfind(|p| p.serves(dest.location(), datadir) && p.method == stream.method())
    else {
        return Ok(Chain::Start);
    };
    if parent.received.len() != parent.set.snapshots.len() {
        return Ok(Chain::Broken(format!(
            "the record of base snapshot {} is incomplete",
            parent.set.name
        )));
    }
    let Some(base) = dest.resolve(&parent.backup).await? else {
        return Ok(Chain::Broken(format!(
            "the base backup {} is gone",
            dest.location().join(&parent.backup).display()
        )));
    };
    // At the destination: on a backup host, checked there.
    for copy in base.manifest.stored.iter().map(|s| base.path.join(&s.path)) {
        if !dest.holds(&copy).await? {
            return Ok(Chain::Broken(format!(
                "the base backup's copy {} is gone",
                copy.display()
            )));
        }
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
        return Ok(Chain::Broken(format!(
            "backup {newer} is newer than the base backup {}",
            parent.backup
        )));
    }
    let roots = |vs: Vec<&Volume>| vs.into_iter().map(|v| v.root.clone()).collect::<Vec<_>>();
    if roots(parent.set.snapshots.iter().map(|s| &s.volume).collect())
        != roots(volumes.iter().collect())
    {
        return Ok(Chain::Broken(format!(
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
        return Ok(Chain::Broken(format!(
            "the base backup's snapshot {} is gone from the source",
            parent.set.name
        )));
    }
    Ok(Chain::Continue(parent))
}

/// The parent snapshot of a file-tree incremental built on backup `base`: the newest
/// parent record of the copy engine for this destination and datadir, if it is `base`'s
/// snapshot and of the same volumes as `set` (this backup's snapshot). `Err` says why
/// there is none, for the log: the copy then reads every changed file.
pub fn copy_parent(
    state_dir: &Path,
    dest: &Path,
    datadir: &Path,
    base: &str,
    set: &SnapshotSet,
) -> Result<Parent, String> {
    let parents = Parent::list(state_dir).map_err(|e| format!("{e:#}"))?;
    let Some(parent) = parents
        .into_iter()
        .rfind(|p| p.serves(dest, datadir) && p.method == COPY_PARENT)
    else {
        return Err(format!("no snapshot of base backup {base} is kept"));
    };
    if parent.backup != base {
        return Err(format!(
            "the kept snapshot {} is backup {}'s, not the base backup {base}'s",
            parent.set.name, parent.backup
        ));
    }
    let roots = |s: &SnapshotSet| {
        s.snapshots
            .iter()
            .map(|v| v.volume.root.clone())
            .collect::<Vec<_>>()
    };
    if parent.set.backend != set.backend || roots(&parent.set) != roots(set) {
        return Err(format!(
            "the server's volumes changed since the base backup {base}"
        ));
    }
    Ok(parent)
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

/// Unmount the published backup's snapshot but keep it: the next stream is computed
/// against it. Its parent record is written before it leaves the journal, so an
/// interruption leaves it either journaled (released by cleanup) or recorded.
pub async fn keep_as_parent(
    state_dir: &Path,
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
    workdir: &Path,
    parent: &Parent,
) -> anyhow::Result<()> {
    crate::release::unmount(backend, journal, &parent.set, workdir).await?;
    parent.write(state_dir)?;
    journal.forget(&Resource::Snapshot {
        set: parent.set.clone(),
    })?;
    tracing::info!(
        "kept snapshot {} as the base of the next incremental ({})",
        parent.set.name,
        parent.method
    );
    Ok(())
}

/// Release the parents of `done`'s destination and datadir other than `keep`: a newer
/// backup took their place, or backups are no longer made with a stream. The first is
/// freed in steps at `done.spread`'s pace where the backend offers steps (its data is as
/// large as a run's own snapshot's); it is journaled under the run before its record
/// goes, so that a run killed while it is freed leaves it to `cleanup`. A failure is a
/// warning: the backup is complete, and the next run (or `cleanup`) tries again.
pub async fn retire_parents(done: &mut super::Finish<'_>, keep: Option<&SnapshotName>) {
    let parents = match Parent::list(done.state_dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("{e:#}");
            return;
        }
    };
    for parent in parents {
        if !parent.serves(done.dest, &done.manifest.server.datadir)
            || Some(&parent.set.name) == keep
        {
            continue;
        }
        let resource = Resource::Snapshot {
            set: parent.set.clone(),
        };
        let released = async {
            let backend = done.backends.open_named(&parent.set.backend)?;
            done.journal.record(&done.manifest.name, resource.clone())?;
            parent.remove(done.state_dir)?;
            let spread = done.spread.take();
            crate::release::destroy(backend.as_ref(), done.state_dir, &parent.set, spread).await?;
            done.journal.forget(&resource)
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
    fn a_copy_parent_serves_only_the_backup_it_was_kept_for_on_the_same_volumes() {
        let state = tempfile::tempdir().unwrap();
        let mut kept = parent("dbsnap-a", "a", "/backups", 1);
        kept.method = COPY_PARENT.into();
        kept.received.clear();
        let this = parent("dbsnap-b", "b", "/backups", 2).set;
        let find = |base: &str, set: &SnapshotSet| {
            copy_parent(
                state.path(),
                Path::new("/backups"),
                Path::new("/srv/db/data"),
                base,
                set,
            )
        };
        let e = find("a", &this).unwrap_err();
        assert!(e.contains("no snapshot of base backup a"), "{e}");
        // A stream's parent is not the copy engine's.
        parent("dbsnap-s", "a", "/backups", 0)
            .write(state.path())
            .unwrap();
        assert!(find("a", &this).is_err());
        kept.write(state.path()).unwrap();
        assert_eq!(find("a", &this), Ok(kept.clone()));
        let e = find("z", &this).unwrap_err();
        assert!(e.contains("not the base backup z"), "{e}");
        let mut moved = this.clone();
        moved.snapshots[0].volume.root = "/srv/other".into();
        let e = find("a", &moved).unwrap_err();
        assert!(e.contains("volumes changed"), "{e}");
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
