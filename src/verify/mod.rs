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

mod checks;
mod server;

use checks::*;
pub use server::recover_restored;
use server::*;

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
    let mut v = not_yet_passed(binary, version);

    // The scratch copy: reflinks where the filesystem can, so it is cheap.
    let started = Instant::now();
    make_scratch_copy(manifest, backup_dir, scratch).await?;
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
    let user = prepare_run_dir(run_dir)?;
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

/// A verification that has found nothing yet: failed until every check passed.
fn not_yet_passed(binary: &Path, version: &str) -> Verification {
    Verification {
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
    }
}

/// Copy the backup beside itself, laid out like an rsync backup (`files/<absolute
/// path>`) whichever way it was made: each top-level server directory from wherever
/// this backup holds it.
async fn make_scratch_copy(
    manifest: &Manifest,
    backup_dir: &Path,
    scratch: &Path,
) -> anyhow::Result<()> {
    check_scratch_space(scratch, stored_bytes(backup_dir))?;
    std::fs::create_dir(scratch).with_context(|| format!("creating {}", scratch.display()))?;
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
    Ok(())
}

/// The throwaway server's run directory (socket, tmpdir), closed to others; returns the
/// user it runs as.
fn prepare_run_dir(run_dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(run_dir.join("tmp"))?;
    for dir in [run_dir.to_path_buf(), run_dir.join("tmp")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    }
    // The server runs as dbsnap's own user, not the files' owner: backup directories
    // are often closed to other users (0700), and the scratch copy is deleted anyway.
    let uid = nix::unistd::geteuid();
    Ok(nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name))
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
mod tests;
