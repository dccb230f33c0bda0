//! The environment restic gets: the storage credentials of `[backup.restic] env_file`
//! (never logged), and repository strings made safe to show.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{fail, Class};

/// Variables an env file may not set: the repository and its password come from the
/// configuration, so that no file other than `password_file` holds the password.
const RESERVED: &[&str] = &[
    "RESTIC_REPOSITORY",
    "RESTIC_REPOSITORY_FILE",
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_FILE",
    "RESTIC_PASSWORD_COMMAND",
    "RESTIC_CACHE_DIR",
];

/// `KEY=VALUE` lines (blank lines and `#` comments skipped, `export ` and quotes around
/// the value allowed). Values are never logged.
pub(super) fn read_env_file(path: &Path) -> anyhow::Result<Vec<(String, OsString)>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(
            Class::Config,
            format!(
                "backup.restic.env_file: cannot read {}: {e}",
                path.display()
            ),
        )
    })?;
    if let Ok(meta) = std::fs::metadata(path) {
        warn_if_loose(path, meta.permissions().mode(), "storage credentials");
    }
    let mut vars = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let bad = |why: &str| {
            fail(
                Class::Config,
                format!(
                    "backup.restic.env_file {} line {}: {why}",
                    path.display(),
                    n + 1
                ),
            )
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE"))?;
        let key = key.trim();
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(bad(&format!("{key:?} is not a variable name")));
        }
        if RESERVED.contains(&key) {
            return Err(bad(&format!(
                "{key} is set by dbsnap from [backup] dest and backup.restic.password_file; remove it"
            )));
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        vars.push((key.to_string(), OsString::from(value)));
    }
    Ok(vars)
}

pub(super) fn warn_if_loose(path: &Path, mode: u32, holds: &str) {
    if mode & 0o044 != 0 {
        tracing::warn!(
            "{} holds {holds} and is readable by group or others (mode {:o}): run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
}

/// A repository string with the password of a `user:password@` part masked
/// (`rest:https://user:secret@host/` → `rest:https://user:***@host/`).
pub fn redact(repository: &str) -> String {
    let Some(scheme_end) = repository.find("://") else {
        return repository.to_string();
    };
    let rest = &repository[scheme_end + 3..];
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => match userinfo.split_once(':') {
            Some((user, _)) => {
                let start = scheme_end + 3;
                format!(
                    "{}{user}:***{}",
                    &repository[..start],
                    &repository[start + userinfo.len()..]
                )
            }
            None => repository.to_string(),
        },
        None => repository.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_inside_repository_strings_are_masked() {
        assert_eq!(
            redact("rest:https://backup:s3cret@host:8000/db1"),
            "rest:https://backup:***@host:8000/db1"
        );
        assert_eq!(
            redact("sftp:user@host:/srv/restic"),
            "sftp:user@host:/srv/restic"
        );
        assert_eq!(redact("/srv/restic"), "/srv/restic");
    }

    #[test]
    fn an_env_file_sets_credentials_but_not_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        std::fs::write(
            &path,
            "# S3\nexport AWS_ACCESS_KEY_ID=AKIA\nAWS_SECRET_ACCESS_KEY=\"se cret\"\n\n",
        )
        .unwrap();
        let vars = read_env_file(&path).unwrap();
        assert_eq!(
            vars,
            vec![
                ("AWS_ACCESS_KEY_ID".to_string(), OsString::from("AKIA")),
                (
                    "AWS_SECRET_ACCESS_KEY".to_string(),
                    OsString::from("se cret")
                ),
            ]
        );
        std::fs::write(&path, "RESTIC_PASSWORD=x\n").unwrap();
        let err = read_env_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 1") && err.contains("RESTIC_PASSWORD"),
            "{err}"
        );
    }
}
