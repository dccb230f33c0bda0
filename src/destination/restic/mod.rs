//! A restic repository as a destination (`dest = "restic:<repository>"`).
//!
//! A backup is three restic snapshots, all tagged `dbsnap`, `dbsnap-name=NAME` and
//! `dbsnap-run=TOKEN` (a token of the run that wrote it), written by the configured
//! host:
//!
//! - its claim (tag `dbsnap-claim`): `/claim`, a few bytes saved before anything else,
//!   which takes the name (see [`ResticRepo::create_partial`]).
//! - its files (tag `dbsnap-data`): the server's directories at their original paths,
//!   saved by `restic backup` (see `crate::restic` for how restic sees the frozen
//!   files there). This is the transfer ([`Ingest`]).
//! - its manifest (tag `dbsnap-manifest`): `/manifest.toml`, saved last. Its transfer
//!   record names the files' snapshot and carries restic's summary, which is only
//!   known once that snapshot exists — so the manifest cannot be inside it.
//!
//! The files and the manifest are also tagged `dbsnap-datadir=DATADIR` (restic tags
//! cannot hold commas: `%` and `,` in the datadir are percent-encoded). Writing the
//! manifest snapshot publishes the backup (restic writes a snapshot atomically). A
//! claim, and files, without a manifest are a partial backup: never listed as a
//! backup, never a parent, and forgotten by `dbsnap cleanup` through the run's
//! [`Resource::ResticRun`] (which holds the run's token: only that run's snapshots).
//! Removing forgets the manifest first (from then on it is no backup), then the rest.
//! A verification's verdict is a new manifest snapshot that replaces the old one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

mod cache;
mod locks;

use cache::ManifestCache;

use super::{
    Backup, BaseOf, Destination, Entry, Fetched, Ingest, Partial, ReceivedCopies, ServerFiles,
};
use crate::config::{BackupConfig, RESTIC_SCHEME};
use crate::error::{fail, Class};
use crate::journal::{Journal, Resource};
use crate::manifest::{Manifest, TransferMethod, MANIFEST_FILE};
use crate::restic::{BackupRequest, Bind, Restic, Snapshot};
use crate::transfer::{CopyItem, TransferStats};

const TAG: &str = "dbsnap";
const CLAIM_TAG: &str = "dbsnap-claim";
const DATA_TAG: &str = "dbsnap-data";
const MANIFEST_TAG: &str = "dbsnap-manifest";
const NAME_TAG: &str = "dbsnap-name=";
const RUN_TAG: &str = "dbsnap-run=";
const DATADIR_TAG: &str = "dbsnap-datadir=";

/// The file a claim snapshot holds.
const CLAIM_FILE: &str = "claim";

/// One backup name's snapshots of this host, each kind oldest first.
#[derive(Debug, Default)]
struct Named {
    claims: Vec<Snapshot>,
    files: Vec<Snapshot>,
    manifests: Vec<Snapshot>,
}

impl Named {
    fn all(&self) -> impl Iterator<Item = &Snapshot> {
        self.manifests.iter().chain(&self.files).chain(&self.claims)
    }
}

fn has_tag(snapshot: &Snapshot, tag: &str) -> bool {
    snapshot.tags.iter().any(|t| t == tag)
}

fn run_tag(token: &str) -> String {
    format!("{RUN_TAG}{token}")
}

/// A new run's token: random, so that no other run (of any state directory) has it.
fn new_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

pub struct ResticRepo {
    restic: Restic,
    location: PathBuf,
    host: String,
    tags: Vec<String>,
    /// `restic check --read-data-subset` for verification.
    check_subset: Option<String>,
    /// `[backup] bwlimit`, as restic's `--limit-upload` (KiB/s).
    limit_upload_kib: Option<u64>,
    manifests: ManifestCache,
}

/// This machine's name, as restic records it in its locks.
fn this_host() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The id of the snapshot holding a listed backup's files.
fn files_snapshot(backup: &Backup) -> &str {
    backup
        .manifest
        .transfer
        .repository_snapshot
        .as_deref()
        .expect("listed backups name their files' snapshot")
}

