use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Mutex;

use super::*;
use crate::transfer::conformance::{describe, sample_tree};

/// Each flush, with what the partial's `files` held at that moment.
#[derive(Default)]
struct Recorded(Mutex<Vec<(PathBuf, BTreeMap<PathBuf, String>)>>);

impl Durable for Recorded {
    fn tree(&self, partial: &Path) -> io::Result<()> {
        SyncFs.tree(partial)?;
        let held = describe(&partial.join("files"));
        self.0.lock().unwrap().push((partial.to_path_buf(), held));
        Ok(())
    }
}

fn request(from: &Path, to: &Path, seed: Seed, durable: Arc<dyn Durable>) -> Request {
    Request {
        items: vec![CopyItem {
            from: from.into(),
            to: to.into(),
            exclude: vec!["db.pid".into()],
        }],
        partial: to.parent().unwrap().into(),
        seed,
        recheck_since: None,
        base_checksums: None,
        base_blocks: None,
        parent: None,
        threads: 3,
        throttle: Arc::new(Throttle::new(0)),
        counters: Arc::default(),
        durable,
    }
}

fn without_pid(mut tree: BTreeMap<PathBuf, String>) -> BTreeMap<PathBuf, String> {
    tree.remove(Path::new("db.pid"));
    tree
}

#[test]
fn a_copy_is_identical_in_content_and_metadata_and_made_durable_after_its_last_write() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("src"), dir.path().join("partial/files"));
    sample_tree(&from);
    std::fs::create_dir_all(&to).unwrap();
    let recorded = Arc::new(Recorded::default());
    let r = request(&from, &to, Seed::None, recorded.clone());
    let moved = run(&r).unwrap();

    assert_eq!(describe(&to), without_pid(describe(&from)));
    let sparse = std::fs::metadata(to.join("sparse")).unwrap();
    assert!(
        sparse.blocks() * 512 < 1 << 20,
        "holes are kept: {} blocks",
        sparse.blocks()
    );
    let data = (20 << 20) + 300_000 + (30 << 20);
    assert_eq!(moved.bytes, data);
    assert_eq!(moved.files, 4, "the hard link's second name is a link");
    assert_eq!(r.counters.done.load(Ordering::Relaxed), data);

    // Durability before publish: the partial was flushed once, after the last write
    // (the tree it held then, contents and metadata, is the finished copy).
    let flushes = recorded.0.lock().unwrap().clone();
    assert_eq!(flushes.len(), 1, "one flush of the destination");
    assert_eq!(flushes[0].0, dir.path().join("partial"));
    assert_eq!(
        flushes[0].1,
        describe(&to),
        "flushed before the copy was complete"
    );
}

#[test]
fn into_a_seeded_copy_only_changed_blocks_are_written_and_removed_files_go() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("src"), dir.path().join("partial/files"));
    sample_tree(&from);
    std::fs::create_dir_all(&to).unwrap();
    run(&request(&from, &to, Seed::None, Arc::new(SyncFs))).unwrap();
    // The source moves on: one block changes, a file grows, one shrinks, one goes, one
    // comes, a file becomes a directory.
    let ibdata = OpenOptions::new()
        .write(true)
        .open(from.join("ibdata1"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&ibdata, &[1u8; 100], 5 << 20).unwrap();
    std::fs::write(from.join("bank/accounts.ibd"), vec![3u8; 400_000]).unwrap();
    std::fs::remove_file(from.join("bank/linked.ibd")).unwrap();
    std::fs::write(from.join("new.frm"), b"new").unwrap();
    std::fs::remove_file(from.join("empty")).unwrap();
    std::fs::create_dir(from.join("empty")).unwrap();
    std::fs::write(to.join("stale"), b"gone from the source").unwrap();

    let moved = run(&request(&from, &to, Seed::Reflinked, Arc::new(SyncFs))).unwrap();
    assert_eq!(describe(&to), without_pid(describe(&from)));
    assert!(
        moved.bytes_written < 1 << 20,
        "wrote {} bytes for a 100-byte change, a rewritten 400 kB file and a new file",
        moved.bytes_written
    );
    assert!(moved.bytes_written >= 400_000 + 3);
}

