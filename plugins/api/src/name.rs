use std::fmt;

use serde::{Deserialize, Serialize};

use crate::BackendError;

/// Every snapshot dbsnap creates starts with this, so `list` and cleanup only touch ours.
pub const SNAPSHOT_PREFIX: &str = "dbsnap-";

/// The longest name a user types (a label, a plugin name): what the messages promise.
pub const MAX_NAME_LEN: usize = 64;

/// The longest snapshot name: `dbsnap-`, a timestamp (`20261125T214500Z`), `-`, a label
/// of [`MAX_NAME_LEN`] characters (88 in all), and room for a suffix that tells runs
/// apart. Every backend takes names this long: an LVM name may have 127 characters, a
/// ZFS snapshot name 255 with its dataset (checked in its `plan`), a file name 255.
pub const MAX_SNAPSHOT_NAME_LEN: usize = 120;

/// A validated snapshot name: `dbsnap-` followed by letters, digits, `.`, `_`, `-`.
///
/// Names end up in device names, dataset names and paths, so they are checked once here
/// instead of being quoted in many places.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotName(String);

impl SnapshotName {
    pub fn new(name: impl Into<String>) -> Result<Self, BackendError> {
        let name = name.into();
        if !name.starts_with(SNAPSHOT_PREFIX) || name.len() == SNAPSHOT_PREFIX.len() {
            return Err(BackendError::Invalid(format!(
                "snapshot name {name:?} must start with {SNAPSHOT_PREFIX:?}"
            )));
        }
        validate_name_up_to("snapshot name", &name, MAX_SNAPSHOT_NAME_LEN)?;
        Ok(SnapshotName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SnapshotName {
    type Error = BackendError;
    fn try_from(s: String) -> Result<Self, BackendError> {
        SnapshotName::new(s)
    }
}

impl From<SnapshotName> for String {
    fn from(n: SnapshotName) -> String {
        n.0
    }
}

/// Check a name that will be used in a path, device or dataset name: 1–64 characters
/// from `A-Z a-z 0-9 . _ -`, starting with a letter or digit. `what` names it in the error.
pub fn validate_name(what: &str, name: &str) -> Result<(), BackendError> {
    validate_name_up_to(what, name, MAX_NAME_LEN)
}

/// [`validate_name`] with another length limit (for names dbsnap builds itself).
pub fn validate_name_up_to(what: &str, name: &str, max_len: usize) -> Result<(), BackendError> {
    let ok_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > max_len || !ok_start || !ok_chars {
        return Err(BackendError::Invalid(format!(
            "{what} {name:?} is not allowed: use 1 to {max_len} characters from A-Z, a-z, 0-9, \
             '.', '_' and '-', starting with a letter or digit"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        assert!(SnapshotName::new("dbsnap-20261125T214500Z").is_ok());
        assert!(SnapshotName::new("dbsnap-pre-upgrade_1.2").is_ok());
    }

    #[test]
    fn rejects_hostile_names() {
        for bad in [
            "dbsnap-a b",
            "dbsnap-a;rm",
            "dbsnap-$(x)",
            "dbsnap-a/b",
            "dbsnap-'",
            "dbsnap-a\nb",
            "other-name",
            "dbsnap-",
        ] {
            assert!(SnapshotName::new(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(
            SnapshotName::new(format!("dbsnap-{}", "x".repeat(MAX_SNAPSHOT_NAME_LEN))).is_err()
        );
    }

    #[test]
    fn a_label_of_the_documented_length_makes_a_valid_snapshot_name() {
        let label = "L".repeat(MAX_NAME_LEN);
        assert!(validate_name("label", &label).is_ok());
        assert!(validate_name("label", &format!("{label}x")).is_err());
        assert!(SnapshotName::new(format!("dbsnap-20261125T214500Z-{label}")).is_ok());
    }

    #[test]
    fn conversion_from_string_validates() {
        assert!(SnapshotName::try_from("dbsnap-ok".to_string()).is_ok());
        assert!(SnapshotName::try_from("dbsnap-no way".to_string()).is_err());
    }
}