fn datadir_tag(datadir: &Path) -> String {
    let text = datadir.to_string_lossy();
    format!(
        "{DATADIR_TAG}{}",
        text.replace('%', "%25").replace(',', "%2C")
    )
}

impl ResticRepo {
    pub fn open(backup: &BackupConfig, state_dir: &Path) -> anyhow::Result<ResticRepo> {
        let repository = backup
            .restic_repository()
            .expect("open is called for restic: destinations");
        let config = backup.restic.as_ref().ok_or_else(|| {
            fail(
                Class::Config,
                "backup.dest names a restic repository but there is no [backup.restic] section",
            )
        })?;
        let restic = Restic::open(&repository, config, state_dir)?;
        Ok(ResticRepo {
            location: PathBuf::from(format!("{RESTIC_SCHEME}{}", restic.shown())),
            restic,
            host: config.host.clone().unwrap_or_else(this_host),
            tags: config.tags.clone(),
            check_subset: config.check_read_data_subset.clone(),
            limit_upload_kib: backup.bwlimit.map(|b| (b.as_u64() / 1024).max(1)),
            manifests: ManifestCache::new(state_dir),
        })
    }

    /// A local repository's directory (`None` for any other store).
    pub fn repository_dir(&self) -> Option<PathBuf> {
        self.restic.local_dir()
    }

    /// `dbsnap init-repo`: restic recent enough, then a new repository (refused where
    /// one exists). Returns the repository's id.
    pub async fn init(&self) -> anyhow::Result<String> {
        self.restic.check_version().await?;
        self.restic.init().await
    }

    /// Restore the directory `original` of `backup`'s files into `target` (which must
    /// not exist yet); returns where it is inside `target` (`target/<original>`).
    pub async fn restore_files(
        &self,
        backup: &Backup,
        original: &Path,
        target: &Path,
    ) -> anyhow::Result<PathBuf> {
        let id = files_snapshot(backup);
        tracing::info!(
            "restoring {} of backup {} (restic snapshot {id}) into {}",
            original.display(),
            backup.name,
            target.display()
        );
        self.restic.restore(id, target, Some(original)).await?;
        let restored = target.join(original.strip_prefix("/").unwrap_or(original));
        if !restored.is_dir() {
            return Err(fail(
                Class::Destination,
                format!(
                    "restic snapshot {id} of backup {} holds no {}: the backup is damaged \
                     (`dbsnap verify {}` says more)",
                    backup.name,
                    original.display(),
                    backup.name
                ),
            ));
        }
        Ok(restored)
    }

    /// The manifest of manifest snapshot `snapshot` (from the cache, or `restic dump`).
    async fn manifest_of(&self, name: &str, snapshot: &Snapshot) -> Option<Manifest> {
        let text = match self.manifests.get(&snapshot.id) {
            Some(text) => text,
            None => match self
                .restic
                .dump(&snapshot.id, &format!("/{MANIFEST_FILE}"))
                .await
            {
                Ok(text) => {
                    self.manifests.put(&snapshot.id, &text);
                    text
                }
                Err(e) => {
                    tracing::warn!("{name}: {e:#}");
                    return None;
                }
            },
        };
        toml::from_str::<Manifest>(&text).ok()
    }

    /// Forget snapshots `ids` (and the manifests cached for them).
    async fn forget(&self, ids: &[&str]) -> anyhow::Result<()> {
        self.restic.forget(ids).await?;
        self.manifests.forget(ids.iter().copied());
        Ok(())
    }

    /// The tags of a backup's files or manifest (`kind`), written by the run `claim`.
    fn tags(&self, kind: &str, name: &str, datadir: &Path, claim: Option<&str>) -> Vec<String> {
        let mut tags = vec![
            TAG.to_string(),
            kind.to_string(),
            format!("{NAME_TAG}{name}"),
            datadir_tag(datadir),
        ];
        tags.extend(claim.map(run_tag));
        tags.extend(self.tags.iter().cloned());
        tags
    }

