//! `dbsnap snapshot create|list|release|rollback`: safety snapshots kept on the
//! server's own storage, e.g. before an upgrade.

use crate::backends;
use crate::commands::cleanup::release_all;
use crate::config::Config;
use crate::error::{fail, Class};
use crate::journal::RunLock;
use crate::kept::KeptSnapshot;
use crate::orchestrator::{self, backend_error};

pub async fn create(
    config: &Config,
    json: bool,
    label: Option<&str>,
    force: bool,
) -> anyhow::Result<()> {
    let backend = backends::open(&config.snapshot)?;
    let (_lock, mut journal) = super::start_run(config).await?;
    let outcome = super::until_signal(orchestrator::snapshot_create(
        config,
        backend.as_ref(),
        &mut journal,
        label,
        force,
    ))
    .await;
    let kept = match outcome {
        Ok(k) => k,
        Err(e) => {
            if let Err(cleanup) = release_all(config, &mut journal).await {
                tracing::error!("{cleanup:#}");
            }
            return Err(e);
        }
    };
    if json {
        return super::print_json(&kept);
    }
    println!("snapshot {} kept", kept.name);
    println!(
        "  lock         {} — waited {:.1} ms, held {:.1} ms",
        kept.lock.mode, kept.lock.wait_ms, kept.lock.hold_ms
    );
    for s in &kept.set.snapshots {
        println!("  {} -> {}", s.volume.root.display(), s.id);
    }
    println!(
        "Roll back with `dbsnap snapshot rollback {}` (server stopped); remove with `dbsnap snapshot release {}`",
        kept.name, kept.name
    );
    Ok(())
}

pub async fn list(config: &Config, json: bool) -> anyhow::Result<()> {
    let all = KeptSnapshot::list(&config.state_dir)?;
    if json {
        return super::print_json(&all);
    }
    if all.is_empty() {
        println!("no kept snapshots");
        return Ok(());
    }
    println!("{:<48} {:<22} {:<8} VOLUMES", "NAME", "CREATED", "BACKEND");
    for k in &all {
        println!(
            "{:<48} {:<22} {:<8} {}",
            k.name.as_str(),
            k.created_at.format("%Y-%m-%d %H:%M:%S"),
            k.set.backend,
            k.set
                .snapshots
                .iter()
                .map(|s| s.volume.root.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

pub async fn release(config: &Config, json: bool, name: &str) -> anyhow::Result<()> {
    let _lock = RunLock::acquire(&config.state_dir)?;
    let kept = KeptSnapshot::read(&config.state_dir, name)?;
    release_kept(config, &kept).await?;
    if json {
        return super::print_json(&serde_json::json!({ "released": kept.name }));
    }
    println!("released snapshot {}", kept.name);
    Ok(())
}

/// Destroy a kept snapshot, then forget its record.
pub async fn release_kept(config: &Config, kept: &KeptSnapshot) -> anyhow::Result<()> {
    let backend = backends::open_named(&kept.set.backend, &config.snapshot)?;
    backend.release(&kept.set).await.map_err(backend_error)?;
    kept.remove(&config.state_dir)
}

pub async fn rollback(config: &Config, json: bool, name: &str) -> anyhow::Result<()> {
    let _lock = RunLock::acquire(&config.state_dir)?;
    let kept = KeptSnapshot::read(&config.state_dir, name)?;
    // Reverting files under a running server corrupts it: refuse.
    let dirs = kept
        .paths
        .iter()
        .map(|p| p.path.clone())
        .chain(kept.set.snapshots.iter().map(|s| s.volume.root.clone()));
    for dir in dirs {
        let running = crate::procs::servers_on(&dir);
        if !running.is_empty() {
            return Err(fail(
                Class::Destination,
                format!(
                    "the database server is running on {}: {}. Stop it first (systemctl stop \
                     mariadb, or mariadb-admin shutdown), then run `dbsnap snapshot rollback {}` again",
                    dir.display(),
                    crate::procs::describe(&running),
                    kept.name
                ),
            ));
        }
    }
    let backend = backends::open_named(&kept.set.backend, &config.snapshot)?;
    backend.rollback(&kept.set).await.map_err(backend_error)?;
    if json {
        return super::print_json(&serde_json::json!({ "rolled_back": kept.name }));
    }
    println!(
        "rolled back to snapshot {} (taken {}); the snapshot is kept",
        kept.name,
        kept.created_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    println!("Start the server again (systemctl start mariadb); crash recovery brings it to the snapshot's instant.");
    Ok(())
}
