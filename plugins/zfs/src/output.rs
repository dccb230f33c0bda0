//! Parsers for the `zfs` output dbsnap reads. Only forms that both OpenZFS and zfs-fuse
//! print are used: `zfs get -H -p -o name,property,value` (zfs-fuse has no `list -p`)
//! and `zfs list -H -o name,<user property>` (strings only, so no units to parse).

use std::collections::BTreeMap;

use dbsnap_backend_api::{BackendError, Result};

/// Properties of one dataset or snapshot, as printed by `zfs get`. A user property that
/// is not set is printed as `-`.
pub type Properties = BTreeMap<String, String>;

/// Parse `zfs get -H -p -o name,property,value ...` into properties per name, in the
/// order the names first appear.
pub fn parse_get(text: &str) -> Result<Vec<(String, Properties)>> {
    let mut out: Vec<(String, Properties)> = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut fields = line.splitn(3, '\t');
        let (Some(name), Some(property), Some(value)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(unexpected("zfs get -H -p -o name,property,value", line));
        };
        match out.last_mut() {
            Some((last, props)) if last == name => {
                props.insert(property.to_string(), value.to_string());
            }
            _ => out.push((
                name.to_string(),
                BTreeMap::from([(property.to_string(), value.to_string())]),
            )),
        }
    }
    Ok(out)
}

/// One line of `zfs list -H -o name,<property> -t snapshot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotLine {
    pub dataset: String,
    pub snapshot: String,
    /// The property's value; `-` when unset.
    pub value: String,
}

/// Parse `zfs list -H -o name,<property> -t snapshot ...`.
pub fn parse_snapshot_list(text: &str) -> Result<Vec<SnapshotLine>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (name, value) = line
                .split_once('\t')
                .ok_or_else(|| unexpected("zfs list -H -o name,<property>", line))?;
            let (dataset, snapshot) = name
                .split_once('@')
                .ok_or_else(|| unexpected("zfs list -t snapshot", line))?;
            Ok(SnapshotLine {
                dataset: dataset.to_string(),
                snapshot: snapshot.to_string(),
                value: value.to_string(),
            })
        })
        .collect()
}

