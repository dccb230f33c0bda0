//! dbsnap-bench: how long do writers stall while a backup is taken?
//!
//! For each data size: a btrfs filesystem on a loop device, a private MariaDB holding
//! that much data, and N clients committing small bank transfers for the whole run
//! (every commit's start and latency is recorded). In turns, on the same data and under
//! the same load, each way of taking a backup runs (see [`cases::Case`]); afterwards
//! each run's window is laid over the commits. Writes `results.json` (every raw
//! figure), `results.md` (medians and spread), `latency-<size>GB.png` (around the lock)
//! and `backup-<size>GB.png` (across one whole backup) into `--out`.
//!
//! Run as root: `cargo run --release -p dbsnap-bench -- --sizes 1,4 --repeats 5`.

mod cases;
mod interrupt;
mod metrics;
mod oltp;
mod plot;
mod plot_backup;
mod report;
mod rig;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context};
use clap::Parser;
use dbsnap_test_support::bank::Writers;

use crate::cases::Case;
use crate::rig::Rig;

#[derive(Parser)]
#[command(
    about = "Measure how long writers stall while dbsnap, mariabackup and the classic FTWRL script take a backup"
)]
struct Args {
    /// Data sizes in GB (InnoDB filler rows), one full benchmark each.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    sizes: Vec<f64>,
    /// How many times each case runs per size (medians and spread come from these).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Client connections committing transfers during the whole run.
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// Where results.json, results.md and the plots go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    out: PathBuf,
    /// Where the btrfs image, the server's run directory and the copies live.
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Quiet time before each case; commits in it are that case's baseline.
    #[arg(long, default_value_t = 5.0)]
    baseline_secs: f64,
    /// The dbsnap binary; by default it is built with cargo in this bench's profile.
    #[arg(long)]
    dbsnap: Option<PathBuf>,
    /// What the clients commit: the bank's small transfers, or the heavier
    /// index-rich OLTP transactions (see `oltp.rs`).
    #[arg(long, value_enum, default_value_t = Workload::Bank)]
    workload: Workload,
    /// Only these cases (ftwrl, backup-stage, none, auto, unpaced, mariabackup, classic,
    /// snapshot, idle); all by default.
    #[arg(long, value_delimiter = ',', value_parser = parse_case)]
    cases: Vec<Case>,
    /// `[backup] pace_target` for the paced dbsnap cases (dbsnap's default if unset):
    /// what a tighter or looser target trades between stalls and wall time.
    #[arg(long)]
    pace_target: Option<f64>,
    /// Rows in each of the OLTP workload's four tables.
    #[arg(long, default_value_t = 400_000)]
    oltp_rows: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Workload {
    Bank,
    Oltp,
}

/// The clients committing during a whole size's run.
enum Load {
    Bank(Writers),
    Oltp(oltp::OltpWriters),
}

impl Load {
    /// Every acknowledged commit: (began, latency) in ms since `t0`.
    fn stop(self, t0: SystemTime) -> Vec<(f64, f64)> {
        let all: Vec<(SystemTime, Duration)> = match self {
            Load::Bank(w) => w.stop().iter().map(|c| (c.began, c.latency())).collect(),
            Load::Oltp(w) => w.stop(),
        };
        all.into_iter()
            .map(|(began, latency)| (cases::ms_since(t0, began), latency.as_secs_f64() * 1e3))
            .collect()
    }
}

/// Everything measured at one data size.
pub struct SizeResult {
    pub size_gb: f64,
    /// Bytes in the datadir after loading.
    pub data_bytes: u64,
    /// Every acknowledged commit: (began, latency) in ms since the writers started.
    pub commits: Vec<(f64, f64)>,
    pub runs: Vec<metrics::Run>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "run as root: the benchmark mounts a loop device and starts MariaDB"
    );
    interrupt::catch_signals()?;
    let dbsnap = match args.dbsnap.clone() {
        Some(path) => path,
        None => build_dbsnap()?,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let machine = report::Machine::detect();
    let mut sizes = Vec::new();
    for &gb in &args.sizes {
        sizes.push(run_size(gb, &args, &dbsnap)?);
    }
    report::write(&args.out, &machine, &args_summary(&args), &sizes)?;
    for size in &sizes {
        plot::draw(&args.out, size)?;
        plot_backup::draw(&args.out, size)?;
    }
    eprintln!("results in {}", args.out.display());
    Ok(())
}

fn parse_case(key: &str) -> Result<Case, String> {
    Case::ALL
        .into_iter()
        .find(|c| c.key() == key)
        .ok_or_else(|| {
            let keys: Vec<&str> = Case::ALL.iter().map(|c| c.key()).collect();
            format!("no case {key:?}; one of {}", keys.join(", "))
        })
}

fn args_summary(args: &Args) -> serde_json::Value {
    serde_json::json!({
        "sizes_gb": args.sizes,
        "repeats": args.repeats,
        "clients": args.clients,
        "baseline_secs": args.baseline_secs,
        "workload": args.workload,
        "oltp_rows": args.oltp_rows,
        "cases": args.cases.iter().map(|c| c.key()).collect::<Vec<_>>(),
        "work_dir": args.work_dir,
        "pace_target": args.pace_target,
    })
}

fn run_size(gb: f64, args: &Args, dbsnap: &Path) -> anyhow::Result<SizeResult> {
    eprintln!("== {gb} GB: creating the filesystem and loading data");
    let loading = std::time::Instant::now();
    let rig = Rig::new(&args.work_dir, gb, dbsnap)?;
    if let Some(target) = args.pace_target {
        let mut config = std::fs::read_to_string(&rig.config)?;
        config.push_str(&format!("pace_target = {target}\n"));
        std::fs::write(&rig.config, config)?;
    }
    if args.workload == Workload::Oltp {
        oltp::create(&rig.server, args.oltp_rows);
    }
    let data_bytes = rig::dir_bytes(&rig.datadir);
    eprintln!(
        "== {gb} GB: {} MiB in the datadir after {:.0?}; {} writers start",
        data_bytes >> 20,
        loading.elapsed(),
        args.clients
    );
    let writers = match args.workload {
        Workload::Bank => Load::Bank(Writers::start(&rig.server.socket, args.clients)),
        Workload::Oltp => Load::Oltp(oltp::OltpWriters::start(
            &rig.server.socket,
            args.clients,
            args.oltp_rows,
        )),
    };
    // Writers::start waited for every client to connect; times are relative to this.
    let t0 = SystemTime::now();
    let baseline = Duration::from_secs_f64(args.baseline_secs);
    let mut measured = Vec::new();
    for repeat in 0..args.repeats {
        // Rotate the order so that no case always follows the same neighbour (whose
        // snapshot deletion or page-cache churn could still be running).
        let mut order: Vec<Case> = match args.cases.is_empty() {
            true => Case::ALL.to_vec(),
            false => args.cases.clone(),
        };
        let turns = order.len();
        order.rotate_left(repeat % turns);
        for case in order {
            std::thread::sleep(baseline);
            interrupt::check()?;
            eprintln!(
                "-- {gb} GB, repeat {}/{}: {}",
                repeat + 1,
                args.repeats,
                case.name()
            );
            measured.push(cases::run(case, repeat, &rig, t0)?);
        }
    }
    std::thread::sleep(baseline);
    let commits = writers.stop(t0);
    let runs = measured
        .into_iter()
        .map(|m| metrics::Run::new(m, &commits, args.baseline_secs * 1e3))
        .collect();
    Ok(SizeResult {
        size_gb: gb,
        data_bytes,
        commits,
        runs,
    })
}

/// Build dbsnap with cargo in the profile this benchmark was built in, and return the
/// binary's path as cargo reports it (no guessing at target directories).
fn build_dbsnap() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "build",
        "-p",
        "dbsnap",
        "--bin",
        "dbsnap",
        "--message-format=json-render-diagnostics",
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo build -p dbsnap")?;
    ensure!(out.status.success(), "cargo build -p dbsnap failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "dbsnap")
        .and_then(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo build did not report the dbsnap executable")
}
