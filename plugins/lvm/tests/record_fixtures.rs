//! Regenerates the recorded `lvs` output in `tests/fixtures/` that the unit tests parse:
//! `cargo test -p dbsnap-lvm --test record_fixtures -- --ignored` (boots the test guest).

use std::path::Path;

use dbsnap_test_support::guest::{self, Guest};

#[test]
#[ignore = "rewrites tests/fixtures/lvs-*; run on purpose after changing the lvs fields"]
fn record_lvs_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let run = Guest::new("record-lvs")
        .disk("fixtures", 1024)
        .module("dm_snapshot")
        .module("dm_thin_pool")
        .module("xfs")
        .module("ext4")
        .run_this_binary(&["--ignored", "--exact", "in_guest_record"]);
    run.assert_success();
    let mut written = 0;
    for section in run.stdout.split("=== ").skip(1) {
        let (file, body) = section
            .split_once('\n')
            .expect("a section has a file name line");
        // libtest's own lines after the last section are not part of it.
        let body: String = body
            .lines()
            .take_while(|l| *l != "ok" && !l.starts_with("test "))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(dir.join(file.trim()), body).expect("writing a fixture");
        written += 1;
    }
    assert!(written >= 3, "expected at least 3 sections, got {written}");
}

#[test]
#[ignore = "runs inside the TCG guest, started by record_lvs_fixtures"]
fn in_guest_record() {
    guest::require_guest();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/record-lvs.sh");
    let status = std::process::Command::new(script)
        .arg(guest::disk("fixtures"))
        .status()
        .expect("running record-lvs.sh");
    assert!(status.success(), "record-lvs.sh failed: {status}");
}
