//! A snapshot lost while it is being copied (an overflowed LVM snapshot, a ZFS clone
//! destroyed underneath) fails the backup, and the copy has let go of every file of the
//! snapshot before dbsnap releases it: a backend that refuses to release a snapshot
//! something still reads (LVM's "contains a filesystem in use") would otherwise leave
//! it behind. Proven for both copy engines on a real btrfs, through an exec plugin that
//! loses its snapshot on demand and refuses a release while any process has a file of
//! the snapshot open, as LVM does.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, Sandbox, DBSNAP};
use dbsnap_test_support::bank;

/// The shell btrfs reference plugin, except that `health` reports the snapshot lost
/// once `dir/lost` exists, and `release` refuses while a process has a file below a
/// snapshot open, writing what held it to `dir/held`.
fn plugin_that_loses_snapshots_and_refuses_busy_releases(dir: &Path) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let reference =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/examples/dbsnap-backend-btrfs-sh");
    let script = plugins.join("dbsnap-backend-lossy");
    let lost = dir.join("lost");
    let held = dir.join("held");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
case $1 in
health)
    if [ -e '{lost}' ]; then
        cat >/dev/null
        echo '{{"status": "failed", "message": "snapshot overflowed (100 % of its CoW space used)"}}'
        exit 0
    fi ;;
release)
    request=$(cat)
    printf '%s' "$request" | jq -r '.set.snapshots[].id' | while read -r id; do
        for fd in /proc/[0-9]*/fd/*; do
            target=$(readlink "$fd" 2>/dev/null) || continue
            case $target in "$id"/*) echo "$fd -> $target" >> '{held}' ;; esac
        done
    done
    if [ -s '{held}' ]; then
        echo '{{"error": {{"code": "failed", "message": "a file of the snapshot is open", "hint": "stop what reads it"}}}}'
        exit 0
    fi
    printf '%s' "$request" | '{reference}' "$@"
    exit ;;
esac
exec '{reference}' "$@"
"#,
            lost = lost.display(),
            held = held.display(),
            reference = reference.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    plugins
}

/// Whether a file has been copied into the partial backup yet.
fn is_copying(dest: &Path) -> bool {
    std::fs::read_dir(dest)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .any(|e| {
            walkdir::WalkDir::new(e.path())
                .into_iter()
                .flatten()
                .any(|f| f.file_type().is_file() && f.metadata().is_ok_and(|m| m.len() > 0))
        })
}

/// Back up with `method` at 1 MiB/s, lose the snapshot once the copy is under way, and
/// check that the run failed for it and released everything itself.
fn lose_the_snapshot_while_copying(method: &str) {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let plugins = plugin_that_loses_snapshots_and_refuses_busy_releases(sb.dir.path());
    let config = std::fs::read_to_string(&sb.config).unwrap().replace(
        "[snapshot]\nbackend = \"btrfs\"",
        &format!("[snapshot]\nbackend = \"exec:lossy\"\n[snapshot.exec]\nplugin_dir = {plugins:?}"),
    );
    // Slow enough that every copy thread waits for its next chunk when the loss is seen.
    sb.write_raw_config(&format!(
        "{config}bwlimit = \"1MiB\"\nmethod = {method:?}\n"
    ));

    let mut child = Command::new(DBSNAP)
        .arg("--config")
        .arg(&sb.config)
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !is_copying(&sb.dest) {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("the backup never started copying: {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(sb.dir.path().join("lost"), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    eprintln!("{err}");

    assert_eq!(out.status.code(), Some(9), "{err}");
    assert!(err.contains("the snapshot was lost while copying"), "{err}");
    let held = std::fs::read_to_string(sb.dir.path().join("held")).unwrap_or_default();
    assert!(
        held.is_empty(),
        "the snapshot was released while files of it were still open:\n{held}"
    );
    assert!(sb.backups().is_empty(), "a backup was published");
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn a_snapshot_lost_while_the_local_engine_copies_is_released_with_no_file_of_it_open() {
    lose_the_snapshot_while_copying("files");
}

#[test]
fn a_snapshot_lost_while_rsync_copies_is_released_with_no_file_of_it_open() {
    lose_the_snapshot_while_copying("rsync");
}
