//! Where backups go: one interface, several implementations.
//!
//! A *destination* holds backups. What a backup is has one rule, kept here: a complete
//! backup is an entry whose manifest names it (for a directory: `NAME/manifest.toml`
//! whose `name` is `NAME`). A partial one (`NAME.partial`, being written, or being
//! deleted) is never a backup: it is never listed as one, never used as a base, never
//! restored. Nothing outside this module walks a destination; every command and every
//! transfer asks a [`Destination`].
//!
//! Implementations, one file each, and one place ([`open`]) that maps `[backup] dest`
//! to one of them:
//!
//! - [`local::LocalDir`]: a directory on this host (`/srv/backups/db1`).
//! - an ssh destination (`ssh://host/path`, later): the same layout on another host. The
//!   partial is a remote directory (`mkdir` over ssh, journaled like a local one),
//!   rsync and stream receives run against `host:partial`, publishing writes the
//!   manifest, syncs and renames remotely. Nothing in the contract below assumes the
//!   partial is readable from this host except [`Partial::dir`], which such an
//!   implementation documents as a path on its host.
//! - a restic repository (`restic:...`, later): no directories at all. A backup is a
//!   restic snapshot tagged with its name whose manifest is stored with it; the partial
//!   is a local staging area (or a stream into `restic backup --stdin`), publishing is
//!   the snapshot's creation (restic writes it atomically), removing is `restic forget`
//!   plus prune. [`Destination::entries`] then lists snapshots, not directories.
//!
//! The contract, for every implementation:
//!
//! - `check`, `free_bytes`, `entries`, `backups`, `resolve` and `newest_base` only
//!   read: they run before the database lock (and in `check` and
//!   `list`), so they may be slow but must never change anything.
//! - `create_partial` claims a name and records the partial in the journal *before*
//!   creating it, so that `dbsnap cleanup` finds what an interrupted run left; a name
//!   another run holds is skipped (and forgotten again), never taken over.
//! - `publish` makes a partial a backup atomically: the manifest is written last
//!   (durably: fsync), then the partial becomes the backup in one step (a rename). A
//!   crash at any point leaves either a partial (cleaned up) or a complete backup, never
//!   a backup without its data. It forgets the partial's journal entries (the partial
//!   and the copies received into it) only once the backup is published.
//! - `remove` first makes the backup a partial again (journaled), then deletes it with
//!   what it owns: received copies go through their backend ([`ReceivedCopies`]),
//!   since plain file removal cannot delete them. An interrupted removal is finished by
//!   `dbsnap cleanup`. Removing what is already gone is not an error (idempotent).

pub mod choose;
#[cfg(test)]
pub mod conformance;
pub mod local;
#[cfg(test)]
pub mod memory;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::db::DbPath;
use crate::journal::Journal;
use crate::manifest::Manifest;

pub use choose::{open, open_configured};

/// What a destination must stay clear of: the server's directories and the volumes
/// that hold them (a destination on one takes its room from the live server while the
/// snapshot pins the blocks the copy duplicates).
pub struct ServerFiles<'a> {
    pub dirs: &'a [DbPath],
    pub volumes: &'a [dbsnap_backend_api::Volume],
    /// `--force`: accept a destination on a snapshotted volume (with a warning).
    pub force: bool,
}

/// A complete backup at a destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Backup {
    pub name: String,
    /// Where the backup can be read (a directory, for a local destination).
    pub path: PathBuf,
    pub manifest: Manifest,
}

/// What a destination holds, as `dbsnap list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Backup(Box<Backup>),
    /// Being written, or being removed: not a backup.
    Partial {
        name: String,
        path: PathBuf,
    },
    /// A manifest naming another backup (a copy or a renamed backup): shown as what its
    /// manifest says, but not a backup here: never a base, never removed.
    Renamed {
        name: String,
        path: PathBuf,
        manifest: Box<Manifest>,
    },
    /// A manifest that cannot be read: not a backup, never touched.
    Invalid {
        name: String,
        path: PathBuf,
    },
}

impl Entry {
    pub fn name(&self) -> &str {
        match self {
            Entry::Backup(b) => &b.name,
            Entry::Partial { name, .. }
            | Entry::Renamed { name, .. }
            | Entry::Invalid { name, .. } => name,
        }
    }
}

/// A backup being written: created by [`Destination::create_partial`], published by
/// [`Destination::publish`].
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    /// The backup's name once published.
    pub name: String,
    /// Where transfers write it.
    pub dir: PathBuf,
}

impl Partial {
    /// Journal the partial `dir` of the backup `name`, then `create` it; when it
    /// exists already (another run's), forget it again and say so with `None`.
    pub fn claim(
        name: &str,
        dir: PathBuf,
        journal: &mut Journal,
        create: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> anyhow::Result<Option<Partial>> {
        let resource = crate::journal::Resource::Partial { dir: dir.clone() };
        journal.record(name, resource.clone())?;
        match create(&dir) {
            Ok(()) => Ok(Some(Partial {
                name: name.to_string(),
                dir,
            })),
            // Not ours: forget it, so that nothing of this run ever removes it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                journal.forget(&resource)?;
                Ok(None)
            }
            Err(e) => {
                journal.forget(&resource)?;
                Err(anyhow::Error::new(e).context(format!("creating {}", dir.display())))
            }
        }
    }
}

/// The first name for a backup started `at` whose partial `claim` creates (`None`:
/// taken, try the next).
pub fn claim_first(
    at: DateTime<Utc>,
    journal: &mut Journal,
    mut claim: impl FnMut(&str, &mut Journal) -> anyhow::Result<Option<Partial>>,
) -> anyhow::Result<Partial> {
    for name in names_for(at) {
        if let Some(partial) = claim(&name, journal)? {
            return Ok(partial);
        }
    }
    unreachable!("names_for never ends")
}

