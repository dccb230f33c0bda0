//! dbsnap-bench-incremental: what does each transfer method cost, for the first (full)
//! backup and for the ones after it?
//!
//! For each data size: the benchmark rig (MariaDB on a loop-device btrfs with filler
//! data), a second btrfs filesystem as the backup disk, and a directory on the work
//! directory's own filesystem (no reflinks) as a plain destination. Each method takes a
//! chain of backups: one full, then `--increments` more, each after the same churn (bank
//! writers for a few seconds plus 2 % of the filler rows rewritten). For each backup it
//! records the wall time, what dbsnap says it transferred, and how much space the
//! destination gained. A plain `cp -a` of a snapshot to the backup disk is the reference
//! for a full copy. A restic repository on the backup disk is one more method: the
//! first snapshot, then deduplicated ones (transferred: what restic scanned; written:
//! what it added to the repository). Writes `incremental.json` and `incremental.md`
//! into `--out`.
//!
//! What the churn consists of: after each incremental backup of the copy engine into a
//! reflink seed, the new backup is compared with its base file by file, and the bytes
//! in blocks that differ are counted at several block sizes (`churn.json`, `churn.md`):
//! what an in-place update at that block size must write at least.
//!
//! Run as root: `cargo run --release -p dbsnap-bench --bin dbsnap-bench-incremental -- --sizes 1,4`.

#[path = "../interrupt.rs"]
mod interrupt;
#[path = "../rig.rs"]
mod rig;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use dbsnap_test_support::bank::Writers;
use dbsnap_test_support::btrfs::LoopBtrfs;
use serde::{Deserialize, Serialize};

use rig::Rig;

#[derive(Parser)]
#[command(about = "Bytes and seconds of full and incremental backups, per transfer method")]
struct Args {
    /// Data sizes in GB (InnoDB filler rows).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    sizes: Vec<f64>,
    /// Backups after the first (full) one, per method.
    #[arg(long, default_value_t = 3)]
    increments: usize,
    /// Seconds of bank writes before each backup.
    #[arg(long, default_value_t = 5.0)]
    churn_secs: f64,
    /// Where incremental.json and incremental.md go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    out: PathBuf,
    /// Where the filesystems and the server live.
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// The dbsnap binary (default: `dbsnap` next to this benchmark's executable).
    #[arg(long)]
    dbsnap: Option<PathBuf>,
    /// Only the methods whose name contains one of these (e.g. `engine,btrfs-send`).
    #[arg(long, value_delimiter = ',')]
    methods: Vec<String>,
    /// Measure nothing: rewrite incremental.md from the incremental.json in --out.
    #[arg(long)]
    table_only: bool,
    /// Keep each backup's log (dbsnap's stderr, timestamped, with every external
    /// command and its milliseconds) in this directory, as
    /// `<size>GB-<method>-<index>.log`: the phases of a backup, timed.
    #[arg(long)]
    logs: Option<PathBuf>,
}

/// One way of transferring, as dbsnap configuration.
struct Method {
    name: &'static str,
    /// Lines for `[backup]`.
    keys: &'static str,
    /// On the backup disk (btrfs), or on the work directory's filesystem.
    on_backup_disk: bool,
    /// A local restic repository (on the backup disk) instead of a directory.
    restic: bool,
}

const METHODS: &[Method] = &[
    Method {
        name: "copy engine, full copies",
        keys: "method = \"files\"\npace = \"off\"\nincremental = false\n",
        on_backup_disk: true,
        restic: false,
    },
    Method {
        name: "copy engine + reflink, block digests (btrfs destination)",
        keys: "method = \"files\"\npace = \"off\"\nincremental = true\n",
        on_backup_disk: true,
        restic: false,
    },
    Method {
        name: "copy engine + link-dest (ext4 destination)",
        keys: "method = \"files\"\npace = \"off\"\nincremental = true\n",
        on_backup_disk: false,
        restic: false,
    },
    Method {
        name: "rsync, full copies",
        keys: "method = \"rsync\"\nincremental = false\n",
        on_backup_disk: true,
        restic: false,
    },
    Method {
        name: "rsync + reflink (btrfs destination)",
        keys: "method = \"rsync\"\nincremental = true\n",
        on_backup_disk: true,
        restic: false,
    },
    Method {
        name: "rsync + link-dest (ext4 destination)",
        keys: "method = \"rsync\"\nincremental = true\n",
        on_backup_disk: false,
        restic: false,
    },
    Method {
        name: "btrfs-send",
        keys: "method = \"btrfs-send\"\n",
        on_backup_disk: true,
        restic: false,
    },
    Method {
        name: "restic (local repository on the backup disk)",
        keys: "",
        on_backup_disk: true,
        restic: true,
    },
];

