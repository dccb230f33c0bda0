//! Releasing what dbsnap created: journaled leftovers of an interrupted run, kept
//! snapshots, and a run's own snapshot set. Each step is idempotent, so a release that
//! failed half-way can simply be run again. Commands and the backup flow call these;
//! nothing here knows the order of a backup's phases.

use std::path::Path;

use anyhow::Context;
use dbsnap_backend_api::{SnapshotBackend, SnapshotSet};

use crate::backends::Backends;
use crate::error::backend_error;
use crate::journal::{Journal, Resource};
use crate::kept::KeptSnapshot;

/// Release every journaled resource, newest first (a partial copy before its mount,
/// a mount before its snapshot). Keeps going past failures so that one stuck resource
/// does not pin the others, then reports all failures.
pub async fn release_all(
    state_dir: &Path,
    backends: &dyn Backends,
    journal: &mut Journal,
) -> anyhow::Result<Vec<String>> {
    let mut released = Vec::new();
    let mut failures = Vec::new();
    for entry in journal.entries().to_vec().into_iter().rev() {
        let what = describe(&entry.resource);
        match release_one(state_dir, backends, &entry.resource).await {
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

async fn release_one(
    state_dir: &Path,
    backends: &dyn Backends,
    resource: &Resource,
) -> anyhow::Result<()> {
    match resource {
        Resource::Partial { dir } => {
            // Only ever delete a directory dbsnap named `*.partial`.
            if dir.extension().is_some_and(|e| e == "partial") {
                crate::destination::local::remove_dir(dir, backends).await?;
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
            backends.delete_received(backend, id).await
        }
        Resource::Mount { set, workdir } => {
            let backend = backends.open_named(&set.backend)?;
            unmount_from(backend.as_ref(), set, workdir).await
        }
        Resource::Snapshot { set } => {
            // A snapshot kept on purpose (`snapshot create`) whose run stopped between
            // writing its record and leaving the journal is not a leftover.
            if crate::kept::is_kept(state_dir, &set.name) {
                return Ok(());
            }
            let backend = backends.open_named(&set.backend)?;
            backend.release(set).await?;
            Ok(())
        }
        Resource::Scratch { dir, run_dir } => crate::verify::remove_scratch(dir, run_dir).await,
    }
}

pub fn describe(resource: &Resource) -> String {
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

/// Unmount and destroy a snapshot set, forgetting each resource once it is gone.
pub async fn release(
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
    set: &SnapshotSet,
    workdir: &Path,
) -> anyhow::Result<()> {
    unmount(backend, journal, set, workdir).await?;
    backend.release(set).await.map_err(backend_error)?;
    journal.forget(&Resource::Snapshot { set: set.clone() })?;
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
