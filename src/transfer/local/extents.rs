//! Which blocks of a file are unchanged since the parent snapshot, by asking the
//! filesystem rather than reading (btrfs: the FIEMAP ioctl). A read-only btrfs
//! snapshot never changes an extent it references (a write to a shared extent is
//! copied, also for `nodatacow` files), so a byte range that both the parent snapshot's
//! file and the new snapshot's file map to the same physical bytes at the same logical
//! offset holds the same data in both. The backup made from the parent holds exactly
//! the parent's bytes, and its `blocks` file their digests: such a block need not be
//! read, its digest is the base's (see `file::update_seeded`).
//!
//! The comparison is by range, not by whole extent: an InnoDB page rewritten in the
//! middle of a large extent splits it in the new file into the old extent's head, a new
//! extent, and the old extent's tail (each reported at its own physical offset), and
//! the head and tail are still the parent's bytes.
//!
//! Fail closed: an extent whose flags say its physical address does not name its bytes
//! alone (unknown, delayed allocation, compressed or encrypted, inline, unaligned, a
//! tail packed with others) is never shared; an extent whose other flags differ between
//! the two (written in one, preallocated in the other) neither; any error reading the
//! maps means the file is read as before. Holes are not extents: they are read.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use crate::transfer::blocks::{FileBlocks, BLOCK_SIZE};

/// One extent as FIEMAP reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub flags: u32,
}

const FIEMAP_EXTENT_LAST: u32 = 0x0001;
const FIEMAP_EXTENT_UNKNOWN: u32 = 0x0002;
const FIEMAP_EXTENT_DELALLOC: u32 = 0x0004;
const FIEMAP_EXTENT_ENCODED: u32 = 0x0008;
const FIEMAP_EXTENT_DATA_ENCRYPTED: u32 = 0x0080;
const FIEMAP_EXTENT_NOT_ALIGNED: u32 = 0x0100;
const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x0200;
const FIEMAP_EXTENT_DATA_TAIL: u32 = 0x0400;
const FIEMAP_EXTENT_MERGED: u32 = 0x1000;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;

/// Flags under which an extent's physical address does not name its bytes alone.
const DOUBTFUL: u32 = FIEMAP_EXTENT_UNKNOWN
    | FIEMAP_EXTENT_DELALLOC
    | FIEMAP_EXTENT_ENCODED
    | FIEMAP_EXTENT_DATA_ENCRYPTED
    | FIEMAP_EXTENT_NOT_ALIGNED
    | FIEMAP_EXTENT_DATA_INLINE
    | FIEMAP_EXTENT_DATA_TAIL;
/// Flags that say nothing about the bytes: the last extent, merged in the report,
/// shared with another file (every extent of a snapshot is).
const NEUTRAL: u32 = FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_MERGED | FIEMAP_EXTENT_SHARED;

/// `_IOWR('f', 11, struct fiemap)`, a 32-byte header (linux/fs.h).
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
/// Extents asked for per call.
const BATCH: usize = 256;

#[repr(C)]
struct FiemapHeader {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

#[repr(C)]
struct FiemapRequest {
    header: FiemapHeader,
    extents: [FiemapExtent; BATCH],
}

/// Every extent of `file`, in logical order.
pub fn fiemap(file: &File) -> io::Result<Vec<Extent>> {
    let empty = FiemapExtent {
        fe_logical: 0,
        fe_physical: 0,
        fe_length: 0,
        fe_reserved64: [0; 2],
        fe_flags: 0,
        fe_reserved: [0; 3],
    };
    let mut request = Box::new(FiemapRequest {
        header: FiemapHeader {
            fm_start: 0,
            fm_length: 0,
            fm_flags: 0,
            fm_mapped_extents: 0,
            fm_extent_count: 0,
            fm_reserved: 0,
        },
        extents: [empty; BATCH],
    });
    let mut all = Vec::new();
    let mut start = 0u64;
    loop {
        request.header = FiemapHeader {
            fm_start: start,
            fm_length: u64::MAX - start,
            fm_flags: 0,
            fm_mapped_extents: 0,
            fm_extent_count: BATCH as u32,
            fm_reserved: 0,
        };
        // SAFETY: the request is a `struct fiemap` followed by room for the
        // `fm_extent_count` extents it asks for; the descriptor is open.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                FS_IOC_FIEMAP as _,
                &mut *request as *mut FiemapRequest,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let mapped = (request.header.fm_mapped_extents as usize).min(BATCH);
        let Some(last) = request.extents[..mapped].last() else {
            return Ok(all);
        };
        let (done, next) = (
            last.fe_flags & FIEMAP_EXTENT_LAST != 0,
            last.fe_logical + last.fe_length,
        );
        all.extend(request.extents[..mapped].iter().map(|e| Extent {
            logical: e.fe_logical,
            physical: e.fe_physical,
            length: e.fe_length,
            flags: e.fe_flags,
        }));
        if done || next <= start {
            return Ok(all);
        }
        start = next;
    }
}

/// The byte ranges `[start, end)` that `parent` and `ours` (both in logical order) map
/// to the same physical bytes at the same logical offsets, merged where adjacent.
pub fn shared_ranges(parent: &[Extent], ours: &[Extent]) -> Vec<(u64, u64)> {
    let usable = |e: &&Extent| e.flags & DOUBTFUL == 0 && e.length > 0;
    let parent: Vec<&Extent> = parent.iter().filter(usable).collect();
    let ours: Vec<&Extent> = ours.iter().filter(usable).collect();
    let offset = |e: &Extent| i128::from(e.physical) - i128::from(e.logical);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < parent.len() && j < ours.len() {
        let (a, b) = (parent[i], ours[j]);
        let (a_end, b_end) = (a.logical + a.length, b.logical + b.length);
        let (start, end) = (a.logical.max(b.logical), a_end.min(b_end));
        let same = offset(a) == offset(b) && a.flags & !NEUTRAL == b.flags & !NEUTRAL;
        if start < end && same {
            match ranges.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => ranges.push((start, end)),
            }
        }
        match a_end <= b_end {
            true => i += 1,
            false => j += 1,
        }
    }
    ranges
}

