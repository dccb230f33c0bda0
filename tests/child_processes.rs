//! Every process dbsnap starts dies with it: a hook or a backend command must not
//! keep reading a snapshot (or holding it busy) after `kill -9 dbsnap`, while
//! `dbsnap cleanup` deletes it.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Sandbox, DBSNAP};
use dbsnap_test_support::bank;

/// Whether `pid` runs (a zombie has ended).
fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn wait_for(path: &Path, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    path.exists()
}

fn start_backup(sb: &Sandbox) -> Child {
    Command::new(DBSNAP)
        .arg("--config")
        .arg(&sb.config)
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Kill dbsnap with SIGKILL once `pid_file` names the child, and return whether that
/// child was gone within 5 s.
fn child_dies_with_dbsnap(mut dbsnap: Child, pid_file: &Path) -> bool {
    assert!(
        wait_for(pid_file, Duration::from_secs(60)),
        "the child never started"
    );
    let pid: i32 = loop {
        if let Ok(pid) = std::fs::read_to_string(pid_file).unwrap().trim().parse() {
            break pid;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(is_running(pid));
    dbsnap.kill().unwrap();
    dbsnap.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_running(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let gone = !is_running(pid);
    if !gone {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    gone
}

#[test]
fn a_post_snapshot_hook_dies_when_dbsnap_is_killed() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let pid_file = sb.dir.path().join("hook.pid");
    let config = std::fs::read_to_string(&sb.config).unwrap();
    sb.write_raw_config(&format!(
        "{config}\n[hooks]\npost_snapshot = [\"/bin/sh\", \"-c\", \"echo $$ > \\\"$0\\\"; exec sleep 60\", {pid_file:?}]\n"
    ));
    let dbsnap = start_backup(&sb);
    assert!(
        child_dies_with_dbsnap(dbsnap, &pid_file),
        "the hook outlived dbsnap"
    );
    assert!(sb.dbsnap(&["cleanup"]).status.success());
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn a_backend_command_dies_when_dbsnap_is_killed() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let plugins = sb.dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let pid_file = sb.dir.path().join("plugin.pid");
    let script = plugins.join("dbsnap-backend-stuck");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$1\" = snapshot ]; then echo $$ > '{}'; exec sleep 60; fi\nexec '{}' \"$@\"\n",
            pid_file.display(),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("plugins/examples/dbsnap-backend-btrfs-sh")
                .display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = std::fs::read_to_string(&sb.config).unwrap().replace(
        "[snapshot]\nbackend = \"btrfs\"",
        &format!("[snapshot]\nbackend = \"exec:stuck\"\n[snapshot.exec]\nplugin_dir = {plugins:?}"),
    );
    sb.write_raw_config(&config.replace("[mysql]\n", "[mysql]\nmax_lock_hold = \"120s\"\n"));
    let dbsnap = start_backup(&sb);
    assert!(
        child_dies_with_dbsnap(dbsnap, &pid_file),
        "the plugin outlived dbsnap"
    );
    assert!(sb.dbsnap(&["cleanup"]).status.success());
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}

#[test]
fn what_a_killed_runs_hook_left_running_is_stopped_by_cleanup() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let pid_file = sb.dir.path().join("reader.pid");
    let config = std::fs::read_to_string(&sb.config).unwrap();
    // A hook whose own child does the work (a `tar` reading the snapshot): the hook
    // dies with dbsnap, its child is orphaned.
    sb.write_raw_config(&format!(
        "{config}\n[hooks]\npost_snapshot = [\"/bin/sh\", \"-c\", \"sleep 60 & echo $! > \\\"$0\\\"; wait\", {pid_file:?}]\n"
    ));
    let mut dbsnap = start_backup(&sb);
    assert!(
        wait_for(&pid_file, Duration::from_secs(60)),
        "the hook never started"
    );
    std::thread::sleep(Duration::from_millis(100));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    dbsnap.kill().unwrap();
    dbsnap.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        is_running(pid),
        "the orphan should still run before cleanup"
    );

    let out = sb.dbsnap(&["cleanup"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(!is_running(pid), "cleanup left the hook's child running");
    assert!(common::stderr(&out).contains("left running by a hook"));
    assert!(sb.leftovers().is_empty(), "{:?}", sb.leftovers());
}
