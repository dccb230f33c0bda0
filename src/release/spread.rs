//! A spread release: a snapshot's data freed in steps (see
//! [`dbsnap_backend_api::ReleaseSteps`]) at the pace the server's commits allow, with
//! the same probe and AIMD that pace the copy (`transfer::pace`): each step frees what
//! the current rate allows in [`STEP_EVERY`]; a slow commit halves the rate, commits
//! within target let it grow. Never below [`FLOOR`], so a release always finishes, and
//! never above [`CEILING`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbsnap_backend_api::{ReleaseSteps, Result};

use crate::transfer::pace::{LatencyProbe, PaceSettings, Pacer, RecentLatencies, Step};

/// How often a step frees the next share.
pub const STEP_EVERY: Duration = Duration::from_millis(100);
/// The slowest a release frees its data: 1 GiB in 32 s at worst. (The copy's floor is
/// lower: a copy reads and writes every byte, a step only returns extents.)
pub const FLOOR: u64 = 32 << 20;
/// The fastest: 64 MiB a step, what the benchmark's prototype freed (worst commit 184
/// ms against 591 ms for a plain delete; bench/results/release-2026-12-01.md). Larger
/// steps were not measured, and unbounded growth made steps of 600 MiB: a burst again.
pub const CEILING: u64 = 640 << 20;

/// What paces a spread release: the copy's commit probe and the baseline it measured
/// before the lock, and `[backup] pace_target`.
pub struct SpreadPace {
    pub probe: Box<dyn LatencyProbe>,
    pub baseline: Duration,
    pub target: f64,
}

/// What a spread release did, for the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpreadReport {
    pub steps: u64,
    pub freed: u64,
    pub elapsed: Duration,
    /// The smallest and largest budget a step had, in bytes.
    pub smallest_step: u64,
    pub largest_step: u64,
    /// How many times slow commits halved the rate.
    pub slowed: u64,
}

/// The probe's latest samples, sampled beside the steps so that a step never waits
/// for a slow commit; a commit still running counts with the time it has taken so far
/// (a commit stuck behind a lock is the slowest sample of all).
#[derive(Default)]
struct Samples {
    recent: RecentLatencies,
    /// A sample arrived since the steps last looked.
    fresh: bool,
    running_since: Option<Instant>,
}

