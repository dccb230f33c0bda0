//! A MariaDB on ZFS datasets for `dbsnap backup` end-to-end tests, shared by the host
//! tier (zfs-fuse, `tests/zfs_fuse.rs`) and the guest tier (OpenZFS,
//! `tests/openzfs_guest.rs`). The caller brings the pool; this makes the datasets, the
//! server, the config, and checks what a run leaves behind.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use dbsnap_test_support::bank::{self, Writers};
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};
/// The command runner the ZFS tiers' tests use, from here with the rest of their set-up.
pub use dbsnap_test_support::sh;

use super::{dbsnap_with, stderr, stdout_json, time};

/// Where the binary logs live relative to the datadir's dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binlogs {
    /// A child dataset mounted inside the datadir (`<datadir>/binlog`): the datadir's
    /// snapshot does not contain it, so it must be snapshotted and copied on its own.
    ChildOfDatadir,
    /// A sibling dataset outside the datadir.
    Separate,
}

pub struct ZfsSandbox {
    pub server: MariaDb,
    pub pool: String,
    /// The datadir's dataset, then the binlogs'.
    pub datasets: [String; 2],
    pub datadir: PathBuf,
    pub binlog_dir: PathBuf,
    pub dest: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    /// Scratch space outside the pool (restores, run directories).
    pub dir: PathBuf,
}

impl ZfsSandbox {
    /// Datasets in `pool` (root dataset mounted at `pool_root`), a server on them started
    /// from a copy of the datadir `template` (made on the host with
    /// `mariadb::install`), and a config whose `[snapshot.zfs]` section holds `zfs`.
    /// Dataset names carry a space and a colon: every one of them must travel as one
    /// argv element.
    pub fn new(
        pool: &str,
        pool_root: &Path,
        dir: &Path,
        binlogs: Binlogs,
        template: &Path,
        zfs: &str,
    ) -> ZfsSandbox {
        let data_ds = format!("{pool}/my sql");
        let binlog_ds = match binlogs {
            Binlogs::ChildOfDatadir => format!("{data_ds}/binlog"),
            Binlogs::Separate => format!("{pool}/bin log:1"),
        };
        sh("zfs", &["create", "-o", "recordsize=16k", &data_ds]);
        sh("zfs", &["create", &binlog_ds]);
        let datadir = pool_root.join("my sql");
        let binlog_dir = match binlogs {
            Binlogs::ChildOfDatadir => datadir.join("binlog"),
            Binlogs::Separate => pool_root.join("bin log:1"),
        };
        sh(
            "cp",
            &[
                "-a",
                &format!("{}/.", template.display()),
                &datadir.to_string_lossy(),
            ],
        );
        let mut options = ServerOptions::new(&datadir, &dir.join("run"));
        options.log_bin = Some(binlog_dir.join("binlog"));
        let server = MariaDb::start_existing(options);
        let dest = dir.join("backups");
        std::fs::create_dir_all(&dest).unwrap();
        let state = dir.join("state");
        let config = dir.join("dbsnap.toml");
        let sb = ZfsSandbox {
            server,
            pool: pool.to_string(),
            datasets: [data_ds, binlog_ds],
            datadir,
            binlog_dir,
            dest,
            state,
            config,
            dir: dir.to_path_buf(),
        };
        sb.write_config(zfs, "");
        sb
    }

    /// `zfs` goes into `[snapshot.zfs]`, `backup` is appended to `[backup]`.
    pub fn write_config(&self, zfs: &str, backup: &str) {
        std::fs::write(
            &self.config,
            format!(
                "state_dir = {state:?}\n\n[mysql]\nsocket = {socket:?}\nuser = \"root\"\n\n\
                 [snapshot]\nbackend = \"zfs\"\n\n[snapshot.zfs]\n{zfs}\n\n\
                 [backup]\ndest = {dest:?}\n{backup}\n",
                state = self.state,
                socket = self.server.socket,
                dest = self.dest,
            ),
        )
        .unwrap();
    }

