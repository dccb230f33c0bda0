//! `dbsnap snapshot create|list|release|rollback`: safety snapshots kept on the
//! server's own storage, e.g. before an upgrade.

use std::path::{Path, PathBuf};

use dbsnap_backend_api::Health;
use tokio::signal::unix::{signal, SignalKind};

use crate::backends;
use crate::config::Config;
use crate::error::{backend_error, fail, Class};
use crate::hooks::Phase;
use crate::journal::{Journal, Resource, RunLock};
use crate::kept::KeptSnapshot;
use crate::orchestrator::{self, KeepMounted, Plan};
use crate::release::release_kept;

pub async fn create(
    config: &Config,
    json: bool,
    label: Option<&str>,
    force: bool,
    mount: Option<&Path>,
    ttl: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let keep_mounted = keep_mounted(mount, ttl)?;
    let plan = Plan::new(config, force)?;
    let backend = backends::open(&config.snapshot)?;
    let (_lock, mut journal) = super::start_run(config).await?;
    let label_env = ("DBSNAP_LABEL", label.unwrap_or_default().to_string());
    config
        .hooks
        .run(
            Phase::PreLock,
            &[("DBSNAP_STATUS", "running".to_string()), label_env.clone()],
        )
        .await?;
    let outcome = super::until_signal(orchestrator::snapshot_create(
        &plan,
        backend.as_ref(),
        &mut journal,
        label,
        keep_mounted.as_ref(),
    ))
    .await;
    let kept = super::released_on_error(config, &mut journal, outcome).await?;
    if let Some(m) = &kept.mount {
        // The record exists now, so a failed bind is undone by releasing it.
        if let Err(e) = m.bind_all() {
            if let Err(cleanup) = release_kept(&config.state_dir, &config.snapshot, &kept).await {
                tracing::error!("{cleanup:#}");
            }
            return Err(e);
        }
    }
    // Like a backup's: after the lock, with the snapshot readable (hook mode: its
    // mount directory); a failure aborts the run, so the snapshot is released.
    let snapshot_path = kept.mount.as_ref().map(|m| m.dir.display().to_string());
    let env = [
        ("DBSNAP_NAME", kept.name.to_string()),
        ("DBSNAP_STATUS", "running".to_string()),
        label_env,
        ("DBSNAP_SNAPSHOT_PATH", snapshot_path.unwrap_or_default()),
    ];
    if let Err(e) = config.hooks.run(Phase::PostSnapshot, &env).await {
        if let Err(cleanup) = release_kept(&config.state_dir, &config.snapshot, &kept).await {
            tracing::error!("{cleanup:#}");
        }
        return Err(e);
    }
    if json {
        return super::print_json(&kept);
    }
    print_kept(&kept)
}

/// `--mount DIR [--ttl]`, checked.
fn keep_mounted(
    mount: Option<&Path>,
    ttl: Option<std::time::Duration>,
) -> anyhow::Result<Option<KeepMounted>> {
    match mount {
        Some(dir) => Ok(Some(KeepMounted {
            dir: existing_empty_dir(dir)?,
            ttl: ttl.map(chrono::Duration::from_std).transpose()?,
        })),
        None if ttl.is_some() => Err(fail(
            Class::Config,
            "--ttl needs --mount DIR: it releases a snapshot a backup tool forgot",
        )),
        None => Ok(None),
    }
}

fn print_kept(kept: &KeptSnapshot) -> anyhow::Result<()> {
    println!("snapshot {} kept", kept.name);
    println!(
        "  lock         {} — waited {:.1} ms, held {:.1} ms",
        kept.lock.mode, kept.lock.wait_ms, kept.lock.hold_ms
    );
    for s in &kept.set.snapshots {
        println!("  {} -> {}", s.volume.root.display(), s.id);
    }
    if let Some(m) = &kept.mount {
        println!("  mounted read-only under {}:", m.dir.display());
        for p in &kept.paths {
            let at = m.dir.join(p.path.strip_prefix("/").unwrap_or(&p.path));
            println!("    {:<12} {}", p.role, at.display());
        }
        println!(
            "  coordinates  {}",
            serde_json::to_string(&kept.coordinates)?
        );
        if let Some(at) = kept.expires_at {
            println!("  expires      {}", at.format("%Y-%m-%d %H:%M:%S UTC"));
        }
        println!(
            "Back up {}, then run `dbsnap snapshot release {}`",
            m.dir.display(),
            m.dir.display()
        );
        return Ok(());
    }
    println!(
        "Roll back with `dbsnap snapshot rollback {}` (server stopped); remove with `dbsnap snapshot release {}`",
        kept.name, kept.name
    );
    Ok(())
}

