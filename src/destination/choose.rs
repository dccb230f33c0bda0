//! The one place that turns `[backup] dest` into a destination.

use std::path::Path;

use super::local::LocalDir;
use super::restic::ResticRepo;
use super::ssh::SshDir;
use super::Destination;
use crate::config::{BackupConfig, Config};
use crate::error::{fail, Class};
use crate::ssh::SshTarget;

/// Open the destination `backup.dest` names (`state_dir` holds what a remote one needs
/// locally: the ssh control socket). Nothing is touched yet: [`Destination::check`]
/// says whether it can be used.
pub fn open(backup: &BackupConfig, state_dir: &Path) -> anyhow::Result<Box<dyn Destination>> {
    let dest = &backup.dest;
    let text = dest.to_string_lossy();
    if text.starts_with(crate::ssh::url::SCHEME) {
        let target = SshTarget::parse(&text)
            .map_err(|e| fail(Class::Config, format!("[backup] dest = {e}")))?;
        return Ok(Box::new(SshDir::new(target, &backup.ssh, state_dir)));
    }
    if backup.restic_repository().is_some() {
        return Ok(Box::new(ResticRepo::open(backup, state_dir)?));
    }
    Ok(Box::new(LocalDir::new(dest)))
}

/// The configured destination, if there is a `[backup]` section.
pub fn open_configured(config: &Config) -> anyhow::Result<Option<Box<dyn Destination>>> {
    config
        .backup
        .as_ref()
        .map(|b| open(b, &config.state_dir))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(dest: &str) -> BackupConfig {
        let config = crate::config::Config::parse(&format!(
            "[mysql]\n[snapshot]\nbackend = \"btrfs\"\n[backup]\ndest = {dest:?}\n"
        ))
        .unwrap();
        config.backup.unwrap()
    }

    #[test]
    fn a_path_is_a_local_directory_an_ssh_url_a_remote_one() {
        let state = Path::new("/var/lib/dbsnap");
        let local = open(&backup("/srv/backups"), state).unwrap();
        assert_eq!(local.location(), Path::new("/srv/backups"));
        assert!(local.remote().is_none());
        let remote = open(&backup("ssh://b@db2:2222/srv/backups"), state).unwrap();
        assert_eq!(remote.remote().unwrap().target().host, "db2");
    }
}
