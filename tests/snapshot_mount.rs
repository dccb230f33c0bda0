//! Hook mode: `snapshot create --mount DIR` shows a consistent, read-only copy to an
//! outside backup tool (borg, restic) until `snapshot release DIR` or its TTL.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{stderr, stdout_json, time, Sandbox};
use dbsnap_test_support::bank::{self, Writers};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

/// Run a backup tool, asserting it succeeds.
fn run(program: &str, args: &[&Path], cwd: &Path) {
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env("RESTIC_PASSWORD", "test only")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[test]
fn borg_backup_of_the_mount_restores_consistently_and_release_leaves_nothing() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let mnt = sb.dir.path().join("hook mnt");
    std::fs::create_dir(&mnt).unwrap();

    let writers = Writers::start(&sb.server.socket, 8);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = sb.dbsnap(&[
        "snapshot",
        "create",
        "--mount",
        mnt.to_str().unwrap(),
        "--json",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let commits = writers.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    let kept = stdout_json(&out);
    assert_eq!(kept["mount"]["dir"], mnt.to_str().unwrap());
    assert!(kept["coordinates"]["binlog_file"].is_string(), "{kept}");
    let datadir = PathBuf::from(kept["server"]["datadir"].as_str().unwrap());
    let frozen = mnt.join(datadir.strip_prefix("/").unwrap());
    assert_eq!(kept["mount"]["binds"][0]["at"], frozen.to_str().unwrap());
    assert!(frozen.join("ibdata1").exists());
    let write = std::fs::write(frozen.join("x"), b"x").unwrap_err();
    assert_eq!(write.raw_os_error(), Some(nix::libc::EROFS), "{write}");

    // borg: back up the mount, extract it elsewhere, start a server on the datadir.
    let repo = sb.dir.path().join("borg repo");
    run(
        "borg",
        &[Path::new("init"), Path::new("--encryption=none"), &repo],
        sb.dir.path(),
    );
    let archive = PathBuf::from(format!("{}::hook", repo.display()));
    run(
        "borg",
        &[Path::new("create"), &archive, &mnt],
        sb.dir.path(),
    );
    let extracted = sb.dir.path().join("extracted");
    std::fs::create_dir(&extracted).unwrap();
    run("borg", &[Path::new("extract"), &archive], &extracted);
    let restored = extracted.join(frozen.strip_prefix("/").unwrap());
    // The binlog index names the live datadir; point it at the restored one.
    let index = restored.join("binlog.index");
    let text = std::fs::read_to_string(&index).unwrap();
    let text = text.replace(datadir.to_str().unwrap(), restored.to_str().unwrap());
    std::fs::write(&index, text).unwrap();
    let copy = MariaDb::start_existing(ServerOptions {
        server_id: 2,
        ..ServerOptions::new(&restored, &sb.dir.path().join("run2"))
    });
    let verdict = bank::assert_consistent(
        &copy,
        &commits,
        time(&kept["lock"]["acquired_at"]),
        time(&kept["lock"]["released_at"]),
    );
    eprintln!("{verdict:?}");
    copy.stop();

    // restic reads the same mount.
    let restic = sb.dir.path().join("restic repo");
    run(
        "restic",
        &[Path::new("init"), Path::new("--repo"), &restic],
        sb.dir.path(),
    );
    run(
        "restic",
        &[Path::new("backup"), Path::new("--repo"), &restic, &mnt],
        sb.dir.path(),
    );

    let out = sb.dbsnap(&["snapshot", "release", mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(is_empty(&mnt));
    assert_eq!(sb.leftovers(), Vec::<String>::new());
    assert!(!sb
        .state
        .join("runs")
        .join(kept["name"].as_str().unwrap())
        .exists());
    // An after-job that runs twice is harmless.
    let out = sb.dbsnap(&["snapshot", "release", mnt.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn expired_ttl_is_released_by_cleanup_and_a_busy_dir_is_refused() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let mnt = sb.dir.path().join("hook mnt");
    std::fs::create_dir(&mnt).unwrap();
    std::fs::write(mnt.join("stray"), b"").unwrap();
    let dir = mnt.to_str().unwrap();
    let out = sb.dbsnap(&["snapshot", "create", "--mount", dir]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    std::fs::remove_file(mnt.join("stray")).unwrap();

    let out = sb.dbsnap(&["snapshot", "create", "--mount", dir, "--ttl", "1s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("expires"));
    assert!(!is_empty(&mnt));
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out = sb.dbsnap(&["cleanup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let released = stdout_json(&out)["released"].to_string();
    assert!(released.contains("expired snapshot"), "{released}");
    assert!(is_empty(&mnt));
    assert_eq!(sb.leftovers(), Vec::<String>::new());
}
