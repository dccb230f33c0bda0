//! The checks, in the order they run. Each returns what went wrong in words a
//! backend's author can act on.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use dbsnap_backend_api::mounts::read_mount_table;
use dbsnap_backend_api::{
    BackendError, Health, ReadPath, SnapshotBackend, SnapshotName, SnapshotSet, Volume,
    VolumeSnapshot,
};

use crate::Fixture;

pub type Outcome = Result<(), String>;
type Check = for<'a> fn(&'a Ctx<'a>) -> Pin<Box<dyn Future<Output = Outcome> + 'a>>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        pub const ALL: &[(&str, Check)] = &[$((stringify!($name), |ctx| Box::pin($name(ctx)))),*];
    };
}

mod crash;
mod spread;
use crash::{killed_mid_snapshot, killed_while_mounted, nothing_left, tampered_journal};
use spread::spread_release;

checks!(
    probe,
    round_trip,
    tampered_journal,
    list_only_ours,
    idempotent_release,
    spread_release,
    killed_mid_snapshot,
    killed_while_mounted,
    nothing_left,
);

/// The directory the suite writes its files into, inside each data directory.
const FILES_DIR: &str = "dbsnap conformance files";
/// File names a backend must carry through unharmed.
const HOSTILE_FILES: &[&str] = &[
    "plain",
    "with space",
    "$(touch pwned)",
    "`touch pwned`",
    ";touch pwned;",
    "it's \"quoted\"",
    "-leading-dash",
    "*",
    "new\nline",
    "tab\there",
    "back\\slash",
    "ünïcödé",
];
/// A directory name a backend must probe like any other.
const HOSTILE_DIR: &str = "sub dir $(touch pwned) ;'x'\"y\" `touch pwned` &|<>";
/// What an injected `touch pwned` would create.
const PWNED: &str = "pwned";
/// A killed plugin's children may still be finishing their command when cleanup starts.
const SETTLE: Duration = Duration::from_millis(500);

pub struct Ctx<'a> {
    backend: &'a dyn SnapshotBackend,
    fixture: &'a Fixture,
    /// Sets this check planned, and the workdir of any mount, for release after it.
    created: Mutex<Vec<(SnapshotSet, Option<PathBuf>)>>,
}

impl<'a> Ctx<'a> {
    pub fn new(backend: &'a dyn SnapshotBackend, fixture: &'a Fixture) -> Self {
        Ctx {
            backend,
            fixture,
            created: Mutex::new(Vec::new()),
        }
    }

    /// A snapshot name unique to this run and `label`.
    fn name(&self, label: &str) -> SnapshotName {
        SnapshotName::new(format!("dbsnap-conf.{}-{label}", std::process::id()))
            .expect("labels are plain")
    }

    fn workdir(&self, label: &str) -> Result<PathBuf, String> {
        let dir = self.fixture.workdir.join(label);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(dir)
    }

    async fn probe_all(&self) -> Result<Vec<Volume>, String> {
        self.backend
            .probe(&self.fixture.data_dirs)
            .await
            .map(|p| p.volumes)
            .map_err(|e| format!("probe of the data directories failed: {e}"))
    }

    async fn plan(&self, volumes: &[Volume], name: &SnapshotName) -> Result<SnapshotSet, String> {
        let set = self
            .backend
            .plan(volumes, name)
            .await
            .map_err(|e| format!("plan {name} failed: {e}"))?;
        self.created
            .lock()
            .expect("not poisoned")
            .push((set.clone(), None));
        Ok(set)
    }

    async fn snapshot(&self, label: &str) -> Result<(Vec<Volume>, SnapshotSet), String> {
        let volumes = self.probe_all().await?;
        let set = self.plan(&volumes, &self.name(label)).await?;
        self.backend
            .snapshot(&set)
            .await
            .map_err(|e| format!("snapshot {} failed: {e}", set.name))?;
        Ok((volumes, set))
    }

    async fn mount(&self, set: &SnapshotSet, workdir: &Path) -> Result<Vec<ReadPath>, String> {
        self.created
            .lock()
            .expect("not poisoned")
            .push((set.clone(), Some(workdir.to_path_buf())));
        self.backend
            .mount(set, workdir)
            .await
            .map_err(|e| format!("mount of {} failed: {e}", set.name))
    }

