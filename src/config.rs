//! The configuration file (TOML) and MySQL option files (`[client]` in my.cnf).
//!
//! Unknown keys are errors that name the key and the line: a misspelt `lock_wait_timout`
//! silently falling back to a default is how backups end up stalling production.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dbsnap_btrfs::BtrfsConfig;
use dbsnap_exec::ExecConfig;
use dbsnap_lvm::LvmConfig;
use dbsnap_zfs::ZfsConfig;
use serde::Deserialize;

use crate::db::credentials::{
    parse_option_file_client, read_secret_file, warn_if_readable_by_others, Credentials,
};
use crate::db::lock_mode::RequestedMode;
use crate::db::stall_guard::LongQueryPolicy;
use crate::error::{fail, Class};
use crate::hooks::HooksConfig;

pub const DEFAULT_CONFIG: &str = "/etc/dbsnap/dbsnap.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where dbsnap keeps its state journal and run lock.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub mysql: MysqlConfig,
    pub snapshot: SnapshotConfig,
    pub backup: Option<BackupConfig>,
    #[serde(default)]
    pub hooks: HooksConfig,
    /// `[retention]`: what `dbsnap prune` keeps.
    pub retention: Option<crate::retention::Policy>,
    /// `[metrics]`: the Prometheus textfile written after every run.
    pub metrics: Option<MetricsConfig>,
    /// The file this configuration was read from (not a key).
    #[serde(skip)]
    pub source: PathBuf,
}

/// `[metrics]`: a Prometheus text-format file for node_exporter's textfile collector,
/// rewritten atomically after every run of a command that creates, publishes or
/// releases something, whether it succeeded or failed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// e.g. /var/lib/prometheus/node-exporter/dbsnap.prom (the collector reads `*.prom`).
    pub textfile: PathBuf,
    /// The `config` label's value [default: the configuration file's name without
    /// `.toml`, e.g. `db1` for /etc/dbsnap/db1.toml].
    pub config_label: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlConfig {
    pub socket: Option<PathBuf>,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// A MySQL option file whose `[client]` section supplies user, password, socket, host, port.
    pub defaults_file: Option<PathBuf>,
    pub user: Option<String>,
    /// A file holding only the password (a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
    /// How the server is quiesced; `auto` picks the least invasive consistent mode.
    #[serde(default)]
    pub lock: RequestedMode,
    /// What to do about long-running statements that would make the lock wait.
    #[serde(default)]
    pub long_queries: LongQueryPolicy,
    /// How old a statement must be to count as long-running.
    #[serde(default = "default_long_query_threshold", with = "humantime_serde")]
    pub long_query_threshold: Duration,
    /// How long one attempt to take the lock may wait before it is cancelled.
    #[serde(default = "default_lock_wait", with = "humantime_serde")]
    pub lock_wait_timeout: Duration,
    /// Attempts to take the lock; between attempts writers run freely.
    #[serde(default = "default_lock_attempts")]
    pub lock_attempts: u32,
    /// Past this, the lock is released and the run aborts, whatever the snapshot is doing.
    #[serde(default = "default_max_lock_hold", with = "humantime_serde")]
    pub max_lock_hold: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    pub backend: String,
    /// Refuse to start, and abort a running copy, when a snapshotted filesystem has less
    /// free space than this: a full filesystem crashes the live server.
    #[serde(default = "default_min_free_percent")]
    pub min_free_percent: f64,
    /// Warn below this much free space.
    #[serde(default = "default_warn_free_percent")]
    pub warn_free_percent: f64,
    #[serde(default)]
    pub btrfs: BtrfsConfig,
    #[serde(default)]
    pub lvm: LvmConfig,
    #[serde(default)]
    pub zfs: ZfsConfig,
    /// For `backend = "exec:NAME"`: an out-of-tree plugin (protocol in plugins/README.md).
    #[serde(default)]
    pub exec: ExecConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Directory that receives one sub-directory per backup.
    pub dest: PathBuf,
    /// Bandwidth limit of the copy (rsync or a native stream), e.g. "50MiB" (per second).
    pub bwlimit: Option<bytesize::ByteSize>,
    /// Verify every backup right after it is taken (`dbsnap verify`).
    #[serde(default)]
    pub verify: bool,
    /// Build each backup from the previous one (reflinks or hard links), writing only
    /// what changed. The previous backup is never modified.
    #[serde(default = "default_incremental")]
    pub incremental: bool,
    /// How the frozen files reach the destination (see [`Method`]).
    #[serde(default)]
    pub method: Method,
    /// Pace the copy by the server's commit latency (`auto`) or not (`off`).
    #[serde(default)]
    pub pace: PaceMode,
    /// Commits slower than this many times the baseline (measured before the lock)
    /// slow the copy down.
    #[serde(default = "default_pace_target")]
    pub pace_target: f64,
    /// The copy never goes slower than this (per second), so that a backup finishes;
    /// by default 16 MiB, or `bwlimit` if that is lower.
    pub pace_floor: Option<bytesize::ByteSize>,
}

