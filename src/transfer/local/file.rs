//! One regular file: cloned (FICLONE) where source and destination share a
//! filesystem, else read in large chunks and written, holes kept; or, into a seeded
//! copy (of the previous backup, or of an interrupted run), only the blocks that differ
//! written. Which blocks differ is found from the base's block digests where it has
//! them (only the source is read: the seed is a reflink copy of the base), else by
//! reading both and comparing. Every byte the copy reads is hashed (BLAKE3, one
//! thread) once as it passes, giving the file's checksum and its block digests (see
//! [`BlockHasher`]) without a second read; a clone, which reads nothing,
//! is hashed by reading the source at the copy's pace.
//! Writeback starts as each chunk is written and is waited for a few chunks behind, so
//! the file's dirty data stays bounded and the flush at the end of the copy finds
//! little to do.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use super::Shared;
use crate::transfer::blocks::{BlockHasher, FileBlocks, BLOCK_SIZE};

/// Bytes per read and per writeback window (a multiple of the block size).
pub const CHUNK: u64 = 8 << 20;

/// A read buffer for a file of `len` bytes: no bigger than the file. (A chunk-sized
/// buffer for every file cost ~0.7 CPU s more per backup of a datadir with 2,214
/// files, measured: the allocator zeroes reused memory for each `vec!`.)
fn buffer_for(len: u64) -> Vec<u8> {
    vec![0u8; CHUNK.min(len) as usize]
}
/// How many chunks may be in writeback before the oldest is waited for.
const WRITEBACK_DEPTH: usize = 4;

/// What copying one file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCopied {
    /// Bytes written to the destination (not counting clones and unchanged blocks).
    pub written: u64,
    /// Whether the file was cloned whole (shares its extents with the source).
    pub cloned: bool,
    /// The BLAKE3 digest of the source's contents, in hex.
    pub hash: String,
    /// Its block digests.
    pub blocks: FileBlocks,
    /// Bytes read from the seed to compare with (none where the base's digests said).
    pub seed_read: u64,
    /// Whether the base's block digests said which blocks changed.
    pub by_digest: bool,
    /// Bytes left unread: blocks whose extents are the parent snapshot's.
    pub unread: u64,
}

/// Copy the contents of `from` (of `len` bytes) into the new, empty file `to`.
pub fn copy_new(from: &File, to: &File, len: u64, shared: &Shared) -> io::Result<FileCopied> {
    if clone(from, to).is_ok() {
        let (hash, blocks) = hash_source(from, len, shared)?;
        return Ok(FileCopied {
            written: 0,
            cloned: true,
            hash,
            blocks,
            seed_read: 0,
            by_digest: false,
            unread: 0,
        });
    }
    let mut writeback = Writeback::new(to);
    let mut written = 0;
    let (hash, blocks) = read_hashed(from, len, shared, |at, data| {
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
        blocks,
        seed_read: 0,
        by_digest: false,
        unread: 0,
    })
}

/// The BLAKE3 digest and block digests of `from` (`len` bytes), read at the copy's
/// pace: for a file the copy did not read (a clone, or a hard link to a previous backup
/// without a checksum).
pub fn hash_source(from: &File, len: u64, shared: &Shared) -> io::Result<(String, FileBlocks)> {
    read_hashed(from, len, shared, |_, _| Ok(()))
}

