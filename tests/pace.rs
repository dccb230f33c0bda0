//! `[backup] pace`: the copy is paced by a probe commit on the real server, measured
//! before the lock, which never reaches the binary log; `pace = "off"` probes nothing.
//! (How the rate follows the latency is proven without a server, with scripted
//! latencies: `transfer::pace::tests`.)

mod common;

use std::time::Duration;

use common::{stderr, Sandbox};
use dbsnap_test_support::bank::{self, Writers};

#[test]
fn pace_auto_probes_commit_latency_before_the_lock_and_never_writes_the_binlog() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let writers = Writers::start(&sb.server.socket, 4);
    std::thread::sleep(Duration::from_millis(300));
    let binlog_before = sb.server.sql("SHOW MASTER STATUS");
    let out = sb.dbsnap(&["backup"]);
    writers.stop();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    let baseline = log.find("pace auto: baseline commit").expect(&log);
    let unlocked = log.find("writers waited").expect(&log);
    assert!(
        baseline < unlocked,
        "the baseline is measured before the lock: {log}"
    );
    let commits: u64 = sb
        .server
        .sql("SELECT commits FROM dbsnap.pace_probe WHERE id = 1")
        .parse()
        .unwrap();
    assert!(commits >= 9, "the baseline's samples at least: {commits}");
    let events = sb.server.sql(&format!(
        "SHOW BINLOG EVENTS IN '{}'",
        binlog_before.split_whitespace().next().unwrap()
    ));
    assert!(
        !events.contains("pace_probe") && !events.contains("CREATE DATABASE IF NOT EXISTS dbsnap"),
        "the probe reached the binary log: {events}"
    );
}

#[test]
fn pace_off_probes_nothing() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let config = std::fs::read_to_string(&sb.config).unwrap() + "pace = \"off\"\n";
    sb.write_raw_config(&config);
    let out = sb.dbsnap(&["backup"]);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("pace auto"), "{log}");
    let databases = sb.server.sql("SHOW DATABASES LIKE 'dbsnap'");
    assert!(databases.is_empty(), "{databases}");
}
