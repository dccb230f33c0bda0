//! A connection to the server and the queries dbsnap runs outside the lock.

use std::path::PathBuf;

use anyhow::Context;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

use crate::config::Credentials;
use crate::db::layout::{Layout, ServerPaths};
use crate::error::{fail, Class};

/// What dbsnap knows about the server it backs up.
#[derive(Debug, Clone)]
pub struct Server {
    credentials: Credentials,
    pub version: String,
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
        let (version, hostname): (String, String) = conn
            .query_first("SELECT @@version, @@hostname")
            .await
            .context("reading the server version")?
            .context("the server returned no version")?;
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

/// The privileges dbsnap needs that `granted` lacks, each with the alternatives that
/// would satisfy it.
pub fn missing_privileges(granted: &[String], binlog_enabled: bool) -> Vec<&'static str> {
    let has = |p: &str| granted.iter().any(|g| g == p);
    let mut missing = Vec::new();
    if !has("RELOAD") {
        missing.push("RELOAD");
    }
    if binlog_enabled && !(has("BINLOG MONITOR") || has("REPLICATION CLIENT") || has("SUPER")) {
        missing.push("BINLOG MONITOR");
    }
    missing
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
