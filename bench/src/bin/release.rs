//! dbsnap-bench-release: what does deleting a backup's snapshot cost the writers, and
//! does waiting for a quiet server or spreading the deletion help?
//!
//! The benchmark rig (MariaDB on a loop-device btrfs, bank schema plus filler) with
//! bank writers committing throughout. Each run: a read-only snapshot of the datadir,
//! then every filler row rewritten (the snapshot now alone holds `--size-gb` of
//! overwritten pages), a pause to settle, then the release as dbsnap would do it right
//! after publishing: a burst of writeback on the host filesystem (`--burst-mib`, like
//! the backup's last flush; the loop image lives there too), then one of the variants:
//!
//! - `immediate`: `btrfs subvolume delete` at once (dbsnap before pacing the release);
//! - `commit-after`: the same with `--commit-after` (waits for the transaction commit);
//! - `deferred`: first wait until a probe commit's median of three is within 1.5 × the
//!   baseline (sampled every 100 ms, at most 30 s), then delete;
//! - `spread`: wait likewise, then make the snapshot writable and truncate its large
//!   files 64 MiB at a time, 100 ms apart, before deleting the rest (the prototype);
//! - `backend-steps`: no wait; the btrfs backend's own `spread_release` steps (what
//!   `dbsnap backup` runs after publish: writable with `-f`, largest file first, files
//!   over 1 MiB, only above 256 MiB), one every 100 ms at the product's ceiling of
//!   64 MiB, then the delete. The product paces the steps by its commit probe (never
//!   faster than this); that loop runs inside `dbsnap backup` and shows in
//!   `dbsnap-bench`'s release phase.
//!
//! After each delete, `btrfs subvolume sync` waits for the cleaner to free the
//! snapshot's extents: the window measured runs from the burst to a second after that.
//! Variants alternate within each repeat. Writes `release.json` (every run, with its
//! commits per 100 ms) and prints a table of medians.
//!
//! Run as root: `cargo run -p dbsnap-bench --bin dbsnap-bench-release -- --repeats 3`.

// Only the rig's server and filesystem: its dbsnap configuration is for the benchmarks
// that run dbsnap.
#[allow(dead_code)]
#[path = "../rig.rs"]
mod rig;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::Parser;
use dbsnap_test_support::bank::{Commit, Writers};
use mysql_async::prelude::Queryable;
use serde::Serialize;

use rig::Rig;

#[derive(Parser)]
#[command(about = "What deleting a snapshot costs the writers, per way of deleting it")]
struct Args {
    /// Overwritten data the snapshot holds, in GB (the filler, rewritten).
    #[arg(long, default_value_t = 1.0)]
    size_gb: f64,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// The writeback burst before each release (MiB written and fsynced to the host
    /// filesystem); 0 for none.
    #[arg(long, default_value_t = 256)]
    burst_mib: u64,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "immediate,commit-after,deferred,spread,backend-steps"
    )]
    variants: Vec<String>,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    out: PathBuf,
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
}

/// Quiet time before each run: its commits are the run's baseline.
const BASELINE: Duration = Duration::from_secs(3);
const BUCKET_MS: f64 = 100.0;
const DELAYED_MS: f64 = 100.0;
const QUIET_TARGET: f64 = 1.5;
const QUIET_BOUND: Duration = Duration::from_secs(30);
const TRUNCATE_STEP: u64 = 64 << 20;

/// When each step of one run happened (ms since the writers started).
#[derive(Debug, Clone, Serialize)]
struct Run {
    variant: String,
    repeat: usize,
    load_average: String,
    baseline_from_ms: f64,
    burst_from_ms: f64,
    wait_from_ms: f64,
    delete_from_ms: f64,
    delete_to_ms: f64,
    cleaner_done_ms: f64,
    end_ms: f64,
    /// Derived from the commits, after the run.
    stats: Option<Stats>,
}

