//! What an ssh destination does to the files of a copy it holds: checksums checked
//! there, a backup pulled here, its manifest rewritten.

use std::path::Path;

use super::commands::{
    CHECK_CHECKSUMS, DELETE_FILES, READ_IF_THERE, REWRITE_MANIFEST, STORED_BYTES, STORE_CHECKSUMS,
};
use super::SshDir;
use crate::error::{fail, Class};
use crate::manifest::{Manifest, TransferStats};
use crate::transfer::checksums::{Checksums, CHECKSUMS_FILE};
use crate::transfer::rsync::{self, CopyItem};

impl SshDir {
    /// Store `checksums` in the partial and have the remote host recompute them from
    /// what it stored (`b3sum --check`). Files that differ are deleted from the
    /// partial, so that the next run, resuming it, sends them again.
    pub async fn check_checksums(
        &self,
        partial: &Path,
        checksums: &Checksums,
    ) -> anyhow::Result<()> {
        let dir = partial.to_string_lossy();
        let text = checksums.render();
        let stored = self
            .call(&STORE_CHECKSUMS, &[&dir], Some(text.as_bytes()))
            .await?;
        if !stored.status.success() {
            return Err(fail(
                Class::Destination,
                format!(
                    "storing the checksums in {} failed ({}): {}",
                    self.on_host(partial),
                    stored.status,
                    String::from_utf8_lossy(&stored.stderr).trim()
                ),
            ));
        }
        let out = self
            .call(&CHECK_CHECKSUMS, &[&dir], Some(text.as_bytes()))
            .await?;
        if out.status.success() {
            return Ok(());
        }
        let failed: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.rsplit_once(": FAILED").map(|(name, _)| name))
            .map(|name| match name.strip_prefix('\\') {
                Some(escaped) => crate::transfer::checksums::unescape(escaped),
                None => name.to_string(),
            })
            .collect();
        if failed.is_empty() || out.status.code() == Some(3) {
            return Err(fail(
                Class::Destination,
                format!(
                    "checking the checksums on {} failed ({}): {}",
                    self.target.display_host(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        let mut argv: Vec<&str> = vec![&dir];
        argv.extend(failed.iter().map(String::as_str));
        let _ = self.call(&DELETE_FILES, &argv, None).await;
        Err(fail(
            Class::Verify,
            format!(
                "the copy on {} differs from the snapshot in {} file(s) ({}): the backup was not \
                 published. Check the backup host's storage; the next run resends those files",
                self.target.display_host(),
                failed.len(),
                failed
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }

    /// rsync's view of this host: its `-e` and `user@host`.
    pub async fn rsync_remote(
        &self,
        side: rsync::Side,
        compress: Option<Option<u8>>,
    ) -> anyhow::Result<rsync::Remote> {
        Ok(rsync::Remote {
            shell: self.session.rsync_shell().await?,
            host: self.target.destination(),
            side,
            compress,
        })
    }

    /// Apparent size of the files under `path` there (`du`, for progress).
    pub async fn stored_bytes(&self, path: &Path) -> u64 {
        let p = path.to_string_lossy();
        let out = self.session.run(&STORED_BYTES.argv(&[&p]), "du").await;
        out.ok()
            .and_then(|o| o.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    }

    /// Copy the backup at `backup` (there) into the local directory `to`.
    pub async fn pull(
        &self,
        backup: &Path,
        to: &Path,
        progress: &(dyn Fn(u64) + Sync),
    ) -> anyhow::Result<TransferStats> {
        let remote = self.rsync_remote(rsync::Side::Source, None).await?;
        let item = CopyItem {
            from: backup.to_path_buf(),
            to: to.to_path_buf(),
            exclude: Vec::new(),
        };
        let options = rsync::Options {
            remote: Some(&remote),
            ..rsync::Options::default()
        };
        rsync::copy_with(&[item], options, progress, &|_, _| {}).await
    }

    /// Check the stored backup at `backup` against its checksums, there (`b3sum`, one
    /// command). Returns how many files were checked.
    pub async fn verify_checksums(&self, backup: &Path) -> anyhow::Result<usize> {
        let sums = self.read_checksums(backup).await?.ok_or_else(|| {
            fail(
                Class::Config,
                format!(
                    "the backup {} has no checksums file (it was made by a dbsnap without \
                     them, or by a stream method): use `dbsnap verify` without --checksums",
                    self.on_host(backup)
                ),
            )
        })?;
        let dir = backup.to_string_lossy();
        let text = sums.render();
        let out = self
            .call(&CHECK_CHECKSUMS, &[&dir], Some(text.as_bytes()))
            .await?;
        if out.status.success() {
            return Ok(sums.0.len());
        }
        Err(fail(
            Class::Verify,
            format!(
                "the backup {} does not match its checksums: {}{}",
                self.on_host(backup),
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .replace('\n', "; "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }

    /// Replace the manifest of the backup at `backup` there.
    pub async fn rewrite_manifest(&self, backup: &Path, manifest: &Manifest) -> anyhow::Result<()> {
        let text = toml::to_string_pretty(manifest)?;
        let dir = backup.to_string_lossy();
        let out = self
            .call(&REWRITE_MANIFEST, &[&dir], Some(text.as_bytes()))
            .await?;
        if !out.status.success() {
            anyhow::bail!(
                "writing the manifest of {} failed: {}",
                self.on_host(backup),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The checksums stored with the backup at `backup` (remote path), if it has them.
    pub async fn read_checksums(&self, backup: &Path) -> anyhow::Result<Option<Checksums>> {
        let path = backup.join(CHECKSUMS_FILE);
        let path = path.to_string_lossy();
        let out = self.call(&READ_IF_THERE, &[&path], None).await?;
        match out.status.code() {
            Some(0) => Checksums::parse(&String::from_utf8_lossy(&out.stdout)).map(Some),
            Some(3) => Ok(None),
            _ => Err(anyhow::anyhow!(
                "reading {} failed: {}",
                self.on_host(backup),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
}
