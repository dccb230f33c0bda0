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
//! - [`ssh::SshDir`] (`ssh://[user@]host[:port]/path`): the same layout on another host. The
//!   partial is a remote directory (`mkdir` over ssh, journaled like a local one),
//!   rsync runs against `host:partial`, a stream's receiving side runs there over ssh
//!   (the destination is the stream's [`ReceivingHost`]), publishing writes the
//!   manifest, syncs and renames remotely. Nothing in the contract below assumes the
//!   partial is readable from this host except [`Partial::dir`], which such an
//!   implementation documents as a path on its host.
//! - [`restic::ResticRepo`]: a restic repository (`restic:...`), no directories at all.
//!   A backup is a restic snapshot of its files plus one of its manifest, tagged with
//!   its name; the destination reads the frozen files itself ([`Ingest`]: `restic
//!   backup` is the transfer), the partial is a claim snapshot (journaled first: a
//!   repository has no atomic create, so a name is a run's when its claim is the
//!   first there), publishing is the
//!   manifest snapshot's creation (restic writes it atomically), removing is `restic
//!   forget` ([`Destination::reclaim`] prunes). [`Destination::entries`] lists
//!   snapshots; a restore reads a backup with `restic restore` straight into the new
//!   directories ([`Destination::repository`]), a verification through
//!   [`Destination::fetch`] (`restic restore` into a staging directory). See that
//!   module for the layout.
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
pub mod restic;
pub mod ssh;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use dbsnap_backend_api::ReceivingHost;

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

/// The rule of the module documentation, for a directory `name` at `path` whose
/// manifest file, if it has one, read as `manifest`.
pub fn classify(
    name: String,
    path: PathBuf,
    manifest: Option<anyhow::Result<Manifest>>,
) -> Option<Entry> {
    if let Some(backup) = name.strip_suffix(PARTIAL_SUFFIX) {
        return Some(Entry::Partial {
            name: backup.to_string(),
            path,
        });
    }
    match manifest? {
        Ok(manifest) if manifest.name == name => Some(Entry::Backup(Box::new(Backup {
            name,
            path,
            manifest,
        }))),
        Ok(manifest) => Some(Entry::Renamed {
            name,
            path,
            manifest: Box::new(manifest),
        }),
        Err(_) => Some(Entry::Invalid { name, path }),
    }
}

/// What a partial directory's name ends with.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// What [`names_for`] makes: `YYYYMMDDTHHMMSSZ` or `...Z.N`.
pub fn looks_like_a_backup_name(name: &str) -> bool {
    let (stamp, n) = name.split_once('.').unwrap_or((name, "0"));
    stamp.len() == 16
        && stamp.ends_with('Z')
        && stamp.as_bytes()[8] == b'T'
        && n.chars().all(|c| c.is_ascii_digit())
}

/// The one rule for which partial an interrupted run left a new backup (`ours`)
/// continues, for every destination and both tree engines: of the partials `left`
/// (their backup names), the newest named as dbsnap names backups. Returns it and the
/// older ones, which the destination deletes (the newest holds at least what they
/// hold of the server's files, as of a later snapshot).
pub fn partial_to_resume(mut left: Vec<String>, ours: &str) -> (Option<String>, Vec<String>) {
    left.retain(|n| n != ours && looks_like_a_backup_name(n));
    left.sort();
    let newest = left.pop();
    (newest, left)
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
            BaseOf::Files => {
                manifest.stored.is_empty()
                    && manifest.transfer.method != crate::manifest::TransferMethod::Restic
            }
            BaseOf::Stream(method) => manifest.transfer.method.as_str() == method,
        }
    }
}

/// Deleting copies a native stream received (read-only subvolumes, ZFS datasets):
/// only their backend can. The host implements it over its backends; tests fake it.
#[async_trait]
pub trait ReceivedCopies: Send + Sync {
    /// Delete the received copy `id` made by the backend called `backend`, on `host`
    /// (this one, or the backup host of an ssh destination). Idempotent.
    async fn delete_received(
        &self,
        backend: &str,
        id: &str,
        host: &dyn ReceivingHost,
    ) -> anyhow::Result<()>;
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

    /// The ssh destination, when this is one: its transfers run over its connection
    /// and its paths are on the remote host.
    fn remote(&self) -> Option<&ssh::SshDir> {
        None
    }

    /// The restic repository, when this is one: a restore reads it with `restic
    /// restore` straight into the new directories.
    fn repository(&self) -> Option<&restic::ResticRepo> {
        None
    }

    /// Whether `path`, where a backup's received copy is read ([`Backup::path`] joined
    /// with its stored path), exists. Only reads.
    async fn holds(&self, path: &Path) -> anyhow::Result<bool> {
        Ok(path.exists())
    }

