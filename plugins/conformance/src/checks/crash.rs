//! What goes wrong: a tampered journal, a run killed mid-snapshot or while mounted,
//! and nothing left behind at the end.

use super::*;

/// A journal is a file on disk: a hostile name in it never parses, and release refuses
/// snapshots that are not the named set's, above all the live volumes themselves.
pub async fn tampered_journal(ctx: &Ctx<'_>) -> Outcome {
    for bad in [
        "dbsnap-a b",
        "dbsnap-$(id)",
        "dbsnap-a;rm",
        "dbsnap-../x",
        "x",
        "dbsnap-",
    ] {
        let json = serde_json::json!({"backend": ctx.backend.name(), "name": bad, "snapshots": []});
        ensure!(
            serde_json::from_value::<SnapshotSet>(json).is_err(),
            "a journal entry named {bad:?} parsed"
        );
    }
    for dir in &ctx.fixture.data_dirs {
        seed(dir)?;
    }
    let (volumes, set) = ctx.snapshot("tamper-a").await?;

    let other = SnapshotSet {
        name: ctx.name("tamper-b"),
        ..set.clone()
    };
    ensure!(
        ctx.backend.release(&other).await.is_err(),
        "release of a set named {} accepted the snapshots of {}; it must refuse ids it did not \
         plan for that name",
        other.name,
        set.name
    );
    ensure!(
        ctx.listed_names(&volumes)
            .await?
            .contains(set.name.as_str()),
        "release of a set named {} destroyed {}",
        other.name,
        set.name
    );

    let live = SnapshotSet {
        snapshots: volumes
            .iter()
            .map(|v| VolumeSnapshot {
                volume: v.clone(),
                id: v.id.clone(),
            })
            .collect(),
        ..set.clone()
    };
    let refused = ctx.backend.release(&live).await.is_err();
    for dir in &ctx.fixture.data_dirs {
        ensure!(
            dir.join(FILES_DIR).join("plain").exists(),
            "release of a set whose snapshot ids are the live volumes DESTROYED {}",
            dir.display()
        );
    }
    ensure!(
        refused,
        "release of a set whose snapshot ids are the live volumes' ids succeeded; it must refuse"
    );
    Ok(())
}

/// The run dies at any point of `snapshot` (its future is dropped, which kills a
/// running command); cleanup from the journaled plan alone leaves nothing.
pub async fn killed_mid_snapshot(ctx: &Ctx<'_>) -> Outcome {
    let volumes = ctx.probe_all().await?;
    let workdir = ctx.workdir("killed-mid-snapshot")?;
    for ms in [0u64, 2, 10, 50, 200] {
        let set = ctx
            .plan(&volumes, &ctx.name(&format!("killed-{ms}ms")))
            .await?;
        let journal = serde_json::to_string(&set).map_err(|e| e.to_string())?;
        let _ = tokio::time::timeout(Duration::from_millis(ms), ctx.backend.snapshot(&set)).await;
        tokio::time::sleep(SETTLE).await;
        let set: SnapshotSet = serde_json::from_str(&journal).map_err(|e| e.to_string())?;
        ctx.backend
            .unmount(&set, &workdir)
            .await
            .map_err(|e| format!("unmount after a kill {ms} ms into snapshot failed: {e}"))?;
        ctx.backend
            .release(&set)
            .await
            .map_err(|e| format!("release after a kill {ms} ms into snapshot failed: {e}"))?;
        let left = ctx.listed_names(&volumes).await?;
        ensure!(
            !left.contains(set.name.as_str()),
            "{} is still listed after its release from the journal (killed {ms} ms into snapshot)",
            set.name
        );
    }
    Ok(())
}

/// The run dies during or after mount; cleanup from the journal unmounts and releases.
pub async fn killed_while_mounted(ctx: &Ctx<'_>) -> Outcome {
    for dir in &ctx.fixture.data_dirs {
        seed(dir)?;
    }
    for ms in [0u64, 20, 10_000] {
        let (volumes, set) = ctx.snapshot(&format!("mounted-{ms}ms")).await?;
        let workdir = ctx.workdir(&format!("killed-while-mounted {ms}"))?;
        let journal = serde_json::to_string(&set).map_err(|e| e.to_string())?;
        let _ = tokio::time::timeout(Duration::from_millis(ms), ctx.mount(&set, &workdir)).await;
        tokio::time::sleep(SETTLE).await;
        let set: SnapshotSet = serde_json::from_str(&journal).map_err(|e| e.to_string())?;
        ctx.backend
            .unmount(&set, &workdir)
            .await
            .map_err(|e| format!("unmount after a kill {ms} ms into mount failed: {e}"))?;
        ctx.backend
            .release(&set)
            .await
            .map_err(|e| format!("release after a kill {ms} ms into mount failed: {e}"))?;
        let mounted = mounts_under(&workdir)?;
        ensure!(
            mounted.is_empty(),
            "still mounted after cleanup: {mounted:?}"
        );
        ensure!(
            !ctx.listed_names(&volumes)
                .await?
                .contains(set.name.as_str()),
            "{} is still listed after cleanup",
            set.name
        );
    }
    Ok(())
}

/// After everything: no snapshot listed, nothing mounted, no injected command ran.
pub async fn nothing_left(ctx: &Ctx<'_>) -> Outcome {
    let volumes = ctx.probe_all().await?;
    let left = ctx.listed_names(&volumes).await?;
    ensure!(left.is_empty(), "snapshots left behind: {left:?}");
    let mounted = mounts_under(&ctx.fixture.workdir)?;
    ensure!(mounted.is_empty(), "mounts left behind: {mounted:?}");
    let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
    let places = [cwd, ctx.fixture.workdir.clone()]
        .into_iter()
        .chain(ctx.fixture.data_dirs.iter().map(|d| d.join(FILES_DIR)))
        .chain(ctx.fixture.data_dirs.iter().cloned());
    for place in places {
        ensure!(
            !place.join(PWNED).exists(),
            "{} exists: a hostile name was run as a shell command",
            place.join(PWNED).display()
        );
    }
    Ok(())
}
