//! Safety snapshots: keep a snapshot before a destructive "upgrade", roll back to it,
//! and find the old data; kept snapshots survive `cleanup` and are pruned by retention.

mod common;

use common::{stderr, stdout_json, Sandbox};
use dbsnap_test_support::bank;
use dbsnap_test_support::mariadb::MariaDb;

#[test]
fn snapshot_rollback_brings_the_old_data_back() {
    let mut sb = Sandbox::new();
    bank::create(&sb.server);
    sb.server
        .sql("CREATE TABLE bank.marker (note VARCHAR(20)) ENGINE=InnoDB; INSERT INTO bank.marker VALUES ('before upgrade')");
    let out = sb.dbsnap(&["snapshot", "create", "--label", "pre-upgrade", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let kept = stdout_json(&out);
    let name = kept["name"].as_str().unwrap().to_string();
    assert!(name.ends_with("-pre-upgrade"), "{name}");
    assert!(kept["lock"]["hold_ms"].as_f64().unwrap() > 0.0);

    // Kept, not a leftover: cleanup and a backup leave it alone.
    let out = sb.dbsnap(&["cleanup", "--json"]);
    assert!(out.status.success());
    assert!(stdout_json(&out)["released"].as_array().unwrap().is_empty());
    assert_eq!(sb.fs.subvolumes_matching(&name).len(), 1);
    let out = sb.dbsnap(&["backup"]);
    assert!(out.status.success());
    assert!(
        !stderr(&out).contains("no dbsnap journal records"),
        "{}",
        stderr(&out)
    );
    let list = stdout_json(&sb.dbsnap(&["snapshot", "list", "--json"]));
    assert_eq!(list[0]["name"], name.as_str());

    // The "upgrade" goes wrong.
    sb.server.sql(
        "DROP TABLE bank.transfers; UPDATE bank.accounts SET balance = 0; \
         DELETE FROM bank.marker; INSERT INTO bank.marker VALUES ('after upgrade')",
    );

    // Rolling back under a running server is refused, with what to do.
    let out = sb.dbsnap(&["snapshot", "rollback", &name]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("Stop it first"), "{}", stderr(&out));

    sb.server.shutdown();
    let out = sb.dbsnap(&["snapshot", "rollback", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("The snapshot is kept") && text.contains("Start the server again"),
        "{text}"
    );
    // btrfs keeps the snapshot, so the rollback can be repeated.
    let out = sb.dbsnap(&["snapshot", "rollback", &name, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout_json(&out),
        serde_json::json!({ "rolled_back": name, "snapshot_kept": true, "pending": null })
    );
    sb.server = MariaDb::start_existing(sb.server.options.clone());

    assert_eq!(
        sb.server.sql("SELECT note FROM bank.marker"),
        "before upgrade"
    );
    assert_eq!(
        sb.server.sql("SELECT SUM(balance) FROM bank.accounts"),
        (bank::ACCOUNTS * bank::INITIAL_BALANCE).to_string()
    );
    assert_eq!(sb.server.sql("SELECT COUNT(*) FROM bank.transfers"), "0");
    let check = sb
        .server
        .sql("CHECK TABLE bank.accounts, bank.transfers, bank.marker");
    assert!(check.lines().all(|l| l.ends_with("OK")), "{check}");
    // The swapped-out subvolume is gone; the snapshot is still kept.
    assert!(sb.fs.subvolumes_matching("rollback-old").is_empty());
    assert_eq!(sb.fs.subvolumes_matching(&name).len(), 1);

    // Retention applies to kept snapshots too: keep_last = 1 of two.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = sb.dbsnap(&["snapshot", "create", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let newer = stdout_json(&out)["name"].as_str().unwrap().to_string();
    let config = std::fs::read_to_string(&sb.config).unwrap() + "\n[retention]\nkeep_last = 1\n";
    sb.write_raw_config(&config);
    let out = sb.dbsnap(&["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(sb.fs.subvolumes_matching(&name).is_empty());
    assert_eq!(sb.fs.subvolumes_matching(&newer).len(), 1);

    let out = sb.dbsnap(&["snapshot", "release", &newer]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = stdout_json(&sb.dbsnap(&["snapshot", "list", "--json"]));
    assert!(list.as_array().unwrap().is_empty());
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}
