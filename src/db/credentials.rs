//! How dbsnap logs in: connection settings merged from a MySQL option file
//! (`[client]` of my.cnf), a password file and the configuration. The password never
//! appears in argv, logs or records.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::error::{fail, Class};

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

pub fn read_secret_file(path: &Path, key: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| {
            fail(
                Class::Config,
                format!("{key}: cannot read {}: {e}. Check the path and that dbsnap runs as a user who may read it", path.display()),
            )
        })
        .with_context(|| format!("reading {}", path.display()))
}

pub fn warn_if_readable_by_others(path: &Path) {
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

/// The `[client]` section of a MySQL option file. Later values win, as in the client
/// libraries; quotes around values are removed; `!include` lines are not followed.
pub fn parse_option_file_client(text: &str) -> Credentials {
    let mut creds = Credentials::default();
    let mut in_client = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with(';')
            || line.starts_with('!')
        {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_client = section.trim() == "client";
            continue;
        }
        if !in_client {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().replace('_', "-");
        let value = unquote(value.trim()).to_string();
        match key.as_str() {
            "user" => creds.user = Some(value),
            "password" => creds.password = Some(value),
            "socket" => creds.socket = Some(PathBuf::from(value)),
            "host" => creds.host = Some(value),
            "port" => creds.port = value.parse().ok(),
            _ => {}
        }
    }
    creds
}

fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
            return &value[1..value.len() - 1];
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_file_client_section() {
        let text = "[mysqld]\nuser = mysql\n[client]\nuser = backup\npassword = \"s3 cr#t\"\nsocket=/run/my.sock\nport = 3307\n[mysql]\nuser = other\n";
        let c = parse_option_file_client(text);
        assert_eq!(c.user.as_deref(), Some("backup"));
        assert_eq!(c.password.as_deref(), Some("s3 cr#t"));
        assert_eq!(c.socket, Some(PathBuf::from("/run/my.sock")));
        assert_eq!(c.port, Some(3307));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = parse_option_file_client("[client]\npassword=hunter2\n");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
