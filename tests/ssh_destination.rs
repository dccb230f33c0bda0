//! Backups to another host over ssh: a real OpenSSH server started by the test
//! (tests/support/src/sshd.rs), a real MariaDB on btrfs under write load.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{stderr, stdout_json, Sandbox};
use dbsnap_test_support::bank::{self, Writers};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};
use dbsnap_test_support::sshd::Sshd;

/// A sandbox whose `[backup] dest` is a directory served by a test sshd.
struct Remote {
    sb: Sandbox,
    sshd: Sshd,
    /// The destination directory, as the remote host sees it (the same machine here).
    dir: PathBuf,
}

impl Remote {
    fn new(dir_name: &str) -> Remote {
        let sb = Sandbox::new();
        let sshd = Sshd::start();
        let dir = sb.dir.path().join(dir_name);
        std::fs::create_dir(&dir).unwrap();
        let remote = Remote { sb, sshd, dir };
        remote.write_config("");
        remote
    }

    fn write_config(&self, extra_backup: &str) {
        self.sb.write_raw_config(&format!(
            "state_dir = {state:?}\n\n[mysql]\nsocket = {socket:?}\nuser = \"root\"\n\n\
             [snapshot]\nbackend = \"btrfs\"\n\n[backup]\ndest = {dest:?}\n{extra_backup}\n\n\
             [backup.ssh]\nidentity_file = {key:?}\nknown_hosts = {known:?}\n",
            state = self.sb.state,
            socket = self.sb.server.socket,
            dest = self.sshd.url(&self.dir),
            key = self.sshd.identity,
            known = self.sshd.known_hosts,
        ));
    }

    fn backups(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("manifest.toml").exists())
            .collect();
        v.sort();
        v
    }

    fn partials(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".partial"))
            .collect()
    }
}

fn b3sum_check(backup: &Path) -> bool {
    std::process::Command::new("b3sum")
        .args(["--check", "--quiet", "checksums"])
        .current_dir(backup)
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_backup_over_ssh_lands_on_the_remote_host_with_checksums_and_the_next_one_is_incremental() {
    let r = Remote::new("remote dest; $(touch pwned) 'q'\nline");
    bank::create(&r.sb.server);
    let writers = Writers::start(&r.sb.server.socket, 4);
    std::thread::sleep(Duration::from_millis(300));
    let out = r.sb.dbsnap(&["backup", "--json"]);
    let commits = writers.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = stdout_json(&out);
    let backups = r.backups();
    assert_eq!(backups.len(), 1);
    assert_eq!(
        manifest["path"].as_str().unwrap(),
        backups[0].to_str().unwrap()
    );
    assert!(
        b3sum_check(&backups[0]),
        "the remote copy matches its checksums"
    );
    assert!(r.partials().is_empty());
    assert!(!r.dir.join("pwned").exists() && !Path::new("pwned").exists());
    assert!(r.sb.leftovers().is_empty(), "{:?}", r.sb.leftovers());
    let _ = commits;

    let list = stdout_json(&r.sb.dbsnap(&["list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["status"], "complete");

    r.sb.server
        .sql("UPDATE bank.accounts SET balance = balance + 1 WHERE id < 10");
    let out = r.sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = stdout_json(&out);
    assert_eq!(second["transfer"]["base"], manifest["name"]);
    let wire = second["transfer"]["wire_bytes"].as_u64().unwrap();
    let full = manifest["transfer"]["wire_bytes"].as_u64().unwrap();
    assert!(
        wire < full,
        "the second backup sent {wire} bytes, the first {full}"
    );
    assert!(b3sum_check(&r.backups()[1]));
    let _ = MariaDb::start_existing;
    let _ = ServerOptions::new;
}
