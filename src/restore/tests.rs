//! Unit tests of restore: the statements that make a restored copy a replica.

use super::*;
use crate::db::coordinates::ReplicaCoordinates;

fn coords() -> Coordinates {
    Coordinates {
        exact: true,
        binlog_file: Some("binlog.000002".into()),
        binlog_position: Some(1234),
        gtid_binlog_pos: Some("0-1-42".into()),
        gtid_executed: Some("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5".into()),
        ..Default::default()
    }
}

fn source() -> Source {
    Source {
        host: "db1".into(),
        port: 3306,
        user: "re'pl".into(),
    }
}

#[test]
fn mariadb_statements() {
    let r = replication("10.11.6-MariaDB-log", &coords(), &source());
    assert_eq!(
        r.gtid.unwrap(),
        "SET GLOBAL gtid_slave_pos = '0-1-42';\nCHANGE MASTER TO MASTER_HOST = 'db1', \
         MASTER_PORT = 3306, MASTER_USER = 're\\'pl', MASTER_PASSWORD = '<password>', \
         MASTER_USE_GTID = slave_pos;"
    );
    assert!(r.file_position.unwrap().ends_with(
        "MASTER_LOG_FILE = 'binlog.000002', MASTER_LOG_POS = 1234, MASTER_USE_GTID = no;"
    ));
    assert_eq!(r.start, "START SLAVE;");
    assert!(r.from_source.is_none() && r.note.is_none());
}

#[test]
fn new_mysql_uses_replication_source() {
    let r = replication("8.0.36", &coords(), &source());
    let fp = r.file_position.unwrap();
    assert!(
        fp.starts_with("CHANGE REPLICATION SOURCE TO SOURCE_HOST = 'db1'"),
        "{fp}"
    );
    assert!(fp.ends_with("SOURCE_LOG_POS = 1234;"), "{fp}");
    assert!(r.gtid.unwrap().ends_with("SOURCE_AUTO_POSITION = 1;"));
    assert_eq!(r.start, "START REPLICA;");
    let old = replication("5.7.44-log", &coords(), &source());
    assert!(old.file_position.unwrap().starts_with("CHANGE MASTER TO"));
}

#[test]
fn inexact_coordinates_give_only_positions_the_copy_knows() {
    let c = Coordinates {
        exact: false,
        ..coords()
    };
    let r = replication("10.11.6-MariaDB", &c, &source());
    assert!(r.file_position.is_none());
    assert!(r.gtid.unwrap().ends_with("MASTER_USE_GTID = current_pos;"));
    assert!(r.note.is_some());
}

#[test]
fn a_replica_backup_can_join_its_source() {
    let c = Coordinates {
        replica: Some(ReplicaCoordinates {
            source_host: Some("10.0.0.1".into()),
            source_port: Some(3307),
            source_log_file: Some("mysql-bin.000007".into()),
            source_log_pos: Some(99),
            ..Default::default()
        }),
        ..coords()
    };
    let r = replication("10.11.6-MariaDB", &c, &source());
    let s = r.from_source.unwrap();
    assert!(
        s.contains("MASTER_HOST = '10.0.0.1', MASTER_PORT = 3307"),
        "{s}"
    );
    assert!(
        s.contains("MASTER_LOG_FILE = 'mysql-bin.000007', MASTER_LOG_POS = 99"),
        "{s}"
    );
}
