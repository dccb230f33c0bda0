//! results.json (every raw figure) and results.md (medians and spread per case).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use serde::Serialize;
use serde_json::json;

use crate::cases::Case;
use crate::metrics::{spread, Run, Spread, Stretch, DELAYED_MS};
use crate::SizeResult;

/// The machine and the versions the figures came from.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub date: String,
    pub os: String,
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory: String,
    pub versions: Vec<String>,
}

impl Machine {
    pub fn detect() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once([':', '=']))
                .map(|(_, v)| v.trim().trim_matches('"').to_string())
                .unwrap_or_default()
        };
        Machine {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            os: field(&read("/etc/os-release"), "PRETTY_NAME"),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpu: field(&read("/proc/cpuinfo"), "model name"),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory: field(&read("/proc/meminfo"), "MemTotal"),
            versions: [
                ("mariadbd", "--version"),
                ("mariabackup", "--version"),
                ("btrfs", "--version"),
                ("rsync", "--version"),
            ]
            .iter()
            .map(|(program, arg)| first_line(program, arg))
            .collect(),
        }
    }
}

/// First line of a program's version output (mariabackup prints it on stderr).
fn first_line(program: &str, arg: &str) -> String {
    match Command::new(program).arg(arg).output() {
        Ok(out) => {
            let text = [out.stdout, out.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        }
        Err(e) => format!("{program}: {e}"),
    }
}

/// Medians and spread of one case at one size.
#[derive(Debug, Serialize)]
struct Summary {
    case: String,
    lock_attempts: Option<Spread>,
    lock_wait_ms: Option<Spread>,
    lock_hold_ms: Option<Spread>,
    snapshot_ms: Option<Spread>,
    worst_during_ms: Option<Spread>,
    worst_in_lock_ms: Option<Spread>,
    p99_during_ms: Option<Spread>,
    baseline_p99_ms: Option<Spread>,
    baseline_worst_ms: Option<Spread>,
    delayed_during: Option<Spread>,
    lowest_second_pct: Option<Spread>,
    wall_s: Option<Spread>,
    settle_s: Option<Spread>,
    copied_mib: Option<Spread>,
    copy_mb_per_s: Option<Spread>,
    load1: Option<Spread>,
}

fn summarize(case: String, runs: &[&Run]) -> Summary {
    let of = |f: &dyn Fn(&Run) -> Option<f64>| spread(runs.iter().map(|r| f(r)));
    Summary {
        lock_attempts: of(&|r| Some(r.measured.lock_attempts as f64)),
        lock_wait_ms: of(&|r| Some(r.measured.lock_wait_ms)),
        lock_hold_ms: of(&|r| Some(r.measured.lock_hold_ms)),
        snapshot_ms: of(&|r| r.measured.snapshot_ms),
        worst_during_ms: of(&|r| r.worst_during_ms),
        worst_in_lock_ms: of(&|r| r.worst_in_lock_ms),
        p99_during_ms: of(&|r| r.p99_during_ms),
        baseline_p99_ms: of(&|r| r.baseline_p99_ms),
        baseline_worst_ms: of(&|r| r.baseline_worst_ms),
        delayed_during: of(&|r| Some(r.delayed_during as f64)),
        lowest_second_pct: of(&|r| r.lowest_second_vs_baseline.map(|x| x * 100.0)),
        wall_s: of(&|r| Some((r.measured.end_ms - r.measured.start_ms) / 1e3)),
        settle_s: of(&|r| Some((r.measured.settled_ms - r.measured.end_ms) / 1e3)),
        copied_mib: of(&|r| r.measured.bytes.map(|b| b as f64 / (1 << 20) as f64)),
        // MB = 10^6 bytes.
        copy_mb_per_s: of(&|r| Some(r.measured.bytes? as f64 / 1e3 / r.measured.copy_ms?)),
        load1: of(&|r| Some(r.measured.load1)),
        case,
    }
}

fn summaries(size: &SizeResult) -> Vec<Summary> {
    Case::ALL
        .iter()
        .map(|case| {
            let runs: Vec<&Run> = size
                .runs
                .iter()
                .filter(|r| r.measured.case == case.name())
                .collect();
            (case, runs)
        })
        .filter(|(_, runs)| !runs.is_empty())
        .map(|(case, runs)| summarize(case.name(), &runs))
        .collect()
}

pub fn write(
    out: &Path,
    machine: &Machine,
    args: &serde_json::Value,
    sizes: &[SizeResult],
) -> anyhow::Result<()> {
    let doc = json!({
        "machine": machine,
        "args": args,
        "delayed_threshold_ms": DELAYED_MS,
        "sizes": sizes.iter().map(|s| json!({
            "size_gb": s.size_gb,
            "data_bytes": s.data_bytes,
            "commits": s.commits.len(),
            "summary": summaries(s),
            "runs": s.runs,
        })).collect::<Vec<_>>(),
    });
    let json_path = out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = out.join("results.md");
    std::fs::write(&md_path, markdown(machine, args, sizes))
        .with_context(|| format!("writing {}", md_path.display()))?;
    Ok(())
}

fn markdown(machine: &Machine, args: &serde_json::Value, sizes: &[SizeResult]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Each cell: median (min–max) over {} repeats, {} clients committing {} transactions. \
         \"in lock window\" = commits in flight at any time between lock request and release; \
         \"during\" = commits in flight at any time from the backup's start until the filesystem had \
         freed the snapshots it deleted (`btrfs subvolume sync`: the cleaner works on after the run; \"cleaner after the run\" is that \
         time); baseline = the {} s before it; \
         delayed = commits slower than {DELAYED_MS} ms. \
         Lock wait and hold are the successful attempt's; a cancelled dbsnap attempt (after \
         lock_wait_timeout) shows in the commit latencies. Data: GB of filler rows (datadir size). Copy MB/s: dbsnap's copy phase, \
         mariabackup's whole run, `cp -a` of the bare snapshot followed by `sync -f` of the copy. dbsnap is paced by the server's commit \
         latency unless the case says \"pace off\".\n",
        args["repeats"], args["clients"], args["workload"].as_str().unwrap_or("bank"), args["baseline_secs"],
    );
    let _ = writeln!(
        md,
        "| data | case | lock attempts | lock wait ms | lock hold ms | snapshot cmd ms | worst commit in lock window ms | worst commit during backup ms | worst commit baseline ms | p99 during ms | p99 baseline ms | commits > 100 ms | lowest tx/s in a second, % of baseline | wall s | cleaner after the run s | copied MiB | copy MB/s |"
    );
    let _ = writeln!(md, "|{}", "---|".repeat(17));
    for size in sizes {
        for s in summaries(size) {
            let _ = writeln!(
                md,
                "| {} GB ({} MiB) | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                size.size_gb,
                size.data_bytes >> 20,
                s.case,
                cell(s.lock_attempts),
                cell(s.lock_wait_ms),
                cell(s.lock_hold_ms),
                cell(s.snapshot_ms),
                cell(s.worst_in_lock_ms),
                cell(s.worst_during_ms),
                cell(s.baseline_worst_ms),
                cell(s.p99_during_ms),
                cell(s.baseline_p99_ms),
                cell(s.delayed_during),
                cell(s.lowest_second_pct),
                cell(s.wall_s),
                cell(s.settle_s),
                cell(s.copied_mib),
                cell(s.copy_mb_per_s),
            );
        }
    }
    let _ = writeln!(
        md,
        "\nWhere the writers waited: for each stretch of the run, the slowest commit in flight \
         (ms) and the fewest commits in any second overlapping it (% of baseline). dbsnap's phases \
         after the unlock: copy (to the end of the transfer), publish (fsync of the copy, manifest, \
         rename, to \"backup complete\"), release (unmount and the snapshot's release, to the end \
         of the run); for every case that deletes a snapshot: after the run, until the filesystem had freed the deleted \
         snapshots.\n\n| data | case | copy worst ms | copy lowest % | publish worst ms | publish lowest % | \
         release worst ms | release lowest % | after the run worst ms | after the run lowest % |\n|{}",
        "---|".repeat(10)
    );
    for size in sizes {
        for case in Case::ALL {
            let runs: Vec<&Run> = size
                .runs
                .iter()
                .filter(|r| r.measured.case == case.name())
                .collect();
            if runs.is_empty() || case == Case::NoBackup {
                continue;
            }
            let figures = |f: &dyn Fn(&Run) -> Option<Stretch>| {
                let worst = spread(runs.iter().map(|r| f(r).and_then(|s| s.worst_ms)));
                let lowest = spread(runs.iter().map(|r| {
                    f(r).and_then(|s| s.lowest_second_vs_baseline)
                        .map(|x| x * 100.0)
                }));
                format!("{} | {}", cell(worst), cell(lowest))
            };
            let _ = writeln!(
                md,
                "| {} GB | {} | {} | {} | {} | {} |",
                size.size_gb,
                case.name(),
                figures(&|r| r.phases.map(|p| p.copy)),
                figures(&|r| r.phases.map(|p| p.publish)),
                figures(&|r| r.phases.map(|p| p.release)),
                figures(&|r| r.after_run),
            );
        }
    }
    let loads: Vec<f64> = sizes
        .iter()
        .flat_map(|s| s.runs.iter().map(|r| r.measured.load1))
        .collect();
    let load = spread(loads.into_iter().map(Some));
    let _ = writeln!(
        md,
        "\n{}; {} CPUs ({}), {} RAM; kernel {}; {}. \
         1-minute load average at the start of each case: {}. {}.",
        machine.os,
        machine.cpus,
        machine.cpu,
        machine.memory,
        machine.kernel,
        machine.versions.join("; "),
        cell(load),
        machine.date,
    );
    md
}

/// "median (min–max)", or just the value when every repeat agrees or there is one.
fn cell(s: Option<Spread>) -> String {
    let Some(s) = s else {
        return "–".into();
    };
    if s.n == 1 || s.min == s.max {
        num(s.median)
    } else {
        format!("{} ({}–{})", num(s.median), num(s.min), num(s.max))
    }
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 || v.abs() >= 10.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
