//! Prometheus textfile metrics (`[metrics] textfile`), for node_exporter's textfile
//! collector. Rewritten after every run of a command that creates, publishes or
//! releases something, whether it succeeded or failed, from two sources:
//!
//! - the run itself (command, exit code, start and end), merged into the per-command
//!   families read back from the previous file (so one file carries every command's
//!   last run, and `dbsnap_runs_total` keeps counting);
//! - what is on disk now ([`Inventory`]): the newest complete backup's manifest, the
//!   kept snapshots, the journal, the destination's free space.
//!
//! Ages are exported as Unix timestamps (`..._timestamp_seconds`), the Prometheus
//! convention for a file written once per run: `time() - metric` is the age at scrape
//! time, where an age written by the run would be stale by the next scrape.
//!
//! The file is replaced atomically (a temporary file in the same directory, fsync,
//! rename, fsync of the directory) so a scrape sees the old file or the new one, never
//! half of one. Concurrent writers (a cleanup timer while a backup runs) take a flock
//! on the directory for the read-modify-write.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};

use crate::config::Config;
use crate::inventory::Inventory;
use crate::manifest::Verdict;

/// How one run of a command ended.
pub struct Run {
    /// The `command` label, e.g. `backup`, `snapshot-create`.
    pub command: &'static str,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub exit_code: u8,
}

/// Rewrite the metrics file for a run that just ended (no-op without `[metrics]`).
pub async fn record(config: &Config, run: &Run) -> anyhow::Result<()> {
    let Some(metrics) = &config.metrics else {
        return Ok(());
    };
    let path = &metrics.textfile;
    let dir = path
        .parent()
        .context("metrics.textfile has no parent directory")?;
    let dir_handle = File::open(dir).with_context(|| {
        format!(
            "opening metrics.textfile's directory {} (does node_exporter's textfile directory exist?)",
            dir.display()
        )
    })?;
    let _writers = Flock::lock(dir_handle, FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", dir.display()))?;

    let label = config.metrics_label();
    let previous = match std::fs::read_to_string(path) {
        Ok(text) => CommandRuns::parse(&text, &label),
        Err(_) => CommandRuns::default(),
    };
    let runs = previous.with(run);
    let inventory = Inventory::read(config).await?;
    let text = render(&label, &runs, &inventory, Utc::now());
    write_atomically(path, &text)
}

/// The last run of each command, and the run counters, as carried in the file.
#[derive(Debug, Default, Clone, PartialEq)]
struct CommandRuns(BTreeMap<String, CommandRun>);

#[derive(Debug, Default, Clone, PartialEq)]
struct CommandRun {
    last_run: f64,
    last_success: Option<f64>,
    duration: f64,
    exit_code: f64,
    successes: f64,
    failures: f64,
}

impl CommandRuns {
    /// Read back the per-command families of a file this module wrote for `label`.
    fn parse(text: &str, label: &str) -> CommandRuns {
        let mut runs: BTreeMap<String, CommandRun> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, labels, value)) = parse_sample(line) else {
                continue;
            };
            if labels.get("config").map(String::as_str) != Some(label) {
                continue;
            }
            let Some(command) = labels.get("command") else {
                continue;
            };
            let run = runs.entry(command.clone()).or_default();
            match (name, labels.get("result").map(String::as_str)) {
                ("dbsnap_last_run_timestamp_seconds", _) => run.last_run = value,
                ("dbsnap_last_success_timestamp_seconds", _) => run.last_success = Some(value),
                ("dbsnap_last_run_duration_seconds", _) => run.duration = value,
                ("dbsnap_last_run_exit_code", _) => run.exit_code = value,
                ("dbsnap_runs_total", Some("success")) => run.successes = value,
                ("dbsnap_runs_total", Some("failure")) => run.failures = value,
                _ => {}
            }
        }
        CommandRuns(runs)
    }

    fn with(mut self, run: &Run) -> CommandRuns {
        let entry = self.0.entry(run.command.to_string()).or_default();
        let finished = seconds(run.finished);
        entry.last_run = finished;
        entry.duration = (run.finished - run.started).num_milliseconds() as f64 / 1000.0;
        entry.exit_code = f64::from(run.exit_code);
        if run.exit_code == 0 {
            entry.last_success = Some(finished);
            entry.successes += 1.0;
        } else {
            entry.failures += 1.0;
        }
        self
    }
}

