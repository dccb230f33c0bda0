//! `dbsnap backup` end to end on real LVM and device-mapper, inside the TCG test guest.
//!
//! `backup_on_real_lvm` (the only test that runs on the host) boots the guest once and
//! runs every `in_guest_` test of this binary inside it, one at a time, each on its own
//! virtual disk with its own volume group. They drive the real `dbsnap` binary against a
//! real MariaDB and assert what a user would check: the restored copy starts, recovers,
//! and holds exactly what was committed before the lock. Run one of them with
//! `DBSNAP_GUEST_TESTS=in_guest_thin cargo test -p dbsnap --test lvm_guest`.
//! Lines starting with `LOCK_HOLD` and `TIMING` are the measurements.
//! `in_guest_snapshot_rollback_of_a_mariadb_datadir` covers `dbsnap snapshot rollback`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{dbsnap_with, restore_with, stderr, stdout_json, time, DBSNAP};
use dbsnap_test_support::bank::{self, Writers};
use dbsnap_test_support::guest;
use dbsnap_test_support::lvm::{follow_pending, run, run_suite, TestVg};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

const MIB: usize = 1 << 20;

#[test]
fn backup_on_real_lvm() {
    let run = run_suite(
        "lvm-backup",
        &[
            "bank", "thin", "overflow", "kept", "kill", "refuse", "rollback",
        ],
    );
    println!(
        "TIMING guest wall {:.1} s (job started at {:.1} s uptime)",
        run.wall.as_secs_f64(),
        run.boot_seconds.unwrap_or(f64::NAN)
    );
    run.assert_success();
}

/// A volume group on one guest disk with a destination LV, a state directory and a
/// dbsnap config; the VG goes away with it (see `TestVg`).
struct LvmSandbox {
    vg: TestVg,
    dest: PathBuf,
    state: PathBuf,
    config: PathBuf,
    /// Scratch space for restored copies: on the destination LV, not in the guest's RAM.
    scratch: PathBuf,
}

impl LvmSandbox {
    fn new(disk: &str, vg: &str) -> LvmSandbox {
        let vg = TestVg::new(disk, vg);
        let run_dir = PathBuf::from(format!("/run/dbsnap-test/{}", vg.name()));
        let state = run_dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let dest_lv = vg.lv("dest", "300M", "ext4");
        let dest = dest_lv.join("backups");
        let scratch = dest_lv.join("scratch");
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        LvmSandbox {
            vg,
            dest,
            state,
            config: run_dir.join("dbsnap.toml"),
            scratch,
        }
    }

    /// `extra` goes into `[snapshot.lvm]`; `bwlimit` into `[backup]`.
    fn write_config(&self, server: &MariaDb, lvm: &str, bwlimit: Option<&str>) {
        let bwlimit = bwlimit.map_or(String::new(), |b| format!("bwlimit = {b:?}\n"));
        std::fs::write(
            &self.config,
            format!(
                "state_dir = {state:?}\n\n[mysql]\nsocket = {socket:?}\nuser = \"root\"\n\n\
                 [snapshot]\nbackend = \"lvm\"\n\n[snapshot.lvm]\n{lvm}\n\n\
                 [backup]\ndest = {dest:?}\n{bwlimit}",
                state = self.state,
                socket = server.socket,
                dest = self.dest,
            ),
        )
        .unwrap();
    }

    fn dbsnap(&self, args: &[&str]) -> Output {
        dbsnap_with(&self.config, args)
    }

