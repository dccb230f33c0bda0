//! The flow without a server, a filesystem or root: an in-memory backend, a fake lock
//! and a fake transfer record one timeline; the journal is read at every creation.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dbsnap_backend_api::memory::MemoryBackend;
use dbsnap_backend_api::{SnapshotBackend, Volume};

use super::plan::{LockPlan, Plan};
use super::prepare::{Prepared, Survey};
use super::window::{Locker, Window};
use super::{backup_prepared, snapshot_prepared, KeepMounted, Kept, Pacing, Published};
use crate::backends::Backends;
use crate::config::Config;
use crate::db::layout::ServerPaths;
use crate::db::lock_mode::{Choice, LockMode};
use crate::db::{Coordinates, Layout, LockRecord};
use crate::destination::local::LocalDir;
use crate::destination::{Destination, Entry as DestEntry, ReceivedCopies};
use crate::error::{class_of, fail, Class};
use crate::journal::{Entry, Journal, Resource, RunLock};
use crate::manifest::{ServerRecord, MANIFEST_FILE};
use crate::transfer::{Copied, Finish, Source, Target, Transfer, TransferStats};

type Timeline = Arc<Mutex<Vec<String>>>;

fn note(timeline: &Timeline, what: impl Into<String>) {
    timeline.lock().unwrap().push(what.into());
}

/// One test's world: a state directory, a destination directory, the in-memory
/// backend, and the timeline every fake writes to.
struct World {
    state: tempfile::TempDir,
    dest: tempfile::TempDir,
    backend: MemoryBackend,
    timeline: Timeline,
    /// Where in the window the fake lock fails, if anywhere.
    fail_coordinates: bool,
}

impl World {
    fn new() -> World {
        let world = World {
            state: tempfile::tempdir().unwrap(),
            dest: tempfile::tempdir().unwrap(),
            backend: MemoryBackend::default(),
            timeline: Timeline::default(),
            fail_coordinates: false,
        };
        // Every resource must be in the journal (on disk) before the backend creates it.
        let journal = world.state.path().join("journal.json");
        let timeline = world.timeline.clone();
        world.backend.before_create(move |what, set| {
            let text = std::fs::read_to_string(&journal).unwrap_or_default();
            let entries: Vec<Entry> = serde_json::from_str(&text).unwrap_or_default();
            let journaled = entries.iter().any(|e| match (&e.resource, what) {
                (Resource::Snapshot { set: s }, "snapshot")
                | (Resource::Mount { set: s, .. }, "mount") => s == set,
                _ => false,
            });
            note(
                &timeline,
                format!("{what}{}", if journaled { "" } else { " NOT JOURNALED" }),
            );
        });
        world
    }

    fn plan(&self) -> Plan {
        let config = Config::parse(&format!(
            "state_dir = {:?}\n[mysql]\nsocket = \"/run/mysqld/mysqld.sock\"\n[snapshot]\nbackend = \"btrfs\"\n",
            self.state.path()
        ))
        .unwrap();
        Plan::new(&config, false).unwrap()
    }

    fn prepared(&self) -> Prepared {
        let datadir = Path::new("/srv/db/data");
        Prepared {
            survey: Survey {
                server: ServerRecord {
                    version: crate::db::version::ServerVersion::from_text("10.11.19-MariaDB"),
                    hostname: "db1".into(),
                    datadir: datadir.into(),
                    binlog_basename: None,
                },
                layout: Layout::from_server(datadir.into(), ServerPaths::default()),
                volumes: vec![Volume {
                    id: "mem:/srv/db".into(),
                    root: "/srv/db".into(),
                    fstype: "memory".into(),
                }],
                atomic: true,
                lock: Choice {
                    mode: LockMode::BackupStage,
                    reason: "a test".into(),
                    exact_coordinates: true,
                },
                is_replica: false,
                free_space: Vec::new(),
                data_bytes: 0,
            },
            locker: Box::new(FakeLocker {
                timeline: self.timeline.clone(),
                fail_coordinates: self.fail_coordinates,
            }),
        }
    }

    fn journal(&self) -> (RunLock, Journal) {
        let lock = RunLock::acquire(self.state.path()).unwrap();
        let journal = Journal::open(self.state.path(), &lock).unwrap();
        (lock, journal)
    }

    fn timeline(&self) -> Vec<String> {
        self.timeline.lock().unwrap().clone()
    }

    async fn backup(&self, plan: &Plan, transfer: &FakeTransfer) -> anyhow::Result<()> {
        let (_lock, mut journal) = self.journal();
        let dest = LocalDir::new(self.dest.path());
        let to = Published {
            dest: &dest,
            transfer,
            verify: false,
            pacing: Pacing::unpaced(0),
        };
        let at = chrono::Utc::now();
        let outcome =
            backup_prepared(plan, to, self.prepared(), at, &self.backend, &mut journal).await;
        outcome.map(|_| ())
    }