    async fn listed_names(&self, volumes: &[Volume]) -> Result<BTreeSet<String>, String> {
        Ok(self
            .backend
            .list(volumes)
            .await
            .map_err(|e| format!("list failed: {e}"))?
            .into_iter()
            .map(|s| s.name.to_string())
            .collect())
    }

    /// Unmount and release what the last check created; the check's own failure, if
    /// any, is the one reported.
    pub async fn release_leftovers(&self) -> Outcome {
        let created = std::mem::take(&mut *self.created.lock().expect("not poisoned"));
        let mut errors = Vec::new();
        for (set, workdir) in created.iter().rev() {
            if let Some(workdir) = workdir {
                if let Err(e) = self.backend.unmount(set, workdir).await {
                    errors.push(format!("unmount of {}: {e}", set.name));
                }
            }
            if let Err(e) = self.backend.release(set).await {
                errors.push(format!("release of {}: {e}", set.name));
            }
        }
        for dir in &self.fixture.data_dirs {
            let _ = std::fs::remove_dir_all(dir.join(FILES_DIR));
            let _ = std::fs::remove_dir_all(dir.join(HOSTILE_DIR));
        }
        match errors.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "cleaning up after the check failed: {}",
                errors.join("; ")
            )),
        }
    }
}

fn seed(dir: &Path) -> Outcome {
    let files = dir.join(FILES_DIR);
    std::fs::create_dir_all(&files).map_err(|e| format!("creating {}: {e}", files.display()))?;
    for name in HOSTILE_FILES.iter().chain(["deleted later"].iter()) {
        std::fs::write(files.join(name), format!("before {name}"))
            .map_err(|e| format!("writing {name:?} in {}: {e}", files.display()))?;
    }
    Ok(())
}

fn change_origin(dir: &Path, round: u32) -> Outcome {
    let files = dir.join(FILES_DIR);
    let write = |name: &str, text: String| {
        std::fs::write(files.join(name), text).map_err(|e| format!("changing {name:?}: {e}"))
    };
    for name in HOSTILE_FILES {
        write(name, format!("after {round} {name}"))?;
    }
    write("added later", format!("added {round}"))?;
    let _ = std::fs::remove_file(files.join("deleted later"));
    // Make the changes durable, so a backend that snapshots the wrong thing shows it.
    nix::unistd::sync();
    Ok(())
}

/// The frozen copy of `data_dir`, from the read paths `mount` returned.
fn frozen(data_dir: &Path, paths: &[ReadPath]) -> Result<PathBuf, String> {
    let path = paths
        .iter()
        .filter(|p| data_dir.starts_with(&p.origin_root))
        .max_by_key(|p| p.origin_root.components().count())
        .ok_or_else(|| {
            format!(
                "no read path returned by mount has an origin_root that holds {}: {paths:?}",
                data_dir.display()
            )
        })?;
    let rel = data_dir
        .strip_prefix(&path.origin_root)
        .expect("filtered on it");
    Ok(path.frozen_root.join(rel))
}

fn check_frozen(frozen_dir: &Path) -> Outcome {
    let files = frozen_dir.join(FILES_DIR);
    for name in HOSTILE_FILES {
        let got = std::fs::read_to_string(files.join(name))
            .map_err(|e| format!("reading {name:?} in the frozen {}: {e}", files.display()))?;
        ensure!(
            got == format!("before {name}"),
            "the frozen copy of {name:?} holds {got:?}: it changed with the origin"
        );
    }
    ensure!(
        files.join("deleted later").exists(),
        "a file deleted from the origin after the snapshot is missing from the frozen copy"
    );
    ensure!(
        !files.join("added later").exists(),
        "a file added to the origin after the snapshot appears in the frozen copy"
    );
    let probe = files.join("written through the snapshot");
    ensure!(
        std::fs::write(&probe, "x").is_err(),
        "the frozen copy {} is writable; it must be read-only",
        files.display()
    );
    Ok(())
}

fn ids(set: &SnapshotSet) -> BTreeSet<&str> {
    set.snapshots.iter().map(|s| s.id.as_str()).collect()
}

fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>, String> {
    Ok(read_mount_table()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|m| m.starts_with(dir))
        .collect())
}

/// Probe maps every data directory to a volume once, refuses what it cannot snapshot,
/// and handles a directory name full of shell metacharacters.
async fn probe(ctx: &Ctx<'_>) -> Outcome {
    let dirs = &ctx.fixture.data_dirs;
    ensure!(!dirs.is_empty(), "the fixture has no data directories");
    let volumes = ctx.probe_all().await?;
    for dir in dirs {
        ensure!(
            volumes.iter().any(|v| v.contains(dir)),
            "no volume returned by probe contains {}: {volumes:?}",
            dir.display()
        );
    }
    for (i, v) in volumes.iter().enumerate() {
        ensure!(
            !volumes[..i].contains(v),
            "probe returned volume {:?} twice",
            v.id
        );
    }
    ensure!(
        ctx.probe_all().await? == volumes,
        "a second probe returned different volumes"
    );

    let hostile = dirs[0].join(HOSTILE_DIR);
    std::fs::create_dir_all(&hostile).map_err(|e| format!("creating {hostile:?}: {e}"))?;
    let sub = ctx
        .backend
        .probe(std::slice::from_ref(&hostile))
        .await
        .map_err(|e| format!("probe of {hostile:?} failed: {e}"))?;
    ensure!(
        sub.atomic,
        "probe of one directory says one snapshot of its one volume is not atomic"
    );
    let sub = sub.volumes;
    let parent = volumes.iter().find(|v| v.contains(&dirs[0]));
    ensure!(
        sub.len() == 1 && parent == Some(&sub[0]),
        "probe of the subdirectory {hostile:?} returned {sub:?}, not the volume of its parent {parent:?}"
    );

    let missing = dirs[0].join("does not exist");
    ensure!(
        ctx.backend.probe(&[missing]).await.is_err(),
        "probe of a path that does not exist succeeded"
    );
    if let Some(unsupported) = &ctx.fixture.unsupported_dir {
        match ctx.backend.probe(std::slice::from_ref(unsupported)).await {
            Err(BackendError::Unsupported { .. }) => {}
            other => {
                return Err(format!(
                    "probe of {} (which the backend cannot snapshot) must fail with \
                     BackendError::Unsupported, got {other:?}",
                    unsupported.display()
                ))
            }
        }
    }
    Ok(())
}

/// The whole life of a snapshot: plan creates nothing, the frozen tree keeps its
/// content while the origin changes, and unmount and release are idempotent.
async fn round_trip(ctx: &Ctx<'_>) -> Outcome {
    let dirs = &ctx.fixture.data_dirs;
    for dir in dirs {
        seed(dir)?;
    }
    let volumes = ctx.probe_all().await?;
    let name = ctx.name("round-trip");
    let set = ctx.plan(&volumes, &name).await?;
    ensure!(
        set.name == name && set.backend == ctx.backend.name(),
        "plan returned a set named {} for backend {}, expected {name} for {}",
        set.name,
        set.backend,
        ctx.backend.name()
    );
    ensure!(
        set.snapshots.len() == volumes.len(),
        "plan returned {} snapshots for {} volumes",
        set.snapshots.len(),
        volumes.len()
    );
    ensure!(
        ctx.plan(&volumes, &name).await? == set,
        "planning the same name twice gave different sets"
    );
    ensure!(
        !ctx.listed_names(&volumes).await?.contains(name.as_str()),
        "list shows {name} after plan alone: plan must not create anything"
    );
    let journal = serde_json::to_string(&set).map_err(|e| e.to_string())?;
    let set: SnapshotSet = serde_json::from_str(&journal)
        .map_err(|e| format!("the plan does not survive the journal's JSON: {e}"))?;

    ctx.backend
        .snapshot(&set)
        .await
        .map_err(|e| format!("snapshot failed: {e}"))?;
    for dir in dirs {
        change_origin(dir, 1)?;
    }
    let workdir = ctx.workdir("round-trip")?;
    let paths = ctx.mount(&set, &workdir).await?;
    ensure!(
        paths.len() == set.snapshots.len(),
        "mount returned {} read paths for {} snapshots",
        paths.len(),
        set.snapshots.len()
    );
    for dir in dirs {
        change_origin(dir, 2)?;
    }
    for dir in dirs {
        check_frozen(&frozen(dir, &paths)?)?;
    }
    match ctx.backend.health(&set).await {
        Ok(Health::Failed(why)) => return Err(format!("health of a fresh snapshot: {why}")),
        Err(e) => return Err(format!("health failed: {e}")),
        Ok(_) => {}
    }
    let listed = ctx
        .backend
        .list(&volumes)
        .await
        .map_err(|e| format!("list failed: {e}"))?;
    let ours = listed.iter().find(|s| s.name == name);
    ensure!(
        ours.is_some_and(|s| ids(s) == ids(&set)),
        "list must show {name} with the planned snapshots {:?}, got {listed:?}",
        ids(&set)
    );
    for round in ["first", "second"] {
        ctx.backend
            .unmount(&set, &workdir)
            .await
            .map_err(|e| format!("{round} unmount failed: {e}"))?;
    }
    ensure!(
        mounts_under(&workdir)?.is_empty(),
        "still mounted after unmount: {:?}",
        mounts_under(&workdir)?
    );
    for round in ["first", "second"] {
        ctx.backend
            .release(&set)
            .await
            .map_err(|e| format!("{round} release failed: {e}"))?;
    }
    ensure!(
        !ctx.listed_names(&volumes).await?.contains(name.as_str()),
        "list still shows {name} after release"
    );
    for dir in dirs {
        let text = std::fs::read_to_string(dir.join(FILES_DIR).join("plain"))
            .map_err(|e| format!("the origin lost its files after release: {e}"))?;
        ensure!(
            text == "after 2 plain",
            "the origin holds {text:?} after release"
        );
    }
    Ok(())
}

