//! Running restic: every call is one argv vector (never a shell), with an environment
//! cleared and then set to exactly what restic needs: the repository and the password
//! *file* (`RESTIC_REPOSITORY`, `RESTIC_PASSWORD_FILE`), the storage credentials of
//! `[backup.restic] env_file`, and the few variables ssh and rclone need to run. The
//! password and the credentials never appear in argv, in logs or in manifests.

mod backup;
mod env;
pub mod json;
mod namespace;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// How long a restic command waits while another process holds the repository's lock
/// before it fails (restic 0.14 has no `--retry-lock`, so dbsnap retries). Backups of
/// several servers into one repository share it (`restic backup` takes a shared lock),
/// but `forget` and `prune` need it alone: a run that meets another run's `forget` or a
/// `prune` waits for it rather than failing. A stale lock (its process gone) is reported
/// at once by the preflight, never waited for.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

use anyhow::Context;
use dbsnap_backend_api::command::ProcessGroup;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::config::ResticConfig;
use crate::error::{fail, Class};
pub use backup::BackupRequest;
pub use env::redact;
use env::{read_env_file, warn_if_loose};
pub use json::{Lock, Snapshot, Summary};
pub use namespace::Bind;

/// The oldest restic whose JSON output and options dbsnap was tested with.
pub const MIN_VERSION: (u32, u32) = (0, 14);

/// Variables of dbsnap's own environment restic may need: PATH (restic starts `ssh`
/// for sftp and `rclone` for rclone repositories), HOME (their configuration and
/// known hosts), an ssh agent, and proxy settings for HTTP-based stores.
const PASSED_THROUGH: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "SSH_AUTH_SOCK",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "https_proxy",
    "http_proxy",
    "no_proxy",
];

/// One restic repository, ready to run restic against.
pub struct Restic {
    binary: PathBuf,
    repository: String,
    password_file: PathBuf,
    /// From the env file; never printed (see the `Debug` impl).
    env: Vec<(String, OsString)>,
    /// `[backup.restic] options`, each given as `-o OPTION`.
    options: Vec<String>,
    cache_dir: PathBuf,
    /// [`LOCK_WAIT`], shorter in tests.
    lock_wait: std::time::Duration,
}

