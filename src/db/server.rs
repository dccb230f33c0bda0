//! A connection to the server and the queries dbsnap runs outside the lock.

use std::path::PathBuf;

use anyhow::Context;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

use crate::db::credentials::Credentials;
use crate::db::layout::{Layout, ServerPaths};
use crate::db::lock_mode::LockMode;
use crate::db::stall_guard::LongQueryPolicy;
use crate::db::version::{Flavor, ServerVersion, Version};
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
    // Listing InnoDB's tablespace files (some may live outside the datadir).
    let mut needed: Vec<&[&'static str]> = vec![&["PROCESS"]];
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

/// Global privileges any one of which makes every table visible in
/// `information_schema.TABLES`: the server lists only tables on which the user holds
/// some privilege. `SHOW VIEW` is the narrowest (it shows view definitions, no data);
/// measured on MariaDB 10.11: with RELOAD and BINLOG MONITOR alone the user sees no
/// table at all, with `SHOW VIEW ON *.*` (or SELECT, or REFERENCES) every one.
pub const TABLE_VISIBILITY: &[&str] = &[
    "SHOW VIEW",
    "SELECT",
    "REFERENCES",
    "INSERT",
    "UPDATE",
    "DELETE",
    "CREATE",
    "DROP",
    "INDEX",
    "ALTER",
    "CREATE VIEW",
    "TRIGGER",
];

/// Whether `granted` (global privileges) lets the user see every table's engine.
/// Privileges on single databases or through roles do not count: they cannot show
/// tables in databases created later, so dbsnap would not know what it cannot see.
pub fn sees_every_table(granted: &[String]) -> bool {
    TABLE_VISIBILITY
        .iter()
        .any(|p| granted.iter().any(|g| g == p))
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
    Ok(v.context("the server returned no @@read_only")? != 0)
}

/// The statement that lists InnoDB's tablespace files on this server: MariaDB names
/// them in `INNODB_SYS_TABLESPACES.FILENAME`, MySQL 8 in `INNODB_DATAFILES.PATH`,
/// MySQL 5.7 in `INNODB_SYS_DATAFILES.PATH`. All need PROCESS.
pub fn tablespace_query(version: &ServerVersion) -> &'static str {
    match version.flavor {
        Flavor::MariaDb => {
            "SELECT FILENAME FROM information_schema.INNODB_SYS_TABLESPACES \
             WHERE FILENAME IS NOT NULL"
        }
        Flavor::MySql if version.version >= Version(8, 0, 0) => {
            "SELECT PATH FROM information_schema.INNODB_DATAFILES WHERE PATH IS NOT NULL"
        }
        Flavor::MySql => {
            "SELECT PATH FROM information_schema.INNODB_SYS_DATAFILES WHERE PATH IS NOT NULL"
        }
    }
}

/// The tablespace files from the answer to [`tablespace_query`]. InnoDB always has
/// some (the system tablespace, the `mysql` schema's tables), so an empty answer
/// means the query could not see them: an error, never "no files outside the datadir".
pub fn tablespace_files(rows: Vec<Option<String>>, query: &str) -> anyhow::Result<Vec<String>> {
    let files: Vec<String> = rows
        .into_iter()
        .flatten()
        .filter(|f| !f.is_empty())
        .collect();
    if files.is_empty() {
        return Err(fail(
            Class::Privileges,
            format!(
                "the server listed no InnoDB tablespace files ({query}), though it always has \
                 some: dbsnap cannot tell which files outside the datadir to copy. Check that \
                 the backup user has PROCESS (GRANT PROCESS ON *.* TO <user>)"
            ),
        ));
    }
    Ok(files)
}