/// For each block of a file of `len` bytes: whether it lies wholly in `shared` (from
/// [`shared_ranges`]) and the base recorded its digest at this length, so it holds the
/// base's bytes and need not be read. Nothing for a file of one block (its digest is not
/// its chaining value), or when the parent's file (`parent_len` bytes) is not as long
/// as the file the base's digests were taken of.
pub fn unread_blocks(
    shared: &[(u64, u64)],
    len: u64,
    parent_len: u64,
    base: &FileBlocks,
) -> Vec<bool> {
    let count = len.div_ceil(BLOCK_SIZE as u64) as usize;
    if len <= BLOCK_SIZE as u64 || base.len != parent_len {
        return vec![false; count];
    }
    let mut ranges = shared.iter().peekable();
    (0..count)
        .map(|index| {
            let start = (index * BLOCK_SIZE) as u64;
            let end = (start + BLOCK_SIZE as u64).min(len);
            while ranges.peek().is_some_and(|r| r.1 <= start) {
                ranges.next();
            }
            let covered = ranges.peek().is_some_and(|r| r.0 <= start && end <= r.1);
            covered && end <= parent_len && base.block(index, (end - start) as usize).is_some()
        })
        .collect()
}

/// The blocks of `ours` (`len` bytes) unchanged since `parent`, the parent snapshot's
/// file, whose bytes `base` describes; an error says why none can be trusted.
pub fn unchanged_since_parent(
    ours: &File,
    parent: &File,
    len: u64,
    base: &FileBlocks,
) -> io::Result<Vec<bool>> {
    let parent_len = parent.metadata()?.len();
    let shared = shared_ranges(&fiemap(parent)?, &fiemap(ours)?);
    Ok(unread_blocks(&shared, len, parent_len, base))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u64 = BLOCK_SIZE as u64;

    fn extent(logical: u64, physical: u64, length: u64) -> Extent {
        Extent {
            logical,
            physical,
            length,
            flags: 0,
        }
    }

    fn base(len: u64) -> FileBlocks {
        FileBlocks {
            len,
            digests: vec![[7; 32]; len.div_ceil(BS) as usize],
        }
    }

    #[test]
    fn the_same_extent_at_the_same_offset_is_shared_and_a_moved_one_is_not() {
        let parent = [extent(0, 1 << 30, 4 * BS)];
        assert_eq!(shared_ranges(&parent, &parent), vec![(0, 4 * BS)]);
        // The same bytes at another logical offset, or another physical place.
        assert_eq!(
            shared_ranges(&parent, &[extent(BS, 1 << 30, 4 * BS)]),
            vec![]
        );
        assert_eq!(
            shared_ranges(&parent, &[extent(0, (1 << 30) + 4096, 4 * BS)]),
            vec![]
        );
    }

    #[test]
    fn a_page_rewritten_inside_an_extent_leaves_its_head_and_tail_shared() {
        let p = 1u64 << 30;
        let parent = [extent(0, p, 8 * BS)];
        // Block 3 rewritten: the old extent's head, a new extent, the old one's tail at
        // its own physical offset.
        let ours = [
            extent(0, p, 3 * BS),
            extent(3 * BS, 5 << 30, BS),
            extent(4 * BS, p + 4 * BS, 4 * BS),
        ];
        let shared = shared_ranges(&parent, &ours);
        assert_eq!(shared, vec![(0, 3 * BS), (4 * BS, 8 * BS)]);
        let unread = unread_blocks(&shared, 8 * BS, 8 * BS, &base(8 * BS));
        assert_eq!(
            unread,
            vec![true, true, true, false, true, true, true, true]
        );
        // Adjacent shared pieces of different extents merge into one range.
        let split = [extent(0, p, 2 * BS), extent(2 * BS, p + 2 * BS, 6 * BS)];
        assert_eq!(shared_ranges(&parent, &split), vec![(0, 8 * BS)]);
    }

    #[test]
    fn extents_of_different_length_share_only_their_overlap() {
        let p = 1u64 << 30;
        let parent = [extent(0, p, 2 * BS)];
        let ours = [extent(0, p, 5 * BS)];
        let shared = shared_ranges(&parent, &ours);
        assert_eq!(shared, vec![(0, 2 * BS)]);
        assert_eq!(
            unread_blocks(&shared, 5 * BS, 2 * BS, &base(2 * BS)),
            vec![true, true, false, false, false]
        );
    }

    #[test]
    fn a_block_partly_outside_the_shared_ranges_is_read() {
        let p = 1u64 << 30;
        // 4 KiB of block 1 is a new extent.
        let parent = [extent(0, p, 4 * BS)];
        let ours = [
            extent(0, p, BS + 4096),
            extent(BS + 4096, 9 << 30, 4096),
            extent(BS + 8192, p + BS + 8192, 3 * BS - 8192),
        ];
        let shared = shared_ranges(&parent, &ours);
        assert_eq!(
            unread_blocks(&shared, 4 * BS, 4 * BS, &base(4 * BS)),
            vec![true, false, true, true]
        );
        // A hole (no extent) is never shared.
        let holed = [extent(0, p, BS), extent(2 * BS, p + 2 * BS, 2 * BS)];
        let shared = shared_ranges(&parent, &holed);
        assert_eq!(
            unread_blocks(&shared, 4 * BS, 4 * BS, &base(4 * BS)),
            vec![true, false, true, true]
        );
    }

    #[test]
    fn doubtful_or_differing_flags_are_never_shared() {
        let p = 1u64 << 30;
        for flag in [
            FIEMAP_EXTENT_UNKNOWN,
            FIEMAP_EXTENT_DELALLOC,
            FIEMAP_EXTENT_ENCODED,
            FIEMAP_EXTENT_DATA_ENCRYPTED,
            FIEMAP_EXTENT_NOT_ALIGNED,
            FIEMAP_EXTENT_DATA_INLINE,
            FIEMAP_EXTENT_DATA_TAIL,
        ] {
            let flagged = [Extent {
                flags: flag,
                ..extent(0, p, 4 * BS)
            }];
            assert_eq!(shared_ranges(&flagged, &flagged), vec![], "flag {flag:#x}");
            assert_eq!(
                shared_ranges(&[extent(0, p, 4 * BS)], &flagged),
                vec![],
                "flag {flag:#x} on one side"
            );
        }
        // Preallocated in one, written in the other.
        let unwritten = [Extent {
            flags: 0x0800,
            ..extent(0, p, 4 * BS)
        }];
        assert_eq!(shared_ranges(&[extent(0, p, 4 * BS)], &unwritten), vec![]);
        // Last, merged and shared say nothing about the bytes.
        let neutral = [Extent {
            flags: FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_SHARED | FIEMAP_EXTENT_MERGED,
            ..extent(0, p, 4 * BS)
        }];
        assert_eq!(
            shared_ranges(&[extent(0, p, 4 * BS)], &neutral),
            vec![(0, 4 * BS)]
        );
    }

    #[test]
    fn the_tail_block_is_unread_only_where_lengths_agree() {
        let p = 1u64 << 30;
        // The last extent reaches past the end of the file (to a sector boundary).
        let map = [extent(0, p, 3 * BS)];
        let shared = shared_ranges(&map, &map);
        let len = 2 * BS + 100;
        assert_eq!(
            unread_blocks(&shared, len, len, &base(len)),
            vec![true, true, true]
        );
        // The file grew within its last block: that block is read.
        assert_eq!(
            unread_blocks(&shared, len + 1, len, &base(len)),
            vec![true, true, false]
        );
        // Or shrank.
        assert_eq!(
            unread_blocks(&shared, len - 1, len, &base(len)),
            vec![true, true, false]
        );
        // The base's digests are not of the parent's file (another length): nothing.
        assert_eq!(
            unread_blocks(&shared, len, len, &base(len + 1)),
            vec![false; 3]
        );
        // A single block's digest is not the file's: read.
        assert_eq!(unread_blocks(&shared, 100, 100, &base(100)), vec![false]);
    }
}