impl std::fmt::Debug for Restic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restic")
            .field("repository", &redact(&self.repository))
            .field("password_file", &self.password_file)
            .field(
                "env",
                &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Restic {
    /// Find restic and read the configuration's files (warning about loose modes).
    /// Contacts nothing yet.
    pub fn open(
        repository: &str,
        config: &ResticConfig,
        state_dir: &Path,
    ) -> anyhow::Result<Restic> {
        let binary = which::which("restic").map_err(|_| {
            fail(
                Class::Transfer,
                "restic is not installed (or not on PATH): install it (apt-get install restic; \
                 version 0.14 or later) to use a restic: destination",
            )
        })?;
        let meta = std::fs::metadata(&config.password_file).map_err(|e| {
            fail(
                Class::Config,
                format!(
                    "backup.restic.password_file: cannot read {}: {e}. Write the repository's \
                     password there (chmod 600)",
                    config.password_file.display()
                ),
            )
        })?;
        warn_if_loose(
            &config.password_file,
            meta.permissions().mode(),
            "the repository's password",
        );
        let env = match &config.env_file {
            Some(path) => read_env_file(path)?,
            None => Vec::new(),
        };
        Ok(Restic {
            binary,
            repository: repository.to_string(),
            password_file: config.password_file.clone(),
            env,
            options: config.options.clone(),
            cache_dir: state_dir.join("restic-cache"),
            lock_wait: LOCK_WAIT,
        })
    }

    /// The repository, with any password in it masked, for messages.
    pub fn shown(&self) -> String {
        redact(&self.repository)
    }

    /// A local repository's directory (a plain path, or `local:PATH`).
    pub fn local_dir(&self) -> Option<PathBuf> {
        local_dir(&self.repository)
    }

    /// The restic command line, with its environment, that the user can run by hand
    /// (for messages): `RESTIC_PASSWORD_FILE=... restic -r '...' ARGS`.
    pub fn by_hand(&self, args: &str) -> String {
        let env = self
            .env
            .iter()
            .map(|(k, _)| format!("{k}=..."))
            .chain([format!(
                "RESTIC_PASSWORD_FILE={}",
                quote(&self.password_file.display().to_string())
            )])
            .collect::<Vec<_>>()
            .join(" ");
        format!("{env} restic -r {} {args}", quote(&self.shown()))
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command.env_clear();
        for key in PASSED_THROUGH {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        command
            .env("LC_ALL", "C")
            .env("RESTIC_REPOSITORY", &self.repository)
            .env("RESTIC_PASSWORD_FILE", &self.password_file)
            .env("RESTIC_CACHE_DIR", &self.cache_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(self.options.iter().flat_map(|o| ["-o", o.as_str()]))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            // The terminal's Ctrl-C goes to dbsnap, which stops restic itself.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe. If dbsnap dies, restic is told to stop:
        // on SIGINT it writes no snapshot and removes its lock (restic 0.14 ignores
        // SIGTERM's chance to clean up: it dies with its lock left behind).
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGINT)
                    .map_err(std::io::Error::from)
            });
        }
        command
    }

    /// Run restic to completion; its stdout on success, a classified error otherwise.
    async fn run(&self, args: &[&str], what: &str, class: Class) -> anyhow::Result<String> {
        self.run_with_input(args, None, what, class).await
    }

    async fn run_with_input(
        &self,
        args: &[&str],
        input: Option<&[u8]>,
        what: &str,
        class: Class,
    ) -> anyhow::Result<String> {
        let mut waiting = self.lock_waiting(what);
        loop {
            let (status, outputs) = self.output(args, input).await?;
            if status.success() {
                return outputs.stdout();
            }
            let stderr = outputs.stderr()?;
            if !waiting.may_retry(&stderr).await {
                return Err(self.failure(&stderr, what, class, status));
            }
        }
    }

    /// How long a command waits for another process's lock ([`LOCK_WAIT`]).
    pub fn lock_wait(&self) -> std::time::Duration {
        self.lock_wait
    }

    /// A new wait for the repository's lock for `what` (see [`LOCK_WAIT`]).
    pub fn lock_waiting<'a>(&self, what: &'a str) -> LockWaiting<'a> {
        LockWaiting {
            what,
            until: std::time::Instant::now() + self.lock_wait,
            pause: std::time::Duration::from_millis(500),
        }
    }

    /// Run restic to completion, whatever its exit status.
    async fn output(
        &self,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> anyhow::Result<(std::process::ExitStatus, Outputs)> {
        tracing::debug!(?args, "restic");
        let mut command = self.command(args);
        let outputs = Outputs::attach(&mut command)?;
        if input.is_some() {
            command.stdin(Stdio::piped());
        }
        let mut child = command.spawn().map_err(|e| self.not_started(e))?;
        // Dropped (the run interrupted): restic and the ssh or rclone it started are
        // killed and gone before anything removes what they were writing.
        let mut group = ProcessGroup::of(&child);
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(input).await.context("writing to restic")?;
        }
        let status = child.wait().await?;
        group.disarm();
        Ok((status, outputs))
    }

    fn not_started(&self, e: std::io::Error) -> anyhow::Error {
        fail(
            Class::Transfer,
            format!(
                "cannot start {} ({e}); install restic (apt-get install restic)",
                self.binary.display()
            ),
        )
    }

    /// Turn restic's complaint into a failure the user can act on.
    fn failure(
        &self,
        stderr: &str,
        what: &str,
        class: Class,
        status: std::process::ExitStatus,
    ) -> anyhow::Error {
        let repo = self.shown();
        // restic may quote the repository string: never with a password in it.
        let stderr = &stderr.replace(&self.repository, &repo);
        let said = last_lines(stderr, 4);
        let lower = self.complaint(stderr);
        let (class, message) = if lower.contains("wrong password") {
            (
                Class::Repository,
                format!(
                    "the restic repository {repo} refused the password in backup.restic.password_file \
                     ({}): put the repository's password there",
                    self.password_file.display()
                ),
            )
        } else if says_missing(&lower) {
            (
                Class::Repository,
                format!(
                    "there is no restic repository at {repo}: create it once with `dbsnap \
                     init-repo` (or by hand: `{}`); a backup never creates one",
                    self.by_hand("init")
                ),
            )
        } else if lower.contains("config file already exists")
            || lower.contains("already initialized")
        {
            (Class::Repository, already_there(&repo))
        } else if says_unreachable(&lower) {
            (
                Class::Repository,
                format!("the restic repository {repo} cannot be reached: {said}"),
            )
        } else if lower.contains("repository is already locked") {
            (
                Class::Repository,
                format!(
                    "the restic repository {repo} is locked by another process (dbsnap waited {} \
                     s for it): {said}. If that process is gone, `dbsnap cleanup` removes a lock \
                     dbsnap left; another one is removed with `{}`",
                    self.lock_wait.as_secs(),
                    self.by_hand("unlock")
                ),
            )
        } else if lower.contains("no space left on device") || lower.contains("disk quota exceeded")
        {
            (
                Class::Destination,
                format!(
                    "the restic repository {repo} is full: free space there or choose another \
                     [backup] dest. restic said: {said}"
                ),
            )
        } else {
            (
                class,
                format!("{what} failed (restic exited with {status}): {said}"),
            )
        };
        fail(class, format!("{what}: {message}"))
    }

    /// restic's complaint, lower case, without the repository string it echoes: what
    /// it says is classified by words, and a repository's own text (the port 40425 of
    /// a REST server, a path holding "not found") must not count as one.
    fn complaint(&self, stderr: &str) -> String {
        stderr
            .replace(&self.repository, "")
            .replace(&self.shown(), "")
            .to_lowercase()
    }

    /// restic's version, refused when older than [`MIN_VERSION`].
    pub async fn check_version(&self) -> anyhow::Result<String> {
        let out = self
            .run(&["version"], "restic version", Class::Transfer)
            .await?;
        let version = json::parse_version(&out).ok_or_else(|| {
            fail(
                Class::Transfer,
                format!("cannot read restic's version from {out:?}"),
            )
        })?;
        if (version.0, version.1) < MIN_VERSION {
            return Err(fail(
                Class::Transfer,
                format!(
                    "restic {}.{}.{} is too old: dbsnap needs {}.{} or later (its JSON output and \
                     options); install a newer restic",
                    version.0, version.1, version.2, MIN_VERSION.0, MIN_VERSION.1
                ),
            ));
        }
        Ok(format!("{}.{}.{}", version.0, version.1, version.2))
    }

    /// That the repository exists, can be reached and opens with the password; its id.
    pub async fn check_access(&self) -> anyhow::Result<String> {
        let config = self
            .run(
                &["cat", "config", "--no-lock"],
                "opening the repository",
                Class::Repository,
            )
            .await?;
        let config: serde_json::Value = serde_json::from_str(&config)
            .with_context(|| format!("reading `restic cat config`: {}", last_lines(&config, 2)))?;
        Ok(config["id"].as_str().unwrap_or_default().to_string())
    }

    /// The snapshots carrying every tag in `tags` written by `host`.
    pub async fn snapshots(&self, tags: &[&str], host: &str) -> anyhow::Result<Vec<Snapshot>> {
        let tag_filter = tags.join(",");
        let out = self
            .run(
                &[
                    "snapshots",
                    "--json",
                    "--no-lock",
                    "--tag",
                    &tag_filter,
                    "--host",
                    host,
                ],
                "listing the repository's snapshots",
                Class::Repository,
            )
            .await?;
        serde_json::from_str::<Option<Vec<Snapshot>>>(&out)
            .map(Option::unwrap_or_default)
            .with_context(|| format!("reading `restic snapshots --json`: {}", last_lines(&out, 2)))
    }

    /// The locks in the repository.
    pub async fn locks(&self) -> anyhow::Result<Vec<Lock>> {
        let out = self
            .run(
                &["list", "locks", "--no-lock"],
                "listing the repository's locks",
                Class::Repository,
            )
            .await?;
        let mut locks = Vec::new();
        for id in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
            // A lock removed between the two calls is no lock.
            let Ok(text) = self
                .run(
                    &["cat", "lock", id, "--no-lock"],
                    "reading a lock",
                    Class::Repository,
                )
                .await
            else {
                continue;
            };
            let mut lock: Lock =
                serde_json::from_str(&text).with_context(|| format!("reading restic lock {id}"))?;
            lock.id = id.to_string();
            locks.push(lock);
        }
        Ok(locks)
    }

    /// A file of a snapshot, as text.
    pub async fn dump(&self, snapshot: &str, path: &str) -> anyhow::Result<String> {
        self.run(
            &["dump", "--no-lock", snapshot, path],
            &format!("reading {path} from snapshot {snapshot}"),
            Class::Repository,
        )
        .await
    }

    /// Save `text` as the file `/FILENAME` of a new snapshot; its short id.
    pub async fn save_file(
        &self,
        filename: &str,
        text: &str,
        host: &str,
        tags: &[String],
    ) -> anyhow::Result<String> {
        let mut args = vec![
            "backup",
            "--json",
            "--stdin",
            "--stdin-filename",
            filename,
            "--host",
            host,
        ];
        for tag in tags {
            args.extend(["--tag", tag]);
        }
        let out = self
            .run_with_input(
                &args,
                Some(text.as_bytes()),
                &format!("saving {filename}"),
                Class::Transfer,
            )
            .await?;
        let summary = json::summary_of(&out)
            .with_context(|| format!("restic wrote no summary: {}", last_lines(&out, 2)))?;
        Ok(summary.snapshot_id)
    }

    /// Restore snapshot `id` into `target` (its paths appear below it); with `only`,
    /// just that path of the snapshot and what is below it.
    pub async fn restore(
        &self,
        id: &str,
        target: &Path,
        only: Option<&Path>,
    ) -> anyhow::Result<()> {
        let target = target.to_string_lossy();
        let mut args = vec!["restore", "--no-lock", id, "--target", &target];
        let include = only.map(|p| format!("--include={}", literal_pattern(p)));
        args.extend(include.as_deref());
        self.run(&args, &format!("restoring snapshot {id}"), Class::Transfer)
            .await
            .map(drop)
    }

    /// Whether there is a repository at all: `false` when restic says there is none,
    /// an error when it cannot tell (unreachable, a wrong password: a repository then).
    pub async fn exists(&self) -> anyhow::Result<bool> {
        let (status, outputs) = self.output(&["cat", "config", "--no-lock"], None).await?;
        if status.success() {
            return Ok(true);
        }
        let stderr = outputs.stderr()?;
        if says_missing(&self.complaint(&stderr)) {
            return Ok(false);
        }
        Err(self.failure(&stderr, "opening the repository", Class::Repository, status))
    }

    /// `restic init`: a new repository, encrypted with the password file's password.
    /// Refuses (before restic writes anything) where a repository exists. Returns the
    /// new repository's id.
    pub async fn init(&self) -> anyhow::Result<String> {
        if self.exists().await? {
            return Err(fail(Class::Repository, already_there(&self.shown())));
        }
        self.run(&["init"], "creating the repository", Class::Repository)
            .await?;
        self.check_access().await
    }

    /// Forget snapshots by id (their data stays until [`Restic::prune`]).
    pub async fn forget(&self, ids: &[&str]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut args = vec!["forget"];
        args.extend_from_slice(ids);
        self.run(&args, "forgetting snapshots", Class::Repository)
            .await
            .map(drop)
    }

    /// Delete the data no snapshot references any more.
    pub async fn prune(&self) -> anyhow::Result<()> {
        self.run(&["prune"], "pruning the repository", Class::Repository)
            .await
            .map(drop)
    }

    /// `restic check`, reading `read_data_subset` of the data too when given. Returns
    /// restic's report; a damaged repository is a verification failure.
    pub async fn check(&self, read_data_subset: Option<&str>) -> anyhow::Result<String> {
        let mut args = vec!["check"];
        if let Some(subset) = read_data_subset {
            args.extend(["--read-data-subset", subset]);
        }
        self.run(&args, "checking the repository", Class::Verify)
            .await
    }

    /// Remove the stale locks (of dead processes on this host, or older than 30 min).
    pub async fn unlock(&self) -> anyhow::Result<()> {
        self.run(&["unlock"], "removing stale locks", Class::Repository)
            .await
            .map(drop)
    }
}