#[test]
fn beside_a_previous_backup_unchanged_files_are_hard_links_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("src");
    let (first, second) = (dir.path().join("a/files"), dir.path().join("b/files"));
    sample_tree(&from);
    for d in [&first, &second] {
        std::fs::create_dir_all(d).unwrap();
    }
    run(&request(&from, &first, Seed::None, Arc::new(SyncFs))).unwrap();
    let before = describe(&first);
    std::fs::write(from.join("bank/accounts.ibd"), vec![3u8; 400_000]).unwrap();

    let linked = Seed::Linked(vec![first.clone()]);
    let moved = run(&request(&from, &second, linked, Arc::new(SyncFs))).unwrap();
    let unlinked = |t: BTreeMap<PathBuf, String>| -> Vec<String> {
        t.into_values()
            .map(|l| {
                l.split(' ')
                    .filter(|w| !w.starts_with("link-group="))
                    .collect()
            })
            .collect()
    };
    assert_eq!(
        unlinked(describe(&first)),
        unlinked(before),
        "the previous backup is untouched"
    );
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&first.join("ibdata1")), ino(&second.join("ibdata1")));
    assert_ne!(
        ino(&first.join("bank/accounts.ibd")),
        ino(&second.join("bank/accounts.ibd"))
    );
    assert_eq!(moved.bytes_written, 400_000);
    let contents = |t: BTreeMap<PathBuf, String>| -> Vec<String> {
        t.into_values()
            .map(|l| l.split(' ').next_back().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        contents(describe(&second)),
        contents(without_pid(describe(&from)))
    );
}

#[test]
fn a_cancelled_copy_stops_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("src"), dir.path().join("partial/files"));
    sample_tree(&from);
    std::fs::create_dir_all(&to).unwrap();
    let r = request(&from, &to, Seed::None, Arc::new(SyncFs));
    r.counters.cancelled.store(true, Ordering::Relaxed);
    let e = run(&r).unwrap_err();
    assert!(e.to_string().contains("cancelled"), "{e:#}");
}

#[test]
fn a_file_changed_within_the_bases_second_is_compared_and_gets_the_snapshots_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("src"), dir.path().join("partial/files"));
    std::fs::create_dir_all(&from).unwrap();
    std::fs::create_dir_all(&to).unwrap();
    let base_started = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    let write = |path: PathBuf, bytes: &[u8], at: std::time::SystemTime| {
        std::fs::write(&path, bytes).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(at)
            .unwrap();
    };
    // Rewritten after the base's snapshot within the same second: size and time as the
    // seed's copy, other bytes. `old.ibd` was last written long before.
    let tick = base_started + std::time::Duration::from_millis(300);
    let long_ago = base_started - std::time::Duration::from_secs(3600);
    let (stale, fresh) = (
        b"page written before the base",
        b"PAGE WRITTEN AFTER THE BASE!",
    );
    write(to.join("changed.ibd"), stale, tick);
    write(from.join("changed.ibd"), fresh, tick);
    write(to.join("old.ibd"), b"unchanged", long_ago);
    write(from.join("old.ibd"), b"unchanged", long_ago);
    let hash = |b: &[u8]| blake3::hash(b).to_hex().to_string();
    let mut r = request(&from, &to, Seed::Reflinked, Arc::new(SyncFs));
    r.recheck_since = Some(base_started - std::time::Duration::from_secs(2));
    r.base_checksums = Some(Checksums(BTreeMap::from([
        (PathBuf::from("files/changed.ibd"), hash(stale)),
        (PathBuf::from("files/old.ibd"), hash(b"unchanged")),
    ])));

    let moved = run(&r).unwrap();
    assert_eq!(std::fs::read(to.join("changed.ibd")).unwrap(), fresh);
    assert_eq!(
        moved.checksums,
        BTreeMap::from([
            (PathBuf::from("files/changed.ibd"), hash(fresh)),
            (PathBuf::from("files/old.ibd"), hash(b"unchanged")),
        ]),
        "the rechecked file has the snapshot's checksum, never the base's"
    );
    assert_eq!(
        moved.checksums_kept, 1,
        "only old.ibd kept the base's checksum"
    );
}

