//! The statements running on the server: what a lock attempt waits behind, and what
//! the long-query policy looks at.

use anyhow::Context;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

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
    /// Sessions queued behind a backup lock show one of these states.
    fn waits_for_our_lock(&self) -> bool {
        let s = self.state.to_ascii_lowercase();
        s.contains("waiting for backup lock")
            || s.contains("waiting for global read lock")
            || s.contains("waiting for commit lock")
    }

    pub fn describe(&self) -> String {
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

/// Statements running now, other than `exclude`, the asking connection and idle or
/// replication threads.
pub async fn running_sessions(conn: &mut Conn, exclude: &[u32]) -> anyhow::Result<Vec<Session>> {
    let exclude: String = exclude.iter().map(|id| format!("{id}, ")).collect();
    let rows: Vec<ProcessRow> = conn
        .query(format!(
            "SELECT ID, USER, HOST, COMMAND, TIME, STATE, LEFT(INFO, 200) \
             FROM information_schema.PROCESSLIST \
             WHERE ID NOT IN ({exclude}CONNECTION_ID()) AND INFO IS NOT NULL \
             AND COMMAND NOT IN ('Sleep', 'Daemon', 'Binlog Dump', 'Slave_IO', 'Slave_SQL', 'Slave_worker')"
        ))
        .await
        .context("reading the process list")?;
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
