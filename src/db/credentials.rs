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
