//! The ways of taking a backup that are compared, each run once by [`run`].
//!
//! Every case reports the window in which commits could be blocked: from the moment
//! the blocking statement was sent (lock wait included) to the moment it was released.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{ensure, Context};
use mysql_async::prelude::Queryable;
use serde::Serialize;
use serde_json::json;

use crate::rig::{self, Rig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// `dbsnap backup --lock MODE`, paced by the server's commit latency (the default).
    Dbsnap(&'static str),
    /// `dbsnap backup --lock auto` with `[backup] pace = "off"`: the copy at full speed.
    DbsnapUnpaced,
    /// `mariabackup --backup`: copies while the server runs, then takes BACKUP STAGE
    /// BLOCK_COMMIT at the end to copy the redo log tail and the binlog position.
    Mariabackup,
    /// What mylvmbackup-style scripts do: one session runs FLUSH TABLES WITH READ LOCK,
    /// the snapshot command, UNLOCK TABLES. No copy (that happens after the unlock).
    Classic,
    /// The snapshot command with no lock at all (after a `sync -f`, as dbsnap does
    /// before locking): the physical floor of any lock window. Then a plain `cp -a` of
    /// the snapshot and a `sync -f` of the copy, the floor for a durable copy (a copy
    /// left in the page cache is not a backup yet; `cp -a` alone is in the detail).
    SnapshotOnly,
    /// The snapshot (no lock, after a `sync -f`) kept for [`IDLE`] with nothing reading
    /// it, then deleted: what the snapshot's existence alone costs the writers (on btrfs
    /// every first write to a tree block or extent the snapshot shares copies it).
    SnapshotHeld,
    /// The snapshot, every file of it read once at full speed and thrown away (`tar` to
    /// a pipe), then deleted: the copy's reads without its writes.
    SnapshotRead,
    /// No backup at all: the writers alone for [`IDLE`], about as long as a paced
    /// backup of 1 GB takes. What the application sees from its own load (the worst
    /// commit, the slowest second) is the floor every backup case is judged against.
    NoBackup,
}

/// How long the [`Case::NoBackup`] window lasts.
pub const IDLE: std::time::Duration = std::time::Duration::from_secs(30);

impl Case {
    pub const ALL: [Case; 11] = [
        Case::Dbsnap("ftwrl"),
        Case::Dbsnap("backup-stage"),
        Case::Dbsnap("none"),
        Case::Dbsnap("auto"),
        Case::DbsnapUnpaced,
        Case::Mariabackup,
        Case::Classic,
        Case::SnapshotOnly,
        Case::SnapshotHeld,
        Case::SnapshotRead,
        Case::NoBackup,
    ];

    pub fn name(self) -> String {
        match self {
            Case::Dbsnap(mode) => format!("dbsnap --lock {mode}"),
            Case::DbsnapUnpaced => "dbsnap --lock auto, pace off".into(),
            Case::Mariabackup => "mariabackup --backup".into(),
            Case::Classic => "classic FTWRL + snapshot".into(),
            Case::SnapshotOnly => "snapshot only + cp -a + sync".into(),
            Case::SnapshotHeld => format!("snapshot held {} s, nothing copied", IDLE.as_secs()),
            Case::SnapshotRead => "snapshot + every file read, nothing written".into(),
            Case::NoBackup => format!("no backup ({} s of the writers alone)", IDLE.as_secs()),
        }
    }

    /// Whether a run deletes a snapshot of the datadir when it is done.
    pub fn deletes_snapshot(self) -> bool {
        match self {
            Case::Dbsnap(_)
            | Case::DbsnapUnpaced
            | Case::Classic
            | Case::SnapshotOnly
            | Case::SnapshotHeld
            | Case::SnapshotRead => true,
            Case::Mariabackup | Case::NoBackup => false,
        }
    }

    /// What `--cases` calls it.
    pub fn key(self) -> &'static str {
        match self {
            Case::Dbsnap(mode) => mode,
            Case::DbsnapUnpaced => "unpaced",
            Case::Mariabackup => "mariabackup",
            Case::Classic => "classic",
            Case::SnapshotOnly => "snapshot",
            Case::SnapshotHeld => "held",
            Case::SnapshotRead => "read",
            Case::NoBackup => "idle",
        }
    }
}

