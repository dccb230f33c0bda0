//! `dbsnap list`: the backups at the destination, newest last.

use std::path::PathBuf;

use bytesize::ByteSize;
use serde::Serialize;

use crate::config::Config;
use crate::manifest::{Manifest, MANIFEST_FILE};

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
    let dest = &config.backup()?.dest;
    let mut entries = Vec::new();
    let dir =
        std::fs::read_dir(dest).map_err(|e| anyhow::anyhow!("reading {}: {e}", dest.display()))?;
    for item in dir.flatten() {
        let path = item.path();
        if !path.is_dir() {
            continue;
        }
        let name = item.file_name().to_string_lossy().into_owned();
        let (status, manifest) = if name.ends_with(".partial") {
            ("incomplete", None)
        } else if path.join(MANIFEST_FILE).exists() {
            match Manifest::read(&path) {
                Ok(m) => (status_of(&m), Some(m)),
                Err(_) => ("invalid", None),
            }
        } else {
            continue;
        };
        entries.push(Entry {
            name,
            path,
            status,
            manifest,
        });
    }
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
    for parent in crate::transfer::native::Parent::list(&config.state_dir)?
        .iter()
        .filter(|p| p.dest == *dest)
    {
        println!(
            "{} is the base of the next {}: its snapshot {} stays on the source until then",
            parent.backup, parent.method, parent.set.name
        );
    }
    Ok(())
}

fn status_of(m: &Manifest) -> &'static str {
    match m.verification.as_ref().map(|v| v.verdict) {
        Some(crate::verify::Verdict::Passed) => "verified",
        Some(crate::verify::Verdict::Failed) => "failed",
        None => "complete",
    }
}
