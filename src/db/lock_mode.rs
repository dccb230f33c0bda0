//! The one place that decides how the server is quiesced for the snapshot.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::db::version::ServerVersion;

/// A way of making the snapshot consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockMode {
    /// `FLUSH TABLES WITH READ LOCK`: blocks all writes and commits; works everywhere.
    Ftwrl,
    /// MariaDB's `BACKUP STAGE ... BLOCK_COMMIT`: blocks commits (not running
    /// statements) while the snapshot is taken.
    BackupStage,
    /// MySQL 8's `LOCK INSTANCE FOR BACKUP`: blocks DDL only; InnoDB-only, one atomic snapshot.
    Instance,
    /// Stop the replica's applier thread instead of locking (a read-only replica).
    Replica,
    /// Nothing: a crash-consistent snapshot; InnoDB-only, one atomic snapshot.
    None,
}

/// What the configuration or `--lock` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RequestedMode {
    #[default]
    Auto,
    Ftwrl,
    BackupStage,
    Instance,
    Replica,
    None,
}

impl FromStr for RequestedMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(RequestedMode::Auto),
            "ftwrl" => Ok(RequestedMode::Ftwrl),
            "backup-stage" => Ok(RequestedMode::BackupStage),
            "instance" => Ok(RequestedMode::Instance),
            "replica" => Ok(RequestedMode::Replica),
            "none" => Ok(RequestedMode::None),
            other => Err(format!(
                "unknown lock mode {other:?}: choose auto, ftwrl, backup-stage, instance, replica or none"
            )),
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Ftwrl => "ftwrl",
            LockMode::BackupStage => "backup-stage",
            LockMode::Instance => "instance",
            LockMode::Replica => "replica",
            LockMode::None => "none",
        })
    }
}

/// The facts the choice depends on, gathered in preflight.
#[derive(Debug, Clone)]
pub struct ModeFacts {
    pub version: ServerVersion,
    /// User tables in engines without crash recovery (`schema.table (ENGINE)`), as far
    /// as the user can see them.
    pub non_transactional: Vec<String>,
    /// Whether the user can see every table's engine (see
    /// `sees_every_table` in `db::server`). When not, no table may be assumed to be
    /// InnoDB.
    pub all_tables_visible: bool,
    /// Whether the backend snapshots every volume at one instant.
    pub atomic_snapshot: bool,
    /// Whether the server replicates from a source.
    pub is_replica: bool,
    /// `@@read_only` (or `super_read_only`): only the replication applier writes.
    pub read_only: bool,
}

/// The mode chosen, and why (logged and written to the manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub mode: LockMode,
    pub reason: String,
    /// Whether the coordinates read at the snapshot are exact (the lock blocked commits).
    pub exact_coordinates: bool,
}

/// Why a requested mode is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    /// The refusal is lifted by a privilege (the user cannot see what it must check).
    pub needs_grant: bool,
}

impl From<String> for Refusal {
    fn from(message: String) -> Refusal {
        Refusal {
            message,
            needs_grant: false,
        }
    }
}

/// What dbsnap says when it cannot see every table's engine.
pub const BLIND_TO_ENGINES: &str = "dbsnap cannot see every table's engine: \
    information_schema.TABLES lists only the tables the backup user holds a privilege on. \
    Grant SHOW VIEW ON *.* (it shows view definitions, no data) so that it can";

/// Choose the mode, or say why the requested one cannot give a consistent copy of
/// this server. `force` accepts a mode that cannot be consistent, with a warning.
pub fn choose(requested: RequestedMode, facts: &ModeFacts, force: bool) -> Result<Choice, Refusal> {
    let refuse_unless_forced =
        |mode: LockMode, problem: Option<String>| refuse_unless_forced(mode, problem, force);
    let innodb_only_problem = || innodb_only_problem(facts);
    match requested {
        RequestedMode::Ftwrl => Ok(choice(LockMode::Ftwrl, "requested".into())),
        RequestedMode::BackupStage => {
            let problem = (!facts.version.has_backup_stage()).then(|| {
                format!(
                    "BACKUP STAGE needs MariaDB 10.4.1 or later, this is {}",
                    facts.version
                )
            });
            if let Some(p) = problem {
                return Err(format!(
                    "lock mode backup-stage is not available: {p}. Use ftwrl or auto"
                )
                .into());
            }
            Ok(choice(LockMode::BackupStage, "requested".into()))
        }
        RequestedMode::Instance => {
            if !facts.version.has_lock_instance() {
                return Err(format!(
                    "lock mode instance is not available: LOCK INSTANCE FOR BACKUP needs MySQL 8.0 or later, \
                     this is {}. Use ftwrl or auto",
                    facts.version
                )
                .into());
            }
            refuse_unless_forced(LockMode::Instance, innodb_only_problem())
        }
        RequestedMode::Replica => {
            let problem = if !facts.is_replica {
                Some("the server is not a replica".to_string())
            } else if !facts.read_only {
                Some("the server is not read_only, so clients other than the replication applier may write".into())
            } else {
                None
            };
            refuse_unless_forced(LockMode::Replica, problem)
        }
        RequestedMode::None => refuse_unless_forced(LockMode::None, innodb_only_problem()),
        RequestedMode::Auto => Ok(auto(facts)),
    }
}

