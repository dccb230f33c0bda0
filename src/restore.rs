//! Restore: put a backup's files into a new datadir, rewrite the files that name other
//! files by absolute path, fix ownership, and say how to make a replica of it.
//!
//! The datadir goes to `--datadir DIR`. A directory the server kept outside its
//! datadir (binlog, redo log, ... on other volumes) goes beside it as `DIR.<role>`,
//! and the server options that point there are printed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::error::{fail, Class};
use crate::manifest::Manifest;
use crate::progress::Progress;
use crate::relocate::{self, Moves};
use crate::transfer::{self, CopyItem};

#[derive(Debug, Clone)]
pub struct Request {
    pub backup: PathBuf,
    pub datadir: PathBuf,
    pub force: bool,
    /// The server's user; `None`: `mysql` if that user exists.
    pub owner: Option<String>,
    pub source: Source,
}

/// Where a replica built from the restored copy will replicate from.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    /// Empty: the host the backup was taken from.
    pub host: String,
    pub port: u16,
    pub user: String,
}

#[derive(Debug, Serialize)]
pub struct Restored {
    pub backup: String,
    /// Each original directory and where it was restored.
    pub directories: Vec<(PathBuf, PathBuf)>,
    /// Server options the restored copy needs (beyond `datadir`).
    pub server_options: Vec<String>,
    pub owner: Option<String>,
    pub rewritten: Vec<PathBuf>,
    pub replication: Replication,
    pub bytes: u64,
    pub duration_ms: u64,
}

/// Statements that make a server started on the restored copy a replica of the source.
#[derive(Debug, Serialize)]
pub struct Replication {
    /// Replicate by GTID (when the backup recorded one).
    pub gtid: Option<String>,
    /// Replicate from the binlog file and position recorded under the lock.
    pub file_position: Option<String>,
    /// `START SLAVE` / `START REPLICA`.
    pub start: String,
}

pub async fn restore(request: &Request) -> anyhow::Result<Restored> {
    let manifest = Manifest::read(&request.backup)?;
    let target = &request.datadir;
    if !target.is_absolute() {
        return Err(fail(
            Class::Config,
            format!("--datadir {} must be an absolute path", target.display()),
        ));
    }

    // Where each copied directory goes: the datadir to DIR, the others beside it.
    let roots = copy_roots(&manifest);
    let base = target.file_name().map(|f| f.to_string_lossy().into_owned());
    let moves: Vec<(PathBuf, PathBuf)> = roots
        .iter()
        .map(|(role, path)| {
            let to = if *path == manifest.server.datadir {
                target.clone()
            } else {
                target.with_file_name(format!(
                    "{}.{}",
                    base.clone().unwrap_or_default(),
                    role.replace(' ', "-")
                ))
            };
            (path.clone(), to)
        })
        .collect();

    for (_, to) in &moves {
        let running = crate::procs::servers_on(to);
        if !running.is_empty() {
            return Err(fail(
                Class::Destination,
                format!(
                    "a database server is running on {}: {}. Stop it first (systemctl stop \
                     mariadb, or mariadb-admin shutdown), then run the restore again",
                    to.display(),
                    crate::procs::describe(&running)
                ),
            ));
        }
        let nonempty = std::fs::read_dir(to).is_ok_and(|mut d| d.next().is_some());
        if nonempty && !request.force {
            return Err(fail(
                Class::Destination,
                format!(
                    "{} is not empty. Restore into an empty directory, or pass --force to \
                     replace what is there (its contents are deleted)",
                    to.display()
                ),
            ));
        }
    }
    let owner = owner(request.owner.as_deref())?;

    // Copy.
    let mut items = Vec::new();
    for (from, to) in &moves {
        if to.exists() && request.force {
            empty_dir(to)?;
        }
        std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
        items.push(CopyItem {
            from: Manifest::stored_path(&request.backup, from),
            to: to.clone(),
            exclude: Vec::new(),
        });
    }
    let progress = Progress::new(manifest.transfer.bytes);
    let report = |bytes| progress.set(bytes);
    let stats = transfer::copy(&items, None, &report).await?;
    progress.finish();

    // Point the copy at itself.
    let to_dirs: Vec<PathBuf> = moves.iter().map(|(_, to)| to.clone()).collect();
    let moves = Moves(moves);
    let rewritten = relocate::rewrite_path_files(&to_dirs, &moves)?;

    if let Some((uid, gid, _)) = &owner {
        for dir in &to_dirs {
            for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
                std::os::unix::fs::lchown(entry.path(), Some(*uid), Some(*gid))
                    .with_context(|| format!("changing the owner of {}", entry.path().display()))?;
            }
        }
    }

    let server_options = server_options(&manifest, &moves, target);
    let mut source = request.source.clone();
    if source.host.is_empty() {
        source.host = manifest.server.hostname.clone();
    }
    Ok(Restored {
        backup: manifest.name.clone(),
        directories: moves.0.clone(),
        server_options,
        owner: owner.map(|(_, _, name)| name),
        rewritten,
        replication: replication(&manifest, &source),
        bytes: stats.bytes,
        duration_ms: stats.duration_ms,
    })
}