/// Samples `probe` until dropped.
struct Sampler {
    samples: Arc<Mutex<Samples>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(mut probe: Box<dyn LatencyProbe>, every: Duration) -> Sampler {
        let samples = Arc::new(Mutex::new(Samples::default()));
        let shared = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                shared.lock().expect("not poisoned").running_since = Some(Instant::now());
                let sampled = probe.sample().await;
                let recorded = {
                    let mut s = shared.lock().expect("not poisoned");
                    s.running_since = None;
                    sampled.map(|latency| {
                        s.recent.push(latency);
                        s.fresh = true;
                    })
                };
                if let Err(e) = recorded {
                    tracing::warn!(
                        "pace: the probe failed ({e:#}); the release keeps its current rate"
                    );
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
        Sampler { samples, task }
    }

    /// The latency to act on now, if there is news: the median of the last three
    /// samples when one arrived, else how long the running sample has taken once that
    /// is already over `limit`.
    fn latest(&self, limit: Duration) -> Option<Duration> {
        let mut s = self.samples.lock().expect("not poisoned");
        let running = s.running_since.map(|since| since.elapsed());
        if std::mem::take(&mut s.fresh) {
            return s.recent.median();
        }
        running.filter(|took| *took > limit)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Free `steps` at the pace the probe allows, one step every `every`.
pub async fn spread(
    steps: &mut dyn ReleaseSteps,
    pace: SpreadPace,
    every: Duration,
) -> Result<SpreadReport> {
    let settings = PaceSettings {
        target: pace.target,
        floor: FLOOR,
        cap: CEILING,
    };
    let mut pacer = Pacer::new(settings, pace.baseline);
    let limit = pace.baseline.mul_f64(pace.target);
    let sampler = Sampler::start(pace.probe, every);
    let started = Instant::now();
    let mut report = SpreadReport {
        smallest_step: u64::MAX,
        ..SpreadReport::default()
    };
    loop {
        let budget = (pacer.rate() as f64 * every.as_secs_f64()) as u64;
        let Some(freed) = steps.step(budget).await? else {
            break;
        };
        report.steps += 1;
        report.freed += freed;
        report.smallest_step = report.smallest_step.min(budget);
        report.largest_step = report.largest_step.max(budget);
        if let Some(latency) = sampler.latest(limit) {
            let (rate, step) = pacer.observe(latency, pacer.rate());
            if step == Step::Slower {
                report.slowed += 1;
            }
            tracing::debug!(?latency, ?step, rate, "release pace");
        }
        tokio::time::sleep(every).await;
    }
    report.smallest_step = report.smallest_step.min(report.largest_step);
    report.elapsed = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use async_trait::async_trait;

    use super::*;

    const MB: u64 = 1 << 20;
    const EVERY: Duration = Duration::from_millis(10);

    /// A snapshot of `left` bytes that records each step's budget.
    struct Recorded {
        left: u64,
        budgets: Vec<u64>,
    }

    #[async_trait]
    impl ReleaseSteps for Recorded {
        fn total_bytes(&self) -> u64 {
            self.left
        }

        async fn step(&mut self, budget: u64) -> Result<Option<u64>> {
            if self.left == 0 {
                return Ok(None);
            }
            self.budgets.push(budget);
            let freed = budget.max(1).min(self.left);
            self.left -= freed;
            Ok(Some(freed))
        }
    }

    /// Commit latencies (in ms) from a script, then `then` forever.
    struct Scripted {
        script: VecDeque<u64>,
        then: Option<u64>,
    }

    #[async_trait]
    impl LatencyProbe for Scripted {
        async fn sample(&mut self) -> anyhow::Result<Duration> {
            match self.script.pop_front().or(self.then) {
                Some(ms) => Ok(Duration::from_millis(ms)),
                // A commit stuck behind a lock, for good.
                None => std::future::pending().await,
            }
        }
    }

    fn pace(script: impl IntoIterator<Item = u64>, then: Option<u64>) -> SpreadPace {
        SpreadPace {
            probe: Box::new(Scripted {
                script: script.into_iter().collect(),
                then,
            }),
            baseline: Duration::from_millis(2),
            target: 2.0,
        }
    }

    fn floor_step() -> u64 {
        (FLOOR as f64 * EVERY.as_secs_f64()) as u64
    }

    #[tokio::test]
    async fn slow_commits_shrink_the_steps_down_to_the_floor_and_they_grow_again_after() {
        let mut steps = Recorded {
            left: 512 * MB,
            budgets: Vec::new(),
        };
        let script = [2; 5].into_iter().chain([40; 30]);
        let report = spread(&mut steps, pace(script, Some(2)), EVERY)
            .await
            .unwrap();
        let budgets = &steps.budgets;
        assert_eq!(report.freed, 512 * MB, "everything freed");
        assert_eq!(report.steps, budgets.len() as u64);
        assert!(report.slowed > 0, "{report:?}");
        let peak = budgets.windows(2).position(|w| w[1] < w[0]);
        let peak = peak.unwrap_or_else(|| panic!("never smaller: {budgets:?}"));
        assert!(budgets[peak] > 4 * floor_step(), "grew first: {budgets:?}");
        let bottom = budgets[peak..].iter().position(|b| *b == floor_step());
        let bottom = peak + bottom.unwrap_or_else(|| panic!("never at the floor: {budgets:?}"));
        assert!(budgets.iter().all(|b| *b >= floor_step()), "{budgets:?}");
        assert!(
            budgets[bottom..].iter().any(|b| *b > 4 * floor_step()),
            "grew again after: {budgets:?}"
        );
    }

    #[tokio::test]
    async fn a_commit_that_never_returns_holds_the_steps_at_the_floor_and_the_release_finishes() {
        let mut steps = Recorded {
            left: 64 * MB,
            budgets: Vec::new(),
        };
        let report = spread(&mut steps, pace([2, 2], None), EVERY).await.unwrap();
        assert_eq!(report.freed, 64 * MB);
        assert_eq!(report.smallest_step, floor_step(), "{report:?}");
        let at_floor = steps.budgets.iter().filter(|b| **b == floor_step()).count();
        assert!(at_floor * 2 > steps.budgets.len(), "{:?}", steps.budgets);
    }

    #[tokio::test]
    async fn commits_at_the_baseline_let_the_steps_grow_up_to_the_ceiling() {
        let mut steps = Recorded {
            left: 512 * MB,
            budgets: Vec::new(),
        };
        let report = spread(&mut steps, pace([], Some(2)), EVERY).await.unwrap();
        assert_eq!(report.slowed, 0);
        assert!(steps.budgets.windows(2).all(|w| w[1] >= w[0]));
        let ceiling_step = (CEILING as f64 * EVERY.as_secs_f64()) as u64;
        assert_eq!(report.largest_step, ceiling_step, "{report:?}");
    }
}
