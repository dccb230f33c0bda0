//! A backup as a plain file tree: the mounted snapshot copied into
//! `NAME.partial/files/<absolute path>`, incremental from the previous backup (see
//! [`super::incremental`]), by one of two engines ([`Engine`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use dbsnap_backend_api::ReadPath;

use bytesize::ByteSize;

use super::checksums::{self, Checksums};
use super::incremental::{self, Basis};
use super::local::{self, Counters, Seed};
use super::{chain, rsync, writeback, Copied, CopyItem, Finish, Source, Target, Transfer};
use crate::config::Method;
use crate::db::Layout;
use crate::destination::Destination;
use crate::manifest::{Manifest, TransferStats};

/// Who copies the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// dbsnap's own ([`local`]): a destination on this host.
    Local,
    /// rsync: any destination rsync reaches, or `[backup] method = "rsync"`.
    Rsync,
}

/// Files in flight in the local engine: enough to keep a disk's queue busy while one
/// file waits for its writeback, few enough not to thrash a spinning disk.
const COPY_THREADS: usize = 3;

impl Engine {
    /// The one rule: the local engine wherever the destination is a directory on this
    /// host, unless rsync is asked for.
    pub fn choose(method: &Method, dest: &dyn Destination) -> Engine {
        match (method, dest.local_dir()) {
            (Method::Rsync, _) | (_, None) => Engine::Rsync,
            (_, Some(_)) => Engine::Local,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Engine::Local => "dbsnap's local copy engine",
            Engine::Rsync => "rsync",
        }
    }
}

/// A backup as a file tree.
pub struct TreeTransfer<'a> {
    pub dest: &'a dyn Destination,
    pub engine: Engine,
    pub incremental: bool,
    pub bwlimit: Option<bytesize::ByteSize>,
    pub compress: Option<crate::config::Compress>,
    pub needed_bytes: u64,
}

#[async_trait]
impl Transfer for TreeTransfer<'_> {
    fn describe(&self) -> String {
        match self.engine {
            Engine::Local => "copy".into(),
            Engine::Rsync => "rsync".into(),
        }
    }

    fn needed_bytes(&self) -> u64 {
        self.needed_bytes
    }

    fn paced(&self) -> bool {
        self.engine == Engine::Local
    }

    /// rsync continues an interrupted run's partial; the local engine starts afresh.
    fn resumes(&self) -> bool {
        self.engine == Engine::Rsync
    }

    async fn copy(&self, from: Source<'_>, into: Target<'_>) -> anyhow::Result<Copied> {
        let items = plan_copy(from.layout, from.read_paths, &into.partial.dir)?;
        match self.engine {
            Engine::Local => self.copy_locally(&from.layout.datadir, items, &into).await,
            Engine::Rsync => {
                self.copy_with_rsync(
                    &from.layout.datadir,
                    &items,
                    &into.partial.dir,
                    into.resumed_from,
                    into.progress,
                )
                .await
            }
        }
    }

    /// The snapshot is released; so are the parents a stream method left (switching
    /// back to rsync releases the kept snapshot).
    async fn finish(&self, done: Finish<'_>) -> anyhow::Result<()> {
        crate::release::release(done.backend, done.journal, done.set, done.workdir)
            .await
            .map_err(|e| done.after_publish(e, "releasing the snapshot"))?;
        chain::retire_parents(
            done.state_dir,
            done.backends,
            done.dest,
            &done.manifest.server.datadir,
            None,
        )
        .await;
        Ok(())
    }
}

