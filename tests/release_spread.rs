//! A spread release (`[backup] pace = "auto"`, btrfs): after publish, a snapshot whose
//! large files hold more than 256 MiB is made writable and its files truncated in
//! steps paced by the copy's commit probe, then deleted; slow commits hold the steps at
//! the floor; a transfer the probe does not pace (rsync) opens one for the release; a
//! run killed half-way leaves a snapshot that `cleanup` deletes; a copy parent a newer
//! backup replaces is released in steps too. (The
//! stepping and pacing without a server: `release::spread::tests`,
//! `spread::tests` in plugins/btrfs; which snapshots are spread: `release::tests`.)

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::{restore, stderr, stdout_json, time, Sandbox, DBSNAP};
use dbsnap_test_support::bank::{self, Writers};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

/// A sandbox with room for a large file, and one in its datadir: preallocated, so the
/// snapshot holds more than the bar for spreading without writing it.
fn large_sandbox() -> Sandbox {
    large_sandbox_of(1024)
}

/// [`large_sandbox`] on a filesystem of `mib`.
fn large_sandbox_of(mib: u64) -> Sandbox {
    let sb = Sandbox::with_fs_size(mib);
    bank::create(&sb.server);
    let large = sb.server.options.datadir.join("large.bin");
    let out = Command::new("fallocate")
        .args(["-l", "288MiB"])
        .arg(&large)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    sb
}

/// The smallest step and the slowdowns from the log's "… steps of A–B MiB, slowed N
/// times …".
fn steps_in(log: &str) -> (f64, u64) {
    let line = log
        .lines()
        .find(|l| l.contains(": spread over "))
        .unwrap_or_else(|| panic!("no spread release: {log}"));
    let after = line.split("steps of ").nth(1).expect(line);
    let smallest: f64 = after.split('–').next().unwrap().parse().expect(line);
    let slowed = after.split("slowed ").nth(1).expect(line);
    let slowed: u64 = slowed.split(' ').next().unwrap().parse().expect(line);
    (smallest, slowed)
}

#[test]
fn a_large_snapshot_is_released_in_steps_and_the_backup_restores_consistent() {
    let sb = large_sandbox();
    let writers = Writers::start(&sb.server.socket, 4);
    std::thread::sleep(Duration::from_millis(300));
    let out = sb.dbsnap(&["backup", "--json"]);
    let commits = writers.stop();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("in steps: "), "{log}");
    steps_in(&log);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());

    let manifest = stdout_json(&out);
    let backup = PathBuf::from(manifest["path"].as_str().unwrap());
    let restored = sb.dir.path().join("restored");
    restore(&sb, &backup, &restored, &[]);
    let copy = MariaDb::start_existing(ServerOptions {
        server_id: 2,
        ..ServerOptions::new(&restored, &sb.dir.path().join("run2"))
    });
    bank::assert_consistent(
        &copy,
        &commits,
        time(&manifest["lock"]["acquired_at"]),
        time(&manifest["lock"]["released_at"]),
    );
}

