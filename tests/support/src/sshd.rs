//! A real OpenSSH server for one test: `/usr/sbin/sshd` on 127.0.0.1 at a free port,
//! with a throwaway host key, a throwaway user key, its own `sshd_config`,
//! `authorized_keys` and a `known_hosts` file for the client. Stopped on drop.
//!
//! What makes sshd run as root in a container without a service manager:
//! - `UsePAM no` (no PAM stack or login session needed), key authentication only;
//! - `StrictModes no`: the keys live in a temporary directory under the world-writable
//!   `/tmp`, which strict modes refuse;
//! - the privilege-separation directory `/run/sshd` must exist (the Debian service
//!   creates it at start; this harness does the same);
//! - sshd must be started by its absolute path (it re-executes itself per connection).
//!
//! Every remote command runs as `bash -c LINE` (root's login shell), and Debian's bash
//! sources `/etc/bash.bashrc` and `~/.bashrc` when sshd starts it unless it is a nested
//! shell: `SetEnv SHLVL=1` makes it one, so the test machine's own dotfiles are not part
//! of every remote command. On a development machine whose `~/.bashrc` runs `pyenv
//! init`, that was 0.1 s per command here and 10 s in the TCG guest, where it made a
//! zfs-send backup over ssh take minutes before its stream started.
//!
//! The client side is plain `ssh` with `-i`, `-o UserKnownHostsFile=`,
//! `-o StrictHostKeyChecking=yes` and `-o IdentitiesOnly=yes`, so nothing of the
//! machine's own `~/.ssh` is used.
//!
//! [`Sshd::start_separate_host`] makes it another host: sshd runs in a network
//! namespace of its own ([`crate::netns`], reached over a veth link) and in a private
//! mount namespace in which [`Sshd::remote_dir`] is a tmpfs. The test's namespace sees
//! that directory empty: whatever a backup stores there crossed the link, and nothing
//! on the test's (the database host's) filesystem is the destination.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::Netns;

/// What an sshd serves; [`SshdOptions::default`] is a plain login for `root` with the
/// user key.
#[derive(Debug, Clone, Default)]
pub struct SshdOptions {
    /// Prefixed to the key's line in `authorized_keys` (e.g.
    /// `command="rrsync /srv/b",no-pty,no-port-forwarding`).
    pub key_options: Option<String>,
    /// Run as another host: in its own network and mount namespaces (see the module
    /// documentation).
    pub separate_host: bool,
}

