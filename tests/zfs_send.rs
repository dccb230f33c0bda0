//! `[backup] method = "zfs-send"` on zfs-fuse (the host tier): backups received with
//! `zfs receive` into a dataset below the destination's dataset, each incremental from
//! the previous backup's snapshot, which stays on the source (held) as the next base.
//! The datadir and a child binlog dataset inside it make two chains. Proven under write
//! load with the end-to-end consistency checks, on a chain of incrementals restored
//! from the last one, with the chain broken in each way a user can break it, and with
//! a run killed in the middle of a stream.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::zfs::{sh, Binlogs, ZfsSandbox};
use common::{restore_with, stderr, stdout_json, time};
use dbsnap_test_support::bank::{self, Commit, Writers};
use dbsnap_test_support::mariadb::{self, MariaDb, ServerOptions};
use dbsnap_test_support::zfs_fuse::ZfsFuse;

/// A server on two datasets of one pool (datadir, binlogs in a child dataset inside
/// it), and the destination on the dataset `<backup pool>/db backups` (its mount point;
/// received copies then appear in `dest/dbsnap-received`, which list and prune must
/// ignore).
fn sandbox(zfs: &mut ZfsFuse, method: &str) -> (ZfsSandbox, String) {
    // Room for the filler, its binlog events and the blocks the kept base snapshot pins
    // (256 MiB filled up on a loaded machine, where the writers commit longer).
    let pool = zfs.create_pool_sized("dbsnaps", 768);
    let root = zfs.mount_root(&pool);
    let template = zfs.dir().join("template");
    mariadb::install(&template);
    let mut sb = ZfsSandbox::new(
        &pool,
        &root,
        zfs.dir(),
        Binlogs::ChildOfDatadir,
        &template,
        "",
    );
    // Room for several full copies: dbsnap checks the destination has room for one
    // before every backup, even one that will be an incremental stream.
    let backup_pool = zfs.create_pool_sized("dbsnapd", 1024);
    let dest_dataset = format!("{backup_pool}/db backups");
    sh("zfs", &["create", &dest_dataset]);
    sb.dest = zfs.mount_root(&backup_pool).join("db backups");
    sb.write_config("", &format!("method = {method:?}"));
    (sb, dest_dataset)
}

/// One backup under 4 bank writers (with MyISAM audit rows); the manifest and the
/// commits the writers saw.
fn backup_under_load(sb: &ZfsSandbox) -> (serde_json::Value, Vec<Commit>) {
    let writers = Writers::start_with_audit(&sb.server.socket, 4);
    std::thread::sleep(Duration::from_millis(300));
    let out = sb.dbsnap(&["backup", "--json"]);
    let commits = writers.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    // Backups are named by the second.
    std::thread::sleep(Duration::from_millis(1100));
    (stdout_json(&out), commits)
}

fn zfs_names(kind: &str, root: &str) -> Vec<String> {
    sh("zfs", &["list", "-H", "-t", kind, "-o", "name", "-r", root])
        .lines()
        .map(str::to_string)
        .collect()
}

/// dbsnap's snapshots on the source datasets, with their hold counts.
fn source_snapshots(sb: &ZfsSandbox) -> Vec<String> {
    zfs_names("snapshot", &sb.pool)
        .into_iter()
        .map(|s| {
            let refs = sh("zfs", &["get", "-H", "-p", "-o", "value", "userrefs", &s]);
            format!("{s} (userrefs {})", refs.trim())
        })
        .collect()
}

/// Received snapshots and datasets below the destination's dataset (the container
/// itself excluded).
fn received(dest_dataset: &str) -> (Vec<String>, Vec<String>) {
    let container = format!("{dest_dataset}/dbsnap-received");
    let datasets = zfs_names("filesystem", dest_dataset)
        .into_iter()
        .filter(|d| d.starts_with(&format!("{container}/")))
        .collect();
    (zfs_names("snapshot", dest_dataset), datasets)
}