#[test]
fn pace_off_deletes_a_large_snapshot_at_once() {
    let sb = large_sandbox();
    let config = std::fs::read_to_string(&sb.config).unwrap() + "pace = \"off\"\n";
    sb.write_raw_config(&config);
    let out = sb.dbsnap(&["backup"]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("in steps"), "{log}");
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn an_rsync_backup_opens_a_probe_for_its_release_in_steps_only() {
    let sb = large_sandbox();
    let config = std::fs::read_to_string(&sb.config).unwrap() + "method = \"rsync\"\n";
    sb.write_raw_config(&config);
    let out = sb.dbsnap(&["backup"]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    let opened = log.find("in steps: ").expect(&log);
    let copied = log.find("backup complete").expect(&log);
    assert!(copied < opened, "{log}");
    assert!(
        !log.contains("pace auto: baseline"),
        "no probe for the copy: {log}"
    );
    steps_in(&log);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn a_retired_copy_parent_is_released_in_steps_when_the_next_backup_replaces_it() {
    // The destination on the datadir's btrfs: reflinks, so each backup's snapshot is
    // kept as the next one's parent, and the one it replaces is released. (--force:
    // the destination is on the snapshotted filesystem.)
    let sb = large_sandbox_of(1536);
    let dest = sb.fs.mountpoint.join("backups");
    std::fs::create_dir(&dest).unwrap();
    let config = std::fs::read_to_string(&sb.config).unwrap().replace(
        &format!("dest = {:?}", sb.dest),
        &format!("dest = {dest:?}"),
    );
    sb.write_raw_config(&config);
    let snapshot_of = |out: &std::process::Output| {
        stdout_json(out)["snapshot"]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };

    let first = sb.dbsnap(&["backup", "--json", "--force"]);
    let log = stderr(&first);
    assert!(first.status.success(), "{log}");
    assert!(log.contains("as the base of the next incremental"), "{log}");
    assert!(
        !log.contains("in steps"),
        "the kept parent was freed: {log}"
    );
    let parent = snapshot_of(&first);

    let second = sb.dbsnap(&["backup", "--json", "--force"]);
    let log = stderr(&second);
    assert!(second.status.success(), "{log}");
    assert!(
        log.contains(&format!("releasing snapshot {parent} in steps")),
        "{log}"
    );
    steps_in(&log);
    assert!(
        log.contains(&format!("released snapshot {parent}")),
        "{log}"
    );
    let left = sb.fs.subvolumes_matching("dbsnap-");
    assert_eq!(left.len(), 1, "only the new parent is left: {left:?}");
    assert!(left[0].contains(&snapshot_of(&second)), "{left:?}");
    let journal = std::fs::read_to_string(sb.state.join("journal.json")).unwrap();
    assert_eq!(journal.trim(), "[]", "nothing left journaled");
}

/// A backup whose `post_snapshot` hook waits until the test holds the probe's row
/// (`SELECT ... FOR UPDATE` in a session of its own): from then on every probe commit
/// is stuck behind that lock, as on a server whose commits take ever longer.
struct StuckProbe {
    backup: Child,
    log: PathBuf,
    holder: Child,
    _holder_stdin: ChildStdin,
}

impl StuckProbe {
    fn start(sb: &Sandbox) -> StuckProbe {
        let snapshot_taken = sb.dir.path().join("snapshot taken");
        let go = sb.dir.path().join("probe held");
        let config = std::fs::read_to_string(&sb.config).unwrap();
        sb.write_raw_config(&format!(
            "{config}\n[hooks]\npost_snapshot = [\"/bin/sh\", \"-c\", \"touch \\\"$0\\\"; \
             while [ ! -e \\\"$1\\\" ]; do sleep 0.05; done\", {snapshot_taken:?}, {go:?}]\n"
        ));
        let log = sb.dir.path().join("backup.log");
        let backup = Command::new(DBSNAP)
            .arg("--config")
            .arg(&sb.config)
            .arg("backup")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        assert!(
            wait_for(|| snapshot_taken.exists(), Duration::from_secs(120)),
            "the snapshot was never taken: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let mut holder = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", sb.server.socket.display()))
            .args(["-uroot", "-N", "-B", "--unbuffered"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = holder.stdin.take().unwrap();
        writeln!(
            stdin,
            "BEGIN; SELECT 'held', commits FROM dbsnap.pace_probe WHERE id = 1 FOR UPDATE;"
        )
        .unwrap();
        let mut held = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut held)
            .unwrap();
        assert!(held.starts_with("held"), "{held}");
        std::fs::write(&go, "").unwrap();
        StuckProbe {
            backup,
            log,
            holder,
            _holder_stdin: stdin,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for StuckProbe {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = self.backup.kill();
        let _ = self.backup.wait();
    }
}

fn wait_for(what: impl Fn() -> bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while !what() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    what()
}

#[test]
fn slow_commits_during_the_release_hold_its_steps_at_the_floor_and_it_still_finishes() {
    let sb = large_sandbox();
    let mut stuck = StuckProbe::start(&sb);
    let status = stuck.backup.wait().unwrap();
    let log = stuck.log();
    assert!(status.success(), "{log}");
    let (smallest, slowed) = steps_in(&log);
    assert!(slowed > 0, "{log}");
    // 32 MiB/s, a step every 100 ms.
    assert_eq!(smallest, 3.2, "{log}");
    drop(stuck);
    assert_eq!(sb.backups().len(), 1);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

/// The writable, half-truncated snapshot a killed spread left.
fn writable_snapshots(fs_root: &Path) -> Vec<String> {
    let dir = fs_root.join(".dbsnap-snapshots");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let out = Command::new("btrfs")
            .args(["property", "get", "-ts"])
            .arg(entry.path())
            .arg("ro")
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == "ro=false" {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

#[test]
fn a_run_killed_mid_spread_leaves_a_snapshot_that_cleanup_deletes_and_nothing_else() {
    let sb = large_sandbox();
    let mut stuck = StuckProbe::start(&sb);
    assert!(
        wait_for(
            || stuck.log().contains("in steps: "),
            Duration::from_secs(120)
        ),
        "the release never spread: {}",
        stuck.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    stuck.backup.kill().unwrap();
    stuck.backup.wait().unwrap();
    let left = writable_snapshots(&sb.fs.mountpoint);
    assert_eq!(left.len(), 1, "one half-truncated snapshot: {left:?}");
    assert_eq!(sb.backups().len(), 1, "published before the release");

    let out = sb.dbsnap(&["cleanup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&left[0][..left[0].rfind('.').unwrap()]),
        "{}",
        stderr(&out)
    );
    drop(stuck);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    assert_eq!(sb.backups().len(), 1, "cleanup removed only the snapshot");

    let out = sb.dbsnap(&["backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sb.backups().len(), 2);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}
