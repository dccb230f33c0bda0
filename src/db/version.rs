//! Which server dbsnap talks to: the flavour and version decide which lock modes exist
//! and which statements report coordinates.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Flavor {
    MariaDb,
    MySql,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    pub flavor: Flavor,
    pub version: Version,
    /// `@@version` as the server reported it.
    pub text: String,
}

impl ServerVersion {
    /// Parse `@@version` (`10.11.19-MariaDB-0+deb12u1-log`, `8.4.3`, `8.0.36-28`) with
    /// `@@version_comment` to tell MariaDB from MySQL and Percona Server.
    pub fn parse(version: &str, comment: &str) -> ServerVersion {
        let flavor = if version.contains("MariaDB") || comment.contains("MariaDB") {
            Flavor::MariaDb
        } else {
            Flavor::MySql
        };
        let numbers: Vec<u32> = version
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|n| n.parse().unwrap_or(0))
            .collect();
        let at = |i: usize| numbers.get(i).copied().unwrap_or(0);
        ServerVersion {
            flavor,
            version: Version(at(0), at(1), at(2)),
            text: version.to_string(),
        }
    }

    /// A version recorded without its comment (a manifest's `server.version`): the
    /// flavour comes from the text alone.
    pub fn from_text(version: &str) -> ServerVersion {
        ServerVersion::parse(version, "")
    }

    /// The release a server binary must match to open this server's files:
    /// `10.11 MariaDB` (major.minor and flavour).
    pub fn release(&self) -> String {
        let Version(major, minor, _) = self.version;
        let flavour = match self.flavor {
            Flavor::MariaDb => "MariaDB",
            Flavor::MySql => "MySQL",
        };
        format!("{major}.{minor} {flavour}")
    }

    /// MySQL 8.0.23 renamed `CHANGE MASTER TO` to `CHANGE REPLICATION SOURCE TO`.
    pub fn has_change_replication_source(&self) -> bool {
        self.is(Flavor::MySql, Version(8, 0, 23))
    }

    fn is(&self, flavor: Flavor, at_least: Version) -> bool {
        self.flavor == flavor && self.version >= at_least
    }

    /// `BACKUP STAGE` exists from MariaDB 10.4.1.
    pub fn has_backup_stage(&self) -> bool {
        self.is(Flavor::MariaDb, Version(10, 4, 1))
    }

    /// `LOCK INSTANCE FOR BACKUP` and `performance_schema.log_status` exist from MySQL 8.0.
    pub fn has_lock_instance(&self) -> bool {
        self.is(Flavor::MySql, Version(8, 0, 0))
    }

    /// MySQL 8.2 added `SHOW BINARY LOG STATUS`; 8.4 removed `SHOW MASTER STATUS`.
    pub fn binlog_status_statement(&self) -> &'static str {
        if self.is(Flavor::MySql, Version(8, 2, 0)) {
            "SHOW BINARY LOG STATUS"
        } else {
            "SHOW MASTER STATUS"
        }
    }

    /// `SHOW REPLICA STATUS` from MySQL 8.0.22 and MariaDB 10.5.1; `SHOW SLAVE STATUS` before
    /// (and MySQL 8.4 removed the old form).
    pub fn replica_status_statement(&self) -> &'static str {
        if self.is(Flavor::MySql, Version(8, 0, 22)) || self.is(Flavor::MariaDb, Version(10, 5, 1))
        {
            "SHOW REPLICA STATUS"
        } else {
            "SHOW SLAVE STATUS"
        }
    }

    /// Stopping and starting the replica's applier thread.
    pub fn replica_sql_thread_statements(&self) -> (&'static str, &'static str) {
        if self.is(Flavor::MySql, Version(8, 0, 22)) || self.is(Flavor::MariaDb, Version(10, 5, 1))
        {
            ("STOP REPLICA SQL_THREAD", "START REPLICA SQL_THREAD")
        } else {
            ("STOP SLAVE SQL_THREAD", "START SLAVE SQL_THREAD")
        }
    }
}

/// Stored as the server reported it (`10.11.19-MariaDB-0+deb12u1-log`).
impl Serialize for ServerVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for ServerVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(ServerVersion::from_text(&String::deserialize(d)?))
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Version(a, b, c) = self.version;
        let name = match self.flavor {
            Flavor::MariaDb => "MariaDB",
            Flavor::MySql => "MySQL",
        };
        write!(f, "{name} {a}.{b}.{c}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_version_strings() {
        let m = ServerVersion::parse("10.11.19-MariaDB-0+deb12u1-log", "Debian 12");
        assert_eq!(
            (m.flavor, m.version),
            (Flavor::MariaDb, Version(10, 11, 19))
        );
        assert!(m.has_backup_stage() && !m.has_lock_instance());
        let p = ServerVersion::parse("8.0.36-28", "Percona Server (GPL), Release 28");
        assert_eq!((p.flavor, p.version), (Flavor::MySql, Version(8, 0, 36)));
        assert!(p.has_lock_instance() && !p.has_backup_stage());
        assert_eq!(
            ServerVersion::parse("5.5.5-10.3.39-MariaDB", "").flavor,
            Flavor::MariaDb
        );
    }

    #[test]
    fn statements_follow_the_version() {
        let mysql84 = ServerVersion::parse("8.4.3", "MySQL Community Server - GPL");
        assert_eq!(mysql84.binlog_status_statement(), "SHOW BINARY LOG STATUS");
        assert_eq!(mysql84.replica_status_statement(), "SHOW REPLICA STATUS");
        let mysql80 = ServerVersion::parse("8.0.21", "MySQL Community Server - GPL");
        assert_eq!(mysql80.binlog_status_statement(), "SHOW MASTER STATUS");
        assert_eq!(mysql80.replica_status_statement(), "SHOW SLAVE STATUS");
        let maria104 = ServerVersion::parse("10.4.0-MariaDB", "");
        assert!(!maria104.has_backup_stage());
        assert_eq!(
            maria104.replica_sql_thread_statements().0,
            "STOP SLAVE SQL_THREAD"
        );
        let maria1011 = ServerVersion::parse("10.11.6-MariaDB", "");
        assert_eq!(maria1011.binlog_status_statement(), "SHOW MASTER STATUS");
        assert_eq!(
            maria1011.replica_sql_thread_statements().1,
            "START REPLICA SQL_THREAD"
        );
    }
}
