//! `[backup.ssh]` and `[backup] compress`: how an `ssh://` destination is reached.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{BackupConfig, KeyProblem};

/// `[backup.ssh]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// The private key dbsnap authenticates with (ssh's `-i`); else ssh's defaults.
    pub identity_file: Option<PathBuf>,
    /// The known_hosts file the host key is checked against; else ssh's default.
    pub known_hosts: Option<PathBuf>,
    /// Extra ssh arguments, one argv element each (e.g. `["-o", "Ciphers=aes128-gcm@openssh.com"]`).
    #[serde(default)]
    pub options: Vec<String>,
}

/// `[backup] compress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Compress {
    On(bool),
    Level(u8),
}

impl Compress {
    /// The zlib level to compress with on the wire, if any (`Some(None)`: rsync's
    /// default level).
    pub fn level(compress: Option<Compress>) -> Option<Option<u8>> {
        match compress {
            None | Some(Compress::On(false)) => None,
            Some(Compress::On(true)) => Some(None),
            Some(Compress::Level(l)) => Some(Some(l)),
        }
    }
}

/// An `ssh://` destination parses and its settings can work; every path it names goes
/// to `paths` (checked like the others), a local destination too.
pub(super) fn check<'a>(
    b: &'a BackupConfig,
    paths: &mut Vec<(&'static str, &'a Path)>,
) -> Result<(), KeyProblem> {
    match crate::ssh::is_ssh(&b.dest) {
        true => {
            crate::ssh::SshTarget::parse(&b.dest.to_string_lossy())
                .map_err(|e| KeyProblem::new("backup.dest", format!("backup.dest = {e}")))?;
            crate::ssh::session::validate_options(&b.ssh.options)
                .map_err(|e| KeyProblem::new("backup.ssh.options", e))?;
        }
        false => paths.push(("backup.dest", &b.dest)),
    }
    let ssh_paths = [
        ("backup.ssh.identity_file", &b.ssh.identity_file),
        ("backup.ssh.known_hosts", &b.ssh.known_hosts),
    ];
    for (key, path) in ssh_paths {
        if let Some(p) = path {
            if p.to_string_lossy().contains(['"', '\'']) {
                return Err(KeyProblem::new(
                        key,
                        format!("{key} = {p:?}: ssh cannot be given a path holding a quote character; rename the file"),
                    ));
            }
            paths.push((key, p));
        }
    }
    if let Some(Compress::Level(l)) = b.compress {
        if !(1..=9).contains(&l) {
            return Err(KeyProblem::new(
                "backup.compress",
                format!("backup.compress = {l}: give true, false or a level 1-9"),
            ));
        }
    }
    Ok(())
}