    /// dbsnap's snapshots of this host, by backup name.
    async fn by_name(&self) -> anyhow::Result<BTreeMap<String, Named>> {
        let mut found: BTreeMap<String, Named> = BTreeMap::new();
        for snapshot in self.restic.snapshots(&[TAG], &self.host).await? {
            let Some(name) = snapshot
                .tags
                .iter()
                .find_map(|t| t.strip_prefix(NAME_TAG))
                .map(str::to_string)
            else {
                continue;
            };
            let named = found.entry(name).or_default();
            if has_tag(&snapshot, MANIFEST_TAG) {
                named.manifests.push(snapshot);
            } else if has_tag(&snapshot, DATA_TAG) {
                named.files.push(snapshot);
            } else if has_tag(&snapshot, CLAIM_TAG) {
                named.claims.push(snapshot);
            }
        }
        for named in found.values_mut() {
            for kind in [&mut named.claims, &mut named.files, &mut named.manifests] {
                kind.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
            }
        }
        Ok(found)
    }

    /// Claim `name` for a new run: journal the run, save its claim, then look again.
    /// The name is this run's when its claim is the oldest under the name (time, then
    /// id: every run decides alike) and no other run has stored anything there; `None`
    /// otherwise, with the claim forgotten again.
    async fn claim(&self, name: &str, journal: &mut Journal) -> anyhow::Result<Option<Partial>> {
        let token = new_token();
        let resource = self.run_resource(None, Utc::now(), Some(token.clone()));
        journal.record(name, resource.clone())?;
        let tags = vec![
            TAG.to_string(),
            CLAIM_TAG.to_string(),
            format!("{NAME_TAG}{name}"),
            run_tag(&token),
        ];
        let text = format!("dbsnap claims the backup name {name} for run {token}\n");
        let mine = self
            .restic
            .save_file(CLAIM_FILE, &text, &self.host, &tags)
            .await?;
        let under_name = self.by_name().await?.remove(name).unwrap_or_default();
        let first = under_name.claims.first().map(|c| c.short_id.as_str());
        let others = under_name
            .all()
            .any(|s| !has_tag(s, CLAIM_TAG) && !has_tag(s, &run_tag(&token)));
        if first == Some(mine.as_str()) && !others {
            return Ok(Some(Partial {
                dir: self.location.join(format!("{name}.partial")),
                name: name.to_string(),
            }));
        }
        tracing::info!("backup name {name} was claimed by another run first: trying the next");
        // The other run's `restic backup` may hold the repository for a while; this is
        // before the lock, so waiting for it stalls no writer.
        let forgotten = self.restic.forget(&[mine.as_str()]).await;
        match forgotten {
            Ok(()) => journal.forget(&resource)?,
            // Left to `dbsnap cleanup` (through the journal): it forgets only this
            // run's snapshots, never the other run's under the same name.
            Err(e) => tracing::warn!("forgetting this run's claim of {name}: {e:#}"),
        }
        Ok(None)
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.location.join(name)
    }

    /// One backup name's snapshots, by the rule of the module documentation.
    async fn entry(&self, name: String, named: &Named) -> Entry {
        let Some(newest) = named.manifests.last() else {
            return Entry::Partial {
                path: self.location.join(format!("{name}.partial")),
                name,
            };
        };
        let path = self.path_of(&name);
        match self.manifest_of(&name, newest).await {
            Some(manifest)
                if manifest.name == name
                    && named.files.iter().any(|f| {
                        manifest.transfer.repository_snapshot.as_deref() == Some(&f.short_id)
                    }) =>
            {
                Entry::Backup(Box::new(Backup {
                    name,
                    path,
                    manifest,
                }))
            }
            _ => Entry::Invalid { name, path },
        }
    }

    /// The run's journal entries for restic (one, or two while its pid is recorded).
    fn run_entries(journal: &Journal, run: &str) -> Vec<Resource> {
        journal
            .entries()
            .iter()
            .filter(|e| e.run == run && matches!(e.resource, Resource::ResticRun { .. }))
            .map(|e| e.resource.clone())
            .collect()
    }

    /// The token of run `run`'s claim, from its journal entry.
    fn claim_of(journal: &Journal, run: &str) -> Option<String> {
        Self::run_entries(journal, run)
            .into_iter()
            .find_map(|r| match r {
                Resource::ResticRun { claim, .. } => claim,
                _ => None,
            })
    }

