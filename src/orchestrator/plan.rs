//! The plan: everything a run needs from the configuration, resolved once before any
//! phase starts. Phases get the plan, never the configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{BackupConfig, Config, Method, SnapshotConfig};
use crate::db::credentials::Credentials;
use crate::db::lock::LockSettings;
use crate::db::lock_mode::RequestedMode;
use crate::db::stall_guard::LongQueryPolicy;
use crate::destination::Destination;
use crate::hooks::HooksConfig;

/// What every flow needs: how to reach the server, lock it and snapshot it.
pub struct Plan {
    pub state_dir: PathBuf,
    /// The configured backend, its free-space floors, and how to open any backend by
    /// name (for what an earlier configuration left).
    pub backends: SnapshotConfig,
    pub credentials: Credentials,
    pub lock: LockPlan,
    pub hooks: HooksConfig,
    /// Accept a lock mode that cannot be consistent for this server.
    pub force: bool,
}

/// `[mysql]`'s lock settings.
#[derive(Debug, Clone, Copy)]
pub struct LockPlan {
    pub requested: RequestedMode,
    pub settings: LockSettings,
    /// Past this the lock is released and the run aborts.
    pub max_hold: Duration,
    pub long_queries: LongQueryPolicy,
    pub long_query_threshold: Duration,
}

/// What a backup adds: where it goes and how it gets there (`[backup]`).
pub struct CopyPlan {
    pub dest: Box<dyn Destination>,
    pub method: Method,
    pub bwlimit: Option<bytesize::ByteSize>,
    /// Compression on the wire (ssh destinations).
    pub compress: Option<crate::config::Compress>,
    pub incremental: bool,
    pub verify: bool,
}

impl Plan {
    pub fn new(config: &Config, force: bool) -> anyhow::Result<Plan> {
        let mysql = &config.mysql;
        Ok(Plan {
            state_dir: config.state_dir.clone(),
            backends: config.snapshot.clone(),
            credentials: mysql.credentials()?,
            lock: LockPlan {
                requested: mysql.lock,
                settings: LockSettings {
                    wait: mysql.lock_wait_timeout,
                    attempts: mysql.lock_attempts,
                },
                max_hold: mysql.max_lock_hold,
                long_queries: mysql.long_queries,
                long_query_threshold: mysql.long_query_threshold,
            },
            hooks: config.hooks.clone(),
            force,
        })
    }
}

impl CopyPlan {
    pub fn new(backup: &BackupConfig, state_dir: &Path) -> anyhow::Result<CopyPlan> {
        Ok(CopyPlan {
            dest: crate::destination::open(backup, state_dir)?,
            compress: backup.compress,
            method: backup.method.clone(),
            bwlimit: backup.bwlimit,
            incremental: backup.incremental,
            verify: backup.verify,
        })
    }

    /// The transfer settings of this plan.
    pub fn transfer_settings(&self) -> crate::transfer::Settings<'_> {
        crate::transfer::Settings {
            method: &self.method,
            bwlimit: self.bwlimit,
            compress: self.compress,
            incremental: self.incremental,
        }
    }
}
