//! Verification: start a throwaway server on a scratch copy of a backup, let crash
//! recovery run, `CHECK TABLE` every table, compare the recovered binlog/GTID state
//! with the manifest, and record the verdict in the manifest.
//!
//! The backup itself is never opened by a server: the scratch copy is a reflink copy
//! where the filesystem allows (`cp --reflink=auto`), else a full copy, beside the
//! backup (`.dbsnap-verify-NAME`, journaled). The server runs with `--skip-networking`,
//! `--skip-grant-tables` (nothing can reach it but its own socket, in a 0700 directory),
//! `--skip-slave-start` and the event scheduler off, so it changes nothing anywhere.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use dbsnap_backend_api::command::Cmd;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use tokio::process::Child;

use crate::db::version::ServerVersion;
use crate::error::{fail, Class};
use crate::journal::{Journal, Resource};
use crate::manifest::{Manifest, Verdict, Verification};
use crate::relocate::{self, Moves};

/// Crash recovery of a large, busy server can take long; past this it counts as failed.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1800);
/// A clean shutdown of the throwaway server; past this it is killed (it is discarded anyway).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);
/// Prefixes of what verification creates; cleanup deletes nothing else.
pub const SCRATCH_PREFIX: &str = ".dbsnap-verify-";
pub const RUN_DIR_PREFIX: &str = "dbsnap-verify-";
/// Lines of the throwaway server's error log kept in the manifest.
const MAX_LOG_LINES: usize = 10;

/// Verify the backup in `backup_dir` and record the verdict in its manifest. Returns
/// the updated manifest; a failed verdict is not an error here (the caller decides).
pub async fn verify(journal: &mut Journal, backup_dir: &Path) -> anyhow::Result<Manifest> {
    let mut manifest = Manifest::read(backup_dir)?;
    let (binary, version) = find_server(&manifest.server.version).await?;
    tracing::info!(
        "verifying {} with {} ({version})",
        backup_dir.display(),
        binary.display()
    );
    let parent = backup_dir.parent().unwrap_or(Path::new("/"));
    let scratch = parent.join(format!("{SCRATCH_PREFIX}{}", manifest.name));
    let run_dir = std::env::temp_dir().join(format!("{RUN_DIR_PREFIX}{}", std::process::id()));
    for dir in [&scratch, &run_dir] {
        if dir.exists() {
            return Err(fail(
                Class::Internal,
                format!(
                    "{} exists, left by an earlier verification: run `dbsnap cleanup`, or remove it",
                    dir.display()
                ),
            ));
        }
    }
    let resource = Resource::Scratch {
        dir: scratch.clone(),
        run_dir: run_dir.clone(),
    };
    journal.record(&manifest.name, resource.clone())?;
    let outcome = run(&manifest, backup_dir, &scratch, &run_dir, &binary, &version).await;
    match remove_scratch(&scratch, &run_dir).await {
        Ok(()) => journal.forget(&resource)?,
        Err(e) => tracing::warn!("{e:#}; `dbsnap cleanup` will retry"),
    }
    let verification = outcome?;
    match verification.verdict {
        Verdict::Passed => tracing::info!(
            "verification passed: recovery {} ms, {} tables checked in {} ms",
            verification.recovery_ms,
            verification.tables_checked,
            verification.check_ms
        ),
        Verdict::Failed => {
            tracing::error!("verification FAILED: {}", verification.problems.join("; "))
        }
    }
    manifest.verification = Some(verification);
    manifest.write(backup_dir)?;
    Ok(manifest)
}

/// The error for a backup whose verification failed (exit code 11).
pub fn failed_error(manifest: &Manifest, dir: &Path) -> anyhow::Error {
    let problems = manifest
        .verification
        .as_ref()
        .map(|v| v.problems.join("\n  "))
        .unwrap_or_default();
    fail(
        Class::Verify,
        format!(
            "backup {} ({}) FAILED verification; do not rely on it. What was found:\n  {problems}\n\
             It is marked failed in its manifest and in `dbsnap list`. Take a new backup, and \
             check the server's storage if the data files were damaged",
            manifest.name,
            dir.display()
        ),
    )
}