#[derive(Debug, Clone, Serialize)]
struct Stats {
    baseline_p99_ms: f64,
    baseline_worst_ms: f64,
    /// From the burst to the end of the window.
    worst_ms: f64,
    delayed: usize,
    /// Fewest commits in any 100 ms, and in any whole second, as a share of the
    /// baseline's rate.
    lowest_100ms_vs_baseline: f64,
    lowest_second_vs_baseline: f64,
    /// The slowest commit in flight during the burst (to the delete's start), during the
    /// delete command, and during the cleaner (to a second after it finished).
    worst_burst_ms: Option<f64>,
    worst_delete_ms: Option<f64>,
    worst_cleaner_ms: Option<f64>,
    wait_ms: f64,
    delete_call_ms: f64,
    cleaner_ms: f64,
    /// Commits acknowledged and the slowest one, per 100 ms from the burst.
    buckets: Vec<(usize, f64)>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rig = Rig::new(&args.work_dir, args.size_gb, Path::new("/bin/true"))?;
    let fs = rig.fs.mountpoint.clone();
    let started = SystemTime::now();
    let writers = Writers::start(&rig.server.socket, args.clients);
    let ms = || {
        SystemTime::now()
            .duration_since(started)
            .unwrap()
            .as_secs_f64()
            * 1e3
    };
    let mut runs = Vec::new();
    for repeat in 0..args.repeats {
        for i in 0..args.variants.len() {
            let variant = &args.variants[(i + repeat) % args.variants.len()];
            // `dbsnap-NAME.0`: how the backend names (and only ever changes) a set's snapshot.
            let snapshot = fs.join(format!("dbsnap-bench-{repeat}-{variant}.0"));
            btrfs(&["subvolume", "snapshot", "-r"], &[&rig.datadir, &snapshot])?;
            rewrite_filler(&rig, args.size_gb)?;
            std::thread::sleep(Duration::from_secs(5));
            let baseline_from_ms = ms();
            let baseline = rt.block_on(probe_baseline(&rig.server.socket))?;
            std::thread::sleep(BASELINE);
            let burst_from_ms = ms();
            burst(rig.dir.path(), args.burst_mib)?;
            let wait_from_ms = ms();
            if variant == "deferred" || variant == "spread" {
                rt.block_on(wait_until_quiet(&rig.server.socket, baseline))?;
            }
            if variant == "spread" {
                spread(&snapshot)?;
            }
            if variant == "backend-steps" {
                rt.block_on(backend_steps(&rig.datadir, &snapshot))?;
            }
            let delete_from_ms = ms();
            match variant.as_str() {
                "commit-after" => btrfs(&["subvolume", "delete", "--commit-after"], &[&snapshot])?,
                _ => rig::delete_subvolume(&snapshot)?,
            }
            let delete_to_ms = ms();
            btrfs(&["subvolume", "sync"], &[&fs])?;
            let cleaner_done_ms = ms();
            std::thread::sleep(Duration::from_secs(1));
            let run = Run {
                variant: variant.clone(),
                repeat,
                load_average: std::fs::read_to_string("/proc/loadavg")?
                    .split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" "),
                baseline_from_ms,
                burst_from_ms,
                wait_from_ms,
                delete_from_ms,
                delete_to_ms,
                cleaner_done_ms,
                end_ms: ms(),
                stats: None,
            };
            eprintln!(
                "{variant} #{repeat}: wait {:.0} ms, delete {:.0} ms, cleaner {:.0} ms (load {})",
                delete_from_ms - wait_from_ms,
                delete_to_ms - delete_from_ms,
                cleaner_done_ms - delete_to_ms,
                run.load_average
            );
            runs.push(run);
        }
    }
    let commits = writers.stop();
    let commits: Vec<(f64, f64)> = commits
        .iter()
        .map(|c: &Commit| {
            let began = c.began.duration_since(started).unwrap_or_default();
            (began.as_secs_f64() * 1e3, c.latency().as_secs_f64() * 1e3)
        })
        .collect();
    for run in &mut runs {
        run.stats = Some(stats(run, &commits));
    }
    std::fs::create_dir_all(&args.out)?;
    let json = args.out.join("release.json");
    std::fs::write(&json, serde_json::to_string_pretty(&runs)?)?;
    print_table(&runs, &args.variants);
    eprintln!("wrote {}", json.display());
    Ok(())
}

fn btrfs(args: &[&str], paths: &[&Path]) -> anyhow::Result<()> {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    all.extend(paths.iter().map(|p| p.as_os_str()));
    rig::run("btrfs", all.as_slice())
}

/// Rewrite every filler row in 128 MiB statements, then flush the server's dirty
/// pages, so that the snapshot alone holds the old ones.
fn rewrite_filler(rig: &Rig, size_gb: f64) -> anyhow::Result<()> {
    let rows = (size_gb * 1024.0 * 1024.0) as u64;
    let step = 128 * 1024;
    let mut from = 0;
    while from < rows {
        rig.server.sql(&format!(
            "SET SESSION sql_log_bin = 0; UPDATE bank.filler SET pad = RANDOM_BYTES(1024) \
             WHERE id > {from} AND id <= {}",
            from + step
        ));
        from += step;
    }
    rig.server.sql(
        "SET GLOBAL innodb_max_dirty_pages_pct = 0; SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0",
    );
    std::thread::sleep(Duration::from_secs(10));
    rig.server.sql(
        "SET GLOBAL innodb_max_dirty_pages_pct = 90; SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0",
    );
    rig::run("sync", &["-f".as_ref(), rig.datadir.as_os_str()])
}

