//! dbsnap-bench-copy: does dbsnap's copy to a local destination run at the speed of
//! `cp -a` of the same snapshot?
//!
//! The benchmark rig (MariaDB on a loop-device btrfs with filler data: a few big files)
//! plus `--small-tables` small InnoDB tables (many small files). Two destinations: a
//! directory on the work directory's own filesystem (ext4 here, as in the whole-backup
//! benchmark) and a second loop-device btrfs (the backup disk, as in the incremental
//! benchmark). Per destination, `--rounds` rounds of every case, the order rotated each
//! round so that the cases alternate; before each case the page cache is written out
//! and dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`: every case reads cold).
//!
//! Cases: `cp -a` of a read-only snapshot followed by `sync -f` of the destination (a
//! durable copy, what a backup must be); `cp -a` alone (page cache only, the upper
//! bound); and each `--engine LABEL=PATH`: a whole `dbsnap backup` with `pace = "off"`
//! and full copies by that binary (a wrapper script can set its environment). An
//! engine's copy time is the manifest's transfer duration (the copy and its
//! durability; lock, snapshot and release are in the wall time). With `--load N`, N
//! bank clients commit throughout. Writes `copy-speed.json` and `copy-speed.md` into
//! `--out`.
//!
//! Run as root: `cargo run --release -p dbsnap-bench --bin dbsnap-bench-copy -- --rounds 5`.

#[path = "../interrupt.rs"]
mod interrupt;
#[path = "../rig.rs"]
#[allow(dead_code)] // the rig's paced configuration and its binary serve the other benchmarks
mod rig;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context};
use clap::Parser;
use dbsnap_test_support::bank::Writers;
use dbsnap_test_support::btrfs::LoopBtrfs;
use serde::{Deserialize, Serialize};

use rig::Rig;

#[derive(Parser)]
#[command(about = "Copy speed of dbsnap's local engine against cp -a of the same snapshot")]
struct Args {
    /// Filler data in GB (the big files).
    #[arg(long, default_value_t = 1.0)]
    size_gb: f64,
    /// Small InnoDB tables beside the filler (two small files each).
    #[arg(long, default_value_t = 1000)]
    small_tables: u32,
    /// Rounds of every case per destination (medians come from these).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Bank clients committing throughout (0: a quiet server).
    #[arg(long, default_value_t = 0)]
    load: u32,
    /// Destinations: `ext4` (a directory on the work directory's filesystem) and
    /// `btrfs` (a loop-device btrfs).
    #[arg(long, value_delimiter = ',', default_value = "ext4,btrfs")]
    dests: Vec<DestKind>,
    /// A dbsnap binary to time, as LABEL=PATH; repeat for more (default: `dbsnap`
    /// next to this benchmark's executable, labelled "dbsnap").
    #[arg(long = "engine")]
    engines: Vec<String>,
    /// Where copy-speed.json and copy-speed.md go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    out: PathBuf,
    /// Where the filesystems and the server live.
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DestKind {
    Ext4,
    Btrfs,
}

/// One way of copying the snapshot.
#[derive(Debug, Clone)]
enum Case {
    CpSync,
    Cp,
    Engine { label: String, dbsnap: PathBuf },
}

impl Case {
    fn name(&self) -> String {
        match self {
            Case::CpSync => "cp -a + sync".into(),
            Case::Cp => "cp -a (page cache only)".into(),
            Case::Engine { label, .. } => format!("dbsnap backup, pace off: {label}"),
        }
    }
}

/// One timed copy.
#[derive(Debug, Serialize, Deserialize)]
struct Run {
    dest: DestKind,
    case: String,
    round: usize,
    /// The copy (cp: with its sync where the case has one; dbsnap: the manifest's
    /// transfer duration).
    copy_s: f64,
    /// The whole command (dbsnap: lock, snapshot, copy, publish, release).
    wall_s: f64,
    /// Bytes in the copied files.
    bytes: u64,
    /// CPU seconds (user + system) the case's processes used: on a machine shared
    /// with other work, a steadier measure of what a copy costs than its duration.
    cpu_s: f64,
    /// The 1-minute load average when the case started.
    load1: f64,
}

/// What one case's command took.
struct Timed {
    copy_s: f64,
    wall_s: f64,
    bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct Results {
    size_gb: f64,
    small_tables: u32,
    load_clients: u32,
    data_mib: u64,
    files: u64,
    runs: Vec<Run>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "run as root: the benchmark mounts loop devices, starts MariaDB and drops caches"
    );
    interrupt::catch_signals()?;
    let engines = engines(&args)?;
    std::fs::create_dir_all(&args.out)?;
    eprintln!(
        "== loading {} GB and {} small tables",
        args.size_gb, args.small_tables
    );
    let rig = Rig::new(&args.work_dir, args.size_gb, &engines[0].1)?;
    add_small_tables(&rig, args.small_tables);
    rig::run("sync", &["-f".as_ref(), rig.datadir.as_os_str()])?;
    let snapshot = rig.fs.mountpoint.join("reference-snapshot");
    rig.snapshot_datadir(&snapshot)?;
    let (data_bytes, files) = tree_size(&snapshot);
    eprintln!("== {} MiB in {files} files", data_bytes >> 20);
    let disk_dir = rig.dir.path().join("disk");
    std::fs::create_dir(&disk_dir)?;
    // Room for one copy and what btrfs needs beside it (the image is sparse).
    let disk = LoopBtrfs::new(&disk_dir, "backup disk", (data_bytes >> 20) * 3 + 2048);
    let writers = (args.load > 0).then(|| Writers::start(&rig.server.socket, args.load));

