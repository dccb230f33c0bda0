//! The lock window: quiesce the server in the chosen mode with bounded waits, read the
//! coordinates, and release it. Everything runs on one dedicated connection, with a
//! second "watchdog" connection that cancels a statement that waits too long — a
//! waiting `FLUSH TABLES WITH READ LOCK` (or `BACKUP STAGE BLOCK_COMMIT`) already
//! blocks the writers queued behind it.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde::{Deserialize, Serialize};

use crate::db::coordinates::{self, Coordinates};
use crate::db::lock_mode::LockMode;
use crate::db::server::codes;
use crate::db::sessions::{diagnose, running_sessions, Session};
use crate::db::version::ServerVersion;
use crate::error::{fail, Class};

/// Bounds on taking the lock.
#[derive(Debug, Clone, Copy)]
pub struct LockSettings {
    /// How long one attempt may wait (and so how long writers may queue behind it).
    pub wait: Duration,
    pub attempts: u32,
}

/// What the lock cost, for the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockRecord {
    pub mode: LockMode,
    /// Why this mode was chosen.
    pub reason: String,
    /// Statements before the one that blocks commits (pre-flush, earlier backup stages).
    pub prelude_ms: f64,
    /// How long the successful attempt waited for the blocking statement.
    pub wait_ms: f64,
    /// From the lock being granted to it being released.
    pub hold_ms: f64,
    pub attempts: u32,
    /// Most sessions seen queued behind a cancelled attempt.
    pub queued_sessions: usize,
    pub acquired_at: DateTime<Utc>,
    pub released_at: DateTime<Utc>,
}

/// The statements of each mode: run in order before the lock (each bounded), the one
/// that blocks writers, and the one that releases.
struct Statements {
    prelude: &'static [&'static str],
    block: Option<&'static str>,
    release: Option<&'static str>,
}

fn statements(mode: LockMode, version: &ServerVersion) -> Statements {
    match mode {
        LockMode::Ftwrl => Statements {
            // Flushing first, without the lock, makes the locked flush quick.
            prelude: &["FLUSH NO_WRITE_TO_BINLOG TABLES"],
            block: Some("FLUSH TABLES WITH READ LOCK"),
            release: Some("UNLOCK TABLES"),
        },
        LockMode::BackupStage => Statements {
            prelude: &[
                "BACKUP STAGE START",
                "BACKUP STAGE FLUSH",
                "BACKUP STAGE BLOCK_DDL",
            ],
            block: Some("BACKUP STAGE BLOCK_COMMIT"),
            release: Some("BACKUP STAGE END"),
        },
        LockMode::Instance => Statements {
            prelude: &[],
            block: Some("LOCK INSTANCE FOR BACKUP"),
            release: Some("UNLOCK INSTANCE"),
        },
        LockMode::Replica => {
            let (stop, start) = version.replica_sql_thread_statements();
            Statements {
                prelude: &[],
                block: Some(stop),
                release: Some(start),
            }
        }
        LockMode::None => Statements {
            prelude: &[],
            block: None,
            release: None,
        },
    }
}

/// The lock, held. Dropping it without [`HeldLock::release`] closes the connection,
/// which makes the server release the lock too.
pub struct HeldLock {
    conn: Conn,
    mode: LockMode,
    version: ServerVersion,
    release_statement: Option<&'static str>,
    granted: Instant,
    acquired_at: DateTime<Utc>,
    prelude: Duration,
    wait: Duration,
    attempts: u32,
    queued_sessions: usize,
}

/// Quiesce the server in `mode` on `conn`; `watchdog` is a second connection used to
/// cancel a statement that waits longer than `settings.wait`.
pub async fn acquire(
    mode: LockMode,
    version: &ServerVersion,
    mut conn: Conn,
    watchdog: &mut Conn,
    settings: LockSettings,
) -> anyhow::Result<HeldLock> {
    let plan = statements(mode, version);
    // The server-side bound is a backstop in whole seconds; the watchdog is the real one.
    conn.query_drop(format!(
        "SET SESSION lock_wait_timeout = {}",
        settings.wait.as_secs() + 1
    ))
    .await
    .context("setting lock_wait_timeout on the lock connection")?;
    let mut queued_sessions = 0;
    let prelude_started = Instant::now();
    for statement in plan.prelude {
        let outcome = with_retries(&mut conn, watchdog, statement, settings).await;
        if let Err(e) = outcome {
            abandon(&mut conn, plan.release).await;
            return Err(e);
        }
        queued_sessions = queued_sessions.max(outcome?.queued);
    }
    let prelude = prelude_started.elapsed();
    let (wait, attempts) = match plan.block {
        Some(statement) => match with_retries(&mut conn, watchdog, statement, settings).await {
            Ok(granted) => {
                queued_sessions = queued_sessions.max(granted.queued);
                (granted.wait, granted.attempts)
            }
            Err(e) => {
                abandon(&mut conn, plan.release).await;
                return Err(e);
            }
        },
        None => (Duration::ZERO, 1),
    };
    Ok(HeldLock {
        conn,
        mode,
        version: version.clone(),
        release_statement: plan.release,
        granted: Instant::now(),
        acquired_at: Utc::now(),
        prelude,
        wait,
        attempts,
        queued_sessions,
    })
}