    pub fn dbsnap(&self, args: &[&str]) -> Output {
        let out = dbsnap_with(&self.config, args);
        // Once in the guest, dbsnap died of a signal with nothing in its log: say which,
        // and what the kernel said (e.g. the OOM killer), next time it happens.
        if let Some(signal) = out.status.signal() {
            let kernel = Command::new("dmesg").output().map(|o| o.stdout);
            let kernel = String::from_utf8_lossy(kernel.as_deref().unwrap_or_default());
            let tail: Vec<&str> = kernel.lines().rev().take(30).collect();
            eprintln!("dbsnap was killed by signal {signal}; kernel log, newest first:");
            eprintln!("{}", tail.join("\n"));
        }
        out
    }

    /// Complete backups at the destination.
    pub fn backups(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dest)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("manifest.toml").exists())
            .collect();
        v.sort();
        v
    }

    /// dbsnap's snapshots and clones in the pool (a held snapshot is listed as held).
    pub fn zfs_leftovers(&self) -> Vec<String> {
        sh(
            "zfs",
            &[
                "list",
                "-H",
                "-t",
                "filesystem,snapshot",
                "-o",
                "name",
                "-r",
                &self.pool,
            ],
        )
        .lines()
        .filter(|n| n.contains("dbsnap-"))
        .map(|n| {
            let refs = sh("zfs", &["get", "-H", "-p", "-o", "value", "userrefs", n]);
            format!("dataset {n} (userrefs {})", refs.trim())
        })
        .collect()
    }

    /// Everything a run could leave behind (empty = clean): snapshots, clones, holds,
    /// clone mounts, the partial copy, journal entries, a lock writers still wait on.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = self.zfs_leftovers();
        for e in std::fs::read_dir(&self.dest).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".partial") {
                left.push(format!("partial dir {}", e.path().display()));
            }
        }
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for line in table.lines() {
            if let Some(point) = line.split(' ').nth(4) {
                if point.starts_with(&*self.state.to_string_lossy()) {
                    left.push(format!("mount {point}"));
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(self.state.join("journal.json")) {
            if text.trim() != "[]" {
                left.push(format!("journal entries {text}"));
            }
        }
        if let Err(e) = self.server.try_sql(
            "SET SESSION lock_wait_timeout = 2; CREATE DATABASE IF NOT EXISTS probe; \
             CREATE TABLE IF NOT EXISTS probe.t (i INT); INSERT INTO probe.t VALUES (1)",
        ) {
            left.push(format!("writes are blocked: {e}"));
        }
        left
    }

    /// Back up with `args` while 8 bank writers run (with MyISAM audit rows when
    /// `audit`), restore the copy into a second server and assert it is consistent: the
    /// bank invariants and, when the coordinates are exact, the binlog ending at the
    /// recorded position and the GTID. Returns the manifest and dbsnap's log.
    pub fn backup_and_verify(&self, args: &[&str], audit: bool) -> (serde_json::Value, String) {
        let writers = if audit {
            Writers::start_with_audit(&self.server.socket, 8)
        } else {
            Writers::start(&self.server.socket, 8)
        };
        std::thread::sleep(Duration::from_millis(300));
        let mut all = vec!["backup", "--json"];
        all.extend_from_slice(args);
        let out = self.dbsnap(&all);
        std::thread::sleep(Duration::from_millis(300));
        let commits = writers.stop();
        assert!(out.status.success(), "{}", stderr(&out));
        let manifest = stdout_json(&out);
        let backup = PathBuf::from(manifest["path"].as_str().unwrap());
        assert!(self.backups().contains(&backup));

        // The manifest names both datasets and the snapshot of each (the backup's name
        // and the run's id).
        let name = manifest["snapshot"]["name"].as_str().unwrap().to_string();
        assert!(
            name.starts_with(&format!("dbsnap-{}-", manifest["name"].as_str().unwrap())),
            "{name}"
        );
        let volumes: Vec<&str> = manifest["snapshot"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["volume"].as_str().unwrap())
            .collect();
        assert_eq!(volumes, self.datasets, "{manifest:#}");
        for v in manifest["snapshot"]["volumes"].as_array().unwrap() {
            assert_eq!(
                v["snapshot"].as_str().unwrap(),
                format!("{}@{name}", v["volume"].as_str().unwrap())
            );
        }
        assert_eq!(manifest["snapshot"]["backend"], "zfs");

        // The binlog named in the manifest ends exactly at the recorded position (read
        // under the lock; without one, the coordinates are only approximate).
        let exact = manifest["coordinates"]["exact"] == true;
        if exact {
            let binlog = manifest["coordinates"]["binlog_file"].as_str().unwrap();
            let position = manifest["coordinates"]["binlog_position"].as_u64().unwrap();
            let copied = stored(&backup, &self.binlog_dir).join(binlog);
            assert_eq!(std::fs::metadata(&copied).unwrap().len(), position);
        }

        let restored = self.restore(&backup, &format!("restored-{name}"));
        let verdict = bank::assert_consistent(
            &restored,
            &commits,
            time(&manifest["lock"]["acquired_at"]),
            time(&manifest["lock"]["released_at"]),
        );
        if exact {
            assert_eq!(
                restored.sql("SELECT @@gtid_binlog_pos"),
                manifest["coordinates"]["gtid_binlog_pos"].as_str().unwrap()
            );
        }
        eprintln!(
            "MEASURE mode {} atomic {}: wait {} ms, hold {} ms, copy {} bytes in {} ms, {verdict:?}",
            manifest["lock"]["mode"],
            manifest["snapshot"]["atomic"],
            manifest["lock"]["wait_ms"],
            manifest["lock"]["hold_ms"],
            manifest["transfer"]["bytes"],
            manifest["transfer"]["duration_ms"],
        );
        restored.stop();
        assert!(self.leftovers().is_empty(), "{:?}", self.leftovers());
        (manifest, stderr(&out))
    }

    /// Put a backup back the way a restore must and start a second server on it: the
    /// datadir copy (with the child binlog dataset's copy inside it, where it was), the
    /// binlog directory's copy next to it when it was elsewhere, and `binlog.index`
    /// rewritten to name the copies (it lists the live server's absolute paths).
    pub fn restore(&self, backup: &Path, label: &str) -> MariaDb {
        let target = self.dir.join(label);
        std::fs::create_dir(&target).unwrap();
        let datadir = target.join("data");
        sh(
            "cp",
            &[
                "-a",
                &stored(backup, &self.datadir).to_string_lossy(),
                &datadir.to_string_lossy(),
            ],
        );
        let binlog_dir = match self.binlog_dir.strip_prefix(&self.datadir) {
            Ok(inside) => datadir.join(inside),
            Err(_) => {
                let dir = target.join("binlog");
                sh(
                    "cp",
                    &[
                        "-a",
                        &stored(backup, &self.binlog_dir).to_string_lossy(),
                        &dir.to_string_lossy(),
                    ],
                );
                dir
            }
        };
        let index = binlog_dir.join("binlog.index");
        let text = std::fs::read_to_string(&index).unwrap();
        let rewritten: String = text
            .lines()
            .map(|l| {
                let file = Path::new(l).file_name().unwrap();
                format!("{}\n", binlog_dir.join(file).display())
            })
            .collect();
        std::fs::write(&index, rewritten).unwrap();
        let mut options = ServerOptions::new(&datadir, &target.join("run"));
        options.log_bin = Some(binlog_dir.join("binlog"));
        options.server_id = 2;
        MariaDb::start_existing(options)
    }
}

/// Where a backup stores the copy of the absolute directory `dir`.
pub fn stored(backup: &Path, dir: &Path) -> PathBuf {
    backup.join("files").join(dir.strip_prefix("/").unwrap())
}
