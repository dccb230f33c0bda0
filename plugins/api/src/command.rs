//! The one way backends run external programs: an argv vector, never a shell, with a
//! timeout, and an error that says what ran and what it printed.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// How long a backend command may run unless the caller says otherwise. Snapshot
/// commands run under the database lock and are bounded separately by `max_lock_hold`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// A command that failed to start, failed, or timed out.
#[derive(Debug, thiserror::Error)]
pub struct CommandError {
    pub argv: String,
    pub reason: String,
    pub stderr: String,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.argv, self.reason)?;
        let stderr = self.stderr.trim();
        if !stderr.is_empty() {
            write!(f, ": {stderr}")?;
        }
        Ok(())
    }
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// A command to run: program and arguments, with an optional stdin and timeout.
#[derive(Debug, Clone)]
pub struct Cmd {
    argv: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    env: Vec<(OsString, OsString)>,
    /// How messages show it, when it runs another command (see [`Cmd::replaced_by`]).
    shown: Option<String>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            argv: vec![program.as_ref().to_owned()],
            stdin: None,
            timeout: DEFAULT_TIMEOUT,
            env: Vec::new(),
            shown: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.argv.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.argv
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The program and its arguments.
    pub fn argv(&self) -> &[OsString] {
        &self.argv
    }

