//! dbsnap: consistent backups of a live MySQL/MariaDB server from filesystem snapshots.
//! The flow is described under "How it works" in the README; `orchestrator` runs it.

mod backends;
mod cli;
mod commands;
mod config;
mod db;
mod destination;
mod error;
mod freshness;
mod hooks;
mod inventory;
mod journal;
mod kept;
mod manifest;
mod manpages;
mod metrics;
mod orchestrator;
mod overlap;
mod procs;
mod progress;
mod readback;
mod records;
mod release;
mod relocate;
mod restic;
mod restore;
mod retention;
mod ssh;
mod transfer;
mod verify;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, SnapshotCommand};
use crate::config::Config;
use crate::error::class_of;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A forced command on a backup host: no configuration, no logging, nothing but it.
    if let Command::SshConfine { root } = &cli.command {
        return destination::ssh::confine::run(root);
    }
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("DBSNAP_LOG").unwrap_or_else(|_| EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("starting the async runtime");
    if let Command::Status { max_age } = &cli.command {
        return match runtime.block_on(status(&cli, *max_age)) {
            Ok(code) => ExitCode::from(code),
            Err(err) => {
                // One line, as monitoring shows only the first (TOML errors span several).
                let message = format!("{err:#}");
                let words: Vec<&str> = message.split_whitespace().collect();
                println!("DBSNAP UNKNOWN - {}", words.join(" "));
                ExitCode::from(freshness::UNKNOWN_EXIT_CODE)
            }
        };
    }
    let result = runtime.block_on(run(&cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let class = class_of(&err);
            if let Some(backend) = error::backend_cause(&err) {
                tracing::debug!("the backend's error, with its kind and source: {backend:?}");
            }
            eprintln!("error: {err:#}");
            if cli.json {
                let doc = serde_json::json!({
                    "error": { "class": format!("{class:?}"), "exit_code": class.exit_code(), "message": format!("{err:#}") }
                });
                println!("{doc}");
            }
            ExitCode::from(class.exit_code())
        }
    }
}

async fn status(cli: &Cli, max_age: std::time::Duration) -> anyhow::Result<u8> {
    let config = Config::load(&cli.config)?;
    commands::status::run(&config, cli.json, max_age).await
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    // These two need no configuration.
    match &cli.command {
        Command::Completions { shell } => return manpages::print_completions(*shell),
        Command::Man { dir } => return manpages::write_all(dir).map(|_| ()),
        _ => {}
    }
    let mut config = Config::load(&cli.config)?;
    let lock_args = match &cli.command {
        Command::Check(lock)
        | Command::Backup { lock, .. }
        | Command::Snapshot(SnapshotCommand::Create { lock, .. }) => Some(lock),
        _ => None,
    };
    if let Some(mode) = lock_args.and_then(|l| l.lock) {
        config.mysql.lock = mode;
    }
    let changing = cli.command.changing_name();
    if let Some(name) = changing {
        hooks::set_command(name);
    }
    let started = chrono::Utc::now();
    let result = dispatch(cli, &config).await;
    match changing {
        Some(name) => commands::finish(&config, name, started, result).await,
        None => result,
    }
}

/// Run the command `cli` names against `config`.
async fn dispatch(cli: &Cli, config: &Config) -> anyhow::Result<()> {
    match &cli.command {
        Command::Check(lock) => commands::check::run(config, cli.json, lock.force).await,
        Command::Backup { lock, max_lock_ms } => {
            commands::backup::run(config, cli.json, lock.force, *max_lock_ms).await
        }
        Command::InitRepo => commands::init_repo::run(config, cli.json).await,
        Command::List => commands::list::run(config, cli.json).await,
        Command::Cleanup { forget: None } => commands::cleanup::run(config, cli.json).await,
        Command::Cleanup { forget: Some(run) } => commands::cleanup::forget(config, cli.json, run),
        Command::Verify { backup, checksums } => {
            commands::verify::run(config, cli.json, backup, *checksums).await
        }
        Command::Restore { .. } => {
            let request = restore_request(&cli.command).expect("a restore command");
            commands::restore::run(config, cli.json, request).await
        }
        Command::Snapshot(s) => snapshot(s, config, cli.json).await,
        Command::Prune { dry_run } => commands::prune::run(config, cli.json, *dry_run).await,
        Command::Status { .. }
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::SshConfine { .. } => {
            unreachable!("handled before the configuration is used")
        }
    }
}

async fn snapshot(s: &SnapshotCommand, config: &Config, json: bool) -> anyhow::Result<()> {
    match s {
        SnapshotCommand::Create {
            label,
            mount,
            ttl,
            lock,
        } => {
            commands::snapshot::create(
                config,
                json,
                label.as_deref(),
                lock.force,
                mount.as_deref(),
                *ttl,
            )
            .await
        }
        SnapshotCommand::List => commands::snapshot::list(config, json).await,
        SnapshotCommand::Release { name } => commands::snapshot::release(config, json, name).await,
        SnapshotCommand::Rollback { name } => {
            commands::snapshot::rollback(config, json, name).await
        }
    }
}

/// The restore request `dbsnap restore ...` asks for.
fn restore_request(command: &Command) -> Option<restore::Request> {
    let Command::Restore {
        backup,
        datadir,
        force,
        owner,
        source_host,
        source_port,
        source_user,
    } = command
    else {
        return None;
    };
    Some(restore::Request {
        backup: backup.clone(),
        datadir: datadir.clone(),
        force: *force,
        owner: owner.clone(),
        source: restore::Source {
            host: source_host.clone().unwrap_or_default(),
            port: *source_port,
            user: source_user.clone(),
        },
        protected: Vec::new(),
    })
}
