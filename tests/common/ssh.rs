//! A sandbox whose destination is another host over ssh (a test sshd on 127.0.0.1).

use std::path::{Path, PathBuf};

use super::Sandbox;
use dbsnap_test_support::sshd::Sshd;

/// A sandbox whose `[backup] dest` is a directory served by a test sshd.
pub struct Remote {
    pub sb: Sandbox,
    pub sshd: Sshd,
    /// The destination directory, as the remote host sees it (the same machine here).
    pub dir: PathBuf,
}

impl Remote {
    pub fn new(dir_name: &str) -> Remote {
        let sb = Sandbox::new();
        let sshd = Sshd::start();
        let dir = sb.dir.path().join(dir_name);
        std::fs::create_dir(&dir).unwrap();
        let remote = Remote { sb, sshd, dir };
        remote.write_config("");
        remote
    }

    pub fn write_config(&self, extra_backup: &str) {
        self.write_config_to(
            &self.sshd.url(&self.dir),
            &self.sshd.identity,
            &self.sshd.known_hosts,
            extra_backup,
        );
    }

    /// The config with another destination URL, key or known_hosts file.
    pub fn write_config_to(&self, url: &str, key: &Path, known: &Path, extra_backup: &str) {
        self.sb.write_raw_config(&format!(
            "state_dir = {state:?}\n\n[mysql]\nsocket = {socket:?}\nuser = \"root\"\n\n\
             [snapshot]\nbackend = \"btrfs\"\n\n[backup]\ndest = {dest:?}\n{extra_backup}\n\n\
             [backup.ssh]\nidentity_file = {key:?}\nknown_hosts = {known:?}\n",
            state = self.sb.state,
            socket = self.sb.server.socket,
            dest = url,
        ));
    }

    pub fn backups(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("manifest.toml").exists())
            .collect();
        v.sort();
        v
    }

    /// Whether a backup is sending files: the remote partial holds one.
    pub fn is_copying(&self) -> bool {
        self.partials().iter().any(|p| {
            walkdir::WalkDir::new(p).into_iter().flatten().any(|f| {
                f.file_type().is_file() && f.metadata().map(|m| m.len() > 0).unwrap_or(false)
            })
        })
    }

    /// Wait (up to a minute) until a backup sends files.
    pub fn wait_until_copying(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !self.is_copying() {
            assert!(
                std::time::Instant::now() < deadline,
                "the backup never started copying"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn partials(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".partial"))
            .collect()
    }
}

pub fn b3sum_check(backup: &Path) -> bool {
    std::process::Command::new("b3sum")
        .args(["--check", "--quiet", "checksums"])
        .current_dir(backup)
        .status()
        .unwrap()
        .success()
}
