//! Per-block digests of every file a backup stores, in `NAME/blocks` beside
//! `checksums`, so that the next incremental into a reflink copy of this backup finds
//! the blocks that changed by reading only the snapshot: a block whose digest equals
//! the base's is left as the seed holds it, unread (see `transfer::local`). The seed,
//! a reflink copy of the base, is trusted to equal the base: the base's files were
//! hashed as they were copied and their checksums published with it. A file the base
//! has no digests for (an older backup, one rsync made, a resumed partial) is compared
//! by reading both. dbsnap's local copy engine writes this file; rsync and restic
//! destinations have none.
//!
//! The digests come from the data the copy reads anyway, never from a second read.
//!
//! Format, version 2 (integers little-endian):
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `DBSNBLKS` |
//! | 4 | version: 1 |
//! | 4 | block size in bytes ([`BLOCK_SIZE`]) |
//! | 4 | digest length in bytes ([`DIGEST_LEN`]: the whole 256-bit chaining value) |
//! | per file, by path | 4: length of the path; the path (relative to the backup directory, as `checksums` names it; raw bytes); 8: the file's length; 32: the file's BLAKE3 digest (its `checksums` entry); ⌈length ÷ block size⌉ digests, one per block (the last block may be short: its digest is of its own bytes) |
//! | 32 | BLAKE3 of all the bytes before |
//!
//! A reader takes an entry only if its file digest equals the `checksums` entry of the
//! same path: the two files are written by the same copy, and digests that disagree
//! with the checksum are not trusted.
//!
//! The digests are whole chaining values (version 1 kept 128 bits of each), so that a
//! file's BLAKE3 digest can be merged from the digests of blocks the copy did not read
//! ([`BlockHasher::known_block`]: blocks whose extents are the parent snapshot's, see
//! `transfer::local::extents`). A version-1 file is refused like any other version: that
//! one incremental compares by reading both copies.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context};
use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use super::checksums::Checksums;

pub const BLOCKS_FILE: &str = "blocks";
/// The unit of comparison: InnoDB's page, the unit the server writes its tablespaces
/// in (see README, "Incremental backups", for what larger blocks cost in bytes written).
pub const BLOCK_SIZE: usize = 16 << 10;
pub const DIGEST_LEN: usize = 32;
const MAGIC: &[u8; 8] = b"DBSNBLKS";
const VERSION: u32 = 2;
const HEADER_LEN: usize = 8 + 4 + 4 + 4;
const TRAILER_LEN: usize = 32;

/// A block's digest: its BLAKE3 chaining value.
pub type Digest = ChainingValue;

/// One file's block digests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileBlocks {
    /// The file's length: its last block is `len % BLOCK_SIZE` bytes long, if not 0.
    pub len: u64,
    pub digests: Vec<Digest>,
}

impl FileBlocks {
    /// The digest of block `index` if it is `len` bytes long here.
    pub fn block(&self, index: usize, len: usize) -> Option<&Digest> {
        let start = (index * BLOCK_SIZE) as u64;
        let here = self.len.checked_sub(start)?.min(BLOCK_SIZE as u64) as usize;
        match here == len && len > 0 {
            true => self.digests.get(index),
            false => None,
        }
    }
}

/// A file's BLAKE3 digest and its block digests, from its bytes fed once, in order.
///
/// A block is a subtree of BLAKE3's hash tree (16 chunks of 1 KiB at an offset that is
/// a multiple of 16 KiB; the short last block is on the tree's right edge), so its
/// digest is its chaining value at its offset, and the file's digest (what `b3sum`
/// prints) is merged from the blocks' chaining values as BLAKE3's own hasher merges
/// them: each byte is hashed once for both (`blake3::hazmat`).
pub struct BlockHasher {
    len: u64,
    /// The block being fed: its index, and how much of it came.
    block: blake3::Hasher,
    index: u64,
    in_block: usize,
    digests: Vec<Digest>,
    /// Chaining values of complete subtrees left of the current block, not yet merged.
    stack: Vec<ChainingValue>,
    root: Option<blake3::Hash>,
}

