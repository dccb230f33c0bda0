//! `dbsnap prune` over 40 backups with synthetic timestamps: exactly the ones the
//! retention policy names remain, plus the newest verified one; nothing that is not
//! dbsnap's own is touched. No server is needed: prune reads only manifests.

mod common;

use std::path::Path;

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::{dbsnap_with, stderr, stdout_json};

fn manifest(name: &str, at: DateTime<Utc>, verification: &str) -> String {
    let t = at.to_rfc3339();
    format!(
        r#"format = 1
name = "{name}"
path = "/nowhere/{name}"
dbsnap_version = "0.1.0"
started_at = "{t}"
finished_at = "{t}"
paths = [{{ role = "datadir", path = "/var/lib/mysql" }}]
[server]
version = "10.11.6-MariaDB"
hostname = "db1"
datadir = "/var/lib/mysql"
[lock]
mode = "ftwrl"
reason = "synthetic"
prelude_ms = 0.0
wait_ms = 1.0
hold_ms = 2.0
attempts = 1
queued_sessions = 0
acquired_at = "{t}"
released_at = "{t}"
[coordinates]
exact = true
[snapshot]
backend = "btrfs"
name = "dbsnap-{name}"
atomic = true
volumes = []
[transfer]
method = "rsync"
bytes = 1
bytes_written = 1
files = 1
duration_ms = 1
{verification}"#
    )
}

fn verification(verdict: &str) -> String {
    format!(
        "[verification]\nverdict = \"{verdict}\"\nverified_at = \"2026-10-21T00:00:00Z\"\n\
         server_binary = \"/usr/sbin/mariadbd\"\nserver_version = \"10.11.6-MariaDB\"\n\
         copy_ms = 1\nrecovery_ms = 1\ncheck_ms = 1\ntables_checked = 1\nproblems = []\nwarnings = []\n"
    )
}

fn names(dest: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dest)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn prune_keeps_exactly_what_the_policy_names() {
    let dir = tempfile::Builder::new()
        .prefix("dbsnap prune ")
        .tempdir()
        .unwrap();
    let dest = dir.path().join("backups");
    std::fs::create_dir(&dest).unwrap();
    // 40 backups, every 12 hours from Thursday 2026-10-01 00:00 UTC.
    let start = Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap();
    for n in 0..40 {
        let at = start + Duration::hours(12 * n);
        let name = at.format("%Y%m%dT%H%M%SZ").to_string();
        let extra = match n {
            10 => verification("passed"),
            5 => verification("failed"),
            _ => String::new(),
        };
        std::fs::create_dir_all(dest.join(&name).join("files")).unwrap();
        std::fs::write(
            dest.join(&name).join("manifest.toml"),
            manifest(&name, at, &extra),
        )
        .unwrap();
    }
    // Not dbsnap's: no manifest, a manifest naming another backup, a partial copy.
    std::fs::create_dir(dest.join("notes")).unwrap();
    std::fs::create_dir(dest.join("copy of old")).unwrap();
    std::fs::write(
        dest.join("copy of old/manifest.toml"),
        manifest("20260101T000000Z", start - Duration::days(300), ""),
    )
    .unwrap();
    let config = dir.path().join("dbsnap.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[mysql]\nsocket = \"/nonexistent.sock\"\n[snapshot]\nbackend = \"btrfs\"\n\
             [backup]\ndest = {dest:?}\n[retention]\nkeep_last = 2\nkeep_daily = 4\nkeep_weekly = 3\nkeep_monthly = 2\n",
            dir.path().join("state")
        ),
    )
    .unwrap();

    let before = names(&dest);
    let out = dbsnap_with(&config, &["prune", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stdout_json(&out);
    let going = report["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .count();
    assert_eq!(going, 33);
    assert_eq!(names(&dest), before, "--dry-run removed something");

    let out = dbsnap_with(&config, &["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        names(&dest),
        [
            "20261006T000000Z", // newest verified
            "20261011T120000Z", // weekly 2026-W41
            "20261017T120000Z", // daily
            "20261018T120000Z", // daily, weekly 2026-W42
            "20261019T120000Z", // daily
            "20261020T000000Z", // last
            "20261020T120000Z", // last, daily, weekly 2026-W43, monthly 2026-10
            "copy of old",
            "notes",
        ]
    );
    let journal = std::fs::read_to_string(dir.path().join("state/journal.json")).unwrap();
    assert_eq!(journal.trim(), "[]");

    // A policy that keeps nothing is refused.
    let text = std::fs::read_to_string(&config).unwrap();
    let cut = text.find("[retention]").unwrap();
    std::fs::write(&config, format!("{}[retention]\n", &text[..cut])).unwrap();
    let out = dbsnap_with(&config, &["prune"]);
    assert_eq!(out.status.code(), Some(2));
}
