//! Phase 6, `copy`: the transfer into `NAME.partial` (claimed when the run was named),
//! watched. The orchestrator does
//! not know which transfer it drives (see `transfer`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytesize::ByteSize;
use dbsnap_backend_api::{Health, SnapshotBackend, SnapshotSet, Volume};

use super::mount::Mounted;
use super::pace::Pacing;
use super::plan::Plan;
use super::prepare::free_space;
use crate::destination::{Destination, Partial};
use crate::error::{fail, Class};
use crate::journal::Journal;
use crate::progress::Progress;
use crate::transfer::{Copied, Source, Target, Transfer};

/// The partial backup, filled.
pub struct Filled {
    pub partial: Partial,
    pub copied: Copied,
}

/// The transfer and what sets its rate.
pub struct Moving<'a> {
    pub transfer: &'a dyn Transfer,
    pub pacing: &'a mut Pacing,
}

pub async fn copy(
    plan: &Plan,
    mounted: &Mounted,
    moving: Moving<'_>,
    dest: &dyn Destination,
    partial: Partial,
    backend: &dyn SnapshotBackend,
    journal: &mut Journal,
) -> anyhow::Result<Filled> {
    let Moving { transfer, pacing } = moving;
    let frozen = &mounted.frozen;
    let resumed_from = match transfer.resumes() {
        true => dest.resume_partial(&partial, journal).await?,
        false => None,
    };
    if let Some(from) = &resumed_from {
        tracing::info!(
            "resuming the partial backup {from} that an interrupted run left at {}",
            dest.location().display()
        );
    }
    let progress = Progress::new(frozen.data_bytes);
    let copied_bytes = AtomicU64::new(0);
    let report_progress = |bytes| {
        copied_bytes.store(bytes, Ordering::Relaxed);
        progress.set(bytes)
    };
    let moved = || copied_bytes.load(Ordering::Relaxed);
    let show_pace = |rate| progress.set_pace(rate);
    let throttle = pacing.throttle.clone();
    let paced = transfer.paced();
    let from = Source {
        set: &frozen.set,
        layout: &frozen.layout,
        read_paths: &mounted.read_paths,
    };
    let into = Target {
        partial: &partial,
        journal,
        progress: &report_progress,
        throttle: &throttle,
        resumed_from,
    };
    let copied = tokio::select! {
        copied = transfer.copy(from, into) => copied?,
        failure = watch_snapshot(plan, backend, &frozen.set, &frozen.volumes) => return Err(failure),
        never = pacing.steer(&moved, &show_pace), if paced => never,
    };
    progress.finish();
    let stats = &copied.stats;
    let sent = !copied.stored.is_empty();
    tracing::info!(
        "{} {} ({} written){} in {:.1} s",
        if sent { "sent" } else { "copied" },
        ByteSize::b(stats.bytes).display().iec(),
        ByteSize::b(stats.bytes_written).display().iec(),
        if sent {
            String::new()
        } else {
            format!(" in {} files", stats.files)
        },
        stats.duration_ms as f64 / 1000.0
    );
    Ok(Filled { partial, copied })
}

/// Runs beside the copy and returns (an error) only if the copy must stop: a
/// snapshotted filesystem is running out of space (a full filesystem crashes the
/// live server, so the snapshot must go), or the backend reports the snapshot lost.
async fn watch_snapshot(
    plan: &Plan,
    backend: &dyn SnapshotBackend,
    set: &SnapshotSet,
    volumes: &[Volume],
) -> anyhow::Error {
    let mut warned = false;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        match free_space(volumes) {
            Ok(spaces) => {
                if let Some(f) = spaces
                    .iter()
                    .find(|f| f.free_percent < plan.backends.min_free_percent)
                {
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
