//! `dbsnap init-repo`: create the restic repository `[backup] dest` names, once. A
//! backup never creates one: a typo in `dest` must fail, not start a new repository.

use serde::Serialize;

use crate::config::Config;
use crate::destination::restic::ResticRepo;
use crate::destination::Destination;
use crate::error::{fail, Class};

#[derive(Serialize)]
struct Created {
    repository: String,
    /// restic's id of the new repository.
    id: String,
}

pub async fn run(config: &Config, json: bool) -> anyhow::Result<()> {
    let backup = config.backup()?;
    if backup.restic_repository().is_none() {
        return Err(fail(
            Class::Config,
            format!(
                "dbsnap init-repo is only for restic destinations ([backup] dest = \
                 \"restic:<repository>\"); [backup] dest = {} is a directory, which needs no \
                 initialisation",
                backup.dest.display()
            ),
        ));
    }
    let repo = ResticRepo::open(backup, &config.state_dir)?;
    let created = Created {
        id: repo.init().await?,
        repository: repo.location().display().to_string(),
    };
    if json {
        return super::print_json(&created);
    }
    println!(
        "created the restic repository {} (id {})",
        created.repository, created.id
    );
    if let Some(restic) = &backup.restic {
        println!(
            "Keep a copy of its password ({}) somewhere safe: without it, no backup in the \
             repository can be read.",
            restic.password_file.display()
        );
    }
    Ok(())
}
