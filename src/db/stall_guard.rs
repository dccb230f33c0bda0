//! Before locking: statements that have run for a long time and would make the lock
//! wait (with every writer queued behind it). What to do about them is a policy.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde::{Deserialize, Serialize};

use crate::db::lock_mode::LockMode;
use crate::db::sessions::{running_sessions, Session};
use crate::error::{fail, Class};

/// `[mysql] long_queries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LongQueryPolicy {
    /// Try anyway: each lock attempt still gives up after `lock_wait_timeout`, so
    /// writers never wait longer than that, but the backup may fail.
    #[default]
    Wait,
    /// `KILL QUERY` them, then lock. The application sees those statements fail.
    Kill,
    /// Give up before locking, naming them.
    Abort,
}

/// Whether a running statement can make this mode's lock wait. FTWRL and LOCK INSTANCE
/// wait for running statements; BACKUP STAGE waits only for writes (non-transactional
/// tables in FLUSH, commits in BLOCK_COMMIT); the other modes wait for nothing.
pub fn could_block(mode: LockMode, session: &Session) -> bool {
    let is_select = session
        .info
        .trim_start()
        .to_ascii_uppercase()
        .starts_with("SELECT");
    match mode {
        LockMode::Ftwrl | LockMode::Instance => true,
        LockMode::BackupStage => !is_select,
        LockMode::Replica | LockMode::None => false,
    }
}

/// Apply `policy` to statements older than `threshold` that could block `mode`'s lock.
pub async fn guard(
    conn: &mut Conn,
    mode: LockMode,
    policy: LongQueryPolicy,
    threshold: Duration,
) -> anyhow::Result<()> {
    let long: Vec<Session> = running_sessions(conn, &[])
        .await?
        .into_iter()
        .filter(|s| s.seconds >= threshold.as_secs() && could_block(mode, s))
        .collect();
    if long.is_empty() {
        return Ok(());
    }
    let described = long
        .iter()
        .map(Session::describe)
        .collect::<Vec<_>>()
        .join("; ");
    match policy {
        LongQueryPolicy::Wait => {
            tracing::warn!(
                "long-running statements may make the lock wait (each attempt gives up after lock_wait_timeout): {described}"
            );
            Ok(())
        }
        LongQueryPolicy::Abort => Err(fail(
            Class::Lock,
            format!(
                "not locking: statements running for more than {} could make writers queue behind the lock \
                 ([mysql] long_queries = \"abort\"): {described}. Run the backup when they have finished, or \
                 choose long_queries = \"kill\" or \"wait\"",
                humantime::format_duration(threshold)
            ),
        )),
        LongQueryPolicy::Kill => {
            for s in &long {
                conn.query_drop(format!("KILL QUERY {}", s.id)).await.map_err(|e| {
                    fail(
                        Class::Privileges,
                        format!("could not kill {} ({e}); killing other users' statements needs CONNECTION ADMIN or SUPER", s.describe()),
                    )
                })?;
                tracing::warn!("killed a long-running statement before locking ([mysql] long_queries = \"kill\"): {}", s.describe());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(info: &str) -> Session {
        Session {
            id: 1,
            user: "app".into(),
            host: "h".into(),
            command: "Query".into(),
            seconds: 100,
            state: String::new(),
            info: info.into(),
        }
    }

    #[test]
    fn which_statements_block_which_mode() {
        let select = session("  select * from big");
        let update = session("UPDATE t SET x = 1");
        assert!(could_block(LockMode::Ftwrl, &select) && could_block(LockMode::Ftwrl, &update));
        assert!(
            !could_block(LockMode::BackupStage, &select)
                && could_block(LockMode::BackupStage, &update)
        );
        assert!(!could_block(LockMode::None, &update) && !could_block(LockMode::Replica, &update));
    }
}
