//! The backup flow, phase by phase, in the order it runs:
//!
//! ```text
//! preflight ─► lock ─► snapshot ─► unlock ─► mount ─► transfer ─► finalize ─► release ─► verify
//! (no lock)    └── the only window where writers wait ──┘
//! ```
//!
//! This is the only module that knows the order. Every resource is recorded in the
//! journal before it is created and forgotten after it is released; when a phase fails
//! the caller replays the journal (see `commands::cleanup`), so no phase needs its own
//! error-path cleanup — except the lock, which is released right here, first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytesize::ByteSize;
use chrono::Utc;
use dbsnap_backend_api::{
    Health, NativeStream, ReadPath, SnapshotBackend, SnapshotName, SnapshotSet, Volume,
};
use mysql_async::Conn;
use serde::Serialize;

use crate::config::Config;
use crate::db::lock::{self, LockSettings};
use crate::db::lock_mode::{self, Choice, ModeFacts};
use crate::db::{coordinates, server, stall_guard, Coordinates, Layout, LockRecord, Server};
use crate::destination::Destination;
use crate::error::{backend_error, fail, Class};
use crate::hooks::Phase;
use crate::journal::{Journal, Resource};
use crate::kept::KeptSnapshot;
use crate::manifest::{Manifest, ServerRecord, SnapshotRecord, StoredVolume, VolumeRecord, FORMAT};
use crate::progress::Progress;
use crate::transfer::incremental::{self, Basis};
use crate::transfer::{self, native, CopyItem, TransferStats};

/// Everything learned before the lock, without taking it.
pub struct Preflight {
    pub server: Server,
    /// The preflight connection; during the lock window it is the watchdog.
    pub conn: Conn,
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

/// Phase 1: connect, read the layout, map paths to volumes, choose the lock mode,
/// check privileges and free space. Holds no lock; everything that can fail slowly
/// fails here. `force` accepts a lock mode that cannot be consistent for this server.
pub async fn preflight(
    config: &Config,
    backend: &dyn SnapshotBackend,
    force: bool,
) -> anyhow::Result<Preflight> {
    let started = Instant::now();
    if which::which("rsync").is_err() {
        return Err(fail(
            Class::Transfer,
            "rsync is not installed: install it (apt-get install rsync / dnf install rsync)",
        ));
    }
    let credentials = config.mysql.credentials()?;
    let (server, mut conn) = Server::connect(&credentials).await?;
    tracing::info!(
        "connected to {} ({}) as {}",
        server.hostname,
        server.version,
        server.target()
    );

    let mut layout = server::layout(&mut conn).await?;
    layout.canonicalize().map_err(|e| {
        fail(
            Class::Layout,
            format!("{e}. Check the server's configuration"),
        )
    })?;

    let roots = layout.copy_roots();
    let volumes = backend.probe(&roots).await.map_err(backend_error)?;
    let atomic = backend.snapshot_is_atomic(&volumes);

    let facts = ModeFacts {
        version: server.version.clone(),
        non_transactional: server::non_transactional_tables(&mut conn).await?,
        atomic_snapshot: atomic,
        is_replica: coordinates::is_replica(&mut conn, &server.version).await?,
        read_only: server::read_only(&mut conn).await?,
    };
    let is_replica = facts.is_replica;
    let lock =
        lock_mode::choose(config.mysql.lock, &facts, force).map_err(|e| fail(Class::Config, e))?;
    tracing::info!("lock mode {}: {}", lock.mode, lock.reason);

    let granted = server::privileges(&mut conn).await?;
    let missing = server::missing_privileges(
        &granted,
        lock.mode,
        layout.binlog_basename.is_some(),
        config.mysql.long_queries,
    );
    if !missing.is_empty() {
        let user = server::current_user(&mut conn)
            .await
            .unwrap_or_else(|_| "<the backup user>".into());
        return Err(fail(
            Class::Privileges,
            format!(
                "the database user {user} lacks {} (needed for lock mode {}). Grant it with: GRANT {} ON *.* TO {user};",
                missing.join(" and "),
                lock.mode,
                missing.join(", "),
            ),
        ));
    }

    let free_space = free_space(&volumes)?;
    for f in &free_space {
        if f.free_percent < config.snapshot.min_free_percent {
            return Err(fail(
                Class::Layout,
                format!(
                    "the filesystem holding {} has only {:.1} % free (floor: [snapshot] min_free_percent = {}). \
                     A snapshot pins old blocks while the copy runs; a full filesystem crashes the \
                     server. Free space first",
                    f.volume, f.free_percent, config.snapshot.min_free_percent
                ),
            ));
        }
        if f.free_percent < config.snapshot.warn_free_percent {
            tracing::warn!(
                "the filesystem holding {} has only {:.1} % free; the copy is aborted if it drops below {} %",
                f.volume,
                f.free_percent,
                config.snapshot.min_free_percent
            );
        }
    }
    let data_bytes = data_bytes(&roots, &volumes);
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        "preflight: {} director{} on {} volume(s), {}",
        roots.len(),
        if roots.len() == 1 { "y" } else { "ies" },
        volumes.len(),
        ByteSize::b(data_bytes).display().iec()
    );
    Ok(Preflight {
        server,
        conn,
        layout,
        volumes,
        atomic,
        lock,
        is_replica,
        free_space,
        data_bytes,
    })
}