/// `[backup] pace`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaceMode {
    #[default]
    Auto,
    Off,
}

fn default_pace_target() -> f64 {
    2.0
}

/// `[backup] method`: `files`, `rsync`, `auto`, or the name of a backend's native stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum Method {
    /// A plain directory tree copied from the mounted snapshot: by dbsnap's own copy
    /// engine to a destination on this host, by rsync elsewhere.
    #[default]
    Files,
    /// A plain directory tree, always by rsync.
    Rsync,
    /// The backend's native stream when it has one and the destination can receive it;
    /// rsync otherwise.
    Auto,
    /// The native stream the backend names so (`btrfs-send`, `zfs-send`): incremental
    /// from the previous backup's snapshot, which stays on the source until the next
    /// backup. Whether the configured backend makes it is checked before the lock.
    Stream(String),
}

impl From<String> for Method {
    fn from(text: String) -> Self {
        match text.as_str() {
            "files" => Method::Files,
            "rsync" => Method::Rsync,
            "auto" => Method::Auto,
            _ => Method::Stream(text),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Method::Files => "files",
            Method::Rsync => "rsync",
            Method::Auto => "auto",
            Method::Stream(name) => name,
        })
    }
}

fn default_incremental() -> bool {
    true
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/dbsnap")
}
fn default_lock_wait() -> Duration {
    Duration::from_secs(5)
}
fn default_long_query_threshold() -> Duration {
    Duration::from_secs(60)
}
fn default_lock_attempts() -> u32 {
    3
}
fn default_max_lock_hold() -> Duration {
    Duration::from_secs(10)
}
fn default_min_free_percent() -> f64 {
    5.0
}
fn default_warn_free_percent() -> f64 {
    15.0
}

