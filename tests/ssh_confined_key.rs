//! A key confined on the backup host by `dbsnap ssh-confine --root DIR` as its forced
//! command: everything dbsnap does works through it, and a stolen copy of it runs
//! nothing else and reaches nothing outside DIR. A real sshd (tests/support/src/sshd.rs)
//! whose authorized_keys line is the README's.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::ssh::{b3sum_check, Remote};
use common::{stderr, stdout_json, DBSNAP};
use dbsnap_test_support::bank::{self, Writers};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

const REFUSED: &str = "dbsnap ssh-confine refused";

/// The README's line: only from this host, no pty or forwarding, the forced command.
fn confine(r: &Remote) {
    r.sshd.set_key_options(Some(&format!(
        "restrict,from=\"127.0.0.1\",command=\"{} ssh-confine --root {}\"",
        quoted(DBSNAP),
        quoted(&r.dir.display().to_string())
    )));
}

fn no_refusal(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
    assert!(!stderr(out).contains(REFUSED), "{}", stderr(out));
}

#[test]
fn through_the_confined_key_backups_list_verify_restore_and_prune_work_as_with_a_plain_one() {
    let r = Remote::new("dest");
    confine(&r);
    bank::create(&r.sb.server);
    let first = r.sb.dbsnap(&["backup", "--json"]);
    no_refusal(&first);
    let first = stdout_json(&first);

    let writers = Writers::start(&r.sb.server.socket, 4);
    std::thread::sleep(Duration::from_millis(300));
    let out = r.sb.dbsnap(&["backup", "--json"]);
    std::thread::sleep(Duration::from_millis(200));
    let commits = writers.stop();
    no_refusal(&out);
    let second = stdout_json(&out);
    assert_eq!(second["transfer"]["base"], first["name"]);
    let backups = r.backups();
    assert_eq!(backups.len(), 2);
    assert!(b3sum_check(&backups[1]));

    let list = r.sb.dbsnap(&["list", "--json"]);
    no_refusal(&list);
    assert_eq!(stdout_json(&list).as_array().unwrap().len(), 2);
    let name = second["name"].as_str().unwrap();
    let checked = r.sb.dbsnap(&["verify", "--checksums", name, "--json"]);
    no_refusal(&checked);
    assert!(stdout_json(&checked)["files_checked"].as_u64().unwrap() > 10);
    // The full verification pulls the backup and records its verdict there.
    let verified = r.sb.dbsnap(&["verify", name]);
    no_refusal(&verified);

    let restored = r.sb.dir.path().join("restored");
    let out =
        r.sb.dbsnap(&["restore", name, "--datadir", restored.to_str().unwrap()]);
    no_refusal(&out);
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

    r.write_config("\n[retention]\nkeep_last = 1\n");
    let out = r.sb.dbsnap(&["prune"]);
    no_refusal(&out);
    assert_eq!(r.backups(), vec![backups[1].clone()]);
    assert!(r.partials().is_empty());
    assert!(r.sb.leftovers().is_empty(), "{:?}", r.sb.leftovers());
}

/// `arg` as one word for the remote shell line (single quotes).
fn quoted(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// Every entry below `dir`, for "nothing changed there".
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .map(|e| e.into_path())
        .collect();
    v.sort();
    v
}

