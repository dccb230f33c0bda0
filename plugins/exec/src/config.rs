//! `[snapshot.exec]` in dbsnap's configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::Verb;

/// `[snapshot.exec]`: where to find the plugin, how long each verb may take, and the
/// plugin's own settings.
///
/// ```toml
/// [snapshot]
/// backend = "exec:fsfreeze"
///
/// [snapshot.exec]
/// plugin_dir = "/usr/local/lib/dbsnap/plugins"   # searched first, then PATH
///
/// [snapshot.exec.timeouts]
/// snapshot = "20s"
///
/// [snapshot.exec.options]                        # passed to the plugin as "config"
/// snapshot_command = "/usr/local/sbin/cloud-volume-snapshot"
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// A directory searched for `dbsnap-backend-NAME` before `PATH`.
    pub plugin_dir: Option<PathBuf>,
    /// How long each verb may run before the plugin is killed.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// The plugin's own settings, sent unchanged as `config` in every request.
    #[serde(default)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// Per-verb time limits (`"30s"`, `"2m"`). `snapshot` runs under the database lock,
/// where dbsnap's `max_lock_hold` also bounds it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    #[serde(with = "humantime_serde")]
    pub version: Duration,
    #[serde(with = "humantime_serde")]
    pub probe: Duration,
    #[serde(with = "humantime_serde")]
    pub plan: Duration,
    #[serde(with = "humantime_serde")]
    pub snapshot: Duration,
    #[serde(with = "humantime_serde")]
    pub mount: Duration,
    #[serde(with = "humantime_serde")]
    pub unmount: Duration,
    #[serde(with = "humantime_serde")]
    pub release: Duration,
    #[serde(with = "humantime_serde")]
    pub list: Duration,
    #[serde(with = "humantime_serde")]
    pub health: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            version: Duration::from_secs(10),
            probe: Duration::from_secs(60),
            plan: Duration::from_secs(10),
            snapshot: Duration::from_secs(30),
            mount: Duration::from_secs(120),
            unmount: Duration::from_secs(120),
            release: Duration::from_secs(300),
            list: Duration::from_secs(60),
            health: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    pub fn for_verb(&self, verb: Verb) -> Duration {
        match verb {
            Verb::Version => self.version,
            Verb::Probe => self.probe,
            Verb::Plan => self.plan,
            Verb::Snapshot => self.snapshot,
            Verb::Mount => self.mount,
            Verb::Unmount => self.unmount,
            Verb::Release => self.release,
            Verb::List => self.list,
            Verb::Health => self.health,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let config: ExecConfig = toml::from_str(
            r#"
            plugin_dir = "/usr/local/lib/dbsnap/plugins"
            [timeouts]
            snapshot = "20s"
            [options]
            snapshot_command = "/usr/local/sbin/snap"
            retries = 3
            "#,
        )
        .unwrap();
        assert_eq!(config.timeouts.snapshot, Duration::from_secs(20));
        assert_eq!(config.timeouts.release, Duration::from_secs(300));
        assert_eq!(config.options["retries"], 3);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<ExecConfig>("[timeouts]\nsnapshto = \"1s\"\n").unwrap_err();
        assert!(err.to_string().contains("snapshto"), "{err}");
    }
}
