//! The kill matrix: SIGKILL and SIGTERM at every phase of a backup (and of a restore),
//! each reached deterministically — a blocking statement, an exec plugin that hangs at
//! one verb, a slowed or held rsync, a marker from the verification server — and after
//! each: writes go through within 1 s, `dbsnap cleanup` leaves no snapshot, mount,
//! partial, scratch server or journal entry, the previous backup is byte-identical,
//! and the next backup succeeds. Prints the matrix (phase × signal → result).
//!
//! Budget: 45–105 s wall on 2 shared cores (20 cases in two parallel sandboxes), at
//! most 4 minutes.

mod common;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Sandbox, DBSNAP};
use dbsnap_test_support::bank;
use nix::sys::signal::Signal;

/// How a case reaches its phase.
#[derive(Clone, Copy)]
enum Seam {
    /// A statement on another table keeps FTWRL waiting.
    LockWait,
    /// The exec plugin hangs at this verb, before doing it (once).
    HangBefore(&'static str),
    /// The exec plugin does this verb, then hangs before answering (once).
    HangAfter(&'static str),
    /// rsync runs slowly; the signal comes once the partial holds files.
    SlowCopy,
    /// rsync finishes, then hangs before exiting: the copy is complete, unpublished.
    CopiedNotPublished,
    /// The verification server has been started.
    Verify,
    /// A restore is copying.
    Restore,
}

const CASES: &[(&str, Seam)] = &[
    ("waiting for the lock", Seam::LockWait),
    ("holding the lock", Seam::HangBefore("snapshot")),
    ("snapshot taken, lock held", Seam::HangAfter("snapshot")),
    ("mount", Seam::HangBefore("mount")),
    ("copy", Seam::SlowCopy),
    ("before publish", Seam::CopiedNotPublished),
    ("after publish", Seam::HangBefore("unmount")),
    ("release", Seam::HangBefore("release")),
    ("verify", Seam::Verify),
    ("restore", Seam::Restore),
];

/// A sandbox with one backup, and the tools the seams need.
struct Rig {
    sb: Sandbox,
    plugins: PathBuf,
    slow_bin: PathBuf,
    held_bin: PathBuf,
    verify_bin: PathBuf,
    marker: PathBuf,
}

fn script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Rig {
    fn new() -> Rig {
        let sb = Sandbox::new();
        bank::create(&sb.server);
        bank::add_filler(&sb.server, 16);
        let dir = sb.dir.path().to_path_buf();
        let marker = dir.join("phase reached");
        let rsync = which::which("rsync").unwrap();
        let mariadbd = which::which("mariadbd").unwrap();
        let (plugins, slow_bin, held_bin, verify_bin) = (
            dir.join("plugins"),
            dir.join("slow bin"),
            dir.join("held bin"),
            dir.join("verify bin"),
        );
        for d in [&plugins, &slow_bin, &held_bin, &verify_bin] {
            std::fs::create_dir(d).unwrap();
        }
        script(
            &slow_bin.join("rsync"),
            &format!(
                "#!/bin/sh\nexec '{}' --bwlimit=1000 \"$@\"\n",
                rsync.display()
            ),
        );
        script(
            &held_bin.join("rsync"),
            &format!(
                "#!/bin/sh\n'{}' \"$@\"; rc=$?\ntouch '{}'; sleep 60; exit $rc\n",
                rsync.display(),
                marker.display()
            ),
        );
        script(
            &verify_bin.join("mariadbd"),
            &format!(
                "#!/bin/sh\n[ \"$1\" = --version ] || touch '{}'\nexec '{}' \"$@\"\n",
                marker.display(),
                mariadbd.display()
            ),
        );
        let rig = Rig {
            sb,
            plugins,
            slow_bin,
            held_bin,
            verify_bin,
            marker,
        };
        rig.plain_config();
        assert!(rig.sb.dbsnap(&["backup"]).status.success());
        rig
    }

    fn plain_config(&self) {
        self.sb.write_config("");
    }

    /// The configuration for a case: the exec plugin (hanging at `verb`) or btrfs.
    fn case_config(&self, seam: Seam) {
        let hang = |verb: &str, after: bool| {
            let reference = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("plugins/examples/dbsnap-backend-btrfs-sh");
            let m = self.marker.display();
            let r = reference.display();
            let body = match after {
                false => format!(
                    "if [ \"$1\" = {verb} ] && [ ! -e '{m}' ]; then touch '{m}'; exec sleep 60; fi\nexec '{r}' \"$@\"\n"
                ),
                true => format!(
                    "if [ \"$1\" = {verb} ] && [ ! -e '{m}' ]; then out=$('{r}' \"$@\"); rc=$?; touch '{m}'; sleep 60; echo \"$out\"; exit $rc; fi\nexec '{r}' \"$@\"\n"
                ),
            };
            script(
                &self.plugins.join("dbsnap-backend-matrix"),
                &format!("#!/bin/sh\n{body}"),
            );
            let config = std::fs::read_to_string(&self.sb.config).unwrap().replace(
                "[snapshot]\nbackend = \"btrfs\"",
                &format!(
                    "[snapshot]\nbackend = \"exec:matrix\"\n[snapshot.exec]\nplugin_dir = {:?}",
                    self.plugins
                ),
            );
            self.sb.write_raw_config(&config);
        };
        self.sb.write_config("max_lock_hold = \"120s\"");
        match seam {
            Seam::HangBefore(verb) => hang(verb, false),
            Seam::HangAfter(verb) => hang(verb, true),
            Seam::LockWait => self.sb.write_config(
                "lock_wait_timeout = \"60s\"\nlock_attempts = 1\nlong_queries = \"wait\"\nlong_query_threshold = \"60s\"",
            ),
            // These seams slow or hold rsync: the copy must run through it (dbsnap's
            // own engine is interrupted mid-copy in backup_btrfs.rs).
            Seam::SlowCopy | Seam::CopiedNotPublished => {
                let config = std::fs::read_to_string(&self.sb.config).unwrap();
                self.sb
                    .write_raw_config(&(config + "incremental = false\nmethod = \"rsync\"\n"));
            }
            Seam::Restore => {
                let config = std::fs::read_to_string(&self.sb.config).unwrap();
                self.sb.write_raw_config(&(config + "incremental = false\n"));
            }
            Seam::Verify => {
                let config = std::fs::read_to_string(&self.sb.config).unwrap();
                self.sb.write_raw_config(&(config + "verify = true\n"));
            }
        }
    }

    fn start(&self, seam: Seam, restore_into: &Path) -> Child {
        let mut command = Command::new(DBSNAP);
        command.arg("--config").arg(&self.sb.config);
        let path = std::env::var("PATH").unwrap();
        let with = |bin: &Path| format!("{}:{path}", bin.display());
        match seam {
            Seam::Restore => {
                let backup = self.sb.backups().pop().unwrap();
                command
                    .args(["restore", backup.to_str().unwrap(), "--datadir"])
                    .arg(restore_into)
                    .env("PATH", with(&self.slow_bin));
            }
            Seam::SlowCopy => {
                command.arg("backup").env("PATH", with(&self.slow_bin));
            }
            Seam::CopiedNotPublished => {
                command.arg("backup").env("PATH", with(&self.held_bin));
            }
            Seam::Verify => {
                command.arg("backup").env("PATH", with(&self.verify_bin));
            }
            Seam::LockWait => {
                command.args(["backup", "--lock", "ftwrl"]);
            }
            Seam::HangBefore(_) | Seam::HangAfter(_) => {
                command.args(["backup", "--lock", "ftwrl"]);
            }
        }
        command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Whether the run has reached the phase the seam marks.
    fn reached(&self, seam: Seam, restore_into: &Path) -> bool {
        let has_files = |dir: &Path| {
            walkdir::WalkDir::new(dir)
                .into_iter()
                .flatten()
                .any(|e| e.file_type().is_file())
        };
        match seam {
            Seam::LockWait => !self
                .sb
                .server
                .sql("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'FLUSH TABLES WITH READ LOCK%'")
                .is_empty(),
            Seam::SlowCopy => std::fs::read_dir(&self.sb.dest)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                .any(|e| has_files(&e.path())),
            Seam::Restore => has_files(restore_into),
            _ => self.marker.exists(),
        }
    }

    /// Everything a run could leave: the sandbox's list, plus mounts under the state
    /// directory, verification scratch copies and throwaway servers.
    fn leftovers(&self) -> Vec<String> {
        let mut left = self.sb.leftovers();
        let runs = self.sb.state.join("runs");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        if mounts.lines().any(|l| l.contains(runs.to_str().unwrap())) {
            left.push("a mount under state_dir/runs".into());
        }
        for e in std::fs::read_dir(&self.sb.dest).unwrap().flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(".dbsnap-verify-")
            {
                left.push(format!("scratch copy {}", e.path().display()));
            }
        }
        let scratch_arg = format!("--datadir={}/.dbsnap-verify-", self.sb.dest.display());
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if cmdline
                .split(|b| *b == 0)
                .any(|a| a.starts_with(scratch_arg.as_bytes()))
            {
                left.push(format!(
                    "scratch server {}",
                    p.file_name().to_string_lossy()
                ));
            }
        }
        left
    }
}

/// Every file's path and content, hashed: equal means byte-identical.
fn fingerprint(dir: &Path) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_path_buf())
        .collect();
    files.sort();
    for f in files {
        f.hash(&mut hasher);
        std::fs::read(&f).unwrap().hash(&mut hasher);
    }
    hasher.finish()
}

