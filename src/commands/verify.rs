//! `dbsnap verify BACKUP`: recover a scratch copy with a throwaway server, check it,
//! and record the verdict in the backup's manifest. A failed verification exits 11.

use std::path::Path;

use crate::config::Config;
use crate::manifest::Manifest;
use crate::manifest::Verdict;
use crate::verify;

pub async fn run(config: &Config, json: bool, backup: &str) -> anyhow::Result<()> {
    let dest = crate::destination::open_configured(config.backup.as_ref())?;
    let dir = crate::destination::resolve_backup(dest.as_deref(), backup).await?;
    let (_lock, mut journal) = super::start_run(config).await?;
    let outcome = super::until_signal(verify::verify(&mut journal, &dir)).await;
    let manifest = super::released_on_error(config, &mut journal, outcome).await?;
    report(&manifest, &dir, json)
}

/// Print the verdict; a failed one becomes the error that sets the exit code.
fn report(manifest: &Manifest, dir: &Path, json: bool) -> anyhow::Result<()> {
    let Some(v) = &manifest.verification else {
        anyhow::bail!("the manifest of {} holds no verification", manifest.name);
    };
    if v.verdict == Verdict::Failed {
        return Err(verify::failed_error(manifest, dir));
    }
    if json {
        return super::print_json(v);
    }
    println!("backup {} verified", manifest.name);
    println!(
        "  server       {} ({})",
        v.server_binary.display(),
        v.server_version
    );
    println!("  scratch copy {} ms", v.copy_ms);
    println!("  recovery     {} ms", v.recovery_ms);
    println!(
        "  check        {} tables in {} ms",
        v.tables_checked, v.check_ms
    );
    if let Some(g) = v
        .recovered_gtid_binlog_pos
        .as_deref()
        .filter(|g| !g.is_empty())
    {
        println!("  gtid         {g} (as recorded)");
    }
    for w in &v.warnings {
        println!("  warning      {w}");
    }
    Ok(())
}
