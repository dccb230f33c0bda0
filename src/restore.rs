//! Restore: put a backup's files into a new datadir, rewrite the files that name other
//! files by absolute path, fix ownership, and say how to make a replica of it.
//!
//! The datadir goes to `--datadir DIR`. A directory the server kept outside its
//! datadir (binlog, redo log, ... on other volumes) goes beside it as `DIR.<role>`,
//! and the server options that point there are printed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use crate::db::version::{Flavor, ServerVersion};
use crate::db::Coordinates;
use crate::destination::restic::ResticRepo;
use crate::destination::ssh::SshDir;
use crate::destination::{tree_bytes, Backup};
use crate::error::{fail, Class};
use crate::manifest::Manifest;
use crate::progress::Progress;
use crate::relocate::{self, Moves};
use crate::transfer::rsync;
use crate::transfer::CopyItem;

#[derive(Debug, Clone)]
pub struct Request {
    pub backup: PathBuf,
    pub datadir: PathBuf,
    pub force: bool,
    /// The server's user; `None`: `mysql` if that user exists.
    pub owner: Option<String>,
    pub source: Source,
    /// What a restore must never write into or delete: the destination, the state
    /// directory, snapshot directories (see [`Protected`]).
    pub protected: Vec<Protected>,
}

/// A directory a restore target must not be, lie in, or contain.
#[derive(Debug, Clone)]
pub struct Protected {
    pub path: PathBuf,
    /// What it is, for the refusal: "the backup destination ([backup] dest)".
    pub what: String,
}

/// Directory names that hold snapshots: a restore never writes into one.
const SNAPSHOT_DIR_NAMES: &[&str] = &[".dbsnap-snapshots", ".zfs"];

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
    /// When the backup is of a replica: replicate from that replica's own source, at
    /// the position the backup holds.
    pub from_source: Option<String>,
    /// Why a form is missing, if one is.
    pub note: Option<String>,
    /// `START SLAVE` / `START REPLICA`.
    pub start: String,
}

/// Where the backup being restored is.
pub enum Origin<'a> {
    /// A backup directory on this host: `Request::backup`.
    Local,
    /// A backup on an ssh destination's host: `Request::backup` is its path there.
    Remote {
        dest: &'a SshDir,
        manifest: &'a Manifest,
    },
    /// A backup in a restic repository (`Request::backup` is only its name).
    Repository {
        repo: &'a ResticRepo,
        backup: &'a Backup,
    },
}

/// Restore `request.backup` from `origin`: a local backup directory is copied, a
/// backup on an ssh destination's host pulled over ssh, a repository's restored by
/// restic, each straight into the new directories.
pub async fn restore(request: &Request, origin: Origin<'_>) -> anyhow::Result<Restored> {
    let manifest = match &origin {
        Origin::Local => Manifest::read(&request.backup)?,
        Origin::Remote { manifest, .. } => (*manifest).clone(),
        Origin::Repository { backup, .. } => backup.manifest.clone(),
    };
    let target = &request.datadir;
    if !target.is_absolute() {
        return Err(fail(
            Class::Config,
            format!("--datadir {} must be an absolute path", target.display()),
        ));
    }
    let moves = moves_of(&manifest, target);
    // Every check before anything is deleted: --force empties the targets.
    check_targets(request, &origin, &manifest, &moves)?;
    let owner = owner(request.owner.as_deref())?;

    // Copy. From here until it is complete, an error or an interruption removes what
    // this restore wrote (the guard's drop).
    let mut written = Written(Vec::new());
    prepare_targets(request, &moves, &mut written)?;
    let stats = match &origin {
        Origin::Local => copy_into(request, None, &manifest, &moves).await?,
        Origin::Remote { dest, .. } => copy_into(request, Some(*dest), &manifest, &moves).await?,
        Origin::Repository { repo, backup } => {
            restore_from_repository(repo, backup, &manifest, &moves).await?
        }
    };
    let moves = Moves(moves);
    let rewritten = relocate_copy(&manifest, &moves)?;
    // The redo log names tablespaces outside the datadir by their original path: crash
    // recovery, run once here where those paths show the restored copy, keeps the
    // first real start away from the live files.
    if manifest.paths.iter().any(|p| p.role == "tablespace") {
        let ms = crate::verify::recover_restored(&manifest, &moves, target).await?;
        tracing::info!(
            "crash recovery of the restored copy (tablespaces outside the datadir) took {ms} ms"
        );
    }
    if let Some((uid, gid, _)) = &owner {
        for (_, dir) in &moves.0 {
            for entry in walkdir::WalkDir::new(dir).into_iter().flatten() {
                std::os::unix::fs::lchown(entry.path(), Some(*uid), Some(*gid))
                    .with_context(|| format!("changing the owner of {}", entry.path().display()))?;
            }
        }
    }
    written.0.clear();

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
        replication: replication(
            &manifest.server.version.text,
            &manifest.coordinates,
            &source,
        ),
        bytes: stats.bytes,
        duration_ms: stats.duration_ms,
    })
}

