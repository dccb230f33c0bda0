//! Binary-log, GTID and replication coordinates, in the form each server reports them.
//! Parsing works on column name → value maps so that it can be tested against
//! recorded server responses (MySQL cannot run on these machines).

use std::collections::HashMap;

use anyhow::Context;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use serde::{Deserialize, Serialize};

use crate::db::version::{Flavor, ServerVersion};

/// Where the snapshot is in the server's history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coordinates {
    /// True when read while commits were blocked, so they match the snapshot exactly.
    /// Otherwise they were read just after the snapshot; the copy's own crash
    /// recovery tells the exact position.
    pub exact: bool,
    pub binlog_file: Option<String>,
    pub binlog_position: Option<u64>,
    /// MariaDB: `@@gtid_binlog_pos` and `@@gtid_current_pos`.
    pub gtid_binlog_pos: Option<String>,
    pub gtid_current_pos: Option<String>,
    /// MySQL: `@@gtid_executed`.
    pub gtid_executed: Option<String>,
    /// On a replica: the source's coordinates of the last transaction applied.
    pub replica: Option<ReplicaCoordinates>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaCoordinates {
    pub source_host: Option<String>,
    pub source_port: Option<u16>,
    /// The source's binlog file and position up to which this replica has applied.
    pub source_log_file: Option<String>,
    pub source_log_pos: Option<u64>,
    pub relay_log_file: Option<String>,
    pub relay_log_pos: Option<u64>,
    /// MariaDB: `@@gtid_slave_pos`; MySQL: the replica's `Executed_Gtid_Set`.
    pub gtid: Option<String>,
}

/// One result row as column name → value.
pub type Columns = HashMap<String, Option<String>>;

fn columns(row: mysql_async::Row) -> Columns {
    let names: Vec<String> = row
        .columns_ref()
        .iter()
        .map(|c| c.name_str().into_owned())
        .collect();
    let values = row.unwrap();
    names
        .into_iter()
        .zip(values)
        .map(|(n, v)| {
            let s = match v {
                mysql_async::Value::NULL => None,
                mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                other => Some(other.as_sql(true).trim_matches('\'').to_string()),
            };
            (n, s)
        })
        .collect()
}

/// The first of `names` that the row has with a non-empty value.
fn pick(row: &Columns, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| row.get(*n).cloned().flatten())
        .filter(|v| !v.is_empty())
}

/// Parse `SHOW MASTER STATUS` / `SHOW BINARY LOG STATUS`.
pub fn parse_binlog_status(row: &Columns) -> (Option<String>, Option<u64>) {
    (
        pick(row, &["File"]),
        pick(row, &["Position"]).and_then(|p| p.parse().ok()),
    )
}

/// Parse `SHOW REPLICA STATUS` / `SHOW SLAVE STATUS` in any server's column names.
pub fn parse_replica_status(row: &Columns) -> ReplicaCoordinates {
    let num = |names: &[&str]| pick(row, names).and_then(|v| v.parse().ok());
    ReplicaCoordinates {
        source_host: pick(row, &["Source_Host", "Master_Host"]),
        source_port: num(&["Source_Port", "Master_Port"]).map(|p: u64| p as u16),
        source_log_file: pick(row, &["Relay_Source_Log_File", "Relay_Master_Log_File"]),
        source_log_pos: num(&["Exec_Source_Log_Pos", "Exec_Master_Log_Pos"]),
        relay_log_file: pick(row, &["Relay_Log_File"]),
        relay_log_pos: num(&["Relay_Log_Pos"]),
        gtid: pick(row, &["Executed_Gtid_Set"]),
    }
}

/// Parse the `LOCAL` column of MySQL's `performance_schema.log_status`.
pub fn parse_log_status_local(
    json: &str,
) -> anyhow::Result<(Option<String>, Option<u64>, Option<String>)> {
    let v: serde_json::Value =
        serde_json::from_str(json).context("parsing performance_schema.log_status")?;
    Ok((
        v["binary_log_file"].as_str().map(str::to_string),
        v["binary_log_position"].as_u64(),
        v["gtid_executed"].as_str().map(str::to_string),
    ))
}

