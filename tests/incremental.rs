//! Incremental backups: each backup is built from the previous one and only what changed
//! is written, the previous backup is never modified, every backup holds exactly the
//! snapshot's bytes (checksums of every file, taken from the snapshot itself by a
//! `post_snapshot` hook), its `checksums` file records exactly the snapshot's BLAKE3
//! sums (`b3sum` of the snapshot, by the same hook), and every backup restores on its
//! own. Into a reflink seed, changed files are compared with the base's block digests
//! (the `blocks` file) without reading the seed, or by reading both where the base has
//! none.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{restore, stderr, stdout_json, time, Sandbox};
use dbsnap_test_support::bank::{self, Writers};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

/// Content checksums of every file under `dir`.
fn checksums(dir: &Path) -> String {
    let files: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_path_buf())
        .collect();
    let out = std::process::Command::new("sha256sum")
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Checksums of every regular file below the current directory but pid files, by
/// relative path: run in the snapshot (by the hook) and in the backup.
const CHECKSUMS: &str = "find . -type f ! -name '*.pid' -print0 | sort -z | xargs -0 -r sha256sum";
/// The same files' BLAKE3 sums, as the backup's `checksums` file records them.
const B3SUMS: &str = "find . -type f ! -name '*.pid' -print0 | sort -z | xargs -0 -r b3sum";