fn choice(mode: LockMode, reason: String) -> Choice {
    let exact_coordinates = matches!(
        mode,
        LockMode::Ftwrl | LockMode::BackupStage | LockMode::Replica
    );
    Choice {
        mode,
        reason,
        exact_coordinates,
    }
}

/// Why an InnoDB-only, one-instant mode (`instance`, `none`) would not be consistent here.
fn innodb_only_problem(facts: &ModeFacts) -> Option<String> {
    if !facts.all_tables_visible {
        return Some(BLIND_TO_ENGINES.to_string());
    }
    if !facts.non_transactional.is_empty() {
        return Some(format!(
            "these tables have no crash recovery and could be copied half-written: {}",
            list(&facts.non_transactional)
        ));
    }
    if !facts.atomic_snapshot {
        return Some("the database's volumes are not snapshotted at one instant".into());
    }
    None
}

/// The requested `mode`, unless `problem` makes it inconsistent and it is not forced.
fn refuse_unless_forced(
    mode: LockMode,
    problem: Option<String>,
    force: bool,
) -> Result<Choice, Refusal> {
    match (problem, force) {
        (None, _) => Ok(choice(mode, "requested".to_string())),
        (Some(p), true) => Ok(choice(mode, format!("forced although {p}"))),
        (Some(p), false) => Err(Refusal {
            needs_grant: p == BLIND_TO_ENGINES,
            message: format!(
                "lock mode {mode} cannot give a consistent copy of this server: {p}. Use another \
                 mode (or auto), or --force if you accept the risk"
            ),
        }),
    }
}

fn auto(facts: &ModeFacts) -> Choice {
    if facts.version.has_backup_stage() {
        let mut reason = format!(
            "{} supports BACKUP STAGE: commits wait only while the snapshot is taken; running statements \
             are not blocked",
            facts.version
        );
        if !facts.non_transactional.is_empty() {
            reason.push_str(&format!(
                "; writes to non-transactional tables ({}) wait from BACKUP STAGE FLUSH to the end",
                list(&facts.non_transactional)
            ));
        }
        if !facts.all_tables_visible {
            reason.push_str(
                "; the tables' engines are not visible to the backup user (grant SHOW VIEW ON *.*), \
                 so writes to any non-transactional ones wait from BACKUP STAGE FLUSH to the end",
            );
        }
        return Choice {
            mode: LockMode::BackupStage,
            reason,
            exact_coordinates: true,
        };
    }
    if facts.version.has_lock_instance()
        && facts.all_tables_visible
        && facts.non_transactional.is_empty()
        && facts.atomic_snapshot
    {
        return Choice {
            mode: LockMode::Instance,
            reason: format!(
                "{} with InnoDB tables only on one atomic snapshot: LOCK INSTANCE FOR BACKUP blocks DDL only; \
                 exact coordinates come from the copy's crash recovery",
                facts.version
            ),
            exact_coordinates: false,
        };
    }
    let why = if !facts.all_tables_visible && facts.version.has_lock_instance() {
        format!(
            "LOCK INSTANCE FOR BACKUP is consistent only for InnoDB, and {}",
            BLIND_TO_ENGINES.replace("so that it can", "so that auto can choose it")
        )
    } else if !facts.non_transactional.is_empty() {
        format!(
            "non-transactional tables ({}) need a global read lock",
            list(&facts.non_transactional)
        )
    } else if !facts.atomic_snapshot && facts.version.has_lock_instance() {
        "the volumes are not snapshotted at one instant, so commits must be blocked".to_string()
    } else {
        format!("{} has no lighter backup lock", facts.version)
    };
    Choice {
        mode: LockMode::Ftwrl,
        reason: why,
        exact_coordinates: true,
    }
}

