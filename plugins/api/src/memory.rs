//! A backend that keeps its snapshots in memory (feature `memory`), for tests of
//! dbsnap's flow that need no root and no disks: phase order, journal discipline,
//! failure paths. It follows the contract of [`SnapshotBackend`] (idempotent removal,
//! nothing created before `snapshot`), records every call, and fails on request.
//!
//! Clones share their state, so a test keeps one handle and gives another to the code
//! under test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    BackendError, Health, Probe, ReadPath, Result, SnapshotBackend, SnapshotName, SnapshotSet,
    Volume, VolumeSnapshot,
};

/// Called before the backend creates something (`"snapshot"`, `"mount"`), with the
/// set: a test checks there that the resource is journaled already.
pub type BeforeCreate = dyn Fn(&str, &SnapshotSet) + Send + Sync;

#[derive(Default)]
struct State {
    calls: Vec<String>,
    snapshots: BTreeSet<String>,
    mounted: BTreeSet<String>,
    fail: BTreeSet<String>,
    slow_snapshot: Option<Duration>,
    before_create: Option<Arc<BeforeCreate>>,
}

#[derive(Clone, Default)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
}

impl MemoryBackend {
    pub const NAME: &'static str = "memory";

    /// Every call so far, by method name (`probe`, `plan`, `snapshot`, `mount`, ...).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Names of the snapshot sets that exist.
    pub fn snapshots(&self) -> Vec<String> {
        self.lock().snapshots.iter().cloned().collect()
    }

    /// Names of the snapshot sets that are mounted.
    pub fn mounted(&self) -> Vec<String> {
        self.lock().mounted.iter().cloned().collect()
    }

    /// Make `method` fail from now on (until [`MemoryBackend::heal`]).
    pub fn fail(&self, method: &str) {
        self.lock().fail.insert(method.to_string());
    }

    pub fn heal(&self) {
        self.lock().fail.clear();
    }

    /// Make `snapshot` take this long.
    pub fn slow_snapshot(&self, by: Duration) {
        self.lock().slow_snapshot = Some(by);
    }

    pub fn before_create(&self, check: impl Fn(&str, &SnapshotSet) + Send + Sync + 'static) {
        self.lock().before_create = Some(Arc::new(check));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    /// Record the call; fail if asked to.
    fn call(&self, method: &str) -> Result<()> {
        let mut state = self.lock();
        state.calls.push(method.to_string());
        match state.fail.contains(method) {
            true => Err(BackendError::Invalid(format!(
                "injected failure in {method}"
            ))),
            false => Ok(()),
        }
    }

    fn creating(&self, what: &str, set: &SnapshotSet) {
        let check = self.lock().before_create.clone();
        if let Some(check) = check {
            check(what, set);
        }
    }
}

#[async_trait]
impl SnapshotBackend for MemoryBackend {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn probe(&self, paths: &[PathBuf]) -> Result<Probe> {
        self.call("probe")?;
        let volumes = paths
            .iter()
            .map(|p| Volume {
                id: format!("mem:{}", p.display()),
                root: p.clone(),
                fstype: "memory".into(),
            })
            .collect();
        Ok(Probe {
            volumes,
            atomic: true,
        })
    }

    async fn plan(&self, volumes: &[Volume], name: &SnapshotName) -> Result<SnapshotSet> {
        self.call("plan")?;
        Ok(set_of(volumes, name))
    }

    async fn snapshot(&self, set: &SnapshotSet) -> Result<()> {
        self.call("snapshot")?;
        let slow = self.lock().slow_snapshot;
        if let Some(by) = slow {
            tokio::time::sleep(by).await;
        }
        self.creating("snapshot", set);
        self.lock().snapshots.insert(set.name.to_string());
        Ok(())
    }

    async fn mount(&self, set: &SnapshotSet, workdir: &Path) -> Result<Vec<ReadPath>> {
        self.call("mount")?;
        self.creating("mount", set);
        self.lock().mounted.insert(set.name.to_string());
        Ok(set
            .snapshots
            .iter()
            .enumerate()
            .map(|(i, s)| ReadPath {
                origin_root: s.volume.root.clone(),
                frozen_root: workdir.join(i.to_string()),
            })
            .collect())
    }

    async fn unmount(&self, set: &SnapshotSet, _workdir: &Path) -> Result<()> {
        self.call("unmount")?;
        self.lock().mounted.remove(set.name.as_str());
        Ok(())
    }

    async fn release(&self, set: &SnapshotSet) -> Result<()> {
        self.call("release")?;
        self.lock().snapshots.remove(set.name.as_str());
        Ok(())
    }

    async fn list(&self, volumes: &[Volume]) -> Result<Vec<SnapshotSet>> {
        self.call("list")?;
        self.snapshots()
            .into_iter()
            .map(|name| Ok(set_of(volumes, &SnapshotName::new(name)?)))
            .collect()
    }

    async fn health(&self, _set: &SnapshotSet) -> Result<Health> {
        Ok(Health::Ok)
    }
}

fn set_of(volumes: &[Volume], name: &SnapshotName) -> SnapshotSet {
    SnapshotSet {
        backend: MemoryBackend::NAME.into(),
        name: name.clone(),
        snapshots: volumes
            .iter()
            .map(|v| VolumeSnapshot {
                volume: v.clone(),
                id: format!("{}@{name}", v.id),
            })
            .collect(),
    }
}