#[derive(Serialize, Deserialize)]
struct Backup {
    size_gb: f64,
    data_mib: u64,
    method: String,
    /// 0 = the first backup of the chain.
    index: usize,
    transfer_method: String,
    full_because: Option<String>,
    wall_s: f64,
    transfer_s: f64,
    /// What dbsnap transferred: changed files (rsync) or the stream (btrfs-send).
    transferred_mib: f64,
    /// Bytes written at the destination, as dbsnap counts them.
    written_mib: f64,
    /// Space the destination filesystem gained.
    stored_mib: f64,
    /// What dbsnap's copy engine read from the seed to compare (0 where the base's block
    /// digests said which blocks changed).
    #[serde(default)]
    seed_read_mib: Option<f64>,
    /// What dbsnap's copy engine read from the snapshot (not files left as the base holds
    /// them, nor blocks whose extents are the kept parent snapshot's).
    #[serde(default)]
    source_read_mib: Option<f64>,
}

/// The block sizes the churn is measured at (multiples of the first).
const CHURN_BLOCKS: [u64; 5] = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20];

/// How one file changed between a backup and its base.
#[derive(Serialize, Deserialize)]
struct FileChurn {
    size_gb: f64,
    /// The backup of the chain (1 = the first incremental).
    index: usize,
    /// Below the backup's `files/`.
    path: String,
    kind: String,
    len: u64,
    /// Its length in the base; `None`: a new file.
    base_len: Option<u64>,
    /// Bytes in blocks that differ from the base's, at each of [`CHURN_BLOCKS`].
    changed: Vec<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.table_only {
        let json = std::fs::read(args.out.join("incremental.json"))
            .with_context(|| format!("reading {}/incremental.json", args.out.display()))?;
        let all: Vec<Backup> = serde_json::from_slice(&json)?;
        std::fs::write(args.out.join("incremental.md"), table(&all))?;
        print!("{}", table(&all));
        return Ok(());
    }
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "run as root: the benchmark mounts loop devices and starts MariaDB"
    );
    let dbsnap = match &args.dbsnap {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the benchmark's directory")?
            .join("dbsnap"),
    };
    ensure!(
        dbsnap.exists(),
        "{} not found: build it first (cargo build --release -p dbsnap) or pass --dbsnap",
        dbsnap.display()
    );
    std::fs::create_dir_all(&args.out)?;
    interrupt::catch_signals()?;
    let mut all = Vec::new();
    let mut churn = Vec::new();
    for &gb in &args.sizes {
        let (backups, changes) = run_size(gb, &args, &dbsnap)?;
        all.extend(backups);
        churn.extend(changes);
        // After each size, so that a failure later keeps what was measured.
        std::fs::write(
            args.out.join("incremental.json"),
            serde_json::to_string_pretty(&all)?,
        )?;
        std::fs::write(args.out.join("incremental.md"), table(&all))?;
        std::fs::write(
            args.out.join("churn.json"),
            serde_json::to_string_pretty(&churn)?,
        )?;
        std::fs::write(args.out.join("churn.md"), churn_table(&churn))?;
    }
    print!("{}", table(&all));
    eprintln!("results in {}", args.out.display());
    Ok(())
}

