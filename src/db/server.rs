//! A connection to the server and the queries dbsnap runs outside the lock.

use std::path::PathBuf;

use anyhow::Context;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

use crate::db::credentials::Credentials;
use crate::db::layout::{Layout, ServerPaths};
use crate::db::lock_mode::LockMode;
use crate::db::stall_guard::LongQueryPolicy;
use crate::db::version::ServerVersion;
use crate::error::{fail, Class};

/// What dbsnap knows about the server it backs up.
#[derive(Debug, Clone)]
pub struct Server {
    credentials: Credentials,
    pub version: ServerVersion,
    pub hostname: String,
}

/// MySQL/MariaDB error codes dbsnap reacts to.
pub mod codes {
    pub const ACCESS_DENIED: u16 = 1045;
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    pub const QUERY_INTERRUPTED: u16 = 1317;
}

impl Server {
    /// Connect once to learn the version, and fail early with a clear message.
    pub async fn connect(credentials: &Credentials) -> anyhow::Result<(Server, Conn)> {
        let mut conn = open(credentials).await?;
        let (version, comment, hostname): (String, String, String) = conn
            .query_first("SELECT @@version, @@version_comment, @@hostname")
            .await
            .context("reading the server version")?
            .context("the server returned no version")?;
        let version = ServerVersion::parse(&version, &comment);
        Ok((
            Server {
                credentials: credentials.clone(),
                version,
                hostname,
            },
            conn,
        ))
    }

    /// A new connection of its own, e.g. the dedicated lock connection or the watchdog.
    pub async fn open(&self) -> anyhow::Result<Conn> {
        open(&self.credentials).await
    }

    pub fn target(&self) -> String {
        self.credentials.target()
    }
}

async fn open(creds: &Credentials) -> anyhow::Result<Conn> {
    let mut opts = OptsBuilder::default()
        .user(creds.user.clone())
        .pass(creds.password.clone())
        .prefer_socket(false)
        .stmt_cache_size(0);
    match (&creds.socket, &creds.host) {
        (Some(socket), _) => opts = opts.socket(Some(socket.display().to_string())),
        (None, Some(host)) => opts = opts.ip_or_hostname(host.clone()),
        (None, None) => opts = opts.ip_or_hostname("localhost"),
    }
    if let Some(port) = creds.port {
        opts = opts.tcp_port(port);
    }
    Conn::new(opts).await.map_err(|e| connect_error(creds, e))
}

fn connect_error(creds: &Credentials, e: mysql_async::Error) -> anyhow::Error {
    let target = creds.target();
    match e {
        mysql_async::Error::Server(s) if s.code == codes::ACCESS_DENIED => fail(
            Class::Connection,
            format!(
                "the server refused the credentials for {target}: {}. Check user and password \
                 in [mysql] defaults_file / password_file / user",
                s.message
            ),
        ),
        mysql_async::Error::Server(s) => fail(
            Class::Connection,
            format!(
                "the server refused the connection for {target}: {}",
                s.message
            ),
        ),
        other => fail(
            Class::Connection,
            format!(
                "cannot connect to the server ({target}): {other}. Is the server running, and \
                 are [mysql] socket / host / port right?"
            ),
        ),
    }
}

/// `CURRENT_USER()` quoted for a GRANT statement: `'backup'@'localhost'`.
pub async fn current_user(conn: &mut Conn) -> anyhow::Result<String> {
    let user: Option<String> = conn
        .query_first(
            "SELECT CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', \
             SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')",
        )
        .await?;
    user.context("the server returned no user")
}

/// Global privileges of the current user, upper case (`RELOAD`, `BINLOG MONITOR`, ...).
pub async fn privileges(conn: &mut Conn) -> anyhow::Result<Vec<String>> {
    let rows: Vec<String> = conn
        .query(
            "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES \
             WHERE GRANTEE = CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', \
             SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')",
        )
        .await
        .context("reading the current user's privileges")?;
    Ok(rows.into_iter().map(|p| p.to_uppercase()).collect())
}