    /// The environment variables set for it (besides `LC_ALL=C`, always set).
    pub fn envs(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    /// The command `argv` that runs this one some other way (`ssh HOST LINE` runs it on
    /// another host), with the same stdin and timeout; messages show it as `shown`.
    pub fn replaced_by(&self, argv: Vec<OsString>, shown: String) -> Cmd {
        Cmd {
            argv,
            stdin: self.stdin.clone(),
            timeout: self.timeout,
            env: Vec::new(),
            shown: Some(shown),
        }
    }

    /// The command line for messages, each argument quoted where a reader would need it.
    /// Display only: nothing ever passes it to a shell.
    pub fn display(&self) -> String {
        if let Some(shown) = &self.shown {
            return shown.clone();
        }
        self.argv
            .iter()
            .map(|a| quote_for_display(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Run to completion; a non-zero exit is an error carrying stderr.
    pub async fn run(&self) -> Result<Output, CommandError> {
        let started = Instant::now();
        let result = self.run_inner().await;
        tracing::debug!(
            command = %self.display(),
            ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "ran"
        );
        result
    }

    /// The process to spawn: see [`dying_with_dbsnap`]; C locale.
    fn command(&self, stdin: Stdio, stdout: Stdio) -> Command {
        let mut command = dying_with_dbsnap(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .env("LC_ALL", "C");
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command
    }

    async fn run_inner(&self) -> Result<Output, CommandError> {
        let fail = |reason: String, stderr: String| CommandError {
            argv: self.display(),
            reason,
            stderr,
        };
        let stdin = if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = self.command(stdin, Stdio::piped()).spawn().map_err(|e| {
            fail(
                format!("could not be started ({e}); is it installed?"),
                String::new(),
            )
        })?;
        let mut group = ProcessGroup::of(&child);
        if let Some(input) = &self.stdin {
            let mut pipe = child.stdin.take().expect("stdin was piped");
            // A child that exits without reading its input is reported by its exit status.
            let _ = pipe.write_all(input).await;
            drop(pipe);
        }
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => {
                group.disarm();
                output
            }
            Ok(Err(e)) => return Err(fail(format!("failed while running ({e})"), String::new())),
            Err(_) => {
                // Killed and reaped before the error is returned: what the command was
                // creating (a snapshot) either exists now or never will.
                drop(group);
                return Err(fail(
                    format!(
                        "did not finish within {} s and was killed",
                        self.timeout.as_secs()
                    ),
                    String::new(),
                ));
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if !output.status.success() {
            return Err(fail(format!("failed ({})", output.status), stderr));
        }
        Ok(Output { stdout, stderr })
    }
}

/// Run `from | to`: `from`'s standard output is fed to `to`'s standard input, through
/// dbsnap so that the bytes can be counted (`progress` gets the running total). No
/// timeout: a stream takes as long as the data needs; cancelling the future kills both
/// process groups. Both processes also die with dbsnap (parent-death signal), so a
/// killed run never leaves a receiver writing into a directory cleanup is removing.
/// `bwlimit` caps the rate (bytes per second). Returns the bytes that went through.
pub async fn pipe(
    from: &Cmd,
    to: &Cmd,
    bwlimit: Option<u64>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, CommandError> {
    let argv = format!("{} | {}", from.display(), to.display());
    let fail = |reason: String, stderr: String| CommandError {
        argv: argv.clone(),
        reason,
        stderr,
    };
    let mut sender = from
        .command(Stdio::null(), Stdio::piped())
        .spawn()
        .map_err(|e| {
            fail(
                format!(
                    "could not start `{}` ({e}); is it installed?",
                    from.display()
                ),
                String::new(),
            )
        })?;
    let _sender_group = ProcessGroup::of(&sender);
    let mut receiver = to
        .command(Stdio::piped(), Stdio::null())
        .spawn()
        .map_err(|e| {
            fail(
                format!("could not start `{}` ({e}); is it installed?", to.display()),
                String::new(),
            )
        })?;
    let _receiver_group = ProcessGroup::of(&receiver);

    let mut source = sender.stdout.take().expect("stdout was piped");
    let mut sink = receiver.stdin.take().expect("stdin was piped");
    let sender_err = collect(sender.stderr.take().expect("stderr was piped"));
    let receiver_err = collect(receiver.stderr.take().expect("stderr was piped"));
    let forward = async move {
        // Small reads under a limit keep the rate smooth.
        let mut buffer = vec![0u8; if bwlimit.is_some() { 64 << 10 } else { 1 << 20 }];
        let mut total = 0u64;
        let started = Instant::now();
        let copied: std::io::Result<()> = async {
            loop {
                let n = source.read(&mut buffer).await?;
                if n == 0 {
                    return Ok(());
                }
                sink.write_all(&buffer[..n]).await?;
                total += n as u64;
                progress(total);
                if let Some(limit) = bwlimit.filter(|l| *l > 0) {
                    let due = Duration::from_secs_f64(total as f64 / limit as f64);
                    if let Some(ahead) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(ahead).await;
                    }
                }
            }
        }
        .await;
        // A sender still writing into a receiver that stopped reading must see a broken
        // pipe (and exit, closing its stderr), not wait forever for room in the pipe.
        drop(source);
        copied?;
        sink.shutdown().await?;
        drop(sink);
        Ok::<u64, std::io::Error>(total)
    };
    let (forwarded, sender_err, receiver_err) = tokio::join!(forward, sender_err, receiver_err);
    let sent = sender.wait().await;
    let received = receiver.wait().await;
    let stderr = format!("{}{}", sender_err.trim_end(), receiver_err.trim_end());
    let sent_ok = sent.as_ref().is_ok_and(|s| s.success());
    let received_ok = received.as_ref().is_ok_and(|s| s.success());
    match (sent_ok, received_ok, forwarded) {
        (true, true, Ok(total)) => Ok(total),
        // The receiver stopped taking the stream (and the sender then broke off).
        (_, false, Err(_)) => Err(fail(
            format!("failed: the receiver exited with {}", describe(received)),
            stderr,
        )),
        (false, _, _) => Err(fail(
            format!("failed: the sender exited with {}", describe(sent)),
            stderr,
        )),
        (true, false, _) => Err(fail(
            format!("failed: the receiver exited with {}", describe(received)),
            stderr,
        )),
        (true, true, Err(e)) => Err(fail(
            format!("failed while forwarding the stream ({e})"),
            stderr,
        )),
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("an error ({e})"),
    }
}

async fn collect(mut stream: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut text = Vec::new();
    let _ = stream.read_to_end(&mut text).await;
    String::from_utf8_lossy(&text).into_owned()
}

/// The one way dbsnap starts a child process (backend commands, exec plugins, hooks,
/// rsync): in its own process group (so that a cancelled command takes its children
/// along, and the terminal's Ctrl-C reaches only dbsnap, which then cleans up in
/// order), killed when its handle is dropped, and killed when dbsnap dies (kill -9, OOM)
/// by a parent-death signal, so that nothing keeps reading a snapshot or writing a
/// directory that `dbsnap cleanup` is removing.
pub fn dying_with_dbsnap(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    command.kill_on_drop(true).process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    // The signal follows the spawning thread: the runtime's main or worker thread,
    // which live as long as dbsnap.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    command
}

/// How long a dropped process group may take to die before dbsnap stops waiting for
/// it. A process inside a system call (`btrfs subvolume snapshot` in its ioctl, an
/// `lvcreate`) dies only when the call returns.
const REAP_TIMEOUT: Duration = Duration::from_secs(60);

/// Kills a child's whole process group when dropped, unless disarmed once the child
/// has exited, and waits until every process in the group is gone: a plugin script's
/// own children (a `sleep`, a `btrfs` it started) must not outlive a command that
/// timed out or was cancelled, and a snapshot command must have finished dying before
/// dbsnap releases what it made. The child must have been started with
/// `process_group(0)` (see [`dying_with_dbsnap`]).
pub struct ProcessGroup(Option<nix::unistd::Pid>);

impl ProcessGroup {
    pub fn of(child: &tokio::process::Child) -> Self {
        ProcessGroup(child.id().map(|pid| nix::unistd::Pid::from_raw(pid as i32)))
    }

    /// The child exited by itself; leave its group alone.
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let Some(pgid) = self.0 else {
            return;
        };
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        // Blocking on purpose: a drop cannot await, and the wait is over as soon as the
        // killed processes leave their system calls (milliseconds, normally).
        let started = Instant::now();
        while group_is_alive(pgid.as_raw()) {
            if started.elapsed() > REAP_TIMEOUT {
                tracing::warn!(
                    "process group {pgid} is still running {} s after SIGKILL; what it creates \
                     is released by the next `dbsnap cleanup`",
                    REAP_TIMEOUT.as_secs()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Whether a process of group `pgid` is still running (zombies have finished).
fn group_is_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .any(|stat| {
            // After the command name (in parentheses): state, ppid, pgrp.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().take(3).collect())
                .unwrap_or_default();
            matches!(fields.as_slice(), [state, _, group]
                if *state != "Z" && *state != "X" && group.parse() == Ok(pgid))
        })
}

fn quote_for_display(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn arguments_reach_the_program_unchanged() {
        let hostile = "a b; echo pwned $(id) 'q'";
        let out = Cmd::new("printf")
            .args(["%s", hostile])
            .run()
            .await
            .unwrap();
        assert_eq!(out.stdout, hostile);
    }

    #[tokio::test]
    async fn failure_carries_stderr_and_command() {
        let err = Cmd::new("ls")
            .arg("/does/not/exist")
            .run()
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`ls /does/not/exist` failed"), "{text}");
        assert!(text.contains("No such file"), "{text}");
    }

    #[tokio::test]
    async fn timeout_kills() {
        let err = Cmd::new("sleep")
            .arg("5")
            .timeout(Duration::from_millis(100))
            .run()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("killed"), "{err}");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = std::env::temp_dir().join(format!("dbsnap-pg-{}", std::process::id()));
        let marker = dir.display().to_string();
        let err = Cmd::new("sh")
            .args(["-c", &format!("(sleep 1; touch '{marker}') & sleep 5")])
            .timeout(Duration::from_millis(200))
            .run()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("killed"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!dir.exists(), "a grandchild outlived the timeout");
    }

    #[tokio::test]
    async fn missing_program_is_explained() {
        let err = Cmd::new("dbsnap-no-such-program").run().await.unwrap_err();
        assert!(err.to_string().contains("is it installed"), "{err}");
    }

    #[tokio::test]
    async fn stdin_is_passed() {
        let out = Cmd::new("cat").stdin("hello").run().await.unwrap();
        assert_eq!(out.stdout, "hello");
    }

    #[test]
    fn display_quotes_only_where_needed() {
        let cmd = Cmd::new("btrfs").args(["subvolume", "snapshot", "/a b/it's"]);
        assert_eq!(cmd.display(), r"btrfs subvolume snapshot '/a b/it'\''s'");
    }

    #[tokio::test]
    async fn pipe_counts_the_bytes_that_pass() {
        let seen = std::sync::atomic::AtomicU64::new(0);
        let bytes = pipe(
            &Cmd::new("head").args(["-c", "3000000", "/dev/zero"]),
            &Cmd::new("wc").arg("-c"),
            None,
            &|n| seen.store(n, std::sync::atomic::Ordering::Relaxed),
        )
        .await
        .unwrap();
        assert_eq!(bytes, 3_000_000);
        assert_eq!(seen.into_inner(), 3_000_000);
    }

    #[tokio::test]
    async fn pipe_names_the_side_that_failed() {
        let err = pipe(
            &Cmd::new("printf").arg("data"),
            &Cmd::new("sh").args(["-c", "cat >/dev/null; echo broken >&2; exit 3"]),
            None,
            &|_| {},
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("the receiver exited"), "{err}");
        assert!(err.contains("broken"), "{err}");
        let err = pipe(
            &Cmd::new("ls").arg("/does/not/exist"),
            &Cmd::new("cat"),
            None,
            &|_| {},
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("the sender exited"), "{err}");
    }

    #[tokio::test]
    async fn pipe_names_the_receiver_when_it_stops_reading_and_the_sender_is_stopped_too() {
        let err = pipe(
            &Cmd::new("head").args(["-c", "200000000", "/dev/zero"]),
            &Cmd::new("sh").args(["-c", "head -c 10 >/dev/null; echo gone >&2; exit 3"]),
            None,
            &|_| {},
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("the receiver exited"), "{err}");
        assert!(err.contains("gone"), "{err}");
    }

    #[test]
    fn a_replacing_command_keeps_stdin_and_timeout_and_shows_its_own_text() {
        let cmd = Cmd::new("zfs")
            .args(["list", "-H"])
            .stdin("x")
            .timeout(Duration::from_secs(7));
        let over = cmd.replaced_by(
            vec!["ssh".into(), "host".into()],
            "on host: zfs list -H".into(),
        );
        assert_eq!(over.argv(), ["ssh", "host"]);
        assert_eq!(over.stdin.as_deref(), Some(&b"x"[..]));
        assert_eq!(over.timeout, Duration::from_secs(7));
        assert_eq!(over.display(), "on host: zfs list -H");
    }

    #[tokio::test]
    async fn pipe_keeps_to_the_rate_limit() {
        let started = Instant::now();
        pipe(
            &Cmd::new("head").args(["-c", "2000000", "/dev/zero"]),
            &Cmd::new("cat"),
            Some(4_000_000),
            &|_| {},
        )
        .await
        .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );
    }
}
