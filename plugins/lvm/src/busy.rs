//! Who keeps a block device open, for the message when `lvremove` keeps failing: its
//! mounts (in this and in other mount namespaces), the devices stacked on it, processes
//! with the device or a file of its filesystem open, mapped, or as their directory, and
//! a filesystem the kernel still has on it when nothing of that is visible.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use dbsnap_backend_api::mounts::{parse_mountinfo, read_mount_table};

/// What holds `major:minor`, as one sentence that says what to do.
pub fn diagnose(major: u32, minor: u32) -> String {
    let device = format!("{major}:{minor}");
    let mut found = Vec::new();
    if let Ok(table) = read_mount_table() {
        for m in table.iter().filter(|m| m.device == device) {
            found.push(format!("mounted at {}", m.mount_point.display()));
        }
    }
    let sys = PathBuf::from(format!("/sys/dev/block/{device}"));
    if let Ok(entries) = std::fs::read_dir(sys.join("holders")) {
        for entry in entries.flatten() {
            found.push(format!(
                "used by device {}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found.extend(processes_holding(major, minor));
    if found.is_empty() {
        return match live_filesystem(&sys) {
            Some(fs) => format!(
                "No mount, device or process visible here holds it, but the kernel still has \
                 its filesystem ({fs}); retry `dbsnap cleanup` in a minute."
            ),
            None => "Nothing visible holds it; retry `dbsnap cleanup` later.".into(),
        };
    }
    // Open files but no mount: the mount was detached (`umount -l`), as dmeventd does
    // with an invalidated snapshot, and the filesystem lives until the files close.
    let detached = match found.iter().any(|f| f.starts_with("mounted at")) {
        true => "",
        false => {
            " (no mount of it is left: it was unmounted lazily, as dmeventd does with an \
             invalidated snapshot, and its filesystem lives on until those files are closed)"
        }
    };
    format!(
        "It is {}{detached}; stop that, then run `dbsnap cleanup`.",
        found.join(", ")
    )
}

/// The block device number `major:minor` as `stat` reports it (glibc's `makedev`).
fn dev_number(major: u32, minor: u32) -> u64 {
    let (major, minor) = (u64::from(major), u64::from(minor));
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

/// Every process that holds the device: its mounts in another mount namespace, the
/// device node or a file of its filesystem open, mapped, or as working or root
/// directory.
fn processes_holding(major: u32, minor: u32) -> Vec<String> {
    let dev = dev_number(major, minor);
    let device = format!("{major}:{minor}");
    let maps_device = format!(" {major:02x}:{minor:02x} ");
    let own_namespace = std::fs::read_link("/proc/self/ns/mnt").ok();
    let mut namespaces_seen = HashSet::new();
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for process in procs.flatten() {
        let pid = process.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = process.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let who = format!("process {pid} ({})", comm.trim());
        if let Ok(namespace) = std::fs::read_link(dir.join("ns/mnt")) {
            if Some(&namespace) != own_namespace.as_ref() && namespaces_seen.insert(namespace) {
                let mountinfo = std::fs::read_to_string(dir.join("mountinfo")).unwrap_or_default();
                for m in parse_mountinfo(&mountinfo)
                    .iter()
                    .filter(|m| m.device == device)
                {
                    found.push(format!(
                        "mounted at {} in the mount namespace of {who}",
                        m.mount_point.display()
                    ));
                }
            }
        }
        let is_ours = |path: &Path| {
            std::fs::metadata(path).is_ok_and(|m| {
                m.dev() == dev || (m.file_type().is_block_device() && m.rdev() == dev)
            })
        };
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            for fd in fds.flatten().filter(|fd| is_ours(&fd.path())) {
                let target = std::fs::read_link(fd.path()).unwrap_or_default();
                found.push(format!("open in {who} ({})", target.display()));
            }
        }
        for place in ["cwd", "root"] {
            if is_ours(&dir.join(place)) {
                found.push(format!("the {place} of {who}"));
            }
        }
        let maps = std::fs::read_to_string(dir.join("maps")).unwrap_or_default();
        if maps.lines().any(|l| l.contains(&maps_device)) {
            found.push(format!("mapped into {who}"));
        }
    }
    found
}

/// `/sys/fs/<type>/<kernel name>` of the device, if a filesystem has one: the kernel
/// keeps it while the filesystem lives, mounted or not (LVM reports such a device as
/// "contains a filesystem in use").
fn live_filesystem(sys_dev: &Path) -> Option<String> {
    let kernel_name = std::fs::read_link(sys_dev).ok()?.file_name()?.to_owned();
    std::fs::read_dir("/sys/fs")
        .ok()?
        .flatten()
        .map(|fs| fs.path().join(&kernel_name))
        .find(|p| p.exists())
        .map(|p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_are_encoded_as_stat_reports_them() {
        assert_eq!(dev_number(253, 3), 0xfd03);
        assert_eq!(dev_number(259, 300), 0x11_032c);
    }

    #[test]
    fn a_process_with_a_file_of_the_filesystem_open_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held");
        let held = std::fs::File::create(&path).unwrap();
        let dev = held.metadata().unwrap().dev();
        let major = (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32;
        let minor = (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32;
        let found = processes_holding(major, minor);
        let me = format!("open in process {} ", std::process::id());
        assert!(
            found
                .iter()
                .any(|f| f.starts_with(&me) && f.contains(path.to_str().unwrap())),
            "{found:?}"
        );
    }
}