impl BlockHasher {
    /// For a file of `len` bytes.
    pub fn new(len: u64) -> BlockHasher {
        BlockHasher {
            len,
            block: blake3::Hasher::new(),
            index: 0,
            in_block: 0,
            digests: Vec::with_capacity(len.div_ceil(BLOCK_SIZE as u64) as usize),
            stack: Vec::new(),
            root: (len == 0).then(|| blake3::hash(b"")),
        }
    }

    fn block_len(&self) -> usize {
        let start = self.index * BLOCK_SIZE as u64;
        self.len.saturating_sub(start).min(BLOCK_SIZE as u64) as usize
    }

    /// The next bytes of the file, in any pieces; never more than its length.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let want = self.block_len() - self.in_block;
            assert!(want > 0, "fed more than the file's {} bytes", self.len);
            let take = want.min(data.len());
            self.block.update(&data[..take]);
            self.in_block += take;
            data = &data[take..];
            if self.in_block == self.block_len() {
                self.end_block();
            }
        }
    }

    /// The next block, whole (or the short last one): its digest.
    pub fn block(&mut self, data: &[u8]) -> Digest {
        debug_assert_eq!((self.in_block, data.len()), (0, self.block_len()));
        self.update(data);
        *self.digests.last().expect("a block was fed")
    }

    /// `n` bytes of zeros (a hole).
    pub fn zeros(&mut self, mut n: u64) {
        static ZEROS: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];
        while n > 0 {
            let take = n.min(BLOCK_SIZE as u64) as usize;
            self.update(&ZEROS[..take]);
            n -= take as u64;
        }
    }

    /// The next block (a whole one, or the short last one) by its digest, unread: a
    /// block the caller knows holds the bytes that digest was taken of. Only in a file
    /// of more than one block (a single block's digest is not the file's).
    pub fn known_block(&mut self, digest: &Digest) {
        assert!(
            self.in_block == 0 && self.len > BLOCK_SIZE as u64 && self.block_len() > 0,
            "a known block at a block boundary of a file of several blocks"
        );
        self.push(*digest, None);
    }

    fn end_block(&mut self) {
        let cv = self.block.finalize_non_root();
        let only = (self.len <= BLOCK_SIZE as u64).then(|| self.block.finalize());
        self.push(cv, only);
    }

    /// The chaining value of the block just done; `only` is the file's digest if it
    /// is that block alone.
    fn push(&mut self, cv: ChainingValue, only: Option<blake3::Hash>) {
        self.digests.push(cv);
        let blocks = self.index + 1;
        if blocks * (BLOCK_SIZE as u64) < self.len {
            // More follows: merge the subtrees this block completes (BLAKE3's lazy
            // merge, counted in blocks rather than chunks).
            let (mut cv, mut total) = (cv, blocks);
            while total & 1 == 0 {
                let left = self.stack.pop().expect("a left subtree");
                cv = merge_subtrees_non_root(&left, &cv, Mode::Hash);
                total >>= 1;
            }
            self.stack.push(cv);
        } else {
            self.root = Some(match self.stack.pop() {
                None => only.expect("the only block is the whole tree"),
                Some(mut left) => {
                    let mut right = cv;
                    while let Some(next) = self.stack.pop() {
                        right = merge_subtrees_non_root(&left, &right, Mode::Hash);
                        left = next;
                    }
                    merge_subtrees_root(&left, &right, Mode::Hash)
                }
            });
        }
        self.index = blocks;
        self.in_block = 0;
        self.block = blake3::Hasher::new();
        self.block.set_input_offset(blocks * BLOCK_SIZE as u64);
    }

    /// The file's BLAKE3 digest (hex, as `b3sum` prints it) and its block digests; an
    /// error if fewer bytes came than the file's length.
    pub fn finish(self) -> std::io::Result<(String, FileBlocks)> {
        let Some(root) = self.root else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "hashed {} of {} bytes",
                    self.index * BLOCK_SIZE as u64 + self.in_block as u64,
                    self.len
                ),
            ));
        };
        Ok((
            root.to_hex().to_string(),
            FileBlocks {
                len: self.len,
                digests: self.digests,
            },
        ))
    }
}

