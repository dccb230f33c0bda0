//! `dbsnap restore BACKUP --datadir DIR`: copy a backup into a new datadir, ready to
//! start, and print how to make it a replica.

use bytesize::ByteSize;

use crate::config::Config;
use crate::error::{class_of, fail, Class};
use crate::kept::KeptSnapshot;
use crate::restore::{self, Protected, Request};

pub async fn run(config: &Config, json: bool, request: Request) -> anyhow::Result<()> {
    let dest = crate::destination::open_configured(config)?;
    let given = request.backup.to_string_lossy().into_owned();
    let restored = match crate::destination::resolve_in_repository(dest.as_deref(), &given).await? {
        // Fetched from a repository: staged (journaled) in state_dir/staging first.
        Some((repo, found)) => {
            let (_lock, mut journal) = super::start_run(config).await?;
            let request = Request {
                protected: protected(config),
                ..request
            };
            let outcome = super::until_signal(crate::readback::restore(
                repo,
                &found,
                &config.state_dir,
                request,
                &mut journal,
            ))
            .await;
            super::released_on_error(config, &mut journal, outcome).await?
        }
        None => {
            let remote = crate::destination::resolve_remote(dest.as_deref(), &given).await?;
            let backup = match &remote {
                Some((_, backup)) => backup.path.clone(),
                None => crate::destination::resolve_backup(dest.as_deref(), &given).await?,
            };
            let request = Request {
                backup,
                protected: protected(config),
                ..request
            };
            let from = remote.as_ref().map(|(ssh, backup)| restore::RemoteBackup {
                dest: ssh,
                manifest: &backup.manifest,
            });
            let restored = match super::until_signal(restore::restore(&request, from)).await {
                Ok(restored) => restored,
                Err(e) if class_of(&e) == Class::Interrupted => {
                    return Err(fail(
                        Class::Interrupted,
                        format!(
                            "{e}: the restore into {} did not finish, and the files it had copied \
                             there were removed (the log says if one could not be)",
                            request.datadir.display()
                        ),
                    ))
                }
                Err(e) => return Err(e),
            };
            restored
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

/// What a restore must never touch: dbsnap's own directories, and where its snapshots
/// are read.
fn protected(config: &Config) -> Vec<Protected> {
    let mut protected = vec![Protected {
        path: config.state_dir.clone(),
        what: "dbsnap's state directory (state_dir)".into(),
    }];
    if let Some(backup) = &config.backup {
        protected.push(Protected {
            path: backup.dest.clone(),
            what: "the backup destination ([backup] dest)".into(),
        });
    }
    if let Some(dir) = &config.snapshot.btrfs.snapshot_dir {
        protected.push(Protected {
            path: dir.clone(),
            what: "the snapshot directory ([snapshot.btrfs] snapshot_dir)".into(),
        });
    }
    for kept in KeptSnapshot::list(&config.state_dir).unwrap_or_default() {
        if let Some(m) = kept.mount {
            protected.push(Protected {
                path: m.dir,
                what: format!("the mount of kept snapshot {}", kept.name),
            });
        }
    }
    protected
}
