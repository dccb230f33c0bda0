//! Native streams (`[backup] method = "btrfs-send"`, `"zfs-send"`, or whatever stream
//! the backend names): the backend sends each snapshot as a stream and the destination
//! rebuilds a complete read-only copy from it, incrementally from the parent chain
//! (see [`super::chain`]). The receiving side is this host or, for an ssh destination,
//! the backup host: the destination is then the stream's [`ReceivingHost`], and the
//! receiver runs there over the run's ssh connection.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use async_trait::async_trait;
use dbsnap_backend_api::{
    BackendError, LocalHost, NativeStream, ReceiveAt, ReceivingHost, SnapshotBackend, SnapshotSet,
    StreamParent,
};

use super::chain::Parent;
use super::resume::{self, Found, Resumable};
use super::{Copied, Finish, Source, Target, Transfer, TransferMethod, TransferStats};
use crate::destination::{Destination, Partial};
use crate::error::{fail, Class};
use crate::journal::{Journal, Resource};
use crate::manifest::StoredVolume;

/// A backup by the backend's stream, from `parent` when the chain holds.
pub struct StreamTransfer<'a> {
    pub stream: &'a dyn NativeStream,
    pub backend: &'a dyn SnapshotBackend,
    pub dest: &'a dyn Destination,
    pub parent: Option<Parent>,
    /// Why this stream is full although a chain existed.
    pub full_because: Option<String>,
    pub bwlimit: Option<bytesize::ByteSize>,
    pub needed_bytes: u64,
    /// Whether a stream cut off part-way can be continued by the next run (see
    /// [`resume`]).
    pub resumable: bool,
    /// Interrupted runs' streams: the one this backup completes first, and records to
    /// release.
    pub found: Found,
    pub state_dir: PathBuf,
    pub datadir: PathBuf,
}

impl StreamTransfer<'_> {
    /// Where the stream is received: this host, or the ssh destination's host.
    fn host(&self) -> &dyn ReceivingHost {
        match self.dest.remote() {
            Some(remote) => remote,
            None => &LocalHost,
        }
    }
}

#[async_trait]
impl Transfer for StreamTransfer<'_> {
    fn describe(&self) -> String {
        match (&self.found.interrupted, &self.parent) {
            (Some(i), _) => format!(
                "{}, completing the stream of interrupted backup {}, then incremental from it",
                self.stream.method(),
                i.record.backup
            ),
            (None, Some(p)) => format!(
                "{}, incremental from backup {}",
                self.stream.method(),
                p.backup
            ),
            (None, None) => format!("{}, full stream", self.stream.method()),
        }
    }

    fn needed_bytes(&self) -> u64 {
        self.needed_bytes
    }

    async fn copy(&self, from: Source<'_>, into: Target<'_>) -> anyhow::Result<Copied> {
        let Target {
            partial,
            journal,
            progress,
            ..
        } = into;
        if let Some(remote) = self.dest.remote() {
            remote.receive_into(partial, journal)?;
        }
        let host = self.host();
        for dropped in &self.found.dropped {
            tracing::warn!(
                "not resuming the stream of interrupted backup {}: {}; releasing what it left",
                dropped.record.backup,
                dropped.why
            );
            resume::retire(&self.state_dir, &dropped.record, self.backend, host)
                .await
                .with_context(|| {
                    format!(
                        "releasing what interrupted backup {} left",
                        dropped.record.backup
                    )
                })?;
        }
        let at = ReceiveAt {
            host,
            dir: &partial.dir,
            resumable: self.resumable,
        };
        let bwlimit = self.bwlimit.map(|b| b.as_u64());
        let started = Instant::now();
        let (completed, parent, resumed_from) = match &self.found.interrupted {
            Some(interrupted) => {
                tracing::info!(
                    "resuming the {} stream of backup {}, cut off when its run was interrupted",
                    self.stream.method(),
                    interrupted.record.backup
                );
                let completed = interrupted
                    .complete(self.stream, at, bwlimit, progress)
                    .await
                    .map_err(|e| stream_failed(self.dest, e, true))
                    .with_context(|| {
                        format!(
                            "completing the stream of interrupted backup {} (if this keeps \
                             failing, `dbsnap cleanup` releases what it left and the next \
                             backup starts without it)",
                            interrupted.record.backup
                        )
                    })?;
                let parent = interrupted.as_parent();
                (
                    completed,
                    Some(parent),
                    Some(interrupted.record.backup.clone()),
                )
            }
            None => (0, self.parent.clone(), None),
        };
        let ids = plan(self.stream, from.set, parent.as_ref(), at).await?;
        // A resuming run's own stream is not made resumable (see `resume`).
        let record = (self.resumable && resumed_from.is_none()).then(|| Resumable {
            set: from.set.clone(),
            backup: partial.name.clone(),
            received: ids.clone(),
            parent: parent.clone(),
            dest: self.dest.location().to_path_buf(),
            datadir: self.datadir.clone(),
            method: self.stream.method().into(),
            remote: self.dest.remote().map(|r| r.journaled()),
            created_at: chrono::Utc::now(),
        });
        if let Some(record) = &record {
            record.write(&self.state_dir)?;
        }
        let streams = Streams {
            stream: self.stream,
            dest: self.dest,
            set: from.set,
            parent: parent.as_ref(),
            ids: &ids,
            partial,
            at,
            bwlimit,
            kept: record.is_some(),
        };
        let report = |n| progress(completed + n);
        let (sent, stored) = match streams.send(journal, &report).await {
            Ok(done) => done,
            Err(e) => {
                if let Some(record) = &record {
                    resume::hand_over(record, journal)?;
                }
                return Err(e);
            }
        };
        if record.is_some() {
            // Every stream arrived: the journal's entries are all the run needs again.
            resume::forget(&self.state_dir, &from.set.name)?;
        }
        let base = match &self.found.interrupted {
            Some(interrupted) => interrupted.record.parent.as_ref().map(|p| p.backup.clone()),
            None => parent.as_ref().map(|p| p.backup.clone()),
        };
        let stats = TransferStats {
            method: TransferMethod::Stream(self.stream.method().into()),
            base,
            parent_snapshot: parent.as_ref().map(|p| p.set.name.to_string()),
            full_because: self.full_because.clone(),
            bytes: completed + sent,
            bytes_written: completed + sent,
            duration_ms: started.elapsed().as_millis() as u64,
            resumed_from,
            ..TransferStats::default()
        };
        Ok(Copied { stats, stored })
    }

    async fn finish(&self, mut done: Finish<'_>) -> anyhow::Result<()> {
        let received = done.manifest.stored.iter().map(|s| s.id.clone()).collect();
        done.keep_snapshot_as_parent(self.stream.method(), received)
            .await?;
        if let Some(interrupted) = &self.found.interrupted {
            // Its copies were only the steps towards this backup's.
            let record = &interrupted.record;
            match resume::retire(done.state_dir, record, done.backend, self.host()).await {
                Ok(()) => tracing::info!(
                    "released snapshot {} and the copies of interrupted backup {} (this backup \
                     continued them)",
                    record.set.name,
                    record.backup
                ),
                Err(e) => tracing::warn!(
                    "could not release what interrupted backup {} left: {e:#}; `dbsnap cleanup` \
                     releases it",
                    record.backup
                ),
            }
        }
        Ok(())
    }
}

