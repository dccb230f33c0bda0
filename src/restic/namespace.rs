//! How restic sees the frozen files at their original paths.
//!
//! restic records the paths it is given. For the repository's snapshots to hold
//! `/var/lib/mysql/...` (what `restore` and plain `restic restore` users expect) and
//! for restic to pick each datadir's previous snapshot as its parent, restic runs in a
//! private mount namespace of its own: between fork and exec the child unshares its
//! mounts, makes them private (nothing propagates back to the host), and bind-mounts
//! each frozen directory read-only over its original path, parents first. Only that
//! one process sees the binds; the live server, and everything else, keep seeing the
//! live files, and the namespace disappears with restic, whatever kills it — nothing
//! to journal or unmount. Needs CAP_SYS_ADMIN, which taking snapshots needs anyway.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::Context;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use tokio::process::Command;

/// A frozen directory shown at its original path.
#[derive(Debug, Clone, PartialEq)]
pub struct Bind {
    pub frozen: PathBuf,
    pub original: PathBuf,
    /// Saved as a path of its own (not below another bind).
    pub top_level: bool,
}

/// Arrange for `command`'s process to see `binds` (in order) before it execs.
pub fn bind_before_exec(command: &mut Command, binds: &[Bind]) -> anyhow::Result<()> {
    let c = |p: &PathBuf| {
        CString::new(p.as_os_str().as_bytes())
            .with_context(|| format!("{} has a NUL byte", p.display()))
    };
    let pairs: Vec<(CString, CString)> = binds
        .iter()
        .map(|b| Ok((c(&b.frozen)?, c(&b.original)?)))
        .collect::<anyhow::Result<_>>()?;
    let none: Option<&CStr> = None;
    // SAFETY: between fork and exec only syscalls run (unshare, mount); the strings
    // were allocated before the fork. Any failure aborts the spawn, so restic never
    // runs with the live files where the frozen ones should be.
    unsafe {
        command.pre_exec(move || {
            unshare(CloneFlags::CLONE_NEWNS)?;
            mount(
                none,
                c"/",
                none,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                none,
            )?;
            for (frozen, original) in &pairs {
                mount(
                    Some(frozen.as_c_str()),
                    original.as_c_str(),
                    none,
                    MsFlags::MS_BIND,
                    none,
                )?;
                mount(
                    none,
                    original.as_c_str(),
                    none,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    none,
                )?;
            }
            Ok(())
        });
    }
    Ok(())
}
