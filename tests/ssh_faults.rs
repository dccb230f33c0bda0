//! What goes wrong with a backup host, each with a clear error naming the host and what
//! to do, its exit code, nothing left on this host, and the remote either untouched or
//! holding a partial the next run resumes. A real sshd per test (tests/support/src/sshd.rs).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::ssh::{b3sum_check, Remote};
use common::{stderr, stdout_json, DBSNAP};

/// Nothing left on this host, and no lock was ever taken (the failure came in
/// preflight: the log never reached the lock window).
fn failed_before_the_lock(r: &Remote, out: &std::process::Output) {
    assert!(r.sb.leftovers().is_empty(), "{:?}", r.sb.leftovers());
    assert!(
        !stderr(out).contains("writers waited"),
        "no lock before the failure: {}",
        stderr(out)
    );
    assert!(r.backups().is_empty() && r.partials().is_empty());
}

/// `dbsnap backup` started in the background, its log kept.
fn start_backup(r: &Remote) -> std::process::Child {
    Command::new(DBSNAP)
        .arg("--config")
        .arg(&r.sb.config)
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A run cut off from `host` mid-copy: exit 14 naming the host, nothing left here, its
/// partial kept there. The name of that partial's backup.
fn cut_off(r: &Remote, out: &std::process::Output, host: &str) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(14), "{err}");
    assert!(err.contains(host), "{err}");
    assert!(r.sb.leftovers().is_empty(), "{:?}", r.sb.leftovers());
    let partials = r.partials();
    assert_eq!(partials.len(), 1, "the cut-off copy stays for the next run");
    partials[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".partial")
        .to_string()
}

/// The next run, unlimited: it resumes the partial and leaves none. Its manifest and log.
fn next_run_resumes(r: &Remote) -> (serde_json::Value, String) {
    r.write_config("");
    let out = r.sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest = stdout_json(&out);
    assert!(
        manifest["transfer"]["resumed_from"].is_string(),
        "{manifest}"
    );
    assert!(r.partials().is_empty());
    (manifest, stderr(&out))
}

#[test]
fn a_closed_port_fails_in_preflight_naming_the_host_with_exit_14() {
    let r = Remote::new("dest");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ssh://root@127.0.0.1:{closed}{}", r.dir.display());
    r.write_config_to(&url, &r.sshd.identity, &r.sshd.known_hosts, "");
    let out = r.sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(14), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach root@127.0.0.1:") && err.contains("sshd"),
        "{err}"
    );
    failed_before_the_lock(&r, &out);
    let check = r.sb.dbsnap(&["check"]);
    assert_eq!(check.status.code(), Some(14), "{}", stderr(&check));
}

#[test]
fn a_wrong_user_or_key_is_refused_with_what_to_check() {
    let r = Remote::new("dest");
    let url = format!(
        "ssh://nosuchuser@127.0.0.1:{}{}",
        r.sshd.port,
        r.dir.display()
    );
    r.write_config_to(&url, &r.sshd.identity, &r.sshd.known_hosts, "");
    let out = r.sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(14), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused dbsnap's key"),
        "{}",
        stderr(&out)
    );
    failed_before_the_lock(&r, &out);

    let other_key = r.sb.dir.path().join("other key");
    dbsnap_test_support::sh(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            other_key.to_str().unwrap(),
        ],
    );
    r.write_config_to(&r.sshd.url(&r.dir), &other_key, &r.sshd.known_hosts, "");
    let out = r.sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(14), "{}", stderr(&out));
    assert!(stderr(&out).contains("authorized_keys"), "{}", stderr(&out));
    failed_before_the_lock(&r, &out);
}

#[test]
fn an_unknown_or_changed_host_key_is_refused_with_the_keyscan_line_to_accept_it() {
    let r = Remote::new("dest");
    let unknown = r.sshd.empty_known_hosts();
    r.write_config_to(&r.sshd.url(&r.dir), &r.sshd.identity, &unknown, "");
    let out = r.sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(14), "{}", stderr(&out));
    let err = stderr(&out);
    let keyscan = format!("ssh-keyscan -p {} 127.0.0.1", r.sshd.port);
    assert!(
        err.contains("is not known") && err.contains(&keyscan),
        "{err}"
    );
    failed_before_the_lock(&r, &out);

    let changed = r.sshd.wrong_known_hosts();
    r.write_config_to(&r.sshd.url(&r.dir), &r.sshd.identity, &changed, "");
    let out = r.sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(14), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("CHANGED") && err.contains("ssh-keygen -R") && err.contains(&keyscan),
        "{err}"
    );
    failed_before_the_lock(&r, &out);
}