/// The id of each volume's received copy, decided before anything is received.
async fn plan(
    stream: &dyn NativeStream,
    set: &SnapshotSet,
    parent: Option<&Parent>,
    at: ReceiveAt<'_>,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for (index, snapshot) in set.snapshots.iter().enumerate() {
        let from = parent.map(|p| StreamParent {
            snapshot: &p.set.snapshots[index],
            received: &p.received[index],
        });
        let id = stream
            .plan_received(snapshot, index, from, at)
            .await
            .map_err(|e| fail(Class::Transfer, e.to_string()))?;
        ids.push(id);
    }
    Ok(ids)
}

/// This run's streams: every snapshot of `set` into the partial, incrementally from
/// `parent` if given, each as the id planned for it.
struct Streams<'a> {
    stream: &'a dyn NativeStream,
    dest: &'a dyn Destination,
    set: &'a SnapshotSet,
    parent: Option<&'a Parent>,
    ids: &'a [String],
    partial: &'a Partial,
    at: ReceiveAt<'a>,
    bwlimit: Option<u64>,
    /// Whether what a cut-off stream delivered stays for the next run.
    kept: bool,
}

impl Streams<'_> {
    /// Send them; returns the stream bytes and the received copies.
    async fn send(
        &self,
        journal: &mut Journal,
        progress: &(dyn Fn(u64) + Sync),
    ) -> anyhow::Result<(u64, Vec<StoredVolume>)> {
        let partial = self.partial.dir.as_path();
        let remote = self.dest.remote().map(|r| r.journaled());
        let mut sent = 0u64;
        let mut stored = Vec::new();
        for (index, (snapshot, id)) in self.set.snapshots.iter().zip(self.ids).enumerate() {
            let from = self.parent.map(|p| StreamParent {
                snapshot: &p.set.snapshots[index],
                received: &p.received[index],
            });
            journal.record(
                &self.partial.name,
                Resource::Received {
                    backend: self.set.backend.clone(),
                    id: id.clone(),
                    partial: partial.to_path_buf(),
                    remote: remote.clone(),
                },
            )?;
            let so_far = sent;
            let report = |n| progress(so_far + n);
            let sending = self
                .stream
                .send(snapshot, from, self.at, id, self.bwlimit, &report);
            let received = match remote {
                Some(_) => sending.await,
                // Written back as it goes (see `writeback`): on this host dbsnap can.
                None => tokio::select! {
                    received = sending => received,
                    never = super::writeback::flush_every(partial, super::writeback::EVERY) => never,
                },
            }
            .map_err(|e| stream_failed(self.dest, e, self.kept))?;
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
        Ok((sent, stored))
    }
}

/// A stream that failed: over ssh, an ssh client that exited with 255 (its own status
/// for a lost connection) is the backup host's failure (exit code 14). `kept`: what it
/// delivered stays for the next run to resume.
fn stream_failed(dest: &dyn Destination, e: BackendError, kept: bool) -> anyhow::Error {
    let text = e.to_string();
    let next = match kept {
        true => "what it received is kept, and the next run resumes the stream",
        false => "what it received is deleted (the stream cannot be resumed), and the next run sends it again",
    };
    match dest.remote() {
        Some(remote) if text.contains("exit status: 255") => fail(
            Class::Remote,
            format!(
                "the connection to the backup host {} was lost during the stream: {next}. \
                 Check the network ({text})",
                remote.target().display_host()
            ),
        ),
        _ => fail(Class::Transfer, text),
    }
}