/// How this backup's data travels, decided before the lock: rsync, or the backend's
/// stream from its parent (or in full, and why); and the room that needs.
pub struct TransferPlan<'a> {
    pub stream: Option<&'a dyn NativeStream>,
    pub parent: Option<native::Parent>,
    pub full_because: Option<String>,
    /// Free space the destination needs (see [`native::room_for_increment`]).
    pub needed_bytes: u64,
}

/// Choose the transfer and check the destination has room for it.
pub async fn plan_transfer<'a>(
    config: &Config,
    backend: &'a dyn SnapshotBackend,
    dest: &dyn Destination,
    pre: &Preflight,
) -> anyhow::Result<TransferPlan<'a>> {
    let backup = config.backup()?;
    dest.check(&pre.layout.dirs).await?;
    let stream = native::choose(backup.method, backend, dest.location()).await?;
    let (parent, full_because) = match stream {
        Some(stream) => {
            stream_parent(
                config,
                backend,
                dest,
                stream,
                &pre.layout.datadir,
                &pre.volumes,
            )
            .await?
        }
        None => (None, None),
    };
    let needed_bytes = match (stream, &parent) {
        (Some(stream), Some(_)) => {
            native::room_for_increment(dest, &pre.layout.datadir, stream.method(), pre.data_bytes)
                .await?
        }
        _ => pre.data_bytes,
    };
    let free = dest.free_bytes().await?;
    if free < needed_bytes {
        let what = match needed_bytes == pre.data_bytes {
            true => format!(
                "the data is {}",
                ByteSize::b(pre.data_bytes).display().iec()
            ),
            false => format!(
                "this incremental stream may need {} (the data is {})",
                ByteSize::b(needed_bytes).display().iec(),
                ByteSize::b(pre.data_bytes).display().iec()
            ),
        };
        return Err(fail(
            Class::Destination,
            format!(
                "the destination {} has {} free but {what}: free space there or choose another [backup] dest",
                dest.location().display(),
                ByteSize::b(free).display().iec(),
            ),
        ));
    }
    Ok(TransferPlan {
        stream,
        parent,
        full_because,
        needed_bytes,
    })
}

