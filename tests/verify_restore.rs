//! `dbsnap verify` and `dbsnap restore` against a real MariaDB on a real btrfs: a backup
//! taken under load verifies, a torn page fails verification, and a restored backup
//! becomes a replica that catches up with its source.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{restore, stderr, stdout_json, Sandbox};
use dbsnap_test_support::bank::{self, Writers};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

const PAGE: u64 = 16 * 1024;

/// Overwrite the second half of every page from page 3 on with garbage: torn writes,
/// on more pages than InnoDB's doublewrite buffer could repair.
fn tear_pages(file: &Path) {
    let len = std::fs::metadata(file).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    let garbage: Vec<u8> = (0..PAGE / 2).map(|i| (i * 131 % 251) as u8).collect();
    let mut page = 3;
    while (page + 1) * PAGE <= len {
        f.seek(SeekFrom::Start(page * PAGE + PAGE / 2)).unwrap();
        f.write_all(&garbage).unwrap();
        page += 1;
    }
    f.sync_all().unwrap();
}

fn stored(backup: &Path, original: &str) -> PathBuf {
    backup.join("files").join(original.trim_start_matches('/'))
}

#[test]
fn backup_under_load_verifies_and_a_torn_page_fails_verification() {
    let mut sb = Sandbox::new();
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 8);
    // A clean restart checkpoints the filler into its .ibd. Pages written after the
    // last checkpoint are rebuilt from the redo log by crash recovery, which would
    // (rightly) repair torn pages there.
    sb.server.shutdown();
    sb.server = MariaDb::start_existing(sb.server.options.clone());
    // post_backup runs after the verification: it sees the verdict in the manifest.
    let marker = sb.dir.path().join("post_backup saw the verdict");
    let config = std::fs::read_to_string(&sb.config).unwrap()
        + &format!(
            "verify = true\n\n[hooks]\npost_backup = [\"/bin/sh\", \"-c\", 'grep -q \"^verdict = .passed.\" \"$DBSNAP_BACKUP_PATH/manifest.toml\" && touch \"{}\"']\n",
            marker.display()
        );
    sb.write_raw_config(&config);
    let writers = Writers::start(&sb.server.socket, 8);
    let started = Instant::now();
    let out = sb.dbsnap(&["backup", "--json"]);
    let took = started.elapsed();
    writers.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = stdout_json(&out);
    let v = &manifest["verification"];
    assert_eq!(v["verdict"], "passed", "{v}");
    assert!(marker.exists(), "post_backup ran before the verification");
    assert!(v["tables_checked"].as_u64().unwrap() >= 3, "{v}");
    assert_eq!(
        v["recovered_gtid_binlog_pos"],
        manifest["coordinates"]["gtid_binlog_pos"]
    );
    eprintln!(
        "MEASURED backup+verify {:?}; scratch copy {} ms, recovery {} ms, check {} ms",
        took, v["copy_ms"], v["recovery_ms"], v["check_ms"]
    );
    let backup = PathBuf::from(manifest["path"].as_str().unwrap());
    let on_disk = std::fs::read_to_string(backup.join("manifest.toml")).unwrap();
    assert!(on_disk.contains("[verification]"), "{on_disk}");
    let list = stdout_json(&sb.dbsnap(&["list", "--json"]));
    assert_eq!(list[0]["status"], "verified");

    // `dbsnap verify` alone, by name; nothing is left beside the backup.
    let name = manifest["name"].as_str().unwrap();
    let out = sb.dbsnap(&["verify", name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("recovery"));

    // A copy of the backup with torn pages in an .ibd fails, clearly, with exit 11.
    let torn = sb.dest.join("torn copy");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&backup)
        .arg(&torn)
        .status()
        .unwrap();
    assert!(status.success());
    let datadir = manifest["server"]["datadir"].as_str().unwrap();
    tear_pages(&stored(&torn, datadir).join("bank/filler.ibd"));
    let out = sb.dbsnap(&["verify", torn.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(11), "{err}");
    assert!(err.contains("FAILED verification"), "{err}");
    assert!(
        err.contains("filler") || err.contains("did not come up"),
        "{err}"
    );
    let list = stdout_json(&sb.dbsnap(&["list", "--json"]));
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "torn copy")
        .unwrap();
    assert_eq!(entry["status"], "failed");
    assert_eq!(entry["manifest"]["verification"]["verdict"], "failed");

    // The original backup was never opened by a server, and no scratch copy remains.
    let leftovers: Vec<String> = std::fs::read_dir(&sb.dest)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("verify"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn a_restored_backup_becomes_a_replica_that_catches_up() {
    let sb = Sandbox::networked();
    let port = sb.server.options.port.unwrap();
    bank::create(&sb.server);
    sb.server.sql(
        "CREATE USER 'repl'@'127.0.0.1' IDENTIFIED BY 'Repl-S3cret';
         GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';",
    );
    let writers = Writers::start(&sb.server.socket, 4);
    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let backup = PathBuf::from(stdout_json(&out)["path"].as_str().unwrap());
    // The source moves on after the backup: the replica must catch up with this.
    std::thread::sleep(Duration::from_secs(1));
    writers.stop();
    sb.server
        .sql("CREATE TABLE bank.after (i INT PRIMARY KEY); INSERT INTO bank.after VALUES (1), (2)");

    // On the btrfs, so that the replica itself can be backed up below.
    let target = sb.fs.subvolume("replica data");
    let port_arg = port.to_string();
    let out = restore(
        &sb,
        &backup,
        &target,
        &[
            "--json",
            "--source-host",
            "127.0.0.1",
            "--source-port",
            &port_arg,
            "--source-user",
            "repl",
        ],
    );
    let restored = stdout_json(&out);
    let gtid_form = restored["replication"]["gtid"].as_str().unwrap();
    let file_form = restored["replication"]["file_position"].as_str().unwrap();
    assert!(
        file_form.contains("MASTER_LOG_FILE = 'binlog."),
        "{file_form}"
    );
    assert!(
        gtid_form.contains("MASTER_USE_GTID = slave_pos"),
        "{gtid_form}"
    );
    let owner = std::fs::metadata(target.join("ibdata1")).unwrap();
    let mysql = nix::unistd::User::from_name("mysql").unwrap();
    if let Some(mysql) = mysql {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            owner.uid(),
            mysql.uid.as_raw(),
            "files belong to the server's user"
        );
    }

    // Refusals: a non-empty directory without --force.
    let out = sb.dbsnap(&[
        "restore",
        backup.to_str().unwrap(),
        "--datadir",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"));

    // An absolute relay-log name: the relay-log index then holds absolute paths.
    let replica = MariaDb::start_existing(ServerOptions {
        server_id: 2,
        extra_args: vec![format!(
            "--relay-log={}/replica-relay-bin",
            target.display()
        )],
        ..ServerOptions::new(&target, &sb.dir.path().join("run replica"))
    });
    // …and a running server even with --force.
    let out = sb.dbsnap(&[
        "restore",
        backup.to_str().unwrap(),
        "--datadir",
        target.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("Stop it first"), "{}", stderr(&out));

    let statement = gtid_form.replace("<password>", "Repl-S3cret");
    replica.sql(&format!("{statement} START SLAVE;"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let want = sb.server.sql("SELECT @@gtid_binlog_pos");
    loop {
        let got = replica.sql("SELECT @@gtid_slave_pos");
        if got == want {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "the replica did not catch up: at {got}, source at {want}\n{}",
                replica.sql("SHOW SLAVE STATUS\\G")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for table in ["bank.accounts", "bank.transfers", "bank.after"] {
        assert_eq!(
            replica.sql(&format!("CHECKSUM TABLE {table}")),
            sb.server.sql(&format!("CHECKSUM TABLE {table}")),
            "{table} differs"
        );
    }
    eprintln!(
        "replica caught up to {want}; {} transfers",
        replica.sql("SELECT COUNT(*) FROM bank.transfers")
    );

    // Back up the replica and verify that backup: its relay-log index and info name
    // the live replica's relay logs by absolute path. The throwaway server must use
    // the copy's own (and never purge or append to the live ones).
    let dest = sb.dir.path().join("replica backups");
    std::fs::create_dir(&dest).unwrap();
    let config = sb.dir.path().join("replica.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[mysql]\nsocket = {:?}\nuser = \"root\"\n[snapshot]\nbackend = \"btrfs\"\n\
             [backup]\ndest = {dest:?}\n",
            sb.dir.path().join("replica state"),
            replica.socket
        ),
    )
    .unwrap();
    let out = common::dbsnap_with(&config, &["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let replica_backup = PathBuf::from(stdout_json(&out)["path"].as_str().unwrap());
    let relay_logs = || -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(&target)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("relay"))
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = relay_logs();
    assert!(
        before.iter().any(|(n, _)| n.ends_with(".index")),
        "{before:?}"
    );
    let out = common::dbsnap_with(&config, &["verify", replica_backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("relay-bin.index for the new location"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        relay_logs(),
        before,
        "verification touched the live relay logs"
    );

    // The replica still replicates.
    sb.server.sql("INSERT INTO bank.after VALUES (3)");
    let want = sb.server.sql("SELECT @@gtid_binlog_pos");
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica.sql("SELECT @@gtid_slave_pos") != want {
        assert!(Instant::now() < deadline, "the replica stopped replicating");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sigkill_during_verification_takes_the_throwaway_server_along_and_cleanup_removes_the_copy() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 16);
    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let name = stdout_json(&out)["name"].as_str().unwrap().to_string();

    let mut child = std::process::Command::new(common::DBSNAP)
        .arg("--config")
        .arg(&sb.config)
        .args(["verify", &name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The throwaway server writes its pid file early in its startup.
    let pid_file = std::env::temp_dir()
        .join(format!("dbsnap-verify-{}", child.id()))
        .join("mysqld.pid");
    let deadline = Instant::now() + Duration::from_secs(30);
    let read_pid = || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
    };
    while read_pid().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let server_pid = read_pid().expect("the throwaway server started");
    // Alive, not a zombie waiting for init to reap it.
    let running = || {
        std::fs::read_to_string(format!("/proc/{server_pid}/stat")).is_ok_and(|s| {
            let state = s.rsplit_once(')').unwrap().1.split_whitespace().next();
            state != Some("Z")
        })
    };
    // It dies with dbsnap (parent-death signal): nothing keeps using the scratch copy.
    let deadline = Instant::now() + Duration::from_secs(10);
    while running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!running(), "the throwaway server outlived dbsnap");
    assert!(sb.dest.join(format!(".dbsnap-verify-{name}")).exists());

    let out = sb.dbsnap(&["cleanup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)["released"].as_array().unwrap().len(), 1);
    assert!(!sb.dest.join(format!(".dbsnap-verify-{name}")).exists());
    assert!(!pid_file.parent().unwrap().exists());
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    // The backup itself was not touched: it still verifies.
    assert!(sb.dbsnap(&["verify", &name]).status.success());
}

#[test]
fn inexact_coordinates_verify_and_restore_offers_only_safe_positions() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    // `--lock none` needs InnoDB only.
    sb.server.sql(
        "DROP TABLE bank.audit; CREATE TABLE bank.audit (client INT NOT NULL, seq INT NOT NULL, \
         PRIMARY KEY (client, seq)) ENGINE=InnoDB",
    );
    let writers = Writers::start(&sb.server.socket, 8);
    let out = sb.dbsnap(&["backup", "--json", "--lock", "none"]);
    writers.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = stdout_json(&out);
    assert_eq!(manifest["coordinates"]["exact"], false);
    let backup = PathBuf::from(manifest["path"].as_str().unwrap());

    // Coordinates read after the snapshot may be ahead of the copy: not a failure.
    let out = sb.dbsnap(&["verify", backup.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = stdout_json(&out);
    assert_eq!(v["verdict"], "passed", "{v}");
    assert!(!v["recovered_gtid_binlog_pos"].as_str().unwrap().is_empty());

    let target = sb.dir.path().join("restored");
    let out = restore(&sb, &backup, &target, &["--json"]);
    let r = &stdout_json(&out)["replication"];
    assert!(r["file_position"].is_null(), "{r}");
    assert!(r["gtid"].as_str().unwrap().contains("current_pos"), "{r}");
    assert!(
        r["note"].as_str().unwrap().contains("after the snapshot"),
        "{r}"
    );
}