/// Read every coordinate this server has. `exact` says whether commits are blocked now.
pub async fn read(
    conn: &mut Conn,
    version: &ServerVersion,
    exact: bool,
) -> anyhow::Result<Coordinates> {
    let mut c = Coordinates {
        exact,
        ..Default::default()
    };
    let statement = version.binlog_status_statement();
    let status: Option<mysql_async::Row> = conn
        .query_first(statement)
        .await
        .with_context(|| format!("reading the binary-log position ({statement})"))?;
    if let Some(row) = status {
        (c.binlog_file, c.binlog_position) = parse_binlog_status(&columns(row));
    }
    match version.flavor {
        Flavor::MariaDb => {
            let gtid: Option<(Option<String>, Option<String>)> = conn
                .query_first("SELECT @@global.gtid_binlog_pos, @@global.gtid_current_pos")
                .await
                .context("reading the GTID position")?;
            (c.gtid_binlog_pos, c.gtid_current_pos) = gtid.unwrap_or_default();
        }
        Flavor::MySql => {
            c.gtid_executed = conn
                .query_first::<Option<String>, _>("SELECT @@global.gtid_executed")
                .await
                .context("reading @@gtid_executed")?
                .flatten();
        }
    }
    c.replica = replica_status(conn, version).await?;
    Ok(c)
}

/// The replication state, or `None` when the server is not a replica.
pub async fn replica_status(
    conn: &mut Conn,
    version: &ServerVersion,
) -> anyhow::Result<Option<ReplicaCoordinates>> {
    let statement = version.replica_status_statement();
    let row: Option<mysql_async::Row> = conn
        .query_first(statement)
        .await
        .with_context(|| format!("reading the replication state ({statement})"))?;
    let Some(row) = row else { return Ok(None) };
    let mut replica = parse_replica_status(&columns(row));
    if version.flavor == Flavor::MariaDb {
        replica.gtid = conn
            .query_first::<Option<String>, _>("SELECT @@global.gtid_slave_pos")
            .await
            .context("reading @@gtid_slave_pos")?
            .flatten()
            .filter(|g| !g.is_empty());
    }
    Ok(Some(replica))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, &str)]) -> Columns {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    if v.is_empty() {
                        None
                    } else {
                        Some(v.to_string())
                    },
                )
            })
            .collect()
    }

    #[test]
    fn binlog_status_of_mariadb_and_mysql_84() {
        let maria = row(&[
            ("File", "binlog.000002"),
            ("Position", "1234"),
            ("Binlog_Do_DB", ""),
            ("Binlog_Ignore_DB", ""),
        ]);
        assert_eq!(
            parse_binlog_status(&maria),
            (Some("binlog.000002".into()), Some(1234))
        );
        // MySQL 8.4 `SHOW BINARY LOG STATUS`
        let mysql = row(&[
            ("File", "binlog.000007"),
            ("Position", "157"),
            ("Binlog_Do_DB", ""),
            ("Binlog_Ignore_DB", ""),
            (
                "Executed_Gtid_Set",
                "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-23",
            ),
        ]);
        assert_eq!(
            parse_binlog_status(&mysql),
            (Some("binlog.000007".into()), Some(157))
        );
    }

    #[test]
    fn replica_status_old_and_new_column_names() {
        // MariaDB 10.11 `SHOW REPLICA STATUS` keeps the Master_* names.
        let maria = row(&[
            ("Master_Host", "127.0.0.1"),
            ("Master_Port", "3306"),
            ("Relay_Master_Log_File", "binlog.000003"),
            ("Exec_Master_Log_Pos", "4567"),
            ("Relay_Log_File", "relay.000002"),
            ("Relay_Log_Pos", "890"),
        ]);
        let r = parse_replica_status(&maria);
        assert_eq!(r.source_host.as_deref(), Some("127.0.0.1"));
        assert_eq!(r.source_port, Some(3306));
        assert_eq!(
            (r.source_log_file.as_deref(), r.source_log_pos),
            (Some("binlog.000003"), Some(4567))
        );
        // MySQL 8.0.22+ `SHOW REPLICA STATUS`
        let mysql = row(&[
            ("Source_Host", "db1"),
            ("Source_Port", "3306"),
            ("Relay_Source_Log_File", "binlog.000009"),
            ("Exec_Source_Log_Pos", "42"),
            ("Relay_Log_File", "relay.000004"),
            ("Relay_Log_Pos", "4"),
            ("Executed_Gtid_Set", "uuid:1-9"),
        ]);
        let r = parse_replica_status(&mysql);
        assert_eq!(
            (r.source_log_file.as_deref(), r.source_log_pos),
            (Some("binlog.000009"), Some(42))
        );
        assert_eq!(r.gtid.as_deref(), Some("uuid:1-9"));
    }

    #[test]
    fn log_status_local_json() {
        // MySQL 8.0 `SELECT LOCAL FROM performance_schema.log_status`
        let local = r#"{"gtid_executed": "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5", "binary_log_file": "binlog.000002", "binary_log_position": 4711}"#;
        let (file, pos, gtid) = parse_log_status_local(local).unwrap();
        assert_eq!(file.as_deref(), Some("binlog.000002"));
        assert_eq!(pos, Some(4711));
        assert_eq!(
            gtid.as_deref(),
            Some("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5")
        );
    }
}
