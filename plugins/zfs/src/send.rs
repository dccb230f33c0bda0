//! `zfs send | zfs receive`: the native stream. The destination directory must be on a
//! ZFS dataset `D`; received copies live in datasets below `D/dbsnap-received`:
//!
//! * a *chain* dataset per volume, `D/dbsnap-received/<set>.<index>.stream`, created by
//!   a full stream of the set `<set>`; each incremental stream adds the next backup's
//!   snapshot `@<set>` to it (ZFS receives an incremental stream only into the dataset
//!   whose newest snapshot is the stream's base, so a chain can never be forked). Never
//!   mounted (`receive -u`, `canmount=noauto`) and read-only: a changed chain head would
//!   make the next incremental receive fail;
//! * a *copy* per backup and volume, `D/dbsnap-received/<set>.<index>`: a read-only
//!   clone of the received snapshot, mounted where ZFS mounts it (inherited mount
//!   point, so it comes back after a reboot). That is the path restore and verify read.
//!   zfs-fuse has no `.zfs/snapshot`, and a clone costs no space, so both
//!   implementations read the same way.
//!
//! A received copy's id is `<chain>@<set>`; deleting it destroys the copy, then the
//! snapshot, then the chain once its last snapshot is gone. A full stream always
//! starts a new chain, so it never touches an earlier backup.
//!
//! Every command of the receiving side runs through the [`ReceivingHost`], so the same
//! code receives on this host and on a backup host over ssh. Streams are not resumed:
//! zfs-fuse (the host's test tier) has neither `zfs receive -s` nor `zfs send -t`, so
//! the receive is plain, and an interrupted one leaves no resume state; what it
//! received is deleted by cleanup and the next run sends the stream again.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use dbsnap_backend_api::command::{self, Cmd};
use dbsnap_backend_api::mounts::mount_of;
use dbsnap_backend_api::{
    canonical_on, mount_table_on, BackendError, NativeStream, ReceiveAt, Received, ReceivingHost,
    Result, SnapshotName, StreamParent, VolumeSnapshot, SNAPSHOT_PREFIX,
};

use crate::names::{validate_dataset, MAX_NAME_LEN};
use crate::{destroy_on, does_not_exist, get_properties_on, is_zfs_mount, Zfs, RUN_PROPERTY};

/// The dataset below the destination's dataset that holds every received copy.
const CONTAINER: &str = "dbsnap-received";
/// Marks a chain dataset (the copies carry no suffix: their names are what users see).
const CHAIN_SUFFIX: &str = ".stream";
/// Room kept for a snapshot set's name when the destination is checked before the lock
/// (backup names are a timestamp and maybe a counter: well below this).
const SET_NAME_ROOM: usize = 48;

/// The dataset that holds `dest` on `host` (from its mount table), if it is a ZFS
/// filesystem.
async fn destination_dataset(host: &dyn ReceivingHost, dest: &Path) -> Result<String> {
    let dest = canonical_on(host, dest).await?;
    let table = mount_table_on(host).await?;
    let not_zfs = |what: String| {
        BackendError::Invalid(format!(
            "the destination {} is {what}: `zfs receive` needs a ZFS dataset there. Use \
             [backup] method = \"rsync\" (or \"auto\"), or a destination on a ZFS dataset",
            dest.display()
        ))
    };
    let mount = mount_of(&table, &dest).ok_or_else(|| not_zfs("on no mount".into()))?;
    if !is_zfs_mount(&mount) {
        return Err(not_zfs(format!(
            "not on ZFS (on a {} filesystem mounted at {})",
            mount.fstype,
            mount.mount_point.display()
        )));
    }
    if mount.source.contains('@') {
        return Err(not_zfs(format!("inside the ZFS snapshot {}", mount.source)));
    }
    validate_dataset(&mount.source)?;
    Ok(mount.source)
}

/// A received copy's identity, taken apart: `<container>/<set0>.<index>.stream@<set>`.
#[derive(Debug, PartialEq, Eq)]
struct ReceivedId {
    container: String,
    chain: String,
    index: usize,
    set: SnapshotName,
}