/// Waiting, a while, for another process to let go of the repository's lock.
pub struct LockWaiting<'a> {
    what: &'a str,
    until: std::time::Instant,
    /// Doubles up to 10 s: a `forget` is over in a second, a `prune` takes minutes.
    pause: std::time::Duration,
}

impl LockWaiting<'_> {
    /// After a failure that said `stderr`: whether to run the command again, having
    /// waited, because another process holds the lock and the wait is not over.
    async fn may_retry(&mut self, stderr: &str) -> bool {
        let locked = stderr
            .to_lowercase()
            .contains("repository is already locked");
        locked && self.pause(last_lines(stderr, 1).trim()).await
    }

    /// Wait a little for the lock `held` describes to go; false (at once) once the
    /// whole wait is over.
    pub async fn pause(&mut self, held: &str) -> bool {
        if std::time::Instant::now() >= self.until {
            return false;
        }
        tracing::info!(
            "{}: the restic repository is locked by another process ({held}); trying again in \
             {:?}",
            self.what,
            self.pause
        );
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(std::time::Duration::from_secs(10));
        true
    }
}

/// restic's stdout and stderr go to files (removed when dropped), not pipes: a Go
/// program that writes to a pipe whose reader has died is killed by SIGPIPE on the
/// spot, so a restic told to stop because dbsnap was killed would die before removing
/// its lock.
struct Outputs {
    out: tempfile::NamedTempFile,
    err: tempfile::NamedTempFile,
}

