//! `btrfs send | btrfs receive`: the native stream. The destination must be a btrfs
//! filesystem; each backup holds a read-only subvolume per volume, rebuilt by `btrfs
//! receive` into a complete copy, so any backup can be restored or deleted on its own.
//! An incremental stream (`send -p PARENT`) needs the parent snapshot on the source and
//! its received copy somewhere on the destination filesystem.

use std::path::Path;

use async_trait::async_trait;
use dbsnap_backend_api::command::{self, Cmd};
use dbsnap_backend_api::{
    BackendError, NativeStream, Received, Result, StreamParent, VolumeSnapshot, SNAPSHOT_PREFIX,
};

use crate::{is_subvolume, Btrfs};

#[async_trait]
impl NativeStream for Btrfs {
    fn method(&self) -> &'static str {
        "btrfs-send"
    }

    async fn check_destination(&self, dest: &Path) -> Result<()> {
        let fs = nix::sys::statfs::statfs(dest)
            .map_err(|e| BackendError::io(format!("statfs {}", dest.display()), e.into()))?;
        if fs.filesystem_type() != nix::sys::statfs::BTRFS_SUPER_MAGIC {
            return Err(BackendError::Invalid(format!(
                "the destination {} is not on btrfs: `btrfs receive` needs a btrfs filesystem \
                 there. Use [backup] method = \"rsync\" (or \"auto\"), or a destination on btrfs",
                dest.display()
            )));
        }
        Ok(())
    }

    /// `btrfs receive` names the copy after the sent snapshot, inside `into`.
    fn plan_received(
        &self,
        snapshot: &VolumeSnapshot,
        _index: usize,
        _parent: Option<StreamParent<'_>>,
        into: &Path,
    ) -> Result<String> {
        let name = Path::new(&snapshot.id).file_name().ok_or_else(|| {
            BackendError::Invalid(format!("{} is not a snapshot path", snapshot.id))
        })?;
        Ok(into.join(name).display().to_string())
    }

    async fn send(
        &self,
        snapshot: &VolumeSnapshot,
        parent: Option<StreamParent<'_>>,
        into: &Path,
        received: &str,
        bwlimit: Option<u64>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Received> {
        let source = Path::new(&snapshot.id);
        let mut sender = Cmd::new("btrfs").arg("send");
        if let Some(parent) = parent {
            // `btrfs receive` finds the parent's received copy by its UUID.
            sender = sender.arg("-p").arg(&parent.snapshot.id);
        }
        let sender = sender.arg(source);
        let receiver = Cmd::new("btrfs").arg("receive").arg(into);
        let stream_bytes = command::pipe(&sender, &receiver, bwlimit, progress).await?;
        Ok(Received {
            id: received.to_string(),
            path: received.into(),
            stream_bytes,
        })
    }

    async fn delete_received(&self, id: &str) -> Result<()> {
        let received = Path::new(id);
        let ours = received
            .file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.starts_with(SNAPSHOT_PREFIX));
        if !ours {
            return Err(BackendError::Invalid(format!(
                "refusing to delete {id}: it is not a copy dbsnap received"
            )));
        }
        if !is_subvolume(received) {
            return Ok(());
        }
        Cmd::new("btrfs")
            .args(["subvolume", "delete"])
            .arg(received)
            .run()
            .await?;
        Ok(())
    }
}
