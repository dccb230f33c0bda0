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
fn a_backup_over_ssh_restored_from_the_remote_host_holds_exactly_what_was_committed() {
    let r = Remote::new("remote dest; $(touch pwned) 'q'\nline");
    bank::create(&r.sb.server);
    let writers = Writers::start(&r.sb.server.socket, 8);
    std::thread::sleep(Duration::from_millis(500));
    let out = r.sb.dbsnap(&["backup", "--json"]);
    std::thread::sleep(Duration::from_millis(300));
    let commits = writers.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = stdout_json(&out);
    let backups = r.backups();
    assert_eq!(backups.len(), 1);
    assert_eq!(
        manifest["path"].as_str().unwrap(),
        backups[0].to_str().unwrap()
    );
    assert_eq!(manifest["transfer"]["method"], "rsync");
    assert!(
        b3sum_check(&backups[0]),
        "the remote copy matches its checksums"
    );
    assert!(r.partials().is_empty());
    assert!(!r.dir.join("pwned").exists() && !Path::new("pwned").exists());
    assert!(r.sb.leftovers().is_empty(), "{:?}", r.sb.leftovers());
    assert!(
        r.sshd.log_text().matches("Accepted publickey").count() == 1,
        "one ssh connection for the whole backup: {}",
        r.sshd.log_text()
    );

    let list = stdout_json(&r.sb.dbsnap(&["list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["status"], "complete");
    let name = manifest["name"].as_str().unwrap();
    let checked = r.sb.dbsnap(&["verify", "--checksums", name, "--json"]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert!(stdout_json(&checked)["files_checked"].as_u64().unwrap() > 10);

    // Restored by name: pulled over ssh into a new datadir, with the usual rewrites.
    let restored = r.sb.dir.path().join("restored");
    let out =
        r.sb.dbsnap(&["restore", name, "--datadir", restored.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let index = std::fs::read_to_string(restored.join("binlog.index")).unwrap();
    assert!(
        index
            .lines()
            .all(|l| l.starts_with(restored.to_str().unwrap())),
        "binlog.index still names the original: {index}"
    );
    let copy = MariaDb::start_existing(ServerOptions {
        server_id: 2,
        ..ServerOptions::new(&restored, &r.sb.dir.path().join("run2"))
    });
    bank::assert_consistent(
        &copy,
        &commits,
        common::time(&manifest["lock"]["acquired_at"]),
        common::time(&manifest["lock"]["released_at"]),
    );
}

#[test]
fn the_second_backup_over_ssh_sends_only_what_changed_and_a_corrupted_copy_fails_its_checksums() {
    let r = Remote::new("dest");
    bank::create(&r.sb.server);
    let first = r.sb.dbsnap(&["backup", "--json"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let first = stdout_json(&first);
    r.sb.server
        .sql("UPDATE bank.accounts SET balance = balance + 1 WHERE id < 10");
    let out = r.sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = stdout_json(&out);
    assert_eq!(second["transfer"]["base"], first["name"]);
    assert_eq!(second["transfer"]["method"], "rsync+link-dest");
    let wire = second["transfer"]["wire_bytes"].as_u64().unwrap();
    let full = first["transfer"]["wire_bytes"].as_u64().unwrap();
    assert!(
        wire * 4 < full,
        "the second backup sent {wire} bytes, the first {full}"
    );
    let backups = r.backups();
    assert!(b3sum_check(&backups[1]));

    // A flipped byte in a stored file: `verify --checksums` names it and exits 11.
    let victim = walkdir::WalkDir::new(backups[1].join("files"))
        .into_iter()
        .flatten()
        .find(|e| e.file_name() == "ibdata1")
        .unwrap()
        .into_path();
    let mut data = std::fs::read(&victim).unwrap();
    data[100] ^= 0xff;
    // Not in place: the file is hard-linked with the first backup's copy.
    std::fs::remove_file(&victim).unwrap();
    std::fs::write(&victim, data).unwrap();
    let name = second["name"].as_str().unwrap();
    let out = r.sb.dbsnap(&["verify", "--checksums", name]);
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    assert!(stderr(&out).contains("ibdata1"), "{}", stderr(&out));
    let local =
        r.sb.dbsnap(&["verify", "--checksums", backups[1].to_str().unwrap()]);
    assert_eq!(local.status.code(), Some(11), "{}", stderr(&local));
    let first_name = first["name"].as_str().unwrap();
    assert!(r
        .sb
        .dbsnap(&["verify", "--checksums", first_name])
        .status
        .success());
}
