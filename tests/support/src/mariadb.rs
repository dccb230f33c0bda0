//! A private MariaDB server for one test: its own datadir, socket and error log,
//! started with `--no-defaults` so nothing on the host is read or touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a test server is laid out.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub datadir: PathBuf,
    /// Socket, pid file and error log go here (keep it short: sockets have a 108-byte path limit).
    pub run_dir: PathBuf,
    /// Binary-log base name (`.../binlog`), or `None` to run without a binary log.
    pub log_bin: Option<PathBuf>,
    pub server_id: u32,
    /// Listen on 127.0.0.1 at this port (e.g. a replication source); `None`: socket only.
    pub port: Option<u16>,
    pub extra_args: Vec<String>,
}

impl ServerOptions {
    /// The usual layout: binary log inside the datadir.
    pub fn new(datadir: &Path, run_dir: &Path) -> ServerOptions {
        ServerOptions {
            datadir: datadir.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
            log_bin: Some(datadir.join("binlog")),
            server_id: 1,
            port: None,
            extra_args: Vec::new(),
        }
    }
}

pub struct MariaDb {
    pub options: ServerOptions,
    pub socket: PathBuf,
    child: Option<Child>,
}

/// Server settings that keep a test server small and quick.
const SMALL: &[&str] = &[
    "--innodb-buffer-pool-size=64M",
    "--innodb-log-file-size=16M",
    "--max-connections=200",
    "--skip-name-resolve",
];

/// Fill an empty datadir with the system tables. `mariadb-install-db` is a shell script
/// that breaks on paths with spaces, so it runs once into a template directory (kept in
/// the temp dir, named by the server version) that is then copied.
pub fn install(datadir: &Path) {
    let template = template();
    std::fs::create_dir_all(datadir).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", template.display()))
        .arg(datadir)
        .status()
        .unwrap();
    assert!(status.success(), "copying the datadir template failed");
}

fn template() -> PathBuf {
    static TEMPLATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let version = Command::new("mariadbd")
                .arg("--version")
                .output()
                .expect("mariadbd (apt-get install mariadb-server)");
            let version: String = String::from_utf8_lossy(&version.stdout)
                .split_whitespace()
                .nth(2)
                .unwrap_or("unknown")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
                .collect();
            let dir = std::env::temp_dir().join(format!("dbsnap-mariadb-template-{version}"));
            if !dir.exists() {
                let building = std::env::temp_dir()
                    .join(format!("dbsnap-mariadb-template-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&building);
                run_install_db(&building);
                // Another test process may have won the race; either copy is good.
                if std::fs::rename(&building, &dir).is_err() {
                    let _ = std::fs::remove_dir_all(&building);
                }
            }
            dir
        })
        .clone()
}

fn run_install_db(datadir: &Path) {
    let out = Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", datadir.display()))
        .args([
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--user=root",
        ])
        .args(SMALL)
        .output()
        .expect("mariadb-install-db (apt-get install mariadb-server)");
    assert!(
        out.status.success(),
        "mariadb-install-db failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP port on 127.0.0.1 that is free right now (the OS picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl MariaDb {
    /// Install a datadir (if empty) and start a server on it; waits until it answers.
    pub fn start(options: ServerOptions) -> MariaDb {
        let empty = std::fs::read_dir(&options.datadir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true);
        if empty {
            install(&options.datadir);
        }
        MariaDb::start_existing(options)
    }

    /// Start a server on a datadir that already holds a database (e.g. a restored copy).
    pub fn start_existing(options: ServerOptions) -> MariaDb {
        std::fs::create_dir_all(&options.run_dir).unwrap();
        let socket = options.run_dir.join("mysqld.sock");
        let log = options.run_dir.join("error.log");
        let mut cmd = Command::new("mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", options.datadir.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!(
                "--pid-file={}",
                options.run_dir.join("mysqld.pid").display()
            ))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--server-id={}", options.server_id))
            .arg("--user=root")
            .args(SMALL);
        match options.port {
            Some(port) => cmd
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1"),
            None => cmd.arg("--skip-networking"),
        };
        if let Some(bin) = &options.log_bin {
            cmd.arg(format!("--log-bin={}", bin.display()));
        }
        cmd.args(&options.extra_args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd (apt-get install mariadb-server)");
        let mut server = MariaDb {
            options,
            socket,
            child: Some(child),
        };
        server.wait_ready(&log);
        server
    }

    fn wait_ready(&mut self, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("mariadbd exited with {status}:\n{}", tail(log));
                }
            }
            if self.socket.exists() && self.try_sql("SELECT 1").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("mariadbd did not answer within 60 s:\n{}", tail(log));
    }

    /// Run SQL as root with the `mariadb` client; returns tab-separated rows.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|e| panic!("SQL failed: {sql}\n{e}"))
    }

    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.options.run_dir.join("error.log")).unwrap_or_default()
    }

    /// Shut down cleanly and wait.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Shut down cleanly and wait, keeping the handle (e.g. to restart on the same
    /// options after working on the stopped server's files).
    pub fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