fn run_size(gb: f64, args: &Args, dbsnap: &Path) -> anyhow::Result<(Vec<Backup>, Vec<FileChurn>)> {
    eprintln!("== {gb} GB: loading data");
    let rig = Rig::new(&args.work_dir, gb, dbsnap)?;
    let data_mib = rig::dir_bytes(&rig.datadir) >> 20;
    let disk_dir = rig.dir.path().join("disk");
    std::fs::create_dir(&disk_dir)?;
    // Room for two copies and what btrfs needs beside them (the image is sparse).
    let disk = LoopBtrfs::new(&disk_dir, "backup disk", data_mib * 4 + 2048);
    let plain = rig.dir.path().join("plain");
    std::fs::create_dir(&plain)?;

    let mut results = vec![reference_copy(gb, data_mib, &rig, &disk)?];
    let mut changes = Vec::new();
    let chosen = METHODS.iter().filter(|m| {
        args.methods.is_empty()
            || args
                .methods
                .iter()
                .any(|part| m.name.contains(part.as_str()))
    });
    for method in chosen {
        interrupt::check()?;
        let dest = if method.on_backup_disk {
            disk.mountpoint.join(method.name.replace(' ', "-"))
        } else {
            plain.join(method.name.replace(' ', "-"))
        };
        std::fs::create_dir_all(&dest)?;
        let state = rig.dir.path().join(format!("state {}", method.name));
        let (dest_key, restic_section) = match method.restic {
            true => init_restic(&rig, &dest)?,
            false => (dest.display().to_string(), String::new()),
        };
        std::fs::write(
            &rig.config,
            format!(
                "state_dir = {state:?}\n\n[mysql]\nsocket = {socket:?}\nuser = \"root\"\n\n\
                 [snapshot]\nbackend = \"btrfs\"\n\n[backup]\ndest = {dest_key:?}\n{keys}{restic_section}",
                socket = rig.server.socket,
                keys = method.keys,
            ),
        )?;
        let mut previous: Option<PathBuf> = None;
        for index in 0..=args.increments {
            churn(&rig, args.churn_secs)?;
            let used_before = used_bytes(&dest)?;
            let started = Instant::now();
            let mut backup = Command::new(&rig.dbsnap);
            backup
                .arg("--config")
                .arg(&rig.config)
                .args(["backup", "--json"]);
            if args.logs.is_some() {
                // Every external command, with its milliseconds.
                backup.env(
                    "DBSNAP_LOG",
                    "info,dbsnap=debug,dbsnap_backend_api=debug,dbsnap_btrfs=debug",
                );
            }
            let out = backup.output()?;
            let wall_s = started.elapsed().as_secs_f64();
            if let Some(logs) = &args.logs {
                std::fs::create_dir_all(logs)?;
                let name = format!("{gb}GB-{}-{index}.log", method.name.replace(' ', "-"));
                std::fs::write(logs.join(name), &out.stderr)?;
            }
            ensure!(
                out.status.success(),
                "{}: {}",
                method.name,
                String::from_utf8_lossy(&out.stderr)
            );
            let manifest: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let t = &manifest["transfer"];
            let mib = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as f64 / 1048576.0;
            let backup = Backup {
                size_gb: gb,
                data_mib,
                method: method.name.into(),
                index,
                transfer_method: t["method"].as_str().unwrap_or("").into(),
                full_because: t["full_because"].as_str().map(str::to_string),
                wall_s,
                transfer_s: t["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                transferred_mib: mib(&t["bytes"]),
                written_mib: mib(&t["bytes_written"]),
                stored_mib: (used_bytes(&dest)?.saturating_sub(used_before)) as f64 / 1048576.0,
                seed_read_mib: t["seed_bytes_read"].as_u64().map(|b| b as f64 / 1048576.0),
                source_read_mib: t["source_bytes_read"]
                    .as_u64()
                    .map(|b| b as f64 / 1048576.0),
            };
            eprintln!(
                "-- {gb} GB {} #{index}: {:.1} s, {:.0} MiB transferred, {:.0} MiB stored",
                method.name, backup.wall_s, backup.transferred_mib, backup.stored_mib
            );
            let path = PathBuf::from(manifest["path"].as_str().context("the backup's path")?);
            if let (Some(base), "copy+reflink") = (&previous, backup.transfer_method.as_str()) {
                let changed = churn_between(&base.join("files"), &path.join("files"))?;
                changes.extend(changed.into_iter().map(|c| FileChurn {
                    size_gb: gb,
                    index,
                    ..c
                }));
            }
            previous = Some(path);
            results.push(backup);
            if method.restic {
                // A repository keeps what later snapshots share; the disk has room.
                std::thread::sleep(Duration::from_millis(1100));
                continue;
            }
            // Only the newest backup is needed for the next one: keep the disk's peak
            // use at two copies (a 4 GB run would otherwise fill the machine's disk).
            remove_backups(&dest, manifest["name"].as_str())?;
            // Backups are named by the second.
            std::thread::sleep(Duration::from_millis(1100));
        }
        match method.restic {
            true => std::fs::remove_dir_all(&dest)?,
            false => remove_backups(&dest, None)?,
        }
    }
    Ok((results, changes))
}

/// Every regular file below `new` that differs from its namesake below `old` (size and
/// index left 0 for the caller).
fn churn_between(old: &Path, new: &Path) -> anyhow::Result<Vec<FileChurn>> {
    use std::io::Read;
    let unit = CHURN_BLOCKS[0] as usize;
    let mut changes = Vec::new();
    for entry in walkdir::WalkDir::new(new).sort_by_file_name() {
        let entry = entry?;
        if !entry.file_type().is_file() {
            continue;
        }
        let relative = entry.path().strip_prefix(new)?;
        let len = entry.metadata()?.len();
        let mut ours = std::fs::File::open(entry.path())?;
        let mut theirs = std::fs::File::open(old.join(relative)).ok();
        let base_len = match &theirs {
            Some(f) => Some(f.metadata()?.len()),
            None => None,
        };
        // Which units of `new` differ.
        let mut differs = Vec::with_capacity(len.div_ceil(unit as u64) as usize);
        let (mut a, mut b) = (vec![0u8; unit], vec![0u8; unit]);
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(unit as u64) as usize;
            ours.read_exact(&mut a[..n])?;
            let have = base_len.map_or(0, |l| l.saturating_sub(at).min(n as u64)) as usize;
            if let Some(f) = theirs.as_mut() {
                if have > 0 {
                    f.read_exact(&mut b[..have])?;
                }
            }
            differs.push(have < n || a[..n] != b[..n]);
            at += n as u64;
        }
        if base_len == Some(len) && !differs.contains(&true) {
            continue;
        }
        let changed: Vec<u64> = CHURN_BLOCKS
            .iter()
            .map(|&block| {
                let per = (block as usize) / unit;
                differs
                    .chunks(per)
                    .enumerate()
                    .filter(|(_, units)| units.contains(&true))
                    .map(|(i, _)| (len - i as u64 * block).min(block))
                    .sum::<u64>()
            })
            .collect();
        let path = relative.display().to_string();
        changes.push(FileChurn {
            size_gb: 0.0,
            index: 0,
            kind: kind_of(&path).into(),
            path,
            len,
            base_len,
            changed,
        });
    }
    Ok(changes)
}