/// Where each copied directory goes: the datadir to `target`, the others beside it.
fn moves_of(manifest: &Manifest, target: &Path) -> Vec<(PathBuf, PathBuf)> {
    let base = target.file_name().map(|f| f.to_string_lossy().into_owned());
    manifest
        .top_level_paths()
        .map(|d| {
            let to = if d.path == manifest.server.datadir {
                target.to_path_buf()
            } else {
                target.with_file_name(format!(
                    "{}.{}",
                    base.clone().unwrap_or_default(),
                    d.role.replace(' ', "-")
                ))
            };
            (d.path.clone(), to)
        })
        .collect()
}

/// No target may be something to protect, used by a running server, or (without
/// `--force`) not empty.
fn check_targets(
    request: &Request,
    origin: &Origin<'_>,
    manifest: &Manifest,
    moves: &[(PathBuf, PathBuf)],
) -> anyhow::Result<()> {
    let being_restored = match origin {
        Origin::Local | Origin::Remote { .. } => Some(Protected {
            path: request.backup.clone(),
            what: "the backup being restored".into(),
        }),
        Origin::Repository { repo, .. } => repo.repository_dir().map(|path| Protected {
            path,
            what: "the restic repository being restored from".into(),
        }),
    };
    let mut protected: Vec<Protected> = being_restored.into_iter().collect();
    protected.extend(request.protected.iter().cloned());
    protected.extend(
        manifest
            .stored
            .iter()
            .filter(|s| s.path.is_absolute())
            .map(|s| Protected {
                path: s.path.clone(),
                what: "a copy the backup being restored holds".into(),
            }),
    );
    for (_, to) in moves {
        refuse_protected(to, &protected)?;
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
    Ok(())
}

/// Make every target an empty directory (`--force` empties one), noting each in
/// `written` first.
fn prepare_targets(
    request: &Request,
    moves: &[(PathBuf, PathBuf)],
    written: &mut Written,
) -> anyhow::Result<()> {
    for (_, to) in moves {
        let existed = to.exists();
        if existed && request.force {
            tracing::warn!("--force: deleting the contents of {}", to.display());
            remove_contents(to)?;
        }
        written.0.push((to.clone(), existed));
        std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    }
    Ok(())
}

/// Copy every directory of the backup to its (empty) target.
async fn copy_into(
    request: &Request,
    remote: Option<&SshDir>,
    manifest: &Manifest,
    moves: &[(PathBuf, PathBuf)],
) -> anyhow::Result<crate::manifest::TransferStats> {
    let mut items = Vec::new();
    for (from, to) in moves {
        for (copy, relative) in manifest.copies_of(&request.backup, from) {
            items.push(CopyItem {
                from: copy,
                to: to.join(relative),
                exclude: Vec::new(),
            });
        }
    }
    let (total, pull) = match remote {
        Some(dest) => (
            dest.stored_bytes(&request.backup).await,
            Some(dest.rsync_remote(rsync::Side::Source, None).await?),
        ),
        None => (crate::verify::stored_bytes(&request.backup), None),
    };
    let progress = Progress::new(total);
    let report = |bytes| progress.set(bytes);
    let options = rsync::Options {
        remote: pull.as_ref(),
        ..rsync::Options::default()
    };
    let stats = rsync::copy_with(&items, options, &report, &|_, _| {}).await?;
    progress.finish();
    Ok(stats)
}

/// Let restic write every directory of the backup into its (empty) target, once: into
/// a staging directory inside the target itself (on the target's filesystem, even when
/// the target is a mount point; removed with the target's contents if the restore does
/// not finish), whose contents are then renamed into place.
async fn restore_from_repository(
    repo: &ResticRepo,
    backup: &Backup,
    manifest: &Manifest,
    moves: &[(PathBuf, PathBuf)],
) -> anyhow::Result<crate::manifest::TransferStats> {
    let started = std::time::Instant::now();
    let progress = Progress::new(manifest.transfer.bytes);
    let staging_name = format!(".dbsnap-restore-{}", backup.name);
    let mut done = 0;
    for (from, to) in moves {
        let staging = to.join(&staging_name);
        let restoring = repo.restore_files(backup, from, &staging);
        tokio::pin!(restoring);
        // restic 0.14 reports no progress while it restores: what it has written is.
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let restored = loop {
            tokio::select! {
                restored = &mut restoring => break restored?,
                _ = tick.tick() => progress.set(done + tree_bytes([staging.as_path()], true)),
            }
        };
        move_contents(&restored, to, &staging_name)?;
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
        done += tree_bytes([to.as_path()], true);
        progress.set(done);
    }
    progress.finish();
    Ok(crate::manifest::TransferStats {
        bytes: done,
        bytes_written: done,
        duration_ms: started.elapsed().as_millis() as u64,
        ..Default::default()
    })
}

/// Rename everything in `restored` into `to` (same filesystem), and give `to` the
/// restored directory's mode and owner.
fn move_contents(restored: &Path, to: &Path, staging_name: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for entry in
        std::fs::read_dir(restored).with_context(|| format!("reading {}", restored.display()))?
    {
        let entry = entry?;
        if entry.file_name() == staging_name {
            return Err(fail(
                Class::Destination,
                format!(
                    "the backup holds a file named {staging_name}, the name the restore \
                     stages in: restore it by hand with `restic restore`"
                ),
            ));
        }
        let into = to.join(entry.file_name());
        std::fs::rename(entry.path(), &into)
            .with_context(|| format!("moving {} to {}", entry.path().display(), into.display()))?;
    }
    let meta = std::fs::metadata(restored)?;
    std::fs::set_permissions(to, meta.permissions())
        .with_context(|| format!("setting the mode of {}", to.display()))?;
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))
        .with_context(|| format!("changing the owner of {}", to.display()))
}