/// Phases 2–4: lock, snapshot and coordinates, unlock. Nothing else happens while
/// writers wait. The lock is released before any error from inside the window is
/// returned.
pub async fn lock_and_snapshot(
    config: &Config,
    pre: &mut Preflight,
    backend: &dyn SnapshotBackend,
    set: &SnapshotSet,
) -> anyhow::Result<(LockRecord, Coordinates)> {
    let settings = LockSettings {
        wait: config.mysql.lock_wait_timeout,
        attempts: config.mysql.lock_attempts,
    };
    let max_hold = config.mysql.max_lock_hold;
    let mode = pre.lock.mode;
    let lock_conn = pre.server.open().await?;
    // A snapshot commits the filesystem's dirty data; writing it out now, before the
    // lock, keeps that work out of the window where writers wait.
    sync_filesystems(&pre.volumes);
    stall_guard::guard(
        &mut pre.conn,
        mode,
        config.mysql.long_queries,
        config.mysql.long_query_threshold,
    )
    .await?;

    let mut held = lock::acquire(
        mode,
        &pre.server.version,
        lock_conn,
        &mut pre.conn,
        settings,
    )
    .await?;
    // ── writers wait from here ──
    let coordinates = held.coordinates(pre.is_replica).await;
    let snapshot = match coordinates {
        Ok(_) => Some(
            tokio::time::timeout(
                max_hold.saturating_sub(held.held_for()),
                backend.snapshot(set),
            )
            .await,
        ),
        Err(_) => None,
    };
    let released = held.release(pre.lock.reason.clone()).await;
    // ── writers run again ──
    let record = released?;
    let coordinates = coordinates?;
    match snapshot {
        Some(Ok(Ok(()))) => {}
        Some(Ok(Err(e))) => return Err(backend_error(e).context("taking the snapshot (the lock was released)")),
        Some(Err(_)) | None => {
            return Err(fail(
                Class::Lock,
                format!(
                    "the snapshot did not finish within [mysql] max_lock_hold = {}; the lock was released \
                     after {:.0} ms and the snapshot is discarded. Check the storage ({} backend) for \
                     what made it slow",
                    humantime::format_duration(max_hold),
                    record.hold_ms,
                    backend.name()
                ),
            ))
        }
    }
    tracing::info!(
        wait_ms = record.wait_ms,
        hold_ms = record.hold_ms,
        attempts = record.attempts,
        "{} released; writers waited {:.1} ms for the lock and {:.1} ms while it was held",
        record.mode,
        record.wait_ms,
        record.hold_ms
    );
    Ok((record, coordinates))
}