#[test]
fn a_missing_or_read_only_remote_directory_fails_in_preflight_with_exit_6() {
    let r = Remote::new("dest");
    let missing = r.dir.join("not there");
    r.write_config_to(
        &r.sshd.url(&missing),
        &r.sshd.identity,
        &r.sshd.known_hosts,
        "",
    );
    let out = r.sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    failed_before_the_lock(&r, &out);

    // Root may write anywhere, except on a read-only mount.
    let ro = r.dir.join("read only");
    std::fs::create_dir(&ro).unwrap();
    let ro_s = ro.to_str().unwrap();
    dbsnap_test_support::sh("mount", &["--bind", ro_s, ro_s]);
    dbsnap_test_support::sh("mount", &["-o", "remount,ro,bind", ro_s]);
    r.write_config_to(&r.sshd.url(&ro), &r.sshd.identity, &r.sshd.known_hosts, "");
    let out = r.sb.dbsnap(&["backup"]);
    dbsnap_test_support::sh("umount", &[ro_s]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("not writable"), "{}", stderr(&out));
    failed_before_the_lock(&r, &out);
}

#[test]
fn a_key_forced_to_rrsync_fails_in_preflight_saying_what_dbsnap_needs_there() {
    let r = Remote::new("dest");
    r.sshd.set_key_options(Some(&format!(
        "command=\"rrsync {}\",restrict",
        r.dir.display()
    )));
    let out = r.sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("forced command"), "{}", stderr(&out));
    failed_before_the_lock(&r, &out);
}

/// The destination directory is on the test machine's own filesystem, not btrfs.
#[test]
fn a_stream_to_a_backup_host_directory_not_on_btrfs_is_refused_before_the_lock_and_auto_takes_rsync(
) {
    let r = Remote::new("dest");
    r.write_config("method = \"btrfs-send\"");
    for command in ["check", "backup"] {
        let out = r.sb.dbsnap(&[command]);
        assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("not on btrfs") && err.contains("127.0.0.1"),
            "{err}"
        );
        failed_before_the_lock(&r, &out);
    }
    r.write_config("method = \"auto\"");
    let out = r.sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)["transfer"]["method"], "rsync");
}

#[test]
fn a_host_starting_with_a_dash_is_refused_before_anything_runs() {
    let r = Remote::new("dest");
    r.write_config_to(
        "ssh://-oProxyCommand=touch${IFS}pwned/srv",
        &r.sshd.identity,
        &r.sshd.known_hosts,
        "",
    );
    let out = r.sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("starts with '-'"), "{}", stderr(&out));
    assert!(!Path::new("pwned").exists());
    assert!(r.sb.leftovers().is_empty(), "{:?}", r.sb.leftovers());
}

