//! The backup flow, phase by phase, in the order it runs:
//!
//! ```text
//! prepare ─► freeze (lock ─► snapshot ─► unlock) ─► mount ─► copy ─► publish ─► release ─► verify
//! (no lock)  └── the only window where writers wait ──┘
//! ```
//!
//! Each phase is a function from what the previous one handed over to what the next
//! one needs ([`plan::Plan`] → [`prepare::Prepared`] → [`freeze::Frozen`] →
//! [`mount::Mounted`] → [`copy::Filled`] → the published [`Manifest`]); `backup` and
//! `snapshot create` are short compositions of the same phases. This is the only
//! module that knows the order.
//!
//! Every resource is recorded in the journal before it is created and forgotten after
//! it is released; when a phase fails the caller replays the journal
//! (`release::release_all`), so no phase needs its own error-path cleanup — except the
//! lock, which is released inside `freeze`, first.

pub mod copy;
pub mod freeze;
pub mod mount;
pub mod pace;
pub mod plan;
pub mod prepare;
pub mod publish;
#[cfg(test)]
mod tests;
pub mod window;

use std::path::PathBuf;

use anyhow::Context;
use bytesize::ByteSize;
use chrono::Utc;
use dbsnap_backend_api::{SnapshotBackend, SnapshotName};

use crate::destination::Destination;
use crate::error::{backend_error, fail, Class};
use crate::hooks::Phase;
use crate::journal::{Journal, Resource};
use crate::kept::KeptSnapshot;
use crate::manifest::Manifest;
use crate::transfer::{self, Facts, Transfer};
pub use pace::Pacing;
pub use plan::{CopyPlan, Plan};
pub use prepare::{prepare, FreeSpace, Prepared, Survey};

/// The whole backup. On error, what was created is left in the journal for the caller
/// to release.
pub async fn backup(
    plan: &Plan,
    copy: &CopyPlan,
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
) -> anyhow::Result<Manifest> {
    let started_at = Utc::now();
    let prepared = prepare(plan, backend).await?;
    let transfer = plan_transfer(plan, copy, backend, &prepared.survey).await?;
    let published = Published {
        dest: copy.dest.as_ref(),
        transfer: transfer.as_ref(),
        verify: copy.verify,
        pacing: Pacing::prepare(plan, copy, transfer.paced()).await,
    };
    backup_prepared(plan, published, prepared, started_at, backend, journal).await
}

/// Where a backup goes and how: decided before anything is created.
pub struct Published<'a> {
    pub dest: &'a dyn Destination,
    pub transfer: &'a dyn Transfer,
    pub verify: bool,
    /// The copy's rate, and what steers it (`[backup] pace`).
    pub pacing: Pacing,
}

