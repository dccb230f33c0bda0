//! User hooks around a run (`[hooks]`): programs run as argv lists with a timeout and
//! an environment describing the run. None ever runs inside the lock window.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use dbsnap_backend_api::command::Cmd;
use serde::Deserialize;

use crate::error::{fail, Class};

/// `[hooks]` in the configuration. Each hook is an argv list; the program must be an
/// absolute path (no shell, no PATH lookup).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    /// Before the lock; a failure aborts the run with nothing locked or snapshotted.
    #[serde(default)]
    pub pre_lock: Vec<String>,
    /// After the lock is released and the snapshot is readable (DBSNAP_SNAPSHOT_PATH);
    /// a failure aborts the run.
    #[serde(default)]
    pub post_snapshot: Vec<String>,
    /// After the backup is published (DBSNAP_BACKUP_PATH); a failure makes the run
    /// exit non-zero but keeps the backup.
    #[serde(default)]
    pub post_backup: Vec<String>,
    /// After a failed run of any command that takes a snapshot or changes backups
    /// (DBSNAP_COMMAND), once it has been cleaned up (DBSNAP_STATUS=failed, DBSNAP_ERROR).
    #[serde(default)]
    pub on_failure: Vec<String>,
    /// After a successful run of any such command (DBSNAP_STATUS=ok), e.g. a
    /// dead-man's-switch ping; a failure makes the run exit non-zero.
    #[serde(default)]
    pub on_success: Vec<String>,
    /// How long a hook may run before it is killed.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(300)
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            pre_lock: Vec::new(),
            post_snapshot: Vec::new(),
            post_backup: Vec::new(),
            on_failure: Vec::new(),
            on_success: Vec::new(),
            timeout: default_timeout(),
        }
    }
}

/// When a hook runs; its name is `DBSNAP_PHASE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    PreLock,
    PostSnapshot,
    PostBackup,
    OnFailure,
    OnSuccess,
}

/// The command this process runs, as `DBSNAP_COMMAND` in every hook's environment.
static COMMAND: OnceLock<&'static str> = OnceLock::new();

/// Name the command for the hooks (once, in `main`, before any hook runs).
pub fn set_command(name: &'static str) {
    let _ = COMMAND.set(name);
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::PreLock => "pre_lock",
            Phase::PostSnapshot => "post_snapshot",
            Phase::PostBackup => "post_backup",
            Phase::OnFailure => "on_failure",
            Phase::OnSuccess => "on_success",
        }
    }
}

impl HooksConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, argv) in self.all() {
            if let Some(program) = argv.first() {
                if !Path::new(program).is_absolute() {
                    anyhow::bail!("hooks.{name}: the program {program:?} must be an absolute path");
                }
            }
        }
        Ok(())
    }

    fn all(&self) -> [(&'static str, &Vec<String>); 5] {
        [
            ("pre_lock", &self.pre_lock),
            ("post_snapshot", &self.post_snapshot),
            ("post_backup", &self.post_backup),
            ("on_failure", &self.on_failure),
            ("on_success", &self.on_success),
        ]
    }

    fn argv(&self, phase: Phase) -> &[String] {
        match phase {
            Phase::PreLock => &self.pre_lock,
            Phase::PostSnapshot => &self.post_snapshot,
            Phase::PostBackup => &self.post_backup,
            Phase::OnFailure => &self.on_failure,
            Phase::OnSuccess => &self.on_success,
        }
    }

    /// Run the hook for `phase`, if one is configured. `env` describes the run
    /// (`DBSNAP_NAME`, paths, status); `DBSNAP_PHASE` is added here. Its output goes
    /// to the log.
    pub async fn run(&self, phase: Phase, env: &[(&str, String)]) -> anyhow::Result<()> {
        let argv = self.argv(phase);
        let Some(program) = argv.first() else {
            return Ok(());
        };
        let mut cmd = Cmd::new(program)
            .args(&argv[1..])
            .timeout(self.timeout)
            .env("DBSNAP_PHASE", phase.name());
        if let Some(command) = COMMAND.get() {
            cmd = cmd.env("DBSNAP_COMMAND", *command);
        }
        for (key, value) in env {
            cmd = cmd.env(key, value);
        }
        tracing::info!("running the {} hook: {}", phase.name(), cmd.display());
        let output = cmd.run().await.map_err(|e| {
            fail(
                Class::Hook,
                format!("the {} hook failed: {e}", phase.name()),
            )
        })?;
        for line in output.stdout.lines().chain(output.stderr.lines()) {
            tracing::info!("{} hook: {line}", phase.name());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_must_be_absolute() {
        let hooks = HooksConfig {
            pre_lock: vec!["notify".into(), "x".into()],
            ..Default::default()
        };
        assert!(hooks
            .validate()
            .unwrap_err()
            .to_string()
            .contains("hooks.pre_lock"));
    }

    #[tokio::test]
    async fn hooks_see_the_run_and_failures_are_hook_failures() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env.txt");
        let hooks = HooksConfig {
            pre_lock: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("env > '{}'", out.display()),
            ],
            post_backup: vec!["/bin/false".into()],
            ..Default::default()
        };
        hooks
            .run(Phase::PreLock, &[("DBSNAP_NAME", "n1".into())])
            .await
            .unwrap();
        let env = std::fs::read_to_string(&out).unwrap();
        assert!(
            env.contains("DBSNAP_PHASE=pre_lock") && env.contains("DBSNAP_NAME=n1"),
            "{env}"
        );
        let err = hooks.run(Phase::PostBackup, &[]).await.unwrap_err();
        assert_eq!(crate::error::class_of(&err), Class::Hook);
        hooks.run(Phase::OnFailure, &[]).await.unwrap();
    }
}