/// The whole backup. On error, what was created is left in the journal for the caller
/// to release.
pub async fn backup(
    config: &Config,
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
    force: bool,
) -> anyhow::Result<Manifest> {
    let started_at = Utc::now();
    let dest = crate::destination::open(config.backup()?, &config.state_dir)?;
    let dest = dest.as_ref();

    // 1. preflight
    let mut pre = preflight(config, backend, force).await?;
    let transfer = plan_transfer(config, backend, dest, &pre).await?;
    let stream = transfer.stream;
    warn_about_unknown_snapshots(backend, &pre.volumes, journal, &config.state_dir).await;
    let name = dest.unused_name(started_at).await?;
    let snapshot_name = SnapshotName::new(format!("dbsnap-{name}"))?;
    let set = backend
        .plan(&pre.volumes, &snapshot_name)
        .await
        .map_err(backend_error)?;

    let run_env = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("DBSNAP_NAME", name.clone()),
            ("DBSNAP_STATUS", "running".to_string()),
        ];
        env.extend_from_slice(extra);
        env
    };
    config.hooks.run(Phase::PreLock, &run_env(&[])).await?;

    // 2–4. lock, snapshot, unlock
    journal.record(&name, Resource::Snapshot { set: set.clone() })?;
    let (lock_record, coordinates) = lock_and_snapshot(config, &mut pre, backend, &set).await?;
    let _ = pre.conn.disconnect().await;

    // 5. mount
    let workdir = config.state_dir.join("runs").join(&name);
    journal.record(
        &name,
        Resource::Mount {
            set: set.clone(),
            workdir: workdir.clone(),
        },
    )?;
    std::fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
    let read_paths = backend.mount(&set, &workdir).await.map_err(backend_error)?;
    let datadir_snapshot = frozen_path(&read_paths, &pre.layout.datadir)?;
    config
        .hooks
        .run(
            Phase::PostSnapshot,
            &run_env(&[(
                "DBSNAP_SNAPSHOT_PATH",
                datadir_snapshot.display().to_string(),
            )]),
        )
        .await?;

    // 6. transfer into NAME.partial
    let partial = dest.create_partial(&name, journal).await?;
    let progress = Progress::new(pre.data_bytes);
    let report_progress = |bytes| progress.set(bytes);
    let (stats, stored) = tokio::select! {
        copied = async {
            match stream {
                Some(stream) => {
                    let (mut stats, stored) = native::send(
                        stream,
                        &set,
                        transfer.parent.as_ref(),
                        native::Target {
                            partial: &partial.dir,
                            journal,
                            run: &name,
                        },
                        config.backup()?.bwlimit,
                        &report_progress,
                    )
                    .await?;
                    stats.full_because = transfer.full_because.clone();
                    Ok((stats, stored))
                }
                None => {
                    let items = plan_copy(&pre.layout, &read_paths, &partial.dir)?;
                    copy_with_rsync(config, dest, &pre.layout.datadir, &items, &partial.dir, &report_progress).await
                }
            }
        } => copied?,
        failure = watch_snapshot(config, backend, &set, &pre.volumes) => return Err(failure),
    };
    progress.finish();
    tracing::info!(
        "{} {} ({} written){} in {:.1} s",
        if stream.is_some() { "sent" } else { "copied" },
        ByteSize::b(stats.bytes).display().iec(),
        ByteSize::b(stats.bytes_written).display().iec(),
        if stream.is_some() {
            String::new()
        } else {
            format!(" in {} files", stats.files)
        },
        stats.duration_ms as f64 / 1000.0
    );

    // 7. finalize: manifest, then the atomic rename that publishes the backup
    let manifest = Manifest {
        format: FORMAT,
        name: name.clone(),
        path: PathBuf::new(),
        dbsnap_version: env!("CARGO_PKG_VERSION").into(),
        started_at,
        finished_at: Utc::now(),
        server: ServerRecord {
            version: pre.server.version.text.clone(),
            hostname: pre.server.hostname.clone(),
            datadir: pre.layout.datadir.clone(),
            binlog_basename: pre.layout.binlog_basename.clone(),
        },
        lock: lock_record,
        coordinates,
        snapshot: SnapshotRecord {
            backend: backend.name().into(),
            name: set.name.to_string(),
            atomic: pre.atomic,
            volumes: set
                .snapshots
                .iter()
                .map(|s| VolumeRecord {
                    volume: s.volume.id.clone(),
                    root: s.volume.root.clone(),
                    fstype: s.volume.fstype.clone(),
                    snapshot: s.id.clone(),
                })
                .collect(),
        },
        paths: pre.layout.dirs.clone(),
        transfer: stats,
        stored,
        verification: None,
    };
    let manifest = dest.publish(partial, manifest, journal).await?.manifest;
    let final_dir = manifest.path.clone();
    tracing::info!("backup complete: {}", final_dir.display());

    // 8. release, or keep the snapshot as the base of the next stream
    let after_publish = |what: &str| {
        format!(
            "the backup {} is complete, but {what} failed; run `dbsnap cleanup`",
            final_dir.display()
        )
    };
    let parent = match stream {
        Some(stream) => {
            keep_as_parent(
                config,
                backend,
                journal,
                &set,
                &workdir,
                native::Parent {
                    set: set.clone(),
                    backup: name.clone(),
                    received: manifest.stored.iter().map(|s| s.id.clone()).collect(),
                    dest: dest.location().to_path_buf(),
                    datadir: pre.layout.datadir.clone(),
                    method: stream.method().into(),
                    created_at: started_at,
                },
            )
            .await
            .with_context(|| after_publish("keeping its snapshot as the next base"))?;
            Some(&set.name)
        }
        None => {
            crate::release::release(backend, journal, &set, &workdir)
                .await
                .with_context(|| after_publish("releasing the snapshot"))?;
            None
        }
    };
    native::retire_parents(
        &config.state_dir,
        &config.snapshot,
        dest.location(),
        &pre.layout.datadir,
        parent,
    )
    .await;

    // 9. verify (`[backup] verify`): before post_backup, so that a hook shipping the
    // backup elsewhere only ever sees one that restores.
    let manifest = match config.backup()?.verify {
        true => verify_published(journal, &manifest).await?,
        false => manifest,
    };
    let published = [
        ("DBSNAP_NAME", name.clone()),
        ("DBSNAP_STATUS", "ok".to_string()),
        ("DBSNAP_BACKUP_PATH", final_dir.display().to_string()),
    ];
    config
        .hooks
        .run(Phase::PostBackup, &published)
        .await
        .with_context(|| format!("the backup {} is complete and kept", final_dir.display()))?;
    Ok(manifest)
}

