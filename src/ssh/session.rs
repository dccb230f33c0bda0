//! One ssh connection for a whole run, and every remote command through it.
//!
//! The first remote command starts a master connection (`ssh -M -N`) whose control
//! socket lies in a private (0700) directory under `state_dir`; every later command,
//! rsync included, is multiplexed over it, so a backup opens one TCP connection and
//! authenticates once. The master is a child of dbsnap that dies with it (parent-death
//! signal) and is closed with `ssh -O exit` when the session is dropped, so it never
//! outlives the run; a socket an interrupted run left behind is removed by the next
//! run or by `dbsnap cleanup` ([`remove_stale_sockets`]).
//!
//! Host keys are always checked (`StrictHostKeyChecking=yes` against the configured
//! known_hosts); an unknown or changed key is an error that says how to accept it.
//!
//! ssh joins its arguments into one line for the remote user's shell: every remote
//! command here is an argv vector turned into that line by [`command_line`] only, which
//! quotes each argument for a POSIX shell.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::AsyncWriteExt;

use super::url::SshTarget;
use crate::config::SshConfig;
use crate::error::{fail, Class};

/// The directory under `state_dir` that holds the control sockets.
pub const CONTROL_DIR: &str = "ssh";

/// ssh's own exit status for "the connection failed" (a remote command's status is
/// passed through otherwise).
const SSH_FAILED: i32 = 255;

/// Options dbsnap sets itself; `[backup.ssh] options` must not change them.
const OWN_OPTIONS: [&str; 5] = [
    "StrictHostKeyChecking",
    "UserKnownHostsFile",
    "ControlMaster",
    "ControlPath",
    "BatchMode",
];

/// Quote `arg` as one word for a POSIX shell: bare when it holds only safe characters,
/// else in single quotes (a `'` inside becomes `'\''`). Newlines and every other byte
/// stay literal inside single quotes.
pub fn quote(arg: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', r"'\''"))
}

