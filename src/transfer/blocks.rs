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
//! Format, version 1 (integers little-endian):
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `DBSNBLKS` |
//! | 4 | version: 1 |
//! | 4 | block size in bytes ([`BLOCK_SIZE`]) |
//! | 4 | digest length in bytes ([`DIGEST_LEN`]: BLAKE3 truncated to 128 bits) |
//! | per file, by path | 4: length of the path; the path (relative to the backup directory, as `checksums` names it; raw bytes); 8: the file's length; 32: the file's BLAKE3 digest (its `checksums` entry); ⌈length ÷ block size⌉ digests, one per block (the last block may be short: its digest is of its own bytes) |
//! | 32 | BLAKE3 of all the bytes before |
//!
//! A reader takes an entry only if its file digest equals the `checksums` entry of the
//! same path: the two files are written by the same copy, and digests that disagree
//! with the checksum are not trusted.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{ensure, Context};

use super::checksums::Checksums;

pub const BLOCKS_FILE: &str = "blocks";
/// The unit of comparison: InnoDB's page, the unit the server writes its tablespaces
/// in (see README, "Incremental backups", for what larger blocks cost in bytes written).
pub const BLOCK_SIZE: usize = 16 << 10;
pub const DIGEST_LEN: usize = 16;
const MAGIC: &[u8; 8] = b"DBSNBLKS";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 4 + 4;
const TRAILER_LEN: usize = 32;

/// A block's digest: BLAKE3 of its bytes, truncated.
pub type Digest = [u8; DIGEST_LEN];

pub fn digest(block: &[u8]) -> Digest {
    let mut d = [0u8; DIGEST_LEN];
    d.copy_from_slice(&blake3::hash(block).as_bytes()[..DIGEST_LEN]);
    d
}

/// The digest of a whole block of zeros (a hole).
fn zero_block_digest() -> Digest {
    static ZERO: OnceLock<Digest> = OnceLock::new();
    *ZERO.get_or_init(|| digest(&[0u8; BLOCK_SIZE]))
}

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

/// The digests of consecutive blocks of a file's bytes, fed in order from offset 0.
#[derive(Default)]
pub struct BlockHasher {
    /// The block being filled, when the bytes did not come in whole blocks.
    partial: blake3::Hasher,
    in_partial: usize,
    digests: Vec<Digest>,
}

impl BlockHasher {
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (BLOCK_SIZE - self.in_partial).min(data.len());
            if self.in_partial == 0 && take == BLOCK_SIZE {
                self.digests.push(digest(&data[..take]));
            } else {
                self.partial.update(&data[..take]);
                self.in_partial += take;
                if self.in_partial == BLOCK_SIZE {
                    self.end_partial();
                }
            }
            data = &data[take..];
        }
    }

    /// `n` bytes of zeros (a hole): whole blocks of them are not hashed again.
    pub fn zeros(&mut self, mut n: u64) {
        static ZEROS: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];
        while n > 0 {
            if self.in_partial == 0 && n >= BLOCK_SIZE as u64 {
                self.digests.push(zero_block_digest());
                n -= BLOCK_SIZE as u64;
                continue;
            }
            let take = n.min((BLOCK_SIZE - self.in_partial) as u64) as usize;
            self.update(&ZEROS[..take]);
            n -= take as u64;
        }
    }

    fn end_partial(&mut self) {
        let mut d = [0u8; DIGEST_LEN];
        d.copy_from_slice(&self.partial.finalize().as_bytes()[..DIGEST_LEN]);
        self.digests.push(d);
        self.partial.reset();
        self.in_partial = 0;
    }

    /// The digests of a file of `len` bytes (what was fed).
    pub fn finish(mut self, len: u64) -> FileBlocks {
        if self.in_partial > 0 {
            self.end_partial();
        }
        FileBlocks {
            len,
            digests: self.digests,
        }
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
        ensure!(version == VERSION, "it is version {version}; this dbsnap reads version {VERSION}");
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
            let recorded = checksums.0.get(&path).map(|h| blake3::Hash::from_hex(h));
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
                tracing::warn!("cannot read {} ({e}); comparing by reading both copies", path.display());
                return None;
            }
        };
        match Blocks::parse(&bytes, checksums) {
            Ok(blocks) => Some(blocks),
            Err(e) => {
                tracing::warn!("ignoring {}: {e:#}; comparing by reading both copies", path.display());
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
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(data: &[u8]) -> String {
        blake3::hash(data).to_hex().to_string()
    }

    #[test]
    fn digests_fed_in_any_pieces_are_the_digests_of_whole_blocks() {
        let data: Vec<u8> = (0..(3 * BLOCK_SIZE + 100)).map(|i| (i % 253) as u8).collect();
        let mut whole = BlockHasher::default();
        whole.update(&data);
        let mut pieces = BlockHasher::default();
        for piece in data.chunks(5000) {
            pieces.update(piece);
        }
        let expected: Vec<Digest> = data.chunks(BLOCK_SIZE).map(digest).collect();
        let len = data.len() as u64;
        assert_eq!(whole.finish(len).digests, expected);
        assert_eq!(pieces.finish(len).digests, expected);

        let mut holes = BlockHasher::default();
        holes.update(&[1u8; 10]);
        holes.zeros(2 * BLOCK_SIZE as u64);
        let mut zeros = vec![1u8; 10];
        zeros.resize(10 + 2 * BLOCK_SIZE, 0);
        let got = holes.finish(zeros.len() as u64).digests;
        assert_eq!(got, zeros.chunks(BLOCK_SIZE).map(digest).collect::<Vec<_>>());
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
        for (path, data) in [(PathBuf::from("files/a"), &a[..]), (odd.clone(), b"x"), ("files/empty".into(), b"")] {
            let mut h = BlockHasher::default();
            h.update(data);
            blocks.0.insert(path.clone(), h.finish(data.len() as u64));
            sums.0.insert(path, hex(data));
        }
        let dir = tempfile::tempdir().unwrap();
        blocks.write(dir.path(), &sums).unwrap();
        let bytes = std::fs::read(dir.path().join(BLOCKS_FILE)).unwrap();
        assert_eq!(&bytes[..8], b"DBSNBLKS");
        assert_eq!(bytes[8..12], 1u32.to_le_bytes(), "version 1");
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
        assert_eq!(Blocks::parse(&with(1, BLOCK_SIZE as u32), &sums).unwrap(), Blocks::default());
        let e = Blocks::parse(&with(2, BLOCK_SIZE as u32), &sums).unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e:#}");
        let e = Blocks::parse(&with(1, 65536), &sums).unwrap_err();
        assert!(e.to_string().contains("65536-byte") || e.to_string().contains("65536 bytes"), "{e:#}");
    }
}
