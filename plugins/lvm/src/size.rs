//! How much copy-on-write space a classic snapshot gets.
//!
//! A classic snapshot stores the old version of every chunk the origin overwrites while the
//! snapshot exists; when that space runs out the snapshot is invalidated and its contents
//! are lost. So the size is a guess at how much the database writes during the copy, bounded
//! by what the volume group has free.

use std::fmt;

use dbsnap_backend_api::{BackendError, Result};
use serde::Deserialize;

/// `snapshot_size` in `[snapshot.lvm]`: an absolute size (`"512M"`, `"2G"`, binary units
/// K M G T) or a share of the origin LV (`"25%"`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub enum SnapshotSize {
    Bytes(u64),
    PercentOfOrigin(f64),
}

impl TryFrom<String> for SnapshotSize {
    type Error = BackendError;

    fn try_from(text: String) -> Result<Self> {
        let invalid = || {
            BackendError::Invalid(format!(
                "[snapshot.lvm] snapshot_size = {text:?} is not a size: write e.g. \"512M\", \"2G\" \
                 (units K, M, G, T of 1024) or \"20%\" (of the origin LV), or leave it out to size \
                 snapshots from the volume group's free space"
            ))
        };
        let trimmed = text.trim();
        if let Some(percent) = trimmed.strip_suffix('%') {
            let value: f64 = percent.trim().parse().map_err(|_| invalid())?;
            if !(value > 0.0 && value <= 100.0) {
                return Err(invalid());
            }
            return Ok(SnapshotSize::PercentOfOrigin(value));
        }
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        let shift = match unit.to_ascii_uppercase().as_str() {
            "K" | "KIB" => 10,
            "M" | "MIB" => 20,
            "G" | "GIB" => 30,
            "T" | "TIB" => 40,
            _ => return Err(invalid()),
        };
        let value: u64 = digits.parse().map_err(|_| invalid())?;
        match value.checked_mul(1 << shift) {
            Some(bytes) if bytes > 0 => Ok(SnapshotSize::Bytes(bytes)),
            _ => Err(invalid()),
        }
    }
}

/// A percentage threshold in `(0, 100]`, e.g. `warn_percent`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "f64")]
pub struct Percent(f64);

impl Percent {
    pub const fn new_const(value: f64) -> Percent {
        Percent(value)
    }

    pub fn value(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Percent {
    type Error = BackendError;

    fn try_from(value: f64) -> Result<Self> {
        if value > 0.0 && value <= 100.0 {
            Ok(Percent(value))
        } else {
            Err(BackendError::Invalid(format!(
                "{value} is not a percentage between 0 (exclusive) and 100"
            )))
        }
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} %", self.0)
    }
}

/// Without a configured size, the snapshots of one volume group share this part of its
/// free space, leaving the rest to the administrator (e.g. to `lvextend` a filling snapshot).
pub const AUTO_SHARE_OF_FREE: f64 = 0.5;
/// An automatic size below `min(origin / 10, 1 GiB)` is refused rather than used: such a
/// snapshot would overflow after little writing and the backup would fail late.
const AUTO_MIN_FRACTION_OF_ORIGIN: f64 = 0.1;
const AUTO_MIN_BYTES: u64 = 1 << 30;

/// One classic snapshot to size.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub name: String,
    pub size: u64,
}

/// The snapshot sizes, in extents, for the classic snapshots of one volume group, or why
/// they do not fit. `free_extents` and `extent_size` are the group's.
pub fn snapshot_extents(
    policy: Option<SnapshotSize>,
    origins: &[Origin],
    vg: &str,
    extent_size: u64,
    free_extents: u64,
) -> std::result::Result<Vec<u64>, String> {
    let free = free_extents * extent_size;
    let count = origins.len().max(1) as f64;
    let mut sizes = Vec::new();
    for origin in origins {
        // CoW space beyond the origin's size (plus a little for the exception table) is
        // never used; LVM would shrink it anyway.
        let useful = origin.size + origin.size / 100;
        let bytes = match policy {
            Some(SnapshotSize::Bytes(bytes)) => bytes,
            Some(SnapshotSize::PercentOfOrigin(percent)) => {
                (origin.size as f64 * percent / 100.0) as u64
            }
            None => {
                let share = (free as f64 * AUTO_SHARE_OF_FREE / count) as u64;
                let minimum =
                    ((origin.size as f64 * AUTO_MIN_FRACTION_OF_ORIGIN) as u64).min(AUTO_MIN_BYTES);
                if share.min(useful) < minimum {
                    return Err(format!(
                        "volume group {vg} has {} free; half of it, shared by {} classic \
                         snapshot(s), gives {} to the snapshot of {} ({}), less than the {} \
                         minimum",
                        human(free),
                        origins.len(),
                        human(share),
                        origin.name,
                        human(origin.size),
                        human(minimum)
                    ));
                }
                share
            }
        };
        let bytes = bytes.min(useful).max(extent_size);
        sizes.push(bytes.div_ceil(extent_size));
    }
    let needed: u64 = sizes.iter().sum();
    if needed > free_extents {
        return Err(format!(
            "volume group {vg} has {} free, the classic snapshots need {}",
            human(free),
            human(needed * extent_size)
        ));
    }
    Ok(sizes)
}

