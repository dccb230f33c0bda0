//! `dbsnap backup` end to end on a real btrfs with a real MariaDB under write load.

mod common;

use std::time::Duration;

use common::{restore_datadir, stdout_json, time, Sandbox};
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
    assert_eq!(manifest["lock"]["mode"], "ftwrl");
    assert!(manifest["lock"]["hold_ms"].as_f64().unwrap() > 0.0);
    assert!(manifest["lock"]["wait_ms"].as_f64().unwrap() >= 0.0);
    assert!(manifest["transfer"]["bytes"].as_u64().unwrap() > 1_000_000);
    let backup = std::path::PathBuf::from(manifest["path"].as_str().unwrap());
    assert_eq!(sb.backups(), vec![backup.clone()]);
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
    restore_datadir(&backup, &datadir, &restored);
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
