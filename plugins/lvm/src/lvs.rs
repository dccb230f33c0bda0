//! Reading `lvs --reportformat json`: one row per logical volume, with the fields the
//! backend needs, parsed into typed values once here.

use dbsnap_backend_api::command::Cmd;
use dbsnap_backend_api::{BackendError, Result};
use serde::Deserialize;

/// The fields asked of `lvs`, in the order `tests/fixtures/record-lvs.sh` records them.
pub const LVS_FIELDS: &str = "lv_name,vg_name,lv_attr,lv_size,origin,pool_lv,lv_tags,\
lv_kernel_major,lv_kernel_minor,data_percent,snap_percent,metadata_percent,vg_extent_size,\
vg_free_count";

/// One logical volume as `lvs` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lv {
    pub name: String,
    pub vg: String,
    /// The 10-character attribute string (`lv_attr`), e.g. `owi-aos---`.
    pub attr: String,
    pub size: u64,
    /// The origin of a snapshot (classic or thin).
    pub origin: Option<String>,
    /// The thin pool of a thin volume.
    pub pool: Option<String>,
    pub tags: Vec<String>,
    /// `(major, minor)` of the active device-mapper device; `None` when inactive.
    pub device: Option<(u32, u32)>,
    /// Thin pool or thin volume data use, in percent.
    pub data_percent: Option<f64>,
    /// Classic snapshot CoW use, in percent.
    pub snap_percent: Option<f64>,
    /// Thin pool metadata use, in percent.
    pub metadata_percent: Option<f64>,
    pub extent_size: u64,
    pub vg_free_extents: u64,
}

/// What kind of LV this is, from the first character of `lv_attr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LvKind {
    /// A plain LV (possibly the origin of classic snapshots, or RAID/mirror/cache).
    Plain,
    /// A thin volume (`V`); its snapshots are thin too.
    Thin,
    /// A classic snapshot (`s`), or an invalid one (`S`).
    ClassicSnapshot,
    /// Anything else: pools, hidden sub-LVs, virtual origins.
    Other,
}

