//! dbsnap's state directory: created private, its files never opened through a
//! symbolic link, and one that cannot be written named with what to do.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{dbsnap_with, stderr};

fn config(dir: &Path, state: &Path) -> std::path::PathBuf {
    let config = dir.join("dbsnap.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {state:?}\n[mysql]\nsocket = \"/nonexistent.sock\"\n[snapshot]\nbackend = \"btrfs\"\n"
        ),
    )
    .unwrap();
    config
}

#[test]
fn the_state_directory_is_created_private() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("new state").join("dbsnap");
    let out = dbsnap_with(&config(dir.path(), &state), &["cleanup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "state_dir mode {mode:o}");
}

#[test]
fn a_symlinked_run_lock_or_journal_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let config = config(dir.path(), &state);
    let canary = dir.path().join("canary");
    std::fs::write(&canary, b"precious").unwrap();

    std::os::unix::fs::symlink(&canary, state.join("run.lock")).unwrap();
    let out = dbsnap_with(&config, &["cleanup"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is a symbolic link"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("run.lock"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&canary).unwrap(), b"precious");

    std::fs::remove_file(state.join("run.lock")).unwrap();
    std::os::unix::fs::symlink(&canary, state.join("journal.json")).unwrap();
    let out = dbsnap_with(&config, &["cleanup"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("journal.json is a symbolic link"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&canary).unwrap(), b"precious");
}

#[test]
fn a_state_directory_that_cannot_be_written_is_named_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("read-only state");
    std::fs::create_dir(&state).unwrap();
    dbsnap_test_support::sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "ro,size=1m",
            "tmpfs",
            state.to_str().unwrap(),
        ],
    );
    let out = dbsnap_with(&config(dir.path(), &state), &["cleanup"]);
    let _ = std::process::Command::new("umount").arg(&state).status();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "the state directory {} is not writable",
            state.display()
        )),
        "{err}"
    );
    assert!(err.contains("set state_dir"), "{err}");
}
