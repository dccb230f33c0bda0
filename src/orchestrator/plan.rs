//! The plan: everything a run needs from the configuration, resolved once before any
//! phase starts. Phases get the plan, never the configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{BackupConfig, Config, Method, PaceMode, SnapshotConfig};
use crate::db::credentials::Credentials;
use crate::db::lock::LockSettings;
use crate::db::lock_mode::RequestedMode;
use crate::db::stall_guard::LongQueryPolicy;
use crate::destination::Destination;
use crate::error::{fail, Class};
use crate::hooks::HooksConfig;
use crate::transfer::pace::PaceSettings;

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
    /// `[backup] pace`: `None` when off.
    pub pace: Option<PaceSettings>,
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
            pace: pace_settings(backup)?,
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

/// `[backup] pace_floor` unless set: slow enough to matter little to a server's disk,
/// fast enough to copy 100 GB in under two hours.
const DEFAULT_PACE_FLOOR: u64 = 16 << 20;

fn pace_settings(backup: &BackupConfig) -> anyhow::Result<Option<PaceSettings>> {
    if backup.pace == PaceMode::Off {
        return Ok(None);
    }
    if !(backup.pace_target.is_finite() && backup.pace_target >= 1.0) {
        return Err(fail(
            Class::Config,
            format!(
                "[backup] pace_target = {} is not a factor of at least 1 (commits may take this many \
                 times their usual time before the copy slows down); use e.g. 2.0",
                backup.pace_target
            ),
        ));
    }
    let cap = backup.bwlimit.map_or(0, |b| b.as_u64());
    let floor = match (backup.pace_floor, backup.bwlimit) {
        (Some(floor), Some(limit)) if floor > limit => {
            return Err(fail(
                Class::Config,
                format!(
                    "[backup] pace_floor = \"{floor}\" is above bwlimit = \"{limit}\": lower \
                     pace_floor or raise bwlimit"
                ),
            ))
        }
        (Some(floor), _) => floor.as_u64().max(1),
        (None, _) if cap != 0 => DEFAULT_PACE_FLOOR.min(cap),
        (None, _) => DEFAULT_PACE_FLOOR,
    };
    Ok(Some(PaceSettings {
        target: backup.pace_target,
        floor,
        cap,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(extra: &str) -> BackupConfig {
        let text = format!(
            "[mysql]\nsocket = \"/run/mysqld/mysqld.sock\"\n[snapshot]\nbackend = \"btrfs\"\n\
             [backup]\ndest = \"/srv/b\"\n{extra}"
        );
        Config::parse(&text).unwrap().backup.unwrap()
    }

    #[test]
    fn pacing_is_on_by_default_and_its_floor_never_exceeds_bwlimit() {
        let on = pace_settings(&backup("")).unwrap().unwrap();
        assert_eq!((on.target, on.floor, on.cap), (1.25, 16 << 20, 0));
        let capped = pace_settings(&backup("bwlimit = \"4MiB\""))
            .unwrap()
            .unwrap();
        assert_eq!((capped.floor, capped.cap), (4 << 20, 4 << 20));
        assert_eq!(pace_settings(&backup("pace = \"off\"")).unwrap(), None);
    }

    #[test]
    fn impossible_pace_settings_name_their_key() {
        for (extra, key) in [
            ("pace_target = 0.5", "pace_target"),
            ("pace_floor = \"64MiB\"\nbwlimit = \"8MiB\"", "pace_floor"),
        ] {
            let e = pace_settings(&backup(extra)).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
            assert_eq!(crate::error::class_of(&e), Class::Config, "{e}");
        }
    }
}
