//! The wire format of the exec-plugin protocol (specified in `plugins/README.md`).
//!
//! These types are the protocol, kept apart from the Rust types of
//! `dbsnap-backend-api` so that a change there cannot silently change what plugins see.

use std::path::PathBuf;

use dbsnap_backend_api::{Health, ReadPath, SnapshotName, SnapshotSet, Volume, VolumeSnapshot};
use serde::{Deserialize, Serialize};

/// The protocol versions this adapter speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[u32] = &[1];

/// A plugin's verbs: the first argument of `dbsnap-backend-NAME VERB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Version,
    Probe,
    Plan,
    Snapshot,
    Mount,
    Unmount,
    Release,
    List,
    Health,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Version => "version",
            Verb::Probe => "probe",
            Verb::Plan => "plan",
            Verb::Snapshot => "snapshot",
            Verb::Mount => "mount",
            Verb::Unmount => "unmount",
            Verb::Release => "release",
            Verb::List => "list",
            Verb::Health => "health",
        }
    }
}

/// A volume on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireVolume {
    pub id: String,
    pub root: PathBuf,
    pub fstype: String,
}

impl From<&Volume> for WireVolume {
    fn from(v: &Volume) -> Self {
        WireVolume {
            id: v.id.clone(),
            root: v.root.clone(),
            fstype: v.fstype.clone(),
        }
    }
}

impl From<WireVolume> for Volume {
    fn from(v: WireVolume) -> Self {
        Volume {
            id: v.id,
            root: v.root,
            fstype: v.fstype,
        }
    }
}

/// One volume's snapshot on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSnapshot {
    pub id: String,
    pub volume: WireVolume,
}

/// A snapshot set on the wire: the name and one snapshot per volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSet {
    pub name: SnapshotName,
    pub snapshots: Vec<WireSnapshot>,
}

impl From<&SnapshotSet> for WireSet {
    fn from(set: &SnapshotSet) -> Self {
        WireSet {
            name: set.name.clone(),
            snapshots: set
                .snapshots
                .iter()
                .map(|s| WireSnapshot {
                    id: s.id.clone(),
                    volume: (&s.volume).into(),
                })
                .collect(),
        }
    }
}

impl WireSet {
    pub fn into_set(self, backend: &str) -> SnapshotSet {
        SnapshotSet {
            backend: backend.to_string(),
            name: self.name,
            snapshots: self
                .snapshots
                .into_iter()
                .map(|s| VolumeSnapshot {
                    id: s.id,
                    volume: s.volume.into(),
                })
                .collect(),
        }
    }
}

/// Every request: the negotiated version, the plugin's configuration, and the verb's fields.
#[derive(Debug, Serialize)]
pub struct Request<'a, T: Serialize> {
    pub protocol_version: u32,
    pub config: &'a serde_json::Map<String, serde_json::Value>,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Debug, Serialize)]
pub struct VersionRequest {
    pub supported_versions: &'static [u32],
}

#[derive(Debug, Deserialize)]
pub struct VersionResponse {
    pub supported_versions: Vec<u32>,
}

#[derive(Debug, Serialize)]
pub struct ProbeRequest<'a> {
    pub paths: &'a [PathBuf],
}

#[derive(Debug, Deserialize)]
pub struct ProbeResponse {
    pub volumes: Vec<WireVolume>,
    /// Whether one `snapshot` call over these volumes is atomic; absent means only a
    /// single volume is.
    pub atomic: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct VolumesRequest {
    pub volumes: Vec<WireVolume>,
}

#[derive(Debug, Serialize)]
pub struct PlanRequest {
    pub volumes: Vec<WireVolume>,
    pub name: SnapshotName,
}

#[derive(Debug, Deserialize)]
pub struct PlanResponse {
    pub snapshots: Vec<WireSnapshot>,
}

#[derive(Debug, Serialize)]
pub struct SetRequest {
    pub set: WireSet,
}

#[derive(Debug, Serialize)]
pub struct MountRequest<'a> {
    pub set: WireSet,
    pub workdir: &'a std::path::Path,
}

#[derive(Debug, Deserialize)]
pub struct MountResponse {
    pub read_paths: Vec<WireReadPath>,
}

#[derive(Debug, Deserialize)]
pub struct WireReadPath {
    pub origin_root: PathBuf,
    pub frozen_root: PathBuf,
}