impl TreeTransfer<'_> {
    /// By the local engine, on threads of its own; progress reported from here, the
    /// rate set through `into.throttle` while it runs.
    async fn copy_locally(
        &self,
        datadir: &Path,
        items: Vec<CopyItem>,
        into: &Target<'_>,
    ) -> anyhow::Result<Copied> {
        let started = Instant::now();
        let partial = &into.partial.dir;
        let basis = match self.incremental {
            true => incremental::prepare(self.dest, partial, datadir).await?,
            false => Basis::Full,
        };
        if let Some(base) = basis.base() {
            let method = basis.method_with(Engine::Local);
            tracing::info!("incremental copy from backup {base} ({method})");
        }
        for item in &items {
            std::fs::create_dir_all(&item.to)
                .with_context(|| format!("creating {}", item.to.display()))?;
        }
        let seed = match &basis {
            Basis::Full => Seed::None,
            Basis::Reflinked { .. } => Seed::Reflinked,
            Basis::Linked { .. } => Seed::Linked(
                basis
                    .link_dest(&items, partial)
                    .expect("a linked basis has link destinations"),
            ),
        };
        let counters = Arc::new(Counters::default());
        let request = local::Request {
            items,
            partial: partial.clone(),
            recheck_since: incremental::recheck_since(&basis, None),
            seed,
            threads: COPY_THREADS,
            throttle: into.throttle.clone(),
            counters: counters.clone(),
            durable: Arc::new(local::Fsync),
        };
        let (done, mut copying) = tokio::sync::oneshot::channel();
        // Dropped with this future (the copy was stopped), it stops the threads and
        // waits for them.
        let _thread = CopyThread {
            counters: counters.clone(),
            thread: Some(std::thread::spawn(move || {
                let _ = done.send(local::run(&request));
            })),
        };
        let moved = loop {
            tokio::select! {
                done = &mut copying => break done.context("the copy thread failed")??,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    (into.progress)(counters.done.load(Ordering::Relaxed));
                }
            }
        };
        (into.progress)(counters.done.load(Ordering::Relaxed));
        let stats = TransferStats {
            method: basis.method_with(Engine::Local),
            base: basis.base(),
            bytes: moved.bytes,
            bytes_written: moved.bytes_written,
            files: moved.files,
            duration_ms: started.elapsed().as_millis() as u64,
            ..Default::default()
        };
        Ok(Copied {
            stats,
            stored: Vec::new(),
        })
    }

    /// From the mounted snapshot into `partial/files/...`, built from the previous backup
    /// when `[backup] incremental` allows, with a checksum of every stored file (checked
    /// on the destination's host before publishing, when that is another host).
    async fn copy_with_rsync(
        &self,
        datadir: &Path,
        items: &[CopyItem],
        partial: &Path,
        resumed_from: Option<String>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> anyhow::Result<Copied> {
        let remote = self.dest.remote();
        let basis = match (self.incremental, remote) {
            (false, _) => Basis::Full,
            (true, None) => incremental::prepare(self.dest, partial, datadir).await?,
            (true, Some(r)) => {
                incremental::prepare_remote(r, partial, datadir, resumed_from.is_some()).await?
            }
        };
        if let Some(base) = basis.base() {
            tracing::info!("incremental copy from backup {base} ({})", basis.method());
        }
        let rsync_remote = match remote {
            Some(r) => Some(
                r.rsync_remote(
                    rsync::Side::Dest,
                    crate::config::Compress::level(self.compress),
                )
                .await?,
            ),
            None => {
                for item in items {
                    std::fs::create_dir_all(&item.to)
                        .with_context(|| format!("creating {}", item.to.display()))?;
                }
                None
            }
        };
        // A resumed partial holds what the interrupted run sent, not the base's files.
        let base_checksums = match (basis.base_path(), &resumed_from) {
            (Some(base), None) => self.base_checksums(base).await,
            _ => None,
        };
        let link_dest = basis.link_dest(items, partial);
        let options = rsync::Options {
            writes: basis.writes(),
            link_dest: link_dest.as_deref(),
            bwlimit: self.bwlimit,
            remote: rsync_remote.as_ref(),
            recheck_since: incremental::recheck_since(&basis, resumed_from.as_deref()),
        };
        let copying = checksums::copy_and_hash(items, options, partial, base_checksums, progress);
        let (mut stats, checksums, hashing) = tokio::select! {
            copied = copying => copied?,
            never = writeback::flush_every(partial, writeback::EVERY) => never,
        };
        tracing::info!(
            "checksums of {} files: {} read behind the copy, {} after it, {} kept from the base",
            checksums.0.len(),
            ByteSize::b(hashing.during_copy).display().iec(),
            ByteSize::b(hashing.after_copy).display().iec(),
            hashing.reused
        );
        match remote {
            Some(r) => r.check_checksums(partial, &checksums).await?,
            None => checksums.write(partial)?,
        }
        stats.method = basis.method_with(Engine::Rsync);
        stats.base = basis.base();
        stats.resumed_from = resumed_from;
        Ok(Copied {
            stats,
            stored: Vec::new(),
        })
    }

    /// The base backup's checksums, if it has them (older backups do not).
    async fn base_checksums(&self, base: &Path) -> Option<Checksums> {
        let found = match self.dest.remote() {
            Some(r) => r.read_checksums(base).await,
            None => Checksums::read(base),
        };
        found.unwrap_or_else(|e| {
            tracing::warn!(
                "the base backup's checksums cannot be read ({e:#}); every file is hashed"
            );
            None
        })
    }
}

