//! A sandbox whose destination is another host over ssh: a test sshd on 127.0.0.1, or
//! one that is a separate host (its own network and mount namespaces).

use std::path::{Path, PathBuf};

use super::Sandbox;
use dbsnap_test_support::sshd::Sshd;

/// A sandbox whose `[backup] dest` is a directory served by a test sshd.
pub struct Remote {
    pub sb: Sandbox,
    pub sshd: Sshd,
    /// The destination directory, as the remote host sees it (on 127.0.0.1 the same
    /// machine; a separate host's is invisible here).
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

    /// The destination on a separate host: an sshd in its own network namespace,
    /// reached over a veth link, storing into a tmpfs only its mount namespace sees.
    pub fn on_separate_host(dir_name: &str) -> Remote {
        let sb = Sandbox::new();
        let sshd = Sshd::start_separate_host();
        let dir = sshd.remote_dir().unwrap().join(dir_name);
        let made = sshd.on_host(&["mkdir", "--", dir.to_str().unwrap()]);
        assert!(made.status.success(), "{made:?}");
        let remote = Remote { sb, sshd, dir };
        remote.write_config("");
        remote
    }

    /// Whether `path` (on the backup host) is a regular file / a directory there.
    pub fn is_there(&self, test: &str, path: &Path) -> bool {
        self.sshd
            .on_host(&["test", test, path.to_str().unwrap()])
            .status
            .success()
    }

    /// The destination's entries, read on the backup host.
    fn entries(&self) -> Vec<PathBuf> {
        let out = self
            .sshd
            .on_host(&["ls", "-1", "-A", self.dir.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        let mut v: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|name| self.dir.join(name))
            .collect();
        v.sort();
        v
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
        self.entries()
            .into_iter()
            .filter(|p| self.is_there("-f", &p.join("manifest.toml")))
            .collect()
    }

    /// Whether a backup is sending files: the remote partial holds one.
    pub fn is_copying(&self) -> bool {
        self.partials().iter().any(|p| {
            let found = self.sshd.on_host(&[
                "find",
                p.to_str().unwrap(),
                "-type",
                "f",
                "-size",
                "+0c",
                "-print",
                "-quit",
            ]);
            !found.stdout.is_empty()
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
        self.entries()
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".partial"))
            .collect()
    }

    /// [`b3sum_check`] on the backup host.
    pub fn b3sum_check_there(&self, backup: &Path) -> bool {
        let script = r#"cd -- "$1" && b3sum --check --quiet checksums"#;
        self.sshd
            .on_host(&["sh", "-c", script, "sh", backup.to_str().unwrap()])
            .status
            .success()
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