/// Read the server's file layout (outside the lock). Every query here must succeed and
/// see what must exist: a directory it misses would be silently left out of the backup.
pub async fn layout(conn: &mut Conn, version: &ServerVersion) -> anyhow::Result<Layout> {
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
    let aria_log_dir: Option<String> = match version.flavor {
        Flavor::MariaDb => conn
            .query_first::<Option<String>, _>("SELECT @@aria_log_dir_path")
            .await
            .context("reading @@aria_log_dir_path")?
            .flatten(),
        Flavor::MySql => None,
    };
    let query = tablespace_query(version);
    let rows: Vec<Option<String>> = conn.query(query).await.map_err(|e| {
        let denied =
            matches!(&e, mysql_async::Error::Server(s) if s.code == 1227 || s.code == 1142);
        let what = format!(
            "cannot list InnoDB's tablespace files ({query}): {e}. dbsnap must know every file \
             outside the datadir to copy it"
        );
        match denied {
            true => fail(
                Class::Privileges,
                format!("{what}. Grant PROCESS ON *.* to the backup user"),
            ),
            false => anyhow::anyhow!(what),
        }
    })?;
    let tablespace_files = tablespace_files(rows, query)?;
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn version(text: &str) -> ServerVersion {
        ServerVersion::parse(text, "")
    }

    #[test]
    fn tablespaces_are_read_from_each_flavours_own_table() {
        assert!(tablespace_query(&version("10.11.19-MariaDB")).contains("INNODB_SYS_TABLESPACES"));
        assert!(tablespace_query(&version("8.0.36")).contains("INNODB_DATAFILES"));
        assert!(tablespace_query(&version("8.4.3")).contains("INNODB_DATAFILES"));
        assert!(tablespace_query(&version("5.7.44")).contains("INNODB_SYS_DATAFILES"));
    }

    /// `SELECT PATH FROM information_schema.INNODB_DATAFILES` on MySQL 8.0.36 with a
    /// table created `DATA DIRECTORY = '/srv/fast'` (recorded response).
    #[test]
    fn mysql_8_tablespaces_outside_the_datadir_are_copied() {
        let rows = [
            "./ibdata1",
            "./sys/sys_config.ibd",
            "./mysql.ibd",
            "./undo_001",
            "./undo_002",
            "./shop/orders.ibd",
            "/srv/fast/shop/events.ibd",
        ]
        .map(|p| Some(p.to_string()))
        .to_vec();
        let query = tablespace_query(&version("8.0.36"));
        let files = tablespace_files(rows, query).unwrap();
        let layout = Layout::from_server(
            PathBuf::from("/var/lib/mysql"),
            ServerPaths {
                tablespace_files: files,
                ..ServerPaths::default()
            },
        );
        assert!(
            layout
                .dirs
                .iter()
                .any(|d| d.role == "tablespace" && d.path == Path::new("/srv/fast/shop")),
            "{layout:?}"
        );
    }

    #[test]
    fn an_empty_tablespace_list_is_an_error() {
        let query = tablespace_query(&version("8.0.36"));
        let err = tablespace_files(vec![], query).unwrap_err();
        assert!(err.to_string().contains("PROCESS"), "{err}");
        let err = tablespace_files(vec![None, Some(String::new())], query).unwrap_err();
        assert_eq!(crate::error::class_of(&err), Class::Privileges);
    }

    #[test]
    fn missing_privileges_include_process_for_the_tablespace_list() {
        let granted = vec!["RELOAD".to_string(), "BINLOG MONITOR".to_string()];
        let missing =
            missing_privileges(&granted, LockMode::BackupStage, true, LongQueryPolicy::Wait);
        assert_eq!(missing, vec!["PROCESS"]);
    }

    /// `SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES` for the README's
    /// grants, on MariaDB 10.11 and MySQL 8.0 (recorded responses).
    #[test]
    fn table_engines_are_visible_only_with_a_global_table_privilege() {
        let granted = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(!sees_every_table(&granted(&[
            "RELOAD",
            "BINLOG MONITOR",
            "PROCESS"
        ])));
        assert!(!sees_every_table(&granted(&[
            "RELOAD",
            "PROCESS",
            "REPLICATION CLIENT",
            "BACKUP_ADMIN"
        ])));
        assert!(sees_every_table(&granted(&[
            "RELOAD",
            "PROCESS",
            "SHOW VIEW"
        ])));
        assert!(sees_every_table(&granted(&["SELECT", "RELOAD"])));
    }
}
