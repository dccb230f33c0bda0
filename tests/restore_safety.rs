//! `restore --force` empties its target: it must never be pointed, by any path, at a
//! backup, the destination, dbsnap's state, a snapshot, or a running server's files.

mod common;

use std::path::Path;
use std::process::Command;

use common::{stderr, Sandbox};
use dbsnap_test_support::bank;

/// `dbsnap restore BACKUP --datadir TARGET --force`, asserting the refusal (exit 6,
/// nothing deleted).
fn assert_refused(sb: &Sandbox, backup: &Path, target: &Path, expect: &str) {
    let out = sb.dbsnap(&[
        "restore",
        backup.to_str().unwrap(),
        "--datadir",
        target.to_str().unwrap(),
        "--force",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{}: {err}", target.display());
    assert!(
        err.contains("refusing to restore into") || err.contains("a database server is running"),
        "{err}"
    );
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert!(err.contains("Nothing was deleted") || err.contains("Stop it first"));
}

/// A bind mount that is undone when dropped.
struct Bind(std::path::PathBuf);

impl Bind {
    fn new(from: &Path, at: &Path) -> Bind {
        std::fs::create_dir_all(at).unwrap();
        dbsnap_test_support::sh(
            "mount",
            &["--bind", from.to_str().unwrap(), at.to_str().unwrap()],
        );
        Bind(at.to_path_buf())
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn restore_force_never_deletes_the_destination_a_backup_or_dbsnaps_state() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    assert!(sb.dbsnap(&["backup"]).status.success());
    assert!(sb.dbsnap(&["backup"]).status.success());
    let backups = sb.backups();
    let (first, second) = (&backups[0], &backups[1]);
    let fingerprint = || {
        walkdir::WalkDir::new(&sb.dest)
            .into_iter()
            .flatten()
            .map(|e| e.path().display().to_string())
            .collect::<Vec<_>>()
    };
    let before = fingerprint();
    std::fs::create_dir_all(&sb.state).unwrap();

    // The destination itself, a backup in it (the one restored, and another), below one.
    assert_refused(
        &sb,
        first,
        &sb.dest,
        "it contains the backup being restored",
    );
    assert_refused(&sb, first, first, "the backup being restored");
    assert_refused(&sb, first, second, "the backup destination");
    assert_refused(&sb, first, &second.join("files"), "the backup destination");
    // A directory that contains the destination.
    assert_refused(&sb, first, sb.dir.path(), "it contains");
    // dbsnap's state directory, and the snapshot directory on the data's filesystem.
    assert_refused(&sb, first, &sb.state.join("x"), "state directory");
    assert_refused(
        &sb,
        first,
        &sb.fs.mountpoint.join(".dbsnap-snapshots/x"),
        "snapshot directory",
    );
    // The destination through a symbolic link and through a bind mount.
    let link = sb.dir.path().join("link to backups");
    std::os::unix::fs::symlink(&sb.dest, &link).unwrap();
    assert_refused(&sb, first, &link, "it contains the backup being restored");
    let bound = sb.dir.path().join("bound backups");
    let bind = Bind::new(&sb.dest, &bound);
    assert_refused(&sb, first, &bound, "it contains the backup being restored");
    assert_refused(
        &sb,
        first,
        &bound.join(second.file_name().unwrap()),
        "the backup destination",
    );
    drop(bind);
    // A directory with a filesystem mounted inside it: emptying it would delete
    // through the mount.
    let outer = sb.dir.path().join("outer");
    let _inner = Bind::new(&sb.fs.mountpoint.join("mysql"), &outer.join("inner"));
    assert_refused(&sb, first, &outer, "mounted inside");

    assert_eq!(fingerprint(), before, "the destination changed");
    assert_eq!(sb.backups().len(), 2);
    let listed = sb.dbsnap(&["list", "--json"]);
    assert!(listed.status.success());
    assert_eq!(common::stdout_json(&listed).as_array().unwrap().len(), 2);
}

#[test]
fn restore_sees_a_running_server_through_a_bind_mount_of_its_datadir() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    assert!(sb.dbsnap(&["backup"]).status.success());
    let backup = sb.backups()[0].clone();
    let datadir = sb.fs.mountpoint.join("mysql");
    // The usual container-volume layout: the live datadir seen under a second path.
    let volume = sb.dir.path().join("volume");
    let _bind = Bind::new(&datadir, &volume);
    assert_refused(&sb, &backup, &volume, "a database server is running");
    // A directory below the bound datadir is the live server's too.
    assert_refused(
        &sb,
        &backup,
        &volume.join("new"),
        "a database server is running",
    );

    assert!(
        datadir.join("ibdata1").exists(),
        "the live datadir was emptied"
    );
    assert_eq!(
        sb.server.sql("SELECT COUNT(*) FROM bank.accounts").trim(),
        "100"
    );
}