async fn run(
    manifest: &Manifest,
    backup_dir: &Path,
    scratch: &Path,
    run_dir: &Path,
    binary: &Path,
    version: &str,
) -> anyhow::Result<Verification> {
    let mut v = Verification {
        verdict: Verdict::Failed,
        verified_at: Utc::now(),
        server_binary: binary.to_path_buf(),
        server_version: version.to_string(),
        copy_ms: 0,
        recovery_ms: 0,
        check_ms: 0,
        tables_checked: 0,
        recovered_gtid_binlog_pos: None,
        problems: Vec::new(),
        warnings: Vec::new(),
    };

    // The scratch copy: reflinks where the filesystem can, so it is cheap.
    check_scratch_space(scratch, stored_bytes(backup_dir))?;
    let started = Instant::now();
    std::fs::create_dir(scratch).with_context(|| format!("creating {}", scratch.display()))?;
    // Laid out like an rsync backup (`files/<absolute path>`), whichever way the backup
    // was made: each top-level server directory from wherever this backup holds it.
    for path in manifest.top_level_paths() {
        for (copy, relative) in manifest.copies_of(backup_dir, &path.path) {
            let to = Manifest::stored_path(scratch, &path.path).join(relative);
            std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
            // `SRC/.` copies the directory's contents (and its attributes) into `to`.
            Cmd::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(copy.join("."))
                .arg(&to)
                .timeout(Duration::from_secs(24 * 3600))
                .run()
                .await
                .with_context(|| format!("copying the backup into {}", scratch.display()))?;
        }
    }
    v.copy_ms = started.elapsed().as_millis() as u64;

    let moves = Moves(
        manifest
            .paths
            .iter()
            .map(|p| (p.path.clone(), Manifest::stored_path(scratch, &p.path)))
            .collect(),
    );
    let roots: Vec<PathBuf> = manifest
        .paths
        .iter()
        .map(|p| Manifest::stored_path(scratch, &p.path))
        .filter(|p| p.is_dir())
        .collect();
    relocate::rewrite_path_files(&roots, &moves)?;
    let datadir = Manifest::stored_path(scratch, &manifest.server.datadir);
    check_binlog(manifest, &moves, &mut v);

    if !datadir.is_dir() {
        anyhow::bail!("the backup holds no datadir at {}", datadir.display());
    }
    std::fs::create_dir_all(run_dir.join("tmp"))?;
    for dir in [run_dir.to_path_buf(), run_dir.join("tmp")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    // The server runs as dbsnap's own user, not the files' owner: backup directories
    // are often closed to other users (0700), and the scratch copy is deleted anyway.
    let uid = nix::unistd::geteuid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);

    let args = server_args(manifest, &moves, &roots, &datadir, run_dir, &user);
    let log = run_dir.join("error.log");
    let socket = run_dir.join("mysqld.sock");
    let started = Instant::now();
    let mut child = dbsnap_backend_api::command::dying_with_dbsnap(binary)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut conn = match wait_ready(&mut child, &socket).await {
        Ok(conn) => conn,
        Err(why) => {
            v.problems.push(format!(
                "the server did not come up on the copy: {why}{}",
                log_excerpt(&log)
            ));
            let _ = child.kill().await;
            return Ok(v);
        }
    };
    v.recovery_ms = started.elapsed().as_millis() as u64;
    tracing::info!("crash recovery on the copy took {} ms", v.recovery_ms);

    let started = Instant::now();
    if let Err(e) = check_tables(&mut conn, &mut v).await {
        v.problems.push(format!(
            "checking the tables failed: {e}{}",
            log_excerpt(&log)
        ));
    }
    v.check_ms = started.elapsed().as_millis() as u64;
    compare_gtid(&mut conn, manifest, &mut v).await;
    shutdown(conn, &mut child, &mut v).await;
    v.warnings.extend(log_lines(&log));
    if v.problems.is_empty() {
        v.verdict = Verdict::Passed;
    }
    Ok(v)
}

