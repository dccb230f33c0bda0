//! What every [`Destination`] must do, as an executable check (like the backends'
//! conformance crate): each implementation's tests call [`check`] on a fresh, empty
//! destination.
//!
//! A repository (a destination with an [`Ingest`]: restic) keeps the same contract,
//! with its backups' files stored by its own transfer before they are published, and
//! with what cannot apply to it checked the other way round:
//!
//! - *The partial is journaled as a directory.* A repository's partial is no
//!   directory: the journal holds the run (`Resource::ResticRun`) under the name.
//! - *Copies received into a partial belong to the backup and are deleted through
//!   their backend on removal.* Nothing is received into a repository (no native
//!   stream ends in one), so removing deletes no received copy.
//! - *The newest base follows the method.* A repository's backups are bases for the
//!   repository's own transfer only (never for rsync or a stream).

use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Backup, BaseOf, Destination, Entry, Ingest, Partial, ReceivedCopies};
use crate::journal::{Journal, Resource, RunLock};
use crate::manifest::{Manifest, StoredVolume, TransferMethod};
use crate::transfer::CopyItem;

/// Records the received copies a destination deletes.
#[derive(Default)]
pub struct Deleted(pub Mutex<Vec<(String, String)>>);

#[async_trait]
impl ReceivedCopies for Deleted {
    async fn delete_received(
        &self,
        backend: &str,
        id: &str,
        _host: &dyn dbsnap_backend_api::ReceivingHost,
    ) -> anyhow::Result<()> {
        self.0.lock().unwrap().push((backend.into(), id.into()));
        Ok(())
    }
}

fn manifest(name: &str, method: &str, received: Option<&str>) -> Manifest {
    let mut m = crate::manifest::tests::sample();
    m.name = name.into();
    m.transfer.method = method.to_string().into();
    m.stored = received
        .map(|id| StoredVolume {
            root: "/var/lib/mysql".into(),
            path: "dbsnap-x.0".into(),
            id: id.into(),
        })
        .into_iter()
        .collect();
    m
}

/// Run every check against `dest`, which must be empty. Panics on the first failure.
pub async fn check(dest: &dyn Destination) {
    let state = tempfile::tempdir().unwrap();
    let lock = RunLock::acquire(state.path()).unwrap();
    let mut journal = Journal::open(state.path(), &lock).unwrap();
    let files = Files::new(dest.ingest());
    assert!(dest.entries().await.unwrap().is_empty(), "starts empty");
    assert_eq!(
        dest.newest_base(Path::new(DATADIR), BaseOf::Files)
            .await
            .unwrap(),
        None
    );
    let (first, other) =
        a_partial_is_journaled_and_never_a_backup_until_published(dest, &files, &mut journal).await;
    let second = the_newest_base_follows_the_datadir_and_the_method(
        dest,
        &files,
        &mut journal,
        &first,
        other,
    )
    .await;
    removing_deletes_received_copies_and_is_idempotent(dest, &files, &mut journal, &second).await;
    assert_eq!(dest.backups().await.unwrap(), vec![first]);
}

/// What a backup holds before it is published: nothing, for a destination written by
/// a transfer from outside; for a repository, files its [`Ingest`] has stored.
struct Files<'a> {
    ingest: Option<&'a dyn Ingest>,
    tree: tempfile::TempDir,
}

