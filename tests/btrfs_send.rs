//! `[backup] method = "btrfs-send"`: backups received with `btrfs receive` on a btrfs
//! destination, each incremental from the previous backup's snapshot, which stays on
//! the source as the next base. Proven under write load with the end-to-end
//! consistency checks, on a chain of incrementals restored from the last one, and with
//! the chain broken in each way a user can break it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{restore, stderr, stdout_json, time, Sandbox};
use dbsnap_test_support::bank::{self, Commit, Writers};
use dbsnap_test_support::btrfs::LoopBtrfs;
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

fn use_method(sb: &Sandbox, dest: &Path, backup_keys: &str) {
    std::fs::create_dir_all(dest).unwrap();
    let config = std::fs::read_to_string(&sb.config).unwrap();
    let start = config.find("[backup]").unwrap();
    sb.write_raw_config(&format!(
        "{}[backup]\ndest = {dest:?}\n{backup_keys}",
        &config[..start]
    ));
}

/// One backup under 4 bank writers (with MyISAM audit rows); the manifest and the
/// commits the writers saw.
fn backup_under_load(sb: &Sandbox) -> (serde_json::Value, Vec<Commit>) {
    let writers = Writers::start_with_audit(&sb.server.socket, 4);
    std::thread::sleep(Duration::from_millis(300));
    // --force: some destinations here are on the snapshotted btrfs itself.
    let out = sb.dbsnap(&["backup", "--json", "--force"]);
    let commits = writers.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    // Backups are named by the second.
    std::thread::sleep(Duration::from_millis(1100));
    (stdout_json(&out), commits)
}

/// The dbsnap snapshots on the source (received copies on the same filesystem are not
/// in the snapshot directory).
fn source_snapshots(sb: &Sandbox) -> Vec<String> {
    sb.fs.subvolumes_matching(".dbsnap-snapshots/")
}

