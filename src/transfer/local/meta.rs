//! What `rsync --archive --numeric-ids --hard-links` keeps besides contents: owner and
//! group (by number), mode, modification and access times, symlinks as symlinks, device
//! and special files as such.

use std::fs::{File, FileTimes, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Owner, mode and times of `meta` onto the open file (or directory) `file`.
pub fn apply(file: &File, meta: &Metadata) -> io::Result<()> {
    chown_if_permitted(std::os::unix::fs::fchown(
        file,
        Some(meta.uid()),
        Some(meta.gid()),
    ))?;
    // After chown, which clears set-uid bits.
    file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    file.set_times(times(meta))
}

/// Owner and times of `meta` onto the symlink or special file at `path` (not
/// followed); the mode too, for a special file.
pub fn apply_at(path: &Path, meta: &Metadata) -> io::Result<()> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    chown_if_permitted(std::os::unix::fs::lchown(
        path,
        Some(meta.uid()),
        Some(meta.gid()),
    ))?;
    if !meta.file_type().is_symlink() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// A fifo, socket or device node like the one `meta` describes.
pub fn make_special(path: &Path, meta: &Metadata) -> io::Result<()> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    let kind = SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
    let mode = Mode::from_bits_truncate(meta.mode() & 0o7777);
    mknod(path, kind, mode, meta.rdev())?;
    apply_at(path, meta)
}

/// Whether `to` already holds what a previous backup had for a file with `meta`:
/// same size, modification time, mode and owner (rsync's quick check).
pub fn unchanged(meta: &Metadata, to: &Metadata) -> bool {
    to.is_file()
        && meta.len() == to.len()
        && meta.mtime() == to.mtime()
        && meta.mtime_nsec() == to.mtime_nsec()
        && meta.mode() == to.mode()
        && meta.uid() == to.uid()
        && meta.gid() == to.gid()
}

fn times(meta: &Metadata) -> FileTimes {
    let at = |secs: i64, nsecs: i64| match secs >= 0 {
        true => SystemTime::UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32),
        false => SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    };
    FileTimes::new()
        .set_accessed(at(meta.atime(), meta.atime_nsec()))
        .set_modified(at(meta.mtime(), meta.mtime_nsec()))
}

/// As `rsync --archive` run by an ordinary user: the owner is kept where permitted.
fn chown_if_permitted(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(()),
        other => other,
    }
}
