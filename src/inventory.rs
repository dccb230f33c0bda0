//! What a configuration has on disk right now, for `dbsnap status` and the metrics:
//! the complete backups at the destination, the kept snapshots, what a crashed run left
//! in the journal, and the destination's free space. Reads only; takes no lock.

use std::path::Path;

use crate::config::Config;
use crate::journal::Entry;
use crate::kept::KeptSnapshot;
use crate::manifest::Manifest;

pub struct Inventory {
    /// dbsnap's complete backups at the destination, oldest first (what `prune` counts).
    pub backups: Vec<Manifest>,
    /// The kept snapshots, or why their records cannot be read (each unreadable record
    /// still stands for a snapshot on disk).
    pub kept: Result<Vec<KeptSnapshot>, String>,
    /// Journal entries no active run owns: resources of a crashed or interrupted run.
    pub leftovers: Vec<Entry>,
    /// Free and total bytes of the destination's filesystem.
    pub dest_space: Option<DiskSpace>,
}

#[derive(Debug, Clone, Copy)]
pub struct DiskSpace {
    pub free: u64,
    pub size: u64,
}

impl Inventory {
    pub async fn read(config: &Config) -> anyhow::Result<Inventory> {
        let dest = config.backup.as_ref().map(|b| b.dest.as_path());
        // An ssh destination is listed over ssh, a restic repository through restic; a
        // missing local one holds nothing.
        let listed = config.backup.as_ref().filter(|b| {
            crate::ssh::is_ssh(&b.dest) || b.restic_repository().is_some() || b.dest.exists()
        });
        let backups = match listed {
            Some(backup) => crate::destination::open(backup, &config.state_dir)?
                .backups()
                .await?
                .into_iter()
                .map(|b| b.manifest)
                .collect(),
            None => Vec::new(),
        };
        let kept = KeptSnapshot::list(&config.state_dir).map_err(|e| format!("{e:#}"));
        let leftovers = if crate::journal::run_active(&config.state_dir) {
            Vec::new()
        } else {
            crate::journal::read_entries(&config.state_dir)?
        };
        Ok(Inventory {
            backups,
            kept,
            leftovers,
            dest_space: dest.and_then(disk_space),
        })
    }

    /// Nothing at all: a fresh destination and state directory (for tests).
    #[cfg(test)]
    pub fn empty() -> Inventory {
        Inventory {
            backups: Vec::new(),
            kept: Ok(Vec::new()),
            leftovers: Vec::new(),
            dest_space: None,
        }
    }

    /// The newest complete backup.
    pub fn newest(&self) -> Option<&Manifest> {
        self.backups.last()
    }
}

fn disk_space(dir: &Path) -> Option<DiskSpace> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let frag = s.fragment_size() as u64;
    Some(DiskSpace {
        free: s.blocks_available() as u64 * frag,
        size: s.blocks() as u64 * frag,
    })
}
