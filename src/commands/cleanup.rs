//! `dbsnap cleanup`: release whatever an interrupted run left, from the journal.

use std::path::Path;

use anyhow::Context;

use crate::backends;
use crate::config::Config;
use crate::error::{fail, Class};
use crate::journal::{Journal, Resource, RunLock};

pub async fn run(config: &Config, json: bool) -> anyhow::Result<()> {
    let lock = RunLock::acquire(&config.state_dir)?;
    let mut journal = Journal::open(&config.state_dir, &lock)?;
    let Cleaned {
        mut released,
        nothing_to_release,
    } = release_all(config, &mut journal).await?;
    released.extend(super::snapshot::release_expired(config).await?);
    if json {
        super::print_json(
            &serde_json::json!({ "released": released, "nothing_to_release": nothing_to_release }),
        )?;
    } else if released.is_empty() && nothing_to_release.is_empty() {
        println!("nothing to clean up");
    } else {
        for r in &released {
            println!("released {r}");
        }
        for k in &nothing_to_release {
            println!("forgot {k}");
        }
    }
    Ok(())
}

/// `cleanup --forget RUN`: drop the run's journal entries without releasing anything.
pub fn forget(config: &Config, json: bool, run: &str) -> anyhow::Result<()> {
    let lock = RunLock::acquire(&config.state_dir)?;
    let mut journal = Journal::open(&config.state_dir, &lock)?;
    let entries: Vec<_> = journal
        .entries()
        .iter()
        .filter(|e| e.run == run)
        .cloned()
        .collect();
    if entries.is_empty() {
        return Err(fail(
            Class::Config,
            format!(
                "the journal has no entries of run {run:?}; `dbsnap cleanup` names the run of \
                 each resource it cannot release"
            ),
        ));
    }
    let mut forgotten = Vec::new();
    for entry in entries {
        journal.forget(&entry.resource)?;
        let what = describe(&entry.resource);
        tracing::warn!("forgot {what} (run {run}) without releasing it");
        forgotten.push(what);
    }
    if json {
        super::print_json(&serde_json::json!({ "forgotten": forgotten }))?;
    } else {
        for f in &forgotten {
            println!("forgotten (not released) {f}");
        }
    }
    Ok(())
}

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
}

/// Release every journaled resource, newest first (a partial copy before its mount,
/// a mount before its snapshot). Keeps going past failures so that one stuck resource
/// does not pin the others, then reports all failures. An entry naming something
/// dbsnap would not have created (a hand-edited or corrupted journal) is a failure
/// too: it is left alone and stays in the journal.
pub async fn release_all(config: &Config, journal: &mut Journal) -> anyhow::Result<Cleaned> {
    let mut cleaned = Cleaned::default();
    let mut failures = Vec::new();
    stop_orphaned_hooks(journal).await;
    for entry in journal.entries().to_vec().into_iter().rev() {
        let what = describe(&entry.resource);
        match release_one(config, &entry.resource).await {
            Ok(outcome) => {
                journal.forget(&entry.resource)?;
                match outcome {
                    Outcome::Released => {
                        tracing::info!("released {what} (run {})", entry.run);
                        cleaned.released.push(what);
                    }
                    Outcome::NothingToRelease(why) => {
                        tracing::info!("forgot {what} (run {}): {why}", entry.run);
                        cleaned.nothing_to_release.push(format!("{what}: {why}"));
                    }
                }
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
fn check_partial(config: &Config, dir: &Path) -> anyhow::Result<()> {
    let dest = config.backup.as_ref().map(|b| b.dest.as_path());
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
fn check_scratch(config: &Config, dir: &Path, run_dir: &Path) -> anyhow::Result<()> {
    let name = dir
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_prefix(crate::verify::SCRATCH_PREFIX))
        .filter(|n| !n.is_empty() && !n.contains('/'));
    let beside_backup = name.is_some_and(|n| {
        let in_dest = config
            .backup
            .as_ref()
            .is_some_and(|b| directly_in(dir, &b.dest));
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

async fn release_one(config: &Config, resource: &Resource) -> anyhow::Result<Outcome> {
    match resource {
        Resource::Partial { dir } => {
            check_partial(config, dir)?;
            if !dir.exists() {
                return Ok(Outcome::NothingToRelease("it was never created"));
            }
            crate::transfer::native::remove_backup_dir(dir, &config.snapshot).await?;
            Ok(Outcome::Released)
        }
        Resource::Received {
            backend,
            id,
            partial,
        } => {
            check_partial(config, partial)?;
            if !partial.exists() {
                return Ok(Outcome::NothingToRelease(
                    "its backup was published or removed, so it is not a leftover",
                ));
            }
            let backend = backends::open_named(backend, &config.snapshot)?;
            let stream = backend
                .native_stream()
                .with_context(|| format!("the {} backend cannot delete {id}", backend.name()))?;
            stream.delete_received(id).await?;
            Ok(Outcome::Released)
        }
        Resource::Mount { set, workdir } => {
            let runs = config.state_dir.join("runs");
            if !directly_in(workdir, &runs) {
                return Err(untrusted(
                    "a mount's work directory",
                    workdir,
                    format!("in {}", runs.display()),
                ));
            }
            let backend = backends::open_named(&set.backend, &config.snapshot)?;
            backend.unmount(set, workdir).await?;
            if workdir.exists() {
                std::fs::remove_dir(workdir)
                    .with_context(|| format!("removing {}", workdir.display()))?;
            }
            Ok(Outcome::Released)
        }
        Resource::Snapshot { set } => {
            // A snapshot kept on purpose (`snapshot create`) whose run stopped between
            // writing its record and leaving the journal is not a leftover.
            if crate::kept::is_kept(&config.state_dir, &set.name) {
                return Ok(Outcome::NothingToRelease(
                    "it is a kept snapshot (see `dbsnap snapshot list`)",
                ));
            }
            let backend = backends::open_named(&set.backend, &config.snapshot)?;
            backend.release(set).await?;
            Ok(Outcome::Released)
        }
        Resource::Scratch { dir, run_dir } => {
            check_scratch(config, dir, run_dir)?;
            crate::verify::remove_scratch(dir, run_dir).await?;
            Ok(Outcome::Released)
        }
    }
}

fn describe(resource: &Resource) -> String {
    match resource {
        Resource::Partial { dir } => format!("partial backup {}", dir.display()),
        Resource::Received { backend, id, .. } => format!("{backend} received copy {id}"),
        Resource::Scratch { dir, .. } => format!("verification scratch copy {}", dir.display()),
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
