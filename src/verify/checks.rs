//! What a verification checks on the recovered copy: `CHECK TABLE` of every table,
//! the copied binlog against the recorded position, the recovered GTID state.

use super::*;

/// The copied binlog named in the manifest must end exactly at the recorded position
/// when the coordinates are exact (read while commits were blocked, so nothing was
/// written after them); otherwise it may end before it or continue past it.
pub(crate) fn check_binlog(manifest: &Manifest, moves: &Moves, v: &mut Verification) {
    let (Some(base), Some(file), Some(position)) = (
        &manifest.server.binlog_basename,
        &manifest.coordinates.binlog_file,
        manifest.coordinates.binlog_position,
    ) else {
        return;
    };
    let Some(path) = base.parent().map(|d| d.join(file)) else {
        return;
    };
    let copied = moves.relocate(&path).unwrap_or(path);
    match std::fs::metadata(&copied) {
        Ok(m) => binlog_verdict(
            file,
            m.len(),
            position,
            &manifest.coordinates,
            &manifest.lock.mode.to_string(),
            v,
        ),
        Err(e) => v.problems.push(format!(
            "the binary log {file} named in the manifest is not in the backup ({e})"
        )),
    }
}

/// [`check_binlog`]'s judgement of the copied binlog's `length`.
pub(crate) fn binlog_verdict(
    file: &str,
    length: u64,
    position: u64,
    coordinates: &Coordinates,
    mode: &str,
    v: &mut Verification,
) {
    let exact = coordinates.exact;
    match (length.cmp(&position), exact) {
        (std::cmp::Ordering::Equal, _) => {}
        (std::cmp::Ordering::Less, false) => v.warnings.push(format!(
            "the binary log {file} in the backup ends at {length} before the recorded position \
             {position}; expected: the coordinates were read after the snapshot ({mode} lock)"
        )),
        (std::cmp::Ordering::Greater, false) => v.warnings.push(format!(
            "the binary log {file} in the backup continues past the recorded position \
             ({length} > {position} bytes; the coordinates were read after the snapshot, {mode} lock)"
        )),
        (std::cmp::Ordering::Less, true) => v.problems.push(format!(
            "the binary log {file} in the backup is {length} bytes long but the manifest records \
             position {position}: the copy lost the end of the binary log"
        )),
        (std::cmp::Ordering::Greater, true) => v.problems.push(format!(
            "the binary log {file} in the backup is {length} bytes long but the manifest records \
             position {position}, read while commits were blocked ({mode} lock): the copy and \
             its recorded coordinates disagree"
        )),
    }
}

/// `CHECK TABLE` every base table; any error or non-OK status is a problem.
pub(crate) async fn check_tables(conn: &mut Conn, v: &mut Verification) -> anyhow::Result<()> {
    let tables: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' \
             AND TABLE_SCHEMA NOT IN ('information_schema', 'performance_schema') \
             ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .await?;
    for (schema, table) in tables {
        let quoted = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
        let rows: Vec<(String, String, String, String)> = conn
            .query(format!("CHECK TABLE {quoted}"))
            .await
            .with_context(|| format!("CHECK TABLE {quoted}"))?;
        v.tables_checked += 1;
        for (_, _, kind, text) in rows {
            let bad = kind.eq_ignore_ascii_case("error")
                || (kind.eq_ignore_ascii_case("status") && !text.eq_ignore_ascii_case("OK"));
            if bad {
                v.problems
                    .push(format!("CHECK TABLE {quoted}: {kind}: {text}"));
            } else if kind.eq_ignore_ascii_case("warning") {
                v.warnings
                    .push(format!("CHECK TABLE {quoted}: {kind}: {text}"));
            }
        }
    }
    Ok(())
}

/// After recovery the server's GTID state must be the one recorded under the lock:
/// MariaDB's `@@gtid_binlog_pos`, MySQL's `@@gtid_executed`. Coordinates read after the
/// snapshot may be ahead; then the recovered one is the truth.
pub(crate) async fn compare_gtid(conn: &mut Conn, manifest: &Manifest, v: &mut Verification) {
    let version = &manifest.server.version;
    let (variable, expected) = match version.flavor {
        Flavor::MariaDb => ("gtid_binlog_pos", &manifest.coordinates.gtid_binlog_pos),
        Flavor::MySql => ("gtid_executed", &manifest.coordinates.gtid_executed),
    };
    let recovered = conn
        .query_first::<Option<String>, _>(format!("SELECT @@global.{variable}"))
        .await;
    let recovered = match recovered {
        Ok(value) => value.flatten(),
        Err(e) => {
            v.problems
                .push(format!("cannot read @@{variable} after recovery: {e}"));
            return;
        }
    };
    match version.flavor {
        Flavor::MariaDb => v.recovered_gtid_binlog_pos = recovered.clone(),
        Flavor::MySql => v.recovered_gtid_executed = recovered.clone(),
    }
    let mode = manifest.lock.mode.to_string();
    let (coordinates, mode) = (&manifest.coordinates, mode.as_str());
    gtid_verdict(
        variable,
        expected.as_deref(),
        recovered.as_deref(),
        coordinates,
        mode,
        v,
    );
}

/// [`compare_gtid`]'s judgement. GTID sets are compared without white space (MySQL
/// breaks long sets over lines).
pub(crate) fn gtid_verdict(
    variable: &str,
    expected: Option<&str>,
    recovered: Option<&str>,
    coordinates: &Coordinates,
    mode: &str,
    v: &mut Verification,
) {
    let squeeze = |g: &str| g.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let Some(expected) = expected.map(squeeze).filter(|g| !g.is_empty()) else {
        return;
    };
    let recovered = recovered.map(squeeze).unwrap_or_default();
    if recovered == expected {
        return;
    }
    let shown = match recovered.is_empty() {
        true => "(none)".to_string(),
        false => recovered,
    };
    if coordinates.exact {
        v.problems.push(format!(
            "crash recovery ended at {variable} {shown} but the manifest records {expected}: the \
             copy and its recorded coordinates disagree"
        ));
    } else {
        v.warnings.push(format!(
            "crash recovery ended at {variable} {shown}; the manifest's {expected} was read after \
             the snapshot ({mode} lock), so the recovered position is the exact one"
        ));
    }
}

pub(crate) fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}
