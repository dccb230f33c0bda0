//! `[hooks]` around every command that takes a snapshot or changes backups, not only
//! `backup`: `on_success` / `on_failure` with `DBSNAP_COMMAND`, and a safety snapshot's
//! `pre_lock` / `post_snapshot`.

mod common;

use std::path::Path;

use common::{stderr, Sandbox};

/// A hook that appends `PHASE COMMAND STATUS code=N` to `log`.
fn recorder(log: &Path) -> String {
    format!(
        "[\"/bin/sh\", \"-c\", \"echo \\\"$DBSNAP_PHASE $DBSNAP_COMMAND $DBSNAP_STATUS code=$DBSNAP_EXIT_CODE\\\" >> '{}'\"]",
        log.display()
    )
}

fn take_lines(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    text.lines().map(String::from).collect()
}

#[test]
fn every_changing_command_runs_its_hooks_with_its_name() {
    let sb = Sandbox::new();
    let log = sb.dir.path().join("hooks.log");
    let hook = recorder(&log);
    let base = std::fs::read_to_string(&sb.config).unwrap();
    let hooks = format!(
        "\n[hooks]\npre_lock = {hook}\npost_snapshot = {hook}\non_success = {hook}\non_failure = {hook}\n"
    );
    sb.write_raw_config(&format!("{base}{hooks}"));

    // prune without [retention] is a configuration error (exit 2).
    let out = sb.dbsnap(&["prune"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(take_lines(&log), ["on_failure prune failed code=2"]);

    let out = sb.dbsnap(&["snapshot", "create", "--label", "pre-upgrade"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        take_lines(&log),
        [
            "pre_lock snapshot-create running code=",
            "post_snapshot snapshot-create running code=",
            "on_success snapshot-create ok code=",
        ]
    );
    let name = std::fs::read_dir(sb.state.join("snapshots"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let out = sb.dbsnap(&["snapshot", "release", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(take_lines(&log), ["on_success snapshot-release ok code="]);

    let out = sb.dbsnap(&["cleanup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(take_lines(&log), ["on_success cleanup ok code="]);

    let out = sb.dbsnap(&["verify", "20261130T020000Z"]);
    assert!(!out.status.success());
    let code = out.status.code().unwrap();
    assert_eq!(
        take_lines(&log),
        [format!("on_failure verify failed code={code}")]
    );

    sb.write_raw_config(&format!("{base}\n[retention]\nkeep_last = 1\n{hooks}"));
    let out = sb.dbsnap(&["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(take_lines(&log), ["on_success prune ok code="]);
    let out = sb.dbsnap(&["prune", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        take_lines(&log).is_empty(),
        "a dry run changes nothing: no hooks"
    );
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}