/// The backup's phases after `prepare`.
pub async fn backup_prepared(
    plan: &Plan,
    to: Published<'_>,
    prepared: Prepared,
    started_at: chrono::DateTime<Utc>,
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
) -> anyhow::Result<Manifest> {
    let Published {
        dest,
        transfer,
        verify,
        mut pacing,
    } = to;
    let volumes = &prepared.survey.volumes;
    prepare::warn_about_unknown_snapshots(backend, volumes, journal, &plan.state_dir).await;
    let partial = dest.create_partial(started_at, journal).await?;
    let name = partial.name.clone();
    let hook_env = |extra: Option<(&'static str, String)>| {
        let mut env = vec![
            ("DBSNAP_NAME", name.clone()),
            ("DBSNAP_STATUS", "running".to_string()),
        ];
        env.extend(extra);
        env
    };
    plan.hooks.run(Phase::PreLock, &hook_env(None)).await?;

    // Unique per run, not only per destination: another state_dir backing up the same
    // server in the same second must never take (and then release) this run's snapshot.
    let snapshot_name = SnapshotName::new(format!("dbsnap-{name}-{}", run_id()))?;
    let frozen = freeze::freeze(plan, prepared, backend, journal, &name, &snapshot_name).await?;
    let mounted = mount::mount(plan, frozen, backend, journal).await?;
    let frozen_datadir = mount::frozen_datadir(&mounted)?.display().to_string();
    let env = hook_env(Some(("DBSNAP_SNAPSHOT_PATH", frozen_datadir)));
    plan.hooks.run(Phase::PostSnapshot, &env).await?;

    let moving = copy::Moving {
        transfer,
        pacing: &mut pacing,
    };
    let filled = copy::copy(plan, &mounted, moving, dest, partial, backend, journal).await?;
    let manifest = publish::publish(&mounted, filled, started_at, dest, journal).await?;
    let how = publish::Releasing {
        transfer,
        dest,
        spread: pacing.for_release(&plan.credentials),
    };
    publish::release(plan, &mounted, &manifest, how, backend, journal).await?;

    // Verified before post_backup, so that a hook shipping the backup elsewhere only
    // ever sees one that restores.
    let manifest = match verify {
        true => publish::verify(&plan.state_dir, dest, journal, manifest).await?,
        false => manifest,
    };
    let published = [
        ("DBSNAP_NAME", name.clone()),
        ("DBSNAP_STATUS", "ok".to_string()),
        ("DBSNAP_BACKUP_PATH", manifest.path.display().to_string()),
    ];
    plan.hooks
        .run(Phase::PostBackup, &published)
        .await
        .with_context(|| {
            format!(
                "the backup {} is complete and kept",
                manifest.path.display()
            )
        })?;
    Ok(manifest)
}

/// `snapshot create`: the backup's phases up to `freeze` (and `mount`, with
/// `--mount`), then the snapshot is kept instead of copied. Its record (see `kept`) is
/// written before it leaves the journal, so an interruption at any point leaves it
/// either journaled (released by cleanup) or kept.
pub async fn snapshot_create(
    plan: &Plan,
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
    label: Option<&str>,
    keep_mounted: Option<&KeepMounted>,
) -> anyhow::Result<KeptSnapshot> {
    let created_at = Utc::now();
    let name = kept_name(created_at, label)?;
    let prepared = prepare(plan, backend).await?;
    let kept = Kept {
        name,
        label,
        created_at,
        keep_mounted,
    };
    snapshot_prepared(plan, kept, prepared, backend, journal).await
}

/// What `snapshot create` keeps, and how.
pub struct Kept<'a> {
    pub name: SnapshotName,
    pub label: Option<&'a str>,
    pub created_at: chrono::DateTime<Utc>,
    pub keep_mounted: Option<&'a KeepMounted>,
}

/// `snapshot create`'s phases after `prepare`.
pub async fn snapshot_prepared(
    plan: &Plan,
    kept: Kept<'_>,
    prepared: Prepared,
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
) -> anyhow::Result<KeptSnapshot> {
    let Kept {
        name,
        label,
        created_at,
        keep_mounted,
    } = kept;
    let volumes = &prepared.survey.volumes;
    prepare::warn_about_unknown_snapshots(backend, volumes, journal, &plan.state_dir).await;
    if crate::kept::is_kept(&plan.state_dir, &name) {
        return Err(fail(
            Class::Config,
            format!("a kept snapshot {name} exists already; wait a second or choose another label"),
        ));
    }
    // Another state_dir may keep a snapshot of this name: taking it would fail, and
    // releasing the failed run would remove the other's.
    let existing = backend.list(volumes).await.map_err(backend_error)?;
    if existing.iter().any(|s| s.name == name) {
        return Err(fail(
            Class::Config,
            format!(
                "a snapshot {name} exists already (kept through another state_dir?); wait a \
                 second or choose another label"
            ),
        ));
    }
    let frozen = freeze::freeze(plan, prepared, backend, journal, name.as_str(), &name).await?;
    let (frozen, mount, mount_resource) = match keep_mounted {
        Some(k) => {
            let mounted = mount::mount(plan, frozen, backend, journal).await?;
            let exposed = mount::expose(&mounted, &k.dir)?;
            let resource = mounted.resource();
            (mounted.frozen, Some(exposed), Some(resource))
        }
        None => (frozen, None, None),
    };
    let kept = KeptSnapshot {
        name,
        label: label.map(str::to_string),
        created_at,
        set: frozen.set.clone(),
        server: frozen.server,
        lock: frozen.lock,
        coordinates: frozen.coordinates,
        paths: frozen.layout.dirs,
        mount,
        expires_at: keep_mounted.and_then(|k| k.ttl).map(|ttl| created_at + ttl),
    };
    kept.write(&plan.state_dir)?;
    if let Some(resource) = mount_resource {
        journal.forget(&resource)?;
    }
    journal.forget(&Resource::Snapshot { set: frozen.set })?;
    tracing::info!("kept snapshot {}", kept.name);
    Ok(kept)
}

