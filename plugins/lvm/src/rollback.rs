//! `rollback`: merge kept snapshots back into their origins (`lvconvert --merge`).
//!
//! A merge consumes the snapshot it merges. A set of thin snapshots is kept anyway: each
//! kept snapshot is renamed aside (`<name>-merge`), a thin snapshot of it takes over its
//! name and tags, and the renamed one is merged. That costs no space (thin snapshots share
//! blocks), and once the merge is done LVM makes the origin the new snapshot's origin, so
//! the set looks as before and can be rolled back again. (Merging a snapshot *of* the kept
//! snapshot instead would merge into the kept snapshot, not into the volume.)
//! A classic snapshot cannot be copied like that (it would need a second CoW area), so a
//! set with any classic snapshot is merged as it is and consumed as a whole: keeping only
//! its thin members would keep a set that no longer restores one consistent instant.
//!
//! LVM merges at once only when the origin is closed, otherwise on its next activation.
//! The caller has checked that no database server runs on the volumes, so the origin's
//! mounts are unmounted (never lazily) around the merge and mounted again at the same
//! places with the same type and options. When they cannot be unmounted (busy, e.g. `/`)
//! the merge is left pending and the outcome says how to complete it.

use std::path::Path;
use std::time::{Duration, Instant};

use dbsnap_backend_api::command::Cmd;
use dbsnap_backend_api::mounts::{read_mount_table, MountEntry};
use dbsnap_backend_api::{BackendError, Result, RollbackOutcome, SnapshotName, SnapshotSet};

use crate::lvs::{list_lvs, Lv, LvKind};
use crate::{device_path, is_ours, set_name_of, split_lv_id, volume_groups, TAG};

/// Appended to a kept thin snapshot's name while it is being merged. `list` never groups
/// such a name into a set (it does not end in `.<index>`), and `release` refuses it.
const ASIDE_SUFFIX: &str = "-merge";
/// A classic merge copies every changed chunk back while the origin stays unmounted;
/// `lvconvert` waits for it. On real disks that is minutes for tens of GiB.
const MERGE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// One volume of the set, checked and ready to merge.
#[derive(Debug, Clone, PartialEq)]
struct Member {
    vg: String,
    /// The kept snapshot's LV name.
    snapshot: String,
    /// The origin's LV name.
    origin: String,
    thin: bool,
    /// The origin's `major:minor` when active, to find its mounts.
    origin_device: Option<(u32, u32)>,
}

impl Member {
    fn origin_id(&self) -> String {
        format!("{}/{}", self.vg, self.origin)
    }

    fn snapshot_id(&self) -> String {
        format!("{}/{}", self.vg, self.snapshot)
    }

    fn aside(&self) -> String {
        format!("{}{ASIDE_SUFFIX}", self.snapshot)
    }
}