/// Prove the published backup restores (`dbsnap verify`, its own journaled step). A
/// failed verification is an error; the backup stays, marked failed.
async fn verify_published(journal: &mut Journal, manifest: &Manifest) -> anyhow::Result<Manifest> {
    let verified = crate::verify::verify(journal, &manifest.path)
        .await
        .with_context(|| {
            format!(
                "backup {} is complete but could not be verified",
                manifest.name
            )
        })?;
    if verified
        .verification
        .as_ref()
        .is_some_and(|v| v.verdict == crate::verify::Verdict::Failed)
    {
        return Err(crate::verify::failed_error(&verified, &verified.path));
    }
    Ok(verified)
}

/// Phase 6 with rsync: from the mounted snapshot into `partial/files/...`, built from
/// the previous backup when `[backup] incremental` allows.
async fn copy_with_rsync(
    config: &Config,
    dest: &dyn Destination,
    datadir: &Path,
    items: &[CopyItem],
    partial: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<(TransferStats, Vec<StoredVolume>)> {
    let backup = config.backup()?;
    let basis = match backup.incremental {
        true => incremental::prepare(dest, partial, datadir).await?,
        false => Basis::Full,
    };
    if let Some(base) = basis.base() {
        tracing::info!("incremental copy from backup {base} ({})", basis.method());
    }
    for item in items {
        std::fs::create_dir_all(&item.to)
            .with_context(|| format!("creating {}", item.to.display()))?;
    }
    let link_dest = basis.link_dest(items, partial);
    let mut stats = transfer::copy(
        items,
        basis.writes(),
        link_dest.as_deref(),
        backup.bwlimit,
        progress,
    )
    .await?;
    stats.method = basis.method().into();
    stats.base = basis.base();
    Ok((stats, Vec::new()))
}

/// The base of this backup's stream: the previous backup's snapshot when the chain
/// holds; none, and why, when it does not (the stream is then full).
async fn stream_parent(
    config: &Config,
    backend: &dyn SnapshotBackend,
    dest: &dyn Destination,
    stream: &dyn NativeStream,
    datadir: &Path,
    volumes: &[Volume],
) -> anyhow::Result<(Option<native::Parent>, Option<String>)> {
    let found =
        native::find_parent(&config.state_dir, dest, datadir, stream, backend, volumes).await?;
    Ok(match found {
        Ok(Some(parent)) => {
            tracing::info!(
                "incremental {} from backup {} (snapshot {})",
                stream.method(),
                parent.backup,
                parent.set.name
            );
            (Some(parent), None)
        }
        Ok(None) => (None, None),
        Err(why) => {
            tracing::warn!("{why}: this backup is a full stream, the chain starts again");
            (None, Some(why))
        }
    })
}

/// Unmount the published backup's snapshot but keep it: the next stream is computed
/// against it. Its parent record is written before it leaves the journal, so an
/// interruption leaves it either journaled (released by cleanup) or recorded.
async fn keep_as_parent(
    config: &Config,
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
    set: &SnapshotSet,
    workdir: &Path,
    parent: native::Parent,
) -> anyhow::Result<()> {
    crate::release::unmount(backend, journal, set, workdir).await?;
    parent.write(&config.state_dir)?;
    journal.forget(&Resource::Snapshot { set: set.clone() })?;
    tracing::info!(
        "kept snapshot {} as the base of the next incremental stream",
        set.name
    );
    Ok(())
}

/// `snapshot create`: the backup's phases 1–4, then the snapshot is kept instead of
/// copied. Its record (see `kept`) is written before it leaves the journal, so an
/// interruption at any point leaves it either journaled (released by cleanup) or kept.
pub async fn snapshot_create(
    config: &Config,
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
    label: Option<&str>,
    force: bool,
    hook: Option<&Hook>,
) -> anyhow::Result<KeptSnapshot> {
    let created_at = Utc::now();
    if let Some(label) = label {
        dbsnap_backend_api::validate_name("label", label)
            .map_err(|e| fail(Class::Config, e.to_string()))?;
    }

    // 1. preflight
    let mut pre = preflight(config, backend, force).await?;
    warn_about_unknown_snapshots(backend, &pre.volumes, journal, &config.state_dir).await;
    let stamp = created_at.format("%Y%m%dT%H%M%SZ");
    let name = match label {
        Some(l) => format!("dbsnap-{stamp}-{l}"),
        None => format!("dbsnap-{stamp}"),
    };
    let name = SnapshotName::new(name).map_err(|e| fail(Class::Config, e.to_string()))?;
    if crate::kept::is_kept(&config.state_dir, &name) {
        return Err(fail(
            Class::Config,
            format!("a kept snapshot {name} exists already; wait a second or choose another label"),
        ));
    }
    let set = backend
        .plan(&pre.volumes, &name)
        .await
        .map_err(backend_error)?;

    // 2–4. lock, snapshot, unlock
    journal.record(name.as_str(), Resource::Snapshot { set: set.clone() })?;
    let (lock, coordinates) = lock_and_snapshot(config, &mut pre, backend, &set).await?;
    let _ = pre.conn.disconnect().await;

    // 5. hook mode: mount, journaled like the backup's mount until the record holds it
    let mount = match hook {
        Some(hook) => {
            let workdir = config.state_dir.join("runs").join(name.as_str());
            journal.record(
                name.as_str(),
                Resource::Mount {
                    set: set.clone(),
                    workdir: workdir.clone(),
                },
            )?;
            std::fs::create_dir_all(&workdir)
                .with_context(|| format!("creating {}", workdir.display()))?;
            let read_paths = backend.mount(&set, &workdir).await.map_err(backend_error)?;
            // The backup's copy plan, laid out under DIR instead of a backup directory.
            let files = hook.dir.join(crate::manifest::FILES_DIR);
            let binds = plan_copy(&pre.layout, &read_paths, &hook.dir)?
                .into_iter()
                .map(|item| {
                    let relative = item
                        .to
                        .strip_prefix(&files)
                        .expect("plan_copy uses stored_path");
                    crate::kept::Bind {
                        path: Path::new("/").join(relative),
                        from: item.from,
                        at: hook.dir.join(relative),
                    }
                })
                .collect();
            Some(crate::kept::KeptMount {
                dir: hook.dir.clone(),
                workdir,
                binds,
            })
        }
        None => None,
    };

    // 6. keep
    let kept = KeptSnapshot {
        name,
        label: label.map(str::to_string),
        created_at,
        set: set.clone(),
        server: ServerRecord {
            version: pre.server.version.text.clone(),
            hostname: pre.server.hostname.clone(),
            datadir: pre.layout.datadir.clone(),
            binlog_basename: pre.layout.binlog_basename.clone(),
        },
        lock,
        coordinates,
        paths: pre.layout.dirs.clone(),
        mount,
        expires_at: hook.and_then(|h| h.ttl).map(|ttl| created_at + ttl),
    };
    kept.write(&config.state_dir)?;
    if let Some(m) = &kept.mount {
        journal.forget(&Resource::Mount {
            set: set.clone(),
            workdir: m.workdir.clone(),
        })?;
    }
    journal.forget(&Resource::Snapshot { set })?;
    tracing::info!("kept snapshot {}", kept.name);
    Ok(kept)
}

/// Hook mode: where to show a kept snapshot, and for how long.
pub struct Hook {
    /// An existing, empty directory.
    pub dir: PathBuf,
    pub ttl: Option<chrono::Duration>,
}

/// What to copy: each server directory, read from its frozen volume, into
/// `<backup>/files/<absolute path>`.
/// Each server directory, plus every volume mounted inside one (a ZFS child dataset is
/// not part of its parent's snapshot), parents first so that the child lands in the
/// directory its parent's copy created.
fn plan_copy(
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
fn frozen_path(read_paths: &[ReadPath], source: &Path) -> anyhow::Result<PathBuf> {
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

/// Runs beside the copy and returns (an error) only if the copy must stop: a
/// snapshotted filesystem is running out of space (a full filesystem crashes the
/// live server, so the snapshot must go), or the backend reports the snapshot lost.
async fn watch_snapshot(
    config: &Config,
    backend: &dyn SnapshotBackend,
    set: &SnapshotSet,
    volumes: &[Volume],
) -> anyhow::Error {
    let mut warned = false;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        match free_space(volumes) {
            Ok(spaces) => {
                for f in spaces {
                    if f.free_percent < config.snapshot.min_free_percent {
                        return fail(
                            Class::Snapshot,
                            format!(
                                "the filesystem holding {} fell to {:.1} % free while copying; the copy \
                                 was stopped and the snapshot released to protect the live server",
                                f.volume, f.free_percent
                            ),
                        );
                    }
                }
            }
            Err(e) => tracing::warn!("cannot read free space: {e:#}"),
        }
        match backend.health(set).await {
            Ok(Health::Ok) => {}
            Ok(Health::Warning(w)) if !warned => {
                tracing::warn!("{w}");
                warned = true;
            }
            Ok(Health::Warning(_)) => {}
            Ok(Health::Failed(why)) => {
                return fail(
                    Class::Snapshot,
                    format!("the snapshot was lost while copying: {why}; no backup was published"),
                )
            }
            Err(e) => tracing::warn!("cannot read the snapshot's health: {e}"),
        }
    }
}

/// Snapshots named like ours that neither the journal nor a kept-snapshot record
/// knows: an earlier run lost its journal. Worth a warning, never an automatic delete.
async fn warn_about_unknown_snapshots(
    backend: &dyn SnapshotBackend,
    volumes: &[Volume],
    journal: &Journal,
    state_dir: &Path,
) {
    let Ok(sets) = backend.list(volumes).await else {
        return;
    };
    for set in sets {
        let kept =
            crate::kept::is_kept(state_dir, &set.name) || native::is_parent(state_dir, &set.name);
        let known = kept
            || journal.entries().iter().any(|e| match &e.resource {
                Resource::Snapshot { set: s } | Resource::Mount { set: s, .. } => {
                    s.name == set.name
                }
                Resource::Partial { .. }
                | Resource::RemotePartial { .. }
                | Resource::Received { .. }
                | Resource::Scratch { .. } => false,
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

fn sync_filesystems(volumes: &[Volume]) {
    let started = Instant::now();
    for v in volumes {
        if let Err(e) = sync_tree(&v.root) {
            tracing::warn!(
                "flushing {} before the lock failed: {e:#}",
                v.root.display()
            );
        }
    }
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "flushed dirty data before the lock"
    );
}

/// Make the copied files durable before the rename publishes them.
fn sync_tree(dir: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(dir)?;
    nix::unistd::syncfs(&file).with_context(|| format!("syncfs {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::layout::ServerPaths;

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