/// Apparent size of a backup's files (metadata only), whichever way it was made. Not
/// the manifest's transfer size: an incremental backup transferred only what changed.
/// Received copies kept outside the backup directory (ZFS) are counted too.
pub fn stored_bytes(backup_dir: &Path) -> u64 {
    let outside = Manifest::read(backup_dir)
        .map(|m| m.stored)
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.path.is_absolute())
        .map(|s| s.path)
        .collect::<Vec<_>>();
    crate::destination::tree_bytes(
        std::iter::once(backup_dir).chain(outside.iter().map(PathBuf::as_path)),
        false,
    )
}

/// Without reflinks the scratch copy is a full copy, on the filesystem that holds the
/// backups: refuse rather than fill it.
fn check_scratch_space(scratch: &Path, bytes: u64) -> anyhow::Result<()> {
    use nix::sys::statfs::{statfs, BTRFS_SUPER_MAGIC, XFS_SUPER_MAGIC};
    let parent = scratch.parent().unwrap_or(Path::new("/"));
    let fs = statfs(parent).with_context(|| format!("statfs {}", parent.display()))?;
    if [BTRFS_SUPER_MAGIC, XFS_SUPER_MAGIC].contains(&fs.filesystem_type()) {
        return Ok(());
    }
    let free = fs.blocks_available() * fs.block_size() as u64;
    if free < bytes {
        return Err(fail(
            Class::Destination,
            format!(
                "verifying needs a scratch copy of the backup ({}) beside it, but {} has only {} \
                 free and its filesystem cannot make reflink copies. Free space there",
                bytesize::ByteSize::b(bytes).display().iec(),
                parent.display(),
                bytesize::ByteSize::b(free).display().iec()
            ),
        ));
    }
    Ok(())
}

/// The throwaway server's command line: everything points into the scratch copy.
fn server_args(
    manifest: &Manifest,
    moves: &Moves,
    roots: &[PathBuf],
    datadir: &Path,
    run_dir: &Path,
    user: &str,
) -> Vec<String> {
    let mut args = vec![
        "--no-defaults".to_string(),
        format!("--datadir={}", datadir.display()),
        format!("--socket={}", run_dir.join("mysqld.sock").display()),
        format!("--pid-file={}", run_dir.join("mysqld.pid").display()),
        format!("--log-error={}", run_dir.join("error.log").display()),
        format!("--tmpdir={}", run_dir.join("tmp").display()),
        format!("--user={user}"),
        "--skip-networking".into(),
        "--skip-grant-tables".into(),
        "--skip-slave-start".into(),
        "--event-scheduler=DISABLED".into(),
    ];
    if let Some(base) = &manifest.server.binlog_basename {
        // With the binary log on, recovery also reads it (XA with InnoDB), and the
        // recovered GTID position comes from it.
        let base = moves
            .relocate(base)
            .unwrap_or_else(|| datadir.join(base.file_name().unwrap_or_default()));
        args.push(format!("--log-bin={}", base.display()));
    }
    // InnoDB's other directories: wherever the copy holds their files.
    let find = |file: &str| roots.iter().find(|r| r.join(file).exists());
    for (file, option) in [
        ("ib_logfile0", "--innodb-log-group-home-dir"),
        ("ibdata1", "--innodb-data-home-dir"),
        ("undo001", "--innodb-undo-directory"),
        ("aria_log_control", "--aria-log-dir-path"),
    ] {
        if let Some(dir) = find(file).filter(|d| d.as_path() != datadir) {
            args.push(format!("{option}={}", dir.display()));
        }
    }
    args
}

/// The copied binlog named in the manifest must reach the recorded position (when the
/// coordinates are exact: read while commits were blocked).
fn check_binlog(manifest: &Manifest, moves: &Moves, v: &mut Verification) {
    let (Some(base), Some(file), Some(position)) = (
        &manifest.server.binlog_basename,
        &manifest.coordinates.binlog_file,
        manifest.coordinates.binlog_position,
    ) else {
        return;
    };
    let Some(path) = base.parent().map(|d| d.join(file)) else {
        return;
    };
    let copied = moves.relocate(&path).unwrap_or(path);
    let exact = manifest.coordinates.exact;
    match std::fs::metadata(&copied) {
        Ok(m) if m.len() < position && !exact => v.warnings.push(format!(
            "the binary log {file} in the backup ends at {} before the recorded position \
             {position}; expected: the coordinates were read after the snapshot ({} lock)",
            m.len(),
            manifest.lock.mode
        )),
        Ok(m) if m.len() < position => v.problems.push(format!(
            "the binary log {file} in the backup is {} bytes long but the manifest records \
             position {position}: the copy lost the end of the binary log",
            m.len()
        )),
        Ok(m) if m.len() > position => v.warnings.push(format!(
            "the binary log {file} in the backup continues past the recorded position \
             ({} > {position} bytes)",
            m.len()
        )),
        Ok(_) => {}
        Err(e) => v.problems.push(format!(
            "the binary log {file} named in the manifest is not in the backup ({e})"
        )),
    }
}

