//! Bad input to verify, restore, snapshot and prune: a clear error, the documented exit
//! code, and nothing created. These fail before any server or filesystem is touched.

mod common;

use common::{dbsnap_with, stderr};

#[test]
fn bad_input_to_the_new_commands_fails_clearly() {
    let dir = tempfile::Builder::new()
        .prefix("dbsnap bad input ")
        .tempdir()
        .unwrap();
    let dest = dir.path().join("backups");
    std::fs::create_dir(&dest).unwrap();
    let config = dir.path().join("dbsnap.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[mysql]\nsocket = \"/nonexistent.sock\"\n[snapshot]\nbackend = \"btrfs\"\n\
             [backup]\ndest = {dest:?}\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let target = dir.path().join("new datadir");
    let target = target.to_str().unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["verify", "20260101T000000Z"], 2, "is not a backup"),
        (&["verify", "/etc"], 2, "is not a backup"),
        (
            &["restore", "nope", "--datadir", target],
            2,
            "is not a backup",
        ),
        (
            &["snapshot", "rollback", "dbsnap-nope"],
            2,
            "no kept snapshot",
        ),
        (
            &["snapshot", "release", "dbsnap-x;rm -rf"],
            2,
            "is not allowed",
        ),
        (
            &["snapshot", "create", "--label", "a b"],
            2,
            "label \"a b\" is not allowed",
        ),
        (&["prune"], 2, "[retention]"),
    ];
    for (args, code, expected) in cases {
        let out = dbsnap_with(&config, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {err}");
        assert!(
            err.contains(expected),
            "{args:?}: stderr lacks {expected:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: stdout must stay empty");
    }
    assert!(!std::path::Path::new(target).exists());
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
}

/// A journal entry cleanup refuses to release (here: a btrfs snapshot path that does
/// not carry its set's name) blocks every run until the user has checked it; `cleanup
/// --forget RUN` then drops it without touching the path.
#[test]
fn cleanup_refuses_a_foreign_entry_and_forget_drops_it() {
    let dir = tempfile::Builder::new()
        .prefix("dbsnap forget ")
        .tempdir()
        .unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let precious = dir.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    let config = dir.path().join("dbsnap.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {state:?}\n[mysql]\nsocket = \"/nonexistent.sock\"\n[snapshot]\nbackend = \"btrfs\"\n"
        ),
    )
    .unwrap();
    let journal = serde_json::json!([{"run": "tampered", "resource": {"kind": "snapshot", "set": {
        "backend": "btrfs", "name": "dbsnap-x", "snapshots": [{
            "volume": {"id": "/", "root": "/", "fstype": "btrfs"},
            "id": precious}]}}}]);
    std::fs::write(state.join("journal.json"), journal.to_string()).unwrap();

    let out = dbsnap_with(&config, &["cleanup"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("refusing to delete"), "{err}");
    assert!(
        err.contains("(run tampered)") && err.contains("--forget RUN"),
        "{err}"
    );

    let out = dbsnap_with(&config, &["cleanup", "--forget", "nosuch"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no entries of run \"nosuch\""));

    let out = dbsnap_with(&config, &["cleanup", "--forget", "tampered", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let forgotten = common::stdout_json(&out);
    assert_eq!(forgotten["forgotten"].as_array().unwrap().len(), 1);
    assert!(precious.exists());
    let left = std::fs::read_to_string(state.join("journal.json")).unwrap();
    assert_eq!(left.trim(), "[]");
    assert!(dbsnap_with(&config, &["cleanup"]).status.success());
}