/// Bytes in binary units for messages: `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const EXTENT: u64 = 4 * MIB;

    fn parse(text: &str) -> Result<SnapshotSize> {
        SnapshotSize::try_from(text.to_string())
    }

    fn origin(name: &str, size: u64) -> Origin {
        Origin {
            name: name.into(),
            size,
        }
    }

    #[test]
    fn parses_sizes_and_percentages() {
        assert_eq!(parse("512M").unwrap(), SnapshotSize::Bytes(512 * MIB));
        assert_eq!(parse("2g").unwrap(), SnapshotSize::Bytes(2 * GIB));
        assert_eq!(parse("1TiB").unwrap(), SnapshotSize::Bytes(1 << 40));
        assert_eq!(parse(" 25% ").unwrap(), SnapshotSize::PercentOfOrigin(25.0));
        assert_eq!(parse("2.5%").unwrap(), SnapshotSize::PercentOfOrigin(2.5));
        for bad in [
            "",
            "12",
            "0M",
            "-1G",
            "1.5G",
            "G",
            "120%",
            "0%",
            "x%",
            "1P",
            "99999999999T",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("snapshot_size"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn deserialises_from_config_text() {
        #[derive(Deserialize)]
        struct C {
            size: SnapshotSize,
            warn: Percent,
        }
        let c: C = serde_json::from_str(r#"{"size":"10%","warn":75}"#).unwrap();
        assert_eq!(c.size, SnapshotSize::PercentOfOrigin(10.0));
        assert_eq!(c.warn.value(), 75.0);
        assert!(serde_json::from_str::<C>(r#"{"size":"10%","warn":150}"#).is_err());
    }

    #[test]
    fn absolute_size_rounds_up_to_extents() {
        let sizes = snapshot_extents(
            Some(SnapshotSize::Bytes(10 * MIB)),
            &[origin("vg/a", GIB)],
            "vg",
            EXTENT,
            100,
        )
        .unwrap();
        assert_eq!(sizes, [3]);
    }

    #[test]
    fn percent_of_origin() {
        let sizes = snapshot_extents(
            Some(SnapshotSize::PercentOfOrigin(25.0)),
            &[origin("vg/a", GIB), origin("vg/b", 400 * MIB)],
            "vg",
            EXTENT,
            1000,
        )
        .unwrap();
        assert_eq!(sizes, [64, 25]);
    }

    #[test]
    fn never_more_than_the_origin_can_use() {
        let sizes = snapshot_extents(
            Some(SnapshotSize::Bytes(100 * GIB)),
            &[origin("vg/a", 400 * MIB)],
            "vg",
            EXTENT,
            100_000,
        )
        .unwrap();
        // 400 MiB + 1 % = 404 MiB = 101 extents.
        assert_eq!(sizes, [101]);
    }

    #[test]
    fn configured_sizes_must_fit_in_the_vg() {
        let err = snapshot_extents(
            Some(SnapshotSize::Bytes(GIB)),
            &[origin("vg/a", 10 * GIB)],
            "vg",
            EXTENT,
            100,
        )
        .unwrap_err();
        assert!(err.contains("400.0 MiB free"), "{err}");
        assert!(err.contains("need 1.0 GiB"), "{err}");
    }

    #[test]
    fn automatic_size_shares_half_the_free_space() {
        // 2000 extents free: half of it, shared by two snapshots = 500 extents each.
        let sizes = snapshot_extents(
            None,
            &[origin("vg/a", 10 * GIB), origin("vg/b", 10 * GIB)],
            "vg",
            EXTENT,
            2000,
        )
        .unwrap();
        assert_eq!(sizes, [500, 500]);
        // A small origin is capped at what it can use.
        let sizes =
            snapshot_extents(None, &[origin("vg/c", 40 * MIB)], "vg", EXTENT, 1000).unwrap();
        assert_eq!(sizes, [11]);
    }

    #[test]
    fn automatic_size_refuses_a_nearly_full_vg() {
        // 10 GiB origin, 40 MiB free: 20 MiB is far below min(1 GiB, 10 %).
        let err =
            snapshot_extents(None, &[origin("vg/a", 10 * GIB)], "vg", EXTENT, 10).unwrap_err();
        assert!(err.contains("volume group vg has 40.0 MiB free"), "{err}");
        assert!(err.contains("1.0 GiB minimum"), "{err}");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536 * MIB), "1.5 GiB");
    }
}
