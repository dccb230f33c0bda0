//! The throwaway server of a verification (and of a restore's one-off recovery): which
//! binary, how it is started (isolated, on its own socket), waited for and stopped.

use super::*;

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
    let mut v = not_yet_passed(&binary, "");
    shutdown(conn, &mut child, &mut v).await;
    if let Some(w) = v.warnings.first() {
        anyhow::bail!("crash recovery of the restored copy: {w}");
    }
    Ok(started.elapsed().as_millis() as u64)
}

/// The throwaway server's command line: everything points into the scratch copy.
pub(crate) fn server_args(
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

pub(crate) async fn wait_ready(child: &mut Child, socket: &Path) -> Result<Conn, String> {
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

pub(crate) async fn shutdown(mut conn: Conn, child: &mut Child, v: &mut Verification) {
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

/// The `[ERROR]` lines of the throwaway server's log (at most a few).
pub(crate) fn log_lines(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<String> = text
        .lines()
        .filter(|l| l.contains("[ERROR]"))
        .map(|l| format!("server log: {}", l.trim()))
        .collect();
    errors[errors.len().saturating_sub(MAX_LOG_LINES)..].to_vec()
}

pub(crate) fn log_excerpt(log: &Path) -> String {
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
pub(crate) async fn find_server(backup: &ServerVersion) -> anyhow::Result<(PathBuf, String)> {
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
pub(crate) fn parse_version(output: &str) -> Option<String> {
    let mut words = output.split_whitespace();
    words.find(|w| *w == "Ver")?;
    words.next().map(str::to_string)
}
