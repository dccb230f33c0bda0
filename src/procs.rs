//! Is a database server running on a directory? `mysqld`/`mariadbd` change their
//! working directory to the datadir, so a process whose cwd lies in the directory (or
//! the directory in its) is one; its command name tells what it is.

use std::path::{Path, PathBuf};

/// A process that works in a directory of interest.
#[derive(Debug, Clone)]
pub struct Process {
    pub pid: u32,
    pub name: String,
    pub cwd: PathBuf,
}

/// Database servers (`mariadbd`, `mysqld`) whose working directory is `dir` or lies
/// below or above it.
pub fn servers_on(dir: &Path) -> Vec<Process> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
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
            (cwd.starts_with(&dir) || (dir.starts_with(&cwd) && cwd != Path::new("/")))
                .then_some(Process { pid, name, cwd })
        })
        .collect()
}

/// The refusal message for servers found by [`servers_on`].
pub fn describe(found: &[Process]) -> String {
    found
        .iter()
        .map(|p| format!("{} (pid {}) in {}", p.name, p.pid, p.cwd.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Processes with an argument that starts with `prefix` (e.g. `--datadir=/x/`).
pub fn with_argument_prefix(prefix: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|arg| arg.starts_with(prefix.as_bytes()))
            })
        })
        .collect()
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
