//! The Prometheus textfile, read by a real node_exporter (Debian's
//! prometheus-node-exporter, started here on 127.0.0.1 with only the textfile collector)
//! and scraped over HTTP: after a successful backup, a hook-mode snapshot past its TTL,
//! and a failed backup (server down), the scraped values are what the manifest, the
//! kept-snapshot record and the exit code say. A scraper runs throughout and must never
//! see a half-written file (node_exporter reports one as `node_textfile_scrape_error 1`).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{stderr, stdout_json, Sandbox};

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

/// A node_exporter with only the textfile collector, killed on drop.
struct NodeExporter {
    child: Child,
    port: u16,
}

impl NodeExporter {
    fn start(textfile_dir: &Path) -> NodeExporter {
        let port = dbsnap_test_support::mariadb::free_port();
        let child = Command::new(NODE_EXPORTER)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--collector.disable-defaults")
            .arg("--collector.textfile")
            .arg(format!(
                "--collector.textfile.directory={}",
                textfile_dir.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {NODE_EXPORTER}: {e} (scripts/install-deps.sh installs it)")
            });
        let exporter = NodeExporter { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while exporter.try_scrape().is_err() {
            assert!(Instant::now() < deadline, "node_exporter did not answer");
            std::thread::sleep(Duration::from_millis(100));
        }
        exporter
    }

    fn try_scrape(&self) -> std::io::Result<String> {
        scrape(self.port)
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET /metrics over a plain TCP connection (HTTP/1.0: the server closes after the body).
fn scrape(port: u16) -> std::io::Result<String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    conn.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(head.to_string()));
    }
    Ok(body.to_string())
}

/// The samples of one scrape, by `name{labels}` as node_exporter prints them (labels
/// sorted by name).
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn value(s: &BTreeMap<String, f64>, name: &str, labels: &str) -> f64 {
    let key = format!("{name}{{{labels}}}");
    *s.get(&key).unwrap_or_else(|| {
        panic!(
            "{key} not scraped; dbsnap samples: {:?}",
            s.keys()
                .filter(|k| k.starts_with("dbsnap"))
                .collect::<Vec<_>>()
        )
    })
}

fn seconds(v: &serde_json::Value) -> f64 {
    let t = chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    t.timestamp_millis() as f64 / 1000.0
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(1.0)
}

const C: &str = "config=\"db1\"";

