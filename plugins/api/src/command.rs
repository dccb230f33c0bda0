//! The one way backends run external programs: an argv vector, never a shell, with a
//! timeout, and an error that says what ran and what it printed.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
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
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            argv: vec![program.as_ref().to_owned()],
            stdin: None,
            timeout: DEFAULT_TIMEOUT,
            env: Vec::new(),
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

    /// The command line for messages, each argument quoted where a reader would need it.
    /// Display only: nothing ever passes it to a shell.
    pub fn display(&self) -> String {
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

    async fn run_inner(&self) -> Result<Output, CommandError> {
        let fail = |reason: String, stderr: String| CommandError {
            argv: self.display(),
            reason,
            stderr,
        };
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .env("LC_ALL", "C");
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let mut child = command.spawn().map_err(|e| {
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
                return Err(fail(
                    format!(
                        "did not finish within {} s and was killed",
                        self.timeout.as_secs()
                    ),
                    String::new(),
                ))
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

/// Kills a child's whole process group when dropped, unless disarmed once the child
/// has exited: a plugin script's own children (a `sleep`, a `btrfs` it started) must not
/// outlive a command that timed out or was cancelled. The child must have been started
/// with `process_group(0)`.
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
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
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
}
