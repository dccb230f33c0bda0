//! The executable specification of [`TreeCopy`]: both engines, given the same job,
//! make the same tree (contents, owners, modes, times, hard links, holes, symlinks,
//! special files) and the same checksums, equal to the snapshot's, for a full copy,
//! an incremental one beside a previous backup, and the continuation of a partial an
//! interrupted run left.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::blocks::Blocks;
use super::checksums::Checksums;
use super::incremental::{self, Basis};
use super::pace::Throttle;
use super::rsync::CopyItem;
use super::tree::{Engine, LocalEngine, RsyncEngine, TreeCopied, TreeCopy, TreeJob};
use crate::destination::local::LocalDir;
use crate::manifest::FILES_DIR;

/// Every entry under `root`: kind, mode, owner, mtime, size, device, link target, inode
/// group and content, by relative path; what `rsync -a` would keep.
pub fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut inodes: HashMap<u64, PathBuf> = HashMap::new();
    walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap())
        .map(|e| {
            let m = e.path().symlink_metadata().unwrap();
            let relative = e.path().strip_prefix(root).unwrap().to_path_buf();
            let content = match m.file_type() {
                t if t.is_file() => blake3_of(e.path()),
                t if t.is_symlink() => std::fs::read_link(e.path()).unwrap().display().to_string(),
                _ => String::new(),
            };
            let group = match m.is_file() && m.nlink() > 1 {
                true => inodes
                    .entry(m.ino())
                    .or_insert(relative.clone())
                    .display()
                    .to_string(),
                false => String::new(),
            };
            let mtime = match m.is_dir() && relative.as_os_str().is_empty() {
                // The root's time belongs to the caller (created before the copy).
                true => 0,
                false => m.mtime_nsec() + m.mtime() * 1_000_000_000,
            };
            let line = format!(
                "{:o} {}:{} {mtime} {} rdev={} link-group={group} {content}",
                m.mode(),
                m.uid(),
                m.gid(),
                if m.is_dir() { 0 } else { m.len() },
                m.rdev()
            );
            (relative, line)
        })
        .collect()
}

/// The BLAKE3 digest of a file, as `b3sum` prints it.
fn blake3_of(path: &Path) -> String {
    blake3::hash(&std::fs::read(path).unwrap())
        .to_hex()
        .to_string()
}

/// A datadir-like tree: big and small files, a sparse file, an empty one, a hard link,
/// a symlink, a fifo and a device node, odd modes, owners and old times, a nested
/// directory, a pid file to leave out.
pub fn sample_tree(root: &Path) {
    std::fs::create_dir_all(root.join("bank")).unwrap();
    let big: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("ibdata1"), &big).unwrap();
    std::fs::write(root.join("bank/accounts.ibd"), &big[..300_000]).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    let sparse = File::create(root.join("sparse")).unwrap();
    sparse.set_len(30 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"middle", 10 << 20).unwrap();
    std::fs::hard_link(root.join("bank/accounts.ibd"), root.join("bank/linked.ibd")).unwrap();
    std::os::unix::fs::symlink("bank/accounts.ibd", root.join("alias")).unwrap();
    std::fs::write(root.join("db.pid"), b"42").unwrap();
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    mknod(
        &root.join("fifo"),
        SFlag::S_IFIFO,
        Mode::from_bits_truncate(0o640),
        0,
    )
    .unwrap();
    mknod(
        &root.join("null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("bank/accounts.ibd"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::lchown(root.join("alias"), Some(12), Some(34)).unwrap();
    std::os::unix::fs::chown(root.join("ibdata1"), Some(999), Some(998)).unwrap();
    std::fs::set_permissions(root.join("bank"), std::fs::Permissions::from_mode(0o750)).unwrap();
    date_everything(root);
    let old = SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000, 123);
    File::open(root.join("empty"))
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(old))
        .unwrap();
}

/// Give every entry under `root` (symlinks themselves, directories after their
/// contents) the same time, with nanoseconds, seconds in the past. rsync leaves a
/// directory's, symlink's or special file's time alone when it shows the source's
/// second; an entry created in the same second as the copy would then keep a time a
/// fraction of a second off, and whether the engines agree would depend on the clock.
fn date_everything(root: &Path) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let at = TimeSpec::new(1_700_000_000, 987_654_321);
    for entry in walkdir::WalkDir::new(root).contents_first(true) {
        let entry = entry.unwrap();
        utimensat(
            nix::fcntl::AT_FDCWD,
            entry.path(),
            &at,
            &at,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
}

/// The checksums a backup of `snapshot` must record: every regular file but the pid
/// file, hashed from the snapshot, by its stored path.
fn snapshot_checksums(snapshot: &Path) -> Checksums {
    let stored = Path::new(FILES_DIR).join("data");
    Checksums(
        walkdir::WalkDir::new(snapshot)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file() && e.file_name() != "db.pid")
            .map(|e| {
                let relative = e.path().strip_prefix(snapshot).unwrap();
                (stored.join(relative), blake3_of(e.path()))
            })
            .collect(),
    )
}

