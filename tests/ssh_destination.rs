//! Backups to another host over ssh: a real OpenSSH server started by the test
//! (tests/support/src/sshd.rs), a real MariaDB on btrfs under write load.

mod common;

use std::path::Path;
use std::time::Duration;

use common::ssh::{b3sum_check, Remote};
use common::{stderr, stdout_json};
use dbsnap_test_support::bank::{self, Writers};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

#[test]
fn a_backup_over_ssh_verified_and_restored_from_the_remote_host_holds_exactly_what_was_committed() {
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

    // The full verification pulls the backup to a scratch directory and records the
    // verdict in the remote manifest.
    let verified = r.sb.dbsnap(&["verify", name]);
    assert!(verified.status.success(), "{}", stderr(&verified));
    let on_remote = std::fs::read_to_string(backups[0].join("manifest.toml")).unwrap();
    assert!(on_remote.contains("verdict = \"passed\""), "{on_remote}");
    let list = stdout_json(&r.sb.dbsnap(&["list", "--json"]));
    assert_eq!(list[0]["status"], "verified");
    assert!(r.sb.leftovers().is_empty(), "{:?}", r.sb.leftovers());
    let state: Vec<String> = std::fs::read_dir(&r.sb.state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".dbsnap-verify"))
        .collect();
    assert!(state.is_empty(), "scratch copies left: {state:?}");

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
fn with_the_restricted_key_an_incremental_sends_what_changed_a_corrupted_file_is_named_and_prune_removes_over_ssh(
) {
    let r = Remote::new("dest");
    // The README's restricted key line: no pty, no forwarding, only from this host.
    r.sshd.set_key_options(Some("restrict,from=\"127.0.0.1\""));
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

    // prune removes over ssh what its policy drops, and nothing else.
    r.write_config("\n[retention]\nkeep_last = 1\n");
    let out = r.sb.dbsnap(&["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(r.backups(), vec![backups[1].clone()]);
    assert!(r.partials().is_empty());
    assert!(r.sb.leftovers().is_empty(), "{:?}", r.sb.leftovers());
}

#[test]
fn a_backup_host_in_its_own_network_and_mount_namespace_gets_full_and_incremental_backups_over_the_link_and_restores_from_there(
) {
    let r = Remote::on_separate_host("dest");
    let seen_here = r.sshd.remote_dir().unwrap().to_path_buf();
    bank::create(&r.sb.server);
    let before = r.sshd.link_bytes();
    let out = r.sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = stdout_json(&out);
    let crossed = r.sshd.link_bytes() - before;
    let wire = first["transfer"]["wire_bytes"].as_u64().unwrap();
    assert!(
        wire > 1 << 20 && crossed >= wire,
        "what rsync sent ({wire} bytes) crossed the link ({crossed} bytes)"
    );
    let backups = r.backups();
    assert_eq!(backups.len(), 1);
    assert!(r.b3sum_check_there(&backups[0]));

    let writers = Writers::start(&r.sb.server.socket, 4);
    std::thread::sleep(Duration::from_millis(300));
    let out = r.sb.dbsnap(&["backup", "--json"]);
    std::thread::sleep(Duration::from_millis(200));
    let commits = writers.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    let second = stdout_json(&out);
    assert_eq!(second["transfer"]["base"], first["name"]);
    assert_eq!(second["transfer"]["method"], "rsync+link-dest");
    let wire2 = second["transfer"]["wire_bytes"].as_u64().unwrap();
    assert!(
        wire2 < wire,
        "the incremental sent {wire2} bytes, the full {wire}"
    );
    let backups = r.backups();
    assert_eq!(backups.len(), 2);
    assert!(r.b3sum_check_there(&backups[1]));
    let list = stdout_json(&r.sb.dbsnap(&["list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");

    let name = second["name"].as_str().unwrap();
    let restored = r.sb.dir.path().join("restored");
    let out =
        r.sb.dbsnap(&["restore", name, "--datadir", restored.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let copy = MariaDb::start_existing(ServerOptions {
        server_id: 2,
        ..ServerOptions::new(&restored, &r.sb.dir.path().join("run2"))
    });
    bank::assert_consistent(
        &copy,
        &commits,
        common::time(&second["lock"]["acquired_at"]),
        common::time(&second["lock"]["released_at"]),
    );
    let here: Vec<_> = std::fs::read_dir(&seen_here).unwrap().flatten().collect();
    assert!(
        here.is_empty(),
        "the backups are on the other host only, not on this one's filesystem: {here:?}"
    );
    assert!(r.sb.leftovers().is_empty(), "{:?}", r.sb.leftovers());
}