    /// That backups can be written here: it exists, is writable, lies outside the
    /// server's directories and (unless forced) takes no room from the volumes being
    /// snapshotted. Before the lock.
    async fn check(&self, server: &ServerFiles<'_>) -> anyhow::Result<()>;

    /// Free space for new backups, in bytes; `None` when this destination cannot
    /// tell (a remote restic repository).
    async fn free_bytes(&self) -> anyhow::Result<Option<u64>>;

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

    /// Fill the freshly claimed `partial` with the newest partial an interrupted run
    /// left here (chosen by [`partial_to_resume`], so that the transfer continues it),
    /// and say which run it was. Only destinations that keep a cut-off partial have
    /// one: ssh keeps what a failed or killed run sent; a local directory keeps what a
    /// killed run left (the start of the next backup keeps it, `dbsnap cleanup` and a
    /// failing run remove it).
    async fn resume_partial(
        &self,
        _partial: &Partial,
        _journal: &mut Journal,
    ) -> anyhow::Result<Option<String>> {
        Ok(None)
    }

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

    /// A destination that reads the frozen files itself (a restic repository), instead
    /// of being written by rsync or a native stream. `None` for directories.
    fn ingest(&self) -> Option<&dyn Ingest> {
        None
    }

    /// `backup` as a local backup directory (manifest and `files/`): the backup itself
    /// where it is one; otherwise a copy fetched into `staging` (journaled as a partial;
    /// give it back with [`Fetched::release`]).
    async fn fetch(
        &self,
        backup: &Backup,
        _staging: &Path,
        _journal: &mut Journal,
    ) -> anyhow::Result<Fetched> {
        Ok(Fetched {
            dir: backup.path.clone(),
            staged: false,
        })
    }

    /// Store a verification's verdict (`verified`, read back from the fetched copy)
    /// with `backup`. A directory's manifest already holds it.
    async fn record_verification(
        &self,
        _backup: &Backup,
        _verified: &Manifest,
        _journal: &mut Journal,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// Check the storage's own integrity (`restic check`) before a verification, for
    /// run `run`. Directories have none of their own.
    async fn check_storage(&self, _journal: &mut Journal, _run: &str) -> anyhow::Result<()> {
        Ok(())
    }

    /// After removals: free the space removed backups held (`restic prune`), for run
    /// `run`. Removing a directory frees it at once.
    async fn reclaim(&self, _journal: &mut Journal, _run: &str) -> anyhow::Result<()> {
        Ok(())
    }

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

/// A destination that stores the frozen files by reading them itself.
#[async_trait]
pub trait Ingest: Send + Sync {
    /// Store `items` (each frozen directory `from` with the original path `to` it
    /// shows, and what to leave out) as the files of `partial`, a backup of `datadir`;
    /// what restic runs is journaled in `journal`. Reports bytes read to `progress`.
    async fn ingest(
        &self,
        partial: &Partial,
        datadir: &Path,
        items: &[crate::transfer::CopyItem],
        journal: &mut Journal,
        progress: &(dyn Fn(u64) + Sync),
    ) -> anyhow::Result<crate::transfer::TransferStats>;
}

/// Where backups fetched from a repository are staged: `state_dir/staging/NAME`.
pub fn staging_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("staging")
}

/// A backup readable as a local directory, from [`Destination::fetch`].
#[derive(Debug)]
pub struct Fetched {
    pub dir: PathBuf,
    /// A copy made for this run (removed by [`Fetched::release`]), not the backup.
    pub staged: bool,
}

impl Fetched {
    /// Remove a staged copy and forget it.
    pub fn release(self, journal: &mut Journal) -> anyhow::Result<()> {
        if self.staged {
            if self.dir.exists() {
                std::fs::remove_dir_all(&self.dir).map_err(|e| {
                    anyhow::anyhow!("removing the staged copy {}: {e}", self.dir.display())
                })?;
            }
            journal.forget(&crate::journal::Resource::Fetched { dir: self.dir })?;
        }
        Ok(())
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

/// The backup named on the command line when it is one in the destination's
/// repository (given by name), with that repository; `None` when it can be read where
/// it is.
pub async fn resolve_in_repository<'a>(
    dest: Option<&'a dyn Destination>,
    given: &str,
) -> anyhow::Result<Option<(&'a restic::ResticRepo, Backup)>> {
    let Some(dest) = dest.and_then(|d| d.repository()) else {
        return Ok(None);
    };
    if local::backup_dir_at(Path::new(given))?.is_some() {
        return Ok(None);
    }
    match dest.resolve(given).await? {
        Some(backup) => Ok(Some((dest, backup))),
        None => Err(crate::error::fail(
            crate::error::Class::Config,
            format!(
                "{given} is not a backup in {} nor a backup directory: give a name from `dbsnap list`",
                dest.location().display()
            ),
        )),
    }
}

/// The backup named on the command line when it is one on an ssh destination (a name
/// from `dbsnap list`, or its path there), with that destination.
pub async fn resolve_remote<'a>(
    dest: Option<&'a dyn Destination>,
    given: &str,
) -> anyhow::Result<Option<(&'a ssh::SshDir, Backup)>> {
    let Some(remote) = dest.and_then(|d| d.remote()) else {
        return Ok(None);
    };
    let name = match Path::new(given).parent() {
        Some(parent) if parent == remote.target().path => Path::new(given)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned()),
        _ if !given.contains('/') => Some(given.to_string()),
        _ => None,
    };
    let Some(name) = name else {
        return Ok(None);
    };
    match remote.resolve(&name).await? {
        Some(backup) => Ok(Some((remote, backup))),
        None => Err(crate::error::fail(
            crate::error::Class::Config,
            format!(
                "{given} is not a backup at {}: give a name from `dbsnap list`",
                remote.location().display()
            ),
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_dbsnap_makes_are_resumed() {
        assert!(looks_like_a_backup_name("20261125T214500Z"));
        assert!(looks_like_a_backup_name("20261125T214500Z.3"));
        assert!(!looks_like_a_backup_name("mine"));
        assert!(!looks_like_a_backup_name("20261125T214500Z.x"));
    }

    #[test]
    fn the_newest_partial_named_like_a_backup_is_resumed_and_older_ones_go() {
        let left = [
            "20261125T000000Z",
            "mine",
            "20261126T000000Z",
            "20261127T000000Z",
        ]
        .map(String::from)
        .to_vec();
        let (newest, older) = partial_to_resume(left, "20261127T000000Z");
        assert_eq!(newest.as_deref(), Some("20261126T000000Z"));
        assert_eq!(older, vec!["20261125T000000Z".to_string()]);
        assert_eq!(partial_to_resume(vec![], "x"), (None, vec![]));
    }
}