fn use_dest(sb: &Sandbox, dest: &Path, extra_backup: &str) {
    std::fs::create_dir_all(dest).unwrap();
    let config = std::fs::read_to_string(&sb.config).unwrap();
    let start = config.find("[backup]").unwrap();
    let hook = sb.dir.path().join("snapshot-checksums.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nset -e\ncd \"$DBSNAP_SNAPSHOT_PATH\"\n{CHECKSUMS} > \"{dir}/$DBSNAP_NAME.sums\"\n\
             {B3SUMS} > \"{dir}/$DBSNAP_NAME.b3sums\"\n",
            dir = sb.dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    sb.write_raw_config(&format!(
        "{}[backup]\ndest = {dest:?}\n{extra_backup}\n[hooks]\npost_snapshot = [{hook:?}]\n",
        &config[..start]
    ));
}

/// `HASH  PATH` lines (b3sum's output, or a `checksums` file) by path.
fn by_path(text: &str) -> BTreeMap<PathBuf, String> {
    text.lines()
        .map(|l| {
            let (hash, path) = l.split_once("  ").unwrap();
            (PathBuf::from(path), hash.to_string())
        })
        .collect()
}

/// The backup's `checksums` file, for the datadir's files, by path relative to the
/// datadir (as `b3sum` run there names them).
fn recorded_datadir_checksums(manifest: &serde_json::Value) -> BTreeMap<PathBuf, String> {
    let datadir = Path::new(manifest["server"]["datadir"].as_str().unwrap());
    let prefix = Path::new("files").join(datadir.strip_prefix("/").unwrap());
    let backup = Path::new(manifest["path"].as_str().unwrap());
    let text = std::fs::read_to_string(backup.join("checksums")).unwrap();
    by_path(&text)
        .into_iter()
        .filter_map(|(path, hash)| {
            let relative = path.strip_prefix(&prefix).ok()?;
            Some((Path::new(".").join(relative), hash))
        })
        .collect()
}

/// The backup holds exactly the bytes of the snapshot it was copied from, and its
/// `checksums` file says so.
fn assert_identical_to_its_snapshot(sb: &Sandbox, manifest: &serde_json::Value) {
    let name = manifest["name"].as_str().unwrap();
    let snapshot = std::fs::read_to_string(sb.dir.path().join(format!("{name}.sums"))).unwrap();
    let datadir = Path::new(manifest["server"]["datadir"].as_str().unwrap());
    let copy = Path::new(manifest["path"].as_str().unwrap())
        .join("files")
        .join(datadir.strip_prefix("/").unwrap());
    let out = std::process::Command::new("sh")
        .args(["-c", CHECKSUMS])
        .current_dir(&copy)
        .output()
        .unwrap();
    assert!(out.status.success());
    let backup = String::from_utf8(out.stdout).unwrap();
    assert!(snapshot.lines().count() > 5, "{snapshot}");
    assert!(
        backup == snapshot,
        "backup {name} differs from its snapshot:\n{}",
        snapshot
            .lines()
            .zip(backup.lines())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("snapshot {a}\nbackup   {b}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let b3sum = std::fs::read_to_string(sb.dir.path().join(format!("{name}.b3sums"))).unwrap();
    assert_eq!(
        recorded_datadir_checksums(manifest),
        by_path(&b3sum),
        "backup {name}'s checksums file differs from b3sum of its snapshot"
    );
}

/// A flipped byte in a stored file of the newest backup: `verify --checksums` names
/// it and exits 11, while the backup before it still verifies.
fn assert_a_flipped_byte_is_found(sb: &Sandbox, manifests: &[serde_json::Value]) {
    let (older, newest) = (&manifests[0], manifests.last().unwrap());
    for m in [older, newest] {
        let out = sb.dbsnap(&["verify", "--checksums", m["name"].as_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let victim = walkdir::WalkDir::new(Path::new(newest["path"].as_str().unwrap()).join("files"))
        .into_iter()
        .flatten()
        .find(|e| e.file_name() == "ibdata1")
        .unwrap()
        .into_path();
    let mut data = std::fs::read(&victim).unwrap();
    data[100] ^= 0xff;
    // Not in place: the file may share its inode (a hard link) or extents with the
    // backup before it.
    std::fs::remove_file(&victim).unwrap();
    std::fs::write(&victim, data).unwrap();
    let out = sb.dbsnap(&["verify", "--checksums", newest["name"].as_str().unwrap()]);
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    assert!(stderr(&out).contains("ibdata1"), "{}", stderr(&out));
    let out = sb.dbsnap(&["verify", "--checksums", older["name"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Take `n` backups under write load; after each, check that the earlier ones are
/// unchanged. Returns the manifests.
fn chain(sb: &Sandbox, n: usize) -> Vec<serde_json::Value> {
    let mut manifests: Vec<serde_json::Value> = Vec::new();
    let mut sums: Vec<String> = Vec::new();
    for _ in 0..n {
        let writers = Writers::start(&sb.server.socket, 4);
        std::thread::sleep(Duration::from_millis(300));
        // --force: the reflink chain's destination is on the snapshotted btrfs.
        let out = sb.dbsnap(&["backup", "--json", "--force"]);
        let commits = writers.stop();
        assert!(out.status.success(), "{}", stderr(&out));
        let manifest = stdout_json(&out);
        assert_identical_to_its_snapshot(sb, &manifest);
        for (m, before) in manifests.iter().zip(&sums) {
            assert_eq!(
                &checksums(Path::new(m["path"].as_str().unwrap())),
                before,
                "backup {} was modified",
                m["name"]
            );
        }
        sums.push(checksums(Path::new(manifest["path"].as_str().unwrap())));
        let _ = commits;
        manifests.push(manifest);
        // Distinct names: backups are named by the second.
        std::thread::sleep(Duration::from_millis(1100));
    }
    manifests
}

fn restore_and_check(sb: &Sandbox, manifest: &serde_json::Value) {
    let backup = PathBuf::from(manifest["path"].as_str().unwrap());
    let name = manifest["name"].as_str().unwrap();
    let restored = sb.dir.path().join(format!("restored-{name}"));
    restore(sb, &backup, &restored, &[]);
    let copy = MariaDb::start_existing(ServerOptions {
        server_id: 2,
        ..ServerOptions::new(&restored, &sb.dir.path().join(format!("run-{name}")))
    });
    for table in ["bank.accounts", "bank.transfers", "bank.filler"] {
        let check = copy.sql(&format!("CHECK TABLE {table}"));
        assert!(check.ends_with("OK"), "{check}");
    }
    let total: i64 = copy
        .sql("SELECT SUM(balance) FROM bank.accounts")
        .parse()
        .unwrap();
    assert_eq!(total, bank::ACCOUNTS * bank::INITIAL_BALANCE);
    let _ = time(&manifest["lock"]["acquired_at"]);
}

/// The size of the files a backup stored.
fn stored_bytes(manifest: &serde_json::Value) -> u64 {
    let backup = Path::new(manifest["path"].as_str().unwrap());
    walkdir::WalkDir::new(backup.join("files"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// The backup's `blocks` file: there, version 2, and at least one 32-byte digest per
/// 16 KiB block of `covering` bytes of files.
fn assert_has_block_digests(manifest: &serde_json::Value, covering: u64) {
    let backup = Path::new(manifest["path"].as_str().unwrap());
    let blocks = std::fs::read(backup.join("blocks")).unwrap();
    assert_eq!(&blocks[..12], b"DBSNBLKS\x02\0\0\0", "{}", manifest["name"]);
    assert!(
        blocks.len() as u64 >= covering / (16 << 10) * 32,
        "{} bytes of digests for {covering} bytes of files",
        blocks.len()
    );
}

#[test]
fn reflink_chain_writes_only_changed_blocks_reading_only_the_snapshot() {
    let sb = Sandbox::with_fs_size(1024);
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 64);
    // The destination on the same btrfs (outside the datadir) can reflink.
    use_dest(&sb, &sb.fs.mountpoint.join("backups"), "");
    let manifests = chain(&sb, 3);
    assert_eq!(manifests[0]["transfer"]["method"], "copy");
    for pair in manifests.windows(2) {
        let (previous, m) = (&pair[0], &pair[1]);
        assert_eq!(m["transfer"]["method"], "copy+reflink");
        assert_eq!(m["transfer"]["base"], previous["name"]);
        let written = m["transfer"]["bytes_written"].as_u64().unwrap();
        // The full copy on the same filesystem is itself a clone of the snapshot (it
        // writes nothing); compare with the data's size.
        let full = manifests[0]["transfer"]["bytes"].as_u64().unwrap();
        eprintln!(
            "incremental {} wrote {written} bytes; the full copy wrote {full}",
            m["name"]
        );
        assert!(
            written < full / 2,
            "an incremental wrote {written} of {full} bytes"
        );
        assert_eq!(
            m["transfer"]["seed_bytes_read"], 0,
            "the seed was read: the base's block digests were not used"
        );
    }
    for m in &manifests {
        assert_has_block_digests(m, stored_bytes(m));
    }
    // A base without block digests (as an older or rsync-made backup is): the changed
    // files are compared by reading both, and the result is the same.
    let newest = manifests.last().unwrap();
    std::fs::remove_file(Path::new(newest["path"].as_str().unwrap()).join("blocks")).unwrap();
    let mut next = chain(&sb, 1);
    let fallback = next.pop().unwrap();
    assert_eq!(fallback["transfer"]["method"], "copy+reflink");
    assert_eq!(fallback["transfer"]["base"], newest["name"]);
    assert!(
        fallback["transfer"]["seed_bytes_read"].as_u64().unwrap() > 0,
        "{}",
        fallback["transfer"]
    );
    // Digests of what it compared; the files it left unread have none until they change.
    let written = fallback["transfer"]["bytes_written"].as_u64().unwrap();
    assert_has_block_digests(&fallback, written);
    restore_and_check(&sb, &fallback);
    assert_a_flipped_byte_is_found(&sb, &manifests);
}

/// The kept parent snapshots (`state_dir/parents`): the backup each is kept for, and
/// its snapshot's subvolume.
fn kept_parents(sb: &Sandbox) -> Vec<(String, PathBuf)> {
    let Ok(dir) = std::fs::read_dir(sb.state.join("parents")) else {
        return Vec::new();
    };
    dir.map(|e| {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
        let record: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(record["method"].as_str(), Some("copy"), "{text}");
        let id = record["set"]["snapshots"][0]["id"].as_str().unwrap();
        (record["backup"].as_str().unwrap().to_string(), id.into())
    })
    .collect()
}

/// Rewrite 2 % of the filler rows at random (about a quarter of its pages) and write
/// the table's pages to its file, as a day of random updates leaves it.
fn churn_filler(sb: &Sandbox) {
    sb.server.sql(
        "UPDATE bank.filler SET pad = RANDOM_BYTES(1024) WHERE RAND() < 0.02; \
         FLUSH TABLES bank.filler FOR EXPORT; UNLOCK TABLES",
    );
}

#[test]
fn reflink_chain_on_btrfs_reads_only_extents_changed_since_the_kept_parent_snapshot() {
    // Five backups and a kept parent on the server's filesystem.
    let sb = Sandbox::with_fs_size(1536);
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 64);
    use_dest(&sb, &sb.fs.mountpoint.join("backups"), "");
    let mut manifests = chain(&sb, 1);
    let first = &manifests[0];
    assert_eq!(
        kept_parents(&sb)
            .into_iter()
            .map(|p| p.0)
            .collect::<Vec<_>>(),
        vec![first["name"].as_str().unwrap().to_string()],
        "the full backup's snapshot is kept as the next one's parent"
    );
    for _ in 0..2 {
        churn_filler(&sb);
        manifests.extend(chain(&sb, 1));
    }
    for pair in manifests.windows(2) {
        let (previous, m) = (&pair[0], &pair[1]);
        let t = &m["transfer"];
        assert_eq!(t["method"], "copy+reflink", "{t}");
        assert_eq!(t["parent_snapshot"], previous["snapshot"]["name"], "{t}");
        assert_eq!(t["seed_bytes_read"], 0, "{t}");
        let (read, bytes) = (
            t["source_bytes_read"].as_u64().unwrap(),
            t["bytes"].as_u64().unwrap(),
        );
        eprintln!("incremental {} read {read} of {bytes} bytes", m["name"]);
        assert!(read < bytes / 2, "read {read} of {bytes} bytes: {t}");
        assert!(
            t["bytes_written"].as_u64().unwrap() > 0,
            "the churn was written: {t}"
        );
    }
    // Only the newest backup's snapshot is kept; those it replaced are released.
    let parents = kept_parents(&sb);
    let newest = manifests.last().unwrap();
    assert_eq!(parents.len(), 1, "{parents:?}");
    assert_eq!(parents[0].0, newest["name"].as_str().unwrap());
    let snapshots = parents[0].1.parent().unwrap().to_path_buf();
    for m in &manifests[..2] {
        let name = m["snapshot"]["name"].as_str().unwrap();
        let left = std::fs::read_dir(&snapshots)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(name));
        assert!(!left, "snapshot {name} was not released");
    }
    for m in &manifests {
        let out = sb.dbsnap(&["verify", "--checksums", m["name"].as_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    restore_and_check(&sb, newest);

    // The parent deleted by hand: the changed files are read whole, the backup is
    // still exact, and its own snapshot is kept for the next.
    let deleted = std::process::Command::new("btrfs")
        .args(["subvolume", "delete"])
        .arg(&parents[0].1)
        .output()
        .unwrap();
    assert!(deleted.status.success(), "{deleted:?}");
    churn_filler(&sb);
    let writers = Writers::start(&sb.server.socket, 4);
    std::thread::sleep(Duration::from_millis(300));
    let out = sb.dbsnap(&["backup", "--json", "--force"]);
    writers.stop();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is gone: changed files are read whole"),
        "{}",
        stderr(&out)
    );
    let fallback = stdout_json(&out);
    assert_identical_to_its_snapshot(&sb, &fallback);
    let t = &fallback["transfer"];
    assert_eq!(t["base"], newest["name"], "{t}");
    assert!(t.get("parent_snapshot").is_none(), "{t}");
    let filler = 64 << 20;
    assert!(
        t["source_bytes_read"].as_u64().unwrap() >= filler,
        "the changed filler table was not read whole: {t}"
    );
    let out = sb.dbsnap(&["verify", "--checksums", fallback["name"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        kept_parents(&sb)
            .into_iter()
            .map(|p| p.0)
            .collect::<Vec<_>>(),
        vec![fallback["name"].as_str().unwrap().to_string()]
    );
}

#[test]
fn link_dest_chain_without_reflinks_and_a_deleted_base() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 16);
    let dest = sb.dest.clone();
    use_dest(&sb, &dest, "");
    let manifests = chain(&sb, 3);
    assert_eq!(
        kept_parents(&sb),
        vec![],
        "a snapshot is kept as a parent only for a destination that reflinks"
    );
    for pair in manifests.windows(2) {
        assert_eq!(
            pair[1]["transfer"]["method"], "copy+link-dest",
            "{}",
            pair[1]["transfer"]
        );
        assert_eq!(pair[1]["transfer"]["base"], pair[0]["name"]);
    }
    // The newest backup is deleted: the next one builds on the one before.
    std::fs::remove_dir_all(manifests[2]["path"].as_str().unwrap()).unwrap();
    let out = sb.dbsnap(&["backup", "--json"]);
    assert!(out.status.success());
    let next = stdout_json(&out);
    assert_identical_to_its_snapshot(&sb, &next);
    assert_eq!(next["transfer"]["base"], manifests[1]["name"]);
    restore_and_check(&sb, &next);
    assert_a_flipped_byte_is_found(&sb, &[manifests[0].clone(), next]);
}

#[test]
fn incremental_off_copies_everything() {
    let sb = Sandbox::new();
    bank::create(&sb.server);
    let dest = sb.dest.clone();
    use_dest(&sb, &dest, "incremental = false\n");
    let manifests = chain(&sb, 2);
    assert_eq!(manifests[1]["transfer"]["method"], "copy");
    assert!(manifests[1]["transfer"]["base"].is_null());
}

#[test]
fn rsync_stays_available_for_local_destinations_and_chains_with_reflinks() {
    let sb = Sandbox::with_fs_size(1024);
    bank::create(&sb.server);
    bank::add_filler(&sb.server, 16);
    use_dest(
        &sb,
        &sb.fs.mountpoint.join("backups"),
        "method = \"rsync\"\n",
    );
    let manifests = chain(&sb, 2);
    assert_eq!(manifests[0]["transfer"]["method"], "rsync");
    assert_eq!(manifests[1]["transfer"]["method"], "rsync+reflink");
    restore_and_check(&sb, &manifests[1]);
}
