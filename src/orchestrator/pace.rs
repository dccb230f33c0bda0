//! `[backup] pace`: the baseline commit latency, measured in `prepare` (before the
//! lock), and the steering of the copy's rate while it runs (see `transfer::pace`).

use std::sync::Arc;
use std::time::Duration;

use super::plan::{CopyPlan, Plan};
use crate::db::credentials::Credentials;
use crate::db::probe::{CommitProbe, LatencyProbe};
use crate::release::{ReleasePace, SpreadPace};
use crate::transfer::pace::{self, PaceSettings, Pacer, Throttle};

/// The copy's rate and, when paced, what steers it.
pub struct Pacing {
    pub throttle: Arc<Throttle>,
    steering: Option<(Box<dyn LatencyProbe>, Pacer)>,
    /// `pace = "auto"` for a transfer the probe does not pace: `pace_target`, for a
    /// probe opened at release, only if the release is spread.
    probe_at_release: Option<f64>,
}

impl Pacing {
    /// At `cap` bytes per second (0: unlimited), whatever the server does.
    pub fn unpaced(cap: u64) -> Pacing {
        Pacing {
            throttle: Arc::new(Throttle::new(cap)),
            steering: None,
            probe_at_release: None,
        }
    }

    /// Steered by `probe` against `baseline`.
    pub fn steered(
        settings: PaceSettings,
        baseline: Duration,
        probe: Box<dyn LatencyProbe>,
    ) -> Pacing {
        let pacer = Pacer::new(settings, baseline);
        Pacing {
            throttle: Arc::new(Throttle::new(pacer.rate())),
            steering: Some((probe, pacer)),
            probe_at_release: None,
        }
    }

    /// Before the lock: open the probe and measure the baseline, for a transfer that
    /// follows the pace (`paced`; a stream or rsync does not: probing for them cost
    /// every backup ~0.2 s for nothing; their release opens a probe if it is spread).
    /// Without a probe (see `db::probe` for why there may be none), the copy runs
    /// unpaced and the log says why.
    pub async fn prepare(plan: &Plan, copy: &CopyPlan, paced: bool) -> Pacing {
        let cap = copy.bwlimit.map_or(0, |b| b.as_u64());
        let Some(settings) = copy.pace else {
            return Pacing::unpaced(cap);
        };
        if !paced {
            return Pacing {
                probe_at_release: Some(settings.target),
                ..Pacing::unpaced(cap)
            };
        }
        match CommitProbe::connect(&plan.credentials).await {
            Ok((probe, baseline)) => {
                tracing::info!(
                    "pace auto: baseline commit {:.1} ms; the copy slows down above {:.1} ms, \
                     never below {}/s",
                    baseline.as_secs_f64() * 1000.0,
                    baseline.as_secs_f64() * 1000.0 * settings.target,
                    bytesize::ByteSize::b(settings.floor).display().iec()
                );
                Pacing::steered(settings, baseline, Box::new(probe))
            }
            Err(e) => {
                tracing::warn!(
                    "pace auto: cannot probe commit latency ({e:#}); the copy runs unpaced. Grant \
                     CREATE, INSERT, UPDATE on dbsnap.* and BINLOG ADMIN (or SUPER), or set \
                     [backup] pace = \"off\""
                );
                Pacing::unpaced(cap)
            }
        }
    }

    /// After the copy: what paces a spread release (see `release::spread`): the copy's
    /// probe and its baseline, or a probe to open; `None` when `pace = "off"` or the
    /// copy could not have a probe.
    pub fn for_release(&mut self, credentials: &Credentials) -> Option<ReleasePace> {
        if let Some((probe, pacer)) = self.steering.take() {
            return Some(ReleasePace::Probed(SpreadPace {
                probe,
                baseline: pacer.baseline(),
                target: pacer.settings().target,
            }));
        }
        self.probe_at_release.map(|target| ReleasePace::Unprobed {
            credentials: credentials.clone(),
            target,
        })
    }

    /// Beside the copy: steer its rate. Never returns (the copy ends it).
    pub async fn steer(
        &mut self,
        moved: &(dyn Fn() -> u64 + Sync),
        shown: &(dyn Fn(u64) + Sync),
    ) -> ! {
        if let Some((probe, pacer)) = &mut self.steering {
            let every = pace::SAMPLE_EVERY;
            pace::steer(probe.as_mut(), pacer, &self.throttle, every, moved, shown).await;
        }
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[tokio::test]
    async fn a_transfer_that_is_not_paced_never_connects_to_probe_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("mysqld.sock");
        let server = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        server.set_nonblocking(true).unwrap();
        let config = Config::parse(&format!(
            "state_dir = {:?}\n[mysql]\nsocket = {socket:?}\n[snapshot]\nbackend = \"btrfs\"\n\
             [backup]\ndest = {:?}\n",
            dir.path().join("state"),
            dir.path()
        ))
        .unwrap();
        let plan = Plan::new(&config, false).unwrap();
        let copy = CopyPlan::new(config.backup().unwrap(), &config.state_dir).unwrap();
        assert!(copy.pace.is_some(), "pace is auto by default");

        let pacing = Pacing::prepare(&plan, &copy, false).await;
        assert!(pacing.steering.is_none());
        let connected = server.accept();
        assert!(
            connected
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "a probe connected: {connected:?}"
        );
    }
}
