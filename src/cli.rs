//! The command line. Parsing only: every command is carried out in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_CONFIG;
use crate::db::lock_mode::RequestedMode;

const ABOUT: &str = "Consistent backups of a live MySQL/MariaDB server from filesystem snapshots";

const LONG_ABOUT: &str = "\
Consistent backups of a live MySQL/MariaDB server from filesystem snapshots.

dbsnap holds the database's lock only while a filesystem snapshot is taken — usually
tens of milliseconds — then copies the frozen, read-only snapshot with rsync while the
server runs on:

  preflight ─► lock ─► snapshot ─► unlock ─► mount ─► copy ─► publish ─► release
  (no lock)    └── the only window where writers wait ──┘

Start with `dbsnap check`: it shows what would be snapshotted and whether it can be,
without taking any lock.";

const AFTER_HELP: &str = "\
A minimal configuration (/etc/dbsnap/dbsnap.toml):

  [mysql]
  socket = \"/run/mysqld/mysqld.sock\"
  defaults_file = \"/etc/mysql/debian.cnf\"   # user/password from its [client] section

  [snapshot]
  backend = \"btrfs\"

  [backup]
  dest = \"/srv/backups/db1\"

Passwords are never taken on the command line: use defaults_file or password_file.";

#[derive(Debug, Parser)]
#[command(name = "dbsnap", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, default_value = DEFAULT_CONFIG, value_name = "PATH")]
    pub config: PathBuf,

    /// Print one JSON document on stdout (logs stay on stderr).
    #[arg(long, global = true)]
    pub json: bool,

    /// More log detail (-v: debug, every external command; -vv: trace).
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what would be snapshotted and whether it can be; takes no lock, changes nothing.
    ///
    /// Connects to the server, reads where it keeps its files, checks privileges, maps
    /// every directory to the volume that holds it, checks free space and the destination.
    Check(LockArgs),
    /// Create the restic repository [backup] dest names, once, before the first backup.
    ///
    /// Runs `restic init` with backup.restic.password_file (handed to restic in its
    /// environment, never on a command line) and env_file. Refuses where a repository
    /// exists already. Only for `dest = "restic:<repository>"`: a backup never creates a
    /// repository, and a directory destination needs none.
    InitRepo,
    /// Take a backup: lock, snapshot, unlock, copy from the snapshot, publish, release.
    ///
    /// The backup appears as DEST/NAME (NAME is a UTC timestamp such as
    /// 20261125T214500Z) only once it is complete, with its manifest.toml; while it is
    /// being copied it is DEST/NAME.partial. A failed or interrupted run releases its
    /// snapshot and removes its partial copy; a previous backup is never touched.
    /// With `verify = true` in [backup], the new backup is then verified (see `verify`).
    ///
    /// [backup] method chooses the copy: `rsync` (default; incremental by reflinks or
    /// hard links), `btrfs-send` / `zfs-send` (native streams, each incremental from the
    /// previous backup's snapshot, which stays on the source until the next backup), or
    /// `auto` (the stream where the destination can receive it). `dbsnap check` shows
    /// which one a backup would use.
    #[command(after_help = crate::error::Class::TABLE)]
    Backup {
        #[command(flatten)]
        lock: LockArgs,
        /// Fail (exit 7, after finishing and keeping the backup) when the lock was held
        /// longer than this many milliseconds, so monitoring can alert.
        #[arg(long, value_name = "MS", value_parser = parse_milliseconds)]
        max_lock_ms: Option<f64>,
    },
    /// List the backups at the destination with their lock cost and binlog position.
    List,
    /// Release whatever an interrupted run left behind (snapshots, mounts, partial copies).
    ///
    /// Every resource is recorded in the state journal before it is created, so this
    /// finds everything even after kill -9 or a power loss. `backup` does this by
    /// itself before it starts.
    Cleanup {
        /// Drop the journal entries of run RUN without releasing them: for resources
        /// cleanup refuses or cannot release, once you have checked them and removed
        /// what is left by hand. The failed cleanup names the run.
        #[arg(long, value_name = "RUN")]
        forget: Option<String>,
    },
    /// Prove a backup restores: crash-recover a scratch copy with a throwaway server.
    ///
    /// The server runs on a reflink (or plain) copy beside the backup, never on the
    /// backup, with no network, its own socket and no replication. Every table is
    /// checked (CHECK TABLE) and the recovered GTID position is compared with the
    /// manifest. The verdict and recovery time are recorded in the manifest; a failed
    /// verification exits 11 and `list` shows the backup as failed.
    #[command(after_help = crate::error::Class::TABLE)]
    Verify {
        /// A backup directory, or a backup's name at the destination.
        backup: String,
        /// Only check every stored file against the backup's `checksums` (no server is
        /// started; on an ssh destination the check runs on the backup host).
        #[arg(long)]
        checksums: bool,
    },
    /// Copy a backup into a new datadir and print how to make it a replica.
    ///
    /// Refuses while a server runs on DIR, and when DIR is not empty unless --force.
    /// Rewrites binlog.index, the relay-log index and info, and .isl files for the new
    /// location (they hold the original's absolute paths), and gives the files to the
    /// server's user.
    Restore {
        /// A backup directory, or a backup's name at the destination.
        backup: PathBuf,
        /// The new datadir.
        #[arg(long, value_name = "DIR")]
        datadir: PathBuf,
        /// Delete what is in DIR first.
        #[arg(long)]
        force: bool,
        /// The server's user, who will own the files [default: mysql, if it exists].
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
        /// The source a replica of the restored copy replicates from [default: the backup's host].
        #[arg(long, value_name = "HOST")]
        source_host: Option<String>,
        #[arg(long, value_name = "PORT", default_value_t = 3306)]
        source_port: u16,
        /// The replication user on the source (its password is never asked for).
        #[arg(long, value_name = "USER", default_value = "repl")]
        source_user: String,
    },
    /// Safety snapshots: keep a snapshot of the live server (e.g. before an upgrade).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Remove backups and kept snapshots that [retention] does not keep.
    ///
    /// Never removes the newest verified backup, nor anything without dbsnap's manifest
    /// or kept-snapshot record.
    Prune {
        /// Only show what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// A freshness check for monitoring (Nagios convention): exit 0 OK, 1 WARNING,
    /// 2 CRITICAL, 3 UNKNOWN (the check itself failed), with one line saying why.
    ///
    /// CRITICAL: no complete backup, the newest complete backup is older than --max-age
    /// (by the time in its manifest), or it failed verification. WARNING: a kept snapshot
    /// is past its --ttl or no longer valid, or the journal still holds resources of a
    /// crashed run (`dbsnap cleanup` releases them). Reads only; takes no lock.
    Status {
        /// The oldest the newest complete backup may be, e.g. 26h or 2d.
        #[arg(long, value_name = "DURATION", default_value = "26h", value_parser = humantime::parse_duration)]
        max_age: std::time::Duration,
    },
    /// Print a shell completion script for SHELL on stdout.
    ///
    /// e.g. `dbsnap completions bash > /etc/bash_completion.d/dbsnap`; the Debian
    /// package installs them for bash, zsh and fish.
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// The forced command of dbsnap's key on a backup host: runs only what dbsnap sends.
    ///
    /// Put it in the key's line in authorized_keys there:
    /// `restrict,command="/usr/bin/dbsnap ssh-confine --root /srv/backups/db1" ssh-ed25519 ...`.
    /// It reads the command ssh received (SSH_ORIGINAL_COMMAND), allows only dbsnap's
    /// own commands (its fixed scripts, coreutils, b3sum, rsync's server) with every path
    /// inside DIR once symlinks are resolved, and runs it without a shell; anything else
    /// is refused (exit 126) and nothing runs. Needs no configuration file.
    SshConfine {
        /// The directory the key may use (the ssh destination's path, or one above it).
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
    },
    /// Write the man pages (dbsnap.1 and one per subcommand) into DIR; used when the
    /// package is built, so the pages are generated from these definitions.
    #[command(hide = true)]
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

impl Command {
    /// The name hooks (`DBSNAP_COMMAND`) and metrics (`command` label) use for the
    /// commands that create, publish or release something; `None` for those that only read.
    pub fn changing_name(&self) -> Option<&'static str> {
        match self {
            Command::Backup { .. } => Some("backup"),
            Command::Cleanup { .. } => Some("cleanup"),
            Command::Verify { .. } => Some("verify"),
            Command::Prune { dry_run: false } => Some("prune"),
            Command::Snapshot(SnapshotCommand::Create { .. }) => Some("snapshot-create"),
            Command::Snapshot(SnapshotCommand::Release { .. }) => Some("snapshot-release"),
            Command::Snapshot(SnapshotCommand::Rollback { .. }) => Some("snapshot-rollback"),
            // Creates a repository, but as set-up run once by hand: no hooks, no metrics.
            Command::InitRepo => None,
            Command::Check(_)
            | Command::List
            | Command::Restore { .. }
            | Command::Snapshot(SnapshotCommand::List)
            | Command::Prune { dry_run: true }
            | Command::Status { .. }
            | Command::Completions { .. }
            | Command::SshConfine { .. }
            | Command::Man { .. } => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Lock, snapshot, unlock, and keep the snapshot (no copy).
    Create {
        /// Added to the snapshot's name, e.g. pre-upgrade.
        #[arg(long)]
        label: Option<String>,
        /// Hook mode: mount the snapshot read-only under DIR (an existing empty
        /// directory), each server directory at DIR/<its absolute path>, for a backup tool.
        #[arg(long, value_name = "DIR")]
        mount: Option<PathBuf>,
        /// With --mount: `dbsnap cleanup` (or the next run) releases the snapshot after
        /// this long, e.g. 6h, if `snapshot release` never came [default: never].
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        #[command(flatten)]
        lock: LockArgs,
    },
    /// The kept snapshots.
    List,
    /// Destroy a kept snapshot, given its name or (hook mode) its mount directory.
    Release {
        #[arg(value_name = "NAME|DIR")]
        name: String,
    },
    /// Revert the server's volumes to a kept snapshot. The server must be stopped.
    Rollback { name: String },
}

/// How the server is quiesced.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// Lock mode, overriding [mysql] lock: auto (default: the least invasive consistent
    /// mode for this server), ftwrl, backup-stage (MariaDB ≥ 10.4), instance (MySQL 8),
    /// replica (stop a read-only replica's applier), none (crash-consistent; InnoDB only).
    #[arg(long, value_name = "MODE")]
    pub lock: Option<RequestedMode>,
    /// Use the requested lock mode even where it cannot give a consistent copy of this
    /// server (e.g. none with MyISAM tables).
    #[arg(long)]
    pub force: bool,
}

/// `--max-lock-ms`: a finite, non-negative number of milliseconds.
fn parse_milliseconds(text: &str) -> Result<f64, String> {
    let ms: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of milliseconds"))?;
    if !ms.is_finite() || ms < 0.0 {
        return Err(format!(
            "{text:?} is not a number of milliseconds from 0 up"
        ));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_password_option_exists() {
        let help = Cli::command().render_long_help().to_string();
        assert!(!help.contains("--password"));
    }
}
