//! `dbsnap prune [--dry-run]`: apply `[retention]` to the backups at the destination
//! and to the kept snapshots. Only dbsnap's own backups (a directory holding a manifest
//! with its own name) and kept snapshots (with a record) are considered; anything else
//! is never touched.

use serde::Serialize;

use crate::config::Config;
use crate::destination::{Backup, Destination, Entry};
use crate::error::{fail, Class};
use crate::journal::{Journal, RunLock};
use crate::kept::KeptSnapshot;
use crate::manifest::Verdict;
use crate::release::{release_all, release_kept};
use crate::retention::{self, Decision, Item};

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
        release_all(&crate::release::Scope::of(config), &mut journal).await?;
    }

    let dest = crate::destination::open_configured(config)?;
    let backups = match &dest {
        Some(d) => own_backups(d.as_ref()).await?,
        None => Vec::new(),
    };
    let kept = KeptSnapshot::list(&config.state_dir)?;
    let report = Report {
        dry_run,
        backups: decide_backups(config, &backups, policy)?,
        snapshots: decide_snapshots(&kept, policy),
    };

    if !json {
        print_decisions(&report);
    }
    if !dry_run {
        let mut removed = false;
        for (backup, d) in backups.iter().zip(&report.backups) {
            if let (false, Some(dest)) = (d.keep, &dest) {
                dest.remove(backup, &mut journal, &config.snapshot).await?;
                tracing::info!("pruned backup {}", backup.path.display());
                removed = true;
            }
        }
        if let (true, Some(dest)) = (removed, &dest) {
            dest.reclaim(&mut journal, "prune").await?;
        }
        for (k, d) in kept.iter().zip(&report.snapshots) {
            if !d.keep {
                release_kept(&config.state_dir, &config.snapshot, k).await?;
                tracing::info!("released kept snapshot {}", k.name);
            }
        }
    }
    if json {
        super::print_json(&report)?;
    }
    Ok(())
}

/// What `[retention]` keeps of the backups; the bases of the next incremental streams
/// are always kept.
fn decide_backups(
    config: &Config,
    backups: &[Backup],
    policy: &retention::Policy,
) -> anyhow::Result<Vec<Decision>> {
    let items: Vec<Item> = backups
        .iter()
        .map(|Backup { manifest: m, .. }| Item {
            name: m.name.clone(),
            time: m.started_at,
            verified: m
                .verification
                .as_ref()
                .map(|v| v.verdict == Verdict::Passed),
        })
        .collect();
    let mut decisions = retention::decide(&items, policy);
    if let Some(b) = &config.backup {
        let bases = crate::transfer::chain::protected_backups(&config.state_dir, &b.dest)?;
        for d in decisions.iter_mut().filter(|d| bases.contains(&d.name)) {
            d.keep = true;
            d.reasons
                .push("base of the next incremental (its snapshot is kept as the parent)".into());
        }
    }
    Ok(decisions)
}

fn decide_snapshots(kept: &[KeptSnapshot], policy: &retention::Policy) -> Vec<Decision> {
    let items: Vec<Item> = kept
        .iter()
        .map(|k| Item {
            name: k.name.to_string(),
            time: k.created_at,
            verified: None,
        })
        .collect();
    retention::decide(&items, policy)
}

fn print_decisions(report: &Report) {
    for (what, decisions) in [("backup", &report.backups), ("snapshot", &report.snapshots)] {
        for d in decisions {
            if d.keep {
                println!("keep   {what} {:<40} {}", d.name, d.reasons.join(", "));
            } else {
                println!(
                    "{} {what} {}",
                    if report.dry_run {
                        "would prune"
                    } else {
                        "prune "
                    },
                    d.name
                );
            }
        }
    }
}

/// The complete backups; what only looks like one is named and never touched.
async fn own_backups(dest: &dyn Destination) -> anyhow::Result<Vec<Backup>> {
    let mut found = Vec::new();
    for entry in dest.entries().await? {
        match entry {
            Entry::Backup(b) => found.push(*b),
            Entry::Renamed { path, .. } | Entry::Invalid { path, .. } => tracing::warn!(
                "{} has a manifest that is unreadable or names another backup; not touching it",
                path.display()
            ),
            Entry::Partial { .. } => {}
        }
    }
    Ok(found)
}