/// A small filesystem as the remote destination, and a ballast file that fills it
/// once the copy is under way.
#[test]
fn a_remote_disk_that_fills_up_mid_copy_fails_with_exit_6_and_leaves_a_resumable_partial() {
    let r = Remote::new("dest");
    dbsnap_test_support::bank::create(&r.sb.server);
    let image = r.sb.dir.path().join("small.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(160 << 20)
        .unwrap();
    // No blocks reserved for root: the ballast below takes every free block.
    dbsnap_test_support::sh(
        "mkfs.ext4",
        &["-q", "-F", "-m", "0", image.to_str().unwrap()],
    );
    let small = r.dir.join("small");
    std::fs::create_dir(&small).unwrap();
    dbsnap_test_support::sh(
        "mount",
        &[
            "-o",
            "loop",
            image.to_str().unwrap(),
            small.to_str().unwrap(),
        ],
    );
    r.write_config_to(
        &r.sshd.url(&small),
        &r.sshd.identity,
        &r.sshd.known_hosts,
        "bwlimit = \"8MiB\"",
    );
    let child = start_backup(&r);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let partial = loop {
        let found = std::fs::read_dir(&small)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".partial"));
        if let Some(p) = found {
            break p.path();
        }
        assert!(std::time::Instant::now() < deadline, "no partial appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Everything free now goes to a file beside the backups (rsync writes InnoDB's
    // zeroes as holes: a margin would hold the whole copy).
    let ballast = small.join("ballast");
    let filled = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "status=none"])
        .arg(format!("of={}", ballast.display()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&filled.stderr).contains("No space left"),
        "the ballast filled the disk"
    );
    let out = child.wait_with_output().unwrap();
    std::fs::remove_file(&ballast).unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let partial_kept = partial.is_dir();
    dbsnap_test_support::sh("umount", &[small.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("the destination is full") && err.contains("root@127.0.0.1:"),
        "{err}"
    );
    assert!(r.sb.leftovers().is_empty(), "{:?}", r.sb.leftovers());
    assert!(
        partial_kept,
        "the partial stays on the remote for the next run"
    );
}

#[test]
fn a_connection_killed_mid_copy_fails_with_exit_14_and_the_next_run_resumes_its_partial() {
    let r = Remote::new("dest");
    dbsnap_test_support::bank::create(&r.sb.server);
    r.write_config("bwlimit = \"8MiB\"");
    let child = start_backup(&r);
    r.wait_until_copying();
    assert!(r.sshd.kill_sessions() >= 1);
    let cut_off = cut_off(&r, &child.wait_with_output().unwrap(), "127.0.0.1");

    let (manifest, log) = next_run_resumes(&r);
    assert_eq!(manifest["transfer"]["resumed_from"], cut_off.as_str());
    assert!(log.contains("resuming the partial backup"), "{log}");
    assert!(b3sum_check(&r.backups()[0]));
    let list = stdout_json(&r.sb.dbsnap(&["list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn the_link_to_a_separate_backup_host_taken_down_mid_copy_fails_with_exit_14_and_the_next_run_resumes_once_it_is_back(
) {
    let r = Remote::on_separate_host("dest");
    dbsnap_test_support::bank::create(&r.sb.server);
    r.write_config("bwlimit = \"8MiB\"");
    let child = start_backup(&r);
    r.wait_until_copying();
    // A pulled cable: no reset reaches either side, ssh's keepalives notice.
    r.sshd.set_link(false);
    let out = child.wait_with_output().unwrap();
    r.sshd.set_link(true);
    let cut_off = cut_off(&r, &out, &r.sshd.host);

    let (manifest, _) = next_run_resumes(&r);
    assert_eq!(manifest["transfer"]["resumed_from"], cut_off.as_str());
    assert!(r.b3sum_check_there(&r.backups()[0]));
}

#[test]
fn dbsnap_killed_mid_copy_leaves_nothing_cleanup_cannot_release_and_the_next_run_resumes() {
    let r = Remote::new("dest");
    dbsnap_test_support::bank::create(&r.sb.server);
    r.write_config("bwlimit = \"8MiB\"");
    let mut child = Command::new(DBSNAP)
        .arg("--config")
        .arg(&r.sb.config)
        .arg("backup")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    r.wait_until_copying();
    child.kill().unwrap();
    child.wait().unwrap();
    let journal = std::fs::read_to_string(r.sb.state.join("journal.json")).unwrap();
    assert!(journal.contains("remote_partial"), "{journal}");

    let out = r.sb.dbsnap(&["cleanup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(r.sb.leftovers().is_empty(), "{:?}", r.sb.leftovers());
    // The ssh master connection died with dbsnap.
    let control = r.sb.state.join("ssh").display().to_string();
    let masters: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("ssh ") && c.contains(&control))
        .collect();
    assert!(masters.is_empty(), "ssh left running: {masters:?}");
    assert_eq!(
        r.partials().len(),
        1,
        "the partial stays there to be resumed"
    );

    next_run_resumes(&r);
    assert!(b3sum_check(&r.backups()[0]));
}