    fn run_resource(
        &self,
        pid: Option<u32>,
        started_at: DateTime<Utc>,
        claim: Option<String>,
    ) -> Resource {
        Resource::ResticRun {
            repository: self.location.display().to_string(),
            pid,
            started_at,
            claim,
        }
    }

    /// Forget the snapshots of backup `name`: manifests first (from then on it is not
    /// a backup), then its files and claims.
    async fn forget_backup(&self, name: &str) -> anyhow::Result<()> {
        let Some(named) = self.by_name().await?.remove(name) else {
            return Ok(());
        };
        let ids = |s: &[Snapshot]| s.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        let rest: Vec<Snapshot> = named.files.into_iter().chain(named.claims).collect();
        for group in [ids(&named.manifests), ids(&rest)] {
            let refs: Vec<&str> = group.iter().map(String::as_str).collect();
            self.forget(&refs).await?;
        }
        Ok(())
    }

    /// Forget what run `claim` stored under `name` and never published: its own
    /// snapshots, unless one is its manifest. A run journaled without a token (before
    /// claims existed) owns every snapshot of the name, when none is a manifest.
    async fn forget_unpublished(&self, name: &str, claim: Option<&str>) -> anyhow::Result<()> {
        let Some(named) = self.by_name().await?.remove(name) else {
            return Ok(());
        };
        let ours: Vec<&Snapshot> = match claim {
            Some(token) => named
                .all()
                .filter(|s| has_tag(s, &run_tag(token)))
                .collect(),
            None => named.all().collect(),
        };
        if ours.iter().any(|s| has_tag(s, MANIFEST_TAG)) {
            return Ok(());
        }
        let ids: Vec<&str> = ours.iter().map(|s| s.id.as_str()).collect();
        self.forget(&ids).await
    }
}

#[async_trait]
impl Destination for ResticRepo {
    fn location(&self) -> &Path {
        &self.location
    }

    /// restic recent enough; the repository there, reachable, opening with the
    /// password; no stale lock and no exclusive one, once a live one has been waited
    /// for (a non-exclusive lock is another host's backup: restic backups run side by
    /// side).
    async fn check(&self, server: &ServerFiles<'_>) -> anyhow::Result<()> {
        let version = self.restic.check_version().await?;
        if let Some(dir) = self.restic.local_dir() {
            let canonical = dir.canonicalize().unwrap_or_else(|_| dir.clone());
            if let Some(d) = server.dirs.iter().find(|d| canonical.starts_with(&d.path)) {
                return Err(fail(
                    Class::Destination,
                    format!(
                        "the restic repository {} is inside the server's {} directory {}: choose \
                         one outside it",
                        dir.display(),
                        d.role,
                        d.path.display()
                    ),
                ));
            }
            if canonical.exists() {
                super::local::check_filesystem(&dir, &canonical, server)?;
            }
        }
        self.restic.check_access().await?;
        let mut waiting = self.restic.lock_waiting("opening the repository");
        let locks = loop {
            let locks = self.restic.locks().await?;
            let exclusive: Vec<_> = locks.iter().filter(|l| l.exclusive).collect();
            // Another run's `forget` takes a second, a `prune` longer: wait for it here,
            // before the lock, rather than fail (a stale one is reported below at once).
            if exclusive.is_empty()
                || !locks::stale(&locks, &this_host()).is_empty()
                || !waiting.pause(&locks::describe(&exclusive)).await
            {
                break locks;
            }
        };
        let stale = locks::stale(&locks, &this_host());
        if !stale.is_empty() {
            return Err(fail(
                Class::Repository,
                format!(
                    "the restic repository {} has a stale lock left by a restic that was killed: {}. \
                     `dbsnap cleanup` removes it when dbsnap's journal records that run; otherwise, \
                     once no restic runs against the repository, remove it with `{}`",
                    self.location.display(),
                    locks::describe(&stale),
                    self.restic.by_hand("unlock")
                ),
            ));
        }
        let exclusive: Vec<_> = locks.iter().filter(|l| l.exclusive).collect();
        if !exclusive.is_empty() {
            return Err(fail(
                Class::Repository,
                format!(
                    "the restic repository {} is locked exclusively (a prune or check is running; \
                     dbsnap waited {} s): {}. Try again when it has finished",
                    self.location.display(),
                    self.restic.lock_wait().as_secs(),
                    locks::describe(&exclusive)
                ),
            ));
        }
        tracing::info!(
            "restic {version}, repository {} opens with the password",
            self.location.display()
        );
        Ok(())
    }

