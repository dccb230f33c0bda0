//! `dbsnap cleanup`: release whatever an interrupted run left, from the journal.

use anyhow::Context;

use crate::backends;
use crate::config::Config;
use crate::destination::ReceivedCopies;
use crate::error::{fail, Class};
use crate::journal::{Journal, Resource, RunLock};

pub async fn run(config: &Config, json: bool) -> anyhow::Result<()> {
    let lock = RunLock::acquire(&config.state_dir)?;
    let mut journal = Journal::open(&config.state_dir, &lock)?;
    let mut released = release_all(config, &mut journal).await?;
    released.extend(super::snapshot::release_expired(config).await?);
    if json {
        super::print_json(&serde_json::json!({ "released": released }))?;
    } else if released.is_empty() {
        println!("nothing to clean up");
    } else {
        for r in &released {
            println!("released {r}");
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
                "the journal has no entries of run {run:?}; `dbsnap cleanup` names the run of                  each resource it cannot release"
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

/// Release every journaled resource, newest first (a partial copy before its mount,
/// a mount before its snapshot). Keeps going past failures so that one stuck resource
/// does not pin the others, then reports all failures.
pub async fn release_all(config: &Config, journal: &mut Journal) -> anyhow::Result<Vec<String>> {
    let mut released = Vec::new();
    let mut failures = Vec::new();
    for entry in journal.entries().to_vec().into_iter().rev() {
        let what = describe(&entry.resource);
        match release_one(config, &entry.run, &entry.resource).await {
            Ok(()) => {
                journal.forget(&entry.resource)?;
                tracing::info!("released {what} (run {})", entry.run);
                released.push(what);
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
    Ok(released)
}

async fn release_one(config: &Config, run: &str, resource: &Resource) -> anyhow::Result<()> {
    match resource {
        Resource::ResticRun {
            repository,
            pid,
            started_at,
        } => {
            crate::destination::restic::configured(config, repository)?
                .release_run(run, *pid, *started_at)
                .await
        }
        Resource::Partial { dir } => {
            // Only ever delete a directory dbsnap named `*.partial`.
            if dir.extension().is_some_and(|e| e == "partial") {
                crate::destination::local::remove_dir(dir, &config.snapshot).await?;
            }
            Ok(())
        }
        Resource::Received {
            backend,
            id,
            partial,
        } => {
            if !partial.exists() {
                return Ok(());
            }
            config.snapshot.delete_received(backend, id).await
        }
        Resource::Mount { set, workdir } => {
            let backend = backends::open_named(&set.backend, &config.snapshot)?;
            backend.unmount(set, workdir).await?;
            if workdir.exists() {
                std::fs::remove_dir(workdir)
                    .with_context(|| format!("removing {}", workdir.display()))?;
            }
            Ok(())
        }
        Resource::Snapshot { set } => {
            // A snapshot kept on purpose (`snapshot create`) whose run stopped between
            // writing its record and leaving the journal is not a leftover.
            if crate::kept::is_kept(&config.state_dir, &set.name) {
                return Ok(());
            }
            let backend = backends::open_named(&set.backend, &config.snapshot)?;
            backend.release(set).await?;
            Ok(())
        }
        Resource::Scratch { dir, run_dir } => crate::verify::remove_scratch(dir, run_dir).await,
    }
}

fn describe(resource: &Resource) -> String {
    match resource {
        Resource::Partial { dir } => format!("partial backup {}", dir.display()),
        Resource::Received { backend, id, .. } => format!("{backend} received copy {id}"),
        Resource::Scratch { dir, .. } => format!("verification scratch copy {}", dir.display()),
        Resource::ResticRun { repository, .. } => {
            format!("restic run on {repository} (its locks and unpublished snapshots)")
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