impl Config {
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(
                Class::Config,
                format!(
                    "cannot read the configuration file {}: {e}. Pass --config PATH, or create {} \
                     (see `dbsnap --help` and the README for an example)",
                    path.display(),
                    DEFAULT_CONFIG
                ),
            )
        })?;
        let mut config = Config::parse(&text)
            .map_err(|e| fail(Class::Config, format!("{}: {e}", path.display())))?;
        config.source = path.to_path_buf();
        Ok(config)
    }

    /// The `config` label of this configuration's metrics.
    pub fn metrics_label(&self) -> String {
        self.metrics
            .as_ref()
            .and_then(|m| m.config_label.clone())
            .unwrap_or_else(|| {
                self.source
                    .file_stem()
                    .map_or_else(|| "dbsnap".into(), |s| s.to_string_lossy().into_owned())
            })
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let mut paths: Vec<(&str, &Path)> = vec![("state_dir", &self.state_dir)];
        if let Some(p) = &self.mysql.socket {
            paths.push(("mysql.socket", p));
        }
        if let Some(p) = &self.mysql.defaults_file {
            paths.push(("mysql.defaults_file", p));
        }
        if let Some(p) = &self.mysql.password_file {
            paths.push(("mysql.password_file", p));
        }
        if let Some(b) = &self.backup {
            paths.push(("backup.dest", &b.dest));
        }
        if let Some(p) = &self.snapshot.btrfs.snapshot_dir {
            paths.push(("snapshot.btrfs.snapshot_dir", p));
        }
        for (key, path) in paths {
            check_path(key, path)?;
        }
        if let Some(m) = &self.metrics {
            check_path("metrics.textfile", &m.textfile)?;
            if m.textfile.extension() != Some(std::ffi::OsStr::new("prom")) {
                anyhow::bail!(
                    "metrics.textfile = {:?} must end in .prom: node_exporter's textfile collector reads only *.prom files",
                    m.textfile
                );
            }
            if let Some(label) = &m.config_label {
                if label.is_empty() || label.chars().any(char::is_control) {
                    anyhow::bail!(
                        "metrics.config_label = {label:?} must be non-empty and printable (it becomes the config=\"...\" label)"
                    );
                }
            }
        }
        self.hooks.validate()?;
        if self.mysql.lock_attempts == 0 {
            anyhow::bail!("mysql.lock_attempts must be at least 1");
        }
        if self.mysql.lock_wait_timeout < Duration::from_millis(100) {
            anyhow::bail!("mysql.lock_wait_timeout must be at least 100ms");
        }
        if !(0.0..100.0).contains(&self.snapshot.min_free_percent)
            || self.snapshot.warn_free_percent < self.snapshot.min_free_percent
        {
            anyhow::bail!(
                "snapshot.min_free_percent must be in 0..100 and no larger than snapshot.warn_free_percent"
            );
        }
        Ok(())
    }

    /// The `[backup]` section, which only `backup` and `list` need.
    pub fn backup(&self) -> anyhow::Result<&BackupConfig> {
        self.backup.as_ref().ok_or_else(|| {
            fail(
                Class::Config,
                "the configuration has no [backup] section: add one with `dest = \"/path/to/backups\"`",
            )
        })
    }
}

/// Paths in the configuration must be absolute (they are used from any working
/// directory and handed to rsync, which would read `host:path` as remote) and printable.
fn check_path(key: &str, path: &Path) -> anyhow::Result<()> {
    if !path.is_absolute() {
        anyhow::bail!("{key} = {path:?} must be an absolute path");
    }
    if path.to_string_lossy().chars().any(char::is_control) {
        anyhow::bail!(
            "{key} = {path:?} contains control characters (newline, tab, ...); rename it"
        );
    }
    Ok(())
}

