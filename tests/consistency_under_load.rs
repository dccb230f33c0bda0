//! The consistency tier: N backups under the bank write load (8 writers, InnoDB
//! transfers and MyISAM audit rows), each restored with `dbsnap restore`, started as a
//! server of its own and checked: `CHECK TABLE` clean, the total balance kept, every
//! transfer acknowledged before the lock present, none that began after the unlock.
//! The lock mode rotates through auto, ftwrl and backup-stage.
//!
//! N comes from `DBSNAP_CONSISTENCY_BACKUPS` (default 100, a nightly run);
//! `scripts/test.sh` sets the count CI runs. It prints "inconsistent restores: K of N"
//! and fails if K > 0.

mod common;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use common::{restore, stderr, stdout_json, time, Sandbox};
use dbsnap_test_support::bank::{self, Writers};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

const DEFAULT_BACKUPS: usize = 100;
const MODES: [&str; 3] = ["auto", "ftwrl", "backup-stage"];

fn backups_to_take() -> usize {
    match std::env::var("DBSNAP_CONSISTENCY_BACKUPS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("DBSNAP_CONSISTENCY_BACKUPS={v:?} is not a count")),
        Err(_) => DEFAULT_BACKUPS,
    }
}

/// One backup under load, restored and checked; `Err` says what was inconsistent.
fn backup_restore_check(sb: &Sandbox, i: usize, mode: &str) -> Result<String, String> {
    let writers = Writers::start_with_audit(&sb.server.socket, 8);
    std::thread::sleep(Duration::from_millis(200));
    let out = sb.dbsnap(&["backup", "--json", "--lock", mode]);
    std::thread::sleep(Duration::from_millis(200));
    let commits = writers.stop();
    if !out.status.success() {
        return Err(format!("the backup failed: {}", stderr(&out)));
    }
    let manifest = stdout_json(&out);
    let backup = std::path::PathBuf::from(manifest["path"].as_str().unwrap());
    let restored = sb.dir.path().join(format!("restored {i}"));
    let run = sb.dir.path().join(format!("run {i}"));
    let checked = std::panic::catch_unwind(AssertUnwindSafe(|| {
        restore(sb, &backup, &restored, &[]);
        let copy = MariaDb::start_existing(ServerOptions {
            server_id: 2,
            ..ServerOptions::new(&restored, &run)
        });
        let verdict = bank::assert_consistent(
            &copy,
            &commits,
            time(&manifest["lock"]["acquired_at"]),
            time(&manifest["lock"]["released_at"]),
        );
        copy.stop();
        verdict
    }));
    // Keep the disk small: each backup and restore is removed once checked.
    for dir in [&backup, &restored, &run] {
        let _ = std::fs::remove_dir_all(dir);
    }
    match checked {
        Ok(verdict) => Ok(format!(
            "{} (hold {} ms): {verdict:?}",
            manifest["lock"]["mode"], manifest["lock"]["hold_ms"]
        )),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the check panicked".into())),
    }
}

#[test]
fn every_backup_under_load_restores_consistently() {
    let n = backups_to_take();
    eprintln!(
        "consistency tier: {n} backups (DBSNAP_CONSISTENCY_BACKUPS, default {DEFAULT_BACKUPS})"
    );
    // The writers' binlog grows by ~45 MiB per backup here (measured: a 768 MiB
    // filesystem fell below the 5 % floor after 17 backups); the image is sparse.
    let sb = Sandbox::with_fs_size(768 + 64 * n as u64);
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 16);
    let started = Instant::now();
    let mut inconsistent = Vec::new();
    for i in 0..n {
        let mode = MODES[i % MODES.len()];
        let one = Instant::now();
        match backup_restore_check(&sb, i, mode) {
            Ok(what) => eprintln!(
                "backup {}/{n} --lock {mode}: consistent in {:.1} s, {what}",
                i + 1,
                one.elapsed().as_secs_f64()
            ),
            Err(why) => {
                eprintln!("backup {}/{n} --lock {mode}: INCONSISTENT: {why}", i + 1);
                inconsistent.push(format!("backup {} (--lock {mode}): {why}", i + 1));
            }
        }
    }
    let total = started.elapsed().as_secs_f64();
    eprintln!(
        "inconsistent restores: {} of {n} ({:.1} s in all, {:.1} s per backup)",
        inconsistent.len(),
        total,
        total / n.max(1) as f64
    );
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    assert!(
        inconsistent.is_empty(),
        "inconsistent restores: {} of {n}:\n{}",
        inconsistent.len(),
        inconsistent.join("\n")
    );
}