fn without_pid(mut tree: BTreeMap<PathBuf, String>) -> BTreeMap<PathBuf, String> {
    tree.remove(Path::new("db.pid"));
    tree
}

/// The job a backup of `snapshot` into `partial` is, as `TreeTransfer` makes it.
async fn copy(
    engine: &dyn TreeCopy,
    snapshot: &Path,
    partial: &Path,
    basis: Basis,
    resumed_from: Option<&str>,
) -> TreeCopied {
    let item = CopyItem {
        from: snapshot.into(),
        to: partial.join(FILES_DIR).join("data"),
        exclude: vec!["db.pid".into()],
    };
    std::fs::create_dir_all(&item.to).unwrap();
    let base_checksums = basis.base_path().and_then(|b| Checksums::read(b).unwrap());
    let base_blocks = match (basis.base_path(), &base_checksums) {
        (Some(base), Some(sums)) => Blocks::read(base, sums),
        _ => None,
    };
    let throttle = Arc::new(Throttle::new(0));
    let job = TreeJob {
        items: vec![item],
        partial,
        recheck_since: incremental::recheck_since(&basis, resumed_from),
        basis,
        resumed_from: resumed_from.map(String::from),
        base_checksums,
        base_blocks,
        parent: None,
        progress: &|_| {},
        throttle: &throttle,
    };
    let copied = engine.copy(job).await.unwrap();
    copied.checksums.write(partial).unwrap();
    if let Some(blocks) = &copied.blocks {
        blocks.write(partial, &copied.checksums).unwrap();
    }
    copied
}

/// The name of a backup started at `at` (a base's name is its start time: files
/// modified since two seconds before it are compared by content).
fn started(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at)
        .format("%Y%m%dT%H%M%SZ")
        .to_string()
}

/// What one backup of the test made: its tree, its checksums, the bytes it wrote.
type Step = (BTreeMap<PathBuf, String>, Checksums, u64);