    /// For a local repository its filesystem's free space; restic cannot tell for
    /// any other store.
    async fn free_bytes(&self) -> anyhow::Result<Option<u64>> {
        let Some(dir) = self.restic.local_dir() else {
            return Ok(None);
        };
        let stat = nix::sys::statvfs::statvfs(&dir).map_err(|e| {
            fail(
                Class::Repository,
                format!("the restic repository {}: {e}", dir.display()),
            )
        })?;
        Ok(Some(
            stat.blocks_available() as u64 * stat.fragment_size() as u64,
        ))
    }

    async fn entries(&self) -> anyhow::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        for (name, named) in self.by_name().await? {
            entries.push(self.entry(name, &named).await);
        }
        Ok(entries)
    }

    /// The first name (`20261125T214500Z`, `.1`, ...) this run can claim: one with no
    /// snapshot of this host under it, whose claim snapshot turns out to be the first
    /// there (see [`ResticRepo::claim`]). Two runs claiming a name at once — another
    /// state directory of this host, in the same second — both see both claims and
    /// agree which is first; the other takes the next name.
    async fn create_partial(
        &self,
        at: DateTime<Utc>,
        journal: &mut Journal,
    ) -> anyhow::Result<Partial> {
        let taken = self.by_name().await?;
        for name in super::names_for(at).filter(|n| !taken.contains_key(n)) {
            if let Some(partial) = self.claim(&name, journal).await? {
                return Ok(partial);
            }
        }
        unreachable!("names_for never ends")
    }

    async fn publish(
        &self,
        partial: Partial,
        mut manifest: Manifest,
        journal: &mut Journal,
    ) -> anyhow::Result<Backup> {
        let path = self.path_of(&partial.name);
        manifest.path = path.clone();
        let text = toml::to_string_pretty(&manifest)?;
        let claim = Self::claim_of(journal, &partial.name);
        let tags = self.tags(
            MANIFEST_TAG,
            &partial.name,
            &manifest.server.datadir,
            claim.as_deref(),
        );
        self.restic
            .save_file(MANIFEST_FILE, &text, &self.host, &tags)
            .await?;
        for resource in Self::run_entries(journal, &partial.name) {
            journal.forget(&resource)?;
        }
        Ok(Backup {
            name: partial.name,
            path,
            manifest,
        })
    }

    async fn remove(
        &self,
        backup: &Backup,
        journal: &mut Journal,
        _received: &dyn ReceivedCopies,
    ) -> anyhow::Result<()> {
        let resource = self.run_resource(None, Utc::now(), None);
        journal.record(&backup.name, resource.clone())?;
        self.forget_backup(&backup.name).await?;
        journal.forget(&resource)
    }

    fn ingest(&self) -> Option<&dyn Ingest> {
        Some(self)
    }

    fn repository(&self) -> Option<&ResticRepo> {
        Some(self)
    }

    async fn fetch(
        &self,
        backup: &Backup,
        staging: &Path,
        journal: &mut Journal,
    ) -> anyhow::Result<Fetched> {
        let id = files_snapshot(backup);
        let dir = staging.join(&backup.name);
        if dir.exists() {
            return Err(fail(
                Class::Destination,
                format!(
                    "{} exists, left by an earlier run: run `dbsnap cleanup`, or remove it",
                    dir.display()
                ),
            ));
        }
        journal.record(&backup.name, Resource::Fetched { dir: dir.clone() })?;
        std::fs::create_dir_all(dir.join(crate::manifest::FILES_DIR)).map_err(|e| {
            fail(
                Class::Destination,
                format!("creating {}: {e}", dir.display()),
            )
        })?;
        tracing::info!(
            "restoring backup {} (restic snapshot {id}) into {}",
            backup.name,
            dir.display()
        );
        self.restic
            .restore(id, &dir.join(crate::manifest::FILES_DIR), None)
            .await?;
        backup.manifest.write(&dir)?;
        Ok(Fetched { dir, staged: true })
    }

    async fn record_verification(
        &self,
        backup: &Backup,
        verified: &Manifest,
        journal: &mut Journal,
    ) -> anyhow::Result<()> {
        let resource = self.run_resource(None, Utc::now(), None);
        journal.record(&backup.name, resource.clone())?;
        let old: Vec<String> = self
            .by_name()
            .await?
            .remove(&backup.name)
            .map(|named| named.manifests.into_iter().map(|s| s.id).collect())
            .unwrap_or_default();
        let mut manifest = verified.clone();
        manifest.path = backup.path.clone();
        let text = toml::to_string_pretty(&manifest)?;
        let tags = self.tags(MANIFEST_TAG, &backup.name, &manifest.server.datadir, None);
        self.restic
            .save_file(MANIFEST_FILE, &text, &self.host, &tags)
            .await?;
        let refs: Vec<&str> = old.iter().map(String::as_str).collect();
        self.forget(&refs).await?;
        journal.forget(&resource)
    }

    async fn check_storage(&self, journal: &mut Journal, run: &str) -> anyhow::Result<()> {
        let resource = self.run_resource(None, Utc::now(), None);
        journal.record(run, resource.clone())?;
        let subset = self.check_subset.as_deref();
        let report = self.restic.check(subset).await?;
        tracing::info!(
            "restic check{}: {}",
            subset
                .map(|s| format!(" (reading {s} of the data)"))
                .unwrap_or_default(),
            report.lines().last().unwrap_or("no errors")
        );
        journal.forget(&resource)
    }

    async fn reclaim(&self, journal: &mut Journal, run: &str) -> anyhow::Result<()> {
        let resource = self.run_resource(None, Utc::now(), None);
        journal.record(run, resource.clone())?;
        self.restic.prune().await?;
        journal.forget(&resource)
    }
}

