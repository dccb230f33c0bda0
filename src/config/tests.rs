//! Unit tests of the configuration: defaults, refused settings naming key and line.

use super::*;

const MINIMAL: &str = r#"
[mysql]
socket = "/run/mysqld/mysqld.sock"

[snapshot]
backend = "btrfs"

[backup]
dest = "/srv/backups/db 1"
"#;

#[test]
fn minimal_config_gets_safe_defaults() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/dbsnap"));
    assert_eq!(c.mysql.lock_wait_timeout, Duration::from_secs(5));
    assert_eq!(c.mysql.lock_attempts, 3);
    assert_eq!(c.mysql.max_lock_hold, Duration::from_secs(10));
    assert_eq!(c.mysql.lock, RequestedMode::Auto);
    assert_eq!(c.mysql.long_queries, LongQueryPolicy::Wait);
    assert_eq!(c.backup.unwrap().dest, PathBuf::from("/srv/backups/db 1"));
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = MINIMAL.replace("[snapshot]", "[snapshot]\nbakend = \"zfs\"");
    let err = Config::parse(&text).unwrap_err().to_string();
    assert!(err.contains("bakend"), "{err}");
    assert!(err.contains("line 6"), "{err}");
}

#[test]
fn durations_are_human() {
    let text = MINIMAL.replace(
        "[mysql]",
        "[mysql]\nlock_wait_timeout = \"1500ms\"\nmax_lock_hold = \"2s\"",
    );
    let c = Config::parse(&text).unwrap();
    assert_eq!(c.mysql.lock_wait_timeout, Duration::from_millis(1500));
    assert_eq!(c.mysql.max_lock_hold, Duration::from_secs(2));
}

#[test]
fn lock_modes_and_policies_by_name() {
    let text = MINIMAL.replace(
        "[mysql]",
        "[mysql]\nlock = \"backup-stage\"\nlong_queries = \"kill\"",
    );
    let c = Config::parse(&text).unwrap();
    assert_eq!(c.mysql.lock, RequestedMode::BackupStage);
    assert_eq!(c.mysql.long_queries, LongQueryPolicy::Kill);
    let err = Config::parse(&MINIMAL.replace("[mysql]", "[mysql]\nlock = \"flush\"")).unwrap_err();
    assert!(err.to_string().contains("unknown variant"), "{err}");
}

#[test]
fn relative_paths_are_refused() {
    let text = MINIMAL.replace("/srv/backups/db 1", "backups");
    let err = Config::parse(&text).unwrap_err().to_string();
    assert!(
        err.contains("backup.dest") && err.contains("absolute"),
        "{err}"
    );
}

#[test]
fn the_packaged_example_config_is_valid() {
    let c = Config::parse(include_str!("../../packaging/dbsnap.toml")).unwrap();
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/dbsnap"));
    assert!(c.metrics.is_some() && c.retention.is_some());
}

#[test]
fn metrics_section_is_checked_and_labelled() {
    let with = |section: &str| Config::parse(&format!("{MINIMAL}\n[metrics]\n{section}\n"));
    let c = with("textfile = \"/var/lib/prometheus/node-exporter/dbsnap.prom\"").unwrap();
    assert_eq!(c.metrics_label(), "dbsnap");
    let c = with("textfile = \"/m/db.prom\"\nconfig_label = \"db1\"").unwrap();
    assert_eq!(c.metrics_label(), "db1");
    for (section, key) in [
        ("textfile = \"/m/db.txt\"", "metrics.textfile"),
        ("textfile = \"m.prom\"", "metrics.textfile"),
        (
            "textfile = \"/m/db.prom\"\nconfig_label = \"\"",
            "metrics.config_label",
        ),
        ("textfile = \"/m/db.prom\"\ntextfiel = \"x\"", "textfiel"),
    ] {
        let err = with(section).unwrap_err().to_string();
        assert!(err.contains(key), "{section}: {err}");
    }
}

#[test]
fn config_overrides_option_file() {
    let dir = tempfile::tempdir().unwrap();
    let cnf = dir.path().join("my.cnf");
    std::fs::write(&cnf, "[client]\nuser=a\npassword=p\nsocket=/x.sock\n").unwrap();
    let text = format!(
        "{}\n",
        MINIMAL.replace(
            "socket = \"/run/mysqld/mysqld.sock\"",
            &format!("defaults_file = {:?}\nuser = \"b\"", cnf)
        )
    );
    let c = Config::parse(&text).unwrap().mysql.credentials().unwrap();
    assert_eq!(c.user.as_deref(), Some("b"));
    assert_eq!(c.password.as_deref(), Some("p"));
    assert_eq!(c.socket, Some(PathBuf::from("/x.sock")));
}

fn refused(text: &str) -> String {
    Config::parse(text).unwrap_err().to_string()
}

