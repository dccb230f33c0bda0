//! One module per command. Each loads what it needs and calls the orchestrator or the
//! journal; none of them knows the order of the backup's phases.

pub mod backup;
pub mod check;
pub mod cleanup;
pub mod init_repo;
pub mod list;
pub mod prune;
pub mod restore;
pub mod snapshot;
pub mod status;
pub mod verify;

use std::future::Future;

use chrono::{DateTime, Utc};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::error::{class_of, fail, Class};
use crate::hooks::Phase;
use crate::journal::{Journal, RunLock};
use crate::release;

/// Run `work` until it finishes or SIGINT/SIGTERM arrives. On a signal the future is
/// dropped: its database connections close (so the server releases any lock at once)
/// and its child processes are killed; the caller then replays the journal.
pub async fn until_signal<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let name = tokio::select! {
        result = work => return result,
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    Err(fail(
        Class::Interrupted,
        format!("interrupted by {name}; the lock (if held) was released and the run's resources were cleaned up"),
    ))
}

/// Exclusive use of the state directory, with whatever an interrupted run left
/// released first: how every command that creates resources starts. Keep the lock
/// for as long as the journal is used.
pub async fn start_run(config: &Config) -> anyhow::Result<(RunLock, Journal)> {
    start_with(config, release::Scope::of(config)).await
}

/// [`start_run`] for a backup: a partial backup that a killed run left in the
/// destination stays (journaled) for this backup to continue; `dbsnap cleanup`, or a
/// run that fails, removes it.
pub async fn start_backup_run(config: &Config) -> anyhow::Result<(RunLock, Journal)> {
    start_with(config, release::Scope::keeping_partials(config)).await
}

async fn start_with(
    config: &Config,
    scope: release::Scope<'_>,
) -> anyhow::Result<(RunLock, Journal)> {
    let lock = RunLock::acquire(&config.state_dir)?;
    let mut journal = Journal::open(&config.state_dir, &lock)?;
    crate::ssh::session::remove_stale_sockets(&config.state_dir);
    if !journal.entries().is_empty() {
        tracing::warn!("an earlier run was interrupted; releasing what it left first");
        release::release_all(&scope, &mut journal).await?;
    }
    release::release_expired(&config.state_dir, &config.snapshot).await?;
    Ok((lock, journal))
}

/// A run's outcome; when it failed, what it left is released first (a failure of that
/// is logged: the run's own error is the one to report).
pub async fn released_on_error<T>(
    config: &Config,
    journal: &mut Journal,
    outcome: anyhow::Result<T>,
) -> anyhow::Result<T> {
    if outcome.is_err() {
        if let Err(cleanup) = release::release_all(&release::Scope::of(config), journal).await {
            tracing::error!("{cleanup:#}");
        }
    }
    outcome
}

/// Print one JSON document on stdout (the only thing `--json` writes there).
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// How every command that takes a snapshot or changes backups ends (those with a
/// [`crate::cli::Command::changing_name`]): its `on_success` or `on_failure` hook, then
/// the metrics file, both fed from the command's result. Returns the result (or the
/// `on_success` hook's failure).
pub async fn finish(
    config: &Config,
    command: &'static str,
    started: DateTime<Utc>,
    result: anyhow::Result<()>,
) -> anyhow::Result<()> {
    let result = match result {
        Ok(()) => {
            config
                .hooks
                .run(Phase::OnSuccess, &[("DBSNAP_STATUS", "ok".to_string())])
                .await
        }
        // A cleanup that found another run active did nothing and needs nothing: that
        // run releases what it finds itself. Not worth paging anyone every 15 minutes.
        Err(e) if command == "cleanup" && class_of(&e) == Class::Busy => Err(e),
        Err(e) => {
            let env = [
                ("DBSNAP_STATUS", "failed".to_string()),
                ("DBSNAP_ERROR", format!("{e:#}")),
                ("DBSNAP_EXIT_CODE", class_of(&e).exit_code().to_string()),
            ];
            if let Err(hook) = config.hooks.run(Phase::OnFailure, &env).await {
                tracing::error!("{hook:#}");
            }
            Err(e)
        }
    };
    let run = crate::metrics::Run {
        command,
        started,
        finished: Utc::now(),
        exit_code: result
            .as_ref()
            .map_or_else(|e| class_of(e).exit_code(), |()| 0),
    };
    if let Err(e) = crate::metrics::record(config, &run).await {
        tracing::error!("writing the metrics file: {e:#}");
    }
    result
}