/// `snapshot create --mount DIR [--ttl]`: where to show a kept snapshot, and for how
/// long (not to be confused with the user's `[hooks]`).
pub struct KeepMounted {
    /// An existing, empty directory.
    pub dir: PathBuf,
    pub ttl: Option<chrono::Duration>,
}

/// A short random identity for one run, for names that must not collide with another
/// run's.
fn run_id() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// A kept snapshot's name: `dbsnap-STAMP[-LABEL]`.
fn kept_name(at: chrono::DateTime<Utc>, label: Option<&str>) -> anyhow::Result<SnapshotName> {
    if let Some(label) = label {
        dbsnap_backend_api::validate_name("label", label)
            .map_err(|e| fail(Class::Config, e.to_string()))?;
    }
    let stamp = at.format("%Y%m%dT%H%M%SZ");
    let name = match label {
        Some(l) => format!("dbsnap-{stamp}-{l}"),
        None => format!("dbsnap-{stamp}"),
    };
    SnapshotName::new(name).map_err(|e| fail(Class::Config, e.to_string()))
}

/// How this backup's data will travel, decided before the lock, with the destination
/// checked and its room for it.
pub async fn plan_transfer<'a>(
    plan: &Plan,
    copy: &'a CopyPlan,
    backend: &'a dyn SnapshotBackend,
    prepared: &Survey,
) -> anyhow::Result<Box<dyn Transfer + 'a>> {
    let dest = copy.dest.as_ref();
    let server = crate::destination::ServerFiles {
        dirs: &prepared.layout.dirs,
        volumes: &prepared.volumes,
        force: plan.force,
    };
    dest.check(&server).await?;
    let facts = Facts {
        datadir: &prepared.layout.datadir,
        volumes: &prepared.volumes,
        data_bytes: prepared.data_bytes,
    };
    let chosen = transfer::choose(
        copy.transfer_settings(),
        backend,
        dest,
        &plan.state_dir,
        facts,
    )
    .await?;
    check_room(dest, chosen.needed_bytes(), prepared.data_bytes).await?;
    Ok(chosen)
}

async fn check_room(dest: &dyn Destination, needed: u64, data_bytes: u64) -> anyhow::Result<()> {
    let Some(free) = dest.free_bytes().await? else {
        // Failing closed would make every remote repository unusable; a store that
        // fills up fails the backup cleanly (restic writes no snapshot).
        tracing::warn!(
            "{} cannot tell how much room it has; this backup may add up to {}",
            dest.location().display(),
            ByteSize::b(needed).display().iec()
        );
        return Ok(());
    };
    if free >= needed {
        return Ok(());
    }
    let what = match needed == data_bytes {
        true => format!("the data is {}", ByteSize::b(data_bytes).display().iec()),
        false => format!(
            "this incremental stream may need {} (the data is {})",
            ByteSize::b(needed).display().iec(),
            ByteSize::b(data_bytes).display().iec()
        ),
    };
    Err(fail(
        Class::Destination,
        format!(
            "the destination {} has {} free but {what}: free space there or choose another [backup] dest",
            dest.location().display(),
            ByteSize::b(free).display().iec(),
        ),
    ))
}
