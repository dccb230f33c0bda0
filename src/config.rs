//! The configuration file (TOML) and MySQL option files (`[client]` in my.cnf).
//!
//! Unknown keys are errors that name the key and the line: a misspelt `lock_wait_timout`
//! silently falling back to a default is how backups end up stalling production.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use dbsnap_btrfs::BtrfsConfig;
use dbsnap_exec::ExecConfig;
use dbsnap_lvm::LvmConfig;
use dbsnap_zfs::ZfsConfig;
use serde::Deserialize;

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
}

/// `[backup] method`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// rsync from the mounted snapshot: works with every backend and destination; the
    /// backups are plain directories.
    #[default]
    Rsync,
    /// `btrfs send | btrfs receive` into a btrfs destination, incremental from the
    /// previous backup's snapshot, which stays on the source until the next backup.
    BtrfsSend,
    /// `zfs send | zfs receive` into a dataset below the destination's ZFS dataset,
    /// incremental from the previous backup's snapshot, which stays on the source (held)
    /// until the next backup.
    ZfsSend,
    /// The backend's native stream when it has one and the destination can receive it;
    /// rsync otherwise.
    Auto,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Rsync => "rsync",
            Method::BtrfsSend => "btrfs-send",
            Method::ZfsSend => "zfs-send",
            Method::Auto => "auto",
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
        config.validate().map_err(|problem| {
            let line =
                line_of_key(text, &problem.key).map_or(String::new(), |n| format!(" (line {n})"));
            anyhow::anyhow!("{}{line}", problem.message)
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), KeyProblem> {
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
                return Err(KeyProblem::new(
                    "metrics.textfile",
                    format!(
                        "metrics.textfile = {:?} must end in .prom: node_exporter's textfile collector reads only *.prom files",
                        m.textfile
                    ),
                ));
            }
            if let Some(label) = &m.config_label {
                if label.is_empty() || label.chars().any(char::is_control) {
                    return Err(KeyProblem::new(
                        "metrics.config_label",
                        format!(
                            "metrics.config_label = {label:?} must be non-empty and printable (it becomes the config=\"...\" label)"
                        ),
                    ));
                }
            }
        }
        if let Some(b) = &self.backup {
            self.check_dest(&b.dest)?;
        }
        self.hooks.validate().map_err(|e| KeyProblem {
            key: "hooks".into(),
            message: e.to_string(),
        })?;
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
        check_duration(
            "hooks.timeout",
            self.hooks.timeout,
            Duration::from_millis(1),
        )?;
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

