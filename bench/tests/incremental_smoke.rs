//! CI smoke check of dbsnap-bench-incremental: a tiny run of every method writes its
//! JSON and table. Asserts what the run did, never how fast. Needs root and the dbsnap
//! binary built next to the benchmark (`cargo build --workspace`).

use std::process::Command;

#[test]
fn a_tiny_run_measures_every_method() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_dbsnap-bench-incremental"))
        .args(["--sizes", "0.05", "--increments", "1", "--churn-secs", "1"])
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "dbsnap-bench-incremental exited with {status}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("incremental.json")).unwrap())
            .unwrap();
    let methods: Vec<(&str, u64, &str)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["method"].as_str().unwrap(),
                b["index"].as_u64().unwrap(),
                b["transfer_method"].as_str().unwrap(),
            )
        })
        .collect();
    for expected in [
        ("rsync, full copies", 1, "rsync"),
        ("rsync + reflink (btrfs destination)", 1, "rsync+reflink"),
        ("btrfs-send", 0, "btrfs-send"),
        ("btrfs-send", 1, "btrfs-send"),
        ("restic (local repository on the backup disk)", 0, "restic"),
        ("restic (local repository on the backup disk)", 1, "restic"),
    ] {
        assert!(
            methods.contains(&expected),
            "{expected:?} missing from {methods:?}"
        );
    }
    // The plain destination lies on the work directory's filesystem: hard links on
    // ext4, but reflinks if that happens to be btrfs or XFS.
    assert!(methods
        .iter()
        .any(|(m, i, _)| m.starts_with("rsync + link-dest") && *i == 1));
    let table = std::fs::read_to_string(out.path().join("incremental.md")).unwrap();
    assert!(table.contains("| btrfs-send |"), "{table}");
    // The copy engine's incremental into a reflink seed compared with the base's block
    // digests: it read nothing of the seed.
    let reflinked = json
        .as_array()
        .unwrap()
        .iter()
        .find(|b| {
            b["method"] == "copy engine + reflink, block digests (btrfs destination)"
                && b["index"] == 1
        })
        .expect("the copy engine's reflink incremental");
    assert_eq!(reflinked["transfer_method"], "copy+reflink");
    assert_eq!(reflinked["seed_read_mib"], 0.0, "{reflinked}");
    // From a btrfs source it kept the full backup's snapshot as its parent and read
    // only the blocks whose extents moved since.
    let (read, data) = (
        reflinked["source_read_mib"].as_f64().unwrap(),
        reflinked["transferred_mib"].as_f64().unwrap(),
    );
    assert!(read < data / 2.0, "read {read} of {data} MiB: {reflinked}");
    // And what its churn consisted of was measured, file by file.
    let churn: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("churn.json")).unwrap()).unwrap();
    assert!(
        churn
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "redo log" && f["index"] == 1),
        "{churn}"
    );
    assert!(out.path().join("churn.md").exists());
}
