//! `dbsnap check`: the preflight alone. Takes no lock and changes nothing.

use bytesize::ByteSize;
use serde::Serialize;

use crate::backends;
use crate::config::Config;
use crate::db::DbPath;
use crate::orchestrator::{self, CopyPlan, FreeSpace, Plan};

#[derive(Serialize)]
struct Report {
    server_version: String,
    backend: String,
    paths: Vec<DbPath>,
    volumes: Vec<dbsnap_backend_api::Volume>,
    atomic_snapshot: bool,
    lock_mode: String,
    lock_reason: String,
    free_space: Vec<FreeSpace>,
    data_bytes: u64,
    destination: Option<String>,
    /// `rsync`, or the native stream `[backup] method` resolves to (and from which base).
    transfer_method: Option<String>,
    /// Free space the next backup needs at the destination.
    needed_bytes: Option<u64>,
    /// Whether the destination can tell its free space (a remote restic repository
    /// cannot).
    room_known: Option<bool>,
}

pub async fn run(config: &Config, json: bool, force: bool) -> anyhow::Result<()> {
    let backend = backends::open(&config.snapshot)?;
    let plan = Plan::new(config, force)?;
    let pre = orchestrator::prepare(&plan, backend.as_ref()).await?.survey;
    let (destination, transfer_method, needed_bytes, room_known) = match &config.backup {
        Some(b) => {
            let copy = CopyPlan::new(b, &config.state_dir)?;
            let transfer =
                orchestrator::plan_transfer(&plan, &copy, backend.as_ref(), &pre).await?;
            (
                Some(copy.dest.location().display().to_string()),
                Some(transfer.describe()),
                Some(transfer.needed_bytes()),
                Some(copy.dest.free_bytes().await?.is_some()),
            )
        }
        None => (None, None, None, None),
    };
    if let Some(dir) = config
        .metrics
        .as_ref()
        .and_then(|m| m.textfile.parent())
        .filter(|d| !d.is_dir())
    {
        tracing::warn!(
            "metrics.textfile: {} does not exist, so no metrics can be written; install \
             prometheus-node-exporter (it creates it) or point textfile elsewhere",
            dir.display()
        );
    }
    let report = Report {
        server_version: pre.server.version.text.clone(),
        backend: backend.name().into(),
        paths: pre.layout.dirs.clone(),
        volumes: pre.volumes.clone(),
        atomic_snapshot: pre.atomic,
        lock_mode: pre.lock.mode.to_string(),
        lock_reason: pre.lock.reason.clone(),
        free_space: pre.free_space.clone(),
        data_bytes: pre.data_bytes,
        destination,
        transfer_method,
        needed_bytes,
        room_known,
    };
    if json {
        return super::print_json(&report);
    }
    print(&report);
    Ok(())
}

fn print(report: &Report) {
    println!("server       {}", report.server_version);
    for p in &report.paths {
        println!("{:<12} {}", p.role, p.path.display());
    }
    for (v, f) in report.volumes.iter().zip(&report.free_space) {
        println!(
            "volume       {} ({}, {}), {:.1} % free",
            v.id, report.backend, v.fstype, f.free_percent
        );
    }
    println!(
        "snapshot     {}",
        if report.atomic_snapshot {
            "atomic (one instant for all volumes)"
        } else {
            "several volumes, covered by the lock"
        }
    );
    println!("lock         {} ({})", report.lock_mode, report.lock_reason);
    println!(
        "data         {}",
        ByteSize::b(report.data_bytes).display().iec()
    );
    if let (Some(d), Some(needed)) = (&report.destination, report.needed_bytes) {
        let needed = ByteSize::b(needed).display().iec();
        match report.room_known {
            Some(false) => println!(
                "destination  {d} (reachable; its free space cannot be known: this backup may need up to {needed})"
            ),
            _ => println!("destination  {d} (writable, room for the {needed} this backup needs)"),
        }
    }
    if let Some(m) = &report.transfer_method {
        println!("transfer     {m}");
    }
    println!("ok: a backup can be taken");
}