/// Connection settings after merging the option file and the config (config wins).
#[derive(Clone, Default)]
pub struct Credentials {
    pub socket: Option<PathBuf>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("socket", &self.socket)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl Credentials {
    /// Where we connect, for messages (never includes the password).
    pub fn target(&self) -> String {
        let user = self.user.as_deref().unwrap_or("(current user)");
        match (&self.socket, &self.host) {
            (Some(s), _) => format!("{user} via socket {}", s.display()),
            (None, Some(h)) => format!("{user}@{h}:{}", self.port.unwrap_or(3306)),
            (None, None) => format!("{user}@localhost:{}", self.port.unwrap_or(3306)),
        }
    }
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

fn read_secret_file(path: &Path, key: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| {
            fail(
                Class::Config,
                format!("{key}: cannot read {}: {e}. Check the path and that dbsnap runs as a user who may read it", path.display()),
            )
        })
        .with_context(|| format!("reading {}", path.display()))
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o044 != 0 {
            tracing::warn!(
                "{} holds a password and is readable by group or others (mode {:o}): run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
}

/// The option-file groups dbsnap reads, as the MySQL and MariaDB clients read theirs:
/// `[client]`, `[client-server]` and its own `[dbsnap]`. Options are taken in the
/// order they appear in the files (whatever their group), the last one winning.
pub const OPTION_GROUPS: &[&str] = &["client", "client-server", "dbsnap"];

/// How deep `!include` may nest, as in the client library (deeper ones are skipped).
const MAX_INCLUDE_DEPTH: usize = 10;

/// One option from an option file, as `my_print_defaults` prints it (`--name=value`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionLine {
    pub name: String,
    /// `None` for an option without `=` (`skip-ssl`).
    pub value: Option<String>,
    /// The file it was read from (after `!include`).
    pub file: PathBuf,
}

/// One line of an option file, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionFileLine {
    Group(String),
    Option { name: String, value: Option<String> },
    Include(PathBuf),
    IncludeDir(PathBuf),
}

/// Parse option-file text the way the client library (mysys `my_default.c`) does:
/// `#` and `;` start comment lines, `#` outside quotes ends a value, one pair of
/// matching quotes around a value is removed, `\n \t \r \b \s \" \' \\` are
/// escapes, `!include FILE` and `!includedir DIR` are directives. An option before any
/// group, or a group header without `]`, is an error naming the line (the clients
/// refuse such a file too).
pub fn parse_option_text(text: &str) -> Result<Vec<OptionFileLine>, String> {
    let mut lines = Vec::new();
    let mut in_group = false;
    for (number, raw) in text.lines().enumerate() {
        let number = number + 1;
        let line = raw.trim_start_matches(is_option_space);
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(directive) = line.strip_prefix('!') {
            let directive = directive.trim_start_matches(is_option_space);
            for (keyword, dir) in [("includedir", true), ("include", false)] {
                let Some(rest) = directive.strip_prefix(keyword) else {
                    continue;
                };
                if !rest.is_empty() && !rest.starts_with(is_option_space) {
                    continue;
                }
                let target = rest.trim_matches(is_option_space);
                if target.is_empty() {
                    return Err(format!("line {number}: !{keyword} names no file"));
                }
                let target = PathBuf::from(target);
                lines.push(match dir {
                    true => OptionFileLine::IncludeDir(target),
                    false => OptionFileLine::Include(target),
                });
                break;
            }
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let Some((name, _)) = header.split_once(']') else {
                return Err(format!(
                    "line {number}: the group header {:?} has no closing ]",
                    line.trim_end()
                ));
            };
            in_group = true;
            lines.push(OptionFileLine::Group(
                name.trim_end_matches(is_option_space).to_string(),
            ));
            continue;
        }
        if !in_group {
            return Err(format!(
                "line {number}: an option before any [group]; put it under [client]"
            ));
        }
        let line = without_end_comment(line);
        let (name, value) = match line.split_once('=') {
            Some((name, value)) => (name, Some(unescape_option_value(value))),
            None => (line, None),
        };
        let name = name.trim_end_matches(is_option_space);
        lines.push(OptionFileLine::Option {
            name: name.to_string(),
            value,
        });
    }
    Ok(lines)
}

/// The client library's idea of white space (latin1 `isspace`).
fn is_option_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// Cut a line at the first `#` outside quotes (an escaped quote inside quotes does
/// not end them).
fn without_end_comment(line: &str) -> &str {
    let mut quote = None;
    let mut escape = false;
    for (i, c) in line.char_indices() {
        if (c == '\'' || c == '"') && !escape {
            match quote {
                None => quote = Some(c),
                Some(q) if q == c => quote = None,
                Some(_) => {}
            }
        }
        if quote.is_none() && c == '#' {
            return &line[..i];
        }
        escape = quote.is_some() && c == '\\' && !escape;
    }
    line
}

/// A value after `=`: trimmed, one pair of matching quotes removed, escapes applied.
fn unescape_option_value(value: &str) -> String {
    let mut value = value.trim_matches(is_option_space);
    let quoted = value.len() > 1
        && (value.starts_with('"') || value.starts_with('\''))
        && value.chars().last() == value.chars().next();
    if quoted {
        value = &value[1..value.len() - 1];
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(next) = chars.next() else {
            out.push(c);
            break;
        };
        match next {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            'b' => out.push('\x08'),
            's' => out.push(' '),
            '"' | '\'' | '\\' => out.push(next),
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
    out
}

/// The options of `groups` in an option file and the files it includes, in the order
/// the client library reads them (what `my_print_defaults --defaults-file=PATH GROUPS`
/// prints). A missing `!include` file is skipped as the clients skip it; a missing
/// `!includedir` directory is an error, as it is for them.
pub fn read_option_file(path: &Path, groups: &[&str]) -> anyhow::Result<Vec<OptionLine>> {
    let mut options = Vec::new();
    let text = std::fs::read_to_string(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {}: {e}. Check the path and that dbsnap runs as a user who may read it",
            path.display()
        )
    })?;
    read_option_text(path, &text, groups, 0, &mut options)?;
    Ok(options)
}

fn read_option_text(
    path: &Path,
    text: &str,
    groups: &[&str],
    depth: usize,
    options: &mut Vec<OptionLine>,
) -> anyhow::Result<()> {
    let lines = parse_option_text(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut wanted = false;
    for line in lines {
        match line {
            OptionFileLine::Group(name) => {
                wanted = groups.iter().any(|g| g.eq_ignore_ascii_case(&name));
            }
            OptionFileLine::Option { name, value } if wanted => options.push(OptionLine {
                name,
                value,
                file: path.to_path_buf(),
            }),
            OptionFileLine::Option { .. } => {}
            OptionFileLine::Include(file) if depth < MAX_INCLUDE_DEPTH => {
                // The client library skips a file it cannot open.
                if let Ok(text) = std::fs::read_to_string(&file) {
                    read_option_text(&file, &text, groups, depth + 1, options)?;
                }
            }
            OptionFileLine::IncludeDir(dir) if depth < MAX_INCLUDE_DEPTH => {
                let entries = std::fs::read_dir(&dir).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: cannot read the !includedir directory {}: {e}",
                        path.display(),
                        dir.display()
                    )
                })?;
                let mut files: Vec<PathBuf> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "cnf"))
                    .collect();
                files.sort();
                for file in files {
                    if let Ok(text) = std::fs::read_to_string(&file) {
                        read_option_text(&file, &text, groups, depth + 1, options)?;
                    }
                }
            }
            OptionFileLine::Include(file) | OptionFileLine::IncludeDir(file) => {
                tracing::warn!(
                    "{}: skipping !include of {}: includes nest deeper than {MAX_INCLUDE_DEPTH}",
                    path.display(),
                    file.display()
                );
            }
        }
    }
    Ok(())
}

