//! A backup read back from its destination to be verified (`dbsnap verify`, `[backup]
//! verify`), wherever it is. A directory backup is read where it is; a repository's is
//! fetched into a staging directory first (journaled, removed after). A restore needs
//! none of this: restic restores straight into the new directories
//! (`restore::Origin::Repository`).

use std::path::Path;

use crate::destination::{Backup, Destination};
use crate::journal::Journal;
use crate::manifest::Manifest;

/// Where a fetched copy is staged (a verification's scratch copy goes beside it).
fn staging_dir(state_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let dir = crate::destination::staging_dir(state_dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Check the destination's own storage, then recover the backup with a throwaway
/// server, and store the verdict with the backup. Returns its manifest with the verdict.
pub async fn verify(
    state_dir: &Path,
    dest: &dyn Destination,
    backup: &Backup,
    journal: &mut Journal,
) -> anyhow::Result<Manifest> {
    dest.check_storage(journal, &backup.name).await?;
    let fetched = dest
        .fetch(backup, &staging_dir(state_dir)?, journal)
        .await?;
    let outcome = crate::verify::verify(journal, &fetched.dir).await;
    let released = fetched.release(journal);
    let mut verified = outcome?;
    released?;
    verified.path = backup.path.clone();
    dest.record_verification(backup, &verified, journal).await?;
    Ok(verified)
}
