//! `dbsnap status [--max-age D]`: the freshness check for monitoring (see `freshness`).
//! Reads the destination, the kept snapshots and the journal; takes no lock and changes
//! nothing, so it can run while a backup runs.

use std::time::Duration;

use crate::backends;
use crate::config::Config;
use crate::freshness;
use crate::inventory::Inventory;

/// Print the verdict (one line, or one JSON document) and return its exit code.
pub async fn run(config: &Config, json: bool, max_age: Duration) -> anyhow::Result<u8> {
    let inventory = Inventory::read(config).await?;
    let mut invalid = Vec::new();
    for kept in inventory.kept.iter().flatten() {
        let health = match backends::open_named(&kept.set.backend, &config.snapshot) {
            Ok(backend) => backend.health(&kept.set).await.map_err(|e| e.to_string()),
            Err(e) => Err(format!("{e:#}")),
        };
        match health {
            Ok(dbsnap_backend_api::Health::Failed(why)) | Err(why) => {
                invalid.push((kept.name.to_string(), why))
            }
            Ok(_) => {}
        }
    }
    let dest = config
        .backup
        .as_ref()
        .map_or("(no [backup] dest)".to_string(), |b| {
            b.dest.display().to_string()
        });
    let report = freshness::evaluate(&inventory, &invalid, chrono::Utc::now(), max_age, &dest);
    if json {
        super::print_json(&report)?;
    } else {
        println!("{}", report.line);
    }
    Ok(report.exit_code)
}