    let mut cases = vec![Case::CpSync, Case::Cp];
    cases.extend(
        engines
            .into_iter()
            .map(|(label, dbsnap)| Case::Engine { label, dbsnap }),
    );
    let mut results = Results {
        size_gb: args.size_gb,
        small_tables: args.small_tables,
        load_clients: args.load,
        data_mib: data_bytes >> 20,
        files,
        runs: Vec::new(),
    };
    for &dest_kind in &args.dests {
        let dest = match dest_kind {
            DestKind::Ext4 => rig.dir.path().join("dest-ext4"),
            DestKind::Btrfs => disk.mountpoint.join("dest"),
        };
        std::fs::create_dir_all(&dest)?;
        // What the whole-backup benchmark's unpaced case runs, into this destination.
        let config = rig.dir.path().join(format!("copy-{dest_kind:?}.toml"));
        std::fs::write(
            &config,
            format!(
                "state_dir = {state:?}\n\n[mysql]\nsocket = {socket:?}\nuser = \"root\"\n\n\
                 [snapshot]\nbackend = \"btrfs\"\n\n[backup]\ndest = {dest:?}\n\
                 incremental = false\npace = \"off\"\n",
                state = rig.dir.path().join("state"),
                socket = rig.server.socket,
            ),
        )?;
        for round in 0..args.rounds {
            let mut order = cases.clone();
            order.rotate_left(round % cases.len());
            for case in &order {
                interrupt::check()?;
                drop_caches()?;
                let load1 = load_average()?;
                let cpu_before = children_cpu_s();
                let timed = match case {
                    Case::CpSync | Case::Cp => copy_with_cp(case, &snapshot, &dest, data_bytes)?,
                    Case::Engine { dbsnap, .. } => backup_with_dbsnap(dbsnap, &config)?,
                };
                let run = Run {
                    dest: dest_kind,
                    case: case.name(),
                    round,
                    copy_s: timed.copy_s,
                    wall_s: timed.wall_s,
                    bytes: timed.bytes,
                    cpu_s: children_cpu_s() - cpu_before,
                    load1,
                };
                eprintln!(
                    "-- {dest_kind:?} round {}/{}: {}: {:.2} s ({:.0} MB/s), wall {:.2} s, cpu {:.2} s, load {:.1}",
                    round + 1,
                    args.rounds,
                    run.case,
                    run.copy_s,
                    run.bytes as f64 / 1e6 / run.copy_s,
                    run.wall_s,
                    run.cpu_s,
                    run.load1
                );
                results.runs.push(run);
                empty_dir(&dest)?;
            }
            // After each round, so that a failure later keeps what was measured.
            std::fs::write(
                args.out.join("copy-speed.json"),
                serde_json::to_string_pretty(&results)?,
            )?;
        }
    }
    if let Some(w) = writers {
        w.stop();
    }
    rig::delete_subvolume(&snapshot)?;
    let md = table(&results);
    std::fs::write(args.out.join("copy-speed.md"), &md)?;
    print!("{md}");
    eprintln!("results in {}", args.out.display());
    Ok(())
}

/// The `--engine` binaries, or the `dbsnap` next to this benchmark.
fn engines(args: &Args) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let engines = match args.engines.is_empty() {
        true => vec![(
            "dbsnap".to_string(),
            std::env::current_exe()?
                .parent()
                .context("the benchmark's directory")?
                .join("dbsnap"),
        )],
        false => args
            .engines
            .iter()
            .map(|e| {
                let (label, path) = e
                    .split_once('=')
                    .with_context(|| format!("--engine {e:?}: write LABEL=PATH"))?;
                Ok((label.to_string(), PathBuf::from(path)))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    for (_, path) in &engines {
        ensure!(
            path.exists(),
            "{} not found: build it first (cargo build --release -p dbsnap) or pass --engine",
            path.display()
        );
    }
    Ok(engines)
}

/// `n` small InnoDB tables of 100 rows each in the schema `many` (each an `.ibd` and a
/// `.frm`), as on a server with many schemas.
fn add_small_tables(rig: &Rig, n: u32) {
    if n == 0 {
        return;
    }
    rig.server.sql("CREATE DATABASE many");
    // In statements of 100 tables: the client takes the SQL as one argument.
    for first in (0..n).step_by(100) {
        let mut sql = String::from("SET SESSION sql_log_bin = 0;");
        for i in first..n.min(first + 100) {
            sql.push_str(&format!(
                "CREATE TABLE many.t{i} (id INT PRIMARY KEY, pad BLOB) ENGINE=InnoDB;\
                 INSERT INTO many.t{i} SELECT seq, RANDOM_BYTES(200) FROM bank.seq_1_to_100;"
            ));
        }
        rig.server.sql(&sql);
    }
}

/// Write the page cache out and drop it, so that the next copy reads from the disk.
fn drop_caches() -> anyhow::Result<()> {
    rig::run::<&str>("sync", &[])?;
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").context("dropping the page cache")
}

/// CPU seconds used so far by the children this process has waited for.
fn children_cpu_s() -> f64 {
    use nix::libc;
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid rusage.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn load_average() -> anyhow::Result<f64> {
    let text = std::fs::read_to_string("/proc/loadavg")?;
    Ok(text
        .split_whitespace()
        .next()
        .context("empty /proc/loadavg")?
        .parse()?)
}

/// `cp -a` of the snapshot into `dest`, with `sync -f` for [`Case::CpSync`].
fn copy_with_cp(case: &Case, snapshot: &Path, dest: &Path, bytes: u64) -> anyhow::Result<Timed> {
    let to = dest.join("copy");
    let started = Instant::now();
    rig::run("cp", &["-a".as_ref(), snapshot.as_os_str(), to.as_os_str()])?;
    if matches!(case, Case::CpSync) {
        rig::run("sync", &["-f".as_ref(), to.as_os_str()])?;
    }
    let copy_s = started.elapsed().as_secs_f64();
    Ok(Timed {
        copy_s,
        wall_s: copy_s,
        bytes,
    })
}

/// One whole `dbsnap backup` with `config`.
fn backup_with_dbsnap(dbsnap: &Path, config: &Path) -> anyhow::Result<Timed> {
    let started = Instant::now();
    let out = Command::new(dbsnap)
        .arg("--config")
        .arg(config)
        .args(["backup", "--json"])
        .output()
        .with_context(|| format!("running {}", dbsnap.display()))?;
    let wall_s = started.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "{} backup: {}",
        dbsnap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let transfer = &manifest["transfer"];
    ensure!(
        transfer["method"] == "copy",
        "the backup was not a full copy by the local engine: {transfer}"
    );
    Ok(Timed {
        copy_s: transfer["duration_ms"].as_f64().context("no duration")? / 1000.0,
        wall_s,
        bytes: transfer["bytes"].as_u64().context("no byte count")?,
    })
}

/// Remove everything in `dir` (the copy or backup just timed).
fn empty_dir(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        match path.is_dir() {
            true => std::fs::remove_dir_all(&path),
            false => std::fs::remove_file(&path),
        }
        .with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// Bytes in the regular files under `dir`, and how many there are.
fn tree_size(dir: &Path) -> (u64, u64) {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .fold((0, 0), |(bytes, files), m| (bytes + m.len(), files + 1))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn table(results: &Results) -> String {
    let mut md = format!(
        "{} MiB in {} files ({} GB filler, {} small tables), {}; every case read cold \
         (page cache dropped before it), {} rounds alternated. Copy s: the copy made \
         durable (cp: with `sync -f`; dbsnap: the manifest's transfer duration), median \
         (min–max). MB/s: 10⁶ bytes per copy second. CPU s: user + system time of the case's \
         processes (dbsnap: the whole backup), median. Ratio: median MB/s over the median \
         of `cp -a + sync` on the same destination.\n\n\
         | destination | case | copy s | MB/s | × cp -a + sync | × cp -a | CPU s | dbsnap wall s | load 1 min |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        results.data_mib,
        results.files,
        results.size_gb,
        results.small_tables,
        match results.load_clients {
            0 => "no load on the server".to_string(),
            n => format!("{n} bank clients committing throughout"),
        },
        results.runs.iter().map(|r| r.round + 1).max().unwrap_or(0),
    );
    let mut keys: Vec<(DestKind, &str)> = Vec::new();
    for r in &results.runs {
        if !keys.contains(&(r.dest, r.case.as_str())) {
            keys.push((r.dest, &r.case));
        }
    }
    let speed = |dest: DestKind, case: &str| {
        median(
            results
                .runs
                .iter()
                .filter(|r| r.dest == dest && r.case == case)
                .map(|r| r.bytes as f64 / 1e6 / r.copy_s)
                .collect(),
        )
    };
    for (dest, case) in keys {
        let runs: Vec<&Run> = results
            .runs
            .iter()
            .filter(|r| r.dest == dest && r.case == case)
            .collect();
        let copy: Vec<f64> = runs.iter().map(|r| r.copy_s).collect();
        let (low, high) = copy
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &s| (l.min(s), h.max(s)));
        let mb_s = speed(dest, case);
        let wall = match case.starts_with("dbsnap") {
            true => format!("{:.2}", median(runs.iter().map(|r| r.wall_s).collect())),
            false => "–".into(),
        };
        let (load_low, load_high) = runs.iter().fold((f64::MAX, f64::MIN), |(l, h), r| {
            (l.min(r.load1), h.max(r.load1))
        });
        md.push_str(&format!(
            "| {dest:?} | {case} | {:.2} ({low:.2}–{high:.2}) | {mb_s:.0} | {:.2} | {:.2} | {:.2} | {wall} | {load_low:.1}–{load_high:.1} |\n",
            median(copy),
            mb_s / speed(dest, &Case::CpSync.name()),
            mb_s / speed(dest, &Case::Cp.name()),
            median(runs.iter().map(|r| r.cpu_s).collect()),
        ));
    }
    md
}