async fn wait_ready(child: &mut Child, socket: &Path) -> Result<Conn, String> {
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("it exited ({status}) during startup"));
        }
        if socket.exists() {
            let opts = OptsBuilder::default()
                .socket(Some(socket.display().to_string()))
                .user(Some("root"))
                .prefer_socket(true);
            if let Ok(mut conn) = Conn::new(opts).await {
                if conn.query_drop("SELECT 1").await.is_ok() {
                    return Ok(conn);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "it did not answer within {}",
                humantime::format_duration(RECOVERY_TIMEOUT)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `CHECK TABLE` every base table; any error or non-OK status is a problem.
async fn check_tables(conn: &mut Conn, v: &mut Verification) -> anyhow::Result<()> {
    let tables: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' \
             AND TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema') \
             ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .await?;
    for (schema, table) in tables {
        let quoted = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
        let rows: Vec<(String, String, String, String)> = conn
            .query(format!("CHECK TABLE {quoted}"))
            .await
            .with_context(|| format!("CHECK TABLE {quoted}"))?;
        v.tables_checked += 1;
        for (_, _, kind, text) in rows {
            let bad = kind.eq_ignore_ascii_case("error")
                || (kind.eq_ignore_ascii_case("status") && !text.eq_ignore_ascii_case("OK"));
            if bad {
                v.problems
                    .push(format!("CHECK TABLE {quoted}: {kind}: {text}"));
            } else if kind.eq_ignore_ascii_case("warning") {
                v.warnings
                    .push(format!("CHECK TABLE {quoted}: {kind}: {text}"));
            }
        }
    }
    Ok(())
}

/// After recovery the server's GTID position must be the one recorded under the lock.
/// Coordinates read after the snapshot may be ahead; then the recovered one is the truth.
async fn compare_gtid(conn: &mut Conn, manifest: &Manifest, v: &mut Verification) {
    let recovered: Option<String> = conn
        .query_first::<Option<String>, _>("SELECT @@gtid_binlog_pos")
        .await
        .ok()
        .flatten()
        .flatten();
    v.recovered_gtid_binlog_pos = recovered.clone();
    let Some(expected) = manifest
        .coordinates
        .gtid_binlog_pos
        .as_deref()
        .filter(|g| !g.is_empty())
    else {
        return;
    };
    if recovered.as_deref() != Some(expected) && !manifest.coordinates.exact {
        v.warnings.push(format!(
            "crash recovery ended at GTID {}; the manifest's {expected} was read after the \
             snapshot ({} lock), so the recovered position is the exact one",
            recovered.as_deref().unwrap_or("(none)"),
            manifest.lock.mode
        ));
    } else if recovered.as_deref() != Some(expected) {
        v.problems.push(format!(
            "crash recovery ended at GTID {} but the manifest records {expected}: the copy and \
             its recorded coordinates disagree",
            recovered.as_deref().unwrap_or("(none)")
        ));
    }
}

async fn shutdown(mut conn: Conn, child: &mut Child, v: &mut Verification) {
    let _ = conn.query_drop("SHUTDOWN").await;
    drop(conn);
    match tokio::time::timeout(SHUTDOWN_TIMEOUT, child.wait()).await {
        Ok(Ok(_)) => {}
        _ => {
            v.warnings.push(format!(
                "the throwaway server did not shut down within {}; it was killed",
                humantime::format_duration(SHUTDOWN_TIMEOUT)
            ));
            let _ = child.kill().await;
        }
    }
}

fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The `[ERROR]` lines of the throwaway server's log (at most a few).
fn log_lines(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<String> = text
        .lines()
        .filter(|l| l.contains("[ERROR]"))
        .map(|l| format!("server log: {}", l.trim()))
        .collect();
    errors[errors.len().saturating_sub(MAX_LOG_LINES)..].to_vec()
}

fn log_excerpt(log: &Path) -> String {
    let lines = log_lines(log);
    if lines.is_empty() {
        String::new()
    } else {
        format!(
            ". The server's error log says:\n    {}",
            lines.join("\n    ")
        )
    }
}

/// Find the server binary: `mariadbd`/`mysqld` on PATH or in /usr/sbin, preferring the
/// version the backup was taken with. A different major.minor is refused: InnoDB's redo
/// format changes between releases, and recovery is what is being tested.
async fn find_server(backup: &ServerVersion) -> anyhow::Result<(PathBuf, String)> {
    let backup_version = backup.text.as_str();
    let mut candidates: Vec<PathBuf> = Vec::new();
    for name in ["mariadbd", "mysqld"] {
        if let Ok(found) = which::which_all(name) {
            candidates.extend(found);
        }
        candidates.push(Path::new("/usr/sbin").join(name));
    }
    let mut seen = Vec::new();
    let mut found = Vec::new();
    for c in candidates {
        let Ok(real) = c.canonicalize() else { continue };
        if seen.contains(&real) {
            continue;
        }
        seen.push(real);
        let Ok(out) = Cmd::new(&c).arg("--version").run().await else {
            continue;
        };
        if let Some(v) = parse_version(&out.stdout) {
            found.push((c, v));
        }
    }
    let wanted = backup.release();
    if let Some(exact) = found
        .iter()
        .find(|(_, v)| backup_version.starts_with(v.as_str()) || v.starts_with(backup_version))
    {
        return Ok(exact.clone());
    }
    if let Some(same) = found
        .iter()
        .find(|(_, v)| ServerVersion::from_text(v).release() == wanted)
    {
        return Ok(same.clone());
    }
    Err(fail(
        Class::Config,
        format!(
            "no server binary of release {wanted} (the backup was taken from {backup_version}) \
             was found; found: {}. Install that release's server (mariadbd/mysqld) or put it on PATH",
            if found.is_empty() {
                "none".to_string()
            } else {
                found
                    .iter()
                    .map(|(p, v)| format!("{} ({v})", p.display()))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
    ))
}

/// `mariadbd  Ver 10.11.6-MariaDB-0+deb12u1 for debian-linux-gnu ...` → `10.11.6-MariaDB-0+deb12u1`.
fn parse_version(output: &str) -> Option<String> {
    let mut words = output.split_whitespace();
    words.find(|w| *w == "Ver")?;
    words.next().map(str::to_string)
}

/// Stop a throwaway server left running on the scratch copy and delete the scratch
/// copy and run directory. Idempotent; deletes only directories named like
/// verification's own.
pub async fn remove_scratch(scratch: &Path, run_dir: &Path) -> anyhow::Result<()> {
    // Found by its command line rather than its pid file: a run killed early may have
    // left a server that has not written its pid file yet.
    for pid in crate::procs::throwaway_servers(scratch, run_dir) {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        tracing::info!(
            "stopping the throwaway server {pid} left on {}",
            scratch.display()
        );
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::procs::is_running(pid.as_raw() as u32) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for (dir, prefix) in [(scratch, SCRATCH_PREFIX), (run_dir, RUN_DIR_PREFIX)] {
        let ours = dir
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with(prefix));
        if ours && dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("removing the scratch directory {}", dir.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare_by_release() {
        assert_eq!(
            parse_version(
                "mariadbd  Ver 10.11.6-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian 12)\n"
            )
            .as_deref(),
            Some("10.11.6-MariaDB-0+deb12u1")
        );
        let release = |v: &str| ServerVersion::from_text(v).release();
        assert_eq!(release("10.11.6-MariaDB-0+deb12u1-log"), "10.11 MariaDB");
        assert_eq!(release("8.0.36"), "8.0 MySQL");
        assert_ne!(release("10.6.1-MariaDB"), release("10.11.6-MariaDB"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a`b c"), "`a``b c`");
    }
}
