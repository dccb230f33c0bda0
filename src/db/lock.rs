//! The lock window: acquire a global read lock with a bounded wait, capture the
//! coordinates, and release it. Everything here runs on one dedicated connection, with
//! a second "watchdog" connection that cancels a lock attempt that waits too long —
//! a waiting FLUSH TABLES WITH READ LOCK already blocks every writer behind it.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde::{Deserialize, Serialize};

use crate::db::server::codes;
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
    pub mode: String,
    /// How long the successful attempt waited for the lock.
    pub wait_ms: f64,
    /// From the lock being granted to it being released.
    pub hold_ms: f64,
    pub attempts: u32,
    pub acquired_at: DateTime<Utc>,
    pub released_at: DateTime<Utc>,
}

/// Binary-log and GTID position of the snapshot, read while the lock was held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coordinates {
    pub binlog_file: Option<String>,
    pub binlog_position: Option<u64>,
    pub gtid_binlog_pos: Option<String>,
    pub gtid_current_pos: Option<String>,
}

/// A statement that was running when a lock attempt timed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: u64,
    pub user: String,
    pub host: String,
    pub command: String,
    pub seconds: u64,
    pub state: String,
    pub info: String,
}

impl Session {
    /// Writers queued behind our lock attempt show one of these states.
    fn waits_for_our_lock(&self) -> bool {
        let s = self.state.to_ascii_lowercase();
        s.contains("waiting for backup lock") || s.contains("waiting for global read lock")
    }

    fn describe(&self) -> String {
        format!(
            "connection {} ({}@{}) running for {} s: {}",
            self.id, self.user, self.host, self.seconds, self.info
        )
    }
}

/// The longest-running statement that is not queued behind our own lock, and how
/// many sessions are queued.
pub fn diagnose(sessions: &[Session]) -> (Option<&Session>, usize) {
    let queued = sessions.iter().filter(|s| s.waits_for_our_lock()).count();
    let blocker = sessions
        .iter()
        .filter(|s| !s.waits_for_our_lock())
        .max_by_key(|s| s.seconds);
    (blocker, queued)
}

/// The lock, held. Dropping it without [`HeldLock::release`] closes the connection,
/// which makes the server release the lock too.
pub struct HeldLock {
    conn: Conn,
    granted: Instant,
    acquired_at: DateTime<Utc>,
    wait: Duration,
    attempts: u32,
}

/// Take `FLUSH TABLES WITH READ LOCK` on `conn`, each attempt bounded by
/// `settings.wait`; `watchdog` is a second connection used to cancel an attempt.
pub async fn acquire_ftwrl(
    mut conn: Conn,
    watchdog: &mut Conn,
    settings: LockSettings,
) -> anyhow::Result<HeldLock> {
    // The server-side bound is a backstop in whole seconds; the watchdog is the real one.
    let server_wait = settings.wait.as_secs() + 1;
    conn.query_drop(format!("SET SESSION lock_wait_timeout = {server_wait}"))
        .await
        .context("setting lock_wait_timeout on the lock connection")?;
    // Flushing first, without the lock, makes the locked flush quick.
    bounded(
        &mut conn,
        watchdog,
        "FLUSH NO_WRITE_TO_BINLOG TABLES",
        settings.wait,
    )
    .await
    .context("flushing tables before the lock")?
    .map_err(|sessions| lock_timeout("FLUSH NO_WRITE_TO_BINLOG TABLES", settings, 1, &sessions))?;

    let mut last_sessions = Vec::new();
    for attempt in 1..=settings.attempts {
        let started = Instant::now();
        match bounded(
            &mut conn,
            watchdog,
            "FLUSH TABLES WITH READ LOCK",
            settings.wait,
        )
        .await?
        {
            Ok(()) => {
                return Ok(HeldLock {
                    conn,
                    granted: Instant::now(),
                    acquired_at: Utc::now(),
                    wait: started.elapsed(),
                    attempts: attempt,
                })
            }
            Err(sessions) => {
                let (blocker, queued) = diagnose(&sessions);
                tracing::warn!(
                    attempt,
                    of = settings.attempts,
                    queued_sessions = queued,
                    "lock not granted within {} ms{}; writers run freely until the next attempt",
                    settings.wait.as_millis(),
                    blocker
                        .map(|b| format!(", blocked by {}", b.describe()))
                        .unwrap_or_default()
                );
                last_sessions = sessions;
            }
        }
        if attempt < settings.attempts {
            tokio::time::sleep(retry_pause(attempt)).await;
        }
    }
    Err(lock_timeout(
        "FLUSH TABLES WITH READ LOCK",
        settings,
        settings.attempts,
        &last_sessions,
    ))
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
    attempts: u32,
    sessions: &[Session],
) -> anyhow::Error {
    let (blocker, queued) = diagnose(sessions);
    let cause = match blocker {
        Some(b) => format!("It was blocked by {}.", b.describe()),
        None => "No running statement was visible (the PROCESS privilege shows other users' statements).".into(),
    };
    fail(
        Class::Lock,
        format!(
            "{statement} was not granted within {} ms in {attempts} attempt(s); {queued} session(s) \
             were queued behind it when it was cancelled. {cause} Nothing was snapshotted. Run the \
             backup when that statement has finished, or raise [mysql] lock_wait_timeout / lock_attempts.",
            settings.wait.as_millis()
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
                sessions = Some(running_sessions(watchdog, id).await.unwrap_or_default());
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
                None => running_sessions(watchdog, id).await.unwrap_or_default(),
            };
            Ok(Err(sessions))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("running {statement}"))),
    }
}