fn list(tables: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = tables
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if tables.len() > SHOWN {
        s.push_str(&format!(" and {} more", tables.len() - SHOWN));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(version: &str, non_transactional: &[&str], atomic: bool) -> ModeFacts {
        ModeFacts {
            version: ServerVersion::parse(version, ""),
            non_transactional: non_transactional.iter().map(|s| s.to_string()).collect(),
            all_tables_visible: true,
            atomic_snapshot: atomic,
            is_replica: false,
            read_only: false,
        }
    }

    #[test]
    fn auto_prefers_backup_stage_on_mariadb() {
        let c = choose(
            RequestedMode::Auto,
            &facts("10.11.19-MariaDB", &[], true),
            false,
        )
        .unwrap();
        assert_eq!(c.mode, LockMode::BackupStage);
        let c = choose(
            RequestedMode::Auto,
            &facts("10.11.19-MariaDB", &["shop.audit (MyISAM)"], true),
            false,
        )
        .unwrap();
        assert_eq!(c.mode, LockMode::BackupStage);
        assert!(c.reason.contains("shop.audit"), "{}", c.reason);
    }

    #[test]
    fn auto_on_old_mariadb_and_mysql() {
        assert_eq!(
            choose(
                RequestedMode::Auto,
                &facts("10.3.39-MariaDB", &[], true),
                false
            )
            .unwrap()
            .mode,
            LockMode::Ftwrl
        );
        let c = choose(RequestedMode::Auto, &facts("8.0.36", &[], true), false).unwrap();
        assert_eq!(c.mode, LockMode::Instance);
        assert!(!c.exact_coordinates);
        let c = choose(
            RequestedMode::Auto,
            &facts("8.0.36", &["a.b (MyISAM)"], true),
            false,
        )
        .unwrap();
        assert_eq!(c.mode, LockMode::Ftwrl);
        assert!(c.reason.contains("a.b"));
        assert_eq!(
            choose(RequestedMode::Auto, &facts("8.4.3", &[], false), false)
                .unwrap()
                .mode,
            LockMode::Ftwrl
        );
        assert_eq!(
            choose(RequestedMode::Auto, &facts("5.7.44", &[], true), false)
                .unwrap()
                .mode,
            LockMode::Ftwrl
        );
    }

    #[test]
    fn inconsistent_requests_are_refused_unless_forced() {
        let myisam = facts("10.11.19-MariaDB", &["shop.audit (MyISAM)"], true);
        let err = choose(RequestedMode::None, &myisam, false)
            .unwrap_err()
            .message;
        assert!(
            err.contains("shop.audit") && err.contains("--force"),
            "{err}"
        );
        let forced = choose(RequestedMode::None, &myisam, true).unwrap();
        assert!(forced.reason.starts_with("forced"));
        let err = choose(
            RequestedMode::None,
            &facts("10.11.19-MariaDB", &[], false),
            false,
        )
        .unwrap_err()
        .message;
        assert!(err.contains("one instant"), "{err}");
        assert!(choose(
            RequestedMode::Instance,
            &facts("10.11.19-MariaDB", &[], true),
            true
        )
        .is_err());
        assert!(choose(
            RequestedMode::BackupStage,
            &facts("8.0.36", &[], true),
            true
        )
        .is_err());
        let err = choose(
            RequestedMode::Replica,
            &facts("10.11.19-MariaDB", &[], true),
            false,
        )
        .unwrap_err()
        .message;
        assert!(err.contains("not a replica"), "{err}");
    }

    #[test]
    fn replica_mode_needs_a_read_only_replica() {
        let mut f = facts("10.11.19-MariaDB", &[], true);
        f.is_replica = true;
        assert!(choose(RequestedMode::Replica, &f, false)
            .unwrap_err()
            .message
            .contains("read_only"));
        f.read_only = true;
        assert_eq!(
            choose(RequestedMode::Replica, &f, false).unwrap().mode,
            LockMode::Replica
        );
    }

    #[test]
    fn mode_names_parse() {
        for name in [
            "auto",
            "ftwrl",
            "backup-stage",
            "instance",
            "replica",
            "none",
        ] {
            assert!(name.parse::<RequestedMode>().is_ok());
        }
        assert!("flush"
            .parse::<RequestedMode>()
            .unwrap_err()
            .contains("choose auto"));
    }

    /// The README's grants without SHOW VIEW: information_schema.TABLES shows nothing, so
    /// no table is known to be InnoDB (measured on MariaDB 10.11; the MySQL paths are
    /// the same facts as the server would give them).
    #[test]
    fn a_user_blind_to_table_engines_gets_no_innodb_only_mode() {
        let blind = |version: &str| ModeFacts {
            all_tables_visible: false,
            ..facts(version, &[], true)
        };
        for (version, requested) in [
            ("10.11.19-MariaDB", RequestedMode::None),
            ("8.0.36", RequestedMode::None),
            ("8.0.36", RequestedMode::Instance),
            ("8.4.3", RequestedMode::Instance),
        ] {
            let err = choose(requested, &blind(version), false).unwrap_err();
            assert!(err.needs_grant, "{version} {requested:?}");
            assert!(err.message.contains("SHOW VIEW ON *.*"), "{}", err.message);
            assert!(choose(requested, &blind(version), true)
                .unwrap()
                .reason
                .starts_with("forced"));
        }
        // auto never picks LOCK INSTANCE FOR BACKUP blind; on MariaDB BACKUP STAGE is
        // consistent for every engine, and says what it could not see.
        for version in ["8.0.36", "8.4.3"] {
            let c = choose(RequestedMode::Auto, &blind(version), false).unwrap();
            assert_eq!(c.mode, LockMode::Ftwrl, "{version}");
            assert!(c.reason.contains("SHOW VIEW"), "{}", c.reason);
        }
        let c = choose(RequestedMode::Auto, &blind("10.11.19-MariaDB"), false).unwrap();
        assert_eq!(c.mode, LockMode::BackupStage);
        assert!(c.reason.contains("SHOW VIEW"), "{}", c.reason);
    }
}