/// What one run of one case measured by itself (the commits are laid over it later).
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub case: String,
    pub repeat: usize,
    /// 1-minute load average when the case started: the machine is shared.
    pub load1: f64,
    /// The whole run, in ms since the writers started.
    pub start_ms: f64,
    pub end_ms: f64,
    /// When the datadir's filesystem had finished freeing the snapshots the run deleted
    /// (`btrfs subvolume sync`): the btrfs cleaner works on after `subvolume delete`
    /// returns, and what it costs the writers is the backup's cost too. `end_ms` when
    /// the run deleted nothing.
    pub settled_ms: f64,
    /// Whether the case deletes a snapshot of the datadir (and so leaves the cleaner work).
    pub deletes_snapshot: bool,
    /// The window in which commits could be blocked, in ms since the writers started.
    pub lock_from_ms: f64,
    pub lock_to_ms: f64,
    /// Statements before the blocking one (dbsnap's pre-flush, earlier backup stages).
    pub lock_prelude_ms: Option<f64>,
    /// Lock attempts (dbsnap cancels an attempt after lock_wait_timeout and retries);
    /// wait and hold are the successful attempt's, commit latencies show them all.
    pub lock_attempts: u64,
    pub lock_wait_ms: f64,
    pub lock_hold_ms: f64,
    /// The snapshot command alone, where the benchmark runs it itself.
    pub snapshot_ms: Option<f64>,
    /// What was copied, and how long the copy took.
    pub bytes: Option<u64>,
    pub copy_ms: Option<f64>,
    /// For dbsnap: when it logged "backup complete" (ms since the writers started).
    pub published_ms: Option<f64>,
    /// Case-specific raw facts (dbsnap's lock record, mariabackup's stage lines, ...).
    pub detail: serde_json::Value,
}