/// Point the copy at itself: every server directory, also one inside the datadir
/// (binlogs in `datadir/binlog`), has files that name the live server's by absolute
/// path. Returns the files rewritten.
fn relocate_copy(manifest: &Manifest, moves: &Moves) -> anyhow::Result<Vec<PathBuf>> {
    let path_dirs: Vec<PathBuf> = manifest
        .paths
        .iter()
        .filter_map(|p| moves.relocate(&p.path))
        .filter(|p| p.is_dir())
        .collect();
    relocate::rewrite_path_files(&path_dirs, moves)
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

/// Refuse a target that is, lies in, or contains a protected directory, or that has
/// a mount point inside it (emptying it would delete through the mount).
fn refuse_protected(to: &Path, protected: &[Protected]) -> anyhow::Result<()> {
    use crate::overlap::Overlap;
    let canonical = crate::overlap::canonical(to);
    let refuse = |why: String| {
        fail(
            Class::Destination,
            format!(
                "refusing to restore into {}: {why}. Nothing was deleted. Restore into a new \
                 directory outside dbsnap's destination, state directory and snapshots",
                to.display()
            ),
        )
    };
    for p in protected {
        let how = match crate::overlap::overlap(to, &p.path) {
            Some(Overlap::Same) => "it is",
            Some(Overlap::Inside) => "it is inside",
            Some(Overlap::Contains) => "it contains",
            None => continue,
        };
        return Err(refuse(format!("{how} {} {}", p.what, p.path.display())));
    }
    if let Some(name) = canonical
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .find(|c| SNAPSHOT_DIR_NAMES.contains(&c.as_ref()))
    {
        return Err(refuse(format!(
            "it is inside a snapshot directory ({name})"
        )));
    }
    if let Some(backup) = canonical
        .ancestors()
        .find(|a| a.join(crate::manifest::MANIFEST_FILE).is_file())
    {
        return Err(refuse(format!("{} is a backup", backup.display())));
    }
    let mounts = crate::overlap::mounts_inside(to);
    if !mounts.is_empty() {
        return Err(refuse(format!(
            "filesystems are mounted inside it ({}); unmount them first",
            mounts
                .iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// The target directories a restore in progress has written, and whether each existed
/// before. Dropped before it is cleared (an error, SIGINT/SIGTERM), it removes them
/// again: a half-copied datadir must not be mistaken for a restored one.
struct Written(Vec<(PathBuf, bool)>);

impl Drop for Written {
    fn drop(&mut self) {
        for (dir, existed) in &self.0 {
            let result = match existed {
                true => remove_contents(dir),
                false => std::fs::remove_dir_all(dir)
                    .or_else(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => Ok(()),
                        _ => Err(e),
                    })
                    .with_context(|| format!("removing {}", dir.display())),
            };
            match result {
                Ok(()) => tracing::warn!(
                    "the restore did not finish: removed the partly restored files in {}",
                    dir.display()
                ),
                Err(e) => tracing::error!(
                    "the restore did not finish, and the partly restored files in {} could \
                     not be removed ({e:#}): remove them before using that directory",
                    dir.display()
                ),
            }
        }
    }
}

/// Delete everything inside `dir` (`--force`), keeping `dir` itself.
fn remove_contents(dir: &Path) -> anyhow::Result<()> {
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
pub fn replication(version: &str, coords: &Coordinates, source: &Source) -> Replication {
    let sql = ChangeSource::for_version(version, &source.user);
    let here = sql.connection(&source.host, source.port);
    let (change, p) = (sql.change, sql.p);
    // Coordinates read after the snapshot (lock modes that do not block commits) may be
    // ahead of the copy: starting there would skip transactions. Only positions the
    // restored server knows itself are safe then.
    let (file_position, gtid, note) = if coords.exact {
        let file_position = match (&coords.binlog_file, coords.binlog_position) {
            (Some(file), Some(pos)) => Some(sql.file_pos(&source.host, source.port, file, pos)),
            _ => None,
        };
        let gtid = match (sql.mariadb, &coords.gtid_binlog_pos, &coords.gtid_executed) {
            (true, Some(g), _) if !g.is_empty() => Some(format!(
                "SET GLOBAL gtid_slave_pos = {};\n{change} {here}, MASTER_USE_GTID = slave_pos;",
                sql_string(g)
            )),
            // MySQL keeps its executed GTID set in the restored files themselves.
            (false, _, Some(g)) if !g.is_empty() => {
                Some(format!("{change} {here}, {p}_AUTO_POSITION = 1;"))
            }
            _ => None,
        };
        (file_position, gtid, None)
    } else {
        let gtid = if sql.mariadb {
            // The restored server's own GTID state, as its crash recovery left it.
            format!("{change} {here}, MASTER_USE_GTID = current_pos;")
        } else {
            format!("{change} {here}, {p}_AUTO_POSITION = 1;")
        };
        let note = "the backup's coordinates were read after the snapshot, so they may be ahead \
                    of the copy: use the GTID form, or read the position the restored server \
                    recovered to (SHOW MASTER STATUS) before it takes any write";
        (None, Some(gtid), Some(note.to_string()))
    };
    Replication {
        gtid,
        file_position,
        from_source: sql.sibling(coords),
        note,
        start: sql.start.into(),
    }
}

/// How this server's release spells making a replica.
struct ChangeSource<'a> {
    mariadb: bool,
    /// `CHANGE MASTER TO` or `CHANGE REPLICATION SOURCE TO`.
    change: &'static str,
    /// The option prefix: `MASTER` or `SOURCE`.
    p: &'static str,
    start: &'static str,
    user: &'a str,
}

impl<'a> ChangeSource<'a> {
    fn for_version(version: &str, user: &'a str) -> ChangeSource<'a> {
        let version = ServerVersion::from_text(version);
        let (change, p, start) = match version.has_change_replication_source() {
            true => ("CHANGE REPLICATION SOURCE TO", "SOURCE", "START REPLICA;"),
            false => ("CHANGE MASTER TO", "MASTER", "START SLAVE;"),
        };
        ChangeSource {
            mariadb: version.flavor == Flavor::MariaDb,
            change,
            p,
            start,
            user,
        }
    }

    fn connection(&self, host: &str, port: u16) -> String {
        let p = self.p;
        format!(
            "{p}_HOST = {}, {p}_PORT = {port}, {p}_USER = {}, {p}_PASSWORD = '<password>'",
            sql_string(host),
            sql_string(self.user)
        )
    }

    fn file_pos(&self, host: &str, port: u16, file: &str, pos: u64) -> String {
        let p = self.p;
        // MariaDB would otherwise keep replicating by GTID and ignore the position.
        let no_gtid = if self.mariadb {
            ", MASTER_USE_GTID = no"
        } else {
            ""
        };
        format!(
            "{} {}, {p}_LOG_FILE = {}, {p}_LOG_POS = {pos}{no_gtid};",
            self.change,
            self.connection(host, port),
            sql_string(file)
        )
    }

    /// A backup of a replica can also become a sibling replica of the same source.
    fn sibling(&self, coords: &Coordinates) -> Option<String> {
        let r = coords.replica.as_ref()?;
        let host = r.source_host.as_deref()?;
        let port = r.source_port.unwrap_or(3306);
        match (&r.source_log_file, r.source_log_pos, &r.gtid) {
            (Some(file), Some(pos), _) => Some(self.file_pos(host, port, file, pos)),
            (_, _, Some(g)) if self.mariadb && !g.is_empty() => Some(format!(
                "SET GLOBAL gtid_slave_pos = {};\n{} {}, MASTER_USE_GTID = slave_pos;",
                sql_string(g),
                self.change,
                self.connection(host, port)
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