/// The connection settings among `options` (the last of each wins). Names are matched
/// as the clients match them: `_` and `-` alike, a `loose-` prefix ignored.
pub fn credentials_from_options(options: &[OptionLine]) -> Result<Credentials, String> {
    let mut creds = Credentials::default();
    for option in options {
        let name = option.name.replace('_', "-");
        let name = name.strip_prefix("loose-").unwrap_or(&name);
        let Some(value) = option.value.clone() else {
            continue;
        };
        match name {
            "user" => creds.user = Some(value),
            "password" => creds.password = Some(value),
            "socket" => creds.socket = Some(PathBuf::from(value)),
            "host" => creds.host = Some(value),
            "port" => {
                let port = value.trim().parse::<u16>().ok().filter(|p| *p > 0);
                creds.port = Some(port.ok_or_else(|| {
                    format!(
                        "{}: port = {value:?} is not a port number (1 to 65535)",
                        option.file.display()
                    )
                })?);
            }
            _ => {}
        }
    }
    Ok(creds)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[client]`, `[client-server]` and `[dbsnap]` settings of option-file text
    /// (without following `!include`).
    pub(super) fn parse_option_file_client(text: &str) -> Result<Credentials, String> {
        let mut options = Vec::new();
        read_option_text(
            Path::new("(option file)"),
            text,
            OPTION_GROUPS,
            MAX_INCLUDE_DEPTH,
            &mut options,
        )
        .map_err(|e| e.to_string())?;
        credentials_from_options(&options)
    }

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
    fn option_file_client_section() {
        let text = "[mysqld]\nuser = mysql\n[client]\nuser = backup\npassword = \"s3 cr#t\"\nsocket=/run/my.sock\nport = 3307\n[mysql]\nuser = other\n";
        let c = parse_option_file_client(text).unwrap();
        assert_eq!(c.user.as_deref(), Some("backup"));
        assert_eq!(c.password.as_deref(), Some("s3 cr#t"));
        assert_eq!(c.socket, Some(PathBuf::from("/run/my.sock")));
        assert_eq!(c.port, Some(3307));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = parse_option_file_client("[client]\npassword=hunter2\n").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
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

    fn refused(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_key_and_line() {
        let mysql = |line: &str| MINIMAL.replace("[mysql]", &format!("[mysql]\n{line}"));
        let cases: Vec<(String, &str, &str)> = vec![
            (
                mysql("max_lock_hold = \"0s\""),
                "mysql.max_lock_hold",
                "line 3",
            ),
            (
                mysql("lock_wait_timeout = \"18446744073709551615s\""),
                "mysql.lock_wait_timeout",
                "line 3",
            ),
            (
                mysql("lock_wait_timeout = \"366d\""),
                "mysql.lock_wait_timeout",
                "365d",
            ),
            (
                mysql("max_lock_hold = \"18446744073709551615s\""),
                "mysql.max_lock_hold",
                "line 3",
            ),
            (mysql("host = \"db1\""), "socket and host", "line 3"),
            (
                MINIMAL.replace(
                    "backend = \"btrfs\"",
                    "backend = \"btrfs\"\nwarn_free_percent = nan",
                ),
                "snapshot.warn_free_percent",
                "line 7",
            ),
            (
                MINIMAL.replace(
                    "backend = \"btrfs\"",
                    "backend = \"btrfs\"\nwarn_free_percent = inf",
                ),
                "snapshot.warn_free_percent",
                "line 7",
            ),
            (
                MINIMAL.replace(
                    "backend = \"btrfs\"",
                    "backend = \"btrfs\"\nmin_free_percent = -inf",
                ),
                "snapshot.min_free_percent",
                "line 7",
            ),
            (
                MINIMAL.replace(
                    "backend = \"btrfs\"",
                    "backend = \"btrfs\"\nmin_free_percent = 150",
                ),
                "snapshot.min_free_percent",
                "0 to below 100",
            ),
            (
                MINIMAL.replace(
                    "backend = \"btrfs\"",
                    "backend = \"btrfs\"\nwarn_free_percent = 1",
                ),
                "snapshot.warn_free_percent",
                "min_free_percent",
            ),
            (
                MINIMAL.replace("/srv/backups/db 1", "/"),
                "backup.dest",
                "line 9",
            ),
            (
                MINIMAL.replace("/srv/backups/db 1", "/.."),
                "backup.dest",
                "not /",
            ),
            (
                MINIMAL.replace("/srv/backups/db 1", "/srv/../"),
                "backup.dest",
                "\"..\"",
            ),
            (
                MINIMAL.replace("/srv/backups/db 1", "/srv/.dbsnap-snapshots/b"),
                "backup.dest",
                "snapshot directory",
            ),
            (
                MINIMAL.replace("/srv/backups/db 1", "/tank/data/.zfs/snapshot/x"),
                "backup.dest",
                "snapshot directory",
            ),
            (
                format!(
                    "{}\n[snapshot.btrfs]\nsnapshot_dir = \"/srv/snaps\"\n",
                    MINIMAL.replace("/srv/backups/db 1", "/srv/snaps/backups")
                ),
                "snapshot.btrfs.snapshot_dir",
                "line 9",
            ),
        ];
        for (text, key, detail) in cases {
            let err = refused(&text);
            assert!(err.contains(key), "names {key}: {err}\n{text}");
            assert!(err.contains(detail), "says {detail:?}: {err}\n{text}");
        }
    }

    #[test]
    fn durations_at_the_bounds_are_accepted() {
        let text = MINIMAL.replace(
            "[mysql]",
            "[mysql]\nlock_wait_timeout = \"365d\"\nmax_lock_hold = \"1ms\"",
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.mysql.lock_wait_timeout, MAX_DURATION);
    }

    #[test]
    fn option_file_values_are_read_as_the_clients_read_them() {
        let text = "# comment\n; comment\n[client]\npassword = \"x\" # comment\nuser = 'u\\'q'\n\
                    host = h1 ; not a comment\nport = 3307#c\n[mysqld]\nuser = mysql\n\
                    [client-server]\nsocket = \"/a b/s\\\"ock\"\n[dbsnap]\nuser = backup\n";
        let c = parse_option_file_client(text).unwrap();
        assert_eq!(c.password.as_deref(), Some("x"));
        assert_eq!(c.user.as_deref(), Some("backup"));
        assert_eq!(c.host.as_deref(), Some("h1 ; not a comment"));
        assert_eq!(c.port, Some(3307));
        assert_eq!(c.socket, Some(PathBuf::from("/a b/s\"ock")));
        let c = parse_option_file_client("[client]\nloose_password = \"t\\tb\\\\n\"\n").unwrap();
        assert_eq!(c.password.as_deref(), Some("t\tb\\n"));
    }

    #[test]
    fn option_file_errors_name_the_line() {
        for (text, expected) in [
            ("user = x\n[client]\n", "line 1"),
            ("[client]\n[mysql\nuser = x\n", "line 2"),
            ("[client]\nport = http\n", "port"),
            ("[client]\nport = 70000\n", "port"),
            ("[client]\n!include\n", "line 2"),
        ] {
            let err = parse_option_file_client(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    /// `my_print_defaults` (the client library's own reader, from mariadb-client)
    /// prints the options it reads; dbsnap must read the same ones, in the same order.
    fn my_print_defaults(file: &Path) -> Vec<String> {
        let out = std::process::Command::new("my_print_defaults")
            .arg(format!("--defaults-file={}", file.display()))
            .args(OPTION_GROUPS)
            .output()
            .expect("my_print_defaults (mariadb-client) is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn as_printed(options: &[OptionLine]) -> Vec<String> {
        options
            .iter()
            .map(|o| match &o.value {
                Some(v) => format!("--{}={v}", o.name),
                None => format!("--{}", o.name),
            })
            .collect()
    }

    #[test]
    fn option_files_parse_exactly_as_my_print_defaults_prints_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("conf.d")).unwrap();
        std::fs::write(d.join("conf.d/b.cnf"), "[client]\nport = 3308\n").unwrap();
        std::fs::write(d.join("conf.d/a.cnf"), "[dbsnap]\nport = 3309\n").unwrap();
        std::fs::write(d.join("conf.d/z.txt"), "[client]\nport = 1\n").unwrap();
        std::fs::write(d.join("extra.cnf"), "[client-server]\nhost = extra\n").unwrap();
        let files = [
            "[client]\npassword = \"x\" # comment\nuser = 'u\\'q'\nhost=h1 ; semi\nport = 3307#c\n",
            "[client]\nsocket = \"/a b/s\\\"ock\" trailing\npassword = 'a#b' # c\nuser = a\"b\n\
             password = ''\nhost = \"\nskip-ssl\npassword\n",
            "[Client]\nuser=A\n[ client ]\nuser=B\n[client ]\nuser=C\n[client]x\nuser=D\n\
             [mysqld]\nuser=mysql\n[client]\n  loose-user = E\npass_word = \"tab\\there\\\\n\"\n",
            "[dbsnap]\nuser = first\n[client]\nuser = second\n[dbsnap]\nuser = third\n",
            "[client]\nuser=u \\s\\b\\r\\q\\\\\nvalue=\"only open\nempty=\nx = \"a\" \"b\"\n= novalue\n",
            "!include /nonexistent.cnf\n[client]\n!includedir CONF_D\n!include EXTRA\n!includex /x\n\
             user = after\n",
        ];
        for (i, text) in files.iter().enumerate() {
            let text = text
                .replace("CONF_D", d.join("conf.d").to_str().unwrap())
                .replace("EXTRA", d.join("extra.cnf").to_str().unwrap());
            let file = d.join(format!("case{i}.cnf"));
            std::fs::write(&file, &text).unwrap();
            let ours = as_printed(&read_option_file(&file, OPTION_GROUPS).unwrap());
            assert_eq!(ours, my_print_defaults(&file), "case {i}:\n{text}");
        }
    }

    #[test]
    fn the_dbsnap_group_and_includes_supply_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("my.cnf");
        let extra = dir.path().join("secret.cnf");
        std::fs::write(
            &extra,
            "[client]\npassword = \"s3 cr#t\" # the backup user's\n",
        )
        .unwrap();
        std::fs::write(
            &main,
            format!(
                "[client]\nuser = root\n!include {}\n[dbsnap]\nuser = backup\n",
                extra.display()
            ),
        )
        .unwrap();
        let c = credentials_from_options(&read_option_file(&main, OPTION_GROUPS).unwrap()).unwrap();
        assert_eq!(c.user.as_deref(), Some("backup"));
        assert_eq!(c.password.as_deref(), Some("s3 cr#t"));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// An option value written so that the client library reads it back unchanged:
    /// quoted, with `\` and the quote escaped and line breaks as `\n` / `\r`.
    fn quote_option_value(value: &str) -> String {
        let mut out = String::from("\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

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

        #[test]
        fn any_option_file_text_parses_without_panicking(text in "(?s).{0,400}") {
            if let Ok(lines) = parse_option_text(&text) {
                let options: Vec<OptionLine> = lines
                    .into_iter()
                    .filter_map(|l| match l {
                        OptionFileLine::Option { name, value } => Some(OptionLine {
                            name,
                            value,
                            file: PathBuf::from("x.cnf"),
                        }),
                        _ => None,
                    })
                    .collect();
                let _ = credentials_from_options(&options);
            }
        }

        #[test]
        fn quoted_option_values_round_trip(
            user in "[^\u{0}]{0,30}",
            password in "[^\u{0}]{0,30}",
            comment in "[^\n\r]{0,20}",
        ) {
            let text = format!(
                "[client]\nuser = {} # {comment}\npassword={}\n",
                quote_option_value(&user),
                quote_option_value(&password)
            );
            let creds = super::tests::parse_option_file_client(&text).unwrap();
            prop_assert_eq!(creds.user.as_deref(), Some(user.as_str()));
            prop_assert_eq!(creds.password.as_deref(), Some(password.as_str()));
        }
    }
}
