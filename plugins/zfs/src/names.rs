//! ZFS names: which dataset names dbsnap accepts, and the names it gives its snapshots
//! and clones.
//!
//! Dataset names reach dbsnap from the mount table and from the state journal, so they
//! are checked before they are used as arguments: a name starting with `-` would be
//! read by `zfs` as an option, and a name with `@` or `#` is a snapshot or bookmark.

use dbsnap_backend_api::{BackendError, Result, SnapshotName};

/// ZFS's own limit (`ZFS_MAX_DATASET_NAME_LEN` is 256 including the terminating NUL).
pub(crate) const MAX_NAME_LEN: usize = 255;

/// Check a dataset (filesystem) name: `pool[/component]*`, each component non-empty and
/// made of the characters ZFS allows (`A-Z a-z 0-9 _ - . : space`), the pool starting
/// with a letter.
pub fn validate_dataset(name: &str) -> Result<()> {
    let refuse = |why: &str| {
        Err(BackendError::Invalid(format!(
            "refusing ZFS dataset name {name:?}: {why}. dbsnap only works on datasets named \
             pool/component/... with the characters A-Z, a-z, 0-9, '_', '-', '.', ':' and space"
        )))
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return refuse("it is empty or longer than 255 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return refuse("it does not start with a letter");
    }
    for component in name.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return refuse("it has an empty, '.' or '..' component");
        }
        let allowed =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | ' ');
        if !component.chars().all(allowed) {
            return refuse("it contains a character ZFS or dbsnap does not allow");
        }
    }
    Ok(())
}

/// The pool a dataset or snapshot belongs to: its name up to the first `/` or `@`.
pub fn pool_of(name: &str) -> &str {
    name.split(['/', '@']).next().unwrap_or(name)
}

/// `dataset@name`: the snapshot dbsnap takes of `dataset` for the set `name`.
pub fn snapshot_id(dataset: &str, name: &SnapshotName) -> String {
    format!("{dataset}@{name}")
}

/// Split a snapshot id into its dataset, checking that it is exactly the snapshot dbsnap
/// would have named for `name` (so a tampered journal cannot make dbsnap destroy
/// someone else's snapshot).
pub fn dataset_of_snapshot<'a>(id: &'a str, name: &SnapshotName) -> Result<&'a str> {
    let ours = id
        .split_once('@')
        .filter(|(_, snap)| *snap == name.as_str())
        .map(|(dataset, _)| dataset);
    match ours {
        Some(dataset) => {
            validate_dataset(dataset)?;
            Ok(dataset)
        }
        None => Err(BackendError::Invalid(format!(
            "refusing to touch ZFS snapshot {id:?}: it is not a dbsnap snapshot named {name}"
        ))),
    }
}

/// The read-only clone dbsnap makes of `dataset@name` when `.zfs/snapshot` is not
/// reachable: a sibling of the dataset named `<name>.<last component>`, or
/// `<pool>/<name>` for a pool's root dataset. It depends only on the dataset and the
/// set's name, so cleanup finds it again without knowing how the set was ordered.
pub fn clone_id(dataset: &str, name: &SnapshotName) -> String {
    match dataset.rsplit_once('/') {
        Some((parent, last)) => format!("{parent}/{name}.{last}"),
        None => format!("{dataset}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> SnapshotName {
        SnapshotName::new("dbsnap-20261125T220000Z").unwrap()
    }

    #[test]
    fn accepts_ordinary_dataset_names() {
        for ok in [
            "tank",
            "tank/mysql/data",
            "rpool/db_1/redo-log.x",
            "t/a b",
            "t/x:y",
        ] {
            validate_dataset(ok).unwrap();
        }
    }

    #[test]
    fn refuses_hostile_dataset_names() {
        for bad in [
            "",
            "-o",
            "-rR",
            "tank/../x",
            "tank//x",
            "tank/",
            "/tank",
            "tank/a@snap",
            "tank/a#bookmark",
            "tank/a%b",
            "tank/a\nb",
            "tank/a;rm -rf",
            "tank/$(id)",
            "1tank",
            "tank/ümlaut",
        ] {
            assert!(validate_dataset(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(validate_dataset(&format!("t/{}", "x".repeat(300))).is_err());
    }

    #[test]
    fn snapshot_ids_round_trip_and_foreign_ones_are_refused() {
        let id = snapshot_id("tank/db", &name());
        assert_eq!(id, "tank/db@dbsnap-20261125T220000Z");
        assert_eq!(dataset_of_snapshot(&id, &name()).unwrap(), "tank/db");
        for foreign in [
            "tank/db@manual",
            "tank/db@dbsnap-other",
            "tank/db",
            "-R@dbsnap-20261125T220000Z",
        ] {
            assert!(dataset_of_snapshot(foreign, &name()).is_err(), "{foreign}");
        }
    }

    #[test]
    fn clones_are_siblings_with_our_prefix() {
        assert_eq!(
            clone_id("tank/mysql/data", &name()),
            "tank/mysql/dbsnap-20261125T220000Z.data"
        );
        assert_eq!(clone_id("tank", &name()), "tank/dbsnap-20261125T220000Z");
        assert_eq!(pool_of("tank/mysql/data"), "tank");
        assert_eq!(pool_of("tank"), "tank");
        assert_eq!(pool_of("tank@dbsnap-x"), "tank");
        assert_eq!(pool_of("tank/a@dbsnap-x"), "tank");
    }
}
