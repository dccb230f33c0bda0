//! The system under test for one data size: a btrfs on a loop device, a private MariaDB
//! whose datadir is a subvolume of it, the bank schema plus filler data, and a dbsnap
//! configuration. Everything lives in one temporary directory; dropping the rig stops
//! the server, unmounts the filesystem (which frees the loop device) and deletes it all.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context};
use dbsnap_test_support::bank;
use dbsnap_test_support::btrfs::LoopBtrfs;
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

/// Filler is inserted in statements of this many MiB: one multi-GB transaction would
/// outgrow the redo log and take far longer.
const FILLER_CHUNK_MIB: u64 = 256;

/// `mib` MiB of 1 KiB incompressible rows, like `bank::add_filler`, but kept out of the
/// binary log (sql_log_bin = 0) so that the datadir holds the data once, not twice.
fn add_filler(server: &MariaDb, mib: u64) {
    server.sql(&format!(
        "SET SESSION sql_log_bin = 0;
         CREATE TABLE IF NOT EXISTS bank.filler (id INT AUTO_INCREMENT PRIMARY KEY, pad BLOB) ENGINE=InnoDB;
         INSERT INTO bank.filler (pad) SELECT RANDOM_BYTES(1024) FROM bank.seq_1_to_{}",
        mib * 1024
    ));
}

pub struct Rig {
    // Field order is drop order: the server stops before its filesystem is unmounted,
    // and the filesystem is unmounted before its directory is deleted.
    pub server: MariaDb,
    pub fs: LoopBtrfs,
    pub dir: tempfile::TempDir,
    pub datadir: PathBuf,
    pub dbsnap: PathBuf,
    pub config: PathBuf,
    /// The same with `[backup] pace = "off"`.
    #[allow(dead_code)] // read by dbsnap-bench's cases, not by dbsnap-bench-incremental
    pub config_unpaced: PathBuf,
}

impl Rig {
    pub fn new(work_dir: &Path, size_gb: f64, dbsnap: &Path) -> anyhow::Result<Rig> {
        let dir = tempfile::Builder::new()
            .prefix("dbsnap-bench-")
            .tempdir_in(work_dir)
            .with_context(|| format!("creating a directory in {}", work_dir.display()))?;
        let data_mib = (size_gb * 1024.0).round() as u64;
        // Room for the data, the binary log and transfers the writers add over a long
        // run, the blocks a snapshot pins while the server rewrites pages, and deleted
        // snapshots that btrfs frees only later; dbsnap refuses to run below 5 % free.
        // The image is sparse: only what is written takes disk space.
        let fs = LoopBtrfs::new(dir.path(), "fs", data_mib * 3 + 4096);
        let datadir = fs.subvolume("mysql");
        let server = MariaDb::start(ServerOptions {
            // Bigger than the test helpers' default so that the load and the backups
            // are not dominated by a tiny buffer pool and redo log.
            extra_args: vec![
                "--innodb-buffer-pool-size=256M".into(),
                "--innodb-log-file-size=256M".into(),
            ],
            ..ServerOptions::new(&datadir, &dir.path().join("run"))
        });
        bank::create(&server);
        // The bank's audit table is MyISAM; InnoDB-only data lets `--lock none` run
        // without --force, so every mode backs up exactly the same tables.
        server.sql("ALTER TABLE bank.audit ENGINE=InnoDB");
        let mut left = data_mib;
        while left > 0 {
            let chunk = left.min(FILLER_CHUNK_MIB);
            add_filler(&server, chunk);
            left -= chunk;
        }
        // Write the load's dirty data out now rather than during the first case.
        run("sync", &["-f".as_ref(), datadir.as_os_str()])?;
        let dest = dir.path().join("dest");
        std::fs::create_dir(&dest)?;
        let config = dir.path().join("dbsnap.toml");
        // Full copies every time (incremental = false): each run copies the same data.
        let text = format!(
            "state_dir = {state:?}\n\n[mysql]\nsocket = {socket:?}\nuser = \"root\"\n\n\
             [snapshot]\nbackend = \"btrfs\"\n\n[backup]\ndest = {dest:?}\nincremental = false\n",
            state = dir.path().join("state"),
            socket = server.socket,
        );
        std::fs::write(&config, &text)?;
        let config_unpaced = dir.path().join("dbsnap-unpaced.toml");
        std::fs::write(&config_unpaced, text + "pace = \"off\"\n")?;
        Ok(Rig {
            server,
            fs,
            dir,
            datadir,
            dbsnap: dbsnap.to_path_buf(),
            config,
            config_unpaced,
        })
    }
}

impl Rig {
    /// A read-only btrfs snapshot of the datadir's subvolume at `at` (no lock).
    pub fn snapshot_datadir(&self, at: &Path) -> anyhow::Result<()> {
        run(
            "btrfs",
            &[
                "subvolume".as_ref(),
                "snapshot".as_ref(),
                "-r".as_ref(),
                self.datadir.as_os_str(),
                at.as_os_str(),
            ],
        )
    }
}

/// `btrfs subvolume delete AT`.
pub fn delete_subvolume(at: &Path) -> anyhow::Result<()> {
    run(
        "btrfs",
        &["subvolume".as_ref(), "delete".as_ref(), at.as_os_str()],
    )
}

/// Run a command to completion; fail with its stderr.
pub fn run<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {:?} failed: {}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Total size of the regular files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}
