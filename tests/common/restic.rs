//! Real restic repositories for the restic destination's tests: a local one, a REST
//! one served by `rclone serve restic` on 127.0.0.1, and the test's own view of them
//! through the `restic` command; wrappers that log what dbsnap runs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use super::Sandbox;

/// The repository's password for every test (written to a 0600 file).
pub const PASSWORD: &str = "correct horse battery staple";

/// A restic repository as the test sees it.
pub struct Repo {
    /// What `restic:` is followed by in `[backup] dest`.
    pub repository: String,
    pub password_file: PathBuf,
    cache: PathBuf,
    /// restic's `-o` options (how an sftp repository's ssh reaches the test's sshd).
    pub options: Vec<String>,
}

impl Repo {
    /// A repository at `repository`, with its password file in `dir`. Not initialised.
    pub fn new(dir: &Path, repository: &str) -> Repo {
        let password_file = dir.join("restic-password");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
        std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        Repo {
            repository: repository.to_string(),
            password_file,
            cache: dir.join("test-restic-cache"),
            options: Vec::new(),
        }
    }

    pub fn restic(&self, args: &[&str]) -> Output {
        let out = Command::new("restic")
            .args(self.options.iter().flat_map(|o| ["-o", o.as_str()]))
            .args(args)
            .env("RESTIC_REPOSITORY", &self.repository)
            .env("RESTIC_PASSWORD_FILE", &self.password_file)
            .env("RESTIC_CACHE_DIR", &self.cache)
            .output()
            .unwrap();
        eprintln!(
            "$ restic {}\n--- exit {:?}\n{}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn init(&self) {
        let out = self.restic(&["init"]);
        assert!(out.status.success(), "restic init failed");
    }

    /// Every snapshot in the repository (`restic snapshots --json`).
    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        let out = self.restic(&["snapshots", "--json", "--no-lock"]);
        assert!(out.status.success());
        serde_json::from_slice::<Option<Vec<serde_json::Value>>>(&out.stdout)
            .unwrap()
            .unwrap_or_default()
    }

    pub fn locks(&self) -> Vec<String> {
        let out = self.restic(&["list", "locks", "--no-lock"]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `restic check` passes: the repository is consistent (and unlocked).
    pub fn assert_checks_clean(&self) {
        let out = self.restic(&["check"]);
        assert!(
            out.status.success(),
            "restic check failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// The snapshots of backup `name` of kind `dbsnap-data` or `dbsnap-manifest`.
    pub fn snapshots_of(&self, name: &str, kind: &str) -> Vec<serde_json::Value> {
        self.snapshots()
            .into_iter()
            .filter(|s| {
                let tags: Vec<&str> = s["tags"]
                    .as_array()
                    .map(|t| t.iter().filter_map(|t| t.as_str()).collect())
                    .unwrap_or_default();
                tags.contains(&kind) && tags.contains(&format!("dbsnap-name={name}").as_str())
            })
            .collect()
    }
}

/// Point the sandbox's configuration at `repo` (plus `extra` lines in `[backup]` and
/// `[backup.restic]`).
pub fn use_repository(sb: &Sandbox, repo: &Repo, backup_extra: &str, restic_extra: &str) {
    sb.write_raw_config(&format!(
        "state_dir = {state:?}\n\n[mysql]\nsocket = {socket:?}\nuser = \"root\"\n\n\
         [snapshot]\nbackend = \"btrfs\"\n\n[backup]\ndest = {dest:?}\n{backup_extra}\n\n\
         [backup.restic]\npassword_file = {password:?}\n{restic_extra}\n",
        state = sb.state,
        socket = sb.server.socket,
        dest = format!("restic:{}", repo.repository),
        password = repo.password_file,
    ));
}

/// `rclone serve restic` on 127.0.0.1 at a free port, serving `dir`; stopped on drop.
pub struct RestServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl RestServer {
    pub fn start(dir: &Path) -> RestServer {
        std::fs::create_dir_all(dir).unwrap();
        let mut server = RestServer {
            child: None,
            port: dbsnap_test_support::mariadb::free_port(),
            dir: dir.to_path_buf(),
        };
        server.restart();
        server
    }

    /// The repository string restic reaches it by.
    pub fn repository(&self) -> String {
        format!("rest:http://127.0.0.1:{}/", self.port)
    }

    pub fn restart(&mut self) {
        let child = Command::new("rclone")
            .args(["serve", "restic", "--addr"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rclone is installed (scripts/install-deps.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rclone serve restic did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Wrappers first on PATH that log every call of some programs (one line: the program
/// and its arguments) and then run the real one, with extra arguments if given.
pub struct Wrappers {
    dir: PathBuf,
    log: PathBuf,
}

impl Wrappers {
    /// Wrap each `(program, extra arguments)` in a new directory under `dir`.
    pub fn new(dir: &Path, programs: &[(&str, &str)]) -> Wrappers {
        let wrappers = Wrappers {
            dir: dir.join("wrapped bin"),
            log: dir.join("wrapped calls.log"),
        };
        std::fs::create_dir_all(&wrappers.dir).unwrap();
        for (program, extra) in programs {
            let real = which::which(program).unwrap();
            let script = wrappers.dir.join(program);
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh\nprintf '%s\\n' \"{program} $*\" >> '{log}'\nexec '{real}' {extra} \"$@\"\n",
                    log = wrappers.log.display(),
                    real = real.display(),
                ),
            )
            .unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        wrappers
    }

    /// PATH with the wrappers first.
    pub fn path(&self) -> String {
        format!("{}:{}", self.dir.display(), std::env::var("PATH").unwrap())
    }

    /// The logged calls of `program` (its arguments), oldest first.
    pub fn calls(&self, program: &str) -> Vec<String> {
        let prefix = format!("{program} ");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.log);
    }
}