impl Lv {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.vg, self.name)
    }

    pub fn kind(&self) -> LvKind {
        match self.attr.chars().next() {
            Some('-' | 'o' | 'r' | 'R' | 'm' | 'M' | 'C') => LvKind::Plain,
            Some('V') => LvKind::Thin,
            Some('s' | 'S') => LvKind::ClassicSnapshot,
            _ => LvKind::Other,
        }
    }

    /// A classic snapshot whose CoW space overflowed: its contents are gone.
    pub fn is_invalid_snapshot(&self) -> bool {
        // The fifth character is the state: `I` = invalid snapshot, `S` = invalid
        // suspended. (An `S` in the first character is a snapshot being merged.)
        matches!(self.attr.chars().nth(4), Some('I') | Some('S'))
    }

    /// Something holds the device open (a mount, a process, another device).
    pub fn is_open(&self) -> bool {
        self.attr.chars().nth(5) == Some('o')
    }

    /// An origin with a merge into it pending (`O`): it completes on the next activation.
    pub fn is_merge_pending_origin(&self) -> bool {
        self.attr.starts_with('O')
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

#[derive(Deserialize)]
struct Report {
    report: Vec<ReportPart>,
}

#[derive(Deserialize)]
struct ReportPart {
    #[serde(default)]
    lv: Vec<RawLv>,
}

#[derive(Deserialize)]
struct RawLv {
    lv_name: String,
    vg_name: String,
    lv_attr: String,
    lv_size: String,
    origin: String,
    pool_lv: String,
    lv_tags: String,
    lv_kernel_major: String,
    lv_kernel_minor: String,
    data_percent: String,
    snap_percent: String,
    metadata_percent: String,
    vg_extent_size: String,
    vg_free_count: String,
}

/// Parse the JSON `lvs --reportformat json --units b --nosuffix -o LVS_FIELDS` prints.
pub fn parse_report(json: &str) -> Result<Vec<Lv>> {
    let bad = |what: String| {
        BackendError::Invalid(format!(
            "could not read the output of `lvs --reportformat json` ({what}); is this LVM 2.02.158 \
             or newer?"
        ))
    };
    let report: Report = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let mut lvs = Vec::new();
    for raw in report.report.into_iter().flat_map(|part| part.lv) {
        let number = |field: &str, value: &str| {
            value.parse::<u64>().map_err(|_| {
                bad(format!(
                    "{field} of {}/{} is {value:?}",
                    raw.vg_name, raw.lv_name
                ))
            })
        };
        let percent = |field: &str, value: &str| {
            if value.is_empty() {
                return Ok(None);
            }
            value.parse::<f64>().map(Some).map_err(|_| {
                bad(format!(
                    "{field} of {}/{} is {value:?}",
                    raw.vg_name, raw.lv_name
                ))
            })
        };
        // An inactive LV reports -1 for both.
        let device = match (
            raw.lv_kernel_major.parse::<u32>(),
            raw.lv_kernel_minor.parse::<u32>(),
        ) {
            (Ok(major), Ok(minor)) => Some((major, minor)),
            _ => None,
        };
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        lvs.push(Lv {
            size: number("lv_size", &raw.lv_size)?,
            extent_size: number("vg_extent_size", &raw.vg_extent_size)?,
            vg_free_extents: number("vg_free_count", &raw.vg_free_count)?,
            data_percent: percent("data_percent", &raw.data_percent)?,
            snap_percent: percent("snap_percent", &raw.snap_percent)?,
            metadata_percent: percent("metadata_percent", &raw.metadata_percent)?,
            origin: non_empty(&raw.origin),
            pool: non_empty(&raw.pool_lv),
            tags: raw
                .lv_tags
                .split(',')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            device,
            name: raw.lv_name,
            vg: raw.vg_name,
            attr: raw.lv_attr,
        });
    }
    Ok(lvs)
}

/// Every LV in the named volume groups (all volume groups when `vgs` is empty).
pub async fn list_lvs(vgs: &[String]) -> Result<Vec<Lv>> {
    let output = Cmd::new("lvs")
        .args(["--reportformat", "json", "--units", "b", "--nosuffix"])
        .args(["-o", LVS_FIELDS])
        .args(vgs)
        .run()
        .await?;
    parse_report(&output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<Lv> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        parse_report(&text).unwrap()
    }

    fn find<'a>(lvs: &'a [Lv], name: &str) -> &'a Lv {
        lvs.iter().find(|lv| lv.name == name).unwrap()
    }

    #[test]
    fn parses_origins_and_pools() {
        let lvs = fixture("lvs-origins.json");
        let data = find(&lvs, "data");
        assert_eq!(data.vg, "vgfix");
        assert_eq!(data.full_name(), "vgfix/data");
        assert_eq!(data.kind(), LvKind::Plain);
        assert_eq!(data.size, 320 << 20);
        assert_eq!(data.extent_size, 4 << 20);
        assert!(data.device.is_some());
        assert_eq!(data.origin, None);
        assert!(data.tags.is_empty());
        let thin = find(&lvs, "thindata");
        assert_eq!(thin.kind(), LvKind::Thin);
        assert_eq!(thin.pool.as_deref(), Some("pool"));
        let pool = find(&lvs, "pool");
        assert_eq!(pool.kind(), LvKind::Other);
        assert!(pool.data_percent.is_some() && pool.metadata_percent.is_some());
    }

    #[test]
    fn parses_snapshots_with_tags() {
        let lvs = fixture("lvs-snapshots.json");
        let classic = find(&lvs, "dbsnap-fixture.0");
        assert_eq!(classic.kind(), LvKind::ClassicSnapshot);
        assert_eq!(classic.origin.as_deref(), Some("data"));
        assert_eq!(classic.tags, ["dbsnap", "dbsnap-fixture"]);
        assert!(classic.snap_percent.unwrap() > 0.0);
        assert!(!classic.is_invalid_snapshot());
        let thin = find(&lvs, "dbsnap-fixture.1");
        assert_eq!(thin.kind(), LvKind::Thin);
        assert_eq!(thin.origin.as_deref(), Some("thindata"));
        // Thin snapshots skip activation by default: not active, no device.
        assert_eq!(thin.device, None);
        let foreign = find(&lvs, "foreign-snap");
        assert!(!foreign.has_tag("dbsnap"));
    }

    #[test]
    fn recognises_an_overflowed_snapshot() {
        let lvs = fixture("lvs-overflowed.json");
        let classic = find(&lvs, "dbsnap-fixture.0");
        assert!(classic.is_invalid_snapshot(), "{}", classic.attr);
        assert_eq!(classic.snap_percent, Some(100.0));
        assert!(!find(&lvs, "foreign-snap").is_invalid_snapshot());
        // A snapshot being merged (lvs -a) is not an overflowed one.
        let mut merging = classic.clone();
        merging.attr = "Swi-a-s---".into();
        assert!(!merging.is_invalid_snapshot());
    }

    #[test]
    fn rejects_garbage_with_a_hint() {
        let err = parse_report("not json").unwrap_err().to_string();
        assert!(err.contains("lvs --reportformat json"), "{err}");
        let bad_size = r#"{"report":[{"lv":[{"lv_name":"a","vg_name":"v","lv_attr":"-wi-a-----",
            "lv_size":"12M","origin":"","pool_lv":"","lv_tags":"","lv_kernel_major":"253",
            "lv_kernel_minor":"0","data_percent":"","snap_percent":"","metadata_percent":"",
            "vg_extent_size":"4194304","vg_free_count":"1"}]}]}"#;
        let err = parse_report(bad_size).unwrap_err().to_string();
        assert!(err.contains("lv_size of v/a"), "{err}");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Field values as lvs prints them, and some it never should.
    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9]{1,20}",
            "[0-9]{1,3}\\.[0-9]{2}",
            "[-a-zA-Z0-9_.,]{0,16}",
            ".{0,8}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_text_parses_without_panicking(text in "(?s).{0,400}") {
            let _ = parse_report(&text);
        }

        #[test]
        fn any_field_values_parse_without_panicking(values in proptest::collection::vec(field(), 14)) {
            let names = [
                "lv_name", "vg_name", "lv_attr", "lv_size", "origin", "pool_lv", "lv_tags",
                "lv_kernel_major", "lv_kernel_minor", "data_percent", "snap_percent",
                "metadata_percent", "vg_extent_size", "vg_free_count",
            ];
            let lv: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .zip(&values)
                .map(|(n, v)| (n.to_string(), serde_json::Value::String(v.clone())))
                .collect();
            let report = serde_json::json!({"report": [{"lv": [lv]}]});
            if let Ok(lvs) = parse_report(&report.to_string()) {
                for lv in &lvs {
                    let _ = (lv.kind(), lv.is_invalid_snapshot(), lv.is_open(), lv.full_name());
                }
            }
        }
    }
}
