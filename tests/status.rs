//! `dbsnap status`: the Nagios-style freshness check, against a real MariaDB on btrfs.
//! Old backups and expired snapshots are made by rewriting the times in the manifest
//! and the kept-snapshot record (the check reads those), never by sleeping.

mod common;

use std::path::Path;

use chrono::{Duration, Utc};
use common::{stderr, stdout_json, Sandbox};

fn status(sb: &Sandbox, args: &[&str]) -> (i32, String) {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    let out = sb.dbsnap(&all);
    let line = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    assert!(!line.contains('\n'), "status prints one line: {line}");
    (out.status.code().unwrap(), line)
}

/// Set top-level keys of a TOML file (a manifest or a kept-snapshot record).
fn rewrite_toml(path: &Path, edit: impl FnOnce(&mut toml::Table)) {
    let mut doc: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    edit(&mut doc);
    std::fs::write(path, toml::to_string(&doc).unwrap()).unwrap();
}

fn ago(d: Duration) -> toml::Value {
    toml::Value::String((Utc::now() - d).to_rfc3339())
}

#[test]
fn status_follows_the_newest_backup_from_none_to_fresh_to_old_to_failed_verification() {
    let sb = Sandbox::new();
    let dest = sb.dest.display().to_string();

    let (code, line) = status(&sb, &[]);
    assert_eq!(code, 2, "{line}");
    assert_eq!(
        line,
        format!("DBSNAP CRITICAL - no complete backup in {dest}")
    );

    let out = sb.dbsnap(&["backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let backup = sb.backups().pop().unwrap();
    let name = backup.file_name().unwrap().to_string_lossy().into_owned();
    let (code, line) = status(&sb, &[]);
    assert_eq!(code, 0, "{line}");
    assert!(
        line.starts_with(&format!("DBSNAP OK - newest backup {name} finished ")),
        "{line}"
    );
    assert!(line.ends_with(" ago (limit 1day 2h)"), "{line}");

    let manifest = backup.join("manifest.toml");
    rewrite_toml(&manifest, |m| {
        m.insert("started_at".into(), ago(Duration::hours(74)));
        m.insert("finished_at".into(), ago(Duration::hours(73)));
    });
    let (code, line) = status(&sb, &[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with(&format!(
            "DBSNAP CRITICAL - newest backup {name} finished 3days 1h"
        )) && line.ends_with(" ago, older than 1day 2h"),
        "{line}"
    );
    let (code, line) = status(&sb, &["--max-age", "4d"]);
    assert_eq!(code, 0, "{line}");
    assert!(line.ends_with(" ago (limit 4days)"), "{line}");

    rewrite_toml(&manifest, |m| {
        let verification = toml::toml! {
            verdict = "failed"
            verified_at = "2026-11-30T02:00:00Z"
            server_binary = "/usr/sbin/mariadbd"
            server_version = "10.11"
            copy_ms = 1
            recovery_ms = 1
            check_ms = 1
            tables_checked = 0
            problems = ["CHECK TABLE shop.orders: corrupt"]
            warnings = []
        };
        m.insert("verification".into(), toml::Value::Table(verification));
    });
    let (code, line) = status(&sb, &["--max-age", "4d"]);
    assert_eq!(code, 2, "{line}");
    assert_eq!(
        line,
        format!(
            "DBSNAP CRITICAL - newest backup {name} failed verification: CHECK TABLE shop.orders: corrupt"
        )
    );

    let out = sb.dbsnap(&["--json", "status", "--max-age", "4d"]);
    assert_eq!(out.status.code(), Some(2));
    let doc = stdout_json(&out);
    assert_eq!(doc["state"], "CRITICAL");
    assert_eq!(doc["newest_backup"]["name"], name.as_str());
    assert_eq!(doc["newest_backup"]["verification"], "failed");
    assert_eq!(doc["max_age_seconds"], 4 * 86400);
}

#[test]
fn status_warns_about_an_expired_kept_snapshot_and_a_crashed_runs_leftovers() {
    let sb = Sandbox::new();
    let out = sb.dbsnap(&["backup"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let mnt = sb.dir.path().join("hook mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = sb.dbsnap(&[
        "--json",
        "snapshot",
        "create",
        "--mount",
        mnt.to_str().unwrap(),
        "--ttl",
        "6h",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let kept = stdout_json(&out)["name"].as_str().unwrap().to_string();
    let (code, line) = status(&sb, &[]);
    assert_eq!(code, 0, "a snapshot within its TTL is fine: {line}");

    let record = sb.state.join("snapshots").join(format!("{kept}.toml"));
    let expired = Utc::now() - Duration::minutes(5);
    rewrite_toml(&record, |r| {
        r.insert(
            "expires_at".into(),
            toml::Value::String(expired.to_rfc3339()),
        );
    });
    let (code, line) = status(&sb, &[]);
    assert_eq!(code, 1, "{line}");
    assert_eq!(
        line,
        format!(
            "DBSNAP WARNING - kept snapshot {kept} is past its TTL (expired {}); `dbsnap cleanup` releases it",
            expired.format("%Y-%m-%d %H:%M:%S UTC")
        )
    );
    let out = sb.dbsnap(&["cleanup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, line) = status(&sb, &[]);
    assert_eq!(code, 0, "{line}");

    // What a run killed while copying leaves: its partial directory in the journal.
    let partial = sb.dest.join("20261130T020000Z.partial");
    std::fs::create_dir(&partial).unwrap();
    let journal = serde_json::json!([
        { "run": "20261130T020000Z", "resource": { "kind": "partial", "dir": partial } }
    ]);
    std::fs::write(sb.state.join("journal.json"), journal.to_string()).unwrap();
    let (code, line) = status(&sb, &[]);
    assert_eq!(code, 1, "{line}");
    assert_eq!(
        line,
        "DBSNAP WARNING - a crashed run left 1 resource(s) in the journal (run 20261130T020000Z); run `dbsnap cleanup`"
    );
    let out = sb.dbsnap(&["cleanup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!partial.exists());
    let (code, line) = status(&sb, &[]);
    assert_eq!(code, 0, "{line}");
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn status_is_unknown_when_it_cannot_check() {
    let sb = Sandbox::new();
    let out = sb.dbsnap(&["status", "--max-age", "soon"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad command line is clap's usage error"
    );
    sb.write_raw_config("[mysql]\n");
    let (code, line) = status(&sb, &[]);
    assert_eq!(code, 3, "{line}");
    assert!(line.starts_with("DBSNAP UNKNOWN - "), "{line}");
}

#[test]
fn a_run_in_progress_is_no_leftover_and_a_busy_cleanup_pages_nobody() {
    let sb = Sandbox::new();
    let out = sb.dbsnap(&["backup"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The next backup stops in its post_snapshot hook (its snapshot and mount are in the
    // journal by then) until the test writes to the FIFO.
    let ready = sb.dir.path().join("ready");
    let fifo = sb.dir.path().join("go");
    let log = sb.dir.path().join("on_failure.log");
    dbsnap_test_support::sh("mkfifo", &[fifo.to_str().unwrap()]);
    let base = std::fs::read_to_string(&sb.config).unwrap();
    sb.write_raw_config(&format!(
        "{base}\n[hooks]\npost_snapshot = [\"/bin/sh\", \"-c\", \"touch '{}'; read line < '{}'\"]\n\
         on_failure = [\"/bin/sh\", \"-c\", \"echo $DBSNAP_COMMAND >> '{}'\"]\n",
        ready.display(),
        fifo.display(),
        log.display()
    ));
    let mut backup = std::process::Command::new(common::DBSNAP)
        .args(["--config", sb.config.to_str().unwrap(), "backup"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !ready.exists() {
        assert!(std::time::Instant::now() < deadline, "the hook never ran");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let journal = std::fs::read_to_string(sb.state.join("journal.json")).unwrap();
    assert!(journal.contains("\"mount\""), "{journal}");

    let (code, line) = status(&sb, &[]);
    assert_eq!(
        code, 0,
        "the active run's journal entries are not leftovers: {line}"
    );
    let out = sb.dbsnap(&["cleanup"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));

    std::fs::write(&fifo, "go\n").unwrap();
    assert!(backup.wait().unwrap().success());
    assert!(
        !log.exists(),
        "on_failure ran: {:?}",
        std::fs::read_to_string(&log)
    );
    assert_eq!(sb.backups().len(), 2);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}