    /// Start `dbsnap backup` in the background and wait until rsync has written a file.
    fn start_copying_backup(&self) -> std::process::Child {
        let mut child = Command::new(DBSNAP)
            .arg("--config")
            .arg(&self.config)
            .arg("backup")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.is_copying() {
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!("the backup never started copying: {}", stderr(&out));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child
    }

    fn is_copying(&self) -> bool {
        std::fs::read_dir(&self.dest)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .any(|e| {
                walkdir::WalkDir::new(e.path())
                    .into_iter()
                    .flatten()
                    .any(|f| f.file_type().is_file())
            })
    }

    /// Complete backups at the destination.
    fn backups(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dest)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("manifest.toml").exists())
            .collect();
        v.sort();
        v
    }

    /// Everything a run could leave behind (empty = clean): snapshot LVs, mounts of them
    /// or under the state dir, partial copies, journal entries.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for line in run(&[
            "lvs",
            "--noheadings",
            "-o",
            "lv_name,lv_tags,origin",
            self.vg.name(),
        ])
        .lines()
        {
            if line.contains("dbsnap") {
                left.push(format!("LV {}", line.trim()));
            }
        }
        let mapper = format!("/dev/mapper/{}-dbsnap", self.vg.name().replace('-', "--"));
        let state = self.state.display().to_string();
        for line in std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
        {
            if line.starts_with(&mapper) || line.contains(&state) {
                left.push(format!("mount {line}"));
            }
        }
        for e in std::fs::read_dir(&self.dest).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".partial") {
                left.push(format!("partial dir {}", e.path().display()));
            }
        }
        if let Ok(text) = std::fs::read_to_string(self.state.join("journal.json")) {
            if text.trim() != "[]" {
                left.push(format!("journal entries {text}"));
            }
        }
        left
    }
}

/// Change far more of the origin mounted at `origin` than an 8 MiB snapshot of it can
/// hold (48 MiB, synced): LVM invalidates the snapshot. Returns the file written.
fn overflow_the_snapshot_of(origin: &Path) -> PathBuf {
    use std::io::Write;
    let filler = origin.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    for _ in 0..48 {
        f.write_all(&[7u8; MIB]).unwrap();
    }
    f.sync_all().unwrap();
    filler
}

/// A MariaDB with its datadir at `<data>/mysql` and its binary log at `log_bin`.
fn start_server(data: &Path, log_bin: &Path, run_dir: &str) -> MariaDb {
    let mut options = ServerOptions::new(&data.join("mysql"), Path::new(run_dir));
    options.log_bin = Some(log_bin.to_path_buf());
    MariaDb::start(options)
}