pub(crate) async fn rollback(set: &SnapshotSet) -> Result<RollbackOutcome> {
    // Hostile ids from a tampered record are refused before any command runs.
    for snap in &set.snapshots {
        check_ids(set, &snap.id, &snap.volume.id)?;
    }
    let lvs = list_lvs(&volume_groups(set)?).await?;
    let members = check(set, &lvs)?;
    let keep = members.iter().all(|m| m.thin);
    let mut pending = Vec::new();
    for (index, member) in members.iter().enumerate() {
        match roll_back_one(member, &set.name, keep).await {
            Ok(Some(text)) => pending.push(text),
            Ok(None) => {}
            Err(e) if index > 0 => {
                let done: Vec<String> = members[..index].iter().map(Member::origin_id).collect();
                return Err(BackendError::Invalid(format!(
                    "{e}. {} was rolled back already (merges cannot be undone), so the volumes \
                     now hold different instants: fix the cause and finish by hand with \
                     `lvconvert --merge {}`, or restore from a backup",
                    done.join(", "),
                    member.snapshot_id()
                )));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(RollbackOutcome {
        snapshots_kept: keep,
        pending: (!pending.is_empty()).then(|| pending.join("\n")),
    })
}

fn check_ids(set: &SnapshotSet, snapshot_id: &str, volume_id: &str) -> Result<()> {
    let (vg, name) = split_lv_id(snapshot_id)?;
    let (origin_vg, _) = split_lv_id(volume_id)?;
    if set_name_of(name).as_ref() != Some(&set.name) || origin_vg != vg {
        return Err(BackendError::Invalid(format!(
            "refusing to roll back to {snapshot_id}: it is not a dbsnap snapshot of {} in the \
             volume group of {volume_id}; nothing was rolled back",
            set.name
        )));
    }
    Ok(())
}

/// Check every volume of the set before anything changes: the kept snapshot exists, is
/// ours, is a snapshot of the recorded volume, is not in use, and (classic) is not invalid.
fn check(set: &SnapshotSet, lvs: &[Lv]) -> Result<Vec<Member>> {
    let find = |vg: &str, name: &str| lvs.iter().find(|lv| lv.vg == vg && lv.name == name);
    let refuse = |why: String| {
        BackendError::Invalid(format!(
            "cannot roll back to snapshot {}: {why}; nothing was rolled back",
            set.name
        ))
    };
    let mut members = Vec::new();
    for snap in &set.snapshots {
        check_ids(set, &snap.id, &snap.volume.id)?;
        let (vg, name) = split_lv_id(&snap.id)?;
        let (_, origin_name) = split_lv_id(&snap.volume.id)?;
        let aside = format!("{name}{ASIDE_SUFFIX}");
        let origin = find(vg, origin_name).ok_or_else(|| {
            refuse(format!(
                "its volume {} no longer exists (see `lvs {vg}`)",
                snap.volume.id
            ))
        })?;
        if origin.is_merge_pending_origin() {
            return Err(refuse(format!(
                "a merge into {} is pending already (an earlier rollback, or a merge started by \
                 hand); it completes on the volume's next activation: unmount it, then run \
                 `lvchange -an {}` and `lvchange -ay {}`, or reboot",
                snap.volume.id, snap.volume.id, snap.volume.id
            )));
        }
        let interrupted = || {
            refuse(format!(
                "an interrupted rollback left the kept snapshot as {vg}/{aside}. Put it back: \
                 `lvremove {vg}/{name}` (only if it exists and its origin is {aside}), then \
                 `lvrename {vg} {aside} {name}`"
            ))
        };
        let Some(lv) = find(vg, name) else {
            if find(vg, &aside).is_some() {
                return Err(interrupted());
            }
            return Err(refuse(format!(
                "{} no longer exists (see `lvs {vg}`)",
                snap.id
            )));
        };
        if !is_ours(lv) {
            return Err(refuse(format!(
                "{} lacks the `{TAG}` tag or is not a snapshot, so dbsnap did not create it",
                snap.id
            )));
        }
        if lv.origin.as_deref() != Some(origin_name) {
            if lv.origin.as_deref() == Some(aside.as_str()) {
                return Err(interrupted());
            }
            return Err(refuse(format!(
                "{} is a snapshot of {}, not of the recorded volume {}",
                snap.id,
                lv.origin.as_deref().unwrap_or("nothing"),
                snap.volume.id
            )));
        }
        if lv.is_open() {
            return Err(refuse(format!(
                "{} is in use (mounted, or open in a process); unmount it first. A snapshot \
                 mounted with `snapshot create --mount` cannot be rolled back to",
                snap.id
            )));
        }
        let thin = match lv.kind() {
            LvKind::Thin => {
                if find(vg, &aside).is_some() {
                    return Err(refuse(format!(
                        "{vg}/{aside} exists (left by an interrupted rollback?); check it and \
                         remove it (lvremove) first"
                    )));
                }
                true
            }
            LvKind::ClassicSnapshot => {
                if lv.is_invalid_snapshot() || lv.snap_percent.unwrap_or(0.0) >= 100.0 {
                    return Err(refuse(format!(
                        "classic snapshot {} overflowed its copy-on-write space and LVM \
                         invalidated it: its contents are lost, and merging it would destroy \
                         {}. Release it (dbsnap snapshot release {}) and restore from a backup",
                        snap.id, snap.volume.id, set.name
                    )));
                }
                false
            }
            LvKind::Plain | LvKind::Other => {
                return Err(refuse(format!(
                    "{} is neither a classic nor a thin snapshot (lv_attr {})",
                    snap.id, lv.attr
                )))
            }
        };
        members.push(Member {
            vg: vg.to_string(),
            snapshot: name.to_string(),
            origin: origin_name.to_string(),
            thin,
            origin_device: origin.device,
        });
    }
    Ok(members)
}

/// Merge one volume; `Some(instructions)` when the merge waits for the next activation.
async fn roll_back_one(m: &Member, set: &SnapshotName, keep: bool) -> Result<Option<String>> {
    let device = device_path(&m.vg, &m.origin);
    let mounts: Vec<MountEntry> = match m.origin_device {
        Some((major, minor)) => {
            let device = format!("{major}:{minor}");
            read_mount_table()?
                .into_iter()
                .filter(|e| e.device == device)
                .collect()
        }
        None => Vec::new(),
    };
    let merged = if keep {
        copy_aside(m, set).await?;
        m.aside()
    } else {
        m.snapshot.clone()
    };
    let merged_id = format!("{}/{merged}", m.vg);

    let started = Instant::now();
    let unmounted = unmount_all(&mounts, &device).await;
    let unmount_ms = started.elapsed().as_millis() as u64;
    let started = Instant::now();
    let merge = Cmd::new("lvconvert")
        .args(["--merge", "--interval", "1", &merged_id])
        .timeout(MERGE_TIMEOUT)
        .run()
        .await;
    let merge_ms = started.elapsed().as_millis() as u64;
    // Mount again before anything else can fail: never leave the volume unmounted.
    let started = Instant::now();
    let remounted = match &unmounted {
        Ok(()) => mount_all(&mounts, &device).await,
        Err(_) => Ok(()),
    };
    let remount_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        volume = %m.origin_id(),
        merged = %merged_id,
        unmount_ms,
        merge_ms,
        remount_ms,
        ok = merge.is_ok(),
        "merge"
    );

    let origin_lv = match merge {
        Ok(_) => list_lvs(std::slice::from_ref(&m.vg))
            .await?
            .into_iter()
            .find(|lv| lv.name == m.origin),
        Err(e) => {
            let mut text = format!("merging {merged_id} into {} failed: {e}", m.origin_id());
            if keep {
                if let Err(undo) = undo_copy_aside(m).await {
                    text.push_str(&format!(
                        ". Putting the kept snapshot back failed too ({undo}): run `lvremove \
                         {}` and `lvrename {} {} {}`",
                        m.snapshot_id(),
                        m.vg,
                        m.aside(),
                        m.snapshot
                    ));
                }
            }
            if let Err(not_mounted) = remounted {
                text.push_str(&format!(". {not_mounted}"));
            }
            return Err(BackendError::Invalid(text));
        }
    };
    remounted.map_err(|e| {
        BackendError::Invalid(format!("{} was rolled back, but {e}", m.origin_id()))
    })?;
    if !origin_lv.is_some_and(|lv| lv.is_merge_pending_origin()) {
        return Ok(None);
    }
    let why = match &unmounted {
        Err(reason) => reason.clone(),
        Ok(()) => "it is still open (a mount in another mount namespace, a container, or a \
                   process using the device)"
            .to_string(),
    };
    Ok(Some(pending_instructions(
        m, &merged_id, &why, &mounts, &device,
    )))
}

/// Give the kept snapshot's name and tags to a new thin snapshot of it, and move it aside
/// for the merge: the set keeps a snapshot under every recorded id.
async fn copy_aside(m: &Member, set: &SnapshotName) -> Result<()> {
    Cmd::new("lvrename")
        .args([&m.vg, &m.snapshot, &m.aside()])
        .run()
        .await?;
    let copied = Cmd::new("lvcreate")
        .args(["--snapshot", "--yes", "--name", &m.snapshot])
        .args(["--addtag", TAG, "--addtag", set.as_str()])
        .arg(format!("{}/{}", m.vg, m.aside()))
        .run()
        .await;
    if let Err(e) = copied {
        let back = Cmd::new("lvrename")
            .args([&m.vg, &m.aside(), &m.snapshot])
            .run()
            .await;
        return Err(BackendError::Invalid(match back {
            Ok(_) => format!(
                "copying the kept snapshot {} failed: {e}; nothing was rolled back",
                m.snapshot_id()
            ),
            Err(back) => format!(
                "copying the kept snapshot {} failed ({e}), and renaming it back from {} failed \
                 too ({back}): run `lvrename {} {} {}`",
                m.snapshot_id(),
                m.aside(),
                m.vg,
                m.aside(),
                m.snapshot
            ),
        }));
    }
    Ok(())
}

async fn undo_copy_aside(m: &Member) -> Result<()> {
    Cmd::new("lvremove")
        .args(["--yes", &m.snapshot_id()])
        .run()
        .await?;
    Cmd::new("lvrename")
        .args([&m.vg, &m.aside(), &m.snapshot])
        .run()
        .await?;
    Ok(())
}

/// Unmount every mount of the origin, the last mounted first (a nested mount before its
/// parent). If one is busy, mount again what was unmounted and say why.
async fn unmount_all(mounts: &[MountEntry], device: &Path) -> std::result::Result<(), String> {
    if let Some(bind) = mounts.iter().find(|m| m.fs_root != Path::new("/")) {
        return Err(format!(
            "{} shows only its subdirectory {}, a mount dbsnap does not recreate",
            bind.mount_point.display(),
            bind.fs_root.display()
        ));
    }
    for (done, entry) in mounts.iter().enumerate().rev() {
        if let Err(e) = Cmd::new("umount").arg(&entry.mount_point).run().await {
            let mut reason = format!("it cannot be unmounted: {e}");
            if let Err(back) = mount_all(&mounts[done + 1..], device).await {
                reason.push_str(&format!("; and {back}"));
            }
            return Err(reason);
        }
    }
    Ok(())
}

/// Mount each entry again at its place with its type and options. When the kernel refuses
/// an option it printed itself (some are report-only), the mount's own flags alone are
/// tried before giving up.
async fn mount_all(mounts: &[MountEntry], device: &Path) -> std::result::Result<(), String> {
    let mut failed = Vec::new();
    for entry in mounts {
        let full = mount_command(entry, device, &remount_options(entry));
        let Err(e) = full.run().await else {
            continue;
        };
        tracing::warn!(error = %e, "mounting with the filesystem's options failed; trying the mount's flags only");
        if mount_command(entry, device, &entry.options)
            .run()
            .await
            .is_err()
        {
            failed.push(format!(
                "{} ({e}): run `{}`",
                entry.mount_point.display(),
                full.display()
            ));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("mounting it again failed at {}", failed.join("; ")))
    }
}

fn mount_command(entry: &MountEntry, device: &Path, options: &str) -> Cmd {
    Cmd::new("mount")
        .args(["-t", &entry.fstype, "-o", options])
        .arg(device)
        .arg(&entry.mount_point)
}

/// The mount's flags (`rw,noatime`) followed by the filesystem's options, each once.
fn remount_options(entry: &MountEntry) -> String {
    let mut options: Vec<&str> = Vec::new();
    for option in entry
        .options
        .split(',')
        .chain(entry.super_options.split(','))
    {
        if !option.is_empty() && !options.contains(&option) {
            options.push(option);
        }
    }
    options.join(",")
}

fn pending_instructions(
    m: &Member,
    merged_id: &str,
    why: &str,
    mounts: &[MountEntry],
    device: &Path,
) -> String {
    let origin = m.origin_id();
    let mut steps: Vec<String> = mounts
        .iter()
        .rev()
        .map(|e| Cmd::new("umount").arg(&e.mount_point).display())
        .collect();
    steps.push(Cmd::new("lvchange").args(["-an", &origin]).display());
    steps.push(Cmd::new("lvchange").args(["-ay", &origin]).display());
    steps.extend(
        mounts
            .iter()
            .map(|e| mount_command(e, device, &remount_options(e)).display()),
    );
    format!(
        "the merge of {merged_id} into {origin} completes on the next activation of {origin}, \
         because {why}. Stop what uses it, then run: {} (or reboot). Do not start the database \
         server before that.",
        steps.join("; "),
        why = why.trim_end_matches('.')
    )
}

#[cfg(test)]
mod tests;