/// `t - t0` in milliseconds (negative if `t` is earlier).
pub fn ms_since(t0: SystemTime, t: SystemTime) -> f64 {
    match t.duration_since(t0) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The parts of [`Measured`] every case fills in differently.
struct Window {
    lock_from: SystemTime,
    lock_to: SystemTime,
    lock_prelude_ms: Option<f64>,
    lock_attempts: u64,
    lock_wait_ms: f64,
    lock_hold_ms: f64,
    snapshot_ms: Option<f64>,
    bytes: Option<u64>,
    copy_ms: Option<f64>,
    detail: serde_json::Value,
    published: Option<SystemTime>,
    /// The run's copy, removed once the run is measured (its deletion is not the case's
    /// cost: a kept backup is not deleted).
    copy: Option<PathBuf>,
}

pub fn run(case: Case, repeat: usize, rig: &Rig, t0: SystemTime) -> anyhow::Result<Measured> {
    let load1 = load1();
    let start = SystemTime::now();
    let w = match case {
        Case::Dbsnap(mode) => dbsnap(rig, mode, &rig.config),
        Case::DbsnapUnpaced => dbsnap(rig, "auto", &rig.config_unpaced),
        Case::Mariabackup => mariabackup(rig),
        Case::Classic => classic(rig),
        Case::SnapshotOnly => snapshot_only(rig),
        Case::SnapshotHeld => snapshot_then(rig, "held-snapshot", |_| {
            std::thread::sleep(IDLE);
            Ok(Worked {
                detail: json!({}),
                ..Worked::default()
            })
        }),
        Case::SnapshotRead => snapshot_then(rig, "read-snapshot", read_snapshot),
        Case::NoBackup => Ok(idle()),
    }
    .with_context(|| format!("case {}", case.name()))?;
    let end = SystemTime::now();
    rig::run(
        "btrfs",
        &[
            "subvolume".as_ref(),
            "sync".as_ref(),
            rig.fs.mountpoint.as_os_str(),
        ],
    )?;
    let settled = SystemTime::now();
    if let Some(copy) = &w.copy {
        std::fs::remove_dir_all(copy).with_context(|| format!("removing {}", copy.display()))?;
    }
    Ok(Measured {
        case: case.name(),
        repeat,
        load1,
        start_ms: ms_since(t0, start),
        end_ms: ms_since(t0, end),
        settled_ms: ms_since(t0, settled),
        deletes_snapshot: case.deletes_snapshot(),
        lock_from_ms: ms_since(t0, w.lock_from),
        lock_to_ms: ms_since(t0, w.lock_to),
        lock_prelude_ms: w.lock_prelude_ms,
        lock_attempts: w.lock_attempts,
        lock_wait_ms: w.lock_wait_ms,
        lock_hold_ms: w.lock_hold_ms,
        snapshot_ms: w.snapshot_ms,
        published_ms: w.published.map(|t| ms_since(t0, t)),
        bytes: w.bytes,
        copy_ms: w.copy_ms,
        detail: w.detail,
    })
}

/// The writers alone for [`IDLE`]: no lock, no copy.
fn idle() -> Window {
    let start = SystemTime::now();
    std::thread::sleep(IDLE);
    Window {
        lock_from: start,
        lock_to: start,
        lock_prelude_ms: None,
        lock_attempts: 0,
        lock_wait_ms: 0.0,
        lock_hold_ms: 0.0,
        snapshot_ms: None,
        bytes: None,
        copy_ms: None,
        detail: json!({}),
        published: None,
        copy: None,
    }
}

/// `dbsnap backup --json --lock MODE` with `config`; the figures come from its manifest.
fn dbsnap(rig: &Rig, mode: &str, config: &std::path::Path) -> anyhow::Result<Window> {
    let out = Command::new(&rig.dbsnap)
        .arg("--config")
        .arg(config)
        .args(["backup", "--json", "--lock", mode])
        .output()
        .context("running dbsnap")?;
    ensure!(
        out.status.success(),
        "dbsnap backup --lock {mode} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("dbsnap --json printed no JSON")?;
    let published_at = logged_at(&String::from_utf8_lossy(&out.stderr), "backup complete:");
    let lock = &manifest["lock"];
    let number = |key: &str| {
        lock[key]
            .as_f64()
            .with_context(|| format!("lock.{key} missing in the manifest"))
    };
    let time = |key: &str| -> anyhow::Result<SystemTime> {
        let text = lock[key]
            .as_str()
            .with_context(|| format!("lock.{key} missing in the manifest"))?;
        Ok(chrono::DateTime::parse_from_rfc3339(text)?.into())
    };
    let wait_ms = number("wait_ms")?;
    let acquired = time("acquired_at")?;
    let transfer = &manifest["transfer"];
    // The copy is not kept: the next run copies the same data again from scratch.
    let path = manifest["path"]
        .as_str()
        .context("path missing in the manifest")?;
    Ok(Window {
        lock_from: acquired - std::time::Duration::from_secs_f64(wait_ms / 1e3),
        lock_to: time("released_at")?,
        lock_prelude_ms: Some(number("prelude_ms")?),
        lock_attempts: lock["attempts"].as_u64().unwrap_or(1),
        lock_wait_ms: wait_ms,
        lock_hold_ms: number("hold_ms")?,
        snapshot_ms: None,
        bytes: transfer["bytes"].as_u64(),
        copy_ms: transfer["duration_ms"].as_f64(),
        detail: json!({
            "lock": lock,
            "transfer": transfer,
        }),
        published: published_at.map(SystemTime::from),
        copy: Some(path.into()),
    })
}

/// When dbsnap logged the first line containing `message` (its log lines start with an
/// RFC 3339 time; colour codes, if any, are dropped first).
fn logged_at(log: &str, message: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    let line = log.lines().find(|l| l.contains(message))?;
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                chars.by_ref().find(|c| *c == 'm');
            }
            c => plain.push(c),
        }
    }
    chrono::DateTime::parse_from_rfc3339(plain.split_whitespace().next()?).ok()
}