/// What a datadir file is, for the churn table.
fn kind_of(path: &str) -> &'static str {
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let extension = Path::new(&name)
        .extension()
        .map(|e| e.to_string_lossy().into_owned());
    match () {
        _ if name.starts_with("ib_logfile") => "redo log",
        _ if name.starts_with("ibdata") => "ibdata1 (undo, doublewrite, change buffer)",
        _ if name.starts_with("undo") => "undo tablespaces",
        _ if path.ends_with("bank/filler.ibd") => "filler table",
        _ if extension.as_deref() == Some("ibd") => "other tables (.ibd)",
        _ if name.starts_with("binlog.") => "binary log",
        _ => "other",
    }
}

/// Per size and kind of file, the median over the incrementals of the bytes in
/// changed blocks at each block size, and the sum.
fn churn_table(churn: &[FileChurn]) -> String {
    let mut md = String::from(
        "What each incremental must write at least, by kind of file: bytes in blocks that \
         differ from the base (MiB, median over the incrementals of a chain), at each block \
         size. A block past the base file's end differs.\n\n| data | kind | files changed |",
    );
    for b in CHURN_BLOCKS {
        md.push_str(&format!(" {} KiB |", b >> 10));
    }
    md.push_str("\n|---|---|---|");
    md.push_str(&"---|".repeat(CHURN_BLOCKS.len()));
    md.push('\n');
    let mut sizes: Vec<f64> = churn.iter().map(|c| c.size_gb).collect();
    sizes.dedup();
    for gb in sizes {
        let of_size: Vec<&FileChurn> = churn.iter().filter(|c| c.size_gb == gb).collect();
        let mut kinds: Vec<&str> = of_size.iter().map(|c| c.kind.as_str()).collect();
        kinds.sort();
        kinds.dedup();
        kinds.push("all");
        let mut indexes: Vec<usize> = of_size.iter().map(|c| c.index).collect();
        indexes.sort();
        indexes.dedup();
        for kind in kinds {
            let median = |f: &dyn Fn(&[&FileChurn]) -> f64| {
                let mut v: Vec<f64> = indexes
                    .iter()
                    .map(|i| {
                        let files: Vec<&FileChurn> = of_size
                            .iter()
                            .filter(|c| c.index == *i && (kind == "all" || c.kind == kind))
                            .copied()
                            .collect();
                        f(&files)
                    })
                    .collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            md.push_str(&format!(
                "| {gb} GB | {kind} | {:.0} |",
                median(&|files| files.len() as f64)
            ));
            for i in 0..CHURN_BLOCKS.len() {
                let mib = median(&|files| {
                    files.iter().map(|c| c.changed[i]).sum::<u64>() as f64 / 1048576.0
                });
                md.push_str(&format!(" {mib:.1} |"));
            }
            md.push('\n');
        }
    }
    md
}

/// A restic repository in `dir` (password in the rig's directory): the `dest` value
/// and the `[backup.restic]` section that use it.
fn init_restic(rig: &Rig, dir: &Path) -> anyhow::Result<(String, String)> {
    let password = rig.dir.path().join("restic-password");
    std::fs::write(&password, "benchmark\n")?;
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let out = Command::new("restic")
        .arg("init")
        .env("RESTIC_REPOSITORY", dir)
        .env("RESTIC_PASSWORD_FILE", &password)
        .output()?;
    ensure!(
        out.status.success(),
        "restic init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((
        format!("restic:{}", dir.display()),
        format!("\n[backup.restic]\npassword_file = {password:?}\n"),
    ))
}

