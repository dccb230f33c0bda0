//! `dbsnap prune [--dry-run]`: apply `[retention]` to the backups at the destination
//! and to the kept snapshots. Only dbsnap's own backups (a directory holding a manifest
//! with its own name) and kept snapshots (with a record) are considered; anything else
//! is never touched.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::commands::cleanup::release_all;
use crate::commands::snapshot::release_kept;
use crate::config::Config;
use crate::error::{fail, Class};
use crate::journal::{Journal, Resource, RunLock};
use crate::kept::KeptSnapshot;
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::retention::{self, Decision, Item};
use crate::verify::Verdict;

#[derive(Serialize)]
struct Report {
    dry_run: bool,
    backups: Vec<Decision>,
    snapshots: Vec<Decision>,
}

pub async fn run(config: &Config, json: bool, dry_run: bool) -> anyhow::Result<()> {
    let policy = config
        .retention
        .as_ref()
        .filter(|p| !p.keeps_nothing())
        .ok_or_else(|| {
            fail(
                Class::Config,
                "prune needs a [retention] section that keeps something, e.g.\n  [retention]\n  \
                 keep_last = 3\n  keep_daily = 7\n  keep_weekly = 4\n  keep_monthly = 6",
            )
        })?;
    let lock = RunLock::acquire(&config.state_dir)?;
    let mut journal = Journal::open(&config.state_dir, &lock)?;
    if !journal.entries().is_empty() && !dry_run {
        tracing::warn!("an earlier run was interrupted; releasing what it left first");
        release_all(config, &mut journal).await?;
    }

    let backups = match &config.backup {
        Some(b) => own_backups(&b.dest)?,
        None => Vec::new(),
    };
    let backup_items: Vec<Item> = backups
        .iter()
        .map(|(_, m)| Item {
            name: m.name.clone(),
            time: m.started_at,
            verified: m
                .verification
                .as_ref()
                .map(|v| v.verdict == Verdict::Passed),
        })
        .collect();
    let kept = KeptSnapshot::list(&config.state_dir)?;
    let snapshot_items: Vec<Item> = kept
        .iter()
        .map(|k| Item {
            name: k.name.to_string(),
            time: k.created_at,
            verified: None,
        })
        .collect();
    let mut backup_decisions = retention::decide(&backup_items, policy);
    if let Some(b) = &config.backup {
        let bases = crate::transfer::native::protected_backups(&config.state_dir, &b.dest)?;
        for d in backup_decisions
            .iter_mut()
            .filter(|d| bases.contains(&d.name))
        {
            d.keep = true;
            d.reasons.push("base of the next incremental stream".into());
        }
    }
    let report = Report {
        dry_run,
        backups: backup_decisions,
        snapshots: retention::decide(&snapshot_items, policy),
    };

    if !json {
        for (what, decisions) in [("backup", &report.backups), ("snapshot", &report.snapshots)] {
            for d in decisions {
                if d.keep {
                    println!("keep   {what} {:<40} {}", d.name, d.reasons.join(", "));
                } else {
                    println!(
                        "{} {what} {}",
                        if dry_run { "would prune" } else { "prune " },
                        d.name
                    );
                }
            }
        }
    }
    if !dry_run {
        for ((dir, m), d) in backups.iter().zip(&report.backups) {
            if !d.keep {
                remove_backup(config, &mut journal, dir, &m.name).await?;
            }
        }
        for (k, d) in kept.iter().zip(&report.snapshots) {
            if !d.keep {
                release_kept(config, k).await?;
                tracing::info!("released kept snapshot {}", k.name);
            }
        }
    }
    if json {
        super::print_json(&report)?;
    }
    Ok(())
}

/// Complete backups whose manifest carries the directory's own name.
pub fn own_backups(dest: &Path) -> anyhow::Result<Vec<(PathBuf, Manifest)>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dest).with_context(|| format!("reading {}", dest.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.join(MANIFEST_FILE).is_file() {
            continue;
        }
        match Manifest::read(&path) {
            Ok(m) if entry.file_name().to_string_lossy() == m.name => found.push((path, m)),
            Ok(_) | Err(_) => tracing::warn!(
                "{} has a manifest that is unreadable or names another backup; not touching it",
                path.display()
            ),
        }
    }
    found.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    Ok(found)
}

/// Rename to `NAME.partial` first (journaled): from that instant it is no longer a
/// backup, and an interrupted delete is finished by `dbsnap cleanup`.
async fn remove_backup(
    config: &Config,
    journal: &mut Journal,
    dir: &Path,
    name: &str,
) -> anyhow::Result<()> {
    let partial = dir.with_file_name(format!("{name}.partial"));
    let resource = Resource::Partial {
        dir: partial.clone(),
    };
    journal.record(name, resource.clone())?;
    std::fs::rename(dir, &partial)
        .with_context(|| format!("renaming {} to {}", dir.display(), partial.display()))?;
    crate::transfer::native::remove_backup_dir(&partial, &config.snapshot).await?;
    journal.forget(&resource)?;
    tracing::info!("pruned backup {}", dir.display());
    Ok(())
}