fn parent_records(sb: &Sandbox) -> usize {
    std::fs::read_dir(sb.state.join("parents"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn restore_and_check(sb: &Sandbox, manifest: &serde_json::Value, commits: &[Commit]) {
    let backup = PathBuf::from(manifest["path"].as_str().unwrap());
    let name = manifest["name"].as_str().unwrap();
    let restored = sb.dir.path().join(format!("restored {name}"));
    let out = restore(sb, &backup, &restored, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let copy = MariaDb::start_existing(ServerOptions {
        server_id: 2,
        ..ServerOptions::new(&restored, &sb.dir.path().join(format!("run {name}")))
    });
    let verdict = bank::assert_consistent(
        &copy,
        commits,
        time(&manifest["lock"]["acquired_at"]),
        time(&manifest["lock"]["released_at"]),
    );
    eprintln!("{name}: {verdict:?}");
    assert_eq!(
        copy.sql("SELECT @@gtid_binlog_pos"),
        manifest["coordinates"]["gtid_binlog_pos"].as_str().unwrap(),
        "the restored copy's GTID position is not the manifest's"
    );
}

#[test]
fn a_chain_of_incremental_streams_restores_from_the_last_one() {
    let sb = Sandbox::with_fs_size(1024);
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 64);
    // A separate btrfs filesystem, as a backup disk would be.
    let disk_dir = sb.dir.path().join("disk");
    std::fs::create_dir(&disk_dir).unwrap();
    let disk = LoopBtrfs::new(&disk_dir, "backup disk", 1024);
    let dest = disk.mountpoint.join("db backups");
    use_method(&sb, &dest, "method = \"btrfs-send\"\n");

    let mut chain = Vec::new();
    for _ in 0..4 {
        chain.push(backup_under_load(&sb));
        // Only the newest backup's snapshot stays on the source.
        assert_eq!(
            source_snapshots(&sb).len(),
            1,
            "{:?}",
            source_snapshots(&sb)
        );
        assert_eq!(parent_records(&sb), 1);
    }
    let full = &chain[0].0["transfer"];
    assert_eq!(full["method"], "btrfs-send");
    assert!(
        full["base"].is_null() && full["full_because"].is_null(),
        "{full}"
    );
    let full_bytes = full["bytes"].as_u64().unwrap();
    for pair in chain.windows(2) {
        let (previous, (m, _)) = (&pair[0].0, &pair[1]);
        let t = &m["transfer"];
        assert_eq!(t["base"], previous["name"], "{t}");
        assert_eq!(t["parent_snapshot"], previous["snapshot"]["name"], "{t}");
        let sent = t["bytes"].as_u64().unwrap();
        eprintln!(
            "incremental {} sent {sent} bytes in {} ms; the full stream was {full_bytes}",
            m["name"], t["duration_ms"]
        );
        assert!(
            sent < full_bytes / 2,
            "an incremental sent {sent} of {full_bytes} bytes"
        );
    }

    let out = sb.dbsnap(&["list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(&format!(
            "{} is the base of the next btrfs-send",
            chain[3].0["name"].as_str().unwrap()
        )),
        "{listed}"
    );

    // Older backups go; the newest (the next base) stays and restores on its own.
    let config = std::fs::read_to_string(&sb.config).unwrap();
    sb.write_raw_config(&format!("{config}\n[retention]\nkeep_last = 1\n"));
    let out = sb.dbsnap(&["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let left: Vec<PathBuf> = std::fs::read_dir(&dest)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let (last, commits) = chain.last().unwrap();
    assert_eq!(left, vec![PathBuf::from(last["path"].as_str().unwrap())]);
    assert!(
        disk.subvolumes_matching("dbsnap-").len() == 1,
        "{:?}",
        disk.subvolumes_matching("dbsnap-")
    );
    restore_and_check(&sb, last, commits);

    let out = sb.dbsnap(&["verify", last["path"].as_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // After the prune, the chain goes on from the kept base.
    let (next, _) = backup_under_load(&sb);
    assert_eq!(next["transfer"]["base"], last["name"]);
}

#[test]
fn a_broken_chain_falls_back_to_a_full_stream_and_says_why() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let dest = sb.fs.mountpoint.join("backups");
    use_method(&sb, &dest, "method = \"btrfs-send\"\n");
    let (first, _) = backup_under_load(&sb);

    // The base snapshot is deleted on the source.
    let parent = first["snapshot"]["volumes"][0]["snapshot"]
        .as_str()
        .unwrap();
    assert!(std::process::Command::new("btrfs")
        .args(["subvolume", "delete", parent])
        .status()
        .unwrap()
        .success());
    let (second, _) = backup_under_load(&sb);
    let t = &second["transfer"];
    assert!(t["base"].is_null(), "{t}");
    assert!(
        t["full_because"]
            .as_str()
            .unwrap()
            .contains("gone from the source"),
        "{t}"
    );

    // The chain starts again from the full one.
    let (third, _) = backup_under_load(&sb);
    assert_eq!(third["transfer"]["base"], second["name"]);

    // The base backup is deleted at the destination.
    let third_dir = PathBuf::from(third["path"].as_str().unwrap());
    for entry in std::fs::read_dir(&third_dir).unwrap().flatten() {
        if entry.path().is_dir() {
            std::process::Command::new("btrfs")
                .args(["subvolume", "delete"])
                .arg(entry.path())
                .status()
                .unwrap();
        }
    }
    std::fs::remove_dir_all(&third_dir).unwrap();
    let (fourth, commits) = backup_under_load(&sb);
    let t = &fourth["transfer"];
    assert!(t["base"].is_null(), "{t}");
    assert!(
        t["full_because"].as_str().unwrap().contains("is gone"),
        "{t}"
    );
    restore_and_check(&sb, &fourth, &commits);

    // Back to rsync: the kept base snapshot is no longer needed and is released.
    use_method(&sb, &dest, "method = \"rsync\"\n");
    let (rsynced, _) = backup_under_load(&sb);
    assert_eq!(rsynced["transfer"]["method"], "rsync");
    assert!(
        source_snapshots(&sb).is_empty(),
        "{:?}",
        source_snapshots(&sb)
    );
    assert_eq!(parent_records(&sb), 0);
}

#[test]
fn a_destination_that_cannot_receive_is_refused_before_the_lock() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    // The sandbox's destination is on the test machine's own filesystem, not btrfs.
    let dest = sb.dest.clone();
    use_method(&sb, &dest, "method = \"btrfs-send\"\n");
    for command in ["check", "backup"] {
        let out = sb.dbsnap(&[command]);
        assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
        assert!(stderr(&out).contains("not on btrfs"), "{}", stderr(&out));
    }
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    assert!(sb.backups().is_empty());

    // `auto` copies with rsync there instead.
    use_method(&sb, &dest, "method = \"auto\"\n");
    let out = sb.dbsnap(&["check", "--json"]);
    assert_eq!(
        stdout_json(&out)["transfer_method"],
        "rsync",
        "{}",
        stderr(&out)
    );
    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)["transfer"]["method"], "rsync");
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn sigkill_while_receiving_then_cleanup_leaves_only_the_base() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 48);
    let dest = sb.fs.mountpoint.join("backups");
    use_method(&sb, &dest, "method = \"btrfs-send\"\n");
    let (first, _) = backup_under_load(&sb);

    // A full stream (the base snapshot is gone), slowed down so that it can be caught.
    let parent = first["snapshot"]["volumes"][0]["snapshot"]
        .as_str()
        .unwrap();
    assert!(std::process::Command::new("btrfs")
        .args(["subvolume", "delete", parent])
        .status()
        .unwrap()
        .success());
    use_method(&sb, &dest, "method = \"btrfs-send\"\nbwlimit = \"8MiB\"\n");
    let mut child = std::process::Command::new(common::DBSNAP)
        .arg("--config")
        .arg(&sb.config)
        .args(["backup", "--force"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let receiving = || {
        std::fs::read_dir(&dest).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().ends_with(".partial")
                && std::fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_some())
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !receiving() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(receiving(), "the backup never started receiving");
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();

    let out = sb.dbsnap(&["cleanup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let partials: Vec<_> = std::fs::read_dir(&dest)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(partials.is_empty(), "{partials:?}");
    assert_eq!(
        sb.fs.subvolumes_matching("backups/").len(),
        1,
        "only the first backup's received copy may remain: {:?}",
        sb.fs.subvolumes_matching("backups/")
    );
    assert!(
        source_snapshots(&sb).is_empty(),
        "{:?}",
        source_snapshots(&sb)
    );
    let journal = std::fs::read_to_string(sb.state.join("journal.json")).unwrap();
    assert_eq!(journal.trim(), "[]");

    use_method(&sb, &dest, "method = \"btrfs-send\"\n");
    let (next, commits) = backup_under_load(&sb);
    restore_and_check(&sb, &next, &commits);
}

/// A subvolume nested in the datadir (here: one database's directory) is not in the
/// datadir's snapshot: it is snapshotted as a volume of its own, and both methods
/// bring it back in the restore.
#[test]
fn a_subvolume_nested_in_the_datadir_is_backed_up_by_both_methods() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let datadir = sb.fs.mountpoint.join("mysql");
    assert!(std::process::Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(datadir.join("nested_db"))
        .status()
        .unwrap()
        .success());
    sb.server.sql(
        "CREATE TABLE nested_db.t (i INT PRIMARY KEY) ENGINE=InnoDB;
         INSERT INTO nested_db.t SELECT seq FROM bank.seq_1_to_100",
    );
    let on_btrfs = sb.fs.mountpoint.join("backups");
    for (dest, keys) in [
        (sb.dest.clone(), "method = \"rsync\"\n"),
        (on_btrfs, "method = \"btrfs-send\"\n"),
    ] {
        use_method(&sb, &dest, keys);
        let (manifest, commits) = backup_under_load(&sb);
        assert_eq!(
            manifest["snapshot"]["volumes"].as_array().unwrap().len(),
            2,
            "{}",
            manifest["snapshot"]
        );
        restore_and_check(&sb, &manifest, &commits);
        let name = manifest["name"].as_str().unwrap();
        let restored = MariaDb::start_existing(ServerOptions {
            server_id: 3,
            ..ServerOptions::new(
                &sb.dir.path().join(format!("restored {name}")),
                &sb.dir.path().join(format!("run again {name}")),
            )
        });
        assert_eq!(
            restored.sql("SELECT COUNT(*) FROM nested_db.t"),
            "100",
            "{keys}"
        );
    }
}

/// A backup disk with room for one full copy but not two: an incremental stream needs
/// only room for an increment, not for the whole data again.
#[test]
fn a_small_backup_disk_takes_increments_it_has_no_room_to_take_in_full() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 96);
    let disk_dir = sb.dir.path().join("disk");
    std::fs::create_dir(&disk_dir).unwrap();
    let disk = LoopBtrfs::new(&disk_dir, "small disk", 480);
    let dest = disk.mountpoint.join("backups");
    use_method(&sb, &dest, "method = \"btrfs-send\"\n");
    let (first, _) = backup_under_load(&sb);
    let free = nix::sys::statvfs::statvfs(&dest).unwrap();
    let free = free.blocks_available() as u64 * free.fragment_size() as u64;
    let data: u64 = walkdir::WalkDir::new(sb.fs.mountpoint.join("mysql"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "full stream {} bytes; {free} bytes free afterwards; data {data} bytes",
        first["transfer"]["bytes"]
    );
    assert!(
        free < data,
        "the disk is too big for this test: {free} free, data {data}"
    );

    let out = sb.dbsnap(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("btrfs-send, incremental from backup"),
        "{said}"
    );
    let (second, commits) = backup_under_load(&sb);
    assert_eq!(second["transfer"]["base"], first["name"]);
    restore_and_check(&sb, &second, &commits);
}
