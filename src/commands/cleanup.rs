//! `dbsnap cleanup`: release whatever an interrupted run left, from the journal.

use crate::config::Config;
use crate::error::{fail, Class};
use crate::journal::{Journal, RunLock};
use crate::release::{self, Cleaned, Scope};

pub async fn run(config: &Config, json: bool) -> anyhow::Result<()> {
    let lock = RunLock::acquire(&config.state_dir)?;
    let mut journal = Journal::open(&config.state_dir, &lock)?;
    crate::ssh::session::remove_stale_sockets(&config.state_dir);
    let Cleaned {
        mut released,
        nothing_to_release,
    } = release::release_all(&Scope::of(config), &mut journal).await?;
    released.extend(release::release_expired(&config.state_dir, &config.snapshot).await?);
    released.extend(
        crate::transfer::resume::release_records(&config.state_dir, &config.snapshot, None).await?,
    );
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
        let what = release::describe(&entry.resource);
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