/// Stored path (relative to the backup directory) → its block digests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocks(pub BTreeMap<PathBuf, FileBlocks>);

impl Blocks {
    /// The file's bytes; every entry must have its file digest in `checksums`.
    pub fn render(&self, checksums: &Checksums) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(HEADER_LEN + TRAILER_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        out.extend_from_slice(&(DIGEST_LEN as u32).to_le_bytes());
        for (path, file) in &self.0 {
            let hash = checksums
                .0
                .get(path)
                .with_context(|| format!("{} has block digests but no checksum", path.display()))?;
            let hash = blake3::Hash::from_hex(hash)
                .with_context(|| format!("the checksum of {}", path.display()))?;
            let name = path.as_os_str().as_bytes();
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&file.len.to_le_bytes());
            out.extend_from_slice(hash.as_bytes());
            ensure!(
                file.digests.len() as u64 == file.len.div_ceil(BLOCK_SIZE as u64),
                "{}: {} block digests for {} bytes",
                path.display(),
                file.digests.len(),
                file.len
            );
            for d in &file.digests {
                out.extend_from_slice(d);
            }
        }
        let trailer = blake3::hash(&out);
        out.extend_from_slice(trailer.as_bytes());
        Ok(out)
    }

    /// Parse a blocks file; entries whose file digest is not `checksums`' for the same
    /// path are left out. An error for a file that is damaged, of another version or
    /// block size.
    pub fn parse(bytes: &[u8], checksums: &Checksums) -> anyhow::Result<Blocks> {
        ensure!(
            bytes.len() >= HEADER_LEN + TRAILER_LEN,
            "it is {} bytes long, shorter than its header",
            bytes.len()
        );
        let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
        ensure!(
            blake3::hash(body).as_bytes() == trailer,
            "its digest does not match its contents (damaged or cut short)"
        );
        let mut r = Cursor(body);
        ensure!(r.take(8)? == MAGIC, "it does not start with {MAGIC:?}");
        let version = r.u32()?;
        ensure!(
            version == VERSION,
            "it is version {version}; this dbsnap reads version {VERSION}"
        );
        let block_size = r.u32()?;
        ensure!(
            block_size as usize == BLOCK_SIZE,
            "its blocks are {block_size} bytes; this dbsnap compares {BLOCK_SIZE}-byte blocks"
        );
        let digest_len = r.u32()?;
        ensure!(
            digest_len as usize == DIGEST_LEN,
            "its digests are {digest_len} bytes; this dbsnap uses {DIGEST_LEN}"
        );
        let mut files = BTreeMap::new();
        while !r.0.is_empty() {
            let name_len = r.u32()? as usize;
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(r.take(name_len)?));
            let len = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
            let hash = blake3::Hash::from_bytes(r.take(32)?.try_into().expect("32 bytes"));
            let count = len.div_ceil(BLOCK_SIZE as u64) as usize;
            let raw = r.take(count.checked_mul(DIGEST_LEN).context("a file too large")?)?;
            let recorded = checksums.0.get(&path).map(blake3::Hash::from_hex);
            if !matches!(recorded, Some(Ok(h)) if h == hash) {
                continue;
            }
            let digests = raw
                .chunks_exact(DIGEST_LEN)
                .map(|d| d.try_into().expect("DIGEST_LEN bytes"))
                .collect();
            files.insert(path, FileBlocks { len, digests });
        }
        Ok(Blocks(files))
    }

    /// The block digests in `backup_dir`, for the files whose checksum `checksums`
    /// records; `None` if it has none (or none that can be read: said in the log, and
    /// every file is then compared by reading both copies).
    pub fn read(backup_dir: &Path, checksums: &Checksums) -> Option<Blocks> {
        let path = backup_dir.join(BLOCKS_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(
                    "cannot read {} ({e}); comparing by reading both copies",
                    path.display()
                );
                return None;
            }
        };
        match Blocks::parse(&bytes, checksums) {
            Ok(blocks) => Some(blocks),
            Err(e) => {
                tracing::warn!(
                    "ignoring {}: {e:#}; comparing by reading both copies",
                    path.display()
                );
                None
            }
        }
    }

    /// Write the blocks file into `backup_dir`, durably (file and directory synced).
    pub fn write(&self, backup_dir: &Path, checksums: &Checksums) -> anyhow::Result<()> {
        use std::io::Write;
        let path = backup_dir.join(BLOCKS_FILE);
        let bytes = self.render(checksums)?;
        let written = std::fs::File::create(&path).and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::File::open(backup_dir)?.sync_all()
        });
        written.with_context(|| format!("writing {}", path.display()))
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        ensure!(self.0.len() >= n, "it ends in the middle of an entry");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(data: &[u8]) -> String {
        blake3::hash(data).to_hex().to_string()
    }

    /// Block digests computed one block at a time, as the format defines them.
    fn reference(data: &[u8]) -> Vec<Digest> {
        data.chunks(BLOCK_SIZE)
            .enumerate()
            .map(|(i, block)| {
                blake3::Hasher::new()
                    .set_input_offset((i * BLOCK_SIZE) as u64)
                    .update(block)
                    .finalize_non_root()
            })
            .collect()
    }

    #[test]
    fn the_file_digest_merged_from_its_blocks_is_b3sums_and_pieces_do_not_matter() {
        let bs = BLOCK_SIZE;
        for len in [
            0,
            1,
            1023,
            1024,
            bs - 1,
            bs,
            bs + 1,
            2 * bs,
            3 * bs + 100,
            4 * bs,
            5 * bs,
            7 * bs + 1024,
            64 * bs + 7,
            100 * bs,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let mut whole = BlockHasher::new(len as u64);
            whole.update(&data);
            let mut pieces = BlockHasher::new(len as u64);
            for piece in data.chunks(5000) {
                pieces.update(piece);
            }
            let expected = (hex(&data), reference(&data));
            let (hash, blocks) = whole.finish().unwrap();
            assert_eq!((hash, blocks.digests), expected, "{len} bytes whole");
            let (hash, blocks) = pieces.finish().unwrap();
            assert_eq!((hash, blocks.digests), expected, "{len} bytes in pieces");
            assert_eq!(blocks.len, len as u64);
        }

        let mut holes = BlockHasher::new(10 + 2 * bs as u64);
        holes.update(&[1u8; 10]);
        holes.zeros(2 * bs as u64);
        let mut zeros = vec![1u8; 10];
        zeros.resize(10 + 2 * bs, 0);
        assert_eq!(
            holes.finish().unwrap(),
            (
                hex(&zeros),
                FileBlocks {
                    len: zeros.len() as u64,
                    digests: reference(&zeros)
                }
            )
        );

        let mut short = BlockHasher::new(100);
        short.update(&[0u8; 99]);
        assert!(short.finish().is_err(), "a byte missing");
    }

    #[test]
    fn a_short_last_block_matches_only_a_block_of_the_same_length() {
        let file = FileBlocks {
            len: BLOCK_SIZE as u64 + 10,
            digests: vec![[1; DIGEST_LEN], [2; DIGEST_LEN]],
        };
        assert_eq!(file.block(0, BLOCK_SIZE), Some(&[1; DIGEST_LEN]));
        assert_eq!(file.block(1, 10), Some(&[2; DIGEST_LEN]));
        assert_eq!(file.block(1, 11), None, "the file grew into that block");
        assert_eq!(file.block(1, BLOCK_SIZE), None);
        assert_eq!(file.block(2, 10), None, "past the end");
    }

    #[test]
    fn the_file_reads_back_keeps_only_entries_matching_checksums_and_refuses_damage() {
        let a: Vec<u8> = vec![7u8; BLOCK_SIZE + 1];
        let odd = PathBuf::from("files/odd name\nwith newline");
        let mut blocks = Blocks::default();
        let mut sums = Checksums::default();
        for (path, data) in [
            (PathBuf::from("files/a"), &a[..]),
            (odd.clone(), b"x"),
            ("files/empty".into(), b""),
        ] {
            let mut h = BlockHasher::new(data.len() as u64);
            h.update(data);
            let (hash, file) = h.finish().unwrap();
            blocks.0.insert(path.clone(), file);
            sums.0.insert(path, hash);
        }
        let dir = tempfile::tempdir().unwrap();
        blocks.write(dir.path(), &sums).unwrap();
        let bytes = std::fs::read(dir.path().join(BLOCKS_FILE)).unwrap();
        assert_eq!(&bytes[..8], b"DBSNBLKS");
        assert_eq!(bytes[8..12], 2u32.to_le_bytes(), "version 2");
        assert_eq!(bytes[12..16], (BLOCK_SIZE as u32).to_le_bytes());
        assert_eq!(Blocks::read(dir.path(), &sums), Some(blocks.clone()));

        // A file whose checksum is not the one its digests were recorded with.
        let mut other = sums.clone();
        other.0.insert(odd.clone(), hex(b"y"));
        let kept = Blocks::parse(&bytes, &other).unwrap();
        assert!(!kept.0.contains_key(&odd));
        assert_eq!(kept.0.len(), 2);

        let mut damaged = bytes.clone();
        damaged[HEADER_LEN + 3] ^= 1;
        let e = Blocks::parse(&damaged, &sums).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e:#}");
        let e = Blocks::parse(&bytes[..bytes.len() - 1], &sums).unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e:#}");
    }

    #[test]
    fn a_file_of_another_version_or_block_size_is_refused() {
        let sums = Checksums::default();
        let with = |version: u32, block: u32| {
            let mut body = MAGIC.to_vec();
            body.extend_from_slice(&version.to_le_bytes());
            body.extend_from_slice(&block.to_le_bytes());
            body.extend_from_slice(&(DIGEST_LEN as u32).to_le_bytes());
            let trailer = blake3::hash(&body);
            body.extend_from_slice(trailer.as_bytes());
            body
        };
        assert_eq!(
            Blocks::parse(&with(2, BLOCK_SIZE as u32), &sums).unwrap(),
            Blocks::default()
        );
        let e = Blocks::parse(&with(1, BLOCK_SIZE as u32), &sums).unwrap_err();
        assert!(e.to_string().contains("version 1"), "{e:#}");
        let e = Blocks::parse(&with(2, 65536), &sums).unwrap_err();
        assert!(
            e.to_string().contains("65536-byte") || e.to_string().contains("65536 bytes"),
            "{e:#}"
        );
    }

    #[test]
    fn a_file_digest_merged_from_known_block_digests_is_the_same_as_from_its_bytes() {
        let bs = BLOCK_SIZE;
        for len in [bs + 1, 2 * bs, 3 * bs + 100, 5 * bs, 8 * bs] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let digests = reference(&data);
            // Every other block known, the rest fed as bytes; then all known.
            let mut mixed = BlockHasher::new(len as u64);
            for (i, block) in data.chunks(bs).enumerate() {
                match i % 2 {
                    0 => mixed.known_block(&digests[i]),
                    _ => mixed.update(block),
                }
            }
            let mut known = BlockHasher::new(len as u64);
            for d in &digests {
                known.known_block(d);
            }
            let expected = (hex(&data), digests.clone());
            let (hash, blocks) = mixed.finish().unwrap();
            assert_eq!((hash, blocks.digests), expected, "{len} bytes, mixed");
            let (hash, blocks) = known.finish().unwrap();
            assert_eq!((hash, blocks.digests), expected, "{len} bytes, all known");
        }
    }
}
