//! Releasing what dbsnap created: journaled leftovers of an interrupted run, kept
//! snapshots, and a run's own snapshot set. Each step is idempotent, so a release that
//! failed half-way can simply be run again. Commands and the backup flow call these;
//! nothing here knows the order of a backup's phases.

mod spread;

use std::path::Path;

use anyhow::Context;
use dbsnap_backend_api::{LocalHost, SnapshotBackend, SnapshotSet};

use crate::backends::Backends;
use crate::config::{BackupConfig, Config};
use crate::destination::Destination;
use crate::error::backend_error;
use crate::journal::{Journal, RemoteDest, Resource};
use crate::kept::KeptSnapshot;
use crate::transfer::{chain, resume};
pub use spread::SpreadPace;

/// Where releasing may act: the state directory, the configured destination (a
/// journaled partial must lie in it; a journaled restic run must be on it), and how to
/// open any backend by name.
pub struct Scope<'a> {
    pub state_dir: &'a Path,
    pub dest: Option<&'a Path>,
    pub backends: &'a dyn Backends,
    /// `[backup]`, to open the restic repository a journaled restic run worked on.
    pub backup: Option<&'a BackupConfig>,
    /// Leave journaled local partial backups that hold something as they are (and in
    /// the journal; an empty one is removed): at the start of a backup, which continues
    /// the newest (see [`crate::destination::Destination::resume_partial`]); and hand
    /// the snapshot and copies of a stream cut off by a killed run to its resumable
    /// record, for this backup to resume (see [`crate::transfer::resume`]).
    pub keep_partials: bool,
}

