//! Incremental copies: start the new backup from the previous one, so rsync writes only
//! what changed. Whatever happens, the previous backup is never modified:
//!
//! - where the destination filesystem has reflinks (btrfs, XFS), the new backup is
//!   seeded with a reflink copy of the previous one and rsync rewrites changed blocks in
//!   place; shared extents are copied on write, so the old backup keeps its data;
//! - elsewhere, unchanged files become hard links into the previous backup
//!   (`rsync --link-dest`) and changed files are written whole, never in place.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use dbsnap_backend_api::command::Cmd;

use crate::destination::ssh::commands::{REFLINK_FILE, REFLINK_TREE, REMOVE_FILE, REMOVE_TREE};
use crate::destination::ssh::SshDir;
use crate::destination::{Backup, BaseOf, Destination};
use crate::manifest::{TransferMethod, FILES_DIR};
use crate::transfer::rsync::{CopyItem, Writes};
use crate::transfer::tree::Engine;

/// How the new copy relates to the previous backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Basis {
    /// No usable previous backup, or incremental copies are off.
    Full,
    /// Seeded with a reflink copy of the backup `base` (at `path`); rsync updates
    /// blocks in place.
    Reflinked { base: String, path: PathBuf },
    /// Unchanged files are hard links into the backup at `base`.
    Linked { base: String, path: PathBuf },
}

impl Basis {
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
            Basis::Reflinked { base, .. } | Basis::Linked { base, .. } => Some(base.clone()),
        }
    }

    /// Where the base backup is (on the destination's host).
    pub fn base_path(&self) -> Option<&Path> {
        match self {
            Basis::Full => None,
            Basis::Reflinked { path, .. } | Basis::Linked { path, .. } => Some(path),
        }
    }
}

