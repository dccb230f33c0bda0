//! `dbsnap backup`: the whole flow, then cleanup of anything a failure left.

use bytesize::ByteSize;

use crate::backends;
use crate::commands::cleanup::release_all;
use crate::config::Config;
use crate::journal::{Journal, RunLock};
use crate::orchestrator;

pub async fn run(config: &Config, json: bool) -> anyhow::Result<()> {
    config.backup()?;
    let backend = backends::open(&config.snapshot)?;
    let lock = RunLock::acquire(&config.state_dir)?;
    let mut journal = Journal::open(&config.state_dir, &lock)?;
    if !journal.entries().is_empty() {
        tracing::warn!("an earlier run was interrupted; releasing what it left first");
        release_all(config, &mut journal).await?;
    }

    let outcome =
        super::until_signal(orchestrator::backup(config, backend.as_ref(), &mut journal)).await;
    let mut manifest = match outcome {
        Ok(m) => m,
        Err(e) => {
            if let Err(cleanup) = release_all(config, &mut journal).await {
                tracing::error!("{cleanup:#}");
            }
            return Err(e);
        }
    };

    // `[backup] verify`: prove the published backup restores (its own journaled step).
    if config.backup()?.verify {
        manifest =
            match super::until_signal(crate::verify::verify(&mut journal, &manifest.path)).await {
                Ok(m) => m,
                Err(e) => {
                    if let Err(cleanup) = release_all(config, &mut journal).await {
                        tracing::error!("{cleanup:#}");
                    }
                    return Err(e.context(format!(
                        "backup {} is complete but could not be verified",
                        manifest.name
                    )));
                }
            };
        if manifest
            .verification
            .as_ref()
            .is_some_and(|v| v.verdict == crate::verify::Verdict::Failed)
        {
            return Err(crate::verify::failed_error(&manifest, &manifest.path));
        }
    }

    if json {
        super::print_json(&manifest)?;
    } else {
        println!("backup {} complete", manifest.name);
        println!("  path         {}", manifest.path.display());
        println!(
            "  lock         {} — waited {:.1} ms, held {:.1} ms",
            manifest.lock.mode, manifest.lock.wait_ms, manifest.lock.hold_ms
        );
        if let (Some(file), Some(pos)) = (
            &manifest.coordinates.binlog_file,
            manifest.coordinates.binlog_position,
        ) {
            println!("  binlog       {file}:{pos}");
        }
        if let Some(gtid) = manifest
            .coordinates
            .gtid_binlog_pos
            .as_deref()
            .filter(|g| !g.is_empty())
        {
            println!("  gtid         {gtid}");
        }
        println!(
            "  copied       {} in {} files, {:.1} s",
            ByteSize::b(manifest.transfer.bytes).display().iec(),
            manifest.transfer.files,
            manifest.transfer.duration_ms as f64 / 1000.0
        );
    }
    Ok(())
}
