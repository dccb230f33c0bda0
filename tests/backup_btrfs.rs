//! `dbsnap backup` end to end on a real btrfs with a real MariaDB under write load.

mod common;

use std::time::Duration;

use common::{restore, stdout_json, time, Sandbox};
use dbsnap_test_support::bank::{self, Writers};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

#[test]
fn backup_under_load_restores_to_exactly_what_was_committed() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let writers = Writers::start(&sb.server.socket, 8);
    std::thread::sleep(Duration::from_millis(500));
    let out = sb.dbsnap(&["backup", "--json"]);
    std::thread::sleep(Duration::from_millis(500));
    let commits = writers.stop();
    assert!(out.status.success());
    let manifest = stdout_json(&out);

    // The manifest says what a DBA needs to know.
    // MariaDB 10.11: auto picks BACKUP STAGE and says why.
    assert_eq!(manifest["lock"]["mode"], "backup-stage");
    assert!(manifest["lock"]["reason"]
        .as_str()
        .unwrap()
        .contains("BACKUP STAGE"));
    assert_eq!(manifest["coordinates"]["exact"], true);
    assert!(manifest["lock"]["hold_ms"].as_f64().unwrap() > 0.0);
    assert!(manifest["lock"]["wait_ms"].as_f64().unwrap() >= 0.0);
    assert!(manifest["transfer"]["bytes"].as_u64().unwrap() > 1_000_000);
    let backup = std::path::PathBuf::from(manifest["path"].as_str().unwrap());
    assert_eq!(sb.backups(), vec![backup.clone()]);
    let list = stdout_json(&sb.dbsnap(&["list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["status"], "complete");
    assert_eq!(
        list[0]["manifest"]["lock"]["hold_ms"],
        manifest["lock"]["hold_ms"]
    );
    let human = String::from_utf8(sb.dbsnap(&["list"]).stdout).unwrap();
    assert!(
        human.contains(manifest["name"].as_str().unwrap()) && human.contains("complete"),
        "{human}"
    );
    let on_disk = std::fs::read_to_string(backup.join("manifest.toml")).unwrap();
    assert!(on_disk.contains("hold_ms"), "{on_disk}");

    // The binlog named in the manifest ends exactly at the recorded position.
    let datadir = std::path::PathBuf::from(manifest["server"]["datadir"].as_str().unwrap());
    let binlog = manifest["coordinates"]["binlog_file"].as_str().unwrap();
    let position = manifest["coordinates"]["binlog_position"].as_u64().unwrap();
    let copied = backup
        .join("files")
        .join(datadir.strip_prefix("/").unwrap())
        .join(binlog);
    assert_eq!(std::fs::metadata(&copied).unwrap().len(), position);
    assert!(!manifest["coordinates"]["gtid_binlog_pos"]
        .as_str()
        .unwrap()
        .is_empty());

    // A server started on the restored copy holds exactly what was committed before the lock.
    let restored = sb.dir.path().join("restored");
    restore(&sb, &backup, &restored, &[]);
    let index = std::fs::read_to_string(restored.join("binlog.index")).unwrap();
    assert!(
        index
            .lines()
            .all(|l| l.starts_with(restored.to_str().unwrap())),
        "binlog.index still names the original: {index}"
    );
    let copy = MariaDb::start_existing(ServerOptions {
        server_id: 2,
        ..ServerOptions::new(&restored, &sb.dir.path().join("run2"))
    });
    let verdict = bank::assert_consistent(
        &copy,
        &commits,
        time(&manifest["lock"]["acquired_at"]),
        time(&manifest["lock"]["released_at"]),
    );
    eprintln!("{verdict:?}");
    // Crash recovery on the copy ends at the same GTID the manifest recorded.
    let gtid = copy.sql("SELECT @@gtid_binlog_pos");
    assert_eq!(
        gtid,
        manifest["coordinates"]["gtid_binlog_pos"].as_str().unwrap()
    );
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

/// Sizes and modification times of every file under `dir`: equal before and after
/// means nothing in the tree was modified.
fn fingerprint(dir: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let m = e.metadata().unwrap();
            (
                e.path().display().to_string(),
                m.len(),
                m.modified().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Whether a backup is copying: its partial directory holds a file.
fn is_copying(sb: &Sandbox) -> bool {
    std::fs::read_dir(&sb.dest)
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

/// Start `dbsnap backup` and wait until it is copying.
fn start_slow_backup(sb: &Sandbox) -> std::process::Child {
    let mut child = std::process::Command::new(common::DBSNAP)
        .arg("--config")
        .arg(&sb.config)
        .arg("backup")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !is_copying(sb) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !is_copying(sb) {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("the backup never started copying");
    }
    std::thread::sleep(Duration::from_millis(500));
    child
}

#[test]
fn sigkill_while_copying_then_cleanup_releases_everything() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 48);
    assert!(sb.dbsnap(&["backup"]).status.success());
    let first = sb.backups()[0].clone();
    let before = fingerprint(&first);

    sb.write_config("");
    // A full copy: an incremental one of unchanged data would finish before the kill.
    let config =
        std::fs::read_to_string(&sb.config).unwrap() + "bwlimit = \"4MiB\"\nincremental = false\n";
    sb.write_raw_config(&config);
    let mut child = start_slow_backup(&sb);
    child.kill().unwrap();
    child.wait().unwrap();
    let left = sb.leftovers();
    assert!(left.iter().any(|l| l.starts_with("snapshot")), "{left:?}");
    assert!(
        left.iter().any(|l| l.starts_with("partial dir")),
        "{left:?}"
    );

    let out = sb.dbsnap(&["cleanup", "--json"]);
    assert!(out.status.success());
    assert_eq!(stdout_json(&out)["released"].as_array().unwrap().len(), 3);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    assert_eq!(
        fingerprint(&first),
        before,
        "the previous backup was modified"
    );

    sb.write_config("");
    assert!(sb.dbsnap(&["backup"]).status.success());
    assert_eq!(sb.backups().len(), 2);
}

/// Bytes of the files in the destination's partial directories.
fn bytes_in_partials(sb: &Sandbox) -> u64 {
    std::fs::read_dir(&sb.dest)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .flat_map(|e| walkdir::WalkDir::new(e.path()).into_iter().flatten())
        .filter(|f| f.file_type().is_file())
        .map(|f| f.metadata().unwrap().len())
        .sum()
}

#[test]
fn a_backup_killed_mid_copy_is_continued_by_the_next_run_from_its_partial() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 48);
    // The snapshot's BLAKE3 sums, taken by a hook, for the resumed backup's checksums.
    let hook = sb.dir.path().join("snapshot-b3sums.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nset -e\ncd \"$DBSNAP_SNAPSHOT_PATH\"\nfind . -type f ! -name '*.pid' -print0 \
             | xargs -0 -r b3sum > \"{}/$DBSNAP_NAME.b3sums\"\n",
            sb.dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = |extra: &str| {
        sb.write_config("");
        let text = std::fs::read_to_string(&sb.config).unwrap();
        sb.write_raw_config(&format!(
            "{text}{extra}\n[hooks]\npost_snapshot = [{hook:?}]\n"
        ));
    };
    // Killed with about 40 % of the ~160 MiB copied.
    config("bwlimit = \"8MiB\"\n");
    let mut child = start_slow_backup(&sb);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while bytes_in_partials(&sb) < 64 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let copied_before = bytes_in_partials(&sb);
    let killed: Vec<String> = std::fs::read_dir(&sb.dest)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(killed.len(), 1, "{killed:?}");
    let killed = killed[0].strip_suffix(".partial").unwrap().to_string();
    assert!(sb.backups().is_empty(), "a partial is never published");

    config("");
    let out = sb.dbsnap(&["backup", "--json"]);
    let log = common::stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains(&format!("resuming the partial backup {killed}")),
        "{log}"
    );
    let manifest = stdout_json(&out);
    let transfer = &manifest["transfer"];
    assert_eq!(transfer["resumed_from"], killed.as_str(), "{transfer}");
    let (bytes, written) = (
        transfer["bytes"].as_u64().unwrap(),
        transfer["bytes_written"].as_u64().unwrap(),
    );
    eprintln!(
        "killed after {copied_before} bytes; the resumed run wrote {written} of {bytes} bytes"
    );
    assert!(
        written + copied_before / 2 < bytes,
        "the resumed run wrote {written} of {bytes} bytes although the partial held {copied_before}"
    );

    // Byte-identical to its own snapshot: the checksums file is b3sum of the snapshot,
    // and the stored files match it.
    let name = manifest["name"].as_str().unwrap();
    let datadir = std::path::Path::new(manifest["server"]["datadir"].as_str().unwrap());
    let prefix = std::path::Path::new("files").join(datadir.strip_prefix("/").unwrap());
    let by_path = |text: &str, prefix: &std::path::Path| -> Vec<(std::path::PathBuf, String)> {
        let mut lines: Vec<_> = text
            .lines()
            .filter_map(|l| {
                let (hash, path) = l.split_once("  ").unwrap();
                let path = std::path::Path::new(path).strip_prefix(prefix).ok()?;
                Some((path.to_path_buf(), hash.to_string()))
            })
            .collect();
        lines.sort();
        lines
    };
    let backup = std::path::PathBuf::from(manifest["path"].as_str().unwrap());
    let recorded = std::fs::read_to_string(backup.join("checksums")).unwrap();
    let snapshot = std::fs::read_to_string(sb.dir.path().join(format!("{name}.b3sums"))).unwrap();
    assert_eq!(
        by_path(&recorded, &prefix),
        by_path(&snapshot, std::path::Path::new("."))
    );
    let verified = sb.dbsnap(&["verify", "--checksums", name]);
    assert!(verified.status.success(), "{}", common::stderr(&verified));
    assert_eq!(sb.backups(), vec![backup]);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn sigterm_while_copying_cleans_up_and_exits_130() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 48);
    let config = std::fs::read_to_string(&sb.config).unwrap() + "bwlimit = \"4MiB\"\n";
    sb.write_raw_config(&config);
    let child = start_slow_backup(&sb);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    assert!(sb.backups().is_empty());
}