/// A first copy of files of every shape the block compare must get right, then the
/// source moves on: one file grows, one shrinks, one has a hole punched, one changes
/// in its short last block, one in one block in the middle. Returns what the second
/// copy, into the first one (as a reflink seed holds it), moved, with the base's block
/// digests or without them.
fn update_in_place(with_digests: bool) -> (Moved, tempfile::TempDir) {
    use crate::transfer::blocks::{Blocks, BLOCK_SIZE};
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("src"), dir.path().join("partial/files"));
    std::fs::create_dir_all(&from).unwrap();
    std::fs::create_dir_all(&to).unwrap();
    let pattern =
        |n: usize, seed: u8| -> Vec<u8> { (0..n).map(|i| (i % 241) as u8 ^ seed).collect() };
    let bs = BLOCK_SIZE;
    for (name, len) in [
        ("grows", 3 * bs + 100),
        ("shrinks", 5 * bs + 7),
        ("punched", 8 * bs),
        ("tail", 2 * bs + 500),
        ("middle", 64 * bs),
    ] {
        std::fs::write(from.join(name), pattern(len, name.len() as u8)).unwrap();
    }
    let first = run(&request(&from, &to, Seed::None, Arc::new(SyncFs))).unwrap();

    let open = |name: &str| {
        OpenOptions::new()
            .write(true)
            .open(from.join(name))
            .unwrap()
    };
    let grows = open("grows");
    grows
        .write_all_at(&pattern(2 * bs + 3, 9), (3 * bs + 100) as u64)
        .unwrap();
    open("shrinks").set_len((2 * bs + 5) as u64).unwrap();
    let punched = open("punched");
    // SAFETY: a plain syscall on an open descriptor.
    let rc = unsafe {
        libc::fallocate(
            punched.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            bs as i64,
            2 * bs as i64,
        )
    };
    assert_eq!(rc, 0, "punching a hole: {}", io::Error::last_os_error());
    open("tail")
        .write_all_at(b"!", (2 * bs + 499) as u64)
        .unwrap();
    open("middle")
        .write_all_at(b"!", (10 * bs + 1) as u64)
        .unwrap();
    // Each changed file's time moves on, as the server's writes move it.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(10);
    for name in ["grows", "shrinks", "punched", "tail", "middle"] {
        open(name).set_modified(later).unwrap();
    }

    let mut r = request(&from, &to, Seed::Reflinked, Arc::new(SyncFs));
    r.base_checksums = Some(Checksums(first.checksums.clone()));
    if with_digests {
        r.base_blocks = Some(Blocks(first.blocks.clone()));
    }
    let moved = run(&r).unwrap();
    assert_eq!(describe(&to), describe(&from), "the copy is the source");
    for entry in std::fs::read_dir(&from).unwrap() {
        let path = entry.unwrap().path();
        let stored = Path::new("files").join(path.file_name().unwrap());
        let data = std::fs::read(&path).unwrap();
        assert_eq!(
            moved.checksums[&stored],
            blake3::hash(&data).to_hex().to_string(),
            "{}'s checksum",
            stored.display()
        );
        let mut hasher = crate::transfer::blocks::BlockHasher::new(data.len() as u64);
        hasher.update(&data);
        assert_eq!(
            moved.blocks[&stored],
            hasher.finish().unwrap().1,
            "{}'s block digests are those of the source",
            stored.display()
        );
    }
    (moved, dir)
}

/// What [`update_in_place`] must write with the base's digests: of grows its short last
/// block and the new blocks; of shrinks its new short last block (a digest of a whole
/// block cannot say that its first bytes are unchanged); of punched the two blocks now
/// a hole; of tail its short last block; of middle one block.
const IN_PLACE_WRITES: usize = {
    let bs = crate::transfer::blocks::BLOCK_SIZE;
    (2 * bs + 103) + 5 + 2 * bs + 500 + bs
};

#[test]
fn into_a_reflink_seed_with_the_bases_block_digests_only_the_source_is_read() {
    let (moved, _dir) = update_in_place(true);
    assert_eq!(moved.seed_bytes_read, 0, "the seed was read");
    assert_eq!(moved.compared_by_digest, 5);
    assert_eq!(moved.bytes_written, IN_PLACE_WRITES as u64);
}

#[test]
fn a_base_without_block_digests_is_compared_by_reading_both_to_the_same_result() {
    let (moved, _dir) = update_in_place(false);
    assert_eq!(moved.compared_by_digest, 0);
    assert!(moved.seed_bytes_read > 0);
    // Reading both finds shrinks' 5 bytes unchanged.
    assert_eq!(moved.bytes_written, IN_PLACE_WRITES as u64 - 5);
}