impl Outputs {
    fn attach(command: &mut Command) -> anyhow::Result<Outputs> {
        let outputs = Outputs {
            out: tempfile::NamedTempFile::new().context("creating a file for restic's output")?,
            err: tempfile::NamedTempFile::new().context("creating a file for restic's output")?,
        };
        command
            .stdout(Stdio::from(outputs.out.as_file().try_clone()?))
            .stderr(Stdio::from(outputs.err.as_file().try_clone()?));
        Ok(outputs)
    }

    fn stdout(&self) -> anyhow::Result<String> {
        Ok(String::from_utf8_lossy(&std::fs::read(self.out.path())?).into_owned())
    }

    fn stderr(&self) -> anyhow::Result<String> {
        Ok(String::from_utf8_lossy(&std::fs::read(self.err.path())?).into_owned())
    }
}

/// The directory of a local repository string (a plain path, or `local:PATH`).
pub fn local_dir(repository: &str) -> Option<PathBuf> {
    let path = repository.strip_prefix("local:").unwrap_or(repository);
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// Whether restic's complaint (lower case) says there is no repository at all (and
/// not that it could not reach the place to look).
fn says_missing(lower: &str) -> bool {
    lower.contains("is there a repository at the following location")
        && (lower.contains("no such file")
            || lower.contains("404")
            || lower.contains("not found")
            || lower.contains("does not exist"))
        && !says_unreachable(lower)
}

/// Whether restic's complaint (lower case) says the repository's store cannot be reached.
fn says_unreachable(lower: &str) -> bool {
    [
        "connection refused",
        "dial tcp",
        "no such host",
        "unable to start the sftp session",
        "i/o timeout",
        "network is unreachable",
        "could not resolve",
    ]
    .iter()
    .any(|s| lower.contains(s))
}

fn already_there(repo: &str) -> String {
    format!(
        "there is already a restic repository at {repo}: nothing was changed (dbsnap never \
         initialises a repository twice). `dbsnap check` says whether it opens with \
         backup.restic.password_file"
    )
}

/// `path` as a restic `--include`/`--exclude` pattern matching exactly it (and what is
/// below it): restic reads `*`, `?`, `[` and `\` in patterns as wildcards and escapes.
fn literal_pattern(path: &Path) -> String {
    let mut pattern = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, '*' | '?' | '[' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern
}

/// Single-quoted for a POSIX shell, for commands printed for the user to run.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_that_cannot_be_reached_is_no_missing_repository() {
        // As restic 0.14 says it, for a REST server whose port holds "404".
        let refused = "fatal: unable to open config file: client.head: head \
                       \"http://127.0.0.1:40425/config\": dial tcp 127.0.0.1:40425: connect: \
                       connection refused\nis there a repository at the following location?\n";
        assert!(says_unreachable(refused) && !says_missing(refused));
        let missing = "fatal: unable to open config file: <config/> does not exist\n\
                       is there a repository at the following location?\n";
        assert!(says_missing(missing) && !says_unreachable(missing));
    }

    #[test]
    fn include_patterns_match_their_path_literally() {
        assert_eq!(
            literal_pattern(Path::new(r"/srv/db[1]/*x?\")),
            r"/srv/db\[1]/\*x\?\\"
        );
        assert_eq!(
            literal_pattern(Path::new("/db [1]/x*.pid")),
            r"/db \[1]/x\*.pid"
        );
        assert_eq!(
            literal_pattern(Path::new("/var/lib/mysql")),
            "/var/lib/mysql"
        );
    }

    /// A restic that fails `locked_runs` times saying another process holds the lock
    /// (or, with `other_failure`, something else), then succeeds; and how often it ran.
    fn flaky_restic(
        dir: &Path,
        locked_runs: u32,
        other_failure: bool,
        lock_wait: std::time::Duration,
    ) -> (Restic, PathBuf) {
        let count = dir.join("count");
        let complaint = match other_failure {
            true => "Fatal: wrong password or no key found",
            false => {
                "unable to create lock in backend: repository is already locked exclusively \
                 by PID 4242 on otherhost by root (UID 0, GID 0)"
            }
        };
        let script = dir.join("restic");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nn=$(($(cat {c} 2>/dev/null || echo 0) + 1))\necho $n > {c}\n\
                 if [ $n -le {locked_runs} ]; then echo '{complaint}' >&2; exit 1; fi\necho done\n",
                c = count.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let restic = Restic {
            binary: script,
            repository: "/srv/repo".into(),
            password_file: "/dev/null".into(),
            env: vec![],
            options: vec![],
            cache_dir: dir.into(),
            lock_wait,
        };
        (restic, count)
    }

    fn runs(count: &Path) -> u32 {
        std::fs::read_to_string(count)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn a_command_meeting_another_process_lock_runs_again_once_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (restic, count) =
            flaky_restic(dir.path(), 2, false, std::time::Duration::from_secs(60));
        let out = restic
            .run(&["forget", "abc"], "forgetting", Class::Repository)
            .await
            .unwrap();
        assert_eq!(out.trim(), "done");
        assert_eq!(runs(&count), 3);
    }

    #[tokio::test]
    async fn a_lock_held_longer_than_the_wait_fails_naming_the_lock_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let (restic, count) =
            flaky_restic(dir.path(), 1000, false, std::time::Duration::from_secs(1));
        let e = restic
            .run(&["forget", "abc"], "forgetting", Class::Repository)
            .await
            .unwrap_err();
        let said = format!("{e:#}");
        assert!(said.contains("locked by another process"), "{said}");
        assert!(said.contains("PID 4242 on otherhost"), "{said}");
        assert!(said.contains("restic -r '/srv/repo' unlock"), "{said}");
        assert!(runs(&count) >= 2);
    }

    #[tokio::test]
    async fn any_other_failure_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (restic, count) = flaky_restic(dir.path(), 1, true, std::time::Duration::from_secs(60));
        let e = restic
            .run(&["snapshots"], "listing", Class::Repository)
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("refused the password"), "{e:#}");
        assert_eq!(runs(&count), 1);
    }

    #[test]
    fn commands_for_the_user_are_quoted_and_hold_no_secret() {
        let restic = Restic {
            binary: "/usr/bin/restic".into(),
            repository: "/srv/it's; rm -rf /".into(),
            password_file: "/etc/dbsnap/pw".into(),
            env: vec![("AWS_SECRET_ACCESS_KEY".into(), "hunter2".into())],
            options: vec![],
            cache_dir: "/tmp".into(),
            lock_wait: LOCK_WAIT,
        };
        let shown = restic.by_hand("init");
        assert_eq!(
            shown,
            r"AWS_SECRET_ACCESS_KEY=... RESTIC_PASSWORD_FILE='/etc/dbsnap/pw' restic -r '/srv/it'\''s; rm -rf /' init"
        );
        assert!(!format!("{restic:?}").contains("hunter2"));
    }
}
