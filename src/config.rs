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

use crate::db::credentials::{read_secret_file, warn_if_readable_by_others, Credentials};
use crate::db::lock_mode::RequestedMode;
use crate::db::option_files::{credentials_from_options, read_option_file, OPTION_GROUPS};
use crate::db::stall_guard::LongQueryPolicy;
use crate::error::{fail, Class};
use crate::hooks::HooksConfig;

mod ssh;
pub use ssh::{Compress, SshConfig};

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
    /// Pace the copy by the server's commit latency (`auto`) or not (`off`); `auto`
    /// also frees a large btrfs snapshot in steps at that pace before deleting it
    /// (`release::spread`).
    #[serde(default)]
    pub pace: PaceMode,
    /// Commits slower than this many times the baseline (measured before the lock)
    /// slow the copy down.
    #[serde(default = "default_pace_target")]
    pub pace_target: f64,
    /// The copy never goes slower than this (per second), so that a backup finishes;
    /// by default 16 MiB, or `bwlimit` if that is lower.
    pub pace_floor: Option<bytesize::ByteSize>,
    /// Compression on the wire for an ssh destination: `true` (rsync's default level)
    /// or a level 1-9. Off by default.
    pub compress: Option<Compress>,
    /// `[backup.ssh]`: how an `ssh://` destination is reached.
    #[serde(default)]
    pub ssh: SshConfig,
    /// `[backup.restic]`: how to open the repository when `dest = "restic:<repository>"`.
    pub restic: Option<ResticConfig>,
}

/// `[backup] pace`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaceMode {
    #[default]
    Auto,
    Off,
}

