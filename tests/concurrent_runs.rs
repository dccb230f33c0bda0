//! Two dbsnap configurations with different state_dirs backing up the same server to
//! the same destination, started in the same second: the run lock covers one state
//! directory only, so the names must not collide, and neither run may release what
//! the other created.

mod common;

use std::process::{Command, Stdio};

use common::{stderr, Sandbox, DBSNAP};
use dbsnap_test_support::bank;

/// `[hooks] pre_lock` that waits until both runs have reached it: both have chosen
/// their names and plans before either takes the lock.
fn barrier_hook(dir: &std::path::Path, me: &str) -> String {
    format!(
        "\n[hooks]\npre_lock = [\"/bin/sh\", \"-c\", \"touch \\\"$0/ready-{me}\\\"; i=0; \
         until [ -e \\\"$0/ready-A\\\" ] && [ -e \\\"$0/ready-B\\\" ] || [ $i -gt 400 ]; \
         do sleep 0.05; i=$((i+1)); done\", {dir:?}]\n"
    )
}

#[test]
fn two_state_dirs_backing_up_one_server_in_the_same_second_both_succeed() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let base = std::fs::read_to_string(&sb.config).unwrap();
    let state_b = sb.dir.path().join("state b");
    let config_b = sb.dir.path().join("b.toml");
    sb.write_raw_config(&(base.clone() + &barrier_hook(sb.dir.path(), "A")));
    std::fs::write(
        &config_b,
        base.replace(
            &format!("state_dir = {:?}", sb.state),
            &format!("state_dir = {state_b:?}"),
        ) + &barrier_hook(sb.dir.path(), "B"),
    )
    .unwrap();

    let start = |config: &std::path::Path| {
        Command::new(DBSNAP)
            .arg("--config")
            .arg(config)
            .args(["backup", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(&sb.config), start(&config_b));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for (which, out) in [("A", &a), ("B", &b)] {
        assert!(out.status.success(), "run {which}: {}", stderr(out));
    }
    let names: Vec<String> = [&a, &b]
        .iter()
        .map(|o| {
            common::stdout_json(o)["snapshot"]["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    println!("snapshots: {names:?}");
    assert_ne!(names[0], names[1]);
    assert_eq!(sb.backups().len(), 2);
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
    let journal_b = std::fs::read_to_string(state_b.join("journal.json")).unwrap();
    assert_eq!(journal_b.trim(), "[]");
}
