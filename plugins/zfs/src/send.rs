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
//! code receives on this host and on a backup host over ssh.
//!
//! **Resumable receive** where both ends have it (OpenZFS: `resumable` finds the
//! `receive_resume_token` property on both): streams are received with `zfs receive
//! -s`, so a cut-off one leaves its state in the chain and the chain's
//! `receive_resume_token`. `remains` reads that token and checks it (decoded by `zfs
//! send -nvP -t` on this host) against the snapshot it must continue, by name and
//! GUID; `complete` finishes the stream with `zfs send -t TOKEN`. Deleting a copy whose
//! snapshot never arrived aborts that state (`zfs receive -A`). zfs-fuse (the host's
//! test tier) has neither `zfs receive -s` nor `zfs send -t`: there the receive is
//! plain, a cut-off one leaves nothing to continue, and the next run sends it again.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use dbsnap_backend_api::command::{self, Cmd};
use dbsnap_backend_api::mounts::mount_of;
use dbsnap_backend_api::{
    canonical_on, mount_table_on, BackendError, CutOff, NativeStream, ReceiveAt, Received,
    ReceivingHost, Remains, Result, SnapshotName, StreamParent, Volume, VolumeSnapshot,
    SNAPSHOT_PREFIX,
};

use crate::names::{validate_dataset, MAX_NAME_LEN};
use crate::{
    destroy_on, does_not_exist, get_properties, get_properties_on, is_zfs_mount, Zfs, RUN_PROPERTY,
};

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

/// The receiving end of a stream into `chain`. `-u`: the chain is never mounted
/// (zfs-fuse accepts it without documenting it); `-s` (`resumable`): a cut-off receive
/// keeps what it got, and the chain's `receive_resume_token` says where to go on.
fn receiver(chain: &str, resumable: bool) -> Cmd {
    let receive = Cmd::new("zfs").args(["receive", "-u"]);
    match resumable {
        true => receive.arg("-s"),
        false => receive,
    }
    .arg(chain)
}