/// The local engine's thread. Dropped before it finished (the copy was stopped: the
/// snapshot was lost, or dbsnap was interrupted), it is told to stop and joined at once:
/// until its threads return they hold files of the snapshot open, and the snapshot is
/// released right after (LVM refuses to remove a snapshot whose filesystem is in use).
/// A stopped copy returns within one chunk's I/O: the throttle's waits end on the
/// cancellation too.
struct CopyThread {
    counters: Arc<Counters>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for CopyThread {
    fn drop(&mut self) {
        self.counters.cancelled.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // Blocking on purpose: a drop cannot await, and nothing may read the
            // snapshot once the copy is given up.
            let _ = thread.join();
        }
    }
}

/// What to copy: each server directory, read from its frozen volume, into
/// `<backup>/files/<absolute path>`.
/// Each server directory, plus every volume mounted inside one (a ZFS child dataset is
/// not part of its parent's snapshot), parents first so that the child lands in the
/// directory its parent's copy created.
pub fn plan_copy(
    layout: &Layout,
    read_paths: &[ReadPath],
    backup_dir: &Path,
) -> anyhow::Result<Vec<CopyItem>> {
    let roots = layout.copy_roots();
    let mut sources: Vec<PathBuf> = roots.clone();
    for read in read_paths {
        let nested = roots
            .iter()
            .any(|r| read.origin_root.starts_with(r) && read.origin_root != *r);
        if nested && !sources.contains(&read.origin_root) {
            sources.push(read.origin_root.clone());
        }
    }
    sources.sort_by_key(|s| s.components().count());
    sources
        .into_iter()
        .map(|source| {
            let exclude = layout
                .runtime_files
                .iter()
                .filter_map(|f| f.strip_prefix(&source).ok().map(PathBuf::from))
                .collect();
            Ok(CopyItem {
                from: frozen_path(read_paths, &source)?,
                to: Manifest::stored_path(backup_dir, &source),
                exclude,
            })
        })
        .collect()
}

/// Where the frozen copy of the live path `source` can be read: inside the deepest
/// volume that holds it.
pub fn frozen_path(read_paths: &[ReadPath], source: &Path) -> anyhow::Result<PathBuf> {
    let read = read_paths
        .iter()
        .filter(|r| source.starts_with(&r.origin_root))
        .max_by_key(|r| r.origin_root.components().count())
        .with_context(|| format!("no snapshot covers {}", source.display()))?;
    let relative = source
        .strip_prefix(&read.origin_root)
        .expect("filtered by starts_with");
    Ok(match relative.as_os_str().is_empty() {
        true => read.frozen_root.clone(),
        false => read.frozen_root.join(relative),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::layout::ServerPaths;
    use crate::db::Layout;

    #[test]
    fn child_volumes_inside_a_server_directory_are_copied_after_their_parent() {
        let layout = Layout::from_server(
            "/tank/mysql".into(),
            ServerPaths {
                log_bin_basename: Some("/tank/mysql/binlog/bin".into()),
                pid_file: Some("/tank/mysql/db.pid".into()),
                ..Default::default()
            },
        );
        let read = |origin: &str, frozen: &str| ReadPath {
            origin_root: origin.into(),
            frozen_root: frozen.into(),
        };
        let reads = [
            read("/tank/mysql/binlog", "/run/clone/1"),
            read("/tank/mysql", "/tank/mysql/.zfs/snapshot/s"),
        ];
        let items = plan_copy(&layout, &reads, Path::new("/b/n")).unwrap();
        let pairs: Vec<(String, String)> = items
            .iter()
            .map(|i| (i.from.display().to_string(), i.to.display().to_string()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                (
                    "/tank/mysql/.zfs/snapshot/s".into(),
                    "/b/n/files/tank/mysql".into()
                ),
                ("/run/clone/1".into(), "/b/n/files/tank/mysql/binlog".into()),
            ]
        );
        assert_eq!(items[0].exclude, vec![PathBuf::from("db.pid")]);
    }

    #[test]
    fn a_directory_below_a_volume_root_is_read_from_inside_the_snapshot() {
        let layout = Layout::from_server("/srv/db/data".into(), ServerPaths::default());
        let reads = [ReadPath {
            origin_root: "/srv/db".into(),
            frozen_root: "/srv/.snaps/s.0".into(),
        }];
        let items = plan_copy(&layout, &reads, Path::new("/b/n")).unwrap();
        assert_eq!(items[0].from, PathBuf::from("/srv/.snaps/s.0/data"));
    }
}