/// The names a backup started `at` may take, in order: `20261125T214500Z`, then
/// `20261125T214500Z.1`, `.2` ...
pub fn names_for(at: DateTime<Utc>) -> impl Iterator<Item = String> {
    let base = at.format("%Y%m%dT%H%M%SZ").to_string();
    (0..).map(move |n| match n {
        0 => base.clone(),
        n => format!("{base}.{n}"),
    })
}

/// Which earlier backups a new one can be built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseOf<'a> {
    /// A plain file tree (`files/`), for rsync: any backup without received copies.
    Files,
    /// A copy received from this stream method (`btrfs-send`).
    Stream(&'a str),
}

impl BaseOf<'_> {
    pub fn fits(self, manifest: &Manifest) -> bool {
        match self {
            BaseOf::Files => manifest.stored.is_empty(),
            BaseOf::Stream(method) => manifest.transfer.method.as_str() == method,
        }
    }
}

/// Deleting copies a native stream received (read-only subvolumes, ZFS datasets):
/// only their backend can. The host implements it over its backends; tests fake it.
#[async_trait]
pub trait ReceivedCopies: Send + Sync {
    /// Delete the received copy `id` made by the backend called `backend`. Idempotent.
    async fn delete_received(&self, backend: &str, id: &str) -> anyhow::Result<()>;
}

/// Where backups go. See the module documentation for the contract.
#[async_trait]
pub trait Destination: Send + Sync {
    /// The destination as configured (`[backup] dest`), for messages and records.
    fn location(&self) -> &Path;

    /// The directory backups are written to, when it is on this host and can be
    /// written with plain file calls (dbsnap's own copy engine); `None` elsewhere.
    fn local_dir(&self) -> Option<&Path> {
        None
    }

    /// That backups can be written here: it exists, is writable, lies outside the
    /// server's directories and (unless forced) takes no room from the volumes being
    /// snapshotted. Before the lock.
    async fn check(&self, server: &ServerFiles<'_>) -> anyhow::Result<()>;

    /// Free space for new backups, in bytes.
    async fn free_bytes(&self) -> anyhow::Result<u64>;

    /// Everything here that is or looks like a backup, by name (oldest first: names
    /// sort by time). Anything else is not dbsnap's and is left out.
    async fn entries(&self) -> anyhow::Result<Vec<Entry>>;

    /// Claim a name for a backup started `at` (`20261125T214500Z`, with `.1`, `.2` ...
    /// when taken) by creating its partial, journaled first. Creating the partial is
    /// what claims the name: two runs (of different state directories) writing here in
    /// the same second get different names, and neither ever releases the other's.
    async fn create_partial(
        &self,
        at: DateTime<Utc>,
        journal: &mut Journal,
    ) -> anyhow::Result<Partial>;

    /// Publish `partial` with `manifest` (its `path` is set to where the backup is
    /// now), atomically, and forget the partial's journal entries.
    async fn publish(
        &self,
        partial: Partial,
        manifest: Manifest,
        journal: &mut Journal,
    ) -> anyhow::Result<Backup>;

    /// Remove a backup with what it owns; journaled, idempotent.
    async fn remove(
        &self,
        backup: &Backup,
        journal: &mut Journal,
        received: &dyn ReceivedCopies,
    ) -> anyhow::Result<()>;

    /// The complete backups, oldest first.
    async fn backups(&self) -> anyhow::Result<Vec<Backup>> {
        Ok(self
            .entries()
            .await?
            .into_iter()
            .filter_map(|e| match e {
                Entry::Backup(b) => Some(*b),
                Entry::Partial { .. } | Entry::Renamed { .. } | Entry::Invalid { .. } => None,
            })
            .collect())
    }

    /// The complete backup called `name`, if there is one.
    async fn resolve(&self, name: &str) -> anyhow::Result<Option<Backup>> {
        Ok(self.backups().await?.into_iter().find(|b| b.name == name))
    }

    /// The newest complete backup of `datadir` a new backup can be built from.
    async fn newest_base(&self, datadir: &Path, of: BaseOf<'_>) -> anyhow::Result<Option<Backup>> {
        Ok(self
            .backups()
            .await?
            .into_iter()
            .filter(|b| b.manifest.server.datadir == datadir && of.fits(&b.manifest))
            .max_by(|a, b| a.name.cmp(&b.name)))
    }
}

/// The backup named on the command line: a backup directory anywhere, or the name of
/// a backup at the destination (when one is configured).
pub async fn resolve_backup(
    dest: Option<&dyn Destination>,
    given: &str,
) -> anyhow::Result<PathBuf> {
    if let Some(dir) = local::backup_dir_at(Path::new(given))? {
        return Ok(dir);
    }
    if let Some(dest) = dest.filter(|_| !given.contains('/')) {
        if let Some(backup) = dest.resolve(given).await? {
            crate::manifest::Manifest::open_backup(&backup.path)?;
            return Ok(backup.path);
        }
    }
    Err(crate::error::fail(
        crate::error::Class::Config,
        format!(
            "{given} is not a backup: no {} there (nor at the [backup] dest). Give a backup \
             directory or a name from `dbsnap list`",
            crate::manifest::MANIFEST_FILE
        ),
    ))
}

/// Apparent size of all regular files under `roots` (metadata only). With
/// `one_filesystem` the walk does not cross into other mounts (or btrfs subvolumes).
pub fn tree_bytes<'a>(roots: impl IntoIterator<Item = &'a Path>, one_filesystem: bool) -> u64 {
    roots
        .into_iter()
        .flat_map(|r| walkdir::WalkDir::new(r).same_file_system(one_filesystem))
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}