/// Send `snapshot` into the chain of `target`, from `parent` or in full (which starts
/// the chain): the stream only, nothing made readable. Returns the stream bytes.
async fn stream_into_chain(
    snapshot: &VolumeSnapshot,
    parent: Option<StreamParent<'_>>,
    at: ReceiveAt<'_>,
    target: &ReceivedId,
    bwlimit: Option<u64>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64> {
    let host = at.host;
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
    let receiver = host.command(&receiver(&target.chain, at.resumable)).await?;
    let stream_bytes = command::pipe(&sender, &receiver, bwlimit, progress).await?;
    if parent.is_none() {
        seal_chain(host, &target.chain).await?;
    }
    Ok(stream_bytes)
}

/// Make a chain created by a full stream read-only and never mounted: a changed chain
/// head would make the next incremental receive fail.
async fn seal_chain(host: &dyn ReceivingHost, chain: &str) -> Result<()> {
    // One property per call: zfs-fuse's `zfs set` takes only one.
    for property in ["canmount=noauto", "readonly=on"] {
        let set = Cmd::new("zfs").arg("set").arg(property).arg(chain);
        host.run(&set).await?;
    }
    Ok(())
}

/// `zfs get receive_resume_token` of `dataset`: the property exists only where `zfs
/// receive -s` and `zfs send -t` do (OpenZFS; not zfs-fuse).
fn get_resume_token(dataset: &str) -> Cmd {
    Cmd::new("zfs")
        .args(["get", "-H", "-p", "-o", "value", "receive_resume_token"])
        .arg(dataset)
}

/// The resume token a cut-off receive into `chain` on `host` left, if any (also `None`
/// where the zfs there has no resumable receive, or the chain is gone).
async fn resume_token_of(host: &dyn ReceivingHost, chain: &str) -> Result<Option<String>> {
    match host.run(&get_resume_token(chain)).await {
        Ok(out) => {
            let token = out.stdout.trim();
            Ok((!token.is_empty() && token != "-").then(|| token.to_string()))
        }
        Err(e) if does_not_exist(&e) || e.stderr.contains("property") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What a resume token says it continues (`zfs send -nvP -t TOKEN` prints its
/// contents as an nvlist: `toname = pool/ds@snap`, `toguid = 0x…`).
#[derive(Debug, PartialEq, Eq)]
struct TokenContents {
    toname: String,
    toguid: u64,
}

fn parse_token_contents(text: &str) -> Option<TokenContents> {
    let field = |key: &str| {
        text.lines().find_map(|line| {
            let (k, v) = line.trim().split_once(" = ")?;
            (k == key).then(|| v.trim().to_string())
        })
    };
    let toguid = field("toguid")?;
    let toguid = match toguid.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => toguid.parse().ok()?,
    };
    Some(TokenContents {
        toname: field("toname")?,
        toguid,
    })
}

/// Abort what a cut-off receive of `target` kept in its chain (`zfs receive -A`: an
/// incremental one's hidden clone, or the whole half-received chain of a full one);
/// otherwise the chain could take no other stream. Chains receive one stream at a
/// time, in order, so while the copy's snapshot has not arrived, a partial receive in
/// its chain is its own.
async fn abort_cut_off_receive(host: &dyn ReceivingHost, target: &ReceivedId) -> Result<()> {
    let arrived = match snapshots_of(host, &target.chain).await {
        Ok(snapshots) => snapshots.contains(&target.snapshot()),
        Err(BackendError::Command(e)) if does_not_exist(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    if arrived || resume_token_of(host, &target.chain).await?.is_none() {
        return Ok(());
    }
    let abort = Cmd::new("zfs").args(["receive", "-A"]).arg(&target.chain);
    match host.run(&abort).await {
        Ok(_) => Ok(()),
        Err(e) if does_not_exist(&e) || e.stderr.contains("does not have any resumable") => Ok(()),
        Err(e) => Err(e.into()),
    }
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
        let stream_bytes =
            stream_into_chain(snapshot, parent, at, &target, bwlimit, progress).await?;
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
        abort_cut_off_receive(host, &target).await?;
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

    async fn resumable(
        &self,
        sending: &[Volume],
        host: &dyn ReceivingHost,
        dest: &Path,
    ) -> Result<bool> {
        let Some(source) = sending.first() else {
            return Ok(false);
        };
        let dataset = destination_dataset(host, dest).await?;
        let lacking = match (
            host.run(&get_resume_token(&dataset)).await,
            get_resume_token(&source.id).run().await,
        ) {
            (Ok(_), Ok(_)) => return Ok(true),
            (Err(e), _) => format!("the receiving zfs (for {dataset}): {}", e.stderr.trim()),
            (_, Err(e)) => format!("this host's zfs: {}", e.stderr.trim()),
        };
        tracing::info!(
            "zfs-send: a stream that is cut off is sent again from its start by the next run: \
             {lacking} — no resumable receive (zfs receive -s, zfs send -t; zfs-fuse has neither)"
        );
        Ok(false)
    }

    async fn remains(
        &self,
        snapshot: &VolumeSnapshot,
        host: &dyn ReceivingHost,
        received: &str,
    ) -> Result<Remains> {
        let target = ReceivedId::parse(received)?;
        let snapshots = match snapshots_of(host, &target.chain).await {
            Ok(snapshots) => snapshots,
            Err(BackendError::Command(e)) if does_not_exist(&e) => return Ok(Remains::Nothing),
            Err(e) => return Err(e),
        };
        match snapshots.iter().position(|s| *s == target.snapshot()) {
            Some(at) if at + 1 == snapshots.len() => return Ok(Remains::Complete),
            Some(_) => {
                return Ok(Remains::Unusable(format!(
                    "{} is no longer the newest copy in its chain (a later backup continued it)",
                    target.snapshot()
                )))
            }
            None => {}
        }
        let Some(token) = resume_token_of(host, &target.chain).await? else {
            return Ok(Remains::Nothing);
        };
        // Read on this host, where the snapshot the token continues must be: `zfs send`
        // fails when it is gone (or is another snapshot by now).
        let decode = Cmd::new("zfs").args(["send", "-nvP", "-t"]).arg(&token);
        let text = match decode.run().await {
            Ok(out) => format!("{}\n{}", out.stdout, out.stderr),
            Err(e) => {
                return Ok(Remains::Unusable(format!(
                    "the partial receive into {} cannot be continued: {}",
                    target.chain,
                    e.stderr.trim()
                )))
            }
        };
        let Some(contents) = parse_token_contents(&text) else {
            return Ok(Remains::Unusable(format!(
                "the resume token of {} cannot be read (`zfs send -nvP -t` said {text:?})",
                target.chain
            )));
        };
        let guid = get_properties(&snapshot.id, &["guid"])
            .await?
            .and_then(|p| p.get("guid").and_then(|g| g.parse::<u64>().ok()));
        if contents.toname != snapshot.id || Some(contents.toguid) != guid {
            return Ok(Remains::Unusable(format!(
                "the partial receive into {} continues {} (guid {:#x}), not the snapshot {} \
                 (guid {})",
                target.chain,
                contents.toname,
                contents.toguid,
                snapshot.id,
                guid.map_or("unknown".to_string(), |g| format!("{g:#x}"))
            )));
        }
        Ok(Remains::Partial { token })
    }

    async fn complete(
        &self,
        snapshot: &VolumeSnapshot,
        parent: Option<StreamParent<'_>>,
        at: ReceiveAt<'_>,
        cut: CutOff<'_>,
        bwlimit: Option<u64>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64> {
        let target = ReceivedId::parse(cut.received)?;
        match cut.remains {
            Remains::Complete => Ok(0),
            Remains::Nothing => {
                stream_into_chain(snapshot, parent, at, &target, bwlimit, progress).await
            }
            Remains::Partial { token } => {
                let sender = Cmd::new("zfs").args(["send", "-t"]).arg(token);
                let receiver = at.host.command(&receiver(&target.chain, true)).await?;
                let bytes = command::pipe(&sender, &receiver, bwlimit, progress).await?;
                // A full stream's chain is sealed once it is complete (again, for an
                // incremental one: harmless).
                seal_chain(at.host, &target.chain).await?;
                Ok(bytes)
            }
            Remains::Unusable(why) => Err(BackendError::Invalid(why.clone())),
        }
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

    /// `zfs send -nvP -t TOKEN` of OpenZFS 2.1 (recorded in the guest) for a full stream
    /// cut off after 19.6 MB.
    const TOKEN_CONTENTS: &str = "resume token contents:
\tobject = 0x7
\toffset = 0x5f0000
\tbytes = 0x12b7d50
\ttoguid = 0xdd9fe0202551d39f
\ttoname = ozb4/my sql@dbsnap-20261201T161516Z-185e79
full\tozb4/my sql@dbsnap-20261201T161516Z-185e79\t66274080
size\t66274080
";

    #[test]
    fn a_resume_token_names_the_snapshot_it_continues() {
        assert_eq!(
            parse_token_contents(TOKEN_CONTENTS),
            Some(TokenContents {
                toname: "ozb4/my sql@dbsnap-20261201T161516Z-185e79".into(),
                toguid: 0xdd9f_e020_2551_d39f,
            })
        );
        let decimal = TOKEN_CONTENTS.replace("0xdd9fe0202551d39f", "15969729232348763039");
        assert_eq!(
            parse_token_contents(&decimal).map(|c| c.toguid),
            Some(0xdd9f_e020_2551_d39f)
        );
        assert_eq!(
            parse_token_contents("cannot resume send: bad token\n"),
            None
        );
        assert_eq!(
            parse_token_contents("\ttoname = a@b\n\ttoguid = zz\n"),
            None
        );
    }

    #[test]
    fn names_that_do_not_fit_are_refused() {
        let set = SnapshotName::new("dbsnap-20260101T000000Z").unwrap();
        let long = format!("bk/{}/{CONTAINER}", "x".repeat(200));
        let id = ReceivedId::new(&long, &set, 0, set.clone());
        assert!(id.check_length().unwrap_err().to_string().contains("limit"));
    }
}
