//! Native streams (`[backup] method = "btrfs-send"`, `"zfs-send"`, or whatever stream
//! the backend names): the backend sends each snapshot as a stream and the destination
//! rebuilds a complete read-only copy from it, incrementally from the parent chain
//! (see [`super::chain`]). The receiving side is this host or, for an ssh destination,
//! the backup host: the destination is then the stream's [`ReceivingHost`], and the
//! receiver runs there over the run's ssh connection.

use std::time::Instant;

use async_trait::async_trait;
use dbsnap_backend_api::{
    BackendError, LocalHost, NativeStream, ReceiveAt, ReceivingHost, SnapshotSet, StreamParent,
};

use super::chain::{self, Parent};
use super::{Copied, Finish, Source, Target, Transfer, TransferMethod, TransferStats};
use crate::destination::Destination;
use crate::error::{fail, Class};
use crate::journal::Resource;
use crate::manifest::StoredVolume;

/// A backup by the backend's stream, from `parent` when the chain holds.
pub struct StreamTransfer<'a> {
    pub stream: &'a dyn NativeStream,
    pub dest: &'a dyn Destination,
    pub parent: Option<Parent>,
    /// Why this stream is full although a chain existed.
    pub full_because: Option<String>,
    pub bwlimit: Option<bytesize::ByteSize>,
    pub needed_bytes: u64,
}

#[async_trait]
impl Transfer for StreamTransfer<'_> {
    fn describe(&self) -> String {
        match &self.parent {
            Some(p) => format!(
                "{}, incremental from backup {}",
                self.stream.method(),
                p.backup
            ),
            None => format!("{}, full stream", self.stream.method()),
        }
    }

    fn needed_bytes(&self) -> u64 {
        self.needed_bytes
    }

    async fn copy(&self, from: Source<'_>, into: Target<'_>) -> anyhow::Result<Copied> {
        let mut copied = send(
            self.stream,
            self.dest,
            from.set,
            self.parent.as_ref(),
            into,
            self.bwlimit,
        )
        .await?;
        copied.stats.full_because = self.full_because.clone();
        Ok(copied)
    }

    async fn finish(&self, done: Finish<'_>) -> anyhow::Result<()> {
        let parent = Parent {
            set: done.set.clone(),
            backup: done.manifest.name.clone(),
            received: done.manifest.stored.iter().map(|s| s.id.clone()).collect(),
            dest: done.dest.to_path_buf(),
            datadir: done.manifest.server.datadir.clone(),
            method: self.stream.method().into(),
            created_at: done.manifest.started_at,
        };
        chain::keep_as_parent(
            done.state_dir,
            done.backend,
            done.journal,
            done.workdir,
            &parent,
        )
        .await
        .map_err(|e| done.after_publish(e, "keeping its snapshot as the next base"))?;
        chain::retire_parents(
            done.state_dir,
            done.backends,
            done.dest,
            &parent.datadir,
            Some(&parent.set.name),
        )
        .await;
        Ok(())
    }
}

/// Send every snapshot of `set` into the partial, incrementally from `parent` if given.
async fn send(
    stream: &dyn NativeStream,
    dest: &dyn Destination,
    set: &SnapshotSet,
    parent: Option<&Parent>,
    into: Target<'_>,
    bwlimit: Option<bytesize::ByteSize>,
) -> anyhow::Result<Copied> {
    let Target {
        partial: claimed,
        journal,
        progress,
        ..
    } = into;
    let run = claimed.name.as_str();
    let partial = claimed.dir.as_path();
    let remote = dest.remote();
    let host: &dyn ReceivingHost = match remote {
        Some(remote) => remote,
        None => &LocalHost,
    };
    if let Some(remote) = remote {
        remote.receive_into(claimed, journal)?;
    }
    let at = ReceiveAt { host, dir: partial };
    let started = Instant::now();
    let mut sent = 0u64;
    let mut stored = Vec::new();
    for (index, snapshot) in set.snapshots.iter().enumerate() {
        let from = parent.map(|p| StreamParent {
            snapshot: &p.set.snapshots[index],
            received: &p.received[index],
        });
        let so_far = sent;
        let id = stream
            .plan_received(snapshot, index, from, at)
            .await
            .map_err(|e| stream_failed(dest, e))?;
        journal.record(
            run,
            Resource::Received {
                backend: set.backend.clone(),
                id: id.clone(),
                partial: partial.to_path_buf(),
                remote: remote.map(|r| r.journaled()),
            },
        )?;
        let report = |n| progress(so_far + n);
        let sending = stream.send(
            snapshot,
            from,
            at,
            &id,
            bwlimit.map(|b| b.as_u64()),
            &report,
        );
        let received = match remote {
            Some(_) => sending.await,
            // Written back as it goes (see `writeback`): on this host dbsnap can.
            None => tokio::select! {
                received = sending => received,
                never = super::writeback::flush_every(partial, super::writeback::EVERY) => never,
            },
        }
        .map_err(|e| stream_failed(dest, e))?;
        sent += received.stream_bytes;
        stored.push(StoredVolume {
            root: snapshot.volume.root.clone(),
            path: received
                .path
                .strip_prefix(partial)
                .unwrap_or(&received.path)
                .to_path_buf(),
            id: received.id,
        });
    }
    let stats = TransferStats {
        method: TransferMethod::Stream(stream.method().into()),
        base: parent.map(|p| p.backup.clone()),
        parent_snapshot: parent.map(|p| p.set.name.to_string()),
        bytes: sent,
        bytes_written: sent,
        duration_ms: started.elapsed().as_millis() as u64,
        ..TransferStats::default()
    };
    Ok(Copied { stats, stored })
}

/// A stream that failed: over ssh, an ssh client that exited with 255 (its own status
/// for a lost connection) is the backup host's failure (exit code 14).
fn stream_failed(dest: &dyn Destination, e: BackendError) -> anyhow::Error {
    let text = e.to_string();
    match dest.remote() {
        Some(remote) if text.contains("exit status: 255") => fail(
            Class::Remote,
            format!(
                "the connection to the backup host {} was lost during the stream: what it \
                 received is deleted (a stream cannot be resumed), and the next run sends it \
                 again. Check the network ({text})",
                remote.target().display_host()
            ),
        ),
        _ => fail(Class::Transfer, text),
    }
}