/// Delete the backups in `dest` except `keep` (received copies are read-only
/// subvolumes: deleted as such), and wait until btrfs has freed their space.
fn remove_backups(dest: &Path, keep: Option<&str>) -> anyhow::Result<()> {
    for backup in std::fs::read_dir(dest)?.flatten() {
        if keep.is_some_and(|k| backup.file_name() == k) {
            continue;
        }
        for entry in std::fs::read_dir(backup.path())?.flatten() {
            let meta = entry.metadata()?;
            if meta.is_dir() && std::os::unix::fs::MetadataExt::ino(&meta) == 256 {
                rig::delete_subvolume(&entry.path())?;
            }
        }
        std::fs::remove_dir_all(backup.path())?;
    }
    if nix::sys::statfs::statfs(dest)?.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC {
        rig::run(
            "btrfs",
            &["subvolume".as_ref(), "sync".as_ref(), dest.as_os_str()],
        )?;
    }
    Ok(())
}

/// The same churn before every backup: bank transfers, and 2 % of the filler rows
/// rewritten (InnoDB pages change inside the big tablespace, as in real databases).
fn churn(rig: &Rig, secs: f64) -> anyhow::Result<()> {
    let writers = Writers::start(&rig.server.socket, 4);
    rig.server
        .sql("UPDATE bank.filler SET pad = RANDOM_BYTES(1024) WHERE id % 50 = FLOOR(RAND() * 50)");
    std::thread::sleep(Duration::from_secs_f64(secs));
    writers.stop();
    Ok(())
}

/// A plain full copy for comparison: `cp -a` of a read-only snapshot of the datadir's
/// subvolume onto the backup disk (no lock; only the copy is timed).
fn reference_copy(gb: f64, data_mib: u64, rig: &Rig, disk: &LoopBtrfs) -> anyhow::Result<Backup> {
    let snapshot = rig.fs.mountpoint.join("reference-snapshot");
    rig.snapshot_datadir(&snapshot)?;
    let dest = disk.mountpoint.join("cp-a");
    let before = used_bytes(&disk.mountpoint)?;
    let started = Instant::now();
    rig::run(
        "cp",
        &["-a".as_ref(), snapshot.as_os_str(), dest.as_os_str()],
    )?;
    rig::run("sync", &["-f".as_ref(), dest.as_os_str()])?;
    let wall_s = started.elapsed().as_secs_f64();
    let stored = used_bytes(&disk.mountpoint)?.saturating_sub(before);
    rig::run("rm", &["-rf".as_ref(), dest.as_os_str()])?;
    rig::delete_subvolume(&snapshot)?;
    let copied = data_mib as f64;
    Ok(Backup {
        size_gb: gb,
        data_mib,
        method: "plain cp -a of a snapshot (reference)".into(),
        index: 0,
        transfer_method: "cp -a".into(),
        full_because: None,
        wall_s,
        transfer_s: wall_s,
        transferred_mib: copied,
        written_mib: copied,
        stored_mib: stored as f64 / 1048576.0,
        seed_read_mib: None,
        source_read_mib: Some(copied),
    })
}

