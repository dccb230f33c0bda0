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

use crate::db::version::{Flavor, ServerVersion};
use crate::db::Coordinates;
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
        recovered_gtid_executed: None,
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
    let mut child = spawn_isolated(binary, &args, &original_views(manifest, &moves))?;
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

/// The tablespace directories outside the datadir that exist on this host, and where
/// their copies are: what a server started on the copy must see at the original path
/// (see [`spawn_isolated`]). Everything else the server finds through its options and
/// the rewritten index and `.isl` files.
pub fn original_views(manifest: &Manifest, moves: &Moves) -> Vec<(PathBuf, PathBuf)> {
    manifest
        .paths
        .iter()
        .filter(|p| p.role == "tablespace" && p.path.is_dir())
        .filter_map(|p| Some((p.path.clone(), moves.relocate(&p.path)?)))
        .filter(|(original, copy)| original != copy && copy.is_dir())
        .collect()
}

/// Start a server on a copy, in a mount namespace of its own in which each original
/// path of `views` shows its copy (`views`: original → copy), bind-mounted.
///
/// InnoDB's crash recovery opens the tablespaces its redo log names, by the path they
/// had when the log was written: a table created `DATA DIRECTORY = '/srv/fast'` is
/// named by that absolute path, whatever its `.isl` file says. A server started on a
/// copy on the same host would recover into, and then write, the *live* server's
/// tablespace. Inside the namespace that path is the copy; outside, nothing changes,
/// and the bind mounts vanish with the server.
pub fn spawn_isolated(
    binary: &Path,
    args: &[String],
    views: &[(PathBuf, PathBuf)],
) -> anyhow::Result<Child> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c_path = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .with_context(|| format!("{} contains a NUL byte", p.display()))
    };
    let binds: Vec<(CString, CString)> = views
        .iter()
        .map(|(original, copy)| Ok((c_path(copy)?, c_path(original)?)))
        .collect::<anyhow::Result<_>>()?;
    let root = c_path(Path::new("/"))?;
    let mut command = dbsnap_backend_api::command::dying_with_dbsnap(binary);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if binds.is_empty() {
        return command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()));
    }
    // SAFETY: between fork and exec only system calls run (unshare, mount), on
    // strings built before the fork; nothing allocates or takes a lock.
    unsafe {
        command.pre_exec(move || {
            use nix::mount::{mount, MsFlags};
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
            mount(
                None::<&std::ffi::CStr>,
                root.as_c_str(),
                None::<&std::ffi::CStr>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&std::ffi::CStr>,
            )?;
            for (copy, original) in &binds {
                mount(
                    Some(copy.as_c_str()),
                    original.as_c_str(),
                    None::<&std::ffi::CStr>,
                    MsFlags::MS_BIND,
                    None::<&std::ffi::CStr>,
                )?;
            }
            Ok(())
        });
    }
    command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// Crash-recover a restored copy once, in isolation (see [`spawn_isolated`]), and shut
/// it down cleanly: afterwards its redo log names no file, and a server started on it
/// opens its tablespaces from their rewritten `.isl` files, never the live ones.
pub async fn recover_restored(
    manifest: &Manifest,
    moves: &Moves,
    datadir: &Path,
) -> anyhow::Result<u64> {
    let (binary, _) = find_server(&manifest.server.version).await?;
    let run_dir = tempfile::Builder::new()
        .prefix(RUN_DIR_PREFIX)
        .tempdir()
        .context("creating a run directory for the recovery server")?;
    std::fs::create_dir(run_dir.path().join("tmp"))?;
    let roots: Vec<PathBuf> = manifest
        .paths
        .iter()
        .filter_map(|p| moves.relocate(&p.path))
        .filter(|p| p.is_dir())
        .collect();
    let uid = nix::unistd::geteuid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name);
    let args = server_args(manifest, moves, &roots, datadir, run_dir.path(), &user);
    let log = run_dir.path().join("error.log");
    let started = Instant::now();
    let mut child = spawn_isolated(&binary, &args, &original_views(manifest, moves))?;
    let conn = wait_ready(&mut child, &run_dir.path().join("mysqld.sock"))
        .await
        .map_err(|why| {
            anyhow::anyhow!(
                "crash recovery of the restored copy failed: the server {why}{}",
                log_excerpt(&log)
            )
        });
    let conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            let _ = child.kill().await;
            return Err(e);
        }
    };
    let mut v = Verification {
        verdict: Verdict::Failed,
        verified_at: Utc::now(),
        server_binary: binary.clone(),
        server_version: String::new(),
        copy_ms: 0,
        recovery_ms: 0,
        check_ms: 0,
        tables_checked: 0,
        recovered_gtid_binlog_pos: None,
        recovered_gtid_executed: None,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    shutdown(conn, &mut child, &mut v).await;
    if let Some(w) = v.warnings.first() {
        anyhow::bail!("crash recovery of the restored copy: {w}");
    }
    Ok(started.elapsed().as_millis() as u64)
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

/// The copied binlog named in the manifest must end exactly at the recorded position
/// when the coordinates are exact (read while commits were blocked, so nothing was
/// written after them); otherwise it may end before it or continue past it.
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
    match std::fs::metadata(&copied) {
        Ok(m) => binlog_verdict(
            file,
            m.len(),
            position,
            &manifest.coordinates,
            &manifest.lock.mode.to_string(),
            v,
        ),
        Err(e) => v.problems.push(format!(
            "the binary log {file} named in the manifest is not in the backup ({e})"
        )),
    }
}

