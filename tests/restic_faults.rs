//! A restic destination under bad input and faults: each fails with a clear error and
//! its own exit code, leaves nothing behind (journal, snapshots, locks, half backups),
//! and the repository still passes `restic check`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::restic::{use_repository, Repo, Wrappers, PASSWORD};
use common::{stderr, stdout_json, Sandbox, DBSNAP};
use dbsnap_test_support::bank;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A sandbox backing up into an initialised local repository in it.
fn with_local_repository(backup_extra: &str, restic_extra: &str) -> (Sandbox, Repo) {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let repo = Repo::new(
        sb.dir.path(),
        sb.dir.path().join("restic repo").to_str().unwrap(),
    );
    repo.init();
    use_repository(&sb, &repo, backup_extra, restic_extra);
    (sb, repo)
}

fn assert_nothing_left(sb: &Sandbox, repo: &Repo) {
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    assert!(repo.locks().is_empty(), "locks left: {:?}", repo.locks());
    repo.assert_checks_clean();
}

/// Every file of a local repository, with its contents.
fn repository_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().to_path_buf(), std::fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn a_missing_repository_is_named_with_init_repo_which_creates_it_once() {
    let sb = Sandbox::new();
    // Not a restic destination: nothing to initialise.
    let out = sb.dbsnap(&["init-repo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("only for restic destinations"),
        "{}",
        stderr(&out)
    );

    let missing = sb.dir.path().join("no repository here");
    let repo = Repo::new(sb.dir.path(), missing.to_str().unwrap());
    use_repository(&sb, &repo, "", "");
    for command in ["check", "backup"] {
        let out = sb.dbsnap(&[command]);
        assert_eq!(out.status.code(), Some(15), "{command}");
        let err = stderr(&out);
        assert!(
            err.contains("no restic repository")
                && err.contains("`dbsnap init-repo`")
                && err.contains("restic -r")
                && err.contains(" init"),
            "{err}"
        );
    }
    assert!(!missing.exists(), "dbsnap created the repository");
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());

    let out = sb.dbsnap(&["init-repo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert!(said.contains("created the restic repository"), "{said}");
    assert!(!said.contains(PASSWORD), "the password was printed: {said}");
    assert!(missing.join("config").is_file());
    assert!(sb.dbsnap(&["check"]).status.success());

    // An existing repository is refused, and left exactly as it was.
    let files = repository_files(&missing);
    let out = sb.dbsnap(&["init-repo"]);
    assert_eq!(out.status.code(), Some(15));
    assert!(
        stderr(&out).contains("already a restic repository")
            && stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(repository_files(&missing), files);
    assert!(sb.dbsnap(&["backup"]).status.success());
    assert_nothing_left(&sb, &repo);
}

#[test]
fn a_wrong_password_is_refused_before_the_lock_and_the_repository_stays_intact() {
    let (sb, repo) = with_local_repository("", "");
    let wrong = sb.dir.path().join("wrong-password");
    std::fs::write(&wrong, "not the password\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(&sb.config).unwrap().replace(
        repo.password_file.to_str().unwrap(),
        wrong.to_str().unwrap(),
    );
    sb.write_raw_config(&config);
    let out = sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(15));
    let err = stderr(&out);
    assert!(
        err.contains("refused the password") && err.contains("wrong-password"),
        "{err}"
    );
    assert!(
        !err.contains("not the password"),
        "the password was printed: {err}"
    );
    assert!(!err.contains("writers waited"), "the lock was taken: {err}");
    assert!(repo.snapshots().is_empty());
    assert_nothing_left(&sb, &repo);
}

#[test]
fn restic_missing_from_path_is_named_with_how_to_install_it() {
    let (sb, repo) = with_local_repository("", "");
    let bin = sb.dir.path().join("bin without restic");
    std::fs::create_dir(&bin).unwrap();
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let link = bin.join(entry.file_name());
            if entry.file_name() != "restic" && !link.exists() {
                let _ = std::os::unix::fs::symlink(entry.path(), link);
            }
        }
    }
    let out = Command::new(DBSNAP)
        .arg("--config")
        .arg(&sb.config)
        .arg("backup")
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(10));
    let err = stderr(&out);
    assert!(
        err.contains("restic is not installed") && err.contains("apt-get install restic"),
        "{err}"
    );
    assert_nothing_left(&sb, &repo);
}

