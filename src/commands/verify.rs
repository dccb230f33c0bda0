//! `dbsnap verify BACKUP`: recover a scratch copy with a throwaway server, check it,
//! and record the verdict in the backup's manifest. A failed verification exits 11.

use std::path::Path;

use crate::config::Config;
use crate::destination::ssh::SshDir;
use crate::destination::{Backup, Destination};
use crate::error::{fail, Class};
use crate::journal::Resource;
use crate::manifest::Manifest;
use crate::manifest::Verdict;
use crate::transfer::checksums::{self, Checksums};
use crate::verify;

pub async fn run(config: &Config, json: bool, backup: &str, checksums: bool) -> anyhow::Result<()> {
    let dest = crate::destination::open_configured(config)?;
    if let Some((repo, found)) =
        crate::destination::resolve_in_repository(dest.as_deref(), backup).await?
    {
        if checksums {
            return Err(fail(
                Class::Config,
                "--checksums is for directory and ssh backups; a restic repository's data is \
                 checked by `dbsnap verify` itself (restic check)",
            ));
        }
        let (_lock, mut journal) = super::start_run(config).await?;
        let outcome = super::until_signal(crate::readback::verify(
            &config.state_dir,
            repo,
            &found,
            &mut journal,
        ))
        .await;
        let manifest = super::released_on_error(config, &mut journal, outcome).await?;
        return report(&manifest, &found.path, json);
    }
    if let Some((ssh, found)) = crate::destination::resolve_remote(dest.as_deref(), backup).await? {
        return match checksums {
            true => {
                let files = ssh.verify_checksums(&found.path).await?;
                report_checksums(&found.name, files, json)
            }
            false => verify_remote(config, json, ssh, &found).await,
        };
    }
    let dir = crate::destination::resolve_backup(dest.as_deref(), backup).await?;
    if checksums {
        return verify_local_checksums(&dir, json).await;
    }
    let (_lock, mut journal) = super::start_run(config).await?;
    let outcome = super::until_signal(verify::verify(&mut journal, &dir)).await;
    let manifest = super::released_on_error(config, &mut journal, outcome).await?;
    report(&manifest, &dir, json)
}

/// `verify --checksums` of a backup directory on this host.
async fn verify_local_checksums(dir: &Path, json: bool) -> anyhow::Result<()> {
    let sums = Checksums::read(dir)?.ok_or_else(|| {
        fail(
            Class::Config,
            format!(
                "the backup {} has no checksums file (made by a dbsnap without them, or by a \
                 stream method): use `dbsnap verify` without --checksums",
                dir.display()
            ),
        )
    })?;
    let checked = dir.to_path_buf();
    let files = sums.0.len();
    let bad = tokio::task::spawn_blocking(move || checksums::verify_dir(&checked, &sums)).await?;
    if !bad.is_empty() {
        return Err(fail(
            Class::Verify,
            format!(
                "the backup {} does not match its checksums in {} file(s): {}",
                dir.display(),
                bad.len(),
                bad.iter()
                    .take(5)
                    .map(|m| format!("{} ({})", m.path.display(), m.why))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    }
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    report_checksums(&name, files, json)
}

fn report_checksums(name: &str, files: usize, json: bool) -> anyhow::Result<()> {
    if json {
        return super::print_json(&serde_json::json!({ "backup": name, "files_checked": files }));
    }
    println!("backup {name}: {files} files match their checksums");
    Ok(())
}

/// Where backups of an ssh destination are pulled to be verified (under `state_dir`).
pub const PULLED_DIR: &str = "pulled";

/// The full verification of a backup on another host: pulled into a scratch directory
/// under `state_dir` (journaled), verified there, the verdict written back remotely.
async fn verify_remote(
    config: &Config,
    json: bool,
    ssh: &SshDir,
    backup: &Backup,
) -> anyhow::Result<()> {
    let (_lock, mut journal) = super::start_run(config).await?;
    // Named like the backup, so that verification's scratch copy beside it is trusted.
    let pulled = config.state_dir.join(PULLED_DIR).join(&backup.name);
    let resource = Resource::Pulled {
        dir: pulled.clone(),
    };
    journal.record(&backup.name, resource.clone())?;
    let outcome = super::until_signal(async {
        std::fs::create_dir_all(&pulled)?;
        tracing::info!(
            "pulling {} from {} to verify it",
            backup.name,
            ssh.location().display()
        );
        ssh.pull(&backup.path, &pulled, &|_| {}).await?;
        verify::verify(&mut journal, &pulled).await
    })
    .await;
    let outcome = match outcome {
        Ok(mut manifest) => {
            manifest.path = backup.path.clone();
            ssh.rewrite_manifest(&backup.path, &manifest)
                .await
                .map(|()| manifest)
        }
        Err(e) => Err(e),
    };
    let released =
        crate::release::release_all(&crate::release::Scope::of(config), &mut journal).await;
    let manifest = outcome?;
    released?;
    report(&manifest, &backup.path, json)
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