/// The remote shell line for `argv`: each argument quoted, joined by spaces.
pub fn command_line<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| quote(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A path as the value of an ssh `-o` option: ssh splits values at spaces unless they
/// are in double quotes, and expands `%` tokens (`%%` is a literal `%`).
fn path_value(path: &Path) -> String {
    let text = path.display().to_string().replace('%', "%%");
    match text.contains(char::is_whitespace) {
        true => format!("\"{text}\""),
        false => text,
    }
}

/// Check `[backup.ssh] options` for what dbsnap owns.
pub fn validate_options(options: &[String]) -> Result<(), String> {
    for option in options {
        if let Some(own) = OWN_OPTIONS.iter().find(|o| {
            option
                .to_ascii_lowercase()
                .contains(&o.to_ascii_lowercase())
        }) {
            return Err(format!(
                "backup.ssh.options: {option:?} sets {own}, which dbsnap sets itself (host keys are \
                 always checked against backup.ssh.known_hosts; the connection is shared by dbsnap)"
            ));
        }
    }
    Ok(())
}

struct Master {
    child: std::process::Child,
}

pub struct Session {
    pub target: SshTarget,
    config: SshConfig,
    control_path: PathBuf,
    master_log: PathBuf,
    master: Mutex<Option<Master>>,
}

impl Session {
    pub fn new(target: SshTarget, config: &SshConfig, state_dir: &Path) -> Session {
        static SESSIONS: AtomicU32 = AtomicU32::new(0);
        let dir = state_dir.join(CONTROL_DIR);
        let pid = std::process::id();
        let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
        Session {
            target,
            config: config.clone(),
            control_path: dir.join(format!("m{pid}-{n}")),
            master_log: dir.join(format!("m{pid}-{n}.log")),
            master: Mutex::new(None),
        }
    }

    /// The options that reach the host (before the destination), without the control
    /// socket.
    fn base_options(&self) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        let mut option = |o: String| {
            args.push("-o".into());
            args.push(o);
        };
        option("StrictHostKeyChecking=yes".into());
        option("BatchMode=yes".into());
        option("ConnectTimeout=10".into());
        option("ServerAliveInterval=10".into());
        option("ServerAliveCountMax=3".into());
        if let Some(k) = &self.config.known_hosts {
            option(format!("UserKnownHostsFile={}", path_value(k)));
        }
        if let Some(i) = &self.config.identity_file {
            option(format!("IdentityFile={}", path_value(i)));
            option("IdentitiesOnly=yes".into());
        }
        if let Some(p) = self.target.port {
            args.extend(["-p".into(), p.to_string()]);
        }
        args.extend(self.config.options.iter().cloned());
        args
    }

    /// Options for a client multiplexed over the master.
    fn client_options(&self) -> Vec<String> {
        let mut args = vec![
            "-o".to_string(),
            format!("ControlPath={}", path_value(&self.control_path)),
            "-o".into(),
            "ControlMaster=no".into(),
        ];
        args.extend(self.base_options());
        args
    }

    /// Open the master connection unless it is open. Fails with what ssh said, classified
    /// (unreachable, host key, authentication).
    pub async fn connect(&self) -> anyhow::Result<()> {
        {
            let mut master = self.master.lock().unwrap();
            if let Some(m) = master.as_mut() {
                if matches!(m.child.try_wait(), Ok(None)) && self.control_path.exists() {
                    return Ok(());
                }
                let _ = m.child.kill();
                let _ = m.child.wait();
                *master = None;
            }
        }
        let dir = self.control_path.parent().expect("in CONTROL_DIR");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
        // ssh binds `ControlPath.XXXXXXXXXXXXXXXX` first; a Unix socket path has 108 bytes.
        if self.control_path.as_os_str().len() + 17 >= 104 {
            return Err(fail(
                Class::Config,
                format!(
                    "state_dir {} is too long for ssh's control socket ({}): choose a shorter state_dir",
                    dir.display(),
                    self.control_path.display()
                ),
            ));
        }
        let mut child = self.spawn_master()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.control_path.exists() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                let said = std::fs::read_to_string(&self.master_log).unwrap_or_default();
                return Err(self.connection_error(&said, status.code()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(
                    Class::Remote,
                    format!(
                        "ssh to {} did not finish connecting within 60 s: check the host and the network",
                        self.target.display_host()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::debug!(
            "ssh master connection to {} open",
            self.target.display_host()
        );
        *self.master.lock().unwrap() = Some(Master { child });
        Ok(())
    }

    /// Start `ssh -M -N` (the master) in the background; it dies with dbsnap.
    fn spawn_master(&self) -> anyhow::Result<std::process::Child> {
        let _ = std::fs::remove_file(&self.control_path);
        let log = std::fs::File::create(&self.master_log)
            .with_context(|| format!("creating {}", self.master_log.display()))?;
        let mut command = std::process::Command::new("ssh");
        command
            .args(["-M", "-N", "-o", "ControlPersist=no", "-o"])
            .arg(format!("ControlPath={}", path_value(&self.control_path)))
            .args(self.base_options())
            .arg(self.target.destination())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        // The master must not outlive dbsnap (kill -9 included).
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        command.spawn().map_err(|e| {
            fail(
                Class::Remote,
                format!("cannot start ssh ({e}): install the OpenSSH client (apt-get install openssh-client)"),
            )
        })
    }

    /// Run `argv` on the remote host (one quoted shell line), with `stdin` fed to it.
    /// Returns the output whatever the remote status; fails only when ssh itself does.
    pub async fn output(&self, argv: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<Output> {
        self.connect().await?;
        let line = command_line(argv);
        tracing::debug!(host = %self.target.display_host(), command = %line, "ssh");
        let mut child = tokio::process::Command::new("ssh")
            .args(self.client_options())
            .arg(self.target.destination())
            .arg(&line)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting ssh")?;
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(data).await.context("writing to ssh")?;
            drop(pipe);
        }
        let out = child.wait_with_output().await.context("running ssh")?;
        if out.status.code() == Some(SSH_FAILED) {
            return Err(self.connection_error(&String::from_utf8_lossy(&out.stderr), Some(255)));
        }
        Ok(out)
    }

    /// The local argv (`ssh OPTIONS HOST LINE`) that runs `argv` there over the master
    /// connection, for a process dbsnap starts itself (the receiving end of a stream).
    /// Connects first.
    pub async fn remote_argv(&self, argv: &[&str]) -> anyhow::Result<Vec<String>> {
        self.connect().await?;
        let mut words = vec!["ssh".to_string()];
        words.extend(self.client_options());
        words.push(self.target.destination());
        words.push(command_line(argv));
        Ok(words)
    }

    /// Run `argv` remotely; a non-zero status is an error saying `what` failed.
    pub async fn run(&self, argv: &[&str], what: &str) -> anyhow::Result<String> {
        let out = self.output(argv, None).await?;
        if !out.status.success() {
            return Err(anyhow::anyhow!(
                "{what} on {} failed ({}): {}",
                self.target.display_host(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The value of rsync's `-e`: ssh with this session's options, multiplexed over the
    /// master. rsync splits it at spaces and honours single and double quotes.
    pub async fn rsync_shell(&self) -> anyhow::Result<String> {
        self.connect().await?;
        let mut words = vec!["ssh".to_string()];
        for arg in self.client_options() {
            let word = match (arg.contains('\''), arg.contains('"')) {
                (false, _) if arg.contains(' ') || arg.is_empty() => format!("'{arg}'"),
                (false, _) => arg,
                (true, false) => format!("\"{arg}\""),
                (true, true) => {
                    return Err(fail(
                        Class::Config,
                        format!("the ssh option {arg:?} holds both quote characters, which rsync cannot pass to ssh: rename the file it names"),
                    ))
                }
            };
            words.push(word);
        }
        Ok(words.join(" "))
    }

    /// Turn what ssh said when it could not connect into an error that says what to do.
    fn connection_error(&self, said: &str, status: Option<i32>) -> anyhow::Error {
        let host = self.target.display_host();
        let name = self.target.known_hosts_name();
        let known_hosts = self
            .config
            .known_hosts
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.ssh/known_hosts".into());
        let keyscan = match self.target.port {
            Some(p) => format!("ssh-keyscan -p {p} {}", self.target.host),
            None => format!("ssh-keyscan {}", self.target.host),
        };
        let said = said
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("@@@"))
            .collect::<Vec<_>>()
            .join(" / ");
        let message = if said.contains("IDENTIFICATION HAS CHANGED") {
            format!(
                "the host key of {host} has CHANGED since it was recorded in {known_hosts}: this \
                 can be an attack, or the host was reinstalled. Check with its administrator; only \
                 then remove the old key (ssh-keygen -R '{name}' -f {known_hosts}), verify the new \
                 one (`{keyscan} | ssh-keygen -lf -` against the host's own \
                 `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) and append it: \
                 `{keyscan} >> {known_hosts}` (ssh said: {said})"
            )
        } else if said.contains("Host key verification failed")
            || said.contains("host key is known")
        {
            format!(
                "the host key of {host} is not known (known_hosts: {known_hosts}): dbsnap never \
                 accepts an unknown key. Verify it (`{keyscan} | ssh-keygen -lf -` against the \
                 host's own `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then append it: \
                 `{keyscan} >> {known_hosts}` and set [backup.ssh] known_hosts (ssh said: {said})"
            )
        } else if said.contains("Permission denied") || said.contains("Too many authentication") {
            format!(
                "{host} refused dbsnap's key: check the user in [backup] dest and that the public \
                 key of [backup.ssh] identity_file is in that user's authorized_keys (ssh said: {said})"
            )
        } else if [
            "Connection refused",
            "Could not resolve",
            "No route to host",
            "timed out",
            "Network is unreachable",
        ]
        .iter()
        .any(|s| said.contains(s))
        {
            format!(
                "cannot reach {host}: check the host name and port in [backup] dest, that sshd runs \
                 there and that the network lets dbsnap through (ssh said: {said})"
            )
        } else {
            format!(
                "the ssh connection to {host} failed{}: {said}. Check the network; a backup cut off \
                 by a lost connection is resumed by the next run",
                status.map(|s| format!(" (exit {s})")).unwrap_or_default()
            )
        };
        fail(Class::Remote, message)
    }

    /// Close the master connection (`ssh -O exit`), then make sure it is gone.
    pub fn close(&self) {
        let Some(mut master) = self.master.lock().unwrap().take() else {
            return;
        };
        let _ = std::process::Command::new("ssh")
            .arg("-o")
            .arg(format!("ControlPath={}", path_value(&self.control_path)))
            .args(["-O", "exit"])
            .arg(self.target.destination())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = master.child.kill();
        let _ = master.child.wait();
        let _ = std::fs::remove_file(&self.control_path);
        let _ = std::fs::remove_file(&self.master_log);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// Remove control sockets and logs that an interrupted run left in `state_dir` (their
/// masters died with it). Only the run-lock holder calls this.
pub fn remove_stale_sockets(state_dir: &Path) {
    let dir = state_dir.join(CONTROL_DIR);
    let own = format!("m{}-", std::process::id());
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&own) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_words_stay_bare_and_everything_else_is_single_quoted() {
        assert_eq!(
            quote("/srv/backups/20261125T000000Z"),
            "/srv/backups/20261125T000000Z"
        );
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$(touch x); `y`\nz"), "'$(touch x); `y`\nz'");
        assert_eq!(
            command_line(&["mkdir", "--", "/srv/a b'c"]),
            r"mkdir -- '/srv/a b'\''c'"
        );
    }

    #[test]
    fn a_quoted_line_comes_back_as_the_same_words_from_a_real_shell() {
        let hostile = "/tmp/x; $(touch pwned) `id` 'q' \"d\" \\ \n\t*?[a] ~ & | < > #";
        let line = command_line(&["printf", "%s\\0", hostile, "", "-n"]);
        let out = std::process::Command::new("sh")
            .args(["-c", &line])
            .output()
            .unwrap();
        let words: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
        assert_eq!(words, vec![hostile.as_bytes(), b"", b"-n", b""]);
    }

    #[test]
    fn options_dbsnap_owns_are_refused() {
        assert!(validate_options(&["-o".into(), "Compression=no".into()]).is_ok());
        let err = validate_options(&["-o".into(), "StrictHostKeyChecking=no".into()]).unwrap_err();
        assert!(err.contains("StrictHostKeyChecking"), "{err}");
    }
}