#[test]
fn settings_that_cannot_work_are_refused_naming_key_and_line() {
    let mysql = |line: &str| MINIMAL.replace("[mysql]", &format!("[mysql]\n{line}"));
    let cases: Vec<(String, &str, &str)> = vec![
        (
            mysql("max_lock_hold = \"0s\""),
            "mysql.max_lock_hold",
            "line 3",
        ),
        (
            mysql("lock_wait_timeout = \"18446744073709551615s\""),
            "mysql.lock_wait_timeout",
            "line 3",
        ),
        (
            mysql("lock_wait_timeout = \"366d\""),
            "mysql.lock_wait_timeout",
            "365d",
        ),
        (
            mysql("max_lock_hold = \"18446744073709551615s\""),
            "mysql.max_lock_hold",
            "line 3",
        ),
        (mysql("host = \"db1\""), "socket and host", "line 3"),
        (
            MINIMAL.replace(
                "backend = \"btrfs\"",
                "backend = \"btrfs\"\nwarn_free_percent = nan",
            ),
            "snapshot.warn_free_percent",
            "line 7",
        ),
        (
            MINIMAL.replace(
                "backend = \"btrfs\"",
                "backend = \"btrfs\"\nwarn_free_percent = inf",
            ),
            "snapshot.warn_free_percent",
            "line 7",
        ),
        (
            MINIMAL.replace(
                "backend = \"btrfs\"",
                "backend = \"btrfs\"\nmin_free_percent = -inf",
            ),
            "snapshot.min_free_percent",
            "line 7",
        ),
        (
            MINIMAL.replace(
                "backend = \"btrfs\"",
                "backend = \"btrfs\"\nmin_free_percent = 150",
            ),
            "snapshot.min_free_percent",
            "0 to below 100",
        ),
        (
            MINIMAL.replace(
                "backend = \"btrfs\"",
                "backend = \"btrfs\"\nwarn_free_percent = 1",
            ),
            "snapshot.warn_free_percent",
            "min_free_percent",
        ),
        (
            MINIMAL.replace("/srv/backups/db 1", "/"),
            "backup.dest",
            "line 9",
        ),
        (
            MINIMAL.replace("/srv/backups/db 1", "/.."),
            "backup.dest",
            "not /",
        ),
        (
            MINIMAL.replace("/srv/backups/db 1", "/srv/../"),
            "backup.dest",
            "\"..\"",
        ),
        (
            MINIMAL.replace("/srv/backups/db 1", "/srv/.dbsnap-snapshots/b"),
            "backup.dest",
            "snapshot directory",
        ),
        (
            MINIMAL.replace("/srv/backups/db 1", "/tank/data/.zfs/snapshot/x"),
            "backup.dest",
            "snapshot directory",
        ),
        (
            format!(
                "{}\n[snapshot.btrfs]\nsnapshot_dir = \"/srv/snaps\"\n",
                MINIMAL.replace("/srv/backups/db 1", "/srv/snaps/backups")
            ),
            "snapshot.btrfs.snapshot_dir",
            "line 9",
        ),
    ];
    for (text, key, detail) in cases {
        let err = refused(&text);
        assert!(err.contains(key), "names {key}: {err}\n{text}");
        assert!(err.contains(detail), "says {detail:?}: {err}\n{text}");
    }
}

#[test]
fn durations_at_the_bounds_are_accepted() {
    let text = MINIMAL.replace(
        "[mysql]",
        "[mysql]\nlock_wait_timeout = \"365d\"\nmax_lock_hold = \"1ms\"",
    );
    let c = Config::parse(&text).unwrap();
    assert_eq!(c.mysql.lock_wait_timeout, MAX_DURATION);
}

#[test]
fn a_restic_destination_needs_its_section_and_accepts_any_repository_string() {
    let restic = MINIMAL.replace("/srv/backups/db 1", "restic:sftp:db2:/srv/restic; rm -rf /");
    let err = Config::parse(&restic).unwrap_err().to_string();
    assert!(err.contains("[backup.restic]"), "{err}");
    let c = Config::parse(&format!(
        "{restic}\n[backup.restic]\npassword_file = \"/etc/dbsnap/pw\"\ntags = [\"nightly\"]\n"
    ))
    .unwrap();
    let b = c.backup.unwrap();
    assert_eq!(
        b.restic_repository().as_deref(),
        Some("sftp:db2:/srv/restic; rm -rf /")
    );
    assert_eq!(b.restic.unwrap().tags, vec!["nightly".to_string()]);
    for (key, bad) in [
        ("tags", "tags = [\"a,b\"]"),
        ("tags", "tags = [\"dbsnap-name=x\"]"),
        (
            "check_read_data_subset",
            "check_read_data_subset = \"lots\"",
        ),
        ("options", "options = [\"--no-lock\"]"),
    ] {
        let text =
            format!("{restic}\n[backup.restic]\npassword_file = \"/etc/dbsnap/pw\"\n{bad}\n");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }
}