#[test]
fn password_and_credential_files_readable_by_others_are_warned_about_and_never_shown() {
    let (sb, repo) = with_local_repository("", "env_file = \"ENV\"");
    let env_file = sb.dir.path().join("storage.env");
    let secret = "s3cret-storage-key-7f1d";
    std::fs::write(&env_file, format!("AWS_SECRET_ACCESS_KEY={secret}\n")).unwrap();
    for file in [&env_file, &repo.password_file] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let config = std::fs::read_to_string(&sb.config)
        .unwrap()
        .replace("\"ENV\"", &format!("{env_file:?}"));
    sb.write_raw_config(&config);
    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success());
    let err = stderr(&out);
    for file in [&env_file, &repo.password_file] {
        assert!(
            err.contains(&format!("run `chmod 600 {}`", file.display())),
            "no warning about {}: {err}",
            file.display()
        );
    }
    let manifest = String::from_utf8_lossy(&out.stdout).into_owned();
    let journal = std::fs::read_to_string(sb.state.join("journal.json")).unwrap_or_default();
    for text in [&err, &manifest, &journal] {
        assert!(!text.contains(secret) && !text.contains(PASSWORD), "{text}");
    }
    assert_nothing_left(&sb, &repo);
}

#[test]
fn a_repository_string_with_shell_metacharacters_reaches_restic_verbatim() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let canary = std::env::temp_dir().join(format!("dbsnap-canary-{}", std::process::id()));
    let c = canary.display();
    let hostile = format!(
        "{}/repo $(touch {c}) ;touch {c}; `touch {c}` '\"|&>x",
        sb.dir.path().display()
    );
    let repo = Repo::new(sb.dir.path(), &hostile);
    repo.init();
    use_repository(&sb, &repo, "", "");
    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = stdout_json(&out);
    assert!(manifest["path"].as_str().unwrap().contains(&hostile));
    let list = stdout_json(&sb.dbsnap(&["list", "--json"]));
    assert_eq!(list[0]["status"], "complete");
    assert!(!canary.exists(), "a shell ran the repository string");
    assert_eq!(repo.snapshots().len(), 3, "claim, files, manifest");
    assert_nothing_left(&sb, &repo);
}

/// A small ext4 on a loop device (no blocks reserved for root: full means full).
struct LoopExt4 {
    mountpoint: PathBuf,
}

impl LoopExt4 {
    fn new(dir: &Path, mib: u64) -> LoopExt4 {
        let image = dir.join("repo-fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        dbsnap_test_support::sh(
            "mkfs.ext4",
            &["-q", "-F", "-m", "0", image.to_str().unwrap()],
        );
        let mountpoint = dir.join("repo fs");
        std::fs::create_dir(&mountpoint).unwrap();
        dbsnap_test_support::sh(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                mountpoint.to_str().unwrap(),
            ],
        );
        LoopExt4 { mountpoint }
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mountpoint).status();
    }
}