/// Read `from`'s data (`len` bytes) in chunks at the copy's pace, skipping holes, hand
/// each chunk to `each` with its offset, and return the digests of the contents, whole
/// and per block (holes hashed as the zeros they read as). Progress counts holes as read.
fn read_hashed(
    from: &File,
    len: u64,
    shared: &Shared,
    mut each: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<(String, FileBlocks)> {
    let mut hasher = BlockHasher::new(len);
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
            shared.source_read(n as u64);
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
    hasher.finish()
}

/// Hash `n` zero bytes (a hole), counted as progress.
fn hash_zeros(hasher: &mut BlockHasher, n: u64, shared: &Shared) {
    hasher.zeros(n);
    shared.progress_add(n);
}

/// Bring `seeded` (a reflink copy of the previous backup's file, so writing it never
/// touches that backup, or what an interrupted run wrote) to the contents of `from`
/// (`len` bytes), writing only the blocks that differ, adjacent ones in one write.
/// With `base` (the previous backup's block digests of this file, which the seed is a
/// reflink copy of) only `from` is read: a block is unchanged if its digest is the
/// base's. Without, both are read and compared. With `base`, the blocks `unread` marks
/// (their extents are the parent snapshot's, see [`super::extents`]) are not read at
/// all: they hold the base's bytes, and the base's digest is theirs.
pub fn update_seeded(
    from: &File,
    seeded: &File,
    len: u64,
    base: Option<&FileBlocks>,
    unread: Option<&[bool]>,
    shared: &Shared,
) -> io::Result<FileCopied> {
    let old_len = seeded.metadata()?.len();
    // Digests describe the seed only while it is as long as the file they were taken of.
    let base = base.filter(|b| b.len == old_len);
    let unread = unread.filter(|_| base.is_some());
    let known = |index: usize| unread.is_some_and(|u| u[index]);
    if old_len > len {
        seeded.set_len(len)?;
    }
    let mut writeback = Writeback::new(seeded);
    let mut hasher = BlockHasher::new(len);
    let mut ours = buffer_for(len);
    let mut theirs = match base {
        Some(_) => Vec::new(),
        None => buffer_for(len),
    };
    let (mut written, mut seed_read, mut skipped) = (0, 0, 0);
    let mut pos = 0u64;
    while pos < len {
        let n = CHUNK.min(len - pos) as usize;
        let first = pos as usize / BLOCK_SIZE;
        let written_before_chunk = written;
        // Read the blocks not known unchanged, adjacent ones in one read.
        let mut start = 0;
        while start < n {
            if known(first + start / BLOCK_SIZE) {
                start += BLOCK_SIZE;
                continue;
            }
            let mut end = start;
            while end < n && !known(first + end / BLOCK_SIZE) {
                end = (end + BLOCK_SIZE).min(n);
            }
            shared.take((end - start) as u64)?;
            from.read_exact_at(&mut ours[start..end], pos + start as u64)?;
            shared.source_read((end - start) as u64);
            start = end;
        }
        let have = old_len.saturating_sub(pos).min(n as u64) as usize;
        if base.is_none() {
            seeded.read_exact_at(&mut theirs[..have], pos)?;
            seed_read += have as u64;
        }
        // The start of the run of differing blocks being collected.
        let mut differing: Option<usize> = None;
        for start in (0..n).step_by(BLOCK_SIZE) {
            let end = (start + BLOCK_SIZE).min(n);
            let index = first + start / BLOCK_SIZE;
            let unchanged = match (base, known(index)) {
                (Some(b), true) => {
                    let digest = b
                        .block(index, end - start)
                        .expect("unread only where known");
                    hasher.known_block(digest);
                    skipped += (end - start) as u64;
                    true
                }
                (Some(b), false) => {
                    b.block(index, end - start) == Some(&hasher.block(&ours[start..end]))
                }
                (None, _) => {
                    hasher.block(&ours[start..end]);
                    end <= have && ours[start..end] == theirs[start..end]
                }
            };
            match (unchanged, differing) {
                (false, None) => differing = Some(start),
                (true, Some(from_here)) => {
                    let at = pos + from_here as u64;
                    written += write_block_run(seeded, &ours[from_here..start], at)?;
                    differing = None;
                }
                _ => {}
            }
        }
        if let Some(from_here) = differing {
            written += write_block_run(seeded, &ours[from_here..n], pos + from_here as u64)?;
        }
        if written > written_before_chunk {
            // One writeback window per chunk, not per run of blocks: the changed pages
            // of a tablespace are scattered, and a window per page made each write wait
            // for the disk.
            writeback.written(pos, n as u64)?;
        }
        shared.progress_add(n as u64);
        pos += n as u64;
    }
    writeback.finish()?;
    let (hash, blocks) = hasher.finish()?;
    Ok(FileCopied {
        written,
        cloned: false,
        hash,
        blocks,
        seed_read,
        by_digest: base.is_some(),
        unread: skipped,
    })
}

/// Write `data` at `at` into the seeded file; the bytes written.
fn write_block_run(seeded: &File, data: &[u8], at: u64) -> io::Result<u64> {
    seeded.write_all_at(data, at)?;
    Ok(data.len() as u64)
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