impl<'a> Files<'a> {
    fn new(ingest: Option<&'a dyn Ingest>) -> Files<'a> {
        let tree = tempfile::tempdir().unwrap();
        std::fs::write(tree.path().join("ibdata1"), b"pages").unwrap();
        Files { ingest, tree }
    }

    /// The manifest `partial` is published with: the repository's own transfer of a
    /// small tree, or `method` (with the copy `received`) for a directory.
    async fn manifest(
        &self,
        partial: &Partial,
        method: &str,
        received: Option<&str>,
        journal: &mut Journal,
    ) -> Manifest {
        let Some(ingest) = self.ingest else {
            return manifest(&partial.name, method, received);
        };
        let mut m = manifest(&partial.name, TransferMethod::Restic.as_str(), None);
        let items = [CopyItem {
            from: self.tree.path().to_path_buf(),
            to: self.tree.path().to_path_buf(),
            exclude: Vec::new(),
        }];
        m.transfer = ingest
            .ingest(partial, Path::new(DATADIR), &items, journal, &|_: u64| {})
            .await
            .unwrap();
        m
    }
}

const DATADIR: &str = "/var/lib/mysql";

fn at() -> chrono::DateTime<chrono::Utc> {
    "2026-11-25T21:45:00Z".parse().unwrap()
}

/// What the journal holds, as the directories of its partials (a local or a remote
/// one) and any other resource.
fn partials(journal: &Journal) -> Vec<&Path> {
    journal
        .entries()
        .iter()
        .map(|e| match &e.resource {
            Resource::Partial { dir } | Resource::RemotePartial { dir, .. } => dir.as_path(),
            _ => Path::new("(not a partial)"),
        })
        .collect()
}

/// The runs (backup names) the journal holds anything for.
fn runs(journal: &Journal) -> Vec<&str> {
    let mut runs: Vec<&str> = journal.entries().iter().map(|e| e.run.as_str()).collect();
    runs.dedup();
    runs
}

async fn a_partial_is_journaled_and_never_a_backup_until_published(
    dest: &dyn Destination,
    files: &Files<'_>,
    journal: &mut Journal,
) -> (Backup, Partial) {
    let partial = dest.create_partial(at(), journal).await.unwrap();
    let name = partial.name.clone();
    assert_eq!(name, "20261125T214500Z");
    match files.ingest {
        None => assert_eq!(
            partials(journal),
            vec![partial.dir.as_path()],
            "the partial is journaled"
        ),
        Some(_) => assert_eq!(runs(journal), vec![name.as_str()], "the run is journaled"),
    }
    let entries = dest.entries().await.unwrap();
    assert!(matches!(&entries[..], [Entry::Partial { name: n, .. }] if *n == name));
    assert!(
        dest.backups().await.unwrap().is_empty(),
        "a partial is not a backup"
    );
    assert_eq!(dest.resolve(&name).await.unwrap(), None);
    // A partial holds its name: the next run in the same second gets another.
    let other = dest.create_partial(at(), journal).await.unwrap();
    assert_eq!(other.name, "20261125T214500Z.1");

    // Publishing makes it a backup and forgets the partial and what was received into it.
    let manifest = files.manifest(&partial, "rsync", None, journal).await;
    if files.ingest.is_none() {
        let received = Resource::Received {
            backend: "btrfs".into(),
            id: "r0".into(),
            partial: partial.dir.clone(),
            remote: None,
        };
        journal.record(&name, received).unwrap();
    }
    let first = dest.publish(partial, manifest, journal).await.unwrap();
    match files.ingest {
        None => assert_eq!(
            partials(journal),
            vec![other.dir.as_path()],
            "published: only the other partial"
        ),
        Some(_) => assert_eq!(runs(journal), vec![other.name.as_str()]),
    }
    assert_eq!(first.manifest.path, first.path);
    assert_eq!(dest.backups().await.unwrap(), vec![first.clone()]);
    let resolved = dest
        .resolve(&name)
        .await
        .unwrap()
        .expect("resolves by name");
    assert_eq!(resolved.manifest, first.manifest);
    assert_eq!(dest.resolve("20261125T214500Z.7").await.unwrap(), None);
    (first, other)
}

async fn the_newest_base_follows_the_datadir_and_the_method(
    dest: &dyn Destination,
    files: &Files<'_>,
    journal: &mut Journal,
    first: &Backup,
    partial: Partial,
) -> Backup {
    let name = partial.name.clone();
    let streamed = files
        .manifest(&partial, "btrfs-send", Some("copy-1"), journal)
        .await;
    let second = dest.publish(partial, streamed, journal).await.unwrap();
    assert!(journal.entries().is_empty());
    let restic = TransferMethod::Restic;
    let base = |of| async move {
        let base = dest.newest_base(Path::new(DATADIR), of).await.unwrap();
        base.map(|b| b.name)
    };
    match files.ingest {
        None => {
            assert_eq!(base(BaseOf::Files).await, Some(first.name.clone()));
            assert_eq!(base(BaseOf::Stream("btrfs-send")).await, Some(name));
        }
        // A repository's backups are bases for the repository's own transfer only.
        Some(_) => {
            assert_eq!(base(BaseOf::Files).await, None);
            assert_eq!(base(BaseOf::Stream(restic.as_str())).await, Some(name));
            assert_eq!(
                second.manifest.transfer.parent_snapshot,
                first.manifest.transfer.repository_snapshot,
                "the second backup's files are stored against the first's"
            );
        }
    }
    assert_eq!(base(BaseOf::Stream("zfs-send")).await, None);
    let other = dest.newest_base(Path::new("/other"), BaseOf::Files);
    assert_eq!(other.await.unwrap(), None);
    second
}

async fn removing_deletes_received_copies_and_is_idempotent(
    dest: &dyn Destination,
    files: &Files<'_>,
    journal: &mut Journal,
    backup: &Backup,
) {
    let deleted = Deleted::default();
    dest.remove(backup, journal, &deleted).await.unwrap();
    let expected = match files.ingest {
        None => vec![("btrfs".to_string(), "copy-1".to_string())],
        Some(_) => Vec::new(),
    };
    assert_eq!(*deleted.0.lock().unwrap(), expected);
    assert!(journal.entries().is_empty());
    assert_eq!(dest.resolve(&backup.name).await.unwrap(), None);
    dest.remove(backup, journal, &deleted).await.unwrap();
}