/// rsync through the confined key, with `args` before its two ends.
fn rsync(r: &Remote, args: &[&str], from: &str, to: &str) -> Output {
    let shell = std::iter::once("ssh".to_string())
        .chain(r.sshd.client_args())
        .collect::<Vec<_>>()
        .join(" ");
    Command::new("rsync")
        .args(["-a", "-e", &shell])
        .args(args)
        .args([from, to])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn through_the_confined_key_other_commands_paths_outside_and_rsync_options_writing_outside_are_refused_and_nothing_runs(
) {
    let r = Remote::new("dest");
    let outside = r.sb.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "not for the key").unwrap();
    std::os::unix::fs::symlink(&outside, r.dir.join("escape")).unwrap();
    std::fs::create_dir(r.dir.join("backup")).unwrap();
    let canary = r.sb.dir.path().join("canary");
    let source = r.sb.dir.path().join("source");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("file"), "data").unwrap();
    confine(&r);
    let before = (tree(&outside), tree(&r.dir));

    let dest = r.dir.display().to_string();
    let out_s = outside.display().to_string();
    let canary_s = quoted(&canary.display().to_string());
    for line in [
        "id".to_string(),
        format!("touch {canary_s}"),
        format!("sh -c {}", quoted(&format!("touch {canary_s}"))),
        format!("sh -c 'touch {canary_s}' sh {}", quoted(&dest)),
        format!("rm -rf -- {}", quoted(&out_s)),
        format!("rm -rf -- {}", quoted(&format!("{dest}/../outside"))),
        format!("rm -rf -- {}", quoted(&format!("{dest}/escape/secret"))),
        format!("rm -rf -- {}", quoted(&dest)),
        format!("rm -rf -- {}", quoted(&format!("{dest}/"))),
        format!(
            "mv -T -- {} {}",
            quoted(&format!("{dest}/backup")),
            quoted(&format!("{out_s}/stolen"))
        ),
        format!(
            "cp -a --reflink=always -- {} {}",
            quoted(&format!("{out_s}/secret")),
            quoted(&format!("{dest}/backup/secret"))
        ),
        format!("du -s -b -- {}", quoted("/etc")),
        format!(
            "df -B1 --output=avail -- {}; touch {canary_s}",
            quoted(&dest)
        ),
        format!("rsync --server -e.LsfxCIvu . {}", quoted(&out_s)),
    ] {
        let out = r.sshd.ssh(&line);
        assert_eq!(out.status.code(), Some(126), "{line}: {}", stderr(&out));
        assert!(stderr(&out).contains(REFUSED), "{line}: {}", stderr(&out));
    }

    let src = format!("{}/", source.display());
    let host = format!("{}@{}", r.sshd.user, r.sshd.host);
    let pulled = r.sb.dir.path().join("pulled");
    let log_file = format!("--remote-option=--log-file={out_s}/log");
    for (args, from, to) in [
        (
            vec!["--secluded-args"],
            src.clone(),
            format!("{host}:{out_s}/"),
        ),
        (
            vec!["--secluded-args"],
            src.clone(),
            format!("{host}:{dest}/escape/"),
        ),
        (
            vec!["--secluded-args"],
            src.clone(),
            format!("{host}:{dest}/../outside/"),
        ),
        (
            vec!["--secluded-args", &log_file],
            src.clone(),
            format!("{host}:{dest}/backup/"),
        ),
        (
            vec!["--secluded-args", &format!("--temp-dir={out_s}")],
            src.clone(),
            format!("{host}:{dest}/backup/"),
        ),
        (
            vec![
                "--secluded-args",
                "--backup",
                &format!("--backup-dir={out_s}"),
            ],
            src.clone(),
            format!("{host}:{dest}/backup/"),
        ),
        (
            vec!["--secluded-args", &format!("--link-dest={out_s}")],
            src.clone(),
            format!("{host}:{dest}/backup/"),
        ),
        (vec![], src.clone(), format!("{host}:{dest}/backup/")),
        (
            vec!["--secluded-args"],
            format!("{host}:{dest}/escape/"),
            format!("{}/", pulled.display()),
        ),
    ] {
        let out = rsync(&r, &args, &from, &to);
        assert!(!out.status.success(), "{args:?} {from} {to}");
        assert!(
            stderr(&out).contains(REFUSED),
            "{args:?} {from} {to}: {}",
            stderr(&out)
        );
    }
    assert!(!canary.exists(), "a refused command ran");
    assert!(!pulled.join("secret").exists());
    assert_eq!((tree(&outside), tree(&r.dir)), before, "something changed");

    // The same key still does what dbsnap asks of it.
    let ok = rsync(
        &r,
        &["--secluded-args"],
        &src,
        &format!("{host}:{dest}/backup/"),
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(r.dir.join("backup/file").exists());
}

#[test]
fn a_destination_outside_the_confined_directory_fails_in_preflight_naming_the_refusal() {
    let r = Remote::new("dest");
    let elsewhere = r.sb.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    confine(&r);
    r.write_config_to(
        &r.sshd.url(&elsewhere),
        &r.sshd.identity,
        &r.sshd.known_hosts,
        "",
    );
    let out = r.sb.dbsnap(&["backup"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(REFUSED) && err.contains("is outside"), "{err}");
    assert!(r.sb.leftovers().is_empty(), "{:?}", r.sb.leftovers());
    assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
}