impl MysqlConfig {
    /// Merge the option file and the config into connection settings. Warns when a file
    /// holding a password can be read by other users.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        let mut creds = Credentials::default();
        if let Some(path) = &self.defaults_file {
            let text = read_secret_file(path, "mysql.defaults_file")?;
            let client = parse_option_file_client(&text);
            if client.password.is_some() {
                warn_if_readable_by_others(path);
            }
            creds = client;
        }
        if let Some(path) = &self.password_file {
            let text = read_secret_file(path, "mysql.password_file")?;
            warn_if_readable_by_others(path);
            creds.password = Some(text.trim_end_matches(['\n', '\r']).to_string());
        }
        if self.socket.is_some() {
            creds.socket = self.socket.clone();
        }
        if self.host.is_some() {
            creds.host = self.host.clone();
            if self.socket.is_none() {
                creds.socket = None;
            }
        }
        if self.port.is_some() {
            creds.port = self.port;
        }
        if self.user.is_some() {
            creds.user = self.user.clone();
        }
        Ok(creds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[mysql]
socket = "/run/mysqld/mysqld.sock"

[snapshot]
backend = "btrfs"

[backup]
dest = "/srv/backups/db 1"
"#;

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/dbsnap"));
        assert_eq!(c.mysql.lock_wait_timeout, Duration::from_secs(5));
        assert_eq!(c.mysql.lock_attempts, 3);
        assert_eq!(c.mysql.max_lock_hold, Duration::from_secs(10));
        assert_eq!(c.mysql.lock, RequestedMode::Auto);
        assert_eq!(c.mysql.long_queries, LongQueryPolicy::Wait);
        assert_eq!(c.backup.unwrap().dest, PathBuf::from("/srv/backups/db 1"));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = MINIMAL.replace("[snapshot]", "[snapshot]\nbakend = \"zfs\"");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("bakend"), "{err}");
        assert!(err.contains("line 6"), "{err}");
    }

    #[test]
    fn durations_are_human() {
        let text = MINIMAL.replace(
            "[mysql]",
            "[mysql]\nlock_wait_timeout = \"1500ms\"\nmax_lock_hold = \"2s\"",
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.mysql.lock_wait_timeout, Duration::from_millis(1500));
        assert_eq!(c.mysql.max_lock_hold, Duration::from_secs(2));
    }

    #[test]
    fn lock_modes_and_policies_by_name() {
        let text = MINIMAL.replace(
            "[mysql]",
            "[mysql]\nlock = \"backup-stage\"\nlong_queries = \"kill\"",
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.mysql.lock, RequestedMode::BackupStage);
        assert_eq!(c.mysql.long_queries, LongQueryPolicy::Kill);
        let err =
            Config::parse(&MINIMAL.replace("[mysql]", "[mysql]\nlock = \"flush\"")).unwrap_err();
        assert!(err.to_string().contains("unknown variant"), "{err}");
    }

    #[test]
    fn relative_paths_are_refused() {
        let text = MINIMAL.replace("/srv/backups/db 1", "backups");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("backup.dest") && err.contains("absolute"),
            "{err}"
        );
    }

    #[test]
    fn the_packaged_example_config_is_valid() {
        let c = Config::parse(include_str!("../packaging/dbsnap.toml")).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/dbsnap"));
        assert!(c.metrics.is_some() && c.retention.is_some());
    }

    #[test]
    fn metrics_section_is_checked_and_labelled() {
        let with = |section: &str| Config::parse(&format!("{MINIMAL}\n[metrics]\n{section}\n"));
        let c = with("textfile = \"/var/lib/prometheus/node-exporter/dbsnap.prom\"").unwrap();
        assert_eq!(c.metrics_label(), "dbsnap");
        let c = with("textfile = \"/m/db.prom\"\nconfig_label = \"db1\"").unwrap();
        assert_eq!(c.metrics_label(), "db1");
        for (section, key) in [
            ("textfile = \"/m/db.txt\"", "metrics.textfile"),
            ("textfile = \"m.prom\"", "metrics.textfile"),
            (
                "textfile = \"/m/db.prom\"\nconfig_label = \"\"",
                "metrics.config_label",
            ),
            ("textfile = \"/m/db.prom\"\ntextfiel = \"x\"", "textfiel"),
        ] {
            let err = with(section).unwrap_err().to_string();
            assert!(err.contains(key), "{section}: {err}");
        }
    }

    #[test]
    fn config_overrides_option_file() {
        let dir = tempfile::tempdir().unwrap();
        let cnf = dir.path().join("my.cnf");
        std::fs::write(&cnf, "[client]\nuser=a\npassword=p\nsocket=/x.sock\n").unwrap();
        let text = format!(
            "{}\n",
            MINIMAL.replace(
                "socket = \"/run/mysqld/mysqld.sock\"",
                &format!("defaults_file = {:?}\nuser = \"b\"", cnf)
            )
        );
        let c = Config::parse(&text).unwrap().mysql.credentials().unwrap();
        assert_eq!(c.user.as_deref(), Some("b"));
        assert_eq!(c.password.as_deref(), Some("p"));
        assert_eq!(c.socket, Some(PathBuf::from("/x.sock")));
    }
}