    /// `dbsnap cleanup` over what a run left: afterwards nothing may be left anywhere.
    async fn cleanup_leaves_nothing(&self) {
        let (_lock, mut journal) = self.journal();
        let backends = TestBackends(self.backend.clone());
        let dest = self.dest.path();
        let scope = crate::release::Scope {
            state_dir: self.state.path(),
            dest: Some(dest),
            backends: &backends,
            backup: None,
            keep_partials: false,
        };
        crate::release::release_all(&scope, &mut journal)
            .await
            .unwrap();
        assert!(journal.entries().is_empty(), "{:?}", journal.entries());
        assert!(self.backend.snapshots().is_empty(), "snapshots left");
        assert!(self.backend.mounted().is_empty(), "mounts left");
        let dest = LocalDir::new(self.dest.path());
        let entries = dest.entries().await.unwrap();
        assert!(
            entries.iter().all(|e| matches!(e, DestEntry::Backup(_))),
            "partials left: {entries:?}"
        );
    }
}

struct FakeLocker {
    timeline: Timeline,
    fail_coordinates: bool,
}

#[async_trait]
impl Locker for FakeLocker {
    async fn lock(
        &mut self,
        _plan: &LockPlan,
        _mode: LockMode,
        _volumes: &[Volume],
    ) -> anyhow::Result<Box<dyn Window>> {
        note(&self.timeline, "lock");
        Ok(Box::new(FakeWindow {
            timeline: self.timeline.clone(),
            fail_coordinates: self.fail_coordinates,
        }))
    }

    async fn close(self: Box<Self>) {}
}

struct FakeWindow {
    timeline: Timeline,
    fail_coordinates: bool,
}

#[async_trait]
impl Window for FakeWindow {
    async fn coordinates(&mut self, _replica: bool) -> anyhow::Result<Coordinates> {
        note(&self.timeline, "coordinates");
        match self.fail_coordinates {
            true => Err(anyhow::anyhow!("SHOW MASTER STATUS failed (injected)")),
            false => Ok(Coordinates::default()),
        }
    }

    fn held_for(&self) -> Duration {
        Duration::ZERO
    }

    async fn release(self: Box<Self>, reason: String) -> anyhow::Result<LockRecord> {
        note(&self.timeline, "unlock");
        let now = chrono::Utc::now();
        Ok(LockRecord {
            mode: LockMode::BackupStage,
            reason,
            prelude_ms: 0.0,
            wait_ms: 0.0,
            hold_ms: 0.0,
            attempts: 1,
            queued_sessions: 0,
            acquired_at: now,
            released_at: now,
        })
    }
}

/// How the fake transfer misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Sabotage {
    None,
    /// The copy fails.
    Copy,
    /// The copy leaves a directory where the manifest goes: publishing fails.
    Publish,
}

struct FakeTransfer {
    timeline: Timeline,
    sabotage: Sabotage,
}

#[async_trait]
impl Transfer for FakeTransfer {
    fn describe(&self) -> String {
        "fake".into()
    }

    fn needed_bytes(&self) -> u64 {
        0
    }

    async fn copy(&self, _from: Source<'_>, into: Target<'_>) -> anyhow::Result<Copied> {
        let journaled =
            into.journal.entries().iter().any(
                |e| matches!(&e.resource, Resource::Partial { dir } if *dir == into.partial.dir),
            );
        note(
            &self.timeline,
            format!("copy{}", if journaled { "" } else { " NOT JOURNALED" }),
        );
        std::fs::write(into.partial.dir.join("data"), "frozen").unwrap();
        match self.sabotage {
            Sabotage::Copy => return Err(fail(Class::Transfer, "rsync failed (injected)")),
            Sabotage::Publish => std::fs::create_dir(into.partial.dir.join(MANIFEST_FILE)).unwrap(),
            Sabotage::None => {}
        }
        Ok(Copied {
            stats: TransferStats::default(),
            stored: Vec::new(),
        })
    }

    async fn finish(&self, done: Finish<'_>) -> anyhow::Result<()> {
        note(&self.timeline, "finish");
        let own = crate::release::OwnRun {
            state_dir: done.state_dir,
            spread: done.spread,
        };
        crate::release::release_own(done.backend, done.journal, done.set, done.workdir, own).await
    }
}

struct TestBackends(MemoryBackend);

impl Backends for TestBackends {
    fn open_named(&self, name: &str) -> anyhow::Result<Box<dyn SnapshotBackend>> {
        assert_eq!(name, MemoryBackend::NAME);
        Ok(Box::new(self.0.clone()))
    }
}

#[async_trait]
impl ReceivedCopies for TestBackends {
    async fn delete_received(
        &self,
        _backend: &str,
        _id: &str,
        _host: &dyn dbsnap_backend_api::ReceivingHost,
    ) -> anyhow::Result<()> {
        Ok(())
    }
}

fn transfer(world: &World, sabotage: Sabotage) -> FakeTransfer {
    FakeTransfer {
        timeline: world.timeline.clone(),
        sabotage,
    }
}