impl ReceivedId {
    fn new(container: &str, chain_set: &SnapshotName, index: usize, set: SnapshotName) -> Self {
        ReceivedId {
            container: container.to_string(),
            chain: format!("{container}/{chain_set}.{index}{CHAIN_SUFFIX}"),
            index,
            set,
        }
    }

    /// Parse an id, refusing anything dbsnap would not have named: a tampered manifest
    /// or journal must not make dbsnap destroy someone else's dataset.
    fn parse(id: &str) -> Result<Self> {
        let refuse = || {
            BackendError::Invalid(format!(
                "refusing to touch {id:?}: it is not a copy dbsnap received \
                 (<dataset>/{CONTAINER}/dbsnap-….<n>{CHAIN_SUFFIX}@dbsnap-…)"
            ))
        };
        let (chain, set) = id.split_once('@').ok_or_else(refuse)?;
        let set = SnapshotName::new(set).map_err(|_| refuse())?;
        validate_dataset(chain).map_err(|_| refuse())?;
        let (container, last) = chain.rsplit_once('/').ok_or_else(refuse)?;
        if container.rsplit('/').next() != Some(CONTAINER) {
            return Err(refuse());
        }
        let (chain_set, index) = last
            .strip_suffix(CHAIN_SUFFIX)
            .and_then(|s| s.rsplit_once('.'))
            .ok_or_else(refuse)?;
        let chain_set = SnapshotName::new(chain_set).map_err(|_| refuse())?;
        let index = index.parse().map_err(|_| refuse())?;
        let parsed = ReceivedId::new(container, &chain_set, index, set);
        if parsed.chain != chain {
            return Err(refuse());
        }
        Ok(parsed)
    }

    fn snapshot(&self) -> String {
        format!("{}@{}", self.chain, self.set)
    }

    /// The read-only clone that makes the received snapshot readable.
    fn copy(&self) -> String {
        format!("{}/{}.{}", self.container, self.set, self.index)
    }

    fn check_length(&self) -> Result<()> {
        let longest = self.snapshot().len().max(self.copy().len());
        if longest > MAX_NAME_LEN {
            return Err(BackendError::Invalid(format!(
                "the received copy {} would need a {longest}-byte ZFS name, over ZFS's limit of \
                 {MAX_NAME_LEN}. Put the destination on a dataset with a shorter name",
                self.snapshot()
            )));
        }
        Ok(())
    }
}

/// The set name of a snapshot id `dataset@set`.
fn set_of(snapshot: &VolumeSnapshot) -> Result<SnapshotName> {
    let (_, set) = snapshot.id.split_once('@').ok_or_else(|| {
        BackendError::Invalid(format!("{} is not a ZFS snapshot id", snapshot.id))
    })?;
    SnapshotName::new(set)
}

/// A dataset's snapshots on `host`, oldest first.
pub(crate) async fn snapshots_of(host: &dyn ReceivingHost, dataset: &str) -> Result<Vec<String>> {
    let list = Cmd::new("zfs")
        .args([
            "list",
            "-H",
            "-t",
            "snapshot",
            "-o",
            "name",
            "-s",
            "createtxg",
        ])
        .args(["-d", "1"])
        .arg(dataset);
    let out = host.run(&list).await?;
    Ok(out.stdout.lines().map(str::to_string).collect())
}

/// Where `dataset` is mounted on `host`, mounting it if ZFS did not.
async fn mounted_at(host: &dyn ReceivingHost, dataset: &str) -> Result<PathBuf> {
    let find = move || async move {
        Ok::<_, BackendError>(
            mount_table_on(host)
                .await?
                .into_iter()
                .find(|m| m.source == dataset)
                .map(|m| m.mount_point),
        )
    };
    if let Some(path) = find().await? {
        return Ok(path);
    }
    host.run(&Cmd::new("zfs").arg("mount").arg(dataset)).await?;
    find().await?.ok_or_else(|| {
        BackendError::Invalid(format!(
            "{dataset} is not mounted after `zfs mount`: check its mountpoint property (a \
             destination dataset with mountpoint=legacy or none cannot hold received copies)"
        ))
    })
}

