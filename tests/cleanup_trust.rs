//! `dbsnap cleanup` acts on the journal, but never beyond what dbsnap itself would
//! have created: a hand-edited entry must not get a live server killed or a directory
//! outside the destination deleted. Such entries stay, and are reported.

mod common;

use common::{stderr, stdout_json, Sandbox};

fn write_journal(sb: &Sandbox, entries: serde_json::Value) {
    std::fs::create_dir_all(&sb.state).unwrap();
    std::fs::write(sb.state.join("journal.json"), entries.to_string()).unwrap();
}

fn journal_len(sb: &Sandbox) -> usize {
    let text = std::fs::read_to_string(sb.state.join("journal.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn a_scratch_entry_naming_a_live_datadir_does_not_kill_that_server() {
    let sb = Sandbox::new();
    let datadir = sb.server.options.datadir.clone();
    let run_dir = sb.server.options.run_dir.clone();
    write_journal(
        &sb,
        serde_json::json!([{"run": "tampered", "resource": {
            "kind": "scratch", "dir": datadir, "run_dir": run_dir}}]),
    );
    let out = sb.dbsnap(&["cleanup"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("left alone") && err.contains("--forget RUN"),
        "{err}"
    );
    assert!(!err.contains("stopping the throwaway server"), "{err}");
    assert_eq!(
        sb.server.sql("SELECT 1").trim(),
        "1",
        "the live server died"
    );
    assert!(datadir.join("ibdata1").exists());
    assert_eq!(journal_len(&sb), 1, "the tampered entry must stay");

    let out = sb.dbsnap(&["cleanup", "--forget", "tampered"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sb.server.sql("SELECT 1").trim(), "1");
}

#[test]
fn a_partial_entry_outside_the_destination_is_not_deleted_nor_reported_released() {
    let sb = Sandbox::new();
    let canary = sb.dir.path().join("elsewhere").join("precious.partial");
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::write(canary.join("keep me"), b"canary").unwrap();
    // A partial inside the destination that was never created: nothing to release,
    // and cleanup must say so rather than "released".
    let never = sb.dest.join("20260101T000000Z.partial");
    write_journal(
        &sb,
        serde_json::json!([
            {"run": "tampered", "resource": {"kind": "partial", "dir": canary}},
            {"run": "r2", "resource": {"kind": "partial", "dir": never}},
        ]),
    );
    let out = sb.dbsnap(&["cleanup"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("precious.partial") && err.contains("left alone"),
        "{err}"
    );
    assert!(err.contains("(run tampered)"), "{err}");
    assert_eq!(
        std::fs::read(canary.join("keep me")).unwrap(),
        b"canary",
        "the canary outside the destination was deleted"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("released"));
    assert!(!err.contains("released partial backup"), "{err}");
    assert!(err.contains("it was never created"), "{err}");
    assert_eq!(journal_len(&sb), 1);

    // --forget: one clear message, and a later cleanup has nothing left to do.
    let out = sb.dbsnap(&["cleanup", "--forget", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!stderr(&out).contains("  "), "{}", stderr(&out));
    let out = sb.dbsnap(&["cleanup", "--forget", "tampered", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)["forgotten"].as_array().unwrap().len(), 1);
    let out = sb.dbsnap(&["cleanup"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nothing to clean up"
    );
    assert!(canary.join("keep me").exists());
}
