//! The one place that turns `[backup] dest` into a destination.

use std::path::Path;

use super::local::LocalDir;
use super::restic::ResticRepo;
use super::Destination;
use crate::config::{BackupConfig, Config};
use crate::error::{fail, Class};

/// Open the destination `[backup]` names (state such as restic's cache lives in
/// `state_dir`). Nothing is touched yet: [`Destination::check`] says whether it can be
/// used.
pub fn open_backup(
    backup: &BackupConfig,
    state_dir: &Path,
) -> anyhow::Result<Box<dyn Destination>> {
    match backup.restic_repository() {
        Some(_) => Ok(Box::new(ResticRepo::open(backup, state_dir)?)),
        None => open(&backup.dest),
    }
}

/// The destination of the configuration's `[backup]` section (which must exist).
pub fn open_config(config: &Config) -> anyhow::Result<Box<dyn Destination>> {
    open_backup(config.backup()?, &config.state_dir)
}

/// Open the directory destination `dest` names.
pub fn open(dest: &Path) -> anyhow::Result<Box<dyn Destination>> {
    let text = dest.to_string_lossy();
    let scheme = ["ssh://", crate::config::RESTIC_SCHEME]
        .into_iter()
        .find(|s| text.starts_with(s));
    match scheme {
        Some(scheme) => Err(fail(
            Class::Config,
            format!(
                "[backup] dest = {text:?}: {scheme} destinations are not supported here; give a \
                 local directory"
            ),
        )),
        None => Ok(Box::new(LocalDir::new(dest))),
    }
}

/// The configured destination, if there is a `[backup]` section.
pub fn open_configured(config: &Config) -> anyhow::Result<Option<Box<dyn Destination>>> {
    config
        .backup
        .as_ref()
        .map(|b| open_backup(b, &config.state_dir))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_a_local_directory_and_other_schemes_are_refused_by_name() {
        let local = open(Path::new("/srv/backups")).unwrap();
        assert_eq!(local.location(), Path::new("/srv/backups"));
        let err = open(Path::new("ssh://db2/srv/backups")).err().unwrap();
        assert_eq!(crate::error::class_of(&err), Class::Config);
        assert!(err.to_string().contains("ssh://"), "{err}");
    }
}
