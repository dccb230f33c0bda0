//! Is a database server running on a directory? `mysqld`/`mariadbd` change their
//! working directory to the datadir, so a process whose cwd lies in the directory (or
//! the directory in its) is one, and so is one whose `--datadir` does; its command
//! name tells what it is. Directories are compared by device and inode too (through
//! `/proc/PID/cwd` and `/proc/PID/root`), so a bind mount of a live datadir, or a
//! server in another mount namespace (a container), is seen as well.

use std::path::{Path, PathBuf};

use crate::overlap::FileId;

/// A process that works in a directory of interest.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    pub name: String,
    pub cwd: PathBuf,
}

/// Database servers (`mariadbd`, `mysqld`) whose working directory or `--datadir` is
/// `dir` or lies below or above it.
pub fn servers_on(dir: &Path) -> Vec<Process> {
    let dir = crate::overlap::canonical(dir);
    // A target that does not exist yet is inside whatever its nearest existing parent is.
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let dir_lineage = identities(existing);
    let dir_id = FileId::of(&dir);
    let root = FileId::of(Path::new("/"));
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let name = name.trim().to_string();
            if !matches!(name.as_str(), "mariadbd" | "mysqld") {
                return None;
            }
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
            let by_path = cwd.starts_with(&dir) || (dir.starts_with(&cwd) && cwd != Path::new("/"));
            let by_identity = server_dirs(pid).iter().any(|server_dir| {
                let server = identities(server_dir);
                let Some(id) = server.first().copied() else {
                    return false;
                };
                // A server working in `/` is not on every directory.
                Some(id) != root
                    && (dir_lineage.contains(&id) || dir_id.is_some_and(|d| server.contains(&d)))
            });
            (by_path || by_identity).then_some(Process { pid, name, cwd })
        })
        .collect()
}

/// The directories a server process works on, as paths that reach them from here
/// whatever its mount namespace: its working directory, and its `--datadir`.
fn server_dirs(pid: u32) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(format!("/proc/{pid}/cwd"))];
    if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
        for arg in cmdline.split(|b| *b == 0) {
            let arg = String::from_utf8_lossy(arg);
            if let Some(datadir) = arg.strip_prefix("--datadir=") {
                let relative = datadir.trim_start_matches('/');
                dirs.push(PathBuf::from(format!("/proc/{pid}/root")).join(relative));
            }
        }
    }
    dirs
}

/// The identities of `dir` and of its parents up to `/`, nearest first, walking `..`
/// (which the kernel resolves from the directory itself, also through `/proc/PID/cwd`).
fn identities(dir: &Path) -> Vec<FileId> {
    let mut ids = Vec::new();
    let mut at = dir.to_path_buf();
    while let Some(id) = FileId::of(&at) {
        if ids.contains(&id) || ids.len() > 4096 {
            break;
        }
        ids.push(id);
        at.push("..");
    }
    ids
}

/// The refusal message for servers found by [`servers_on`].
pub fn describe(found: &[Process]) -> String {
    found
        .iter()
        .map(|p| format!("{} (pid {}) in {}", p.name, p.pid, p.cwd.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// dbsnap's own throwaway verification servers on the scratch copy `scratch`: a
/// `mariadbd`/`mysqld` whose `--datadir` lies inside `scratch` and whose `--socket`
/// is in `run_dir`. Never a server that merely shares one of them (a journal entry
/// naming a live datadir must not get that server killed).
pub fn throwaway_servers(scratch: &Path, run_dir: &Path) -> Vec<u32> {
    let datadir = format!("--datadir={}/", scratch.display());
    let socket = format!("--socket={}/", run_dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if !matches!(name.trim(), "mariadbd" | "mysqld") {
                return false;
            }
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                let has = |prefix: &str| args.iter().any(|a| a.starts_with(prefix.as_bytes()));
                has(&datadir) && has(&socket)
            })
        })
        .collect()
}

/// Processes a hook of one of `runs` started and left behind when its dbsnap died: a
/// hook's environment names its run (`DBSNAP_NAME`) and phase (`DBSNAP_PHASE`), which
/// its children inherit; the hook itself dies with dbsnap, its children need not. Only
/// orphans count: a process with a live `dbsnap` among its ancestors belongs to a run
/// that is still going (another state_dir may use the same backup name).
pub fn orphaned_hook_processes(runs: &[String]) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me && is_running(*pid))
        .filter(|pid| {
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
            let in_run = runs.iter().any(|run| {
                let wanted = format!("DBSNAP_NAME={run}");
                vars.contains(&wanted.as_bytes())
            });
            in_run && vars.iter().any(|v| v.starts_with(b"DBSNAP_PHASE="))
        })
        .filter(|pid| !has_dbsnap_ancestor(*pid))
        .collect()
}

fn has_dbsnap_ancestor(pid: u32) -> bool {
    let mut at = pid;
    for _ in 0..64 {
        let Some(parent) = parent_of(at).filter(|p| *p > 1) else {
            return false;
        };
        let name = std::fs::read_to_string(format!("/proc/{parent}/comm")).unwrap_or_default();
        if name.trim() == "dbsnap" {
            return true;
        }
        at = parent;
    }
    false
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` is alive (a zombie, dead and waiting to be reaped, is not).
pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}