#[async_trait]
impl Ingest for ResticRepo {
    async fn ingest(
        &self,
        partial: &Partial,
        datadir: &Path,
        items: &[CopyItem],
        journal: &mut Journal,
        progress: &(dyn Fn(u64) + Sync),
    ) -> anyhow::Result<TransferStats> {
        let base = self
            .newest_base(datadir, BaseOf::Stream(TransferMethod::Restic.as_str()))
            .await?;
        let parent = base
            .as_ref()
            .and_then(|b| b.manifest.transfer.repository_snapshot.clone());
        if let (Some(b), Some(p)) = (&base, &parent) {
            tracing::info!("restic backup with parent snapshot {p} (backup {})", b.name);
        }
        let binds: Vec<Bind> = items
            .iter()
            .map(|item| Bind {
                frozen: item.from.clone(),
                original: item.to.clone(),
                top_level: !items
                    .iter()
                    .any(|o| o.to != item.to && item.to.starts_with(&o.to)),
            })
            .collect();
        let excludes: Vec<PathBuf> = items
            .iter()
            .flat_map(|i| i.exclude.iter().map(|e| i.to.join(e)))
            .collect();
        let recorded = Self::run_entries(journal, &partial.name);
        let claim = Self::claim_of(journal, &partial.name);
        let tags = self.tags(DATA_TAG, &partial.name, datadir, claim.as_deref());
        let request = BackupRequest {
            binds: &binds,
            excludes: &excludes,
            host: &self.host,
            tags: &tags,
            parent: parent.as_deref(),
            limit_upload_kib: self.limit_upload_kib,
        };
        let mut started = |pid: u32| -> anyhow::Result<()> {
            let started_at = match recorded.first() {
                Some(Resource::ResticRun { started_at, .. }) => *started_at,
                _ => Utc::now(),
            };
            let resource = self.run_resource(Some(pid), started_at, claim.clone());
            journal.record(&partial.name, resource)?;
            for old in &recorded {
                journal.forget(old)?;
            }
            Ok(())
        };
        let summary = self.restic.backup(&request, progress, &mut started).await?;
        Ok(TransferStats {
            method: TransferMethod::Restic,
            base: base.map(|b| b.name),
            parent_snapshot: parent,
            full_because: None,
            bytes: summary.total_bytes_processed,
            bytes_written: summary.data_added,
            files: summary.total_files_processed,
            duration_ms: (summary.total_duration * 1000.0) as u64,
            repository_snapshot: Some(summary.snapshot_id),
            resumed_from: None,
            wire_bytes: None,
            seed_bytes_read: None,
            source_bytes_read: None,
        })
    }
}

