//! One regular file: cloned (FICLONE) where source and destination share a
//! filesystem, else copied in large chunks with `copy_file_range`, holes kept; or, into a
//! reflink-seeded copy of the previous backup, compared block by block and only the
//! differing blocks written. Writeback starts as each chunk is written and is waited
//! for a few chunks behind, so the file's dirty data stays bounded and the final
//! `fsync` (and the publish step's flush) finds little to do.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use super::Shared;

/// Bytes per `copy_file_range` call and per writeback window.
pub const CHUNK: u64 = 8 << 20;
/// How many chunks may be in writeback before the oldest is waited for.
const WRITEBACK_DEPTH: usize = 4;
/// The unit of comparison against a seeded copy (a multiple of InnoDB's 16 KiB page).
const BLOCK: usize = 64 << 10;

/// What copying one file did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FileCopied {
    /// Bytes written to the destination (not counting clones and unchanged blocks).
    pub written: u64,
    /// Whether the file was cloned whole (shares its extents with the source).
    pub cloned: bool,
}

/// Copy the contents of `from` (of `len` bytes) into the new, empty file `to`.
pub fn copy_new(from: &File, to: &File, len: u64, shared: &Shared) -> io::Result<FileCopied> {
    if clone(from, to).is_ok() {
        shared.progress_add(len);
        return Ok(FileCopied {
            written: 0,
            cloned: true,
        });
    }
    let mut writeback = Writeback::new(to);
    let mut kernel_copy = true;
    let mut buffer = Vec::new();
    let mut written = 0;
    let mut pos = 0u64;
    while let Some((start, end)) = next_data(from, pos, len)? {
        let mut at = start;
        while at < end {
            let want = CHUNK.min(end - at);
            shared.take(want)?;
            let n = match kernel_copy {
                true => match copy_range(from, to, at, want) {
                    Err(e) if in_kernel_copy_unsupported(&e) => {
                        kernel_copy = false;
                        continue;
                    }
                    other => other?,
                },
                false => {
                    buffer.resize(CHUNK as usize, 0);
                    let n = from.read_at(&mut buffer[..want as usize], at)?;
                    to.write_all_at(&buffer[..n], at)?;
                    n as u64
                }
            };
            if n == 0 {
                break;
            }
            writeback.written(at, n)?;
            written += n;
            at += n;
            shared.progress_add(n);
        }
        pos = end;
    }
    // Holes count as copied.
    shared.progress_add(len.saturating_sub(written));
    // Trailing holes, and files that are one hole.
    to.set_len(len)?;
    writeback.finish()?;
    Ok(FileCopied {
        written,
        cloned: false,
    })
}

/// `copy_file_range` of `len` bytes at `at`, in the kernel (no copy through user space).
fn copy_range(from: &File, to: &File, at: u64, len: u64) -> io::Result<u64> {
    let mut off_in = at as libc::loff_t;
    let mut off_out = at as libc::loff_t;
    // SAFETY: both descriptors are open; the offsets are ours for the call.
    let n = unsafe {
        libc::copy_file_range(
            from.as_raw_fd(),
            &mut off_in,
            to.as_raw_fd(),
            &mut off_out,
            len as usize,
            0,
        )
    };
    match n {
        n if n >= 0 => Ok(n as u64),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Errors that mean "this pair of filesystems cannot copy in the kernel" (since Linux
/// 5.19 most copies across filesystems are refused with EXDEV): read and write instead.
fn in_kernel_copy_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS)
    )
}

/// Bring `seeded` (a reflink copy of the previous backup's file, so writing it never
/// touches that backup) to the contents of `from` (`len` bytes): read both, write only
/// the blocks that differ.
pub fn update_seeded(
    from: &File,
    seeded: &File,
    len: u64,
    shared: &Shared,
) -> io::Result<FileCopied> {
    let old_len = seeded.metadata()?.len();
    if old_len > len {
        seeded.set_len(len)?;
    }
    let mut writeback = Writeback::new(seeded);
    let mut ours = vec![0u8; CHUNK as usize];
    let mut theirs = vec![0u8; CHUNK as usize];
    let mut written = 0;
    let mut pos = 0u64;
    while pos < len {
        let n = CHUNK.min(len - pos) as usize;
        shared.take(n as u64)?;
        from.read_exact_at(&mut ours[..n], pos)?;
        let have = old_len.saturating_sub(pos).min(n as u64) as usize;
        seeded.read_exact_at(&mut theirs[..have], pos)?;
        for start in (0..n).step_by(BLOCK) {
            let end = (start + BLOCK).min(n);
            if end <= have && ours[start..end] == theirs[start..end] {
                continue;
            }
            seeded.write_all_at(&ours[start..end], pos + start as u64)?;
            writeback.written(pos + start as u64, (end - start) as u64)?;
            written += (end - start) as u64;
        }
        shared.progress_add(n as u64);
        pos += n as u64;
    }
    writeback.finish()?;
    Ok(FileCopied {
        written,
        cloned: false,
    })
}

/// Share `from`'s extents with `to` (btrfs, XFS, same filesystem).
fn clone(from: &File, to: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both are open.
    let rc = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The next range of data at or after `pos`, skipping holes; `None` at the end.
fn next_data(file: &File, pos: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    if pos >= len {
        return Ok(None);
    }
    let start = match lseek(file, pos as i64, Whence::SeekData) {
        Ok(s) => s as u64,
        Err(nix::errno::Errno::ENXIO) => return Ok(None),
        // A filesystem without SEEK_DATA: all of it is data.
        Err(nix::errno::Errno::EINVAL) => return Ok(Some((pos, len))),
        Err(e) => return Err(e.into()),
    };
    let end = lseek(file, start as i64, Whence::SeekHole).map_err(io::Error::from)? as u64;
    Ok(Some((start, end.min(len))))
}

/// Writeback that follows the copy: each written range is handed to the disk at once
/// (`SYNC_FILE_RANGE_WRITE`, which does not wait), and the range written
/// [`WRITEBACK_DEPTH`] ranges earlier is waited for, so no more than that many chunks of
/// this file are ever dirty. `finish` waits for the rest.
struct Writeback<'a> {
    file: &'a File,
    pending: std::collections::VecDeque<(u64, u64)>,
}

impl<'a> Writeback<'a> {
    fn new(file: &'a File) -> Self {
        Writeback {
            file,
            pending: Default::default(),
        }
    }

    fn written(&mut self, offset: u64, len: u64) -> io::Result<()> {
        sync_range(self.file, offset, len, libc::SYNC_FILE_RANGE_WRITE)?;
        self.pending.push_back((offset, len));
        if self.pending.len() > WRITEBACK_DEPTH {
            let (o, l) = self.pending.pop_front().expect("not empty");
            sync_range(self.file, o, l, WAIT_FOR_RANGE)?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        while let Some((o, l)) = self.pending.pop_front() {
            sync_range(self.file, o, l, WAIT_FOR_RANGE)?;
        }
        Ok(())
    }
}

const WAIT_FOR_RANGE: libc::c_uint = libc::SYNC_FILE_RANGE_WAIT_BEFORE
    | libc::SYNC_FILE_RANGE_WRITE
    | libc::SYNC_FILE_RANGE_WAIT_AFTER;

fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: a plain syscall on an open descriptor.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags) };
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}
