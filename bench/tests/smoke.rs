//! CI smoke check: a tiny benchmark runs end to end and writes its three outputs.
//! It asserts nothing about timings (CI machines are shared and noisy), only that every
//! case ran and was recorded. Needs root, like the benchmark itself.

use std::process::Command;

#[test]
fn a_tiny_run_writes_json_table_and_plot() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_dbsnap-bench"))
        .args(["--sizes", "0.05", "--repeats", "1", "--baseline-secs", "1"])
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success(), "dbsnap-bench exited with {status}");

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let runs = json["sizes"][0]["runs"].as_array().unwrap();
    let cases: Vec<&str> = runs.iter().map(|r| r["case"].as_str().unwrap()).collect();
    for case in [
        "dbsnap --lock ftwrl",
        "dbsnap --lock backup-stage",
        "dbsnap --lock none",
        "dbsnap --lock auto",
        "dbsnap --lock auto, pace off",
        "mariabackup --backup",
        "classic FTWRL + snapshot",
        "snapshot only + cp -a + sync",
        "no backup (30 s of the writers alone)",
    ] {
        assert!(cases.contains(&case), "{case} missing from {cases:?}");
    }
    // Each run is measured until the filesystem had freed the snapshots it deleted.
    for run in runs {
        let (end, settled) = (run["end_ms"].as_f64(), run["settled_ms"].as_f64());
        assert!(settled >= end && end.is_some(), "{run}");
        let deletes = run["deletes_snapshot"].as_bool().unwrap();
        assert_eq!(run["after_run"].is_object(), deletes, "{run}");
    }
    assert!(
        json["sizes"][0]["commits"].as_u64().unwrap() > 0,
        "the writers committed nothing"
    );
    let table = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(table.contains("| dbsnap --lock auto |"), "{table}");
    assert!(table.contains("after the run worst ms"), "{table}");
    for plot in ["latency-0.05GB.png", "backup-0.05GB.png"] {
        let png = std::fs::read(out.path().join(plot)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{plot} is not a PNG");
    }
}

#[test]
fn the_oltp_workload_runs_every_case_too() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_dbsnap-bench"))
        .args(["--sizes", "0.05", "--repeats", "1", "--baseline-secs", "1"])
        .args(["--workload", "oltp", "--oltp-rows", "2000"])
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success(), "dbsnap-bench exited with {status}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(json["args"]["workload"], "oltp");
    // One run per case: four lock modes, pace off, mariabackup, the classic script, the
    // bare snapshot with a copy, held and read, and the writers alone.
    assert_eq!(json["sizes"][0]["runs"].as_array().unwrap().len(), 11);
    assert!(json["sizes"][0]["commits"].as_u64().unwrap() > 0);
    let table = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(
        table.contains("| dbsnap --lock auto, pace off |"),
        "{table}"
    );
}