impl<'a> Scope<'a> {
    pub fn of(config: &'a Config) -> Scope<'a> {
        Scope {
            state_dir: &config.state_dir,
            dest: config.backup.as_ref().map(|b| b.dest.as_path()),
            backends: &config.snapshot,
            backup: config.backup.as_ref(),
            keep_partials: false,
        }
    }

    /// [`Scope::of`] for the start of a backup: a partial backup a killed run left
    /// stays for this backup to continue, unless it is empty.
    pub fn keeping_partials(config: &'a Config) -> Scope<'a> {
        Scope {
            keep_partials: true,
            ..Scope::of(config)
        }
    }
}

/// Why a received copy's entry is dropped once its partial is gone.
const PUBLISHED: &str = "its backup was published or removed, so it is not a leftover";

/// What [`release_all`] did: resources released, and entries dropped from the journal
/// with nothing to release (each with why).
#[derive(Debug, Default)]
pub struct Cleaned {
    pub released: Vec<String>,
    pub nothing_to_release: Vec<String>,
}

/// What releasing one journal entry came to.
enum Outcome {
    Released,
    /// Nothing to release; the entry is dropped. Why, for the report.
    NothingToRelease(&'static str),
    /// Left as it is, and in the journal ([`Scope::keep_partials`]).
    Kept,
}

/// Release every journaled resource, newest first (a partial copy before its mount,
/// a mount before its snapshot). Keeps going past failures so that one stuck resource
/// does not pin the others, then reports all failures. An entry naming something
/// dbsnap would not have created (a hand-edited or corrupted journal) is a failure
/// too: it is left alone and stays in the journal.
pub async fn release_all(scope: &Scope<'_>, journal: &mut Journal) -> anyhow::Result<Cleaned> {
    let mut cleaned = Cleaned::default();
    let mut failures = Vec::new();
    stop_orphaned_hooks(journal).await;
    for entry in journal.entries().to_vec().into_iter().rev() {
        let what = describe(&entry.resource);
        match release_one(scope, &entry.run, &entry.resource).await {
            Ok(Outcome::Kept) => {
                tracing::info!(
                    "kept {what} (run {}) for this backup to continue",
                    entry.run
                )
            }
            Ok(Outcome::Released) => {
                journal.forget(&entry.resource)?;
                tracing::info!("released {what} (run {})", entry.run);
                cleaned.released.push(what);
            }
            Ok(Outcome::NothingToRelease(why)) => {
                journal.forget(&entry.resource)?;
                tracing::info!("forgot {what} (run {}): {why}", entry.run);
                cleaned.nothing_to_release.push(format!("{what}: {why}"));
            }
            Err(e) => failures.push(format!("{what} (run {}): {e:#}", entry.run)),
        }
    }
    if !failures.is_empty() {
        anyhow::bail!(
            "could not release {} resource(s); they stay in the journal for the next `dbsnap cleanup`:\n  {}\n\
             Fix what the message says and run `dbsnap cleanup` again. If you have checked a resource \
             and removed what is left of it yourself, drop its run from the journal with \
             `dbsnap cleanup --forget RUN`",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(cleaned)
}

/// Kill what the hooks of the journal's interrupted runs left running (a hook's own
/// children survive a `kill -9` of dbsnap): nothing may keep reading a snapshot that is
/// about to be released.
async fn stop_orphaned_hooks(journal: &Journal) {
    let mut runs: Vec<String> = journal.entries().iter().map(|e| e.run.clone()).collect();
    runs.sort();
    runs.dedup();
    if runs.is_empty() {
        return;
    }
    let orphans = crate::procs::orphaned_hook_processes(&runs);
    for pid in &orphans {
        tracing::warn!("stopping process {pid}, left running by a hook of an interrupted run");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while orphans.iter().any(|p| crate::procs::is_running(*p))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Refuse a journaled path that is not where dbsnap creates such things.
fn untrusted(what: &str, path: &Path, place: String) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is not {place}, so dbsnap did not create it as {what}: left alone (a hand-edited \
         or stale journal?)",
        path.display()
    )
}

/// Whether `path` lies directly in `dir` (both compared as real paths).
fn directly_in(path: &Path, dir: &Path) -> bool {
    let parent = path.parent().map(crate::overlap::canonical);
    parent.is_some_and(|p| p == crate::overlap::canonical(dir))
}

/// A partial backup directory must be `NAME.partial` directly in the configured
/// destination.
fn check_partial(scope: &Scope<'_>, dir: &Path) -> anyhow::Result<()> {
    let dest = scope.dest;
    let named = dir.extension().is_some_and(|e| e == "partial");
    match dest {
        Some(dest) if named && directly_in(dir, dest) => Ok(()),
        Some(dest) => Err(untrusted(
            "a partial backup",
            dir,
            format!(
                "a NAME.partial directory in [backup] dest = {}",
                dest.display()
            ),
        )),
        None => Err(untrusted(
            "a partial backup",
            dir,
            "in a destination: the configuration has no [backup] dest".into(),
        )),
    }
}

/// A verification's scratch copy is `.dbsnap-verify-NAME` beside backup NAME (in the
/// destination, or beside a backup verified by path), and its server's run directory
/// is `dbsnap-verify-PID`.
fn check_scratch(scope: &Scope<'_>, dir: &Path, run_dir: &Path) -> anyhow::Result<()> {
    let name = dir
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_prefix(crate::verify::SCRATCH_PREFIX))
        .filter(|n| !n.is_empty() && !n.contains('/'));
    let beside_backup = name.is_some_and(|n| {
        let in_dest = scope.dest.is_some_and(|dest| directly_in(dir, dest));
        in_dest
            || dir
                .parent()
                .is_some_and(|p| p.join(n).join(crate::manifest::MANIFEST_FILE).is_file())
    });
    if !beside_backup {
        return Err(untrusted(
            "a verification's scratch copy",
            dir,
            "a .dbsnap-verify-NAME directory beside backup NAME".into(),
        ));
    }
    let run_dir_ok = run_dir
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_prefix(crate::verify::RUN_DIR_PREFIX))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
    if !run_dir_ok {
        return Err(untrusted(
            "a verification server's run directory",
            run_dir,
            "a dbsnap-verify-PID directory".into(),
        ));
    }
    Ok(())
}

/// A backup fetched from a repository is `NAME` directly in `state_dir/staging`,
/// holding nothing but what a fetch writes (`files/`, the manifest).
fn check_fetched(scope: &Scope<'_>, dir: &Path) -> anyhow::Result<()> {
    let staging = crate::destination::staging_dir(scope.state_dir);
    let own = |e: &std::fs::DirEntry| {
        let name = e.file_name();
        name == crate::manifest::FILES_DIR || name == crate::manifest::MANIFEST_FILE
    };
    let only_own =
        std::fs::read_dir(dir).map_or(true, |entries| entries.flatten().all(|e| own(&e)));
    if !directly_in(dir, &staging) || !only_own {
        return Err(untrusted(
            "a backup fetched from a repository",
            dir,
            format!(
                "a directory in {} holding only {}/ and {}",
                staging.display(),
                crate::manifest::FILES_DIR,
                crate::manifest::MANIFEST_FILE
            ),
        ));
    }
    Ok(())
}

async fn release_one(scope: &Scope<'_>, run: &str, resource: &Resource) -> anyhow::Result<Outcome> {
    match resource {
        Resource::ResticRun {
            repository,
            pid,
            started_at,
            claim,
        } => {
            crate::destination::restic::configured(scope.state_dir, scope.backup, repository)?
                .release_run(run, *pid, *started_at, claim.as_deref())
                .await?;
            Ok(Outcome::Released)
        }
        Resource::Fetched { dir } => {
            check_fetched(scope, dir)?;
            if !dir.exists() {
                return Ok(Outcome::NothingToRelease("it was never created"));
            }
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
            Ok(Outcome::Released)
        }
        Resource::Partial { dir } => {
            check_partial(scope, dir)?;
            if !dir.exists() {
                return Ok(Outcome::NothingToRelease("it was never created"));
            }
            // One that holds nothing gives this backup nothing to continue: a killed
            // stream's (its received copies are released just before it, newest first;
            // streams never continue a partial) or a run's killed before its first file.
            if scope.keep_partials && !is_empty_dir(dir)? {
                return Ok(Outcome::Kept);
            }
            crate::destination::local::remove_dir(dir, scope.backends).await?;
            Ok(Outcome::Released)
        }
        Resource::Received { id, .. }
            if scope.keep_partials && resume::names_received(scope.state_dir, id)? =>
        {
            Ok(Outcome::NothingToRelease(resume::HANDED_OVER))
        }
        Resource::Received {
            backend,
            id,
            partial,
            remote: None,
        } => {
            check_partial(scope, partial)?;
            if !partial.exists() {
                return Ok(Outcome::NothingToRelease(PUBLISHED));
            }
            scope
                .backends
                .delete_received(backend, id, &LocalHost)
                .await?;
            Ok(Outcome::Released)
        }
        Resource::Received {
            backend,
            id,
            partial,
            remote: Some(remote),
        } => {
            let dest = crate::destination::ssh::SshDir::reopen(remote, scope.state_dir)?;
            if !dest.is_partial_dir(partial) {
                return Err(untrusted(
                    "the partial backup of a received copy",
                    partial,
                    format!("a NAME.partial directory in {}", remote.dest),
                ));
            }
            if !dest.holds(partial).await? {
                return Ok(Outcome::NothingToRelease(PUBLISHED));
            }
            scope.backends.delete_received(backend, id, &dest).await?;
            Ok(Outcome::Released)
        }
        Resource::Mount { set, workdir } => {
            let runs = scope.state_dir.join("runs");
            if !directly_in(workdir, &runs) {
                return Err(untrusted(
                    "a mount's work directory",
                    workdir,
                    format!("in {}", runs.display()),
                ));
            }
            let backend = scope.backends.open_named(&set.backend)?;
            unmount_from(backend.as_ref(), set, workdir).await?;
            Ok(Outcome::Released)
        }
        Resource::Snapshot { set } => {
            // A snapshot kept on purpose (`snapshot create`) whose run stopped between
            // writing its record and leaving the journal is not a leftover.
            if crate::kept::is_kept(scope.state_dir, &set.name) {
                return Ok(Outcome::NothingToRelease(
                    "it is a kept snapshot (see `dbsnap snapshot list`)",
                ));
            }
            // The base of the next incremental whose run stopped between writing its
            // parent record and leaving the journal (or between re-entering the journal
            // and removing the record, when it was being retired): the record owns it.
            if chain::is_parent(scope.state_dir, &set.name) {
                return Ok(Outcome::NothingToRelease(
                    "it is the base of the next incremental backup",
                ));
            }
            // A run killed mid-stream: the next backup resumes the stream from it.
            if scope.keep_partials && resume::is_resumable(scope.state_dir, &set.name) {
                return Ok(Outcome::NothingToRelease(resume::HANDED_OVER));
            }
            let backend = scope.backends.open_named(&set.backend)?;
            backend.release(set).await?;
            resume::forget(scope.state_dir, &set.name)?;
            Ok(Outcome::Released)
        }
        Resource::Scratch { dir, run_dir } => {
            check_scratch(scope, dir, run_dir)?;
            crate::verify::remove_scratch(dir, run_dir).await?;
            Ok(Outcome::Released)
        }
        Resource::RemotePartial {
            dest,
            ssh,
            dir,
            resumable,
        } => {
            let remote = RemoteDest {
                dest: dest.clone(),
                ssh: ssh.clone(),
            };
            crate::destination::ssh::release(
                &remote,
                dir,
                *resumable,
                scope.state_dir,
                scope.backends,
            )
            .await?;
            Ok(Outcome::Released)
        }
        Resource::Pulled { dir } => {
            let pulled = scope.state_dir.join(crate::commands::verify::PULLED_DIR);
            if !directly_in(dir, &pulled) {
                return Err(untrusted(
                    "a backup pulled for verification",
                    dir,
                    format!("in {}", pulled.display()),
                ));
            }
            if dir.exists() {
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
            Ok(Outcome::Released)
        }
    }
}

/// Whether `dir` has no entries.
fn is_empty_dir(dir: &Path) -> anyhow::Result<bool> {
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok(entries.next().is_none())
}

pub fn describe(resource: &Resource) -> String {
    match resource {
        Resource::Partial { dir } => format!("partial backup {}", dir.display()),
        Resource::Received { backend, id, .. } => format!("{backend} received copy {id}"),
        Resource::Scratch { dir, .. } => format!("verification scratch copy {}", dir.display()),
        Resource::ResticRun { repository, .. } => {
            format!("restic run on {repository} (its stale locks and unpublished snapshots)")
        }
        Resource::Fetched { dir } => {
            format!("backup fetched from a repository into {}", dir.display())
        }
        Resource::Pulled { dir } => format!("pulled copy {}", dir.display()),
        Resource::RemotePartial { dest, dir, .. } => {
            format!("partial backup {} on {dest}", dir.display())
        }
        Resource::Mount { set, workdir } => {
            format!("mount of {} under {}", set.name, workdir.display())
        }
        Resource::Snapshot { set } => format!(
            "{} snapshot {} ({})",
            set.backend,
            set.name,
            set.snapshots
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Unmount (hook mode) and destroy a kept snapshot, then forget its record. Each step
/// is idempotent, so a release that failed half-way can simply be run again.
pub async fn release_kept(
    state_dir: &Path,
    backends: &dyn Backends,
    kept: &KeptSnapshot,
) -> anyhow::Result<()> {
    let backend = backends.open_named(&kept.set.backend)?;
    if let Some(m) = &kept.mount {
        m.unbind_all()?;
        unmount_from(backend.as_ref(), &kept.set, &m.workdir).await?;
    }
    backend.release(&kept.set).await.map_err(backend_error)?;
    kept.remove(state_dir)
}

/// Release the kept snapshots whose `--ttl` has passed: their backup tool never called
/// `release`. Returns what was released.
pub async fn release_expired(
    state_dir: &Path,
    backends: &dyn Backends,
) -> anyhow::Result<Vec<String>> {
    let now = chrono::Utc::now();
    let mut released = Vec::new();
    for kept in KeptSnapshot::list(state_dir)? {
        if kept.expires_at.is_some_and(|at| at <= now) {
            release_kept(state_dir, backends, &kept)
                .await
                .with_context(|| format!("releasing expired snapshot {}", kept.name))?;
            tracing::warn!(
                "released kept snapshot {}: its --ttl expired without `dbsnap snapshot release`",
                kept.name
            );
            released.push(format!("expired snapshot {}", kept.name));
        }
    }
    Ok(released)
}

/// What a run's own snapshot set is released with, after its backup was published.
pub struct OwnRun<'a> {
    pub state_dir: &'a Path,
    /// What paces freeing it in steps; `None`: destroyed at once (`pace = "off"`, or
    /// the copy could not have a probe).
    pub spread: Option<ReleasePace>,
}

/// What paces a release in steps (`pace = "auto"`).
pub enum ReleasePace {
    /// The copy's probe, with the baseline it measured before the lock.
    Probed(SpreadPace),
    /// A transfer the probe does not pace (rsync, restic): a probe is opened, and its
    /// baseline measured, only for a release that is spread.
    Unprobed {
        credentials: crate::db::credentials::Credentials,
        target: f64,
    },
}

impl ReleasePace {
    async fn probed(self) -> anyhow::Result<SpreadPace> {
        match self {
            ReleasePace::Probed(pace) => Ok(pace),
            ReleasePace::Unprobed {
                credentials,
                target,
            } => {
                let (probe, baseline) =
                    crate::db::probe::CommitProbe::connect(&credentials).await?;
                Ok(SpreadPace {
                    probe: Box::new(probe),
                    baseline,
                    target,
                })
            }
        }
    }
}

/// Whether the release of `set` may free its data in steps first, which leaves it fit
/// for nothing but deletion: only when nothing is kept as it or built on it (a kept
/// snapshot, a stream's parent, a resumable record's snapshot). The one place this is
/// decided.
pub fn may_spread(state_dir: &Path, set: &SnapshotSet) -> bool {
    !crate::kept::is_kept(state_dir, &set.name)
        && !chain::is_parent(state_dir, &set.name)
        && !resume::is_resumable(state_dir, &set.name)
}

/// Unmount and destroy a run's own snapshot set after its backup was published,
/// forgetting each resource once it is gone; its data freed in steps first where
/// [`may_spread`] and the backend offers steps. It stays in the journal until it is
/// destroyed, so a run killed half-way leaves it to `cleanup`, which deletes it at once.
pub async fn release_own(
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
    set: &SnapshotSet,
    workdir: &Path,
    own: OwnRun<'_>,
) -> anyhow::Result<()> {
    unmount(backend, journal, set, workdir).await?;
    destroy(backend, own.state_dir, set, own.spread).await?;
    journal.forget(&Resource::Snapshot { set: set.clone() })?;
    Ok(())
}

/// Destroy the unmounted snapshot set `set`, its data freed in steps at `spread`'s pace
/// first where [`may_spread`] and the backend offers steps (a failed step is a warning:
/// it is then deleted at once).
pub async fn destroy(
    backend: &dyn SnapshotBackend,
    state_dir: &Path,
    set: &SnapshotSet,
    spread: Option<ReleasePace>,
) -> anyhow::Result<()> {
    if let Some(pace) = spread.filter(|_| may_spread(state_dir, set)) {
        if let Err(e) = spread_release(backend, set, pace).await {
            tracing::warn!(
                "releasing snapshot {} in steps: {e:#}; deleting it at once",
                set.name
            );
        }
    }
    backend.release(set).await.map_err(backend_error)
}

async fn spread_release(
    backend: &dyn SnapshotBackend,
    set: &SnapshotSet,
    pace: ReleasePace,
) -> anyhow::Result<()> {
    let Some(mut steps) = backend.spread_release(set).await.map_err(backend_error)? else {
        return Ok(());
    };
    // The steps change nothing until the first: without a probe, a plain delete.
    let pace = pace.probed().await.context(
        "cannot probe commit latency (grant CREATE, INSERT, UPDATE on dbsnap.* and BINLOG \
         ADMIN or SUPER, or set [backup] pace = \"off\")",
    )?;
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    tracing::info!(
        "releasing snapshot {} in steps: {:.0} MiB in its large files, freed at the pace of \
         the server's commits",
        set.name,
        mib(steps.total_bytes())
    );
    let done = spread::spread(steps.as_mut(), pace, spread::STEP_EVERY)
        .await
        .map_err(backend_error)?;
    tracing::info!(
        "releasing snapshot {}: spread over {:.1} s, {:.0} MiB freed in {} steps of \
         {:.1}–{:.1} MiB, slowed {} times by slow commits",
        set.name,
        done.elapsed.as_secs_f64(),
        mib(done.freed),
        done.steps,
        mib(done.smallest_step),
        mib(done.largest_step),
        done.slowed
    );
    Ok(())
}

/// Undo the mount phase and forget it.
pub async fn unmount(
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
    set: &SnapshotSet,
    workdir: &Path,
) -> anyhow::Result<()> {
    unmount_from(backend, set, workdir).await?;
    journal.forget(&Resource::Mount {
        set: set.clone(),
        workdir: workdir.to_path_buf(),
    })?;
    Ok(())
}

/// Undo a mount of `set` that used `workdir`, and remove the (empty) workdir.
async fn unmount_from(
    backend: &dyn SnapshotBackend,
    set: &SnapshotSet,
    workdir: &Path,
) -> anyhow::Result<()> {
    backend.unmount(set, workdir).await.map_err(backend_error)?;
    if workdir.exists() {
        std::fs::remove_dir(workdir).with_context(|| format!("removing {}", workdir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use dbsnap_backend_api::SnapshotName;

    use super::*;
    use crate::config::SnapshotConfig;
    use crate::journal::RunLock;

    fn set(name: &str) -> SnapshotSet {
        SnapshotSet {
            backend: "btrfs".into(),
            name: SnapshotName::new(name.to_string()).unwrap(),
            snapshots: Vec::new(),
        }
    }

    #[test]
    fn only_a_snapshot_nothing_keeps_or_builds_on_is_released_in_steps() {
        let state = tempfile::tempdir().unwrap();
        for (records, name) in [
            ("snapshots", "dbsnap-kept"),
            ("parents", "dbsnap-parent"),
            ("resumable", "dbsnap-resumable"),
        ] {
            let dir = state.path().join(records);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{name}.toml")), "").unwrap();
        }
        assert!(crate::kept::is_kept(state.path(), &set("dbsnap-kept").name));
        for kept in ["dbsnap-kept", "dbsnap-parent", "dbsnap-resumable"] {
            assert!(!may_spread(state.path(), &set(kept)), "{kept}");
        }
        assert!(may_spread(state.path(), &set("dbsnap-run-1")));
    }

    #[tokio::test]
    async fn a_journaled_snapshot_that_a_parent_record_owns_is_forgotten_not_released() {
        // A run stopped between writing a parent record and leaving the journal (or,
        // retiring it, between re-entering the journal and removing the record).
        let state = tempfile::tempdir().unwrap();
        let parents = state.path().join("parents");
        std::fs::create_dir_all(&parents).unwrap();
        std::fs::write(parents.join("dbsnap-parent.toml"), "").unwrap();
        let lock = RunLock::acquire(state.path()).unwrap();
        let mut journal = Journal::open(state.path(), &lock).unwrap();
        let snapshot = Resource::Snapshot {
            set: set("dbsnap-parent"),
        };
        journal.record("run-a", snapshot).unwrap();
        let backends: SnapshotConfig = toml::from_str("backend = \"btrfs\"").unwrap();
        let scope = Scope {
            state_dir: state.path(),
            dest: None,
            backends: &backends,
            backup: None,
            keep_partials: true,
        };

        let cleaned = release_all(&scope, &mut journal).await.unwrap();
        assert!(cleaned.released.is_empty(), "{cleaned:?}");
        assert_eq!(cleaned.nothing_to_release.len(), 1, "{cleaned:?}");
        assert!(journal.entries().is_empty());
        assert!(parents.join("dbsnap-parent.toml").exists());
    }

    #[tokio::test]
    async fn at_a_backups_start_an_empty_partial_is_removed_and_one_holding_files_is_kept() {
        let state = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        // A killed stream's (its copies released first) and a killed file copy's.
        let empty = dest.path().join("20261201T000000Z.partial");
        let filled = dest.path().join("20261201T000001Z.partial");
        std::fs::create_dir(&empty).unwrap();
        std::fs::create_dir_all(filled.join("files")).unwrap();
        let lock = RunLock::acquire(state.path()).unwrap();
        let mut journal = Journal::open(state.path(), &lock).unwrap();
        let kept = Resource::Partial {
            dir: filled.clone(),
        };
        journal
            .record("run-a", Resource::Partial { dir: empty.clone() })
            .unwrap();
        journal.record("run-b", kept.clone()).unwrap();
        let backends: SnapshotConfig = toml::from_str("backend = \"btrfs\"").unwrap();
        let scope = Scope {
            state_dir: state.path(),
            dest: Some(dest.path()),
            backends: &backends,
            backup: None,
            keep_partials: true,
        };

        let cleaned = release_all(&scope, &mut journal).await.unwrap();
        assert!(!empty.exists(), "the empty partial is removed");
        assert!(
            filled.join("files").is_dir(),
            "the other is left to continue"
        );
        assert_eq!(cleaned.released.len(), 1, "{cleaned:?}");
        let left: Vec<&Resource> = journal.entries().iter().map(|e| &e.resource).collect();
        assert_eq!(left, vec![&kept]);
    }
}