/// The backup's top directories (not inside another one), with their role.
fn copy_roots(manifest: &Manifest) -> Vec<(String, PathBuf)> {
    manifest
        .paths
        .iter()
        .filter(|d| {
            !manifest
                .paths
                .iter()
                .any(|o| o.path != d.path && d.path.starts_with(&o.path))
        })
        .map(|d| (d.role.clone(), d.path.clone()))
        .collect()
}

/// Options for the restored server's configuration when directories moved apart from
/// the datadir.
fn server_options(manifest: &Manifest, moves: &Moves, datadir: &Path) -> Vec<String> {
    let mut options = vec![format!("datadir = {}", datadir.display())];
    if let Some(base) = &manifest.server.binlog_basename {
        if let Some(new) = moves.relocate(base) {
            options.push(format!("log_bin = {}", new.display()));
        }
    }
    for d in &manifest.paths {
        let option = match d.role.as_str() {
            "redo log" => "innodb_log_group_home_dir",
            "system tablespace" => "innodb_data_home_dir",
            "undo" => "innodb_undo_directory",
            "aria log" => "aria_log_dir_path",
            _ => continue,
        };
        if let Some(new) = moves.relocate(&d.path) {
            options.push(format!("{option} = {}", new.display()));
        }
    }
    options
}

/// uid, gid and name of the server's user.
fn owner(requested: Option<&str>) -> anyhow::Result<Option<(u32, u32, String)>> {
    let name = requested.unwrap_or("mysql");
    match nix::unistd::User::from_name(name)? {
        Some(u) => Ok(Some((u.uid.as_raw(), u.gid.as_raw(), u.name))),
        None if requested.is_some() => Err(fail(
            Class::Config,
            format!("--owner {name}: no such user on this host"),
        )),
        None => {
            tracing::warn!(
                "there is no `mysql` user here: the files keep the owners they had on the \
                 source. Pass --owner USER to give them to the server's user"
            );
            Ok(None)
        }
    }
}

