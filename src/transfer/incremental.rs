//! Incremental copies: start the new backup from the previous one, so rsync writes only
//! what changed. Whatever happens, the previous backup is never modified:
//!
//! - where the destination filesystem has reflinks (btrfs, XFS), the new backup is
//!   seeded with a reflink copy of the previous one and rsync rewrites changed blocks in
//!   place; shared extents are copied on write, so the old backup keeps its data;
//! - elsewhere, unchanged files become hard links into the previous backup
//!   (`rsync --link-dest`) and changed files are written whole, never in place.

use std::path::{Path, PathBuf};

use anyhow::Context;
use dbsnap_backend_api::command::Cmd;

use crate::destination::{Backup, BaseOf, Destination};
use crate::manifest::{TransferMethod, FILES_DIR};
use crate::transfer::rsync::{CopyItem, Writes};
use crate::transfer::tree::Engine;

/// How the new copy relates to the previous backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Basis {
    /// No usable previous backup, or incremental copies are off.
    Full,
    /// Seeded with a reflink copy of the backup `base`; rsync updates blocks in place.
    Reflinked { base: String },
    /// Unchanged files are hard links into the backup at `base`.
    Linked { base: String, path: PathBuf },
}

impl Basis {
    /// The transfer method recorded in the manifest, for rsync.
    pub fn method(&self) -> TransferMethod {
        self.method_with(Engine::Rsync)
    }

    /// The transfer method recorded in the manifest, for the engine that copies.
    pub fn method_with(&self, engine: Engine) -> TransferMethod {
        match (engine, self) {
            (Engine::Rsync, Basis::Full) => TransferMethod::Rsync,
            (Engine::Rsync, Basis::Reflinked { .. }) => TransferMethod::RsyncReflink,
            (Engine::Rsync, Basis::Linked { .. }) => TransferMethod::RsyncLinkDest,
            (Engine::Local, Basis::Full) => TransferMethod::Copy,
            (Engine::Local, Basis::Reflinked { .. }) => TransferMethod::CopyReflink,
            (Engine::Local, Basis::Linked { .. }) => TransferMethod::CopyLinkDest,
        }
    }

    /// How rsync writes: in place into a reflink-seeded copy, else whole files.
    pub fn writes(&self) -> Writes {
        match self {
            Basis::Reflinked { .. } => Writes::InPlace,
            Basis::Full | Basis::Linked { .. } => Writes::Whole,
        }
    }

    /// For a hard-link basis, the previous backup's copy of each item in `partial`.
    pub fn link_dest(&self, items: &[CopyItem], partial: &Path) -> Option<Vec<PathBuf>> {
        let Basis::Linked { path, .. } = self else {
            return None;
        };
        Some(
            items
                .iter()
                .map(|i| {
                    path.join(
                        i.to.strip_prefix(partial)
                            .expect("items are inside the partial directory"),
                    )
                })
                .collect(),
        )
    }

    pub fn base(&self) -> Option<String> {
        match self {
            Basis::Full => None,
            Basis::Reflinked { base } | Basis::Linked { base, .. } => Some(base.clone()),
        }
    }
}

/// Decide the basis for a new backup in `partial` and, for a reflink basis, seed it.
/// The base is the newest complete rsync backup of the same datadir (a backup
/// received from a native stream has no `files/` to build on).
pub async fn prepare(
    dest: &dyn Destination,
    partial: &Path,
    datadir: &Path,
) -> anyhow::Result<Basis> {
    let Some(Backup {
        name: base,
        path: previous,
        ..
    }) = dest.newest_base(datadir, BaseOf::Files).await?
    else {
        return Ok(Basis::Full);
    };
    if reflinks_work(&previous, partial).await {
        let seeded = Cmd::new("cp")
            .args(["-a", "--reflink=always"])
            .arg(previous.join(FILES_DIR))
            .arg(partial.join(FILES_DIR))
            .timeout(std::time::Duration::from_secs(3600))
            .run()
            .await;
        match seeded {
            Ok(_) => return Ok(Basis::Reflinked { base }),
            Err(e) => {
                tracing::warn!("seeding from {base} with reflinks failed ({e}); hard-linking unchanged files instead");
                let files = partial.join(FILES_DIR);
                if files.exists() {
                    std::fs::remove_dir_all(&files)
                        .with_context(|| format!("removing {}", files.display()))?;
                }
            }
        }
    } else {
        tracing::info!(
            "the destination cannot reflink (it is not btrfs or XFS, or not the same filesystem as {base}): \
             unchanged files are hard-linked, changed files are copied whole"
        );
    }
    Ok(Basis::Linked {
        base,
        path: previous,
    })
}

/// Whether a file of `previous` can be reflinked into `partial` (same filesystem, and
/// one that supports it). Reads the previous backup, writes only into `partial`.
async fn reflinks_work(previous: &Path, partial: &Path) -> bool {
    let probe = partial.join(".reflink-probe");
    let ok = Cmd::new("cp")
        .arg("--reflink=always")
        .arg(previous.join(crate::manifest::MANIFEST_FILE))
        .arg(&probe)
        .run()
        .await
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_bases() {
        assert_eq!(Basis::Full.method().as_str(), "rsync");
        assert_eq!(Basis::Full.base(), None);
        let r = Basis::Reflinked {
            base: "20261125T000000Z".into(),
        };
        assert_eq!(
            (r.method().as_str(), r.base().as_deref()),
            ("rsync+reflink", Some("20261125T000000Z"))
        );
    }

    #[test]
    fn link_dest_points_at_the_previous_copy_of_each_item() {
        let basis = Basis::Linked {
            base: "a".into(),
            path: "/b/a".into(),
        };
        let item = CopyItem {
            from: "/snap/x".into(),
            to: "/b/n.partial/files/var/lib/mysql".into(),
            exclude: vec![],
        };
        let dests = basis.link_dest(&[item], Path::new("/b/n.partial")).unwrap();
        assert_eq!(dests, vec![PathBuf::from("/b/a/files/var/lib/mysql")]);
        assert_eq!(basis.writes(), Writes::Whole);
        assert_eq!(
            Basis::Reflinked { base: "a".into() }.writes(),
            Writes::InPlace
        );
    }
}
