//! Phase 1, `prepare`: connect, read the layout, map paths to volumes, choose the lock
//! mode, check privileges and free space. Holds no lock; everything that can fail
//! slowly fails here.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use bytesize::ByteSize;
use dbsnap_backend_api::{SnapshotBackend, Volume};
use mysql_async::Conn;
use serde::Serialize;

use super::plan::Plan;
use super::window::{DbLocker, Locker};
use crate::db::lock_mode::{self, Choice, ModeFacts};
use crate::db::{coordinates, server, Layout, Server};
use crate::error::{backend_error, fail, Class};
use crate::journal::{Journal, Resource};
use crate::manifest::ServerRecord;

/// Everything learned before the lock, and the server connection that will take it.
pub struct Prepared {
    pub survey: Survey,
    pub locker: Box<dyn Locker>,
}

/// What preparing learned about the server and its storage.
pub struct Survey {
    pub server: ServerRecord,
    pub layout: Layout,
    pub volumes: Vec<Volume>,
    /// Whether the backend snapshots all volumes at one instant.
    pub atomic: bool,
    /// The lock mode, and why.
    pub lock: Choice,
    /// Whether the server replicates from a source (as far as the user may see).
    pub is_replica: bool,
    pub free_space: Vec<FreeSpace>,
    /// Bytes in the server's directories: what the copy will move.
    pub data_bytes: u64,
}

/// Free space on the filesystem of one volume.
#[derive(Debug, Clone, Serialize)]
pub struct FreeSpace {
    pub volume: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub free_percent: f64,
}

pub async fn prepare(plan: &Plan, backend: &dyn SnapshotBackend) -> anyhow::Result<Prepared> {
    let started = Instant::now();
    if which::which("rsync").is_err() {
        return Err(fail(
            Class::Transfer,
            "rsync is not installed: install it (apt-get install rsync / dnf install rsync)",
        ));
    }
    let (server, mut conn) = Server::connect(&plan.credentials).await?;
    tracing::info!(
        "connected to {} ({}) as {}",
        server.hostname,
        server.version,
        server.target()
    );
    let mut layout = server::layout(&mut conn, &server.version).await?;
    layout.canonicalize().map_err(|e| {
        fail(
            Class::Layout,
            format!("{e}. Check the server's configuration"),
        )
    })?;

    let roots = layout.copy_roots();
    let probed = backend.probe(&roots).await.map_err(backend_error)?;
    let (volumes, atomic) = (probed.volumes, probed.atomic);
    let granted = server::privileges(&mut conn).await?;
    let (lock, is_replica) = choose_lock(plan, &server, &mut conn, &granted, atomic).await?;
    check_privileges(plan, &mut conn, &granted, &lock, &layout).await?;
    let free_space = free_space(&volumes)?;
    check_free_space(plan, &free_space)?;

    let data_bytes = data_bytes(&roots, &volumes);
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        "preflight: {} director{} on {} volume(s), {}",
        roots.len(),
        if roots.len() == 1 { "y" } else { "ies" },
        volumes.len(),
        ByteSize::b(data_bytes).display().iec()
    );
    let survey = Survey {
        server: ServerRecord {
            version: server.version.clone(),
            hostname: server.hostname.clone(),
            datadir: layout.datadir.clone(),
            binlog_basename: layout.binlog_basename.clone(),
        },
        layout,
        volumes,
        atomic,
        lock,
        is_replica,
        free_space,
        data_bytes,
    };
    Ok(Prepared {
        survey,
        locker: Box::new(DbLocker { server, conn }),
    })
}

/// The lock mode for this server (and whether it is a replica, which the lock's
/// coordinates depend on).
async fn choose_lock(
    plan: &Plan,
    server: &Server,
    conn: &mut Conn,
    granted: &[String],
    atomic: bool,
) -> anyhow::Result<(Choice, bool)> {
    let facts = ModeFacts {
        version: server.version.clone(),
        non_transactional: server::non_transactional_tables(conn).await?,
        all_tables_visible: server::sees_every_table(granted),
        atomic_snapshot: atomic,
        is_replica: coordinates::is_replica(conn, &server.version).await?,
        read_only: server::read_only(conn).await?,
    };
    let lock = lock_mode::choose(plan.lock.requested, &facts, plan.force).map_err(|e| {
        let class = match e.needs_grant {
            true => Class::Privileges,
            false => Class::Config,
        };
        fail(class, e.message)
    })?;
    tracing::info!("lock mode {}: {}", lock.mode, lock.reason);
    Ok((lock, facts.is_replica))
}

