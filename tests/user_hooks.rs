//! `[hooks]`: user programs around a run, never inside the lock window.

mod common;

use common::{stderr, Sandbox};
use dbsnap_test_support::bank;

fn with_hooks(sb: &Sandbox, hooks: &str) {
    let config = std::fs::read_to_string(&sb.config).unwrap();
    sb.write_raw_config(&format!("{config}\n[hooks]\n{hooks}\n"));
}

/// A hook that appends its phase and environment to `log` with a shell the test chose.
fn recorder(log: &std::path::Path, extra: &str) -> String {
    format!(
        "[\"/bin/sh\", \"-c\", \"echo \\\"$DBSNAP_PHASE $DBSNAP_STATUS name=$DBSNAP_NAME snap=$DBSNAP_SNAPSHOT_PATH backup=$DBSNAP_BACKUP_PATH code=$DBSNAP_EXIT_CODE\\\" >> '{}'; {extra}\"]",
        log.display()
    )
}

#[test]
fn hooks_run_in_order_and_see_the_run() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let log = sb.dir.path().join("hooks.log");
    // post_snapshot proves the snapshot is readable: it finds the InnoDB table file in it.
    let post_snapshot = recorder(
        &log,
        "test -f \\\"$DBSNAP_SNAPSHOT_PATH/bank/accounts.ibd\\\"",
    );
    with_hooks(
        &sb,
        &format!(
            "pre_lock = {}\npost_snapshot = {post_snapshot}\npost_backup = {}\non_failure = {}",
            recorder(&log, ""),
            recorder(&log, ""),
            recorder(&log, "")
        ),
    );
    let out = sb.dbsnap(&["backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("pre_lock running name=2"), "{lines:?}");
    assert!(
        lines[1].starts_with("post_snapshot running") && lines[1].contains("snap=/"),
        "{lines:?}"
    );
    let backup = sb.backups()[0].display().to_string();
    assert!(
        lines[2].starts_with("post_backup ok") && lines[2].contains(&format!("backup={backup}")),
        "{lines:?}"
    );
    assert!(stderr(&out).contains("running the pre_lock hook"));
}

#[test]
fn a_failing_pre_lock_hook_aborts_before_anything_is_locked() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let log = sb.dir.path().join("hooks.log");
    with_hooks(
        &sb,
        &format!(
            "pre_lock = [\"/bin/sh\", \"-c\", \"echo not today >&2; exit 3\"]\non_failure = {}",
            recorder(&log, "")
        ),
    );
    let out = sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(12));
    let err = stderr(&out);
    assert!(
        err.contains("the pre_lock hook failed") && err.contains("not today"),
        "{err}"
    );
    assert!(
        !err.contains("released; writers waited"),
        "the lock was taken: {err}"
    );
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.starts_with("on_failure failed") && log.contains("code=12"),
        "{log}"
    );
}

#[test]
fn a_hanging_post_snapshot_hook_times_out_and_everything_is_released() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    with_hooks(
        &sb,
        "post_snapshot = [\"/bin/sleep\", \"60\"]\ntimeout = \"1s\"",
    );
    let started = std::time::Instant::now();
    let out = sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(12));
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(stderr(&out).contains("killed"), "{}", stderr(&out));
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    assert!(sb.backups().is_empty());
}

#[test]
fn a_relative_hook_program_is_a_config_error() {
    let sb = Sandbox::new();
    with_hooks(&sb, "pre_lock = [\"notify-send\", \"x\"]");
    let out = sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("must be an absolute path"));
}
