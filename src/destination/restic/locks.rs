//! restic's locks: which are stale, which of those an interrupted dbsnap run left
//! (and may therefore remove), and stopping a restic the journal names.

use chrono::{DateTime, Utc};

use super::{this_host, ResticRepo};
use crate::error::{fail, Class};
use crate::restic::Lock;

/// A restic lock older than this is stale whoever holds it (restic's own rule).
const STALE_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(30);

/// The stale locks: of a dead process on this host (`host`), or too old.
pub fn stale<'a>(locks: &'a [Lock], host: &str) -> Vec<&'a Lock> {
    locks
        .iter()
        .filter(|l| {
            (l.hostname == host && !crate::procs::is_running(l.pid))
                || Utc::now() - l.time > STALE_AFTER
        })
        .collect()
}

impl ResticRepo {
    /// Release what an interrupted restic left for run `run` (see
    /// [`Resource::ResticRun`]): stop restic if it still runs, remove the stale locks
    /// it left, forget the claim and files of a backup (of the run holding `claim`)
    /// that never got its manifest.
    pub async fn release_run(
        &self,
        run: &str,
        pid: Option<u32>,
        started_at: DateTime<Utc>,
        claim: Option<&str>,
    ) -> anyhow::Result<()> {
        if let Some(pid) = pid.filter(|p| is_restic(*p)) {
            stop(pid).await;
        }
        let host = this_host();
        let locks = self.restic.locks().await?;
        let stale = stale(&locks, &host);
        let (own, others): (Vec<_>, Vec<_>) = stale
            .into_iter()
            .partition(|l| l.hostname == host && l.time >= started_at);
        if !own.is_empty() {
            if !others.is_empty() {
                return Err(fail(
                    Class::Repository,
                    format!(
                        "the restic repository {} holds stale locks of run {run} and others dbsnap \
                         did not take ({}); `restic unlock` would remove them all, so dbsnap does \
                         not. Check that no restic runs against it, then run `{}` and `dbsnap \
                         cleanup` again",
                        self.location.display(),
                        describe(&others),
                        self.restic.by_hand("unlock")
                    ),
                ));
            }
            tracing::info!(
                "removing the stale restic lock(s) of run {run}: {}",
                describe(&own)
            );
            wait_reaped(own.iter().map(|l| l.pid)).await;
            self.restic.unlock().await?;
            let left: Vec<Lock> = self.restic.locks().await?;
            let kept: Vec<&Lock> = left
                .iter()
                .filter(|l| own.iter().any(|o| o.id == l.id))
                .collect();
            if !kept.is_empty() {
                return Err(fail(
                    Class::Repository,
                    format!(
                        "`restic unlock` kept the stale lock(s) of run {run} ({}): restic still sees \
                         their process. Once it is gone, run `dbsnap cleanup` again (or `{}`)",
                        describe(&kept),
                        self.restic.by_hand("unlock")
                    ),
                ));
            }
        }
        self.forget_unpublished(run, claim).await
    }
}

/// restic tests a lock's process with signal 0, which a killed restic that nobody has
/// reaped yet (a zombie) still answers: `restic unlock` would keep its lock. Wait (a
/// little) until each is gone from the process table.
async fn wait_reaped(pids: impl Iterator<Item = u32>) {
    let pids: Vec<u32> = pids.collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pids
        .iter()
        .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Whether `pid` is a restic process (ours, if the journal names it).
fn is_restic(pid: u32) -> bool {
    crate::procs::is_running(pid)
        && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "restic")
}

/// Ask restic to stop (on SIGINT it removes its lock), then make it.
async fn stop(pid: u32) {
    let target = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGINT);
    for _ in 0..100 {
        if !crate::procs::is_running(pid) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
}

pub fn describe(locks: &[&crate::restic::Lock]) -> String {
    locks
        .iter()
        .map(|l| {
            format!(
                "{} (pid {} on {}, {}since {})",
                &l.id[..l.id.len().min(8)],
                l.pid,
                l.hostname,
                if l.exclusive { "exclusive, " } else { "" },
                l.time.format("%Y-%m-%d %H:%M:%S UTC")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