/// 8 clients committing one after another move at about baseline / latency: 1.25 ×
/// the baseline's latency keeps about four fifths of their throughput. Measured
/// (bank load, 1 GB, #13's note): 1.5 × left the slowest second at 58 % of the
/// baseline's commits in 53 s, 1.2 × at 71 % in 100 s.
fn default_pace_target() -> f64 {
    1.25
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

impl MetricsConfig {
    /// A `.prom` file (the only files node_exporter reads) and a printable label.
    fn check(&self) -> Result<(), KeyProblem> {
        check_path("metrics.textfile", &self.textfile)?;
        if self.textfile.extension() != Some(std::ffi::OsStr::new("prom")) {
            return Err(KeyProblem::new(
                "metrics.textfile",
                format!(
                    "metrics.textfile = {:?} must end in .prom: node_exporter's textfile collector reads only *.prom files",
                    self.textfile
                ),
            ));
        }
        if let Some(label) = &self.config_label {
            if label.is_empty() || label.chars().any(char::is_control) {
                return Err(KeyProblem::new(
                    "metrics.config_label",
                    format!(
                        "metrics.config_label = {label:?} must be non-empty and printable (it becomes the config=\"...\" label)"
                    ),
                ));
            }
        }
        Ok(())
    }
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
        config.validate().map_err(|problem| {
            let line =
                line_of_key(text, &problem.key).map_or(String::new(), |n| format!(" (line {n})"));
            anyhow::anyhow!("{}{line}", problem.message)
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), KeyProblem> {
        self.check_paths()?;
        if let Some(m) = &self.metrics {
            m.check()?;
        }
        if let Some(b) = &self.backup {
            self.check_dest(&b.dest)?;
        }
        self.hooks.validate().map_err(|e| KeyProblem {
            key: "hooks".into(),
            message: e.to_string(),
        })?;
        self.check_mysql()?;
        check_duration(
            "hooks.timeout",
            self.hooks.timeout,
            Duration::from_millis(1),
        )?;
        self.check_snapshot()
    }

    /// Every path in the configuration is absolute.
    fn check_paths(&self) -> Result<(), KeyProblem> {
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
            // A restic repository is no path; anything else is the ssh side's to sort.
            if restic::check(b)?.is_some() {
                ssh::check(b, &mut paths)?;
            }
        }
        if let Some(p) = &self.snapshot.btrfs.snapshot_dir {
            paths.push(("snapshot.btrfs.snapshot_dir", p));
        }
        for (key, path) in paths {
            check_path(key, path)?;
        }
        Ok(())
    }

    fn check_mysql(&self) -> Result<(), KeyProblem> {
        let mysql = &self.mysql;
        if mysql.socket.is_some() && mysql.host.is_some() {
            return Err(KeyProblem::new(
                "mysql.host",
                "[mysql] sets both socket and host: the socket would win and host be ignored. \
                 Keep socket (a local server) or host and port (TCP), not both",
            ));
        }
        if mysql.lock_attempts == 0 {
            return Err(KeyProblem::new(
                "mysql.lock_attempts",
                "mysql.lock_attempts must be at least 1",
            ));
        }
        check_duration(
            "mysql.lock_wait_timeout",
            mysql.lock_wait_timeout,
            Duration::from_millis(100),
        )?;
        check_duration(
            "mysql.max_lock_hold",
            mysql.max_lock_hold,
            Duration::from_millis(1),
        )?;
        check_duration(
            "mysql.long_query_threshold",
            mysql.long_query_threshold,
            Duration::ZERO,
        )?;
        Ok(())
    }

    fn check_snapshot(&self) -> Result<(), KeyProblem> {
        let snapshot = &self.snapshot;
        for (key, value) in [
            ("snapshot.min_free_percent", snapshot.min_free_percent),
            ("snapshot.warn_free_percent", snapshot.warn_free_percent),
        ] {
            if !(0.0..100.0).contains(&value) {
                return Err(KeyProblem::new(
                    key,
                    format!("{key} = {value} must be a number from 0 to below 100"),
                ));
            }
        }
        if snapshot.warn_free_percent < snapshot.min_free_percent {
            return Err(KeyProblem::new(
                "snapshot.warn_free_percent",
                format!(
                    "snapshot.warn_free_percent = {} must be no smaller than snapshot.min_free_percent = {}",
                    snapshot.warn_free_percent, snapshot.min_free_percent
                ),
            ));
        }
        Ok(())
    }

    /// A destination that is the root directory, or inside a snapshot directory, would
    /// copy the backup into what is being backed up or into a snapshot that is deleted.
    fn check_dest(&self, dest: &Path) -> Result<(), KeyProblem> {
        if dest.to_string_lossy().starts_with(RESTIC_SCHEME) {
            return Ok(()); // a repository: see `restic::check`
        }
        let key = "backup.dest";
        let normal: Vec<&std::ffi::OsStr> = dest
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let climbs = dest
            .components()
            .any(|c| c == std::path::Component::ParentDir);
        if normal.is_empty() || climbs {
            return Err(KeyProblem::new(
                key,
                format!(
                    "backup.dest = {dest:?} must name a directory of its own (not / and without \
                     \"..\"): e.g. /srv/backups/db1"
                ),
            ));
        }
        let snapshot_dirs = [SNAPSHOT_DIR_NAME, ".zfs"];
        if let Some(inside) = normal
            .iter()
            .find(|n| snapshot_dirs.iter().any(|s| *n == s))
        {
            return Err(KeyProblem::new(
                key,
                format!(
                    "backup.dest = {dest:?} is inside a snapshot directory ({}): snapshots there \
                     are read-only and deleted by dbsnap. Choose a directory outside it",
                    inside.to_string_lossy()
                ),
            ));
        }
        if let Some(dir) = &self.snapshot.btrfs.snapshot_dir {
            if dest.starts_with(dir) {
                return Err(KeyProblem::new(
                    key,
                    format!(
                        "backup.dest = {dest:?} is inside snapshot.btrfs.snapshot_dir = {dir:?}, \
                         where dbsnap creates and deletes snapshots. Choose a directory outside it"
                    ),
                ));
            }
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

/// Where btrfs snapshots go by default (at the filesystem's mount point).
const SNAPSHOT_DIR_NAME: &str = ".dbsnap-snapshots";

/// The longest duration any setting accepts: a year, the server's own maximum for
/// `lock_wait_timeout` (31536000 s). Larger values overflow in the server or in
/// deadline arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(31_536_000);

/// A setting that is wrong, with the dotted key that names it (`mysql.max_lock_hold`).
#[derive(Debug)]
struct KeyProblem {
    key: String,
    message: String,
}

impl KeyProblem {
    fn new(key: &str, message: impl Into<String>) -> KeyProblem {
        KeyProblem {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// The line (1-based) where the dotted `key` is set in the TOML `text`: the line of
/// `name = ...` inside the table `[a.b]` for `a.b.name`.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let (table, name) = key.rsplit_once('.').unwrap_or(("", key));
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            current = header.trim().to_string();
            if current == key {
                return Some(i + 1);
            }
            continue;
        }
        let assigned = line
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"'));
        if current == table && assigned == Some(name) {
            return Some(i + 1);
        }
    }
    None
}

fn check_duration(key: &str, value: Duration, min: Duration) -> Result<(), KeyProblem> {
    if value < min || value > MAX_DURATION {
        let shown = humantime::format_duration(value);
        let min = humantime::format_duration(min);
        return Err(KeyProblem::new(
            key,
            format!("{key} = \"{shown}\" must be from {min} to 365d"),
        ));
    }
    Ok(())
}

/// Paths in the configuration must be absolute (they are used from any working
/// directory and handed to rsync, which would read `host:path` as remote) and printable.
fn check_path(key: &str, path: &Path) -> Result<(), KeyProblem> {
    if !path.is_absolute() {
        return Err(KeyProblem::new(
            key,
            format!("{key} = {path:?} must be an absolute path"),
        ));
    }
    if path.to_string_lossy().chars().any(char::is_control) {
        return Err(KeyProblem::new(
            key,
            format!("{key} = {path:?} contains control characters (newline, tab, ...); rename it"),
        ));
    }
    Ok(())
}

impl MysqlConfig {
    /// Merge the option file and the config into connection settings. Warns when a file
    /// holding a password can be read by other users.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        let mut creds = Credentials::default();
        if let Some(path) = &self.defaults_file {
            let options = read_option_file(path, OPTION_GROUPS).map_err(|e| {
                fail(
                    Class::Config,
                    format!("mysql.defaults_file = {path:?}: {e:#}"),
                )
            })?;
            creds = credentials_from_options(&options).map_err(|e| {
                fail(
                    Class::Config,
                    format!("mysql.defaults_file = {path:?}: {e}"),
                )
            })?;
            if creds.password.is_some() {
                for file in options
                    .iter()
                    .filter(|o| o.name == "password")
                    .map(|o| &o.file)
                {
                    warn_if_readable_by_others(file);
                }
            }
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

mod restic;
pub use restic::{ResticConfig, RESTIC_SCHEME};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_config_text_parses_without_panicking(text in "(?s).{0,400}") {
            let _ = Config::parse(&text);
        }

        #[test]
        fn any_config_values_parse_without_panicking(
            key in prop_oneof![
                Just("lock_wait_timeout"), Just("max_lock_hold"), Just("long_query_threshold"),
                Just("lock_attempts"), Just("port"), Just("socket"), Just("lock"), Just("host"),
            ],
            value in prop_oneof![
                "\"[0-9]{1,25}(ns|ms|s|m|h|d|y)\"",
                "-?[0-9]{1,25}(\\.[0-9]{1,5})?",
                "(nan|inf|-inf|true|false)",
                "\"(?s).{0,20}\"",
            ],
        ) {
            let text = format!(
                "[mysql]\n{key} = {value}\n[snapshot]\nbackend = \"btrfs\"\n[backup]\ndest = \"/srv/b\"\n"
            );
            let _ = Config::parse(&text);
        }
    }
}