#[test]
fn a_repository_that_fills_up_mid_backup_fails_as_full_and_still_checks_clean() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let fs = LoopExt4::new(sb.dir.path(), 96);
    let repo = Repo::new(
        sb.dir.path(),
        fs.mountpoint.join("restic").to_str().unwrap(),
    );
    repo.init();
    use_repository(&sb, &repo, "", "");
    assert!(sb.dbsnap(&["backup"]).status.success());
    // More new, incompressible data than the repository has room for; the room check
    // before the lock expects an increment, not all of it.
    bank::add_filler(&sb.server, 120);
    let out = sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("is full") && err.contains("backup.dest") || err.contains("[backup] dest"),
        "{err}"
    );
    let list = stdout_json(&sb.dbsnap(&["list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    // Only the first backup's three snapshots (claim, files, manifest): no half one.
    assert_eq!(repo.snapshots().len(), 3);
    assert_nothing_left(&sb, &repo);
}

/// The restic process the journal records for a run, and the run.
fn journaled_restic(sb: &Sandbox) -> Option<(u32, String)> {
    let journal = std::fs::read_to_string(sb.state.join("journal.json")).ok()?;
    let entries: Vec<serde_json::Value> = serde_json::from_str(&journal).ok()?;
    entries.iter().find_map(|e| {
        let r = &e["resource"];
        let pid = r["pid"].as_u64().filter(|_| r["kind"] == "restic_run")?;
        Some((pid as u32, e["run"].as_str()?.to_string()))
    })
}

/// Start `dbsnap backup` and wait until its restic is running (its pid journaled) and
/// holds its lock on `repo`.
fn start_backup_until_restic_runs(sb: &Sandbox, repo: &Repo) -> (Child, u32, String) {
    let mut child = Command::new(DBSNAP)
        .arg("--config")
        .arg(&sb.config)
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let running = loop {
        if let Some(running) = journaled_restic(sb) {
            break Some(running);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let Some((pid, run)) = running else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("restic never started");
    };
    while repo.locks().is_empty() {
        assert!(Instant::now() < deadline, "restic took no lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let it read and upload for a moment.
    std::thread::sleep(Duration::from_millis(1500));
    (child, pid, run)
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
    {
        assert!(Instant::now() < deadline, "restic {pid} kept running");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dbsnap_killed_during_restic_backup_leaves_no_half_snapshot_and_the_next_backup_succeeds() {
    let (sb, repo) = with_local_repository("bwlimit = \"2MiB\"", "");
    bank::add_filler(&sb.server, 48);

    // dbsnap killed: restic is told to stop (SIGINT), writes no snapshot and
    // removes its own lock.
    let (mut child, restic, run) = start_backup_until_restic_runs(&sb, &repo);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    wait_gone(restic);
    assert!(repo.snapshots_of(&run, "dbsnap-data").is_empty());
    assert!(repo.locks().is_empty(), "{:?}", repo.locks());
    assert!(sb.dbsnap(&["cleanup"]).status.success());
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());

    // dbsnap and restic killed at once (power loss, OOM killer): restic's lock stays.
    // It is reported with the way out, and removed by cleanup as dbsnap's own.
    let (mut child, restic, run) = start_backup_until_restic_runs(&sb, &repo);
    kill(Pid::from_raw(restic as i32), Signal::SIGSTOP).unwrap();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    kill(Pid::from_raw(restic as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    wait_gone(restic);
    assert!(repo.snapshots_of(&run, "dbsnap-data").is_empty());
    assert_eq!(repo.locks().len(), 1);
    let out = sb.dbsnap(&["cleanup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let released = stdout_json(&out)["released"].to_string();
    assert!(released.contains("restic run"), "{released}");
    assert!(repo.locks().is_empty(), "{:?}", repo.locks());

    let config = std::fs::read_to_string(&sb.config)
        .unwrap()
        .replace("bwlimit = \"2MiB\"", "");
    sb.write_raw_config(&config);
    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(repo.snapshots().len(), 3, "claim, files, manifest");
    assert_nothing_left(&sb, &repo);
}

#[test]
fn a_stale_restic_lock_is_reported_with_the_command_that_removes_it() {
    let (sb, repo) = with_local_repository("", "");
    // A restic killed outside dbsnap (not in its journal) leaves a stale lock.
    let mut restic = Command::new("restic")
        .args(["backup", "--stdin", "--stdin-filename", "x"])
        .env("RESTIC_REPOSITORY", &repo.repository)
        .env("RESTIC_PASSWORD_FILE", &repo.password_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while repo.locks().is_empty() {
        assert!(Instant::now() < deadline, "restic took no lock");
        std::thread::sleep(Duration::from_millis(100));
    }
    restic.kill().unwrap();
    restic.wait().unwrap();
    for command in ["check", "backup"] {
        let out = sb.dbsnap(&[command]);
        assert_eq!(out.status.code(), Some(15), "{command}");
        let err = stderr(&out);
        assert!(
            err.contains("stale lock") && err.contains("unlock"),
            "{err}"
        );
    }
    // Not dbsnap's: cleanup leaves it alone.
    assert!(sb.dbsnap(&["cleanup"]).status.success());
    assert_eq!(repo.locks().len(), 1);
    assert!(repo.restic(&["unlock"]).status.success());
    assert_nothing_left(&sb, &repo);
}

#[test]
fn a_restore_from_a_repository_stopped_by_sigterm_removes_what_it_wrote() {
    let (sb, repo) = with_local_repository("", "");
    bank::add_filler(&sb.server, 16);
    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let name = stdout_json(&out)["name"].as_str().unwrap().to_string();

    // The real restic, reading the repository slowly enough to be stopped mid-restore.
    let wrappers = Wrappers::new(sb.dir.path(), &[("restic", "--limit-download=256")]);
    let parent = sb.dir.path().join("restores");
    std::fs::create_dir(&parent).unwrap();
    let target = parent.join("restored");
    let child = Command::new(DBSNAP)
        .arg("--config")
        .arg(&sb.config)
        .args(["restore", &name, "--datadir", target.to_str().unwrap()])
        .env("PATH", wrappers.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // restic makes the tree first, then fills the files as their data arrives.
    let deadline = Instant::now() + Duration::from_secs(60);
    while walkdir::WalkDir::new(&target)
        .min_depth(2)
        .into_iter()
        .flatten()
        .next()
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the restore never wrote anything"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("were removed"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&parent).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
    assert_nothing_left(&sb, &repo);
}