/// Undo a partly taken lock (e.g. `BACKUP STAGE END` after BLOCK_DDL); closing the
/// connection would do it too, so a failure here is only logged.
async fn abandon(conn: &mut Conn, release: Option<&str>) {
    if let Some(statement) = release {
        if let Err(e) = conn.query_drop(statement).await {
            tracing::warn!("{statement} after a failed lock attempt: {e}");
        }
    }
}

struct Granted {
    wait: Duration,
    attempts: u32,
    queued: usize,
}

async fn with_retries(
    conn: &mut Conn,
    watchdog: &mut Conn,
    statement: &str,
    settings: LockSettings,
) -> anyhow::Result<Granted> {
    let mut last_sessions = Vec::new();
    let mut queued = 0;
    for attempt in 1..=settings.attempts {
        let started = Instant::now();
        match bounded(conn, watchdog, statement, settings.wait).await? {
            Ok(()) => {
                return Ok(Granted {
                    wait: started.elapsed(),
                    attempts: attempt,
                    queued,
                })
            }
            Err(sessions) => {
                let (blocker, now_queued) = diagnose(&sessions);
                queued = queued.max(now_queued);
                tracing::warn!(
                    attempt,
                    of = settings.attempts,
                    queued_sessions = now_queued,
                    "{statement} not granted within {} ms{}; writers run freely until the next attempt",
                    settings.wait.as_millis(),
                    blocker.map(|b| format!(", blocked by {}", b.describe())).unwrap_or_default()
                );
                last_sessions = sessions;
            }
        }
        if attempt < settings.attempts {
            tokio::time::sleep(retry_pause(attempt)).await;
        }
    }
    Err(lock_timeout(statement, settings, &last_sessions, queued))
}

/// A pause that grows with the attempt and is jittered, so that retries from several
/// hosts do not line up.
fn retry_pause(attempt: u32) -> Duration {
    let base = 500 * u64::from(attempt);
    Duration::from_millis(base + rand::random_range(0..base))
}

fn lock_timeout(
    statement: &str,
    settings: LockSettings,
    sessions: &[Session],
    queued: usize,
) -> anyhow::Error {
    let (blocker, _) = diagnose(sessions);
    let cause = match blocker {
        Some(b) => format!("It was blocked by {}.", b.describe()),
        None => "No running statement was visible (the PROCESS privilege shows other users' statements).".into(),
    };
    fail(
        Class::Lock,
        format!(
            "{statement} was not granted within {} ms in {} attempt(s); up to {queued} session(s) were \
             queued behind it before it was cancelled. {cause} Nothing was snapshotted. Run the backup \
             when that statement has finished, set [mysql] long_queries = \"kill\", or raise \
             lock_wait_timeout / lock_attempts.",
            settings.wait.as_millis(),
            settings.attempts
        ),
    )
}

/// Run `statement` on `conn`; if it has not finished within `wait`, read the process
/// list and cancel it from `watchdog`. `Ok(Err(sessions))` means it was cancelled (or
/// timed out on the server), with what was running at that moment.
async fn bounded(
    conn: &mut Conn,
    watchdog: &mut Conn,
    statement: &str,
    wait: Duration,
) -> anyhow::Result<Result<(), Vec<Session>>> {
    let id = conn.id();
    let mut sessions = None;
    let result = {
        let run = conn.query_drop(statement);
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => r,
            _ = tokio::time::sleep(wait) => {
                sessions = Some(running_sessions(watchdog, &[id]).await.unwrap_or_default());
                watchdog
                    .query_drop(format!("KILL QUERY {id}"))
                    .await
                    .context("cancelling the lock attempt (KILL QUERY on our own connection)")?;
                run.await
            }
        }
    };
    match result {
        Ok(()) => Ok(Ok(())),
        Err(mysql_async::Error::Server(e))
            if e.code == codes::LOCK_WAIT_TIMEOUT || e.code == codes::QUERY_INTERRUPTED =>
        {
            let sessions = match sessions {
                Some(s) => s,
                None => running_sessions(watchdog, &[id]).await.unwrap_or_default(),
            };
            Ok(Err(sessions))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("running {statement}"))),
    }
}