fn parent_records(sb: &ZfsSandbox) -> usize {
    std::fs::read_dir(sb.state.join("parents"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn restore_and_check(sb: &ZfsSandbox, manifest: &serde_json::Value, commits: &[Commit]) {
    let backup = PathBuf::from(manifest["path"].as_str().unwrap());
    let name = manifest["name"].as_str().unwrap();
    let restored = sb.dir.join(format!("restored {name}"));
    restore_with(&sb.config, &backup, &restored, &[]);
    let mut options = ServerOptions::new(&restored, &sb.dir.join(format!("run {name}")));
    options.server_id = 2;
    options.log_bin = Some(restored.join("binlog").join("binlog"));
    let copy = MariaDb::start_existing(options);
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
    copy.stop();
}

#[test]
fn a_chain_of_incremental_streams_restores_from_the_last_one() {
    let t = Instant::now();
    let Some(mut zfs) = ZfsFuse::enter("a_chain_of_incremental_streams_restores_from_the_last_one")
    else {
        return;
    };
    let (sb, dest_dataset) = sandbox(&mut zfs, "zfs-send");
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 16);

    let mut chain = Vec::new();
    for _ in 0..4 {
        chain.push(backup_under_load(&sb));
        // Only the newest backup's snapshots stay on the source, held.
        let kept = source_snapshots(&sb);
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(kept.iter().all(|s| s.ends_with("(userrefs 1)")), "{kept:?}");
        assert_eq!(parent_records(&sb), 1);
    }
    let full = &chain[0].0["transfer"];
    assert_eq!(full["method"], "zfs-send");
    assert!(
        full["base"].is_null() && full["full_because"].is_null(),
        "{full}"
    );
    let full_bytes = full["bytes"].as_u64().unwrap();
    println!(
        "MEASURE zfs-fuse full stream: {full_bytes} bytes in {} ms",
        full["duration_ms"]
    );
    for pair in chain.windows(2) {
        let (previous, (m, _)) = (&pair[0].0, &pair[1]);
        let t = &m["transfer"];
        assert_eq!(t["base"], previous["name"], "{t}");
        assert_eq!(t["parent_snapshot"], previous["snapshot"]["name"], "{t}");
        let sent = t["bytes"].as_u64().unwrap();
        println!(
            "MEASURE zfs-fuse incremental stream: {sent} bytes in {} ms",
            t["duration_ms"]
        );
        assert!(
            sent < full_bytes / 2,
            "an incremental sent {sent} of {full_bytes} bytes"
        );
    }
    // Two chains (one per dataset), four snapshots each, one read-only copy per backup
    // and dataset.
    let (snapshots, datasets) = received(&dest_dataset);
    assert_eq!(snapshots.len(), 8, "{snapshots:?}");
    assert_eq!(datasets.len(), 2 + 8, "{datasets:?}");
    let out = sb.dbsnap(&["list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout_json(&out).as_array().unwrap().len(),
        4,
        "{}",
        stdout_json(&out)
    );

    // Older backups go with their received snapshots and copies; the newest (the next
    // base) stays and restores on its own.
    sb.write_config("", "method = \"zfs-send\"\n[retention]\nkeep_last = 1");
    let out = sb.dbsnap(&["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (last, commits) = chain.last().unwrap();
    assert_eq!(
        sb.backups(),
        vec![PathBuf::from(last["path"].as_str().unwrap())]
    );
    let (snapshots, datasets) = received(&dest_dataset);
    let last_set = last["snapshot"]["name"].as_str().unwrap();
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    assert!(
        snapshots
            .iter()
            .all(|s| s.ends_with(&format!("@{last_set}"))),
        "{snapshots:?}"
    );
    assert_eq!(datasets.len(), 2 + 2, "{datasets:?}");
    restore_and_check(&sb, last, commits);

    let out = sb.dbsnap(&["verify", last["path"].as_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // After the prune, the chain goes on from the kept base.
    let (next, _) = backup_under_load(&sb);
    assert_eq!(next["transfer"]["base"], last["name"]);
    assert!(
        leftovers(&sb, &next).is_empty(),
        "{:?}",
        leftovers(&sb, &next)
    );
    println!(
        "MEASURE zfs-fuse zfs-send chain test: {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn a_broken_chain_falls_back_to_a_full_stream_and_says_why() {
    let Some(mut zfs) = ZfsFuse::enter("a_broken_chain_falls_back_to_a_full_stream_and_says_why")
    else {
        return;
    };
    let (sb, dest_dataset) = sandbox(&mut zfs, "zfs-send");
    bank::create(&sb.server);
    let (first, _) = backup_under_load(&sb);

    // The base snapshot is destroyed on the source (its hold released first).
    let parent = first["snapshot"]["volumes"][0]["snapshot"]
        .as_str()
        .unwrap();
    sh("zfs", &["release", "dbsnap", parent]);
    sh("zfs", &["destroy", parent]);
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
    // The full stream started new chains; the first backup's stayed intact.
    let (_, datasets) = received(&dest_dataset);
    assert_eq!(
        datasets.iter().filter(|d| d.ends_with(".stream")).count(),
        4,
        "{datasets:?}"
    );

    // The chain starts again from the full one.
    let (third, _) = backup_under_load(&sb);
    assert_eq!(third["transfer"]["base"], second["name"]);

    // The base backup is deleted at the destination (by prune, which must keep the
    // base: so by hand, like a user would, through dbsnap's own removal path).
    let third_dir = PathBuf::from(third["path"].as_str().unwrap());
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
    sb.write_config("", "method = \"rsync\"");
    let (rsynced, _) = backup_under_load(&sb);
    assert_eq!(rsynced["transfer"]["method"], "rsync");
    assert!(
        source_snapshots(&sb).is_empty(),
        "{:?}",
        source_snapshots(&sb)
    );
    assert_eq!(parent_records(&sb), 0);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn a_destination_not_on_zfs_is_refused_before_the_lock() {
    let Some(mut zfs) = ZfsFuse::enter("a_destination_not_on_zfs_is_refused_before_the_lock")
    else {
        return;
    };
    let pool = zfs.create_pool("dbsnapn");
    let root = zfs.mount_root(&pool);
    let template = zfs.dir().join("template");
    mariadb::install(&template);
    // The sandbox's own destination is on the test machine's filesystem, not ZFS.
    let sb = ZfsSandbox::new(
        &pool,
        &root,
        zfs.dir(),
        Binlogs::ChildOfDatadir,
        &template,
        "",
    );
    bank::create(&sb.server);
    sb.write_config("", "method = \"zfs-send\"");
    let out = sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("not on ZFS"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("lock was released"),
        "{}",
        stderr(&out)
    );
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    assert!(sb.backups().is_empty());

    // `auto` copies with rsync there instead.
    sb.write_config("", "method = \"auto\"");
    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)["transfer"]["method"], "rsync");
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

/// What a run left behind, apart from the snapshots kept as the next base.
fn leftovers(sb: &ZfsSandbox, kept: &serde_json::Value) -> Vec<String> {
    let kept = format!("@{}", kept["snapshot"]["name"].as_str().unwrap());
    let mut left = sb.leftovers();
    left.retain(|l| !l.contains(&kept));
    left
}

/// The `zfs receive` processes that dbsnap `pid` started.
fn receiving(pid: u32) -> bool {
    let out = std::process::Command::new("pgrep")
        .args(["-P", &pid.to_string(), "-f", "zfs receive"])
        .output()
        .unwrap();
    out.status.success()
}

#[test]
fn sigkill_during_a_stream_then_cleanup_leaves_nothing() {
    let Some(mut zfs) = ZfsFuse::enter("sigkill_during_a_stream_then_cleanup_leaves_nothing")
    else {
        return;
    };
    let (sb, dest_dataset) = sandbox(&mut zfs, "zfs-send");
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 24);
    // `auto` chooses the stream for the zfs backend and a destination on ZFS.
    sb.write_config("", "method = \"auto\"");
    let (first, _) = backup_under_load(&sb);
    assert_eq!(first["transfer"]["method"], "zfs-send");
    let before = received(&dest_dataset);

    // Killed while receiving: first an incremental, then (after the base is gone) a
    // full stream into a new chain.
    for kind in ["incremental", "full"] {
        if kind == "full" {
            let parent = first["snapshot"]["volumes"][0]["snapshot"]
                .as_str()
                .unwrap();
            sh("zfs", &["release", "dbsnap", parent]);
            sh("zfs", &["destroy", parent]);
        } else {
            bank::add_filler(&sb.server, 16);
        }
        let mut child = std::process::Command::new(common::DBSNAP)
            .arg("--config")
            .arg(&sb.config)
            .arg("backup")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !receiving(child.id()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let was_receiving = receiving(child.id());
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            was_receiving,
            "the {kind} backup never started receiving: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let out = sb.dbsnap(&["cleanup", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let released = stdout_json(&out)["released"].clone();
        assert!(
            released
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r.as_str().unwrap().contains("received copy")),
            "{released}"
        );
        assert!(
            leftovers(&sb, &first).is_empty(),
            "{:?}",
            leftovers(&sb, &first)
        );
        assert_eq!(received(&dest_dataset), before, "after the {kind} one");
    }
}
