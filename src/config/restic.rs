//! `[backup.restic]`: how to reach a restic repository named by `dest = "restic:..."`,
//! and what of it is refused before anything runs.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{check_path, BackupConfig, KeyProblem};

/// The prefix of a `dest` that names a restic repository.
pub const RESTIC_SCHEME: &str = "restic:";

/// `[backup.restic]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResticConfig {
    /// The repository's password, handed to restic only as `RESTIC_PASSWORD_FILE`.
    pub password_file: PathBuf,
    /// Storage credentials (`KEY=VALUE` lines, e.g. `AWS_ACCESS_KEY_ID=...`), set only
    /// in restic's environment.
    pub env_file: Option<PathBuf>,
    /// The host name restic records (default: this host's name).
    pub host: Option<String>,
    /// Extra tags on every snapshot dbsnap writes.
    #[serde(default)]
    pub tags: Vec<String>,
    /// `restic check --read-data-subset` for `dbsnap verify` (e.g. "5%"); none: only
    /// the structure is checked, the throwaway server reads every restored byte.
    pub check_read_data_subset: Option<String>,
    /// restic's extended options, each passed as `-o KEY=VALUE` (e.g.
    /// `sftp.command=ssh -F /etc/dbsnap/ssh_config backup-host -s sftp`). They are in
    /// argv: no secrets here (those go in `env_file`).
    #[serde(default)]
    pub options: Vec<String>,
}

impl BackupConfig {
    /// The repository string of a `restic:` destination.
    pub fn restic_repository(&self) -> Option<String> {
        self.dest
            .to_str()
            .and_then(|d| d.strip_prefix(RESTIC_SCHEME))
            .map(str::to_string)
    }
}

/// A `restic:` destination needs `[backup.restic]` with a password file; its tags must
/// be ones restic can store (no commas) and not look like dbsnap's own.
/// The restic side of `[backup]`: a `restic:` dest is validated here; any other dest is
/// returned, a path for the caller to check (and then `[backup.restic]` is refused).
pub(super) fn check(backup: &BackupConfig) -> Result<Option<&Path>, KeyProblem> {
    match (backup.restic_repository(), &backup.restic) {
        (Some(repository), restic) => validate_restic(&repository, restic.as_ref()).map(|()| None),
        (None, Some(_)) => Err(KeyProblem::new(
            "backup.restic",
            format!(
                "[backup.restic] is set but backup.dest = {:?} is not a restic repository: write \
                 dest = \"restic:<repository>\" or remove [backup.restic]",
                backup.dest
            ),
        )),
        (None, None) => Ok(Some(&backup.dest)),
    }
}

fn validate_restic(repository: &str, restic: Option<&ResticConfig>) -> Result<(), KeyProblem> {
    if repository.is_empty() || repository.chars().any(char::is_control) {
        return Err(KeyProblem::new("backup.dest", format!(
            "backup.dest = \"restic:{repository}\": name the repository after `restic:` \
             (no control characters), e.g. \"restic:/srv/restic\" or \"restic:sftp:host:/srv/restic\""
        )));
    }
    let Some(restic) = restic else {
        return Err(KeyProblem::new(
            "backup.dest",
            "backup.dest names a restic repository but there is no [backup.restic] section: add \
             one with password_file = \"/etc/dbsnap/restic-password\"",
        ));
    };
    check_path("backup.restic.password_file", &restic.password_file)?;
    if let Some(env) = &restic.env_file {
        check_path("backup.restic.env_file", env)?;
    }
    for tag in &restic.tags {
        if tag.is_empty() || tag.contains(',') || tag.chars().any(char::is_control) {
            return Err(KeyProblem::new(
                "backup.restic.tags",
                format!(
                "backup.restic.tags: {tag:?} cannot be a restic tag (empty, a comma or a control \
                 character); choose another"
            ),
            ));
        }
        if tag.starts_with("dbsnap") {
            return Err(KeyProblem::new(
                "backup.restic.tags",
                format!(
                "backup.restic.tags: {tag:?} starts with \"dbsnap\", which dbsnap's own tags use; \
                 choose another"
            ),
            ));
        }
    }
    for option in &restic.options {
        let valid = option
            .split_once('=')
            .is_some_and(|(k, _)| !k.is_empty() && k.contains('.') && !k.starts_with('-'));
        if !valid || option.chars().any(char::is_control) {
            return Err(KeyProblem::new("backup.restic.options", format!(
                "backup.restic.options: {option:?} is not a restic option: write \
                 \"BACKEND.NAME=VALUE\", e.g. \"sftp.command=ssh -F /etc/dbsnap/ssh_config host -s sftp\""
            )));
        }
    }
    if let Some(host) = &restic.host {
        if host.is_empty() || host.chars().any(char::is_control) {
            return Err(KeyProblem::new(
                "backup.restic.host",
                format!("backup.restic.host = {host:?} must be a non-empty host name"),
            ));
        }
    }
    if let Some(subset) = &restic.check_read_data_subset {
        let valid = subset
            .strip_suffix('%')
            .and_then(|p| p.parse::<f64>().ok())
            .is_some_and(|p| p > 0.0 && p <= 100.0)
            || subset
                .split_once('/')
                .is_some_and(|(n, t)| n.parse::<u32>().is_ok() && t.parse::<u32>().is_ok());
        if !valid {
            return Err(KeyProblem::new(
                "backup.restic.check_read_data_subset",
                format!(
                "backup.restic.check_read_data_subset = {subset:?}: give a percentage (\"5%\") \
                 or a part (\"1/10\")"
            ),
            ));
        }
    }
    Ok(())
}