/// Kill the run that was stopped in one phase, check everything, return the verdict.
fn run_case(rig: &Rig, seam: Seam, signal: Signal) -> Result<String, String> {
    let _ = std::fs::remove_file(&rig.marker);
    let previous = rig.sb.backups().pop().unwrap();
    let before = fingerprint(&previous);
    let restore_into = rig.sb.dir.path().join(format!("restored {signal}"));
    let _ = std::fs::remove_dir_all(&restore_into);
    rig.case_config(seam);
    let blocker = matches!(seam, Seam::LockWait).then(|| {
        rig.sb.server.sql(
            "CREATE TABLE IF NOT EXISTS bank.report (n INT) ENGINE=InnoDB; DELETE FROM bank.report; INSERT INTO bank.report VALUES (1)",
        );
        Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", rig.sb.server.socket.display()))
            .args(["-uroot", "-e", "UPDATE bank.report SET n = n + SLEEP(30)"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    });
    if blocker.is_some() {
        std::thread::sleep(Duration::from_millis(300));
    }

    let child = rig.start(seam, &restore_into);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rig.reached(seam, &restore_into) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let reached = rig.reached(seam, &restore_into);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Writes must go through at once: a lock left held, or a waiting FTWRL, makes
    // this wait (and fail after 1 s).
    let write = rig.sb.server.try_sql(
        "SET SESSION lock_wait_timeout = 1; SET SESSION innodb_lock_wait_timeout = 1; \
         INSERT INTO bank.accounts (id, balance) VALUES (100000 + CONNECTION_ID(), 0)",
    );
    if let Some(mut b) = blocker {
        let id = rig.sb.server.sql(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'UPDATE bank.report%'",
        );
        if !id.is_empty() {
            rig.sb.server.sql(&format!("KILL QUERY {id}"));
        }
        b.wait().unwrap();
    }
    let check = || -> Result<String, String> {
        if !reached {
            return Err(format!("phase never reached: {stderr}"));
        }
        write.map_err(|e| format!("writes blocked after the kill: {e}"))?;
        let code = out.status.code();
        if signal == Signal::SIGTERM && code != Some(130) {
            return Err(format!("SIGTERM exited {code:?}: {stderr}"));
        }
        let after_publish = matches!(
            seam,
            Seam::HangBefore("unmount") | Seam::HangBefore("release") | Seam::Verify
        );
        if signal == Signal::SIGTERM && after_publish != stderr.contains("already been published") {
            return Err(format!("the message misstates publication: {stderr}"));
        }
        if signal == Signal::SIGTERM && matches!(seam, Seam::Restore) && restore_into.exists() {
            return Err("SIGTERM left the half-restored datadir".into());
        }
        let cleanup = Command::new(DBSNAP)
            .arg("--config")
            .arg(&rig.sb.config)
            .args(["cleanup", "--json"])
            .output()
            .unwrap();
        if !cleanup.status.success() {
            return Err(format!(
                "cleanup failed: {}",
                String::from_utf8_lossy(&cleanup.stderr)
            ));
        }
        let cleaned: serde_json::Value = serde_json::from_slice(&cleanup.stdout).unwrap();
        let released = cleaned["released"].as_array().map_or(0, |a| a.len());
        let left = rig.leftovers();
        if !left.is_empty() {
            return Err(format!("left after cleanup: {left:?}"));
        }
        if fingerprint(&previous) != before {
            return Err(format!(
                "the previous backup {} changed",
                previous.display()
            ));
        }
        let restored = match seam {
            Seam::Restore if restore_into.exists() => ", half-restored dir left",
            Seam::Restore => ", restore target removed",
            _ => "",
        };
        rig.plain_config();
        let next = rig.sb.dbsnap(&["backup"]);
        if !next.status.success() {
            return Err("the next backup failed".into());
        }
        let published = match stderr.contains("already been published") {
            true => ", said published",
            false => "",
        };
        Ok(format!(
            "ok (exit {}, cleanup released {released}{published}{restored})",
            code.map_or("signal".to_string(), |c| c.to_string())
        ))
    };
    let verdict = check();
    let _ = std::fs::remove_dir_all(&restore_into);
    verdict
}

#[test]
fn sigkill_and_sigterm_at_every_phase_leave_nothing_and_lose_nothing() {
    let started = Instant::now();
    let results: BTreeMap<(usize, String), Result<String, String>> = std::thread::scope(|s| {
        let columns: Vec<_> = [Signal::SIGKILL, Signal::SIGTERM]
            .into_iter()
            .map(|signal| {
                s.spawn(move || {
                    let rig = Rig::new();
                    CASES
                        .iter()
                        .enumerate()
                        .map(|(i, (_, seam))| {
                            ((i, signal.to_string()), run_case(&rig, *seam, signal))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        columns
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    println!("\nkill matrix ({:.0} s):", started.elapsed().as_secs_f64());
    println!("{:<28} {:<58} SIGTERM", "phase", "SIGKILL");
    for (i, (phase, _)) in CASES.iter().enumerate() {
        let cell = |signal: Signal| match &results[&(i, signal.to_string())] {
            Ok(v) => v.clone(),
            Err(e) => format!("FAILED: {e}"),
        };
        println!(
            "{phase:<28} {:<58} {}",
            cell(Signal::SIGKILL),
            cell(Signal::SIGTERM)
        );
    }
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} case(s) failed: {failed:#?}",
        failed.len()
    );
}