/// Space used on the filesystem holding `dir`, once its writes are on disk.
fn used_bytes(dir: &Path) -> anyhow::Result<u64> {
    rig::run("sync", &["-f".as_ref(), dir.as_os_str()])?;
    if nix::sys::statfs::statfs(dir)?.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC {
        // btrfs frees and allocates in the background; a commit settles the numbers.
        rig::run(
            "btrfs",
            &["filesystem".as_ref(), "sync".as_ref(), dir.as_os_str()],
        )?;
        let s = nix::sys::statvfs::statvfs(dir)?;
        return Ok((s.blocks() - s.blocks_free()) as u64 * s.fragment_size() as u64);
    }
    // A destination on the work directory's filesystem shares it with the btrfs images,
    // which grow while the server writes: count the destination's own blocks instead
    // (du counts a hard-linked file once).
    let out = Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(dir)
        .output()?;
    ensure!(out.status.success(), "du {}", dir.display());
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .context("du printed nothing")?
        .parse()?)
}

fn table(all: &[Backup]) -> String {
    let mut md = String::from(
        "Per size and method: the first backup of a chain (full), then the median of the \
         incremental ones (each after the same churn: bank writes plus 2 % of the filler rows \
         rewritten). s: the whole `dbsnap backup` run (copy or stream alone in brackets). \
         Transferred: changed files (rsync), stream bytes (btrfs-send) or what restic scanned \
         (it reads only files whose size, mtime or inode changed). Written: bytes dbsnap's \
         copy engine wrote (a block compare writes only the blocks that differ; – where the \
         tool does not say). Stored: space the destination gained (restic: added to the \
         repository, compressed). Seed read: what the copy engine read from the seed to \
         compare with (0: the base's block digests said which blocks changed). Source read: \
         what the copy engine read from the snapshot (blocks whose extents are the kept parent \
         snapshot's are not read).\n\n\
         | data | method | full: s | full: MiB transferred | full: MiB written | full: MiB stored | full: MiB source read | incremental: s | incremental: MiB transferred | incremental: MiB written | incremental: MiB stored | incremental: MiB seed read | incremental: MiB source read |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut keys: Vec<(f64, &str)> = Vec::new();
    for b in all {
        if !keys.iter().any(|(g, m)| *g == b.size_gb && *m == b.method) {
            keys.push((b.size_gb, &b.method));
        }
    }
    for (gb, method) in keys {
        let chain: Vec<&Backup> = all
            .iter()
            .filter(|b| b.size_gb == gb && b.method == method)
            .collect();
        let full = chain[0];
        let rest = &chain[1..];
        let median = |f: fn(&Backup) -> f64| {
            let mut v: Vec<f64> = rest.iter().map(|b| f(b)).collect();
            v.sort_by(f64::total_cmp);
            match v.len() {
                0 => "–".to_string(),
                n => format!("{:.1}", v[n / 2]),
            }
        };
        // Only the copy engine counts what it wrote; elsewhere the field is 0.
        let written = |backups: &[&Backup]| {
            let mut v: Vec<f64> = backups.iter().map(|b| b.written_mib).collect();
            v.sort_by(f64::total_cmp);
            match (method.starts_with("copy engine"), v.len()) {
                (true, n) if n > 0 => format!("{:.1}", v[n / 2]),
                _ => "–".to_string(),
            }
        };
        let median_of = |backups: &[&Backup], f: fn(&Backup) -> Option<f64>| {
            let mut v: Vec<f64> = backups.iter().filter_map(|b| f(b)).collect();
            v.sort_by(f64::total_cmp);
            match v.len() {
                0 => "–".to_string(),
                n => format!("{:.1}", v[n / 2]),
            }
        };
        let seed_read = median_of(rest, |b| b.seed_read_mib);
        let source_read = median_of(rest, |b| b.source_read_mib);
        md.push_str(&format!(
            "| {gb} GB ({} MiB) | {method} | {:.1} ({:.1}) | {:.0} | {} | {:.0} | {} | {} ({}) | {} | {} | {} | {seed_read} | {source_read} |\n",
            full.data_mib,
            full.wall_s,
            full.transfer_s,
            full.transferred_mib,
            written(&[full]),
            full.stored_mib,
            median_of(&[full], |b| b.source_read_mib),
            median(|b| b.wall_s),
            median(|b| b.transfer_s),
            median(|b| b.transferred_mib),
            written(rest),
            median(|b| b.stored_mib),
        ));
    }
    md
}