const WINDOW: [&str; 4] = ["lock", "coordinates", "snapshot", "unlock"];

#[tokio::test]
async fn phases_run_in_order_and_every_resource_is_journaled_before_it_is_created() {
    let world = World::new();
    let plan = world.plan();
    world
        .backup(&plan, &transfer(&world, Sabotage::None))
        .await
        .unwrap();
    let expected: Vec<&str> = WINDOW
        .into_iter()
        .chain(["mount", "copy", "finish"])
        .collect();
    assert_eq!(world.timeline(), expected);
    assert_eq!(
        world.backend.calls(),
        ["list", "plan", "snapshot", "mount", "unmount", "release"]
    );
    let (_lock, journal) = world.journal();
    assert!(journal.entries().is_empty(), "{:?}", journal.entries());
    let backups = LocalDir::new(world.dest.path()).backups().await.unwrap();
    assert_eq!(backups.len(), 1);
    assert!(backups[0].path.join("data").is_file());
}

#[tokio::test]
async fn the_lock_is_released_before_an_error_from_inside_the_window_is_returned() {
    // The snapshot fails.
    let world = World::new();
    world.backend.fail("snapshot");
    let plan = world.plan();
    let err = world
        .backup(&plan, &transfer(&world, Sabotage::None))
        .await
        .unwrap_err();
    assert_eq!(world.timeline(), ["lock", "coordinates", "unlock"]);
    assert_eq!(class_of(&err), Class::Snapshot);
    assert!(
        format!("{err:#}").contains("the lock was released"),
        "{err:#}"
    );

    // Reading the coordinates fails: no snapshot is even tried.
    let mut world = World::new();
    world.fail_coordinates = true;
    let plan = world.plan();
    let err = world
        .backup(&plan, &transfer(&world, Sabotage::None))
        .await
        .unwrap_err();
    assert_eq!(world.timeline(), ["lock", "coordinates", "unlock"]);
    assert!(!world.backend.calls().contains(&"snapshot".to_string()));
    assert!(format!("{err:#}").contains("injected"), "{err:#}");

    // The snapshot outlasts max_lock_hold.
    let world = World::new();
    world.backend.slow_snapshot(Duration::from_secs(30));
    let mut plan = world.plan();
    plan.lock.max_hold = Duration::from_millis(50);
    let err = world
        .backup(&plan, &transfer(&world, Sabotage::None))
        .await
        .unwrap_err();
    assert_eq!(world.timeline(), ["lock", "coordinates", "unlock"]);
    assert_eq!(class_of(&err), Class::Lock);
    assert!(world.backend.snapshots().is_empty());
}

#[tokio::test]
async fn a_failure_injected_at_each_phase_leaves_a_journal_that_cleanup_empties() {
    let backend_failures = ["plan", "snapshot", "mount", "unmount", "release"];
    for failing in backend_failures {
        let world = World::new();
        world.backend.fail(failing);
        let plan = world.plan();
        let outcome = world.backup(&plan, &transfer(&world, Sabotage::None)).await;
        assert!(outcome.is_err(), "{failing}: the run succeeded");
        world.backend.heal();
        world.cleanup_leaves_nothing().await;
    }
    for sabotage in [Sabotage::Copy, Sabotage::Publish] {
        let world = World::new();
        let plan = world.plan();
        let outcome = world.backup(&plan, &transfer(&world, sabotage)).await;
        assert!(outcome.is_err());
        world.cleanup_leaves_nothing().await;
    }
}

#[tokio::test]
async fn snapshot_create_with_mount_and_backup_share_the_phases() {
    let backup = World::new();
    let plan = backup.plan();
    backup
        .backup(&plan, &transfer(&backup, Sabotage::None))
        .await
        .unwrap();

    let kept_world = World::new();
    let plan = kept_world.plan();
    let at = tempfile::tempdir().unwrap();
    let keep_mounted = KeepMounted {
        dir: at.path().into(),
        ttl: None,
    };
    let kept = Kept {
        name: dbsnap_backend_api::SnapshotName::new("dbsnap-20261125T214500Z").unwrap(),
        label: None,
        created_at: chrono::Utc::now(),
        keep_mounted: Some(&keep_mounted),
    };
    let (_lock, mut journal) = kept_world.journal();
    let prepared = kept_world.prepared();
    let record = snapshot_prepared(&plan, kept, prepared, &kept_world.backend, &mut journal)
        .await
        .unwrap();

    // The same phases, in the same order, up to the mount; then the one keeps it.
    let shared: Vec<&str> = WINDOW.into_iter().chain(["mount"]).collect();
    assert_eq!(kept_world.timeline(), shared);
    assert_eq!(backup.timeline()[..shared.len()], shared[..]);
    assert!(journal.entries().is_empty(), "kept, so no longer journaled");
    assert_eq!(kept_world.backend.mounted(), [record.name.to_string()]);
    let binds = &record.mount.as_ref().unwrap().binds;
    assert_eq!(binds[0].at, at.path().join("srv/db/data"));
}
