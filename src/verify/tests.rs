//! Unit tests of verification: version parsing, identifiers, the binlog and GTID verdicts.

use super::*;

#[test]
fn versions_parse_and_compare_by_release() {
    assert_eq!(
        parse_version(
            "mariadbd  Ver 10.11.6-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian 12)\n"
        )
        .as_deref(),
        Some("10.11.6-MariaDB-0+deb12u1")
    );
    let release = |v: &str| ServerVersion::from_text(v).release();
    assert_eq!(release("10.11.6-MariaDB-0+deb12u1-log"), "10.11 MariaDB");
    assert_eq!(release("8.0.36"), "8.0 MySQL");
    assert_ne!(release("10.6.1-MariaDB"), release("10.11.6-MariaDB"));
}

#[test]
fn identifiers_are_quoted() {
    assert_eq!(quote_ident("a`b c"), "`a``b c`");
}

fn empty_verification() -> Verification {
    Verification {
        verdict: Verdict::Failed,
        verified_at: Utc::now(),
        server_binary: PathBuf::from("/usr/sbin/mysqld"),
        server_version: "8.0.36".into(),
        copy_ms: 0,
        recovery_ms: 0,
        check_ms: 0,
        tables_checked: 0,
        recovered_gtid_binlog_pos: None,
        recovered_gtid_executed: None,
        problems: Vec::new(),
        warnings: Vec::new(),
    }
}

fn exact(exact: bool) -> Coordinates {
    Coordinates {
        exact,
        ..Coordinates::default()
    }
}

#[test]
fn an_exact_binlog_position_must_match_the_copy_to_the_byte() {
    let mut v = empty_verification();
    binlog_verdict(
        "binlog.000002",
        1234,
        1234,
        &exact(true),
        "backup-stage",
        &mut v,
    );
    assert!(v.problems.is_empty() && v.warnings.is_empty());
    // A tampered manifest (binlog_position = 4) with exact coordinates.
    binlog_verdict(
        "binlog.000002",
        1234,
        4,
        &exact(true),
        "backup-stage",
        &mut v,
    );
    assert_eq!(v.problems.len(), 1, "{v:?}");
    assert!(v.problems[0].contains("position 4"), "{v:?}");
    binlog_verdict("binlog.000002", 1234, 9999, &exact(true), "ftwrl", &mut v);
    assert_eq!(v.problems.len(), 2, "{v:?}");
    // Read after the snapshot: either side is only worth a warning.
    let mut v = empty_verification();
    binlog_verdict("binlog.000002", 1234, 4, &exact(false), "none", &mut v);
    binlog_verdict("binlog.000002", 1234, 9999, &exact(false), "none", &mut v);
    assert!(v.problems.is_empty());
    assert_eq!(v.warnings.len(), 2);
}

/// `SELECT @@global.gtid_executed` on a MySQL 8.0 server recovered from the copy
/// (recorded response; MySQL prints long sets over several lines).
#[test]
fn mysql_gtid_executed_is_compared_with_the_manifest() {
    let recorded = "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-77,\n\
                    4E11FA47-71CA-11E1-9E33-C80AA9429562:1-5";
    let same = "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-77,4E11FA47-71CA-11E1-9E33-C80AA9429562:1-5";
    let mut v = empty_verification();
    gtid_verdict(
        "gtid_executed",
        Some(same),
        Some(recorded),
        &exact(true),
        "ftwrl",
        &mut v,
    );
    assert!(v.problems.is_empty() && v.warnings.is_empty(), "{v:?}");
    let behind = "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-70";
    gtid_verdict(
        "gtid_executed",
        Some(same),
        Some(behind),
        &exact(true),
        "ftwrl",
        &mut v,
    );
    assert_eq!(v.problems.len(), 1);
    assert!(v.problems[0].contains("gtid_executed"), "{v:?}");
    gtid_verdict(
        "gtid_executed",
        Some(same),
        None,
        &exact(true),
        "ftwrl",
        &mut v,
    );
    assert!(v.problems[1].contains("(none)"), "{v:?}");
    let mut v = empty_verification();
    gtid_verdict(
        "gtid_executed",
        Some(same),
        Some(behind),
        &exact(false),
        "instance",
        &mut v,
    );
    assert!(v.problems.is_empty() && v.warnings.len() == 1, "{v:?}");
    // Nothing recorded (no GTIDs on that server): nothing to compare.
    gtid_verdict(
        "gtid_executed",
        Some(""),
        Some(behind),
        &exact(true),
        "ftwrl",
        &mut v,
    );
    assert_eq!(v.warnings.len(), 1);
}