/// One sample line of the text format: name, labels, value.
fn parse_sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    let (name, rest) = line.split_once('{')?;
    let (labels, value) = rest.rsplit_once('}')?;
    let mut map = BTreeMap::new();
    let mut chars = labels.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut val = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => val.push('\n'),
                    other => val.push(other),
                },
                '"' => break,
                c => val.push(c),
            }
        }
        map.insert(key.trim_start_matches(',').to_string(), val);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some((name, map, value.trim().parse().ok()?))
}

fn seconds(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// One metric family: HELP, TYPE and its samples.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

fn gauge(name: &'static str, help: &'static str) -> Family {
    Family {
        name,
        kind: "gauge",
        help,
        samples: Vec::new(),
    }
}

impl Family {
    fn sample(mut self, labels: Vec<(&'static str, String)>, value: f64) -> Family {
        self.samples.push((labels, value));
        self
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render(label: &str, runs: &CommandRuns, inv: &Inventory, now: DateTime<Utc>) -> String {
    let mut families = vec![gauge(
        "dbsnap_build_info",
        "The dbsnap version that wrote this file (always 1).",
    )
    .sample(
        vec![
            ("config", label.to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
        ],
        1.0,
    )];
    families.extend(run_families(label, runs));
    families.extend(backup_families(label, inv));
    families.extend(kept_families(label, inv, now));
    families.extend(state_families(label, inv));
    text_of(&families)
}

/// The `config` label alone.
fn config_labels(label: &str) -> Vec<(&'static str, String)> {
    vec![("config", label.to_string())]
}

/// Per command: its last run, last success, duration, exit code, and the run counts.
fn run_families(label: &str, runs: &CommandRuns) -> Vec<Family> {
    let per_command = |command: &str| {
        vec![
            ("config", label.to_string()),
            ("command", command.to_string()),
        ]
    };
    let mut last_run = gauge(
        "dbsnap_last_run_timestamp_seconds",
        "When the command's last run ended (Unix time).",
    );
    let mut last_success = gauge(
        "dbsnap_last_success_timestamp_seconds",
        "When the command last ended successfully (Unix time).",
    );
    let mut duration = gauge(
        "dbsnap_last_run_duration_seconds",
        "How long the command's last run took.",
    );
    let mut exit_code = gauge(
        "dbsnap_last_run_exit_code",
        "The exit code of the command's last run (0: success; see dbsnap --help).",
    );
    let mut success = gauge(
        "dbsnap_last_run_success",
        "1 if the command's last run succeeded, 0 if it failed.",
    );
    let mut total = Family {
        kind: "counter",
        ..gauge(
            "dbsnap_runs_total",
            "Runs of the command by result, since the metrics file was created.",
        )
    };
    for (command, run) in &runs.0 {
        last_run = last_run.sample(per_command(command), run.last_run);
        if let Some(t) = run.last_success {
            last_success = last_success.sample(per_command(command), t);
        }
        duration = duration.sample(per_command(command), run.duration);
        exit_code = exit_code.sample(per_command(command), run.exit_code);
        success = success.sample(
            per_command(command),
            if run.exit_code == 0.0 { 1.0 } else { 0.0 },
        );
        for (result, count) in [("success", run.successes), ("failure", run.failures)] {
            let mut labels = per_command(command);
            labels.push(("result", result.to_string()));
            total = total.sample(labels, count);
        }
    }
    vec![last_run, last_success, duration, exit_code, success, total]
}

/// The backups at the destination, and the newest one's figures.
fn backup_families(label: &str, inv: &Inventory) -> Vec<Family> {
    let config = || config_labels(label);
    let mut families = Vec::new();
    families.push(
        gauge(
            "dbsnap_backups",
            "Complete backups at the destination (those prune considers).",
        )
        .sample(config(), inv.backups.len() as f64),
    );
    if let (Some(oldest), Some(newest)) = (inv.backups.first(), inv.newest()) {
        let verdict = newest.verification.as_ref().map(|v| v.verdict);
        let mut verification = gauge(
            "dbsnap_backup_verification",
            "The newest backup's verification verdict: 1 for the current one of passed, failed, none (not verified).",
        );
        for (name, value) in [
            ("passed", verdict == Some(Verdict::Passed)),
            ("failed", verdict == Some(Verdict::Failed)),
            ("none", verdict.is_none()),
        ] {
            let mut labels = config();
            labels.push(("verdict", name.to_string()));
            verification = verification.sample(labels, if value { 1.0 } else { 0.0 });
        }
        let backup_dir = newest.path.as_path();
        families.extend([
            gauge(
                "dbsnap_backup_newest_timestamp_seconds",
                "When the newest complete backup finished (Unix time, from its manifest).",
            )
            .sample(config(), seconds(newest.finished_at)),
            gauge(
                "dbsnap_backup_oldest_timestamp_seconds",
                "When the oldest complete backup finished (Unix time, from its manifest).",
            )
            .sample(config(), seconds(oldest.finished_at)),
            gauge(
                "dbsnap_backup_duration_seconds",
                "How long the newest complete backup took, from start to publish.",
            )
            .sample(
                config(),
                seconds(newest.finished_at) - seconds(newest.started_at),
            ),
            gauge(
                "dbsnap_backup_lock_wait_seconds",
                "How long the newest backup waited for the database lock.",
            )
            .sample(config(), newest.lock.wait_ms / 1000.0),
            gauge(
                "dbsnap_backup_lock_hold_seconds",
                "How long the newest backup held the database lock (writers waited this long).",
            )
            .sample(config(), newest.lock.hold_ms / 1000.0),
            gauge(
                "dbsnap_backup_transferred_bytes",
                "Bytes of new or changed files the newest backup copied or sent.",
            )
            .sample(config(), newest.transfer.bytes as f64),
            gauge(
                "dbsnap_backup_stored_bytes",
                "Apparent size of the newest backup's files at the destination.",
            )
            .sample(config(), stored_bytes(backup_dir) as f64),
            verification,
        ]);
    }

    families
}

/// The kept snapshots (unless their records cannot be read).
fn kept_families(label: &str, inv: &Inventory, now: DateTime<Utc>) -> Vec<Family> {
    let config = || config_labels(label);
    let mut families = Vec::new();
    match &inv.kept {
        Ok(kept) => {
            let expired = kept
                .iter()
                .filter(|k| k.expires_at.is_some_and(|at| at <= now))
                .count();
            families.push(
                gauge("dbsnap_kept_snapshots", "Kept snapshots (snapshot create).")
                    .sample(config(), kept.len() as f64),
            );
            families.push(
                gauge(
                    "dbsnap_kept_snapshots_expired",
                    "Kept snapshots past their --ttl when this file was written.",
                )
                .sample(config(), expired as f64),
            );
            if let Some(oldest) = kept.iter().map(|k| k.created_at).min() {
                families.push(
                    gauge(
                        "dbsnap_kept_snapshot_oldest_timestamp_seconds",
                        "When the oldest kept snapshot was taken (Unix time).",
                    )
                    .sample(config(), seconds(oldest)),
                );
            }
            if let Some(newest) = kept.iter().max_by_key(|k| k.created_at) {
                families.push(
                    gauge(
                        "dbsnap_kept_snapshot_lock_wait_seconds",
                        "How long the newest kept snapshot waited for the database lock.",
                    )
                    .sample(config(), newest.lock.wait_ms / 1000.0),
                );
                families.push(
                    gauge(
                        "dbsnap_kept_snapshot_lock_hold_seconds",
                        "How long the newest kept snapshot held the database lock.",
                    )
                    .sample(config(), newest.lock.hold_ms / 1000.0),
                );
            }
            if let Some(next) = kept.iter().filter_map(|k| k.expires_at).min() {
                families.push(
                    gauge(
                        "dbsnap_kept_snapshot_next_expiry_timestamp_seconds",
                        "When the first kept snapshot's --ttl runs out (Unix time).",
                    )
                    .sample(config(), seconds(next)),
                );
            }
        }
        Err(e) => tracing::warn!("kept snapshots not in the metrics: {e}"),
    }
    families
}

/// Whether the records are readable, the journal's leftovers, the destination's room.
fn state_families(label: &str, inv: &Inventory) -> Vec<Family> {
    let config = || config_labels(label);
    let mut families = Vec::new();
    families.push(
        gauge(
            "dbsnap_kept_snapshot_records_readable",
            "0 if a kept snapshot's record cannot be read (see dbsnap status).",
        )
        .sample(config(), if inv.kept.is_ok() { 1.0 } else { 0.0 }),
    );
    families.push(
        gauge(
            "dbsnap_journal_leftover_resources",
            "Resources an interrupted run left in the journal (dbsnap cleanup releases them).",
        )
        .sample(config(), inv.leftovers.len() as f64),
    );
    if let Some(space) = inv.dest_space {
        families.push(
            gauge(
                "dbsnap_destination_free_bytes",
                "Free bytes (available to dbsnap) on the destination's filesystem.",
            )
            .sample(config(), space.free as f64),
        );
        families.push(
            gauge(
                "dbsnap_destination_size_bytes",
                "Size of the destination's filesystem.",
            )
            .sample(config(), space.size as f64),
        );
    }

    families
}

fn text_of(families: &[Family]) -> String {
    let mut text = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let _ = writeln!(text, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(text, "# TYPE {} {}", f.name, f.kind);
        for (labels, value) in &f.samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(text, "{}{{{}}} {value}", f.name, labels.join(","));
        }
    }
    text
}

/// The newest backup's stored size (its directory may have been pruned meanwhile).
fn stored_bytes(dir: &Path) -> u64 {
    if dir.is_dir() {
        crate::verify::stored_bytes(dir)
    } else {
        0
    }
}

/// Replace `path` with `text` so that a reader sees either the old or the new file.
/// The temporary file's name does not end in `.prom`: the collector ignores it. Mode
/// 0644 whatever the umask (a hardened unit's UMask=0077), for node_exporter's user.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().context("metrics.textfile has no directory")?;
    let file_name = path.file_name().context("metrics.textfile has no name")?;
    let tmp = dir.join(format!(".{}.tmp", file_name.to_string_lossy()));
    let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(command: &'static str, exit_code: u8, at: i64) -> Run {
        Run {
            command,
            started: DateTime::from_timestamp(at - 90, 0).unwrap(),
            finished: DateTime::from_timestamp(at, 500_000_000).unwrap(),
            exit_code,
        }
    }

    #[test]
    fn runs_survive_a_rewrite_and_keep_counting() {
        let first = CommandRuns::default()
            .with(&run("backup", 0, 1_000))
            .with(&run("prune", 0, 1_010));
        let text = render("db \"1\"", &first, &Inventory::empty(), Utc::now());
        let read = CommandRuns::parse(&text, "db \"1\"");
        assert_eq!(read, first);
        let second = read.with(&run("backup", 10, 2_000));
        let b = &second.0["backup"];
        assert_eq!(
            (b.last_run, b.last_success, b.exit_code, b.duration),
            (2_000.5, Some(1_000.5), 10.0, 90.5)
        );
        assert_eq!((b.successes, b.failures), (1.0, 1.0));
        assert_eq!(CommandRuns::parse(&text, "other"), CommandRuns::default());
    }

    #[test]
    fn every_family_has_help_and_type_and_conventional_names() {
        let runs = CommandRuns::default().with(&run("backup", 0, 1_000));
        let text = render("db1", &runs, &Inventory::empty(), Utc::now());
        let mut families = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                families.push(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split('{').next().unwrap();
                assert_eq!(families.last().map(String::as_str), Some(name), "{text}");
                assert!(line.contains("config=\"db1\""), "{line}");
            }
        }
        for name in &families {
            assert!(name.starts_with("dbsnap_"), "{name}");
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} has no TYPE"
            );
        }
        let mut unique = families.clone();
        unique.dedup();
        assert_eq!(unique, families, "a family appears twice");
        assert!(text.contains("# TYPE dbsnap_runs_total counter"));
    }

    #[test]
    fn the_file_is_replaced_and_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dbsnap.prom");
        std::fs::write(&path, "old").unwrap();
        write_atomically(&path, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["dbsnap.prom"]);
    }
}