impl HeldLock {
    /// The coordinates of this instant. Exact when the mode blocks commits. `replica`:
    /// the server replicates, so the source's coordinates are read too.
    pub async fn coordinates(&mut self, replica: bool) -> anyhow::Result<Coordinates> {
        match self.mode {
            LockMode::Instance => {
                let local: Option<String> = self
                    .conn
                    .query_first("SELECT LOCAL FROM performance_schema.log_status")
                    .await
                    .context("reading performance_schema.log_status")?;
                let (binlog_file, binlog_position, gtid_executed) =
                    coordinates::parse_log_status_local(local.as_deref().unwrap_or("{}"))?;
                Ok(Coordinates {
                    exact: false,
                    binlog_file,
                    binlog_position,
                    gtid_executed,
                    replica: match replica {
                        true => coordinates::replica_status(&mut self.conn, &self.version).await?,
                        false => None,
                    },
                    ..Default::default()
                })
            }
            LockMode::None => {
                coordinates::read(&mut self.conn, &self.version, false, replica).await
            }
            LockMode::Ftwrl | LockMode::BackupStage | LockMode::Replica => {
                coordinates::read(&mut self.conn, &self.version, true, replica).await
            }
        }
    }

    /// How long the lock has been held so far.
    pub fn held_for(&self) -> Duration {
        self.granted.elapsed()
    }

    /// Release the lock. If that fails the connection is gone and the server has
    /// released the lock on its own — but possibly before the snapshot finished, so
    /// it is an error.
    pub async fn release(mut self, reason: String) -> anyhow::Result<LockRecord> {
        let unlocked = match self.release_statement {
            Some(statement) => self
                .conn
                .query_drop(statement)
                .await
                .map_err(|e| (statement, e)),
            None => Ok(()),
        };
        let hold = self.granted.elapsed();
        let released_at = Utc::now();
        unlocked.map_err(|(statement, e)| {
            fail(
                Class::Lock,
                format!(
                    "{statement} failed ({e}): the lock connection was lost, so the server may have \
                     released the lock before the snapshot was complete; the snapshot is discarded"
                ),
            )
        })?;
        let _ = self.conn.disconnect().await;
        Ok(LockRecord {
            mode: self.mode,
            reason,
            prelude_ms: ms(self.prelude),
            wait_ms: ms(self.wait),
            hold_ms: ms(hold),
            attempts: self.attempts,
            queued_sessions: self.queued_sessions,
            acquired_at: self.acquired_at,
            released_at,
        })
    }
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: u64, seconds: u64, state: &str, info: &str) -> Session {
        Session {
            id,
            user: "app".into(),
            host: "localhost".into(),
            command: "Query".into(),
            seconds,
            state: state.into(),
            info: info.into(),
        }
    }

    #[test]
    fn blocker_is_the_longest_statement_not_queued_behind_us() {
        let sessions = vec![
            session(7, 31, "Waiting for backup lock", "UPDATE a SET x=1"),
            session(8, 30, "User sleep", "UPDATE accounts SET b = b + SLEEP(30)"),
            session(9, 2, "Sending data", "SELECT 1"),
            session(
                10,
                1,
                "Waiting for global read lock",
                "INSERT INTO t VALUES (1)",
            ),
        ];
        let (blocker, queued) = diagnose(&sessions);
        assert_eq!(blocker.unwrap().id, 8);
        assert_eq!(queued, 2);
    }

    #[test]
    fn each_mode_blocks_with_one_statement_and_releases_it() {
        let maria = ServerVersion::parse("10.11.19-MariaDB", "");
        let s = statements(LockMode::BackupStage, &maria);
        assert_eq!(s.block, Some("BACKUP STAGE BLOCK_COMMIT"));
        assert_eq!(s.prelude.first(), Some(&"BACKUP STAGE START"));
        assert_eq!(s.release, Some("BACKUP STAGE END"));
        let s = statements(LockMode::Replica, &maria);
        assert_eq!(
            (s.block, s.release),
            (
                Some("STOP REPLICA SQL_THREAD"),
                Some("START REPLICA SQL_THREAD")
            )
        );
        let mysql = ServerVersion::parse("8.0.36", "");
        let s = statements(LockMode::Instance, &mysql);
        assert_eq!(
            (s.block, s.release),
            (Some("LOCK INSTANCE FOR BACKUP"), Some("UNLOCK INSTANCE"))
        );
        let s = statements(LockMode::None, &mysql);
        assert!(s.block.is_none() && s.release.is_none() && s.prelude.is_empty());
        let s = statements(LockMode::Ftwrl, &mysql);
        assert_eq!(s.prelude, &["FLUSH NO_WRITE_TO_BINLOG TABLES"]);
    }

    #[test]
    fn retry_pause_grows_and_is_jittered() {
        for attempt in 1..4 {
            let p = retry_pause(attempt).as_millis() as u64;
            assert!(p >= 500 * attempt as u64 && p < 1000 * attempt as u64);
        }
    }

    #[test]
    fn milliseconds_keep_microseconds() {
        assert_eq!(ms(Duration::from_micros(67_123)), 67.123);
    }
}