fn empty_dir(dir: &Path) -> anyhow::Result<()> {
    tracing::warn!("--force: deleting the contents of {}", dir.display());
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let result = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        result.with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `CHANGE MASTER TO` (MariaDB, MySQL before 8.0.23) or `CHANGE REPLICATION SOURCE TO`
/// (MySQL 8.0.23 and later), in GTID and binlog file/position forms. The password is
/// a placeholder: dbsnap never handles the replication password.
pub fn replication(manifest: &Manifest, source: &Source) -> Replication {
    let version = &manifest.server.version;
    let mariadb = version.contains("MariaDB");
    let numbers: Vec<u32> = version
        .split(['-', '+'])
        .next()
        .unwrap_or("")
        .split('.')
        .filter_map(|n| n.parse().ok())
        .collect();
    let new_mysql = !mariadb && numbers.as_slice() >= [8, 0, 23].as_slice();
    let (change, p, start) = if new_mysql {
        ("CHANGE REPLICATION SOURCE TO", "SOURCE", "START REPLICA;")
    } else {
        ("CHANGE MASTER TO", "MASTER", "START SLAVE;")
    };
    let connection = format!(
        "{p}_HOST = {}, {p}_PORT = {}, {p}_USER = {}, {p}_PASSWORD = '<password>'",
        sql_string(&source.host),
        source.port,
        sql_string(&source.user)
    );
    let coords = &manifest.coordinates;
    let file_position = match (&coords.binlog_file, coords.binlog_position) {
        (Some(file), Some(pos)) => Some(format!(
            "{change} {connection}, {p}_LOG_FILE = {}, {p}_LOG_POS = {pos};",
            sql_string(file)
        )),
        _ => None,
    };
    let gtid = coords
        .gtid_binlog_pos
        .as_deref()
        .filter(|g| !g.is_empty())
        .map(|g| {
            if mariadb {
                format!(
                    "SET GLOBAL gtid_slave_pos = {};\n{change} {connection}, MASTER_USE_GTID = slave_pos;",
                    sql_string(g)
                )
            } else {
                // MySQL keeps its executed GTID set in the restored files themselves.
                format!("{change} {connection}, {p}_AUTO_POSITION = 1;")
            }
        });
    Replication {
        gtid,
        file_position,
        start: start.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(version: &str) -> Manifest {
        let text = format!(
            r#"
format = 1
name = "20261125T214500Z"
path = "/b/20261125T214500Z"
dbsnap_version = "0.1.0"
started_at = "2026-11-25T21:45:00Z"
finished_at = "2026-11-25T21:46:00Z"
paths = [{{ role = "datadir", path = "/var/lib/mysql" }}]
[server]
version = "{version}"
hostname = "db1"
datadir = "/var/lib/mysql"
binlog_basename = "/var/lib/mysql/binlog"
[lock]
mode = "ftwrl"
wait_ms = 1.0
hold_ms = 2.0
attempts = 1
acquired_at = "2026-11-25T21:45:00Z"
released_at = "2026-11-25T21:45:00Z"
[coordinates]
binlog_file = "binlog.000002"
binlog_position = 1234
gtid_binlog_pos = "0-1-42"
[snapshot]
backend = "btrfs"
name = "dbsnap-20261125T214500Z"
atomic = true
volumes = []
[transfer]
method = "rsync"
bytes = 1
files = 1
duration_ms = 1
"#
        );
        toml::from_str(&text).unwrap()
    }

    fn source() -> Source {
        Source {
            host: "db1".into(),
            port: 3306,
            user: "re'pl".into(),
        }
    }

    #[test]
    fn mariadb_statements() {
        let r = replication(&manifest("10.11.6-MariaDB-log"), &source());
        assert_eq!(
            r.gtid.unwrap(),
            "SET GLOBAL gtid_slave_pos = '0-1-42';\nCHANGE MASTER TO MASTER_HOST = 'db1', \
             MASTER_PORT = 3306, MASTER_USER = 're\\'pl', MASTER_PASSWORD = '<password>', \
             MASTER_USE_GTID = slave_pos;"
        );
        assert!(r
            .file_position
            .unwrap()
            .ends_with("MASTER_LOG_FILE = 'binlog.000002', MASTER_LOG_POS = 1234;"));
        assert_eq!(r.start, "START SLAVE;");
    }

    #[test]
    fn new_mysql_uses_replication_source() {
        let r = replication(&manifest("8.0.36"), &source());
        assert!(r
            .file_position
            .unwrap()
            .starts_with("CHANGE REPLICATION SOURCE TO SOURCE_HOST = 'db1'"));
        assert!(r.gtid.unwrap().ends_with("SOURCE_AUTO_POSITION = 1;"));
        assert_eq!(r.start, "START REPLICA;");
        let old = replication(&manifest("5.7.44-log"), &source());
        assert!(old.file_position.unwrap().starts_with("CHANGE MASTER TO"));
    }
}
