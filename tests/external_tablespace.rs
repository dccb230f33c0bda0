//! A table created with `DATA DIRECTORY` outside the datadir: its tablespace is found
//! through `INNODB_SYS_TABLESPACES`, snapshotted and copied with the rest, and a server
//! started on the restored copy reads it from the restored place (not the live one).

mod common;

use common::{restore, stdout_json, Sandbox};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

#[test]
fn a_table_outside_the_datadir_is_backed_up_and_restored() {
    let sb = Sandbox::new();
    let fast = sb.fs.subvolume("fast disk");
    sb.server.sql(&format!(
        "CREATE DATABASE shop;
         CREATE TABLE shop.events (id INT PRIMARY KEY, what VARCHAR(20)) ENGINE=InnoDB
             DATA DIRECTORY = '{}';
         INSERT INTO shop.events VALUES (1, 'outside'), (2, 'the datadir');",
        fast.display()
    ));
    let live_ibd = fast.join("shop/events.ibd");
    assert!(live_ibd.exists(), "the server did not put the table there");

    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let manifest = stdout_json(&out);
    let tablespace = manifest["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "tablespace")
        .unwrap_or_else(|| panic!("no tablespace directory in {}", manifest["paths"]));
    assert_eq!(tablespace["path"], fast.join("shop").to_str().unwrap());
    let backup = std::path::PathBuf::from(manifest["path"].as_str().unwrap());
    let stored = backup
        .join("files")
        .join(fast.strip_prefix("/").unwrap())
        .join("shop/events.ibd");
    assert!(stored.exists(), "{} was not copied", stored.display());

    // Verification's throwaway server sees the copy at the original paths too.
    let out = sb.dbsnap(&["verify", backup.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));

    // A change to the live table after the backup must not show in the restored copy.
    sb.server
        .sql("INSERT INTO shop.events VALUES (3, 'after the backup')");
    let restored = sb.dir.path().join("restored");
    restore(&sb, &backup, &restored, &[]);
    let copy = MariaDb::start_existing(ServerOptions {
        server_id: 2,
        ..ServerOptions::new(&restored, &sb.dir.path().join("run2"))
    });
    assert_eq!(
        copy.sql("SELECT GROUP_CONCAT(id ORDER BY id) FROM shop.events"),
        "1,2"
    );
    // Only the live server has the live tablespace open; the restored server reads
    // its own copy.
    let holders = holders_of(&live_ibd);
    assert_eq!(
        holders.len(),
        1,
        "{} is open in {holders:?}",
        live_ibd.display()
    );
    let restored_ibd = sb.dir.path().join("restored.tablespace/events.ibd");
    let holders = holders_of(&restored_ibd);
    assert!(
        holders
            .iter()
            .any(|h| h.contains(&format!("--datadir={}", restored.display()))),
        "the restored server does not read {}: {holders:?}",
        restored_ibd.display()
    );
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

/// The command lines of the processes that have `file` open.
fn holders_of(file: &std::path::Path) -> Vec<String> {
    let mut holders = Vec::new();
    for proc_dir in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(fds) = std::fs::read_dir(proc_dir.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == file))
        {
            let cmdline = std::fs::read(proc_dir.path().join("cmdline")).unwrap_or_default();
            holders.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    holders
}
