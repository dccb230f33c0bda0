//! What every [`Destination`] must do, as an executable check (like the backends'
//! conformance crate): each implementation's tests call [`check`] on a fresh, empty
//! destination.

use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Backup, BaseOf, Destination, Entry, Partial, ReceivedCopies};
use crate::journal::{Journal, Resource, RunLock};
use crate::manifest::{Manifest, StoredVolume};

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
    assert!(dest.entries().await.unwrap().is_empty(), "starts empty");
    assert_eq!(
        dest.newest_base(Path::new(DATADIR), BaseOf::Files)
            .await
            .unwrap(),
        None
    );
    let (first, other) =
        a_partial_is_journaled_and_never_a_backup_until_published(dest, &mut journal).await;
    let second =
        the_newest_base_follows_the_datadir_and_the_method(dest, &mut journal, &first, other).await;
    removing_deletes_received_copies_and_is_idempotent(dest, &mut journal, &second).await;
    assert_eq!(dest.backups().await.unwrap(), vec![first]);
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

async fn a_partial_is_journaled_and_never_a_backup_until_published(
    dest: &dyn Destination,
    journal: &mut Journal,
) -> (Backup, Partial) {
    let partial = dest.create_partial(at(), journal).await.unwrap();
    let name = partial.name.clone();
    assert_eq!(name, "20261125T214500Z");
    assert_eq!(
        partials(journal),
        vec![partial.dir.as_path()],
        "the partial is journaled"
    );
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
    let received = Resource::Received {
        backend: "btrfs".into(),
        id: "r0".into(),
        partial: partial.dir.clone(),
        remote: None,
    };
    journal.record(&name, received).unwrap();
    let first = dest
        .publish(partial, manifest(&name, "rsync", None), journal)
        .await
        .unwrap();
    assert_eq!(
        partials(journal),
        vec![other.dir.as_path()],
        "published: only the other partial"
    );
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
    journal: &mut Journal,
    first: &Backup,
    partial: Partial,
) -> Backup {
    let name = partial.name.clone();
    let streamed = manifest(&name, "btrfs-send", Some("copy-1"));
    let second = dest.publish(partial, streamed, journal).await.unwrap();
    assert!(journal.entries().is_empty());
    let base = |of| async move {
        let base = dest.newest_base(Path::new(DATADIR), of).await.unwrap();
        base.map(|b| b.name)
    };
    assert_eq!(base(BaseOf::Files).await, Some(first.name.clone()));
    assert_eq!(base(BaseOf::Stream("btrfs-send")).await, Some(name));
    assert_eq!(base(BaseOf::Stream("zfs-send")).await, None);
    let other = dest.newest_base(Path::new("/other"), BaseOf::Files);
    assert_eq!(other.await.unwrap(), None);
    second
}
async fn removing_deletes_received_copies_and_is_idempotent(
    dest: &dyn Destination,
    journal: &mut Journal,
    backup: &Backup,
) {
    let deleted = Deleted::default();
    dest.remove(backup, journal, &deleted).await.unwrap();
    assert_eq!(
        *deleted.0.lock().unwrap(),
        vec![("btrfs".to_string(), "copy-1".to_string())]
    );
    assert!(journal.entries().is_empty());
    dest.remove(backup, journal, &deleted).await.unwrap();
}