async fn check_privileges(
    plan: &Plan,
    conn: &mut Conn,
    granted: &[String],
    lock: &Choice,
    layout: &Layout,
) -> anyhow::Result<()> {
    let missing = server::missing_privileges(
        granted,
        lock.mode,
        layout.binlog_basename.is_some(),
        plan.lock.long_queries,
    );
    if missing.is_empty() {
        return Ok(());
    }
    let user = server::current_user(conn)
        .await
        .unwrap_or_else(|_| "<the backup user>".into());
    Err(fail(
        Class::Privileges,
        format!(
            "the database user {user} lacks {} (needed for lock mode {}). Grant it with: GRANT {} ON *.* TO {user};",
            missing.join(" and "),
            lock.mode,
            missing.join(", "),
        ),
    ))
}

fn check_free_space(plan: &Plan, free_space: &[FreeSpace]) -> anyhow::Result<()> {
    let floor = plan.backends.min_free_percent;
    for f in free_space {
        if f.free_percent < floor {
            return Err(fail(
                Class::Layout,
                format!(
                    "the filesystem holding {} has only {:.1} % free (floor: [snapshot] min_free_percent = {}). \
                     A snapshot pins old blocks while the copy runs; a full filesystem crashes the \
                     server. Free space first",
                    f.volume, f.free_percent, floor
                ),
            ));
        }
        if f.free_percent < plan.backends.warn_free_percent {
            tracing::warn!(
                "the filesystem holding {} has only {:.1} % free; the copy is aborted if it drops below {} %",
                f.volume,
                f.free_percent,
                floor
            );
        }
    }
    Ok(())
}

pub fn free_space(volumes: &[Volume]) -> anyhow::Result<Vec<FreeSpace>> {
    volumes
        .iter()
        .map(|v| {
            let s = nix::sys::statvfs::statvfs(&v.root)
                .with_context(|| format!("statvfs {}", v.root.display()))?;
            let frag = s.fragment_size() as u64;
            let total = s.blocks() as u64 * frag;
            let free = s.blocks_available() as u64 * frag;
            Ok(FreeSpace {
                volume: v.root.display().to_string(),
                free_bytes: free,
                total_bytes: total,
                free_percent: if total == 0 {
                    100.0
                } else {
                    free as f64 * 100.0 / total as f64
                },
            })
        })
        .collect()
}

/// Apparent size of the server's directories, including the volumes mounted inside
/// them (e.g. a ZFS child dataset for the binlogs): the walk stays on one filesystem,
/// and the copy reads each such volume on its own.
fn data_bytes(roots: &[PathBuf], volumes: &[Volume]) -> u64 {
    let nested = volumes
        .iter()
        .map(|v| &v.root)
        .filter(|v| roots.iter().any(|r| v.starts_with(r) && *v != r));
    crate::destination::tree_bytes(roots.iter().chain(nested).map(PathBuf::as_path), true)
}

/// Snapshots named like ours that neither the journal nor a record (kept snapshot,
/// stream parent) knows: an earlier run lost its journal. Worth a warning, never an
/// automatic delete.
pub async fn warn_about_unknown_snapshots(
    backend: &dyn SnapshotBackend,
    volumes: &[Volume],
    journal: &Journal,
    state_dir: &Path,
) {
    let Ok(sets) = backend.list(volumes).await else {
        return;
    };
    for set in sets {
        let kept = crate::kept::is_kept(state_dir, &set.name)
            || crate::transfer::chain::is_parent(state_dir, &set.name)
            || crate::transfer::resume::is_resumable(state_dir, &set.name);
        let known = kept
            || journal.entries().iter().any(|e| match &e.resource {
                Resource::Snapshot { set: s } | Resource::Mount { set: s, .. } => {
                    s.name == set.name
                }
                Resource::Partial { .. }
                | Resource::RemotePartial { .. }
                | Resource::Pulled { .. }
                | Resource::Received { .. }
                | Resource::Scratch { .. }
                | Resource::Fetched { .. }
                | Resource::ResticRun { .. } => false,
            });
        if !known {
            tracing::warn!(
                "found snapshot {} ({}) that no dbsnap journal records; it pins disk space. Remove it if it is not needed",
                set.name,
                set.snapshots.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
    }
}