/// list shows exactly dbsnap's sets — none before the suite made any (foreign
/// snapshots the fixture made must not appear), both after — and a listed set can be
/// released, which is how `dbsnap cleanup` finds what no journal knows.
async fn list_only_ours(ctx: &Ctx<'_>) -> Outcome {
    let volumes = ctx.probe_all().await?;
    let before = ctx.listed_names(&volumes).await?;
    ensure!(
        before.is_empty(),
        "list shows {before:?} before the suite made any snapshot: release them if an earlier \
         run left them, otherwise list mistakes foreign snapshots for dbsnap's"
    );
    let (_, a) = ctx.snapshot("list-a").await?;
    let (_, b) = ctx.snapshot("list-b").await?;
    let listed = ctx
        .backend
        .list(&volumes)
        .await
        .map_err(|e| format!("list failed: {e}"))?;
    let names: BTreeSet<_> = listed.iter().map(|s| s.name.as_str()).collect();
    ensure!(
        names == BTreeSet::from([a.name.as_str(), b.name.as_str()]),
        "list shows {names:?}, expected exactly {} and {}",
        a.name,
        b.name
    );
    for set in [&a, &b] {
        let found = listed.iter().find(|s| s.name == set.name).expect("checked");
        ensure!(
            ids(found) == ids(set),
            "list shows {} with snapshots {:?}, planned {:?}",
            set.name,
            ids(found),
            ids(set)
        );
    }
    for found in &listed {
        ctx.backend
            .release(found)
            .await
            .map_err(|e| format!("release of the listed set {} failed: {e}", found.name))?;
    }
    let after = ctx.listed_names(&volumes).await?;
    ensure!(
        after.is_empty(),
        "list shows {after:?} after releasing every listed set"
    );
    Ok(())
}

/// A plan journaled by a run that died before snapshot: unmount and release of what
/// does not exist succeed.
async fn idempotent_release(ctx: &Ctx<'_>) -> Outcome {
    let volumes = ctx.probe_all().await?;
    let set = ctx.plan(&volumes, &ctx.name("never-taken")).await?;
    let workdir = ctx.workdir("never-mounted")?;
    for round in ["first", "second"] {
        ctx.backend
            .unmount(&set, &workdir)
            .await
            .map_err(|e| format!("{round} unmount of a never-mounted set failed: {e}"))?;
        ctx.backend
            .release(&set)
            .await
            .map_err(|e| format!("{round} release of a never-taken set failed: {e}"))?;
    }
    Ok(())
}