/// `ID, USER, HOST, COMMAND, TIME, STATE, INFO` from the process list.
type ProcessRow = (
    u64,
    String,
    String,
    String,
    u64,
    Option<String>,
    Option<String>,
);

/// Statements running now, other than ours and idle connections.
async fn running_sessions(watchdog: &mut Conn, lock_conn: u32) -> anyhow::Result<Vec<Session>> {
    let rows: Vec<ProcessRow> = watchdog
        .query(format!(
            "SELECT ID, USER, HOST, COMMAND, TIME, STATE, LEFT(INFO, 200) \
             FROM information_schema.PROCESSLIST \
             WHERE ID NOT IN ({lock_conn}, CONNECTION_ID()) AND INFO IS NOT NULL \
             AND COMMAND NOT IN ('Sleep', 'Daemon', 'Binlog Dump')"
        ))
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, user, host, command, seconds, state, info)| Session {
            id,
            user,
            host,
            command,
            seconds,
            state: state.unwrap_or_default(),
            info: info.unwrap_or_default(),
        })
        .collect())
}

impl HeldLock {
    /// Binary-log position and GTID state; valid because nothing can commit now.
    pub async fn coordinates(&mut self) -> anyhow::Result<Coordinates> {
        let status: Option<mysql_async::Row> = self
            .conn
            .query_first("SHOW MASTER STATUS")
            .await
            .context("reading the binary-log position (SHOW MASTER STATUS)")?;
        let (binlog_file, binlog_position) = match status {
            Some(row) => (row.get::<String, _>(0), row.get::<u64, _>(1)),
            None => (None, None),
        };
        let gtid: Option<(Option<String>, Option<String>)> = self
            .conn
            .query_first("SELECT @@global.gtid_binlog_pos, @@global.gtid_current_pos")
            .await
            .context("reading the GTID position")?;
        let (gtid_binlog_pos, gtid_current_pos) = gtid.unwrap_or_default();
        Ok(Coordinates {
            binlog_file,
            binlog_position,
            gtid_binlog_pos,
            gtid_current_pos,
        })
    }

    /// How long the lock has been held so far.
    pub fn held_for(&self) -> Duration {
        self.granted.elapsed()
    }

    /// `UNLOCK TABLES`. If that fails the connection is gone and the server has released
    /// the lock on its own — but possibly before the snapshot finished, so it is an error.
    pub async fn release(mut self) -> anyhow::Result<LockRecord> {
        let unlocked = self.conn.query_drop("UNLOCK TABLES").await;
        let hold = self.granted.elapsed();
        let released_at = Utc::now();
        unlocked.map_err(|e| {
            fail(
                Class::Lock,
                format!(
                    "UNLOCK TABLES failed ({e}): the lock connection was lost, so the server may have \
                     released the lock before the snapshot was complete; the snapshot is discarded"
                ),
            )
        })?;
        let _ = self.conn.disconnect().await;
        Ok(LockRecord {
            mode: "ftwrl".into(),
            wait_ms: ms(self.wait),
            hold_ms: ms(hold),
            attempts: self.attempts,
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