/// [`check_binlog`]'s judgement of the copied binlog's `length`.
fn binlog_verdict(
    file: &str,
    length: u64,
    position: u64,
    coordinates: &Coordinates,
    mode: &str,
    v: &mut Verification,
) {
    let exact = coordinates.exact;
    match (length.cmp(&position), exact) {
        (std::cmp::Ordering::Equal, _) => {}
        (std::cmp::Ordering::Less, false) => v.warnings.push(format!(
            "the binary log {file} in the backup ends at {length} before the recorded position \
             {position}; expected: the coordinates were read after the snapshot ({mode} lock)"
        )),
        (std::cmp::Ordering::Greater, false) => v.warnings.push(format!(
            "the binary log {file} in the backup continues past the recorded position \
             ({length} > {position} bytes; the coordinates were read after the snapshot, {mode} lock)"
        )),
        (std::cmp::Ordering::Less, true) => v.problems.push(format!(
            "the binary log {file} in the backup is {length} bytes long but the manifest records \
             position {position}: the copy lost the end of the binary log"
        )),
        (std::cmp::Ordering::Greater, true) => v.problems.push(format!(
            "the binary log {file} in the backup is {length} bytes long but the manifest records \
             position {position}, read while commits were blocked ({mode} lock): the copy and \
             its recorded coordinates disagree"
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

/// After recovery the server's GTID state must be the one recorded under the lock:
/// MariaDB's `@@gtid_binlog_pos`, MySQL's `@@gtid_executed`. Coordinates read after the
/// snapshot may be ahead; then the recovered one is the truth.
async fn compare_gtid(conn: &mut Conn, manifest: &Manifest, v: &mut Verification) {
    let version = &manifest.server.version;
    let (variable, expected) = match version.flavor {
        Flavor::MariaDb => ("gtid_binlog_pos", &manifest.coordinates.gtid_binlog_pos),
        Flavor::MySql => ("gtid_executed", &manifest.coordinates.gtid_executed),
    };
    let recovered = conn
        .query_first::<Option<String>, _>(format!("SELECT @@global.{variable}"))
        .await;
    let recovered = match recovered {
        Ok(value) => value.flatten(),
        Err(e) => {
            v.problems
                .push(format!("cannot read @@{variable} after recovery: {e}"));
            return;
        }
    };
    match version.flavor {
        Flavor::MariaDb => v.recovered_gtid_binlog_pos = recovered.clone(),
        Flavor::MySql => v.recovered_gtid_executed = recovered.clone(),
    }
    let mode = manifest.lock.mode.to_string();
    let (coordinates, mode) = (&manifest.coordinates, mode.as_str());
    gtid_verdict(
        variable,
        expected.as_deref(),
        recovered.as_deref(),
        coordinates,
        mode,
        v,
    );
}

/// [`compare_gtid`]'s judgement. GTID sets are compared without white space (MySQL
/// breaks long sets over lines).
fn gtid_verdict(
    variable: &str,
    expected: Option<&str>,
    recovered: Option<&str>,
    coordinates: &Coordinates,
    mode: &str,
    v: &mut Verification,
) {
    let squeeze = |g: &str| g.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let Some(expected) = expected.map(squeeze).filter(|g| !g.is_empty()) else {
        return;
    };
    let recovered = recovered.map(squeeze).unwrap_or_default();
    if recovered == expected {
        return;
    }
    let shown = match recovered.is_empty() {
        true => "(none)".to_string(),
        false => recovered,
    };
    if coordinates.exact {
        v.problems.push(format!(
            "crash recovery ended at {variable} {shown} but the manifest records {expected}: the \
             copy and its recorded coordinates disagree"
        ));
    } else {
        v.warnings.push(format!(
            "crash recovery ended at {variable} {shown}; the manifest's {expected} was read after \
             the snapshot ({mode} lock), so the recovered position is the exact one"
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

    fn empty_verification() -> Verification {
        Verification {
            verdict: Verdict::Failed,
            verified_at: Utc::now(),
            server_binary: PathBuf::from("/usr/sbin/mysqld"),
            server_version: "8.0.36".into(),
            copy_ms: 0,
            recovery_ms: 0,
            check_ms: 0,
            tables_checked: 0,
            recovered_gtid_binlog_pos: None,
            recovered_gtid_executed: None,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn exact(exact: bool) -> Coordinates {
        Coordinates {
            exact,
            ..Coordinates::default()
        }
    }

    #[test]
    fn an_exact_binlog_position_must_match_the_copy_to_the_byte() {
        let mut v = empty_verification();
        binlog_verdict(
            "binlog.000002",
            1234,
            1234,
            &exact(true),
            "backup-stage",
            &mut v,
        );
        assert!(v.problems.is_empty() && v.warnings.is_empty());
        // A tampered manifest (binlog_position = 4) with exact coordinates.
        binlog_verdict(
            "binlog.000002",
            1234,
            4,
            &exact(true),
            "backup-stage",
            &mut v,
        );
        assert_eq!(v.problems.len(), 1, "{v:?}");
        assert!(v.problems[0].contains("position 4"), "{v:?}");
        binlog_verdict("binlog.000002", 1234, 9999, &exact(true), "ftwrl", &mut v);
        assert_eq!(v.problems.len(), 2, "{v:?}");
        // Read after the snapshot: either side is only worth a warning.
        let mut v = empty_verification();
        binlog_verdict("binlog.000002", 1234, 4, &exact(false), "none", &mut v);
        binlog_verdict("binlog.000002", 1234, 9999, &exact(false), "none", &mut v);
        assert!(v.problems.is_empty());
        assert_eq!(v.warnings.len(), 2);
    }

    /// `SELECT @@global.gtid_executed` on a MySQL 8.0 server recovered from the copy
    /// (recorded response; MySQL prints long sets over several lines).
    #[test]
    fn mysql_gtid_executed_is_compared_with_the_manifest() {
        let recorded = "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-77,\n\
                        4E11FA47-71CA-11E1-9E33-C80AA9429562:1-5";
        let same =
            "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-77,4E11FA47-71CA-11E1-9E33-C80AA9429562:1-5";
        let mut v = empty_verification();
        gtid_verdict(
            "gtid_executed",
            Some(same),
            Some(recorded),
            &exact(true),
            "ftwrl",
            &mut v,
        );
        assert!(v.problems.is_empty() && v.warnings.is_empty(), "{v:?}");
        let behind = "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-70";
        gtid_verdict(
            "gtid_executed",
            Some(same),
            Some(behind),
            &exact(true),
            "ftwrl",
            &mut v,
        );
        assert_eq!(v.problems.len(), 1);
        assert!(v.problems[0].contains("gtid_executed"), "{v:?}");
        gtid_verdict(
            "gtid_executed",
            Some(same),
            None,
            &exact(true),
            "ftwrl",
            &mut v,
        );
        assert!(v.problems[1].contains("(none)"), "{v:?}");
        let mut v = empty_verification();
        gtid_verdict(
            "gtid_executed",
            Some(same),
            Some(behind),
            &exact(false),
            "instance",
            &mut v,
        );
        assert!(v.problems.is_empty() && v.warnings.len() == 1, "{v:?}");
        // Nothing recorded (no GTIDs on that server): nothing to compare.
        gtid_verdict(
            "gtid_executed",
            Some(""),
            Some(behind),
            &exact(true),
            "ftwrl",
            &mut v,
        );
        assert_eq!(v.warnings.len(), 1);
    }
}
