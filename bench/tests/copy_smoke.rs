//! CI smoke check of dbsnap-bench-copy: a tiny run times every case on both
//! destinations and writes its JSON and table. Asserts what the run did, never how
//! fast. Needs root and the dbsnap binary built next to the benchmark
//! (`cargo build --workspace`).

use std::process::Command;

#[test]
fn a_tiny_run_times_cp_and_dbsnap_on_both_destinations() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_dbsnap-bench-copy"))
        .args(["--size-gb", "0.05", "--small-tables", "20", "--rounds", "1"])
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success(), "dbsnap-bench-copy exited with {status}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("copy-speed.json")).unwrap())
            .unwrap();
    let runs: Vec<(&str, &str, u64)> = json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dest"].as_str().unwrap(),
                r["case"].as_str().unwrap(),
                r["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    for dest in ["ext4", "btrfs"] {
        for case in [
            "cp -a + sync",
            "cp -a (page cache only)",
            "dbsnap backup, pace off: dbsnap",
        ] {
            assert!(
                runs.iter()
                    .any(|&(d, c, bytes)| d == dest && c == case && bytes > 50 << 20),
                "{dest} / {case} missing or short in {runs:?}"
            );
        }
    }
    // The small tables are there: two files each, beside the server's own.
    assert!(json["files"].as_u64().unwrap() > 40, "{json}");
    let table = std::fs::read_to_string(out.path().join("copy-speed.md")).unwrap();
    assert!(table.contains("| Btrfs | cp -a + sync |"), "{table}");
}
