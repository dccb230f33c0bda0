//! Every kind of bad input gets a clear error and a distinct exit code, and changes
//! nothing: no snapshot, no partial directory, no journal entry, no lock left held.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{stderr, Sandbox};
use dbsnap_test_support::bank;
use dbsnap_test_support::btrfs::LoopBtrfs;
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

/// Run `dbsnap backup` with `config` and check the exit code, that stderr contains each
/// of `expected`, and that nothing was left behind.
fn expect_failure(sb: &Sandbox, case: &str, config: &str, code: i32, expected: &[&str]) {
    sb.write_raw_config(config);
    let out = sb.dbsnap(&["backup"]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{case}: exit code; stderr: {err}"
    );
    for e in expected {
        assert!(err.contains(e), "{case}: stderr lacks {e:?}: {err}");
    }
    assert!(
        out.stdout.is_empty(),
        "{case}: stdout must stay empty on failure"
    );
    assert!(
        sb.leftovers().is_empty(),
        "{case}: left {:?}",
        sb.leftovers()
    );
    assert!(sb.backups().is_empty(), "{case}: a backup appeared");
}

fn config(sb: &Sandbox, mysql: &str, snapshot: &str, dest: &Path) -> String {
    format!(
        "state_dir = {:?}\n[mysql]\n{mysql}\n[snapshot]\n{snapshot}\n[backup]\ndest = {dest:?}\n",
        sb.state
    )
}

fn write_secret(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn bad_inputs_fail_clearly_and_change_nothing() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    sb.server.sql(
        "CREATE USER 'backup'@'localhost' IDENTIFIED BY 'Right-S3cret';
         GRANT RELOAD, BINLOG MONITOR ON *.* TO 'backup'@'localhost';
         CREATE USER 'weak'@'localhost' IDENTIFIED BY 'Weak-S3cret';
         GRANT SELECT ON *.* TO 'weak'@'localhost';",
    );
    let socket = format!("socket = {:?}", sb.server.socket);
    let root = format!("{socket}\nuser = \"root\"");
    let btrfs = "backend = \"btrfs\"";
    let dir = sb.dir.path();

    expect_failure(
        &sb,
        "unknown key",
        &config(
            &sb,
            &format!("{root}\nlock_wait_timout = \"1s\""),
            btrfs,
            &sb.dest,
        ),
        2,
        &["lock_wait_timout", "line 5"],
    );
    expect_failure(
        &sb,
        "unknown backend",
        &config(&sb, &root, "backend = \"nfs\"", &sb.dest),
        2,
        &["unknown snapshot backend \"nfs\"", "btrfs"],
    );
    expect_failure(
        &sb,
        "malformed TOML",
        &format!("{}\n[mysql\n", config(&sb, &root, btrfs, &sb.dest)),
        2,
        &["dbsnap.toml"],
    );

    let wrong = write_secret(dir, "wrong.pw", "not-the-password\n");
    expect_failure(
        &sb,
        "wrong password",
        &config(
            &sb,
            &format!("{socket}\nuser = \"backup\"\npassword_file = {wrong:?}"),
            btrfs,
            &sb.dest,
        ),
        3,
        &["refused the credentials", "backup"],
    );
    let weak = write_secret(
        dir,
        "weak.cnf",
        "[client]\nuser = weak\npassword = \"Weak-S3cret\"\n",
    );
    expect_failure(
        &sb,
        "missing privileges",
        &config(
            &sb,
            &format!("{socket}\ndefaults_file = {weak:?}"),
            btrfs,
            &sb.dest,
        ),
        4,
        &["RELOAD", "BINLOG MONITOR", "GRANT"],
    );
    expect_failure(
        &sb,
        "server down",
        &config(
            &sb,
            &format!("socket = {:?}\nuser = \"root\"", dir.join("nowhere.sock")),
            btrfs,
            &sb.dest,
        ),
        3,
        &["cannot connect", "nowhere.sock", "Is the server running"],
    );
    expect_failure(
        &sb,
        "destination missing",
        &config(&sb, &root, btrfs, &dir.join("no such dir")),
        6,
        &["no such dir", "mkdir -p"],
    );

    // A read-only destination (root can write anywhere else).
    let ro = dir.join("read only");
    std::fs::create_dir(&ro).unwrap();
    let mount = |args: &[&str]| {
        assert!(std::process::Command::new("mount")
            .args(args)
            .status()
            .unwrap()
            .success())
    };
    mount(&["--bind", ro.to_str().unwrap(), ro.to_str().unwrap()]);
    mount(&["-o", "remount,ro,bind", ro.to_str().unwrap()]);
    expect_failure(
        &sb,
        "destination read-only",
        &config(&sb, &root, btrfs, &ro),
        6,
        &["not writable"],
    );
    mount(&["-o", "remount,rw,bind", ro.to_str().unwrap()]);
    let _ = std::process::Command::new("umount").arg(&ro).status();

    // A destination too small for the data.
    let small = dir.join("small");
    std::fs::create_dir(&small).unwrap();
    mount(&[
        "-t",
        "tmpfs",
        "-o",
        "size=4m",
        "dbsnap-test",
        small.to_str().unwrap(),
    ]);
    expect_failure(
        &sb,
        "destination full",
        &config(&sb, &root, btrfs, &small),
        6,
        &["free", "choose another"],
    );
    let _ = std::process::Command::new("umount").arg(&small).status();

    // The destination inside the datadir would copy the backup into itself.
    let inside = sb.fs.mountpoint.join("mysql").join("backups");
    std::fs::create_dir(&inside).unwrap();
    expect_failure(
        &sb,
        "destination inside datadir",
        &config(&sb, &root, btrfs, &inside),
        6,
        &["inside the server's datadir"],
    );
    std::fs::remove_dir(&inside).unwrap();

    // A snapshot directory on another filesystem.
    expect_failure(
        &sb,
        "snapshot_dir elsewhere",
        &config(
            &sb,
            &root,
            &format!(
                "{btrfs}\n[snapshot.btrfs]\nsnapshot_dir = {:?}",
                dir.join("snaps")
            ),
            &sb.dest,
        ),
        5,
        &["not on the same btrfs filesystem", "snapshot_dir"],
    );
}

