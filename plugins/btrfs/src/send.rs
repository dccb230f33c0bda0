//! `btrfs send | btrfs receive`: the native stream. The destination must be a btrfs
//! filesystem (on this host or on a backup host: every command of the receiving side
//! runs through the [`ReceivingHost`]); each backup holds a read-only subvolume per
//! volume, rebuilt by `btrfs receive` into a complete copy, so any backup can be
//! restored or deleted on its own. An incremental stream (`send -p PARENT`) needs the
//! parent snapshot on the source and its received copy somewhere on the destination
//! filesystem (`btrfs receive` finds it by its UUID).

use std::path::Path;

use async_trait::async_trait;
use dbsnap_backend_api::command::{self, Cmd};
use dbsnap_backend_api::{
    BackendError, NativeStream, ReceiveAt, Received, ReceivingHost, Result, StreamParent,
    VolumeSnapshot, SNAPSHOT_PREFIX,
};

use crate::{Btrfs, SUBVOLUME_ROOT_INODE};

/// Whether `path` on `host` is a subvolume (the root directory of one has inode 256);
/// `false` when it does not exist.
async fn is_subvolume_on(host: &dyn ReceivingHost, path: &Path) -> Result<bool> {
    let stat = Cmd::new("stat").args(["-c", "%F:%i", "--"]).arg(path);
    match host.run(&stat).await {
        Ok(out) => Ok(out.stdout.trim() == format!("directory:{SUBVOLUME_ROOT_INODE}")),
        Err(e) if e.stderr.contains("No such file or directory") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl NativeStream for Btrfs {
    fn method(&self) -> &'static str {
        "btrfs-send"
    }

    fn receiving_programs(&self) -> &'static [&'static str] {
        &["btrfs"]
    }

    async fn check_destination(&self, host: &dyn ReceivingHost, dest: &Path) -> Result<()> {
        let out = host
            .run(&Cmd::new("stat").args(["-f", "-c", "%T", "--"]).arg(dest))
            .await?;
        let fstype = out.stdout.trim();
        if fstype != "btrfs" {
            return Err(BackendError::Invalid(format!(
                "the destination {} is not on btrfs (it is on {fstype}): `btrfs receive` needs \
                 a btrfs filesystem there. Use [backup] method = \"rsync\" (or \"auto\"), or a \
                 destination on btrfs",
                dest.display()
            )));
        }
        Ok(())
    }

    /// `btrfs receive` names the copy after the sent snapshot, inside the partial.
    async fn plan_received(
        &self,
        snapshot: &VolumeSnapshot,
        _index: usize,
        _parent: Option<StreamParent<'_>>,
        at: ReceiveAt<'_>,
    ) -> Result<String> {
        let name = Path::new(&snapshot.id).file_name().ok_or_else(|| {
            BackendError::Invalid(format!("{} is not a snapshot path", snapshot.id))
        })?;
        Ok(at.dir.join(name).display().to_string())
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
        let source = Path::new(&snapshot.id);
        let mut sender = Cmd::new("btrfs").arg("send");
        if let Some(parent) = parent {
            sender = sender.arg("-p").arg(&parent.snapshot.id);
        }
        let sender = sender.arg(source);
        let receiver = at
            .host
            .command(&Cmd::new("btrfs").arg("receive").arg(at.dir))
            .await?;
        let stream_bytes = command::pipe(&sender, &receiver, bwlimit, progress).await?;
        Ok(Received {
            id: received.to_string(),
            path: received.into(),
            stream_bytes,
        })
    }

    async fn delete_received(&self, host: &dyn ReceivingHost, id: &str) -> Result<()> {
        let received = Path::new(id);
        // Absolute: never taken for an option either.
        let ours = received.is_absolute()
            && received
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(SNAPSHOT_PREFIX));
        if !ours {
            return Err(BackendError::Invalid(format!(
                "refusing to delete {id}: it is not a copy dbsnap received"
            )));
        }
        if !is_subvolume_on(host, received).await? {
            return Ok(());
        }
        host.run(
            &Cmd::new("btrfs")
                .args(["subvolume", "delete"])
                .arg(received),
        )
        .await?;
        Ok(())
    }
}