/// The absolute form of `dir`, which must be an existing empty directory: mounting over
/// files would hide them, and a backup tool would archive them as database files.
fn existing_empty_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::fs::canonicalize(dir).map_err(|e| {
        fail(
            Class::Config,
            format!(
                "--mount {}: {e}. Create an empty directory first (mkdir -p)",
                dir.display()
            ),
        )
    })?;
    let mut entries = std::fs::read_dir(&abs).map_err(|e| {
        fail(
            Class::Config,
            format!("--mount {}: {e}. Name an empty directory", dir.display()),
        )
    })?;
    if entries.next().is_some() {
        return Err(fail(
            Class::Config,
            format!(
                "--mount {} is not empty: name an empty directory (if an earlier hook run left it \
                 mounted, run `dbsnap snapshot release {}` first)",
                dir.display(),
                dir.display()
            ),
        ));
    }
    Ok(abs)
}

pub async fn list(config: &Config, json: bool) -> anyhow::Result<()> {
    let all = KeptSnapshot::list(&config.state_dir)?;
    let mut listed = Vec::new();
    for kept in &all {
        listed.push(Listed {
            kept,
            health: health_of(config, kept).await.into(),
        });
    }
    if json {
        return super::print_json(&listed);
    }
    if all.is_empty() {
        println!("no kept snapshots");
        return Ok(());
    }
    println!(
        "{:<48} {:<22} {:<8} {:<8} VOLUMES",
        "NAME", "CREATED", "BACKEND", "HEALTH"
    );
    for Listed { kept: k, health } in &listed {
        println!(
            "{:<48} {:<22} {:<8} {:<8} {}",
            k.name.as_str(),
            k.created_at.format("%Y-%m-%d %H:%M:%S"),
            k.set.backend,
            health.status,
            k.set
                .snapshots
                .iter()
                .map(|s| s.volume.root.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(m) = &health.message {
            println!("  {}: {m}", health.status);
        }
    }
    Ok(())
}

/// `target` is a snapshot's name or the directory it was mounted at (hook mode).
pub async fn release(config: &Config, json: bool, target: &str) -> anyhow::Result<()> {
    let _lock = RunLock::acquire(&config.state_dir)?;
    let kept = if target.contains('/') || Path::new(target).is_dir() {
        // A released DIR stays (empty), so releasing it again succeeds; a DIR that does
        // not exist is a typo that would leave the snapshot kept.
        let dir = std::fs::canonicalize(target).map_err(|e| {
            fail(
                Class::Config,
                format!(
                    "{target} cannot be released: {e}. Give the directory given to \
                     `snapshot create --mount`, or a name from `dbsnap snapshot list`"
                ),
            )
        })?;
        let found = KeptSnapshot::list(&config.state_dir)?
            .into_iter()
            .find(|k| k.mount.as_ref().is_some_and(|m| m.dir == dir));
        match found {
            Some(k) => k,
            // Already released: a backup tool's after-job may run twice.
            None => {
                if json {
                    return super::print_json(&serde_json::json!({ "released": null }));
                }
                println!("no kept snapshot is mounted at {}", dir.display());
                return Ok(());
            }
        }
    } else {
        KeptSnapshot::read(&config.state_dir, target)?
    };
    // Read before the release: the backend can only tell while the snapshot exists.
    let health = health_of(config, &kept).await;
    release_kept(&config.state_dir, &config.snapshot, &kept).await?;
    if let Health::Failed(why) = &health {
        let reader = match &kept.mount {
            Some(m) => format!("Whatever read {} (the backup tool's job)", m.dir.display()),
            None => "Whatever read it".to_string(),
        };
        return Err(fail(
            Class::SnapshotInvalid,
            format!(
                "released snapshot {}, but it had become invalid while kept: {why}. {reader} \
                 did not read a consistent copy: discard that copy and take it again (with more \
                 snapshot space)",
                kept.name
            ),
        ));
    }
    if json {
        return super::print_json(&serde_json::json!({ "released": kept.name }));
    }
    println!("released snapshot {}", kept.name);
    Ok(())
}

/// A kept snapshot's health as its backend reports it; an error reading it is a
/// warning, not a failure.
async fn health_of(config: &Config, kept: &KeptSnapshot) -> Health {
    let backend = match backends::open_named(&kept.set.backend, &config.snapshot) {
        Ok(b) => b,
        Err(e) => return Health::Warning(format!("cannot open its backend: {e:#}")),
    };
    match backend.health(&kept.set).await {
        Ok(h) => h,
        Err(e) => Health::Warning(format!("cannot read its health: {e}")),
    }
}

/// One line of `snapshot list --json`: the record and its health now.
#[derive(serde::Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    kept: &'a KeptSnapshot,
    health: HealthReport,
}

#[derive(serde::Serialize)]
struct HealthReport {
    /// `ok`, `warning` or `failed`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl From<Health> for HealthReport {
    fn from(h: Health) -> Self {
        let (status, message) = match h {
            Health::Ok => ("ok", None),
            Health::Warning(m) => ("warning", Some(m)),
            Health::Failed(m) => ("failed", Some(m)),
        };
        HealthReport { status, message }
    }
}

pub async fn rollback(config: &Config, json: bool, name: &str) -> anyhow::Result<()> {
    let lock = RunLock::acquire(&config.state_dir)?;
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
    // Listening for SIGINT/SIGTERM replaces their default action (terminate), so a Ctrl-C
    // cannot stop a backend between unmounting a volume and mounting it again: the signals
    // wait until the rollback is over. The commands the backend runs are in their own
    // process groups, so the terminal's Ctrl-C does not reach them either.
    let _interrupt = signal(SignalKind::interrupt())?;
    let _terminate = signal(SignalKind::terminate())?;
    let outcome = backend.rollback(&kept.set).await.map_err(backend_error)?;
    if !outcome.snapshots_kept {
        forget(config, &lock, &kept)?;
    }
    if json {
        return super::print_json(&serde_json::json!({
            "rolled_back": kept.name,
            "snapshot_kept": outcome.snapshots_kept,
            "pending": outcome.pending,
        }));
    }
    println!(
        "rolled back to snapshot {} (taken {})",
        kept.name,
        kept.created_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    if outcome.snapshots_kept {
        println!(
            "The snapshot is kept: roll back to it again, or remove it with `dbsnap snapshot release {}`.",
            kept.name
        );
    } else {
        println!(
            "The rollback consumed the snapshot (it was merged into the volume), so dbsnap has forgotten it."
        );
    }
    match &outcome.pending {
        Some(pending) => {
            println!("NOT DONE YET:");
            for line in pending.lines() {
                println!("  {line}");
            }
        }
        None => println!(
            "Start the server again (systemctl start mariadb); crash recovery brings it to the snapshot's instant."
        ),
    }
    Ok(())
}

/// Forget a kept snapshot that no longer exists: its record, and anything the journal
/// still says about its set.
fn forget(config: &Config, lock: &RunLock, kept: &KeptSnapshot) -> anyhow::Result<()> {
    let mut journal = Journal::open(&config.state_dir, lock)?;
    let stale: Vec<Resource> = journal
        .entries()
        .iter()
        .filter(|e| match &e.resource {
            Resource::Snapshot { set } | Resource::Mount { set, .. } => set.name == kept.name,
            Resource::Partial { .. }
            | Resource::RemotePartial { .. }
            | Resource::Pulled { .. }
            | Resource::Scratch { .. }
            | Resource::Received { .. }
            | Resource::Fetched { .. }
            | Resource::ResticRun { .. } => false,
        })
        .map(|e| e.resource.clone())
        .collect();
    for resource in &stale {
        journal.forget(resource)?;
    }
    kept.remove(&config.state_dir)
}
