//! `dbsnap list`: the backups at the destination, newest last.

use std::path::PathBuf;

use bytesize::ByteSize;
use serde::Serialize;

use crate::config::Config;
use crate::destination::Entry as Listed;
use crate::manifest::Manifest;

#[derive(Serialize)]
struct Entry {
    name: String,
    path: PathBuf,
    /// `complete`, `verified`, `failed` (verification failed: do not rely on it),
    /// `incomplete` (a `.partial` directory) or `invalid` (no readable manifest).
    status: &'static str,
    manifest: Option<Manifest>,
}

pub async fn run(config: &Config, json: bool) -> anyhow::Result<()> {
    let destination = crate::destination::open(config.backup()?, &config.state_dir)?;
    let dest = destination.location();
    let mut entries: Vec<Entry> = destination
        .entries()
        .await?
        .into_iter()
        .map(|e| match e {
            Listed::Backup(b) => Entry {
                status: status_of(&b.manifest),
                name: b.name,
                path: b.path,
                manifest: Some(b.manifest),
            },
            Listed::Partial { name, path } => Entry {
                name: format!("{name}.partial"),
                path,
                status: "incomplete",
                manifest: None,
            },
            Listed::Renamed {
                name,
                path,
                manifest,
            } => Entry {
                status: status_of(&manifest),
                name,
                path,
                manifest: Some(*manifest),
            },
            Listed::Invalid { name, path } => Entry {
                name,
                path,
                status: "invalid",
                manifest: None,
            },
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    if json {
        return super::print_json(&entries);
    }
    if entries.is_empty() {
        println!("no backups in {}", dest.display());
        return Ok(());
    }
    println!(
        "{:<22} {:<10} {:<15} {:>11} {:>9} {:>9}  binlog",
        "NAME", "STATUS", "METHOD", "TRANSFERRED", "WAIT ms", "HOLD ms"
    );
    for e in &entries {
        match &e.manifest {
            Some(m) => println!(
                "{:<22} {:<10} {:<15} {:>11} {:>9.1} {:>9.1}  {}",
                e.name,
                e.status,
                m.transfer.method,
                ByteSize::b(m.transfer.bytes).display().iec().to_string(),
                m.lock.wait_ms,
                m.lock.hold_ms,
                match (&m.coordinates.binlog_file, m.coordinates.binlog_position) {
                    (Some(f), Some(p)) => format!("{f}:{p}"),
                    _ => "-".into(),
                }
            ),
            None => println!("{:<22} {:<10}", e.name, e.status),
        }
    }
    for parent in crate::transfer::chain::Parent::list(&config.state_dir)?
        .iter()
        .filter(|p| p.dest == dest)
    {
        println!(
            "{} is the base of the next {}: its snapshot {} stays on the source until then",
            parent.backup, parent.method, parent.set.name
        );
    }
    for cut_off in crate::transfer::resume::pending(&config.state_dir, dest)? {
        println!("{cut_off}");
    }
    Ok(())
}

fn status_of(m: &Manifest) -> &'static str {
    match m.verification.as_ref().map(|v| v.verdict) {
        Some(crate::manifest::Verdict::Passed) => "verified",
        Some(crate::manifest::Verdict::Failed) => "failed",
        None => "complete",
    }
}
