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