/// From when the copy must compare files by content rather than trust rsync's quick
/// check (see [`crate::transfer::rsync::Options::recheck_since`]): two seconds before the
/// earliest start of the base and of the resumed partial, whose names are their UTC start
/// times to the second (rsync compares whole seconds; the snapshot came after the start).
/// `None` for a fresh full copy: there is nothing to compare with. A name that is not a
/// time compares every file.
pub fn recheck_since(basis: &Basis, resumed_from: Option<&str>) -> Option<SystemTime> {
    let started = |name: &str| {
        name.get(..16)
            .and_then(|stamp| chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok())
            .map(|t| SystemTime::from(t.and_utc()) - Duration::from_secs(2))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    basis
        .base()
        .as_deref()
        .into_iter()
        .chain(resumed_from)
        .map(started)
        .min()
}

/// Decide the basis for a new backup in `partial` and, for a reflink basis, seed it.
/// The base is the newest complete file-tree backup of the same datadir (a backup
/// received from a native stream has no `files/` to build on). A partial taken over
/// from an interrupted run (`resumed`) is its own seed: what it lacks and is unchanged
/// is hard-linked from the base (the same rule as [`prepare_remote`]).
pub async fn prepare(
    dest: &dyn Destination,
    partial: &Path,
    datadir: &Path,
    resumed: bool,
) -> anyhow::Result<Basis> {
    let Some(Backup {
        name: base,
        path: previous,
        ..
    }) = dest.newest_base(datadir, BaseOf::Files).await?
    else {
        return Ok(Basis::Full);
    };
    if resumed {
        return Ok(Basis::Linked {
            base,
            path: previous,
        });
    }
    if reflinks_work(&previous, partial).await {
        let seeded = Cmd::new("cp")
            .args(["-a", "--reflink=always"])
            .arg(previous.join(FILES_DIR))
            .arg(partial.join(FILES_DIR))
            .timeout(std::time::Duration::from_secs(3600))
            .run()
            .await;
        match seeded {
            Ok(_) => {
                return Ok(Basis::Reflinked {
                    base,
                    path: previous,
                })
            }
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

/// [`prepare`] for a destination on another host: the seed is made there (`cp
/// --reflink=always` where its filesystem can, else `--link-dest` to the base). A
/// partial taken over from an interrupted run is its own seed: rsync sends only what
/// it lacks, and unchanged files missing from it are hard-linked from the base.
pub async fn prepare_remote(
    dest: &SshDir,
    partial: &Path,
    datadir: &Path,
    resumed: bool,
) -> anyhow::Result<Basis> {
    let Some(Backup {
        name: base,
        path: previous,
        ..
    }) = dest.newest_base(datadir, BaseOf::Files).await?
    else {
        return Ok(Basis::Full);
    };
    if resumed {
        return Ok(Basis::Linked {
            base,
            path: previous,
        });
    }
    let (from, to) = (previous.join(FILES_DIR), partial.join(FILES_DIR));
    let (from, to) = (from.to_string_lossy(), to.to_string_lossy());
    // One file first: `cp -a` would try (and fail) every file of the tree.
    let (probe_from, probe_to) = (
        previous.join(crate::manifest::MANIFEST_FILE),
        partial.join(".reflink-probe"),
    );
    let (probe_from, probe_to) = (probe_from.to_string_lossy(), probe_to.to_string_lossy());
    let probe = dest
        .session()
        .output(&REFLINK_FILE.argv(&[&probe_from, &probe_to]), None)
        .await?;
    let _ = dest
        .session()
        .output(&REMOVE_FILE.argv(&[&probe_to]), None)
        .await?;
    let seeded = match probe.status.success() {
        true => {
            dest.session()
                .output(&REFLINK_TREE.argv(&[&from, &to]), None)
                .await?
        }
        false => probe,
    };
    if seeded.status.success() {
        return Ok(Basis::Reflinked {
            base,
            path: previous,
        });
    }
    tracing::info!(
        "the destination on {} cannot reflink ({}): unchanged files are hard-linked, changed \
         files are sent as deltas and written whole",
        dest.target().display_host(),
        String::from_utf8_lossy(&seeded.stderr)
            .lines()
            .next()
            .unwrap_or_default()
    );
    dest.session()
        .run(&REMOVE_TREE.argv(&[&to]), "removing a failed reflink seed")
        .await?;
    Ok(Basis::Linked {
        base,
        path: previous,
    })
}

/// Whether files in `dir` can be reflinked into it (btrfs, XFS): the next incremental
/// is then seeded from a backup here by reflink. Writes two probe files, removed.
pub async fn reflinks_within(dir: &Path) -> bool {
    let (probe, copy) = (dir.join(".reflink-probe"), dir.join(".reflink-probe-copy"));
    let ok = std::fs::write(&probe, b"probe").is_ok()
        && Cmd::new("cp")
            .arg("--reflink=always")
            .arg(&probe)
            .arg(&copy)
            .run()
            .await
            .is_ok();
    let _ = std::fs::remove_file(&probe);
    let _ = std::fs::remove_file(&copy);
    ok
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
        assert_eq!(Basis::Full.method_with(Engine::Rsync).as_str(), "rsync");
        assert_eq!(Basis::Full.base(), None);
        let r = Basis::Reflinked {
            base: "20261125T000000Z".into(),
            path: "/b/20261125T000000Z".into(),
        };
        assert_eq!(
            (r.method_with(Engine::Rsync).as_str(), r.base().as_deref()),
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
            Basis::Reflinked {
                base: "a".into(),
                path: "/b/a".into()
            }
            .writes(),
            Writes::InPlace
        );
    }

    #[test]
    fn files_are_rechecked_from_two_seconds_before_the_earliest_start() {
        let at = |stamp: &str| {
            SystemTime::from(
                chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
                    .unwrap()
                    .and_utc(),
            ) - Duration::from_secs(2)
        };
        let linked = Basis::Linked {
            base: "20261125T000010Z".into(),
            path: "/b/20261125T000010Z".into(),
        };
        assert_eq!(recheck_since(&Basis::Full, None), None);
        assert_eq!(recheck_since(&linked, None), Some(at("20261125T000010Z")));
        assert_eq!(
            recheck_since(&linked, Some("20261126T000000Z.1")),
            Some(at("20261125T000010Z"))
        );
        assert_eq!(
            recheck_since(&Basis::Full, Some("20261126T000000Z")),
            Some(at("20261126T000000Z"))
        );
        assert_eq!(
            recheck_since(&Basis::Full, Some("not-a-time")),
            Some(SystemTime::UNIX_EPOCH)
        );
    }
}
