//! What every dbsnap integration test needs: a MariaDB on a real btrfs, a config
//! pointing at it, and a way to run the real `dbsnap` binary.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod restic;
pub mod ssh;
pub mod zfs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use dbsnap_test_support::btrfs::LoopBtrfs;
use dbsnap_test_support::mariadb::{MariaDb, ServerOptions};

pub const DBSNAP: &str = env!("CARGO_BIN_EXE_dbsnap");

/// A MariaDB whose datadir is a btrfs subvolume, a destination and a state directory,
/// all under one temporary directory whose name has a space in it.
pub struct Sandbox {
    pub server: MariaDb,
    pub fs: LoopBtrfs,
    pub dest: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox::with_fs_size(768)
    }

    pub fn with_fs_size(mib: u64) -> Sandbox {
        Sandbox::build(mib, None)
    }

    /// A sandbox whose server also listens on 127.0.0.1 (a replication source).
    pub fn networked() -> Sandbox {
        Sandbox::build(768, Some(dbsnap_test_support::mariadb::free_port()))
    }

    fn build(mib: u64, port: Option<u16>) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("dbsnap test ")
            .tempdir()
            .unwrap();
        let fs = LoopBtrfs::new(dir.path(), "db fs", mib);
        let datadir = fs.subvolume("mysql");
        let server = MariaDb::start(ServerOptions {
            port,
            ..ServerOptions::new(&datadir, &dir.path().join("run"))
        });
        let dest = dir.path().join("backups");
        std::fs::create_dir(&dest).unwrap();
        let state = dir.path().join("state");
        let config = dir.path().join("dbsnap.toml");
        let sandbox = Sandbox {
            server,
            fs,
            dest,
            state,
            config,
            dir,
        };
        sandbox.write_config("");
        sandbox
    }

    /// Write the config; `extra` is appended (later tables/keys override nothing, so
    /// tests that need other values write the whole file with [`Sandbox::write_raw_config`]).
    pub fn write_config(&self, extra_mysql: &str) {
        self.write_raw_config(&format!(
            "state_dir = {state:?}\n\n[mysql]\nsocket = {socket:?}\nuser = \"root\"\n{extra_mysql}\n\n\
             [snapshot]\nbackend = \"btrfs\"\n\n[backup]\ndest = {dest:?}\n",
            state = self.state,
            socket = self.server.socket,
            dest = self.dest,
        ));
    }

    pub fn write_raw_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn dbsnap(&self, args: &[&str]) -> Output {
        dbsnap_with(&self.config, args)
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

    /// Everything a run could leave behind, as a list of descriptions (empty = clean).
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for e in std::fs::read_dir(&self.dest).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".partial") {
                left.push(format!("partial dir {}", e.path().display()));
            }
        }
        for s in self.fs.subvolumes_matching("dbsnap-") {
            left.push(format!("snapshot {s}"));
        }
        let journal = self.state.join("journal.json");
        if let Ok(text) = std::fs::read_to_string(&journal) {
            if text.trim() != "[]" {
                left.push(format!("journal entries {text}"));
            }
        }
        // A held global read lock would make this insert wait; lock_wait_timeout bounds it.
        if let Err(e) = self.server.try_sql(
            "SET SESSION lock_wait_timeout = 2; CREATE DATABASE IF NOT EXISTS probe; \
             CREATE TABLE IF NOT EXISTS probe.t (i INT); INSERT INTO probe.t VALUES (1)",
        ) {
            left.push(format!("writes are blocked: {e}"));
        }
        left
    }
}

pub fn dbsnap_with(config: &Path, args: &[&str]) -> Output {
    logged(Command::new(DBSNAP).arg("--config").arg(config), args)
}

/// `dbsnap ARGS` with the sandbox's configuration and `path` as PATH.
pub fn dbsnap_on_path(sb: &Sandbox, path: &str, args: &[&str]) -> Output {
    logged(
        Command::new(DBSNAP)
            .arg("--config")
            .arg(&sb.config)
            .env("PATH", path),
        args,
    )
}

/// Run `command` with `args`, its outputs shown in the test's log.
fn logged(command: &mut Command, args: &[&str]) -> Output {
    let out = command.args(args).output().unwrap();
    eprintln!(
        "$ dbsnap {}\n--- exit {:?}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

pub fn time(v: &serde_json::Value) -> SystemTime {
    let s = v.as_str().expect("a timestamp string");
    let t = chrono::DateTime::parse_from_rfc3339(s).expect("RFC 3339");
    SystemTime::from(t)
}

/// `dbsnap restore BACKUP --datadir TARGET` (plus `extra`), asserting it succeeds.
pub fn restore(sb: &Sandbox, backup: &Path, target: &Path, extra: &[&str]) -> Output {
    restore_with(&sb.config, backup, target, extra)
}

/// [`restore`] with any configuration file.
pub fn restore_with(config: &Path, backup: &Path, target: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "restore",
        backup.to_str().unwrap(),
        "--datadir",
        target.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = dbsnap_with(config, &args);
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    out
}
