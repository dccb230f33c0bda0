//! One regular file: cloned (FICLONE) where source and destination share a
//! filesystem, else read in large chunks and written, holes kept; or, into a seeded
//! copy (of the previous backup, or of an interrupted run), compared block by block and
//! only the differing blocks written. Every byte the copy reads is hashed (BLAKE3, one
//! thread) as it passes, so each stored file has its checksum without a second read; a
//! clone, which reads nothing, is hashed by reading the source at the copy's pace.
//! Writeback starts as each chunk is written and is waited for a few chunks behind, so
//! the file's dirty data stays bounded and the flush at the end of the copy finds
//! little to do.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use super::Shared;

/// Bytes per read and per writeback window.
pub const CHUNK: u64 = 8 << 20;

/// A read buffer for a file of `len` bytes: no bigger than the file. (A chunk-sized
/// buffer for every file cost ~0.7 CPU s more per backup of a datadir with 2,214
/// files, measured: the allocator zeroes reused memory for each `vec!`.)
fn buffer_for(len: u64) -> Vec<u8> {
    vec![0u8; CHUNK.min(len) as usize]
}
/// How many chunks may be in writeback before the oldest is waited for.
const WRITEBACK_DEPTH: usize = 4;
/// The unit of comparison against a seeded copy (a multiple of InnoDB's 16 KiB page).
const BLOCK: usize = 64 << 10;

/// What copying one file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCopied {
    /// Bytes written to the destination (not counting clones and unchanged blocks).
    pub written: u64,
    /// Whether the file was cloned whole (shares its extents with the source).
    pub cloned: bool,
    /// The BLAKE3 digest of the source's contents, in hex.
    pub hash: String,
}

/// Copy the contents of `from` (of `len` bytes) into the new, empty file `to`.
pub fn copy_new(from: &File, to: &File, len: u64, shared: &Shared) -> io::Result<FileCopied> {
    if clone(from, to).is_ok() {
        return Ok(FileCopied {
            written: 0,
            cloned: true,
            hash: hash_source(from, len, shared)?,
        });
    }
    let mut writeback = Writeback::new(to);
    let mut written = 0;
    let hash = read_hashed(from, len, shared, |at, data| {
        to.write_all_at(data, at)?;
        writeback.written(at, data.len() as u64)?;
        written += data.len() as u64;
        Ok(())
    })?;
    // Trailing holes, and files that are one hole.
    to.set_len(len)?;
    writeback.finish()?;
    Ok(FileCopied {
        written,
        cloned: false,
        hash,
    })
}

/// The BLAKE3 digest of `from` (`len` bytes), read at the copy's pace: for a file the
/// copy did not read (a clone, or a hard link to a previous backup without a checksum).
pub fn hash_source(from: &File, len: u64, shared: &Shared) -> io::Result<String> {
    read_hashed(from, len, shared, |_, _| Ok(()))
}

/// Read `from`'s data (`len` bytes) in chunks at the copy's pace, skipping holes, hand
/// each chunk to `each` with its offset, and return the digest of the whole contents
/// (holes hashed as the zeros they read as). Progress counts holes as read.
fn read_hashed(
    from: &File,
    len: u64,
    shared: &Shared,
    mut each: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut buffer = buffer_for(len);
    let mut hashed = 0u64;
    let mut pos = 0u64;
    while let Some((start, end)) = next_data(from, pos, len)? {
        hash_zeros(&mut hasher, start - hashed, shared);
        hashed = start;
        let mut at = start;
        while at < end {
            let want = CHUNK.min(end - at) as usize;
            shared.take(want as u64)?;
            let n = from.read_at(&mut buffer[..want], at)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            each(at, &buffer[..n])?;
            at += n as u64;
            hashed = at;
            shared.progress_add(n as u64);
        }
        pos = end.max(at);
        if at < end {
            break;
        }
    }
    hash_zeros(&mut hasher, len.saturating_sub(hashed), shared);
    Ok(hasher.finalize().to_hex().to_string())
}

/// Hash `n` zero bytes (a hole), counted as progress.
fn hash_zeros(hasher: &mut blake3::Hasher, n: u64, shared: &Shared) {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut left = n;
    while left > 0 {
        let step = left.min(ZEROS.len() as u64);
        hasher.update(&ZEROS[..step as usize]);
        left -= step;
    }
    shared.progress_add(n);
}

/// Bring `seeded` (a reflink copy of the previous backup's file, so writing it never
/// touches that backup, or what an interrupted run wrote) to the contents of `from`
/// (`len` bytes): read both, write only the blocks that differ, hash what was read.
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
    let mut hasher = blake3::Hasher::new();
    let mut ours = buffer_for(len);
    let mut theirs = buffer_for(len);
    let mut written = 0;
    let mut pos = 0u64;
    while pos < len {
        let n = CHUNK.min(len - pos) as usize;
        shared.take(n as u64)?;
        from.read_exact_at(&mut ours[..n], pos)?;
        hasher.update(&ours[..n]);
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
        hash: hasher.finalize().to_hex().to_string(),
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