impl From<WireReadPath> for ReadPath {
    fn from(r: WireReadPath) -> Self {
        ReadPath {
            origin_root: r.origin_root,
            frozen_root: r.frozen_root,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ListResponse {
    pub sets: Vec<WireSet>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Warning,
    Failed,
}

#[derive(Debug, Deserialize)]
pub struct HealthResponse {
    pub status: HealthStatus,
    #[serde(default)]
    pub message: String,
}

impl From<HealthResponse> for Health {
    fn from(h: HealthResponse) -> Self {
        match h.status {
            HealthStatus::Ok => Health::Ok,
            HealthStatus::Warning => Health::Warning(h.message),
            HealthStatus::Failed => Health::Failed(h.message),
        }
    }
}

/// The verbs that return nothing but success: `snapshot`, `unmount`, `release`.
#[derive(Debug, Deserialize)]
pub struct Empty {}

/// An error response: `{"error": {"code": ..., "message": ..., "hint": ..., "path": ...}}`.
#[derive(Debug, Deserialize)]
pub struct ErrorResponse {
    pub error: PluginError,
}

#[derive(Debug, Deserialize)]
pub struct PluginError {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub hint: String,
    /// For `unsupported`: the path that cannot be snapshotted.
    pub path: Option<PathBuf>,
}

/// The error codes of protocol version 1.
pub mod code {
    /// A path is on storage the plugin cannot snapshot (`path` says which).
    pub const UNSUPPORTED: &str = "unsupported";
    /// The request is malformed or asks for something the plugin refuses to do.
    pub const INVALID_REQUEST: &str = "invalid_request";
    /// The plugin does not implement this verb.
    pub const UNKNOWN_VERB: &str = "unknown_verb";
    /// The request's `protocol_version` is not one the plugin speaks.
    pub const INCOMPATIBLE_VERSION: &str = "incompatible_version";
    /// The operation was attempted and failed (a command failed, the storage said no).
    pub const FAILED: &str = "failed";
}

/// The highest version both sides speak.
pub fn negotiate(plugin: &[u32]) -> Option<u32> {
    SUPPORTED_VERSIONS
        .iter()
        .rev()
        .find(|v| plugin.contains(v))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_the_highest_common_version() {
        assert_eq!(negotiate(&[1, 2, 3]), Some(1));
        assert_eq!(negotiate(&[2]), None);
        assert_eq!(negotiate(&[]), None);
    }

    #[test]
    fn requests_carry_version_config_and_fields() {
        let mut config = serde_json::Map::new();
        config.insert("snapshot_dir".into(), "/srv/snaps".into());
        let request = Request {
            protocol_version: 1,
            config: &config,
            body: ProbeRequest {
                paths: &[PathBuf::from("/var/lib/my sql")],
            },
        };
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            serde_json::json!({
                "protocol_version": 1,
                "config": {"snapshot_dir": "/srv/snaps"},
                "paths": ["/var/lib/my sql"],
            })
        );
    }

    #[test]
    fn a_set_survives_the_wire() {
        let set = SnapshotSet {
            backend: "exec:x".into(),
            name: SnapshotName::new("dbsnap-a").unwrap(),
            snapshots: vec![VolumeSnapshot {
                id: "s".into(),
                volume: Volume {
                    id: "v".into(),
                    root: "/v".into(),
                    fstype: "xfs".into(),
                },
            }],
        };
        let wire: WireSet =
            serde_json::from_value(serde_json::to_value(WireSet::from(&set)).unwrap()).unwrap();
        assert_eq!(wire.into_set("exec:x"), set);
    }

    #[test]
    fn a_hostile_set_name_is_refused() {
        let text = r#"{"name": "dbsnap-a;rm -rf /", "snapshots": []}"#;
        assert!(serde_json::from_str::<WireSet>(text).is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// What the adapter does with a plugin's stdout: JSON, then the verb's response.
    fn parse_all(text: &str) {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
            return;
        };
        let _ = serde_json::from_value::<ErrorResponse>(value.clone());
        let _ = serde_json::from_value::<VersionResponse>(value.clone());
        let _ = serde_json::from_value::<ProbeResponse>(value.clone());
        let _ = serde_json::from_value::<PlanResponse>(value.clone());
        let _ = serde_json::from_value::<MountResponse>(value.clone());
        let _ = serde_json::from_value::<ListResponse>(value.clone());
        let _ = serde_json::from_value::<Empty>(value.clone());
        if let Ok(health) = serde_json::from_value::<HealthResponse>(value) {
            let _ = dbsnap_backend_api::Health::from(health);
        }
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("error".to_string()),
                        Just("snapshots".to_string()),
                        Just("sets".to_string()),
                        Just("name".to_string()),
                        Just("status".to_string()),
                        Just("used_percent".to_string()),
                        Just("protocol_version".to_string()),
                        Just("volumes".to_string()),
                        Just("read_paths".to_string()),
                        "[a-z_]{1,10}",
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_text_parses_without_panicking(text in "(?s).{0,300}") {
            parse_all(&text);
        }

        #[test]
        fn any_json_response_parses_without_panicking(value in json()) {
            parse_all(&value.to_string());
        }

        #[test]
        fn version_negotiation_never_panics(versions in proptest::collection::vec(any::<u32>(), 0..8)) {
            if let Some(v) = negotiate(&versions) {
                prop_assert!(versions.contains(&v));
            }
        }

        #[test]
        fn snapshot_sets_round_trip(
            name in "dbsnap-[a-zA-Z0-9_.-]{1,40}",
            snapshots in proptest::collection::vec((".{0,20}", "/.{0,20}", "[a-z0-9]{1,8}", ".{0,20}"), 0..4),
        ) {
            let set = SnapshotSet {
                backend: "exec:x".into(),
                name: SnapshotName::new(name).unwrap(),
                snapshots: snapshots
                    .into_iter()
                    .map(|(vid, root, fstype, id)| VolumeSnapshot {
                        volume: Volume { id: vid, root: root.into(), fstype },
                        id,
                    })
                    .collect(),
            };
            let text = serde_json::to_string(&WireSet::from(&set)).unwrap();
            let back: WireSet = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(back.into_set("exec:x"), set);
        }
    }
}