#[test]
fn a_datadir_not_on_btrfs_is_refused() {
    let dir = tempfile::Builder::new()
        .prefix("dbsnap ext4 ")
        .tempdir()
        .unwrap();
    let server = MariaDb::start(ServerOptions::new(
        &dir.path().join("data"),
        &dir.path().join("run"),
    ));
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[mysql]\nsocket = {:?}\nuser = \"root\"\n[snapshot]\nbackend = \"btrfs\"\n[backup]\ndest = {dest:?}\n",
            dir.path().join("state"),
            server.socket
        ),
    )
    .unwrap();
    let out = common::dbsnap_with(&config, &["backup"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains(&dir.path().join("data").display().to_string()),
        "names the path: {err}"
    );
    assert!(
        err.contains("cannot be snapshotted by the btrfs backend"),
        "{err}"
    );
    assert!(
        err.contains("Move the database files onto a btrfs subvolume"),
        "says what to do: {err}"
    );
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
}

#[test]
fn hostile_paths_work_and_secrets_stay_secret() {
    let dir = tempfile::Builder::new()
        .prefix("dbsnap $(touch pwned); 'q' ")
        .tempdir()
        .unwrap();
    let fs = LoopBtrfs::new(dir.path(), "fs; rm -rf x", 512);
    let datadir = fs.subvolume("data $(id)");
    let server = MariaDb::start(ServerOptions::new(&datadir, &dir.path().join("run")));
    bank::create(&server);
    server.sql(
        "CREATE USER 'backup'@'localhost' IDENTIFIED BY 'Sup3r-Secret-Pw';
         GRANT RELOAD, BINLOG MONITOR, PROCESS ON *.* TO 'backup'@'localhost';",
    );
    let dest = dir.path().join("dest `uname` && echo");
    std::fs::create_dir(&dest).unwrap();
    let cnf = dir.path().join("client.cnf");
    std::fs::write(
        &cnf,
        "[client]\nuser = backup\npassword = Sup3r-Secret-Pw\n",
    )
    .unwrap();
    std::fs::set_permissions(&cnf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.path().join("dbsnap.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[mysql]\nsocket = {:?}\ndefaults_file = {cnf:?}\n[snapshot]\nbackend = \"btrfs\"\n[backup]\ndest = {dest:?}\n",
            dir.path().join("state $HOME"),
            server.socket
        ),
    )
    .unwrap();
    let out = common::dbsnap_with(&config, &["-vv", "backup", "--json"]);
    assert!(out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("readable by group or others") && err.contains("chmod 600"),
        "warns about the password file: {err}"
    );
    let manifest_path = common::stdout_json(&out)["path"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest =
        std::fs::read_to_string(Path::new(&manifest_path).join("manifest.toml")).unwrap();
    for (what, text) in [
        ("stderr", &err),
        ("stdout", &String::from_utf8_lossy(&out.stdout).into_owned()),
        ("manifest", &manifest),
    ] {
        assert!(
            !text.contains("Sup3r-Secret-Pw"),
            "the password appears in {what}"
        );
    }
    assert!(
        !Path::new("pwned").exists() && !dir.path().join("pwned").exists(),
        "a shell ran"
    );
    let stored = Path::new(&manifest_path)
        .join("files")
        .join(datadir.strip_prefix("/").unwrap());
    assert!(stored.join("bank/accounts.ibd").exists());
}
