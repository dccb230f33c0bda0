//! `spread_release`, where a backend offers it: steps that are made but never taken
//! change nothing; taken, they end, change nothing on the origin, and leave a set that
//! `release` destroys.

use std::os::unix::fs::MetadataExt;

use super::{check_frozen, frozen, seed, Ctx, Outcome, FILES_DIR};

/// Larger than any backend's bar for spreading (btrfs: 256 MiB), preallocated so that
/// it costs no writing.
const LARGE: u64 = 320 << 20;
/// What each step may free.
const BUDGET: u64 = 16 << 20;

pub(super) async fn spread_release(ctx: &Ctx<'_>) -> Outcome {
    let volumes = ctx.probe_all().await?;
    let never_taken = ctx.plan(&volumes, &ctx.name("spread-never-taken")).await?;
    ctx.backend
        .spread_release(&never_taken)
        .await
        .map_err(|e| format!("spread_release of a never-taken set failed: {e}"))?;

    let dir = &ctx.fixture.data_dirs[0];
    seed(dir)?;
    let large = dir.join(FILES_DIR).join("large");
    let file = std::fs::File::create(&large).map_err(|e| format!("creating {large:?}: {e}"))?;
    let preallocated =
        nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, LARGE as i64);
    if preallocated.is_err() {
        // The storage cannot preallocate (or has no room): a small snapshot, which a
        // backend may or may not spread.
        file.set_len(0).map_err(|e| e.to_string())?;
    }
    let (_, set) = ctx.snapshot("spread").await?;
    let unused = ctx
        .backend
        .spread_release(&set)
        .await
        .map_err(|e| format!("spread_release of {} failed: {e}", set.name))?;
    if unused.is_some() {
        drop(unused);
        let workdir = ctx.workdir("spread")?;
        let paths = ctx.mount(&set, &workdir).await?;
        check_frozen(&frozen(dir, &paths)?)
            .map_err(|e| format!("steps made but never taken changed the snapshot: {e}"))?;
        ctx.backend
            .unmount(&set, &workdir)
            .await
            .map_err(|e| format!("unmount failed: {e}"))?;
    }
    let steps = ctx
        .backend
        .spread_release(&set)
        .await
        .map_err(|e| format!("spread_release of {} failed: {e}", set.name))?;
    let Some(mut steps) = steps else {
        return Ok(());
    };
    let total = steps.total_bytes();
    let most = total / BUDGET + 10_000;
    let (mut taken, mut freed) = (0, 0);
    while let Some(bytes) = steps
        .step(BUDGET)
        .await
        .map_err(|e| format!("a release step of {} failed: {e}", set.name))?
    {
        freed += bytes;
        taken += 1;
        ensure!(
            taken <= most,
            "{taken} steps of {BUDGET} bytes and not done with {total} bytes"
        );
    }
    ensure!(
        freed <= total,
        "the steps freed {freed} bytes of the {total} they said they would free at most"
    );
    let origin = std::fs::metadata(&large).map_err(|e| e.to_string())?;
    ensure!(
        preallocated.is_err() || origin.len() == LARGE && origin.blocks() * 512 >= LARGE,
        "the release's steps changed the origin's {large:?}: {} bytes long now",
        origin.len()
    );
    ctx.backend
        .release(&set)
        .await
        .map_err(|e| format!("release after the steps failed: {e}"))?;
    ensure!(
        !ctx.listed_names(&volumes)
            .await?
            .contains(set.name.as_str()),
        "list still shows {} after its steps and release",
        set.name
    );
    Ok(())
}
