//! A replica backed up in replica-safe mode (the applier thread stopped around the
//! snapshot instead of a global lock) records the source's coordinates, and those
//! coordinates set up a new replica that catches up with the source exactly.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{restore, stderr, stdout_json, Sandbox};
use dbsnap_test_support::bank::{self, Writers};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tcp(port: u16) -> Vec<String> {
    vec![
        "--skip-networking=0".into(),
        format!("--port={port}"),
        "--bind-address=127.0.0.1".into(),
    ]
}

fn replicate_from(replica: &MariaDb, source_port: u16, file: &str, pos: &str) {
    replica.sql(&format!(
        "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={source_port}, MASTER_USER='repl', \
         MASTER_PASSWORD='repl-pw', MASTER_LOG_FILE='{file}', MASTER_LOG_POS={pos}, MASTER_USE_GTID=no; \
         START SLAVE;"
    ));
}

/// `SHOW SLAVE STATUS` as `Name: value` lines.
fn slave_status(db: &MariaDb) -> String {
    let out = std::process::Command::new("mariadb")
        .arg("--no-defaults")
        .arg(format!("--socket={}", db.socket.display()))
        .args(["-uroot", "-e", "SHOW SLAVE STATUS\\G"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Wait until `replica` has applied everything `source` has written.
fn wait_caught_up(source: &MariaDb, replica: &MariaDb) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = source.sql("SHOW MASTER STATUS");
    let mut fields = status.split('\t');
    let (file, pos) = (
        fields.next().unwrap().to_string(),
        fields.next().unwrap().to_string(),
    );
    loop {
        let s = slave_status(replica);
        let field = |name: &str| {
            s.lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix(&format!("{name}: "))
                        .map(str::to_string)
                })
                .unwrap_or_default()
        };
        if field("Relay_Master_Log_File") == file && field("Exec_Master_Log_Pos") == pos {
            return;
        }
        assert!(Instant::now() < deadline, "replica did not catch up: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn replica_mode_records_source_coordinates_that_build_a_new_replica() {
    let sb = Sandbox::new();
    let source_dir = sb.dir.path().join("source");
    let source_port = free_port();
    let source = MariaDb::start(ServerOptions {
        server_id: 10,
        extra_args: tcp(source_port),
        ..ServerOptions::new(&source_dir.join("data"), &source_dir.join("run"))
    });
    source.sql("CREATE USER 'repl'@'127.0.0.1' IDENTIFIED BY 'repl-pw'; GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';");
    let status = source.sql("SHOW MASTER STATUS");
    let mut f = status.split('\t');
    // The sandbox server is the replica: its datadir is on btrfs.
    let replica = &sb.server;
    replica.sql("SET GLOBAL read_only = ON");
    replicate_from(replica, source_port, f.next().unwrap(), f.next().unwrap());
    bank::create(&source);
    wait_caught_up(&source, replica);

    let writers = Writers::start(&source.socket, 8);
    std::thread::sleep(Duration::from_millis(500));
    let out = sb.dbsnap(&["backup", "--json", "--lock", "replica"]);
    std::thread::sleep(Duration::from_millis(500));
    writers.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = stdout_json(&out);
    assert_eq!(manifest["lock"]["mode"], "replica");
    let coords = &manifest["coordinates"]["replica"];
    let (file, pos) = (
        coords["source_log_file"].as_str().unwrap(),
        coords["source_log_pos"].as_u64().unwrap(),
    );
    assert!(pos > 0);
    // The applier runs again after the backup.
    wait_caught_up(&source, replica);

    // A new replica from the backup, started at the recorded source coordinates with
    // the statement `dbsnap restore` prints.
    let backup = std::path::PathBuf::from(manifest["path"].as_str().unwrap());
    let restored = sb.dir.path().join("new-replica");
    let out = restore(
        &sb,
        &backup,
        &restored,
        &["--json", "--source-user", "repl"],
    );
    let statement = stdout_json(&out)["replication"]["from_source"]
        .as_str()
        .expect("a statement to join the source")
        .replace("<password>", "repl-pw");
    assert!(
        statement.contains(&format!(
            "MASTER_LOG_FILE = '{file}', MASTER_LOG_POS = {pos}"
        )),
        "{statement}"
    );
    let fresh = MariaDb::start_existing(ServerOptions {
        server_id: 3,
        extra_args: vec!["--skip-slave-start".into()],
        ..ServerOptions::new(&restored, &sb.dir.path().join("run3"))
    });
    fresh.sql(&format!(
        "STOP SLAVE; RESET SLAVE ALL; {statement} START SLAVE;"
    ));
    wait_caught_up(&source, &fresh);
    let checksum = |db: &MariaDb| db.sql("CHECKSUM TABLE bank.accounts, bank.transfers");
    assert_eq!(
        checksum(&fresh),
        checksum(&source),
        "the new replica differs from the source"
    );
    let transfers = fresh.sql("SELECT COUNT(*) FROM bank.transfers");
    eprintln!(
        "new replica caught up from {file}:{pos}; {transfers} transfers; lock hold {} ms",
        manifest["lock"]["hold_ms"]
    );
}

#[test]
fn replica_mode_is_refused_on_a_writable_server() {
    let sb = Sandbox::new();
    let out = sb.dbsnap(&["backup", "--lock", "replica"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a replica"), "{}", stderr(&out));
    assert!(sb.leftovers().is_empty());
}