/// The privileges dbsnap needs for `mode` that `granted` lacks. Each requirement is
/// met by any of several privileges (names differ between servers and versions); the
/// first one is reported.
pub fn missing_privileges(
    granted: &[String],
    mode: LockMode,
    binlog_enabled: bool,
    policy: LongQueryPolicy,
) -> Vec<&'static str> {
    let has_any = |names: &[&str]| names.iter().any(|n| granted.iter().any(|g| g == n));
    let mut needed: Vec<&[&'static str]> = Vec::new();
    match mode {
        LockMode::Ftwrl | LockMode::BackupStage => needed.push(&["RELOAD"]),
        LockMode::Instance => needed.push(&["BACKUP_ADMIN"]),
        LockMode::Replica => needed.push(&[
            "REPLICATION SLAVE ADMIN",
            "SUPER",
            "REPLICATION_SLAVE_ADMIN",
        ]),
        LockMode::None => {}
    }
    if binlog_enabled || mode == LockMode::Replica {
        needed.push(&["BINLOG MONITOR", "REPLICATION CLIENT", "SUPER"]);
    }
    if policy == LongQueryPolicy::Kill {
        needed.push(&["CONNECTION ADMIN", "SUPER", "CONNECTION_ADMIN"]);
    }
    needed
        .into_iter()
        .filter(|names| !has_any(names))
        .map(|names| names[0])
        .collect()
}

/// User tables whose engine has no crash recovery, as `schema.table (ENGINE)`. MEMORY and
/// BLACKHOLE keep nothing on disk; Aria is listed because only its transactional tables
/// recover.
pub async fn non_transactional_tables(conn: &mut Conn) -> anyhow::Result<Vec<String>> {
    conn.query(
        "SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME, ' (', ENGINE, ')') FROM information_schema.TABLES \
         WHERE TABLE_TYPE = 'BASE TABLE' \
         AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') \
         AND ENGINE NOT IN ('InnoDB', 'MEMORY', 'BLACKHOLE', 'SEQUENCE') ORDER BY 1",
    )
    .await
    .context("listing tables in non-transactional engines")
}

/// `@@read_only`: whether only the replication applier (and admins) can write.
pub async fn read_only(conn: &mut Conn) -> anyhow::Result<bool> {
    let v: Option<i64> = conn
        .query_first("SELECT @@global.read_only")
        .await
        .context("reading @@read_only")?;
    Ok(v.unwrap_or(0) != 0)
}

/// Read the server's file layout (outside the lock).
pub async fn layout(conn: &mut Conn) -> anyhow::Result<Layout> {
    type Row = (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let row: Row = conn
        .query_first(
            "SELECT @@datadir, @@log_bin_basename, @@innodb_log_group_home_dir, \
             @@innodb_data_home_dir, @@innodb_undo_directory, @@relay_log_basename, \
             @@socket, @@pid_file",
        )
        .await
        .context("reading the server's paths (@@datadir, @@log_bin_basename, ...)")?
        .context("the server returned no paths")?;
    let (datadir, log_bin_basename, redo, data_home, undo, relay, socket, pid_file) = row;
    // MariaDB only; MySQL has no Aria engine.
    let aria_log_dir: Option<String> = conn
        .query_first::<Option<String>, _>("SELECT @@aria_log_dir_path")
        .await
        .ok()
        .flatten()
        .flatten();
    // MariaDB's view of InnoDB tablespaces; on servers without it, none are listed.
    let tablespace_files: Vec<String> = conn
        .query(
            "SELECT FILENAME FROM information_schema.INNODB_SYS_TABLESPACES \
             WHERE FILENAME IS NOT NULL",
        )
        .await
        .unwrap_or_default();
    Ok(Layout::from_server(
        PathBuf::from(datadir),
        ServerPaths {
            log_bin_basename,
            redo,
            data_home,
            undo,
            relay,
            aria_log_dir,
            socket,
            pid_file,
            tablespace_files,
        },
    ))
}