/// Each engine's result for the same four backups, checked against the snapshot.
#[tokio::test]
async fn both_engines_make_the_same_tree_and_checksums_full_incremental_resumed_and_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snapshot");
    sample_tree(&snapshot);
    let dest = LocalDir::new(dir.path());
    let engines: [Box<dyn TreeCopy>; 2] = [
        Box::new(LocalEngine),
        Box::new(RsyncEngine {
            dest: &dest,
            bwlimit: None,
            compress: None,
        }),
    ];
    // The next snapshot: one file rewritten, one new, one gone.
    let moved = dir.path().join("snapshot-2");
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(&snapshot)
        .arg(&moved)
        .status()
        .unwrap()
        .success());
    std::fs::write(moved.join("bank/accounts.ibd"), vec![3u8; 400_000]).unwrap();
    std::fs::write(moved.join("new.frm"), b"new").unwrap();
    std::fs::remove_file(moved.join("empty")).unwrap();
    date_everything(&moved);
    // Another next snapshot, for an in-place update of a copy of the base (as a reflink
    // seed is): one block of the big file changed, its time with it.
    let in_place = dir.path().join("snapshot-3");
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(&snapshot)
        .arg(&in_place)
        .status()
        .unwrap()
        .success());
    let ibdata = File::options()
        .write(true)
        .open(in_place.join("ibdata1"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&ibdata, b"changed page", 5 << 20).unwrap();
    ibdata
        .set_modified(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_100, 5))
        .unwrap();
    // The base of each engine's incremental is named as if it started an hour after
    // the snapshot's files were written: they are trusted on the quick check.
    let base_name = started(SystemTime::now() + Duration::from_secs(3600));
    let mut results: Vec<Vec<Step>> = Vec::new();
    for engine in &engines {
        let name = match engine.engine() {
            Engine::Local => "local",
            Engine::Rsync => "rsync",
        };
        let root = dir.path().join(name);
        let full = root.join(&base_name);
        let full_copy = copy(engine.as_ref(), &snapshot, &full, Basis::Full, None).await;
        assert_eq!(full_copy.checksums, snapshot_checksums(&snapshot), "{name}");
        let mut steps = vec![(
            describe(&full.join("files/data")),
            full_copy.checksums,
            full_copy.stats.bytes_written,
        )];

        let linked = Basis::Linked {
            base: base_name.clone(),
            path: full.clone(),
        };
        let second = root.join("second");
        let next = copy(engine.as_ref(), &moved, &second, linked, None).await;
        assert_eq!(next.checksums, snapshot_checksums(&moved), "{name}");
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(
            ino(&full.join("files/data/ibdata1")),
            ino(&second.join("files/data/ibdata1")),
            "{name}: an unchanged file is a hard link into the base"
        );
        steps.push((
            describe(&second.join("files/data")),
            next.checksums,
            next.stats.bytes_written,
        ));

        // An interrupted run left a partial: one file half written (without its
        // owner, mode and time yet), one missing, one the source no longer has.
        let partial = root.join("resumed");
        assert!(std::process::Command::new("cp")
            .arg("-a")
            .arg(&full)
            .arg(&partial)
            .status()
            .unwrap()
            .success());
        let files = partial.join("files/data");
        let half = File::options()
            .write(true)
            .open(files.join("ibdata1"))
            .unwrap();
        half.set_len(7 << 20).unwrap();
        half.set_permissions(std::fs::Permissions::from_mode(0o600))
            .unwrap();
        half.set_modified(SystemTime::now()).unwrap();
        std::fs::remove_file(files.join("sparse")).unwrap();
        std::fs::write(files.join("stale.ibd"), b"dropped table").unwrap();
        let resumed_from = started(SystemTime::now() - Duration::from_secs(60));
        let resumed = copy(
            engine.as_ref(),
            &snapshot,
            &partial,
            Basis::Full,
            Some(&resumed_from),
        )
        .await;
        assert_eq!(resumed.checksums, snapshot_checksums(&snapshot), "{name}");
        steps.push((
            describe(&files),
            resumed.checksums,
            resumed.stats.bytes_written,
        ));

        // Into a copy of the base, updated in place.
        let seeded = root.join("in-place");
        std::fs::create_dir_all(seeded.join(FILES_DIR)).unwrap();
        assert!(std::process::Command::new("cp")
            .arg("-a")
            .arg(full.join("files/data"))
            .arg(seeded.join("files/data"))
            .status()
            .unwrap()
            .success());
        let reflinked = Basis::Reflinked {
            base: base_name.clone(),
            path: full.clone(),
        };
        let updated = copy(engine.as_ref(), &in_place, &seeded, reflinked, None).await;
        assert_eq!(updated.checksums, snapshot_checksums(&in_place), "{name}");
        if engine.engine() == Engine::Local {
            assert_eq!(
                updated.stats.seed_bytes_read,
                Some(0),
                "the engine compared with the base's block digests, never read the seed"
            );
        }
        steps.push((
            describe(&seeded.join("files/data")),
            updated.checksums,
            updated.stats.bytes_written,
        ));
        results.push(steps);
    }
    let source = without_pid(describe(&snapshot));
    let (local, rsync) = (&results[0], &results[1]);
    assert_eq!(local[0].0, source, "the engine's full copy is the snapshot");
    assert_eq!(
        local[2].0, source,
        "the engine's resumed copy is the snapshot"
    );
    assert_eq!(
        local[3].0,
        without_pid(describe(&in_place)),
        "the engine's in-place copy is the snapshot"
    );
    for (step, (ours, theirs)) in ["full", "incremental", "resumed", "in place"]
        .iter()
        .zip(local.iter().zip(rsync))
    {
        assert_eq!(ours.0, theirs.0, "{step}: the trees differ");
        assert_eq!(ours.1, theirs.1, "{step}: the checksums differ");
    }
    // The engine continued the partial: it wrote the missing sparse file's data and
    // the rest of ibdata1, not the 20 MiB the partial already held.
    let resumed_written = local[2].2;
    assert!(
        resumed_written < 15 << 20,
        "the resumed copy wrote {resumed_written} bytes"
    );
    // In place: the changed block and the hard-linked file (copied again: writing into
    // it would change its other name), nothing else.
    let in_place_written = local[3].2;
    assert!(
        in_place_written <= 300_000 + crate::transfer::blocks::BLOCK_SIZE as u64,
        "the in-place copy wrote {in_place_written} bytes"
    );
}