pub struct Sshd {
    /// Holds the keys, the configuration and the log.
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The client's private key.
    pub identity: PathBuf,
    /// A known_hosts file that holds this server's host key (as `[127.0.0.1]:PORT`).
    pub known_hosts: PathBuf,
    pub authorized_keys: PathBuf,
    /// The server's public host key line (`ssh-ed25519 AAAA...`).
    pub host_key_pub: String,
    /// sshd's own log (`-E`).
    pub log: PathBuf,
    child: Child,
    /// A separate host's private directory (a tmpfs only sshd's namespace sees).
    remote_dir: Option<PathBuf>,
    /// A separate host's network namespace; deleted after sshd is stopped.
    netns: Option<Netns>,
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keygen(path: &Path, comment: &str) -> String {
    run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            comment,
            "-f",
            path.to_str().unwrap(),
        ],
    );
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    pub fn start() -> Sshd {
        Sshd::start_with(SshdOptions::default())
    }

    /// An sshd that is another host (see the module documentation).
    pub fn start_separate_host() -> Sshd {
        Sshd::start_with(SshdOptions {
            separate_host: true,
            ..SshdOptions::default()
        })
    }

    pub fn start_with(options: SshdOptions) -> Sshd {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "sshd is not installed: apt-get install openssh-server (scripts/install-deps.sh)"
        );
        std::fs::create_dir_all("/run/sshd").unwrap();
        let tmp = tempfile::Builder::new()
            .prefix("dbsnap-sshd")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let host_key = dir.join("host_key");
        let host_key_pub = keygen(&host_key, "dbsnap-test-host");
        let identity = dir.join("user_key");
        let user_pub = keygen(&identity, "dbsnap-test-user");
        let authorized_keys = dir.join("authorized_keys");
        let line = match &options.key_options {
            Some(o) => format!("{o} {user_pub}\n"),
            None => format!("{user_pub}\n"),
        };
        std::fs::write(&authorized_keys, line).unwrap();
        let log = dir.join("sshd.log");
        let config = dir.join("sshd_config");
        let netns = options.separate_host.then(Netns::create);
        let remote_dir = netns.as_ref().map(|_| dir.join("remote"));
        let host = match &netns {
            Some(n) => n.addr.clone(),
            None => "127.0.0.1".into(),
        };
        let mut last_err = String::new();
        // A free port can be taken between the probe and sshd's bind: try a few.
        for _ in 0..5 {
            // A namespace of its own has every port free.
            let port = if netns.is_some() { 22 } else { free_port() };
            let mut config_text = sshd_config(&dir, &host, port, &host_key, &authorized_keys);
            if netns.is_some() {
                // A session whose link is cut ends within seconds, so that its rsync
                // stops before the next run takes over the partial it wrote into.
                config_text.push_str("ClientAliveInterval 2\nClientAliveCountMax 2\n");
            }
            std::fs::write(&config, config_text).unwrap();
            let mut command = match (&netns, &remote_dir) {
                (Some(netns), Some(remote)) => {
                    std::fs::create_dir_all(remote).unwrap();
                    let mut c = Command::new("ip");
                    // The tmpfs is mounted in sshd's own mount namespace only.
                    c.args(&netns.exec_prefix()[1..])
                        .args(["unshare", "--mount", "--propagation", "private", "--"])
                        .args(["sh", "-c", SEPARATE_HOST_START, "sh"])
                        .args([remote, &config, &log]);
                    c
                }
                _ => {
                    let mut c = Command::new("/usr/sbin/sshd");
                    c.args(["-D", "-e", "-f"]).arg(&config).arg("-E").arg(&log);
                    c
                }
            };
            let mut child = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting sshd");
            if wait_listening(port, &mut child, &log) {
                let known_hosts = dir.join("known_hosts");
                let name = match port {
                    22 => host.clone(),
                    _ => format!("[{host}]:{port}"),
                };
                std::fs::write(&known_hosts, format!("{name} {host_key_pub}\n")).unwrap();
                return Sshd {
                    dir,
                    _tmp: tmp,
                    host,
                    port,
                    user: "root".into(),
                    identity,
                    known_hosts,
                    authorized_keys,
                    host_key_pub,
                    log,
                    child,
                    remote_dir,
                    netns,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_err = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("sshd did not start: {last_err}");
    }

    /// A separate host's private directory (as its own namespace sees it; empty from
    /// the test's).
    pub fn remote_dir(&self) -> Option<&Path> {
        self.remote_dir.as_deref()
    }

    /// Run `argv` on the host itself: in sshd's network and mount namespaces for a
    /// separate host (for a test to look at what it holds), else here.
    pub fn on_host(&self, argv: &[&str]) -> Output {
        let mut command = match &self.netns {
            Some(_) => {
                let mut c = Command::new("nsenter");
                c.arg("--target")
                    .arg(self.child.id().to_string())
                    .args(["--mount", "--net", "--"]);
                c.args(argv);
                c
            }
            None => {
                let mut c = Command::new(argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        command
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {argv:?} on the backup host: {e}"))
    }

    /// A separate host's link: down (a pulled cable) or up again.
    pub fn set_link(&self, up: bool) {
        self.netns
            .as_ref()
            .expect("a separate host (start_separate_host)")
            .set_link(up);
    }

    /// The bytes that crossed a separate host's link so far (both directions).
    pub fn link_bytes(&self) -> u64 {
        self.netns
            .as_ref()
            .expect("a separate host (start_separate_host)")
            .link_bytes()
    }

    /// `ssh://root@127.0.0.1:PORT/path` for a destination `path` on this server.
    pub fn url(&self, path: &Path) -> String {
        format!(
            "ssh://{}@{}:{}{}",
            self.user,
            self.host,
            self.port,
            path.display()
        )
    }

    /// The client options that reach this server with the test key and known_hosts,
    /// without the destination (`-p PORT -i KEY -o ...`).
    pub fn client_args(&self) -> Vec<String> {
        vec![
            "-p".into(),
            self.port.to_string(),
            "-i".into(),
            self.identity.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
        ]
    }

    /// Run `remote_command` (one shell line) on the server as the test user.
    pub fn ssh(&self, remote_command: &str) -> Output {
        Command::new("ssh")
            .args(self.client_args())
            .arg(format!("{}@{}", self.user, self.host))
            .arg("--")
            .arg(remote_command)
            .stdin(Stdio::null())
            .output()
            .expect("running ssh")
    }

    /// Replace the authorized key's options (e.g. a forced command) for new connections.
    pub fn set_key_options(&self, options: Option<&str>) {
        let key = std::fs::read_to_string(self.identity.with_extension("pub")).unwrap();
        let line = match options {
            Some(o) => format!("{o} {}", key.trim()),
            None => key.trim().to_string(),
        };
        std::fs::write(&self.authorized_keys, format!("{line}\n")).unwrap();
    }

    /// The process ids of the sshd processes serving connections (the listener's
    /// children): killing them cuts every session off, as a network drop would.
    pub fn session_pids(&self) -> Vec<i32> {
        let listener = self.child.id();
        let children = format!("/proc/{listener}/task/{listener}/children");
        std::fs::read_to_string(children)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Kill every session (SIGKILL to the per-connection sshd processes); the listener
    /// keeps accepting new connections. Returns how many were killed.
    pub fn kill_sessions(&self) -> usize {
        let pids = self.session_pids();
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        pids.len()
    }

    /// Wait until at least one session is open (a client connected), up to `timeout`.
    pub fn wait_for_session(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.session_pids().is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A known_hosts file holding a *different* key for this server's address (a
    /// changed host key, as after a reinstall or in an attack).
    pub fn wrong_known_hosts(&self) -> PathBuf {
        let other = self.dir.join("other_host_key");
        let other_pub = keygen(&other, "dbsnap-test-other-host");
        let path = self.dir.join("known_hosts.wrong");
        std::fs::write(&path, format!("[127.0.0.1]:{} {other_pub}\n", self.port)).unwrap();
        path
    }

    /// An empty known_hosts file (the server's key is unknown).
    pub fn empty_known_hosts(&self) -> PathBuf {
        let path = self.dir.join("known_hosts.empty");
        std::fs::write(&path, "").unwrap();
        path
    }

    /// sshd's log so far, for assertion messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_sessions();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a separate host starts, inside its namespaces: its private directory mounted,
/// then sshd in place of the shell (so that the child's pid is sshd's).
const SEPARATE_HOST_START: &str = r#"mount -t tmpfs -o size=2g,mode=0755 dbsnap-backup-host "$1" && exec /usr/sbin/sshd -D -e -f "$2" -E "$3""#;

fn sshd_config(
    dir: &Path,
    host: &str,
    port: u16,
    host_key: &Path,
    authorized_keys: &Path,
) -> String {
    format!(
        "ListenAddress {host}:{port}\n\
         HostKey {host_key}\n\
         PidFile {pid}\n\
         AuthorizedKeysFile {authorized_keys}\n\
         UsePAM no\n\
         StrictModes no\n\
         PermitRootLogin prohibit-password\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         PermitUserEnvironment no\n\
         MaxSessions 32\n\
         MaxStartups 32:50:64\n\
         LogLevel VERBOSE\n\
         SetEnv SHLVL=1\n\
         Subsystem sftp /usr/lib/openssh/sftp-server\n",
        host_key = host_key.display(),
        pid = dir.join("sshd.pid").display(),
        authorized_keys = authorized_keys.display(),
    )
}

/// Whether sshd accepts connections on `port` (it logs "Server listening" once bound).
fn wait_listening(port: u16, child: &mut Child, log: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let listening = std::fs::File::open(log)
            .map(|f| {
                BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .any(|l| l.contains("Server listening") && l.contains(&port.to_string()))
            })
            .unwrap_or(false);
        if listening {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_runs_over_ssh_with_the_throwaway_keys() {
        let sshd = Sshd::start();
        let out = sshd.ssh("echo hello-from-$((40+2))");
        assert!(
            out.status.success(),
            "{} / {}",
            String::from_utf8_lossy(&out.stderr),
            sshd.log_text()
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello-from-42");
    }

    #[test]
    fn killing_the_sessions_cuts_a_running_command_off() {
        let sshd = Sshd::start();
        let mut client = Command::new("ssh")
            .args(sshd.client_args())
            .arg(format!("{}@{}", sshd.user, sshd.host))
            .arg("sleep 30")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(sshd.wait_for_session(Duration::from_secs(10)));
        assert!(sshd.kill_sessions() >= 1);
        let status = client.wait().unwrap();
        assert!(!status.success());
        // The listener still serves new connections.
        assert!(sshd.ssh("true").status.success());
    }

    #[test]
    fn a_separate_host_is_reached_over_its_link_only_and_its_directory_is_invisible_here() {
        let sshd = Sshd::start_separate_host();
        let remote = sshd.remote_dir().unwrap().to_path_buf();
        let before = sshd.link_bytes();
        let out = sshd.ssh(&format!(
            "echo there > {}/file && ip -o -4 addr show",
            remote.display()
        ));
        assert!(out.status.success(), "{out:?} / {}", sshd.log_text());
        assert!(String::from_utf8_lossy(&out.stdout).contains(&sshd.host));
        assert!(sshd.link_bytes() > before, "the session crossed the link");
        assert!(
            !remote.join("file").exists(),
            "the file is on the other host only"
        );
        let there = sshd.on_host(&["cat", remote.join("file").to_str().unwrap()]);
        assert_eq!(String::from_utf8_lossy(&there.stdout), "there\n");

        sshd.set_link(false);
        let cut = Command::new("ssh")
            .args(["-o", "ConnectTimeout=2"])
            .args(sshd.client_args())
            .arg(format!("{}@{}", sshd.user, sshd.host))
            .arg("true")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!cut.status.success(), "no way there with the link down");
        sshd.set_link(true);
        assert!(sshd.ssh("true").status.success());
    }

    #[test]
    fn a_changed_host_key_is_refused() {
        let sshd = Sshd::start();
        let wrong = sshd.wrong_known_hosts();
        // ssh keeps the first value given for an option: the override goes first.
        let out = Command::new("ssh")
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", wrong.display()))
            .args(sshd.client_args())
            .arg(format!("{}@{}", sshd.user, sshd.host))
            .arg("true")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("HOST IDENTIFICATION HAS CHANGED"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