#[async_trait]
impl NativeStream for Zfs {
    fn method(&self) -> &'static str {
        "zfs-send"
    }

    fn receiving_programs(&self) -> &'static [&'static str] {
        &["zfs"]
    }

    async fn check_destination(&self, host: &dyn ReceivingHost, dest: &Path) -> Result<()> {
        let dataset = destination_dataset(host, dest).await?;
        let kind = get_properties_on(host, &dataset, &["type"]).await?;
        if kind
            .as_ref()
            .and_then(|p| p.get("type"))
            .map(String::as_str)
            != Some("filesystem")
        {
            return Err(BackendError::Invalid(format!(
                "the destination {} is on {dataset}, which `zfs get type` does not report as a \
                 ZFS filesystem. Check `zfs list` and that the zfs command talks to its pool",
                dest.display()
            )));
        }
        // Refuse before the lock a dataset name that leaves no room for the copies' names.
        let room = "x".repeat(SET_NAME_ROOM - SNAPSHOT_PREFIX.len());
        let set = SnapshotName::new(format!("{}{room}", SNAPSHOT_PREFIX))?;
        ReceivedId::new(&format!("{dataset}/{CONTAINER}"), &set, 9, set.clone()).check_length()
    }

    async fn plan_received(
        &self,
        snapshot: &VolumeSnapshot,
        index: usize,
        parent: Option<StreamParent<'_>>,
        at: ReceiveAt<'_>,
    ) -> Result<String> {
        let set = set_of(snapshot)?;
        let planned = match parent {
            // An incremental stream continues the parent's chain.
            Some(parent) => {
                let base = ReceivedId::parse(parent.received)?;
                ReceivedId { set, ..base }
            }
            None => {
                let dataset = destination_dataset(at.host, at.dir).await?;
                let container = format!("{dataset}/{CONTAINER}");
                ReceivedId::new(&container, &set, index, set.clone())
            }
        };
        planned.check_length()?;
        Ok(planned.snapshot())
    }

    async fn send(
        &self,
        snapshot: &VolumeSnapshot,
        parent: Option<StreamParent<'_>>,
        at: ReceiveAt<'_>,
        received: &str,
        bwlimit: Option<u64>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Received> {
        let host = at.host;
        let target = ReceivedId::parse(received)?;
        let mut sender = Cmd::new("zfs").arg("send");
        match parent {
            Some(parent) => {
                // ZFS receives an incremental stream only on top of its base; anything
                // newer in the chain belongs to another backup and is never rolled back.
                let newest = snapshots_of(host, &target.chain).await?.pop();
                if newest.as_deref() != Some(parent.received) {
                    return Err(BackendError::Invalid(format!(
                        "the received chain {} ends at {}, not at the base {}: an incremental \
                         stream cannot continue it. Delete the newer backup whose copy that is \
                         (or the base backup) to start a new chain with a full stream",
                        target.chain,
                        newest.as_deref().unwrap_or("no snapshot"),
                        parent.received
                    )));
                }
                sender = sender.arg("-i").arg(&parent.snapshot.id);
            }
            None => {
                if get_properties_on(host, &target.container, &["type"])
                    .await?
                    .is_none()
                {
                    let create = Cmd::new("zfs").arg("create").arg(&target.container);
                    match host.run(&create).await {
                        Ok(_) => {}
                        Err(e) if e.stderr.contains("already exists") => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        let sender = sender.arg(&snapshot.id);
        // `-u`: the chain is never mounted (zfs-fuse accepts it without documenting it).
        let receiver = host
            .command(&Cmd::new("zfs").args(["receive", "-u"]).arg(&target.chain))
            .await?;
        let stream_bytes = command::pipe(&sender, &receiver, bwlimit, progress).await?;
        if parent.is_none() {
            // One property per call: zfs-fuse's `zfs set` takes only one.
            for property in ["canmount=noauto", "readonly=on"] {
                let set = Cmd::new("zfs").arg("set").arg(property).arg(&target.chain);
                host.run(&set).await?;
            }
        }
        let copy = target.copy();
        let clone = Cmd::new("zfs")
            .arg("clone")
            .args(["-o", "readonly=on", "-o"])
            .arg(format!("{RUN_PROPERTY}={}", target.set))
            .arg(target.snapshot())
            .arg(&copy);
        host.run(&clone).await?;
        Ok(Received {
            id: target.snapshot(),
            path: mounted_at(host, &copy).await?,
            stream_bytes,
        })
    }

    async fn delete_received(&self, host: &dyn ReceivingHost, id: &str) -> Result<()> {
        let target = ReceivedId::parse(id)?;
        let copy = target.copy();
        if let Some(props) = get_properties_on(host, &copy, &["origin", "mountpoint"]).await? {
            if props.get("origin") != Some(&target.snapshot()) {
                return Err(BackendError::Invalid(format!(
                    "refusing to destroy ZFS dataset {copy}: it is not dbsnap's copy of {id} \
                     (its origin differs). Rename or destroy it yourself, then try again"
                )));
            }
            destroy_on(host, &copy).await?;
            // zfs-fuse leaves the empty mount point directory behind (`rmdir` removes
            // only an empty one).
            if let Some(dir) = props.get("mountpoint").filter(|m| m.starts_with('/')) {
                let _ = host.run(&Cmd::new("rmdir").arg("--").arg(dir)).await;
            }
        }
        destroy_on(host, &target.snapshot()).await?;
        // A receive killed with dbsnap may still be winding down in the ZFS daemon, which
        // removes a half-created chain by itself: the chain can vanish between two calls.
        let remaining = match snapshots_of(host, &target.chain).await {
            Ok(snapshots) => snapshots,
            Err(BackendError::Command(e)) if does_not_exist(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        if remaining.is_empty() {
            destroy_on(host, &target.chain).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_ids_round_trip_and_foreign_ones_are_refused() {
        let full = SnapshotName::new("dbsnap-20260101T000000Z").unwrap();
        let next = SnapshotName::new("dbsnap-20260102T000000Z").unwrap();
        let id = ReceivedId::new("bk/dbsnap-received", &full, 1, next.clone());
        assert_eq!(
            id.snapshot(),
            "bk/dbsnap-received/dbsnap-20260101T000000Z.1.stream@dbsnap-20260102T000000Z"
        );
        assert_eq!(id.copy(), "bk/dbsnap-received/dbsnap-20260102T000000Z.1");
        assert_eq!(ReceivedId::parse(&id.snapshot()).unwrap(), id);
        for foreign in [
            "bk/dbsnap-received/dbsnap-a.1.stream@manual",
            "bk/dbsnap-received/dbsnap-a.1.stream",
            "bk/other/dbsnap-a.1.stream@dbsnap-b",
            "bk/dbsnap-received/data.1.stream@dbsnap-b",
            "bk/dbsnap-received/dbsnap-a.x.stream@dbsnap-b",
            "bk/dbsnap-received/dbsnap-a.1@dbsnap-b",
            "bk/dbsnap-received/dbsnap-a.1.stream/x@dbsnap-b",
            "-R/dbsnap-received/dbsnap-a.1.stream@dbsnap-b",
            "bk/dbsnap-received/dbsnap-a.01.stream@dbsnap-b",
            "bk",
        ] {
            assert!(ReceivedId::parse(foreign).is_err(), "{foreign}");
        }
    }

    #[test]
    fn names_that_do_not_fit_are_refused() {
        let set = SnapshotName::new("dbsnap-20260101T000000Z").unwrap();
        let long = format!("bk/{}/{CONTAINER}", "x".repeat(200));
        let id = ReceivedId::new(&long, &set, 0, set.clone());
        assert!(id.check_length().unwrap_err().to_string().contains("limit"));
    }
}