/// `mariabackup --backup`. Its log has one-second timestamps, so each line is stamped
/// when it arrives on the pipe instead; the BLOCK_COMMIT window runs from "Starting
/// BACKUP STAGE BLOCK_COMMIT" over "Acquired locks for BACKUP STAGE BLOCK_COMMIT" to
/// "All tables unlocked" (printed once BACKUP STAGE END has returned).
fn mariabackup(rig: &Rig) -> anyhow::Result<Window> {
    let target = rig.dir.path().join("mariabackup");
    let started = SystemTime::now();
    let mut child = Command::new("mariabackup")
        .args(["--backup", "--user=root"])
        .arg(format!("--socket={}", rig.server.socket.display()))
        .arg(format!("--target-dir={}", target.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running mariabackup (apt-get install mariadb-backup)")?;
    let mut stages: Vec<(SystemTime, String)> = Vec::new();
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line?;
        if line.contains("BACKUP STAGE") || line.contains("All tables unlocked") {
            stages.push((SystemTime::now(), line.clone()));
        }
        tail.push(line);
        if tail.len() > 30 {
            tail.remove(0);
        }
    }
    let status = child.wait()?;
    let ended = SystemTime::now();
    ensure!(
        status.success(),
        "mariabackup failed ({status}):\n{}",
        tail.join("\n")
    );
    let at = |needle: &str| {
        stages
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
            .with_context(|| format!("mariabackup's log has no {needle:?}"))
    };
    let requested = at("Starting BACKUP STAGE BLOCK_COMMIT")?;
    let acquired = at("Acquired locks for BACKUP STAGE BLOCK_COMMIT")?;
    let released = at("All tables unlocked")?;
    let bytes = rig::dir_bytes(&target);
    Ok(Window {
        lock_from: requested,
        lock_to: released,
        lock_prelude_ms: None,
        lock_attempts: 1,
        lock_wait_ms: ms_since(requested, acquired),
        lock_hold_ms: ms_since(acquired, released),
        snapshot_ms: None,
        bytes: Some(bytes),
        // mariabackup copies for the whole run; there is no separate copy phase.
        copy_ms: Some(ms_since(started, ended)),
        detail: json!({
            "stages_ms_after_start": stages
                .iter()
                .map(|(t, l)| json!([ms_since(started, *t), l]))
                .collect::<Vec<_>>(),
        }),
        published: None,
        copy: Some(target),
    })
}

/// One session: FLUSH TABLES WITH READ LOCK; btrfs subvolume snapshot -r; UNLOCK TABLES.
fn classic(rig: &Rig) -> anyhow::Result<Window> {
    let snapshot = rig.fs.mountpoint.join("classic-snapshot");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (requested, acquired, snapshot_ms, released) = runtime.block_on(async {
        let opts = mysql_async::OptsBuilder::default()
            .socket(Some(rig.server.socket.display().to_string()))
            .user(Some("root"));
        let mut conn = mysql_async::Conn::new(opts).await?;
        let requested = SystemTime::now();
        conn.query_drop("FLUSH TABLES WITH READ LOCK").await?;
        let acquired = SystemTime::now();
        let snapped = snapshot_command(rig, &snapshot);
        // Unlock first, whatever the snapshot did.
        conn.query_drop("UNLOCK TABLES").await?;
        let released = SystemTime::now();
        conn.disconnect().await?;
        anyhow::Ok((requested, acquired, snapped?, released))
    })?;
    rig::delete_subvolume(&snapshot)?;
    Ok(Window {
        lock_from: requested,
        lock_to: released,
        lock_prelude_ms: None,
        lock_attempts: 1,
        lock_wait_ms: ms_since(requested, acquired),
        lock_hold_ms: ms_since(acquired, released),
        snapshot_ms: Some(snapshot_ms),
        bytes: None,
        copy_ms: None,
        detail: json!({}),
        published: None,
        copy: None,
    })
}

/// `sync -f`, then the snapshot with no lock, then `cp -a` of it.
fn snapshot_only(rig: &Rig) -> anyhow::Result<Window> {
    snapshot_then(rig, "bare-snapshot", |snapshot| {
        let copy = rig.dir.path().join("cp-a");
        let started = SystemTime::now();
        rig::run(
            "cp",
            &["-a".as_ref(), snapshot.as_os_str(), copy.as_os_str()],
        )?;
        let cp_ms = ms_since(started, SystemTime::now());
        rig::run("sync", &["-f".as_ref(), copy.as_os_str()])?;
        Ok(Worked {
            bytes: Some(rig::dir_bytes(&copy)),
            copy_ms: Some(ms_since(started, SystemTime::now())),
            detail: json!({ "cp_ms": cp_ms }),
            copy: Some(copy),
        })
    })
}

/// What a case did with its bare snapshot.
#[derive(Default)]
struct Worked {
    bytes: Option<u64>,
    copy_ms: Option<f64>,
    detail: serde_json::Value,
    /// A copy to remove once the run is measured.
    copy: Option<PathBuf>,
}

/// The snapshot (no lock, after a `sync -f`, as dbsnap flushes before locking), then
/// `work` on it, then its deletion.
fn snapshot_then(
    rig: &Rig,
    name: &str,
    work: impl FnOnce(&std::path::Path) -> anyhow::Result<Worked>,
) -> anyhow::Result<Window> {
    let snapshot = rig.fs.mountpoint.join(name);
    let synced = SystemTime::now();
    rig::run("sync", &["-f".as_ref(), rig.datadir.as_os_str()])?;
    let from = SystemTime::now();
    let snapshot_ms = snapshot_command(rig, &snapshot)?;
    let to = SystemTime::now();
    let mut worked = work(&snapshot)?;
    rig::delete_subvolume(&snapshot)?;
    if let Some(detail) = worked.detail.as_object_mut() {
        detail.insert("sync_ms".into(), json!(ms_since(synced, from)));
    }
    Ok(Window {
        lock_from: from,
        lock_to: to,
        lock_prelude_ms: None,
        lock_attempts: 1,
        lock_wait_ms: 0.0,
        lock_hold_ms: ms_since(from, to),
        snapshot_ms: Some(snapshot_ms),
        bytes: worked.bytes,
        copy_ms: worked.copy_ms,
        detail: worked.detail,
        published: None,
        copy: worked.copy,
    })
}

/// Every file of the snapshot read once, nothing written.
fn read_snapshot(snapshot: &std::path::Path) -> anyhow::Result<Worked> {
    let started = SystemTime::now();
    let bytes = read_every_file(snapshot)?;
    Ok(Worked {
        bytes: Some(bytes),
        copy_ms: Some(ms_since(started, SystemTime::now())),
        detail: json!({}),
        copy: None,
    })
}

/// Read every regular file under `dir` once, 8 MiB at a time; the bytes read.
fn read_every_file(dir: &std::path::Path) -> anyhow::Result<u64> {
    use std::io::Read;
    let mut buffer = vec![0u8; 8 << 20];
    let mut total = 0;
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry?;
        if !entry.file_type().is_file() {
            continue;
        }
        let mut file = std::fs::File::open(entry.path())?;
        loop {
            match file.read(&mut buffer)? {
                0 => break,
                n => total += n as u64,
            }
        }
    }
    Ok(total)
}

/// `btrfs subvolume snapshot -r DATADIR AT`, timed; returns ms.
fn snapshot_command(rig: &Rig, at: &std::path::Path) -> anyhow::Result<f64> {
    let started = SystemTime::now();
    rig.snapshot_datadir(at)?;
    Ok(ms_since(started, SystemTime::now()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_log_lines_time_is_read_with_or_without_colour() {
        let plain = "2026-12-01T11:28:02.679089Z  INFO backup complete: /b/x";
        let coloured = "\u{1b}[2m2026-12-01T11:28:02.679089Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m backup complete: /b/x";
        for log in [plain, coloured] {
            let at = super::logged_at(&format!("other\n{log}\n"), "backup complete:").unwrap();
            assert_eq!(at.to_rfc3339(), "2026-12-01T11:28:02.679089+00:00");
        }
    }
}