/// Write `mib` MiB to a file on the host filesystem and fsync it: the backup's last
/// writeback, as publishing leaves it.
fn burst(dir: &Path, mib: u64) -> anyhow::Result<()> {
    if mib == 0 {
        return Ok(());
    }
    let path = dir.join("burst");
    let mut file = std::fs::File::create(&path)?;
    let chunk: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    for _ in 0..mib {
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(())
}

async fn probe(socket: &Path) -> anyhow::Result<mysql_async::Conn> {
    let opts = mysql_async::OptsBuilder::default()
        .socket(Some(socket.display().to_string()))
        .user(Some("root"));
    let mut conn = mysql_async::Conn::new(opts).await?;
    conn.query_drop(
        "SET SESSION sql_log_bin = 0; CREATE DATABASE IF NOT EXISTS dbsnap; \
         CREATE TABLE IF NOT EXISTS dbsnap.pace_probe (id TINYINT UNSIGNED PRIMARY KEY, \
         commits BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB; \
         INSERT IGNORE INTO dbsnap.pace_probe VALUES (1, 0)",
    )
    .await?;
    Ok(conn)
}

async fn sample(conn: &mut mysql_async::Conn) -> anyhow::Result<Duration> {
    let started = Instant::now();
    conn.query_drop("UPDATE dbsnap.pace_probe SET commits = commits + 1 WHERE id = 1")
        .await?;
    Ok(started.elapsed())
}

/// The median of nine probe commits, as dbsnap measures its baseline.
async fn probe_baseline(socket: &Path) -> anyhow::Result<Duration> {
    let mut conn = probe(socket).await?;
    let mut samples = Vec::new();
    for _ in 0..9 {
        samples.push(sample(&mut conn).await?);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    samples.sort();
    Ok(samples[4])
}

/// dbsnap's wait (transfer::quiet): the median of the latest three probe commits,
/// every 100 ms, within the target, or the bound.
async fn wait_until_quiet(socket: &Path, baseline: Duration) -> anyhow::Result<()> {
    let mut conn = probe(socket).await?;
    let limit = baseline.mul_f64(QUIET_TARGET);
    let deadline = Instant::now() + QUIET_BOUND;
    let mut recent = std::collections::VecDeque::new();
    while Instant::now() < deadline {
        if recent.len() == 3 {
            recent.pop_front();
        }
        recent.push_back(sample(&mut conn).await?);
        let mut sorted: Vec<Duration> = recent.iter().copied().collect();
        sorted.sort();
        if sorted.len() == 3 && sorted[1] <= limit {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("not quiet within {QUIET_BOUND:?}");
    Ok(())
}

/// Make the snapshot writable and truncate its large files step by step, so that
/// each transaction frees a bounded share of its extents.
fn spread(snapshot: &Path) -> anyhow::Result<()> {
    let args: [&std::ffi::OsStr; 6] = [
        "property".as_ref(),
        "set".as_ref(),
        "-ts".as_ref(),
        snapshot.as_os_str(),
        "ro".as_ref(),
        "false".as_ref(),
    ];
    rig::run("btrfs", &args).context("making the snapshot writable")?;
    for entry in walkdir::WalkDir::new(snapshot).into_iter().flatten() {
        let big = entry
            .metadata()
            .is_ok_and(|m| m.is_file() && m.len() > TRUNCATE_STEP);
        if !big {
            continue;
        }
        let file = std::fs::OpenOptions::new().write(true).open(entry.path())?;
        let mut len = file.metadata()?.len();
        while len > 0 {
            len = len.saturating_sub(TRUNCATE_STEP);
            file.set_len(len)?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// The btrfs backend's `spread_release` steps for `snapshot` of `datadir`, at the
/// product's ceiling (64 MiB a step, a step every 100 ms).
async fn backend_steps(datadir: &Path, snapshot: &Path) -> anyhow::Result<()> {
    use dbsnap_backend_api::{SnapshotBackend, SnapshotName, SnapshotSet, Volume, VolumeSnapshot};
    let file = snapshot.file_name().unwrap().to_string_lossy();
    let name = file.trim_end_matches(".0").to_string();
    let set = SnapshotSet {
        backend: "btrfs".into(),
        name: SnapshotName::new(name)?,
        snapshots: vec![VolumeSnapshot {
            volume: Volume {
                id: datadir.display().to_string(),
                root: datadir.to_path_buf(),
                fstype: "btrfs".into(),
            },
            id: snapshot.display().to_string(),
        }],
    };
    let backend = dbsnap_btrfs::Btrfs::new(dbsnap_btrfs::BtrfsConfig::default());
    let Some(mut steps) = backend.spread_release(&set).await? else {
        eprintln!("the backend does not spread this snapshot: below its bar");
        return Ok(());
    };
    while steps.step(TRUNCATE_STEP).await?.is_some() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn stats(run: &Run, commits: &[(f64, f64)]) -> Stats {
    let in_flight = |from: f64, to: f64| {
        commits
            .iter()
            .filter(move |(b, l)| *b < to && b + l > from)
            .map(|(_, l)| *l)
    };
    let worst = |from: f64, to: f64| in_flight(from, to).reduce(f64::max);
    let mut baseline: Vec<f64> = commits
        .iter()
        .filter(|(b, l)| *b >= run.baseline_from_ms && b + l < run.burst_from_ms)
        .map(|(_, l)| *l)
        .collect();
    baseline.sort_by(f64::total_cmp);
    let baseline_rate = baseline.len() as f64 / ((run.burst_from_ms - run.baseline_from_ms) / 1e3);
    let (from, to) = (run.burst_from_ms, run.end_ms);
    let buckets_n = ((to - from) / BUCKET_MS).floor() as usize;
    let mut buckets = vec![(0usize, 0f64); buckets_n];
    for (began, latency) in commits {
        let acked = began + latency;
        if acked >= from && acked < from + buckets_n as f64 * BUCKET_MS {
            let b = &mut buckets[((acked - from) / BUCKET_MS) as usize];
            b.0 += 1;
            b.1 = b.1.max(*latency);
        }
    }
    let lowest_100ms = buckets.iter().map(|b| b.0).min().unwrap_or(0) as f64;
    let lowest_second = buckets
        .chunks_exact(10)
        .map(|c| c.iter().map(|b| b.0).sum::<usize>())
        .min()
        .unwrap_or(0) as f64;
    Stats {
        baseline_p99_ms: baseline
            .get(((baseline.len() as f64 * 0.99) as usize).min(baseline.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0),
        baseline_worst_ms: baseline.last().copied().unwrap_or(0.0),
        worst_ms: worst(from, to).unwrap_or(0.0),
        delayed: in_flight(from, to).filter(|l| *l > DELAYED_MS).count(),
        lowest_100ms_vs_baseline: lowest_100ms / (baseline_rate / 10.0).max(1e-9),
        lowest_second_vs_baseline: lowest_second / baseline_rate.max(1e-9),
        worst_burst_ms: worst(run.burst_from_ms, run.delete_from_ms),
        worst_delete_ms: worst(run.delete_from_ms, run.delete_to_ms),
        worst_cleaner_ms: worst(run.delete_to_ms, run.cleaner_done_ms + 1000.0),
        wait_ms: run.delete_from_ms - run.wait_from_ms,
        delete_call_ms: run.delete_to_ms - run.delete_from_ms,
        cleaner_ms: run.cleaner_done_ms - run.delete_to_ms,
        buckets,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn print_table(runs: &[Run], variants: &[String]) {
    println!(
        "| variant | worst commit ms | commits > 100 ms | lowest 100 ms / second vs baseline | \
         worst during burst / delete / cleaner ms | wait / delete / cleaner ms | baseline p99 / worst ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for variant in variants {
        let of: Vec<&Stats> = runs
            .iter()
            .filter(|r| &r.variant == variant)
            .filter_map(|r| r.stats.as_ref())
            .collect();
        let m = |f: &dyn Fn(&Stats) -> f64| median(of.iter().map(|s| f(s)).collect());
        let range = |f: &dyn Fn(&Stats) -> f64| {
            let v: Vec<f64> = of.iter().map(|s| f(s)).collect();
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{:.0} ({lo:.0}–{hi:.0})", m(f))
        };
        println!(
            "| {variant} | {} | {} | {:.0} % / {:.0} % | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {:.1} / {:.0} |",
            range(&|s| s.worst_ms),
            range(&|s| s.delayed as f64),
            m(&|s| s.lowest_100ms_vs_baseline) * 100.0,
            m(&|s| s.lowest_second_vs_baseline) * 100.0,
            m(&|s| s.worst_burst_ms.unwrap_or(0.0)),
            m(&|s| s.worst_delete_ms.unwrap_or(0.0)),
            m(&|s| s.worst_cleaner_ms.unwrap_or(0.0)),
            m(&|s| s.wait_ms),
            m(&|s| s.delete_call_ms),
            m(&|s| s.cleaner_ms),
            m(&|s| s.baseline_p99_ms),
            m(&|s| s.baseline_worst_ms),
        );
    }
    let loads: Vec<&str> = runs.iter().map(|r| r.load_average.as_str()).collect();
    println!(
        "\nload averages (1/5/15 min) at each run's end: {}",
        loads.join("; ")
    );
}