/// The configured restic repository, for `dbsnap cleanup` releasing a journaled run.
pub fn configured(
    state_dir: &Path,
    backup: Option<&BackupConfig>,
    journaled: &str,
) -> anyhow::Result<ResticRepo> {
    let repo = backup
        .filter(|b| b.restic_repository().is_some())
        .map(|b| ResticRepo::open(b, state_dir))
        .transpose()?;
    match repo {
        Some(repo) if repo.location.display().to_string() == journaled => Ok(repo),
        _ => Err(fail(
            Class::Config,
            format!(
                "the journal records restic working on {journaled}, which [backup] dest no longer \
                 names: point dest at it again to clean up, or check it by hand and drop the run \
                 with `dbsnap cleanup --forget RUN`"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository at `repo` (not created), its password and restic's cache in `dir`.
    fn open(dir: &Path, repo: &Path) -> ResticRepo {
        let password = dir.join("password");
        std::fs::write(&password, "conformance\n").unwrap();
        std::fs::set_permissions(
            &password,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let config = crate::config::Config::parse(&format!(
            "[mysql]\n[snapshot]\nbackend = \"btrfs\"\n[backup]\ndest = {dest:?}\n\
             [backup.restic]\npassword_file = {password:?}\n",
            dest = format!("{RESTIC_SCHEME}{}", repo.display()),
        ))
        .unwrap();
        ResticRepo::open(config.backup.as_ref().unwrap(), &dir.join("state")).unwrap()
    }

    #[tokio::test]
    async fn of_two_runs_claiming_one_name_the_first_claim_wins_and_the_other_takes_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let repository = dir.path().join("repo");
        let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
        for d in [&a_dir, &b_dir] {
            std::fs::create_dir(d).unwrap();
        }
        let (a, b) = (open(&a_dir, &repository), open(&b_dir, &repository));
        a.init().await.unwrap();
        let a_lock = crate::journal::RunLock::acquire(&a_dir.join("state")).unwrap();
        let mut a_journal = Journal::open(&a_dir.join("state"), &a_lock).unwrap();
        let b_lock = crate::journal::RunLock::acquire(&b_dir.join("state")).unwrap();
        let mut b_journal = Journal::open(&b_dir.join("state"), &b_lock).unwrap();
        let at = "2026-11-25T21:45:00Z".parse().unwrap();

        let first = a.create_partial(at, &mut a_journal).await.unwrap();
        assert_eq!(first.name, "20261125T214500Z");
        // b chose the same name before a's claim was there: its claim comes second.
        assert_eq!(b.claim(&first.name, &mut b_journal).await.unwrap(), None);
        assert!(b_journal.entries().is_empty(), "b gave its claim back");
        let second = b.create_partial(at, &mut b_journal).await.unwrap();
        assert_eq!(second.name, "20261125T214500Z.1");
        let named = a.by_name().await.unwrap();
        assert_eq!(named[&first.name].claims.len(), 1, "{named:?}");

        // a was interrupted: cleanup forgets a's claim, and nothing of b's.
        let claim = ResticRepo::claim_of(&a_journal, &first.name);
        a.release_run(&first.name, None, Utc::now(), claim.as_deref())
            .await
            .unwrap();
        let named = a.by_name().await.unwrap();
        assert_eq!(named.keys().collect::<Vec<_>>(), vec![&second.name]);
    }

    #[tokio::test]
    async fn a_local_repository_passes_the_destination_conformance_checks() {
        let dir = tempfile::tempdir().unwrap();
        let repo = open(dir.path(), &dir.path().join("repo"));
        repo.init().await.unwrap();
        crate::destination::conformance::check(&repo).await;
    }

    #[test]
    fn datadir_tags_hold_no_comma() {
        assert_eq!(
            datadir_tag(Path::new("/srv/db,1/100%")),
            "dbsnap-datadir=/srv/db%2C1/100%25"
        );
    }
}
