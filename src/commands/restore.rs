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
    let in_repository = crate::destination::resolve_in_repository(dest.as_deref(), &given).await?;
    let remote = match in_repository {
        Some(_) => None,
        None => crate::destination::resolve_remote(dest.as_deref(), &given).await?,
    };
    let (backup, origin) = if let Some((repo, backup)) = &in_repository {
        let origin = restore::Origin::Repository { repo, backup };
        (request.backup.clone(), origin)
    } else if let Some((ssh, backup)) = &remote {
        let origin = restore::Origin::Remote {
            dest: ssh,
            manifest: &backup.manifest,
        };
        (backup.path.clone(), origin)
    } else {
        let dir = crate::destination::resolve_backup(dest.as_deref(), &given).await?;
        (dir, restore::Origin::Local)
    };
    let request = Request {
        backup,
        protected: protected(config),
        ..request
    };
    let restored = match super::until_signal(restore::restore(&request, origin)).await {
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
        let dest = match backup.restic_repository() {
            Some(repository) => crate::restic::local_dir(&repository),
            None => Some(backup.dest.clone()),
        };
        protected.extend(dest.map(|path| Protected {
            path,
            what: "the backup destination ([backup] dest)".into(),
        }));
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