/// Strip terminal colour codes from tracing output.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// From `dbsnap -v` stderr: the (start, end) wall-clock interval of every `lvcreate`.
/// The runner logs each command when it ends, with its duration in ms.
fn lvcreate_intervals(log: &str) -> Vec<(SystemTime, SystemTime)> {
    plain(log)
        .lines()
        .filter(|l| l.contains("command=lvcreate"))
        .map(|l| {
            let stamp = l.split_whitespace().next().unwrap();
            let end = SystemTime::from(
                chrono::DateTime::parse_from_rfc3339(stamp)
                    .unwrap_or_else(|e| panic!("no timestamp in {l:?}: {e}")),
            );
            let ms: u64 = l
                .split(" ms=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|ms| ms.parse().ok())
                .unwrap_or_else(|| panic!("no ms= in {l:?}"));
            (end - Duration::from_millis(ms), end)
        })
        .collect()
}

/// The lock hold dbsnap logged (`hold_ms=`), for runs that end without a manifest.
fn logged_hold_ms(log: &str) -> String {
    plain(log)
        .split(" hold_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("(not logged)")
        .to_string()
}

/// Back up under the bank workload (8 writers, MyISAM audit rows), restore datadir and
/// binlogs to scratch, start a second server on them and check consistency, binlog
/// coordinates and GTID. Returns the manifest.
fn backup_restore_and_verify(
    sb: &LvmSandbox,
    server: &MariaDb,
    logs_dir: &Path,
    label: &str,
) -> serde_json::Value {
    let writers = Writers::start_with_audit(&server.socket, 8);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let out = sb.dbsnap(&["-v", "backup", "--json"]);
    let backup_wall = started.elapsed();
    // Writers keep going after the unlock so that "began after the unlock" is tested.
    std::thread::sleep(Duration::from_millis(500));
    let commits = writers.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = stdout_json(&out);
    println!(
        "LOCK_HOLD {label}: mode {} wait {} ms hold {} ms (backup wall {:.1} s, {} commits)",
        manifest["lock"]["mode"],
        manifest["lock"]["wait_ms"],
        manifest["lock"]["hold_ms"],
        backup_wall.as_secs_f64(),
        commits.len()
    );

    // The manifest records every volume; LVM snapshots of several LVs are not atomic.
    let volumes = manifest["snapshot"]["volumes"].as_array().unwrap();
    assert_eq!(manifest["snapshot"]["backend"], "lvm");
    assert_eq!(manifest["coordinates"]["exact"], true);
    let acquired = time(&manifest["lock"]["acquired_at"]);
    let released = time(&manifest["lock"]["released_at"]);

    // The lock covered every lvcreate: each started after the lock was taken and ended
    // before it was released (wall clock, from the same host clock as the manifest).
    let intervals = lvcreate_intervals(&stderr(&out));
    assert_eq!(intervals.len(), volumes.len(), "{intervals:?}");
    for (start, end) in &intervals {
        // The log's duration is whole milliseconds, so the start may look 1 ms late.
        assert!(
            *start + Duration::from_millis(1) >= acquired && *end <= released,
            "an lvcreate ran outside the lock: {start:?}..{end:?} vs {acquired:?}..{released:?}"
        );
    }

    let backup = PathBuf::from(manifest["path"].as_str().unwrap());
    assert_eq!(sb.backups(), vec![backup.clone()]);
    let datadir = PathBuf::from(manifest["server"]["datadir"].as_str().unwrap());

    // The binlog named in the manifest ends exactly at the recorded position.
    let binlog = manifest["coordinates"]["binlog_file"].as_str().unwrap();
    let position = manifest["coordinates"]["binlog_position"].as_u64().unwrap();
    let stored_logs = backup
        .join("files")
        .join(logs_dir.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::metadata(stored_logs.join(binlog)).unwrap().len(),
        position
    );

    // `dbsnap verify` recovers a scratch copy whose binlog directory is apart too.
    let out = sb.dbsnap(&["verify", backup.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = stdout_json(&out);
    assert_eq!(v["verdict"], "passed", "{v}");
    println!("{label}: verified, recovery {} ms", v["recovery_ms"]);

    // `dbsnap restore` puts a binlog directory kept apart from the datadir beside the
    // new datadir, as `<datadir>.binlog`, with its index rewritten.
    let restored = sb.scratch.join(format!("restored-{label}"));
    restore_with(&sb.config, &backup, &restored, &[]);
    let restored_logs = if logs_dir == datadir {
        restored.clone()
    } else {
        sb.scratch.join(format!("restored-{label}.binlog"))
    };
    let copy = MariaDb::start_existing(ServerOptions {
        server_id: 2,
        log_bin: Some(restored_logs.join("binlog")),
        ..ServerOptions::new(&restored, Path::new(&format!("/run/mysqld/r-{label}")))
    });
    let verdict = bank::assert_consistent(&copy, &commits, acquired, released);
    println!("{label}: {verdict:?}");
    // Crash recovery on the copy ends at the GTID the manifest recorded.
    assert_eq!(
        copy.sql("SELECT @@gtid_binlog_pos"),
        manifest["coordinates"]["gtid_binlog_pos"].as_str().unwrap()
    );
    copy.stop();
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    manifest
}

#[test]
#[ignore = "runs inside the TCG guest, started by backup_on_real_lvm"]
fn in_guest_xfs_datadir_and_ext4_binlogs_under_bank_load() {
    guest::require_guest();
    let sb = LvmSandbox::new("bank", "dbbank");
    let data = sb.vg.lv("data", "320M", "xfs");
    let logs = sb.vg.lv("logs", "100M", "ext4");
    let server = start_server(&data, &logs.join("binlog"), "/run/mysqld/bank");
    bank::create(&server);
    sb.write_config(&server, "", None);

    let manifest = backup_restore_and_verify(&sb, &server, &logs, "xfs+ext4");
    assert_eq!(manifest["snapshot"]["atomic"], false);
    let volumes: Vec<(String, String)> = manifest["snapshot"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["volume"].as_str().unwrap().to_string(),
                v["fstype"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        volumes,
        vec![
            ("dbbank/data".to_string(), "xfs".to_string()),
            ("dbbank/logs".to_string(), "ext4".to_string())
        ]
    );
    // Non-atomic snapshots: `auto` must still pick a mode that blocks commits.
    assert_eq!(manifest["lock"]["mode"], "backup-stage");
    server.stop();
}

#[test]
#[ignore = "runs inside the TCG guest, started by backup_on_real_lvm"]
fn in_guest_thin_lv_under_bank_load() {
    guest::require_guest();
    let sb = LvmSandbox::new("thin", "dbthin");
    sb.vg.thin_pool("pool", "500M");
    let data = sb.vg.thin_lv("pool", "data", "400M", "xfs");
    let datadir = data.join("mysql");
    let server = start_server(&data, &datadir.join("binlog"), "/run/mysqld/thin");
    bank::create(&server);
    sb.write_config(&server, "", None);

    let manifest = backup_restore_and_verify(&sb, &server, &datadir, "thin");
    assert_eq!(manifest["snapshot"]["atomic"], true);
    let volumes = manifest["snapshot"]["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0]["volume"], "dbthin/data");
    server.stop();
}

#[test]
#[ignore = "runs inside the TCG guest, started by backup_on_real_lvm"]
fn in_guest_overflowing_snapshot_fails_the_backup() {
    guest::require_guest();
    let sb = LvmSandbox::new("overflow", "dbover");
    let data = sb.vg.lv("data", "320M", "xfs");
    let server = start_server(&data, &data.join("mysql/binlog"), "/run/mysqld/over");
    bank::create(&server);
    // 8 MiB of copy-on-write space, and a copy slow enough for the watcher to see it fill.
    sb.write_config(&server, "snapshot_size = \"8M\"", Some("1MiB"));

    let child = sb.start_copying_backup();
    let started = Instant::now();
    let filler = overflow_the_snapshot_of(&data);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    println!(
        "TIMING overflow: failed {:.1} s after the writes began\n{err}",
        started.elapsed().as_secs_f64()
    );
    println!("LOCK_HOLD overflow: hold {} ms", logged_hold_ms(&err));
    assert_eq!(out.status.code(), Some(9), "{err}");
    assert!(
        err.contains("the snapshot was lost while copying") && err.contains("invalidated"),
        "{err}"
    );
    assert!(sb.backups().is_empty(), "a backup was published");
    // dmeventd unmounted the invalidated snapshot lazily the moment it overflowed; the
    // run itself removes it, because the copy let go of its files before the release.
    assert!(!err.contains("lvremove failed"), "{err}");
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    std::fs::remove_file(&filler).unwrap();
    server.stop();
}

#[test]
#[ignore = "runs inside the TCG guest, started by backup_on_real_lvm"]
fn in_guest_kept_snapshot_that_overflowed_is_released_with_exit_13() {
    guest::require_guest();
    let sb = LvmSandbox::new("kept", "dbkept");
    let data = sb.vg.lv("data", "320M", "xfs");
    let server = start_server(&data, &data.join("mysql/binlog"), "/run/mysqld/kept");
    bank::create(&server);
    sb.write_config(&server, "snapshot_size = \"8M\"", None);
    let mnt = PathBuf::from("/srv/dbkept-hook");
    std::fs::create_dir_all(&mnt).unwrap();
    let mnt_arg = mnt.to_str().unwrap();
    let out = sb.dbsnap(&["snapshot", "create", "--mount", mnt_arg, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let name = stdout_json(&out)["name"].as_str().unwrap().to_string();
    let listed = stdout_json(&sb.dbsnap(&["snapshot", "list", "--json"]));
    assert_eq!(listed[0]["health"]["status"], "ok", "{listed}");
    // The outside backup tool reads the mount ...
    let datadir = mnt.join(data.join("mysql").strip_prefix("/").unwrap());
    assert!(!std::fs::read(datadir.join("ibdata1")).unwrap().is_empty());

    // ... while the origin changes more than the snapshot can hold.
    let filler = overflow_the_snapshot_of(&data);
    let listed = stdout_json(&sb.dbsnap(&["snapshot", "list", "--json"]));
    assert_eq!(listed[0]["name"], name.as_str(), "{listed}");
    assert_eq!(listed[0]["health"]["status"], "failed", "{listed}");

    let started = Instant::now();
    let out = sb.dbsnap(&["snapshot", "release", mnt_arg]);
    let err = stderr(&out);
    println!(
        "TIMING release of an overflowed kept snapshot {} ms\n{err}",
        started.elapsed().as_millis()
    );
    assert_eq!(out.status.code(), Some(13), "{err}");
    assert!(!err.contains("lvremove failed"), "{err}");
    assert!(
        err.contains("become invalid while kept") && err.contains("overflowed"),
        "{err}"
    );
    // Released all the same: nothing is left to pin space in the volume group.
    let listed = stdout_json(&sb.dbsnap(&["snapshot", "list", "--json"]));
    assert!(listed.as_array().unwrap().is_empty(), "{listed}");
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none());
    std::fs::remove_file(&filler).unwrap();
    server.stop();
}

#[test]
#[ignore = "runs inside the TCG guest, started by backup_on_real_lvm"]
fn in_guest_sigkill_during_copy_then_cleanup() {
    guest::require_guest();
    let sb = LvmSandbox::new("kill", "dbkill");
    let data = sb.vg.lv("data", "320M", "xfs");
    let server = start_server(&data, &data.join("mysql/binlog"), "/run/mysqld/kill");
    bank::create(&server);
    sb.write_config(&server, "", Some("1MiB"));

    let mut child = sb.start_copying_backup();
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    let killed = child.wait_with_output().unwrap();
    println!(
        "LOCK_HOLD killed run: hold {} ms",
        logged_hold_ms(&stderr(&killed))
    );
    let left = sb.leftovers();
    assert!(left.iter().any(|l| l.starts_with("LV ")), "{left:?}");
    assert!(left.iter().any(|l| l.starts_with("mount ")), "{left:?}");
    assert!(left.iter().any(|l| l.starts_with("partial")), "{left:?}");

    let started = Instant::now();
    let out = sb.dbsnap(&["cleanup", "--json"]);
    println!(
        "TIMING cleanup after SIGKILL {} ms",
        started.elapsed().as_millis()
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)["released"].as_array().unwrap().len(), 3);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());

    sb.write_config(&server, "", None);
    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = stdout_json(&out);
    println!(
        "LOCK_HOLD after-cleanup: mode {} wait {} ms hold {} ms",
        manifest["lock"]["mode"], manifest["lock"]["wait_ms"], manifest["lock"]["hold_ms"]
    );
    assert_eq!(sb.backups().len(), 1);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    server.stop();
}

#[test]
#[ignore = "runs inside the TCG guest, started by backup_on_real_lvm"]
fn in_guest_not_on_lvm_and_no_room_are_refused() {
    guest::require_guest();
    let sb = LvmSandbox::new("refuse", "dbrefuse");

    // Not on LVM: a datadir on tmpfs (the guest's root is an overlay; a real VM's may be LVM).
    let tmpfs = PathBuf::from("/srv/dbrefuse-tmpfs");
    std::fs::create_dir_all(&tmpfs).unwrap();
    run(&[
        "mount",
        "-t",
        "tmpfs",
        "dbsnap-test",
        tmpfs.to_str().unwrap(),
    ]);
    let server = start_server(&tmpfs, &tmpfs.join("mysql/binlog"), "/run/mysqld/tmpfs");
    sb.write_config(&server, "", None);
    for command in ["check", "backup"] {
        let out = sb.dbsnap(&[command]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{command}: {err}");
        assert!(err.contains("not on an LVM logical volume"), "{err}");
    }
    assert!(sb.backups().is_empty());
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    server.stop();
    run(&["umount", tmpfs.to_str().unwrap()]);

    // No room: the VG is full, so the automatic snapshot size has nothing to work with.
    let data = sb.vg.lv("data", "320M", "xfs");
    let server = start_server(&data, &data.join("mysql/binlog"), "/run/mysqld/full");
    run(&[
        "lvcreate",
        "-q",
        "-y",
        "-l",
        "100%FREE",
        "-n",
        "filler",
        sb.vg.name(),
    ]);
    sb.write_config(&server, "", None);
    for command in ["check", "backup"] {
        let out = sb.dbsnap(&[command]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(5), "{command}: {err}");
        assert!(err.contains("free") && err.contains("vgextend"), "{err}");
    }
    assert!(sb.backups().is_empty());
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    server.stop();
}

/// From `dbsnap -v` stderr: the duration (ms) of every run of `program`, in order.
fn command_ms(log: &str, program: &str) -> Vec<u64> {
    let key = format!("command={program} ");
    plain(log)
        .lines()
        .filter(|l| l.contains(&key))
        .filter_map(|l| {
            l.split(" ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
#[ignore = "runs inside the TCG guest, started by backup_on_real_lvm"]
fn in_guest_snapshot_rollback_of_a_mariadb_datadir() {
    guest::require_guest();
    let sb = LvmSandbox::new("rollback", "dbroll");
    let data = sb.vg.lv("data", "320M", "xfs");
    let mut server = start_server(&data, &data.join("mysql/binlog"), "/run/mysqld/roll");
    let options = server.options.clone();
    server.sql(
        "CREATE DATABASE app; CREATE TABLE app.notes (id INT PRIMARY KEY, note VARCHAR(20)) \
         ENGINE=InnoDB; INSERT INTO app.notes VALUES (1, 'before upgrade')",
    );
    sb.write_config(&server, "", None);
    let out = sb.dbsnap(&["snapshot", "create", "--label", "pre-upgrade", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let name = stdout_json(&out)["name"].as_str().unwrap().to_string();

    // The "upgrade" goes wrong.
    server.sql("DROP TABLE app.notes; CREATE TABLE app.broken (x INT)");
    let out = sb.dbsnap(&["snapshot", "rollback", &name]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("Stop it first"), "{}", stderr(&out));

    server.shutdown();
    let started = Instant::now();
    let out = sb.dbsnap(&["-v", "snapshot", "rollback", &name, "--json"]);
    let wall = started.elapsed();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(
        stdout_json(&out),
        serde_json::json!({ "rolled_back": name, "snapshot_kept": false, "pending": null })
    );
    println!(
        "TIMING dbsnap snapshot rollback (classic xfs, mounted) {} ms: umount {:?} ms, \
         lvconvert --merge {:?} ms, mount {:?} ms",
        wall.as_millis(),
        command_ms(&log, "umount"),
        command_ms(&log, "lvconvert"),
        command_ms(&log, "mount")
    );

    let server = MariaDb::start_existing(server.options.clone());
    assert_eq!(server.sql("SELECT note FROM app.notes"), "before upgrade");
    assert!(server.try_sql("SELECT * FROM app.broken").is_err());
    let check = server.sql("CHECK TABLE app.notes");
    assert!(check.ends_with("OK"), "{check}");

    // The merge consumed the snapshot: no record, no LV, nothing left to release.
    let list = stdout_json(&sb.dbsnap(&["snapshot", "list", "--json"]));
    assert!(list.as_array().unwrap().is_empty(), "{list}");
    let out = sb.dbsnap(&["snapshot", "release", &name]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());

    // Again, while something keeps the volume busy: the merge waits for the volume's
    // next activation, and dbsnap says exactly how to get there.
    server.sql("INSERT INTO app.notes VALUES (2, 'second')");
    let out = sb.dbsnap(&["snapshot", "create", "--label", "again", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let name = stdout_json(&out)["name"].as_str().unwrap().to_string();
    server.sql("DELETE FROM app.notes");
    server.stop();
    let mut holder = Command::new("sleep")
        .arg("600")
        .current_dir(&data)
        .spawn()
        .unwrap();
    let out = sb.dbsnap(&["snapshot", "rollback", &name]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains("consumed the snapshot")
            && text.contains("NOT DONE YET")
            && text.contains("lvchange -an dbroll/data")
            && !text.contains("Start the server again"),
        "{text}"
    );
    let list = stdout_json(&sb.dbsnap(&["snapshot", "list", "--json"]));
    assert!(list.as_array().unwrap().is_empty(), "{list}");
    follow_pending(&text);
    let server = MariaDb::start_existing(options);
    assert_eq!(
        server.sql("SELECT id, note FROM app.notes ORDER BY id"),
        "1\tbefore upgrade\n2\tsecond"
    );
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    server.stop();
}
