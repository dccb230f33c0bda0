//! What dbsnap says, and leaves, when SIGTERM stops it: after the backup was
//! published it says so and where; a restore removes the files it had copied.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, Sandbox, DBSNAP};
use dbsnap_test_support::bank;

fn wait_for(what: impl Fn() -> bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while !what() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    what()
}

fn sigterm(child: &std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

#[test]
fn sigterm_after_the_backup_was_published_says_it_is_published_and_where() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let marker = sb.dir.path().join("post_backup started");
    let config = std::fs::read_to_string(&sb.config).unwrap();
    sb.write_raw_config(&format!(
        "{config}\n[hooks]\npost_backup = [\"/bin/sh\", \"-c\", \"touch \\\"$0\\\"; exec sleep 60\", {marker:?}]\n"
    ));
    let child = Command::new(DBSNAP)
        .arg("--config")
        .arg(&sb.config)
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for(|| marker.exists(), Duration::from_secs(60)));
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let backup = sb.backups()[0].clone();
    assert!(err.contains("already been published"), "{err}");
    assert!(err.contains(backup.to_str().unwrap()), "{err}");
    assert!(!err.contains("no backup was published"), "{err}");
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn sigterm_during_a_restore_removes_the_half_copied_datadir() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 16);
    assert!(sb.dbsnap(&["backup"]).status.success());
    let backup = sb.backups()[0].clone();

    // The real rsync, slowed down so that the restore is still copying when stopped.
    let bin = sb.dir.path().join("slow bin");
    std::fs::create_dir(&bin).unwrap();
    let rsync = which::which("rsync").unwrap();
    std::fs::write(
        bin.join("rsync"),
        format!(
            "#!/bin/sh\nexec '{}' --bwlimit=1000 \"$@\"\n",
            rsync.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("rsync"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());

    let target = sb.dir.path().join("restored");
    let child = Command::new(DBSNAP)
        .arg("--config")
        .arg(&sb.config)
        .args([
            "restore",
            backup.to_str().unwrap(),
            "--datadir",
            target.to_str().unwrap(),
        ])
        .env("PATH", path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let copying = || {
        walkdir::WalkDir::new(&target)
            .into_iter()
            .flatten()
            .any(|e| e.file_type().is_file())
    };
    assert!(
        wait_for(copying, Duration::from_secs(60)),
        "the restore never copied"
    );
    sigterm(&child);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("were removed"), "{err}");
    assert!(!target.exists(), "the half-copied datadir is still there");
    assert_eq!(sb.backups().len(), 1);
}