#[test]
fn node_exporter_scrapes_what_the_manifest_the_record_and_the_exit_code_say() {
    let mut sb = Sandbox::new();
    let textfiles: PathBuf = sb.dir.path().join("textfile collector");
    std::fs::create_dir(&textfiles).unwrap();
    let prom = textfiles.join("dbsnap.prom");
    let base = std::fs::read_to_string(&sb.config).unwrap();
    sb.write_raw_config(&format!(
        "{base}\n[metrics]\ntextfile = {prom:?}\nconfig_label = \"db1\"\n"
    ));
    let exporter = NodeExporter::start(&textfiles);

    // Scrape in a loop for the whole test: every scrape must parse, and once dbsnap's
    // file exists, every scrape must hold all of it (its last family included).
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        let port = exporter.port;
        std::thread::spawn(move || {
            let mut scrapes = 0u32;
            let mut with_file = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let body = scrape(port).expect("scraping node_exporter");
                let s = samples(&body);
                assert_eq!(
                    s.get("node_textfile_scrape_error"),
                    Some(&0.0),
                    "node_exporter could not read the textfile:\n{body}"
                );
                if s.keys().any(|k| k.starts_with("dbsnap_")) {
                    assert!(
                        s.contains_key(&format!("dbsnap_journal_leftover_resources{{{C}}}")),
                        "a partial file was scraped:\n{body}"
                    );
                    with_file += 1;
                }
                scrapes += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (scrapes, with_file)
        })
    };

    // 1. A successful backup.
    let out = sb.dbsnap(&["--json", "backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = stdout_json(&out);
    let s = samples(&exporter.try_scrape().unwrap());
    let b = format!("command=\"backup\",{C}");
    assert_eq!(value(&s, "dbsnap_last_run_exit_code", &b), 0.0);
    assert_eq!(value(&s, "dbsnap_last_run_success", &b), 1.0);
    assert_eq!(
        value(&s, "dbsnap_runs_total", &format!("{b},result=\"success\"")),
        1.0
    );
    let first_success = value(&s, "dbsnap_last_success_timestamp_seconds", &b);
    assert_eq!(
        first_success,
        value(&s, "dbsnap_last_run_timestamp_seconds", &b)
    );
    assert!(first_success >= seconds(&m["finished_at"]));
    assert_eq!(value(&s, "dbsnap_backups", C), 1.0);
    assert_eq!(
        value(&s, "dbsnap_backup_newest_timestamp_seconds", C),
        seconds(&m["finished_at"])
    );
    assert!(close(
        value(&s, "dbsnap_backup_duration_seconds", C),
        seconds(&m["finished_at"]) - seconds(&m["started_at"])
    ));
    assert!(close(
        value(&s, "dbsnap_backup_lock_hold_seconds", C),
        m["lock"]["hold_ms"].as_f64().unwrap() / 1000.0
    ));
    assert!(close(
        value(&s, "dbsnap_backup_lock_wait_seconds", C),
        m["lock"]["wait_ms"].as_f64().unwrap() / 1000.0
    ));
    assert_eq!(
        value(&s, "dbsnap_backup_transferred_bytes", C),
        m["transfer"]["bytes"].as_f64().unwrap()
    );
    assert!(value(&s, "dbsnap_backup_stored_bytes", C) >= m["transfer"]["bytes"].as_f64().unwrap());
    assert_eq!(
        value(
            &s,
            "dbsnap_backup_verification",
            &format!("{C},verdict=\"none\"")
        ),
        1.0
    );
    assert!(value(&s, "dbsnap_destination_free_bytes", C) > 0.0);
    assert_eq!(value(&s, "dbsnap_kept_snapshots", C), 0.0);

    // 2. Two hook-mode snapshots; the first one's TTL has run out (its record says so)
    //    when the second is released, a command that releases no expired snapshot.
    let mut names = Vec::new();
    for (label, ttl) in [("a", Some("6h")), ("b", None)] {
        let mnt = sb.dir.path().join(format!("hook {label}"));
        std::fs::create_dir(&mnt).unwrap();
        let mut args = vec!["--json", "snapshot", "create", "--label", label];
        args.extend(["--mount", mnt.to_str().unwrap()]);
        args.extend(ttl.iter().flat_map(|t| ["--ttl", *t]));
        let out = sb.dbsnap(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        names.push(stdout_json(&out)["name"].as_str().unwrap().to_string());
    }
    let record = sb
        .state
        .join("snapshots")
        .join(format!("{}.toml", names[0]));
    let expired = chrono::Utc::now() - chrono::Duration::minutes(10);
    let text = std::fs::read_to_string(&record).unwrap();
    let mut doc: toml::Table = text.parse().unwrap();
    doc.insert(
        "expires_at".into(),
        toml::Value::String(expired.to_rfc3339()),
    );
    std::fs::write(&record, toml::to_string(&doc).unwrap()).unwrap();
    let out = sb.dbsnap(&["snapshot", "release", &names[1]]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = samples(&exporter.try_scrape().unwrap());
    let r = format!("command=\"snapshot-release\",{C}");
    assert_eq!(value(&s, "dbsnap_last_run_exit_code", &r), 0.0);
    assert_eq!(value(&s, "dbsnap_kept_snapshots", C), 1.0);
    assert_eq!(value(&s, "dbsnap_kept_snapshots_expired", C), 1.0);
    assert_eq!(
        value(&s, "dbsnap_kept_snapshot_next_expiry_timestamp_seconds", C),
        expired.timestamp_millis() as f64 / 1000.0
    );
    assert_eq!(
        value(
            &s,
            "dbsnap_last_run_exit_code",
            &format!("command=\"snapshot-create\",{C}")
        ),
        0.0
    );
    let out = sb.dbsnap(&["cleanup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = samples(&exporter.try_scrape().unwrap());
    assert_eq!(value(&s, "dbsnap_kept_snapshots", C), 0.0);
    assert_eq!(value(&s, "dbsnap_kept_snapshots_expired", C), 0.0);

    // 3. A failed backup: the server is down.
    sb.server.shutdown();
    let out = sb.dbsnap(&["backup"]);
    let code = out.status.code().unwrap();
    assert_eq!(code, 3, "cannot connect: {}", stderr(&out));
    let s = samples(&exporter.try_scrape().unwrap());
    assert_eq!(value(&s, "dbsnap_last_run_exit_code", &b), f64::from(code));
    assert_eq!(value(&s, "dbsnap_last_run_success", &b), 0.0);
    assert_eq!(
        value(&s, "dbsnap_runs_total", &format!("{b},result=\"failure\"")),
        1.0
    );
    assert_eq!(
        value(&s, "dbsnap_last_success_timestamp_seconds", &b),
        first_success
    );
    assert!(value(&s, "dbsnap_last_run_timestamp_seconds", &b) > first_success);
    assert_eq!(value(&s, "dbsnap_backups", C), 1.0);
    assert_eq!(
        value(&s, "dbsnap_backup_newest_timestamp_seconds", C),
        seconds(&m["finished_at"])
    );

    // More rewrites while the scraper runs.
    for _ in 0..10 {
        let out = sb.dbsnap(&["cleanup"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    stop.store(true, Ordering::Relaxed);
    let (scrapes, with_file) = scraper.join().expect("the scraper saw a bad file");
    eprintln!("{scrapes} scrapes, {with_file} with dbsnap's file");
    assert!(with_file > 0, "the scraper never saw the file");
    let names: Vec<_> = std::fs::read_dir(&textfiles)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["dbsnap.prom"], "no temporary file is left");
}
