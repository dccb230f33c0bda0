//! The one place that turns `[backup] dest` into a destination.

use std::path::Path;

use super::local::LocalDir;
use super::Destination;
use crate::error::{fail, Class};

/// Open the destination `dest` names. Nothing is touched yet: [`Destination::check`]
/// says whether it can be used.
pub fn open(dest: &Path) -> anyhow::Result<Box<dyn Destination>> {
    let text = dest.to_string_lossy();
    let scheme = ["ssh://", "restic:"]
        .into_iter()
        .find(|s| text.starts_with(s));
    match scheme {
        Some(scheme) => Err(fail(
            Class::Config,
            format!(
                "[backup] dest = {text:?}: {scheme} destinations are not supported yet; give a \
                 local directory"
            ),
        )),
        None => Ok(Box::new(LocalDir::new(dest))),
    }
}

/// The configured destination, if there is a `[backup]` section.
pub fn open_configured(
    backup: Option<&crate::config::BackupConfig>,
) -> anyhow::Result<Option<Box<dyn Destination>>> {
    backup.map(|b| open(&b.dest)).transpose()
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
