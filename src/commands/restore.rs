//! `dbsnap restore BACKUP --datadir DIR`: copy a backup into a new datadir, ready to
//! start, and print how to make it a replica.

use bytesize::ByteSize;

use crate::config::Config;
use crate::restore::{self, Request};

pub async fn run(config: &Config, json: bool, request: Request) -> anyhow::Result<()> {
    let dest = crate::destination::open_configured(config)?;
    let given = request.backup.to_string_lossy().into_owned();
    let remote = crate::destination::resolve_remote(dest.as_deref(), &given).await?;
    let restored = match &remote {
        Some((ssh, backup)) => {
            let request = Request {
                backup: backup.path.clone(),
                ..request
            };
            let from = restore::RemoteBackup {
                dest: ssh,
                manifest: &backup.manifest,
            };
            super::until_signal(restore::restore(&request, Some(from))).await?
        }
        None => {
            let request = Request {
                backup: crate::destination::resolve_backup(dest.as_deref(), &given).await?,
                ..request
            };
            super::until_signal(restore::restore(&request, None)).await?
        }
    };
    if json {
        return super::print_json(&restored);
    }
    println!("restored backup {}", restored.backup);
    for (from, to) in &restored.directories {
        println!("  {} -> {}", from.display(), to.display());
    }
    println!(
        "  copied {} in {:.1} s",
        ByteSize::b(restored.bytes).display().iec(),
        restored.duration_ms as f64 / 1000.0
    );
    for f in &restored.rewritten {
        println!("  rewrote {} for the new location", f.display());
    }
    if let Some(owner) = &restored.owner {
        println!("  owner  {owner}");
    }
    println!(
        "\nStart a server with these options (crash recovery brings it to the backup's instant):"
    );
    for o in &restored.server_options {
        println!("  {o}");
    }
    let r = &restored.replication;
    println!("\nTo make it a replica, give it its own server_id, start it, and run either");
    if let Some(gtid) = &r.gtid {
        println!("\n-- by GTID:\n{gtid}\n{}", r.start);
    }
    if let Some(fp) = &r.file_position {
        println!("\n-- by binlog file and position:\n{fp}\n{}", r.start);
    }
    if let Some(s) = &r.from_source {
        println!(
            "\n-- or, as another replica of the backed-up replica's own source:\n{s}\n{}",
            r.start
        );
    }
    if let Some(note) = &r.note {
        println!("\nNote: {note}");
    }
    if r.gtid.is_none() && r.file_position.is_none() {
        println!("(the backup recorded no binlog position: the source had no binary log)");
    }
    Ok(())
}