fn unexpected(command: &str, line: &str) -> BackendError {
    BackendError::Invalid(format!(
        "unexpected line in the output of `{command}`: {line:?}. This zfs version prints \
         something dbsnap does not understand; please report it with `zfs --version` or the \
         zfs-fuse version"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded with the commands the backend runs (see tests/openzfs_guest.rs for the
    // OpenZFS side): a dataset and one of our snapshots, held.
    const ZFS_FUSE_GET: &str = include_str!("../tests/fixtures/zfs-fuse-0.7.0-get.txt");
    const OPENZFS_GET: &str = include_str!("../tests/fixtures/openzfs-2.1.11-get.txt");
    const ZFS_FUSE_LIST: &str = include_str!("../tests/fixtures/zfs-fuse-0.7.0-list.txt");
    const OPENZFS_LIST: &str = include_str!("../tests/fixtures/openzfs-2.1.11-list.txt");

    fn check_get(text: &str, dataset: &str, snapshot: &str, mountpoint: &str) {
        let got = parse_get(text).unwrap();
        assert_eq!(got.len(), 2);
        let (name, fs) = &got[0];
        assert_eq!(name, dataset);
        assert_eq!(fs["type"], "filesystem");
        assert_eq!(fs["mountpoint"], mountpoint);
        assert_eq!(fs["dbsnap:run"], "-");
        let (name, snap) = &got[1];
        assert_eq!(name, snapshot);
        assert_eq!(snap["type"], "snapshot");
        assert_eq!(snap["dbsnap:run"], snapshot.split_once('@').unwrap().1);
        assert_eq!(snap["userrefs"], "1");
        assert!(snap["createtxg"].parse::<u64>().is_ok());
    }

    #[test]
    fn parses_zfs_fuse_get() {
        check_get(
            ZFS_FUSE_GET,
            "dbsr/db",
            "dbsr/db@dbsnap-a",
            "/tmp/zfsx/rmnt/db",
        );
    }

    #[test]
    fn parses_openzfs_get() {
        check_get(
            OPENZFS_GET,
            "ozfs1/db",
            "ozfs1/db@dbsnap-oz1",
            "/tmp/.tmpJloreP/mnt/db",
        );
    }

    #[test]
    fn keeps_spaces_in_values_and_names() {
        let got = parse_get("tank/my sql\tmountpoint\t/srv/my sql\n").unwrap();
        assert_eq!(got[0].0, "tank/my sql");
        assert_eq!(got[0].1["mountpoint"], "/srv/my sql");
    }

    #[test]
    fn rejects_get_output_without_three_columns() {
        let err = parse_get("tank/a  type  filesystem\n").unwrap_err();
        assert!(err.to_string().contains("unexpected line"), "{err}");
    }

    #[test]
    fn parses_zfs_fuse_snapshot_list() {
        let got = parse_snapshot_list(ZFS_FUSE_LIST).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            SnapshotLine {
                dataset: "dbsr/db".into(),
                snapshot: "dbsnap-a".into(),
                value: "dbsnap-a".into()
            }
        );
        assert_eq!(
            (got[1].snapshot.as_str(), got[1].value.as_str()),
            ("manual", "-")
        );
        assert_eq!(got[2].dataset, "dbsr/db/binlog");
    }

    #[test]
    fn parses_openzfs_snapshot_list() {
        let got = parse_snapshot_list(OPENZFS_LIST).unwrap();
        let datasets: Vec<&str> = got.iter().map(|l| l.dataset.as_str()).collect();
        assert_eq!(
            datasets,
            ["ozfs1/db", "ozfs1/db/binlog", "ozfs1/leg", "ozfs1/redo"]
        );
        assert!(got
            .iter()
            .all(|l| l.snapshot == "dbsnap-oz1" && l.value == "dbsnap-oz1"));
        assert!(parse_snapshot_list("tank/a\t-\n").is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_text_parses_without_panicking(text in "(?s).{0,400}") {
            let _ = parse_get(&text);
            let _ = parse_snapshot_list(&text);
        }

        #[test]
        fn zfs_get_output_round_trips(
            rows in proptest::collection::vec(
                ("[a-z][a-z0-9/_.-]{0,20}", "[a-z:]{1,12}", "[^\t\n\r]{0,20}"),
                0..12,
            )
        ) {
            let text: String = rows
                .iter()
                .map(|(name, property, value)| format!("{name}\t{property}\t{value}\n"))
                .collect();
            let parsed = parse_get(&text).unwrap();
            // Consecutive rows of one name are one entry; within it the last value of a
            // property wins.
            let mut expected: Vec<(String, Properties)> = Vec::new();
            for (name, property, value) in &rows {
                match expected.last_mut() {
                    Some((last, props)) if last == name => {
                        props.insert(property.clone(), value.clone());
                    }
                    _ => expected.push((
                        name.clone(),
                        BTreeMap::from([(property.clone(), value.clone())]),
                    )),
                }
            }
            prop_assert_eq!(parsed, expected);
        }

        #[test]
        fn zfs_snapshot_lists_round_trip(
            rows in proptest::collection::vec(
                ("[a-z][a-z0-9/_.-]{0,20}", "[a-zA-Z0-9_.:-]{1,20}", "[^\t\n\r]{0,20}"),
                0..12,
            )
        ) {
            let text: String = rows
                .iter()
                .map(|(dataset, snapshot, value)| format!("{dataset}@{snapshot}\t{value}\n"))
                .collect();
            let parsed = parse_snapshot_list(&text).unwrap();
            prop_assert_eq!(parsed.len(), rows.len());
            for (line, (dataset, snapshot, value)) in parsed.iter().zip(&rows) {
                prop_assert_eq!(&line.dataset, dataset);
                prop_assert_eq!(&line.snapshot, snapshot);
                prop_assert_eq!(&line.value, value);
            }
        }
    }
}
