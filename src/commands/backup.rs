//! `dbsnap backup`: the whole flow, then cleanup of anything a failure left.

use std::path::PathBuf;

use bytesize::ByteSize;

use crate::backends;
use crate::config::Config;
use crate::destination::Destination;
use crate::error::{class_of, fail, Class};
use crate::journal::Journal;
use crate::manifest::Manifest;
use crate::orchestrator::{self, CopyPlan, Plan};

pub async fn run(
    config: &Config,
    json: bool,
    force: bool,
    max_lock_ms: Option<f64>,
) -> anyhow::Result<()> {
    let copy = CopyPlan::new(config.backup()?, &config.state_dir)?;
    let plan = Plan::new(config, force)?;
    let backend = backends::open(&config.snapshot)?;
    let (_lock, mut journal) = super::start_backup_run(config).await?;
    let before = published(copy.dest.as_ref()).await;

    let outcome = super::until_signal(orchestrator::backup(
        &plan,
        &copy,
        backend.as_ref(),
        &mut journal,
    ))
    .await;
    let manifest = match outcome {
        Ok(m) => m,
        Err(e) if class_of(&e) == Class::Interrupted => {
            let e = failed_run(config, &mut journal, e).await;
            let after = published(copy.dest.as_ref()).await;
            return Err(interrupted(
                e,
                after.into_iter().find(|b| !before.contains(b)),
            ));
        }
        Err(e) => return Err(failed_run(config, &mut journal, e).await),
    };

    print(&manifest, json)?;
    if let Some(budget) = max_lock_ms.filter(|b| manifest.lock.hold_ms > *b) {
        return Err(fail(
            Class::Lock,
            format!(
                "the backup {} is complete, but the lock was held {:.1} ms, over the --max-lock-ms budget of {budget} ms",
                manifest.path.display(),
                manifest.lock.hold_ms
            ),
        ));
    }
    Ok(())
}

/// A run failed: release what it left (the `on_failure` hook runs after this, in
/// `commands::finish`, so it sees what the failure left: nothing). Returns the error.
async fn failed_run(config: &Config, journal: &mut Journal, e: anyhow::Error) -> anyhow::Error {
    if let Err(cleanup) =
        crate::release::release_all(&crate::release::Scope::of(config), journal).await
    {
        tracing::error!("{cleanup:#}");
    }
    e
}

fn print(manifest: &Manifest, json: bool) -> anyhow::Result<()> {
    if json {
        super::print_json(manifest)?;
    } else {
        println!("backup {} complete", manifest.name);
        println!("  path         {}", manifest.path.display());
        println!(
            "  lock         {} — waited {:.1} ms, held {:.1} ms ({})",
            manifest.lock.mode, manifest.lock.wait_ms, manifest.lock.hold_ms, manifest.lock.reason
        );
        if let (Some(file), Some(pos)) = (
            &manifest.coordinates.binlog_file,
            manifest.coordinates.binlog_position,
        ) {
            println!("  binlog       {file}:{pos}");
        }
        if let Some(gtid) = manifest
            .coordinates
            .gtid_binlog_pos
            .as_deref()
            .filter(|g| !g.is_empty())
        {
            println!("  gtid         {gtid}");
        }
        let t = &manifest.transfer;
        let what = match manifest.stored.is_empty() {
            true => format!(
                "copied {} in {} files",
                ByteSize::b(t.bytes).display().iec(),
                t.files
            ),
            false => format!("sent {}", ByteSize::b(t.bytes).display().iec()),
        };
        let from = match (&t.base, &t.full_because) {
            (Some(base), _) => format!(", incremental from {base}"),
            (None, Some(why)) => format!(", full ({why})"),
            (None, None) => String::new(),
        };
        println!(
            "  transfer     {} {what}, {:.1} s{from}",
            t.method,
            t.duration_ms as f64 / 1000.0
        );
    }
    Ok(())
}

/// The complete backups at the destination.
async fn published(dest: &dyn Destination) -> Vec<PathBuf> {
    let backups = dest.backups().await.unwrap_or_default();
    backups.into_iter().map(|b| b.path).collect()
}

/// An interrupted run's error; interrupted after the rename (`new`), the backup is
/// complete: only releasing the snapshot, verifying or the post_backup hook were cut
/// short.
fn interrupted(e: anyhow::Error, new: Option<PathBuf>) -> anyhow::Error {
    match new {
        Some(new) => fail(
            Class::Interrupted,
            format!(
                "{e:#}, but the backup had already been published: {} is complete and kept. \
                 The interruption may have cut its verification short: run `dbsnap verify {}` \
                 to prove it restores",
                new.display(),
                new.display()
            ),
        ),
        None => fail(
            Class::Interrupted,
            format!("{e:#}; cleaned up, no backup was published"),
        ),
    }
}
