//! What a run cost the writers, from the commits recorded around it, and the medians
//! and spread over repeats.

use serde::Serialize;
use statrs::statistics::{Data, Max, Median, Min, OrderStatistics};

use crate::cases::Measured;

/// Commits slower than this count as delayed.
pub const DELAYED_MS: f64 = 100.0;

/// One run of one case with the writers' view of it.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    #[serde(flatten)]
    pub measured: Measured,
    /// Commits acknowledged in the quiet time before the run.
    pub baseline_commits: usize,
    pub baseline_p99_ms: Option<f64>,
    /// The slowest commit of the quiet time before the run: what "no backup" looks like.
    pub baseline_worst_ms: Option<f64>,
    /// Commits in flight at any time during the run (began before its end, acknowledged
    /// after its start).
    pub commits_during: usize,
    pub p99_during_ms: Option<f64>,
    pub worst_during_ms: Option<f64>,
    /// The slowest commit in flight at any time during the lock window alone: what the
    /// lock cost, as opposed to the I/O of syncing and copying around it.
    pub worst_in_lock_ms: Option<f64>,
    pub delayed_during: usize,
    /// The fewest commits acknowledged in any whole second of the run, as a share of
    /// the baseline's commits per second (1.0: as many as before the backup).
    pub lowest_second_vs_baseline: Option<f64>,
    /// Every delayed commit during the run: (began in ms since the writers started, latency ms).
    pub delayed: Vec<(f64, f64)>,
    /// For dbsnap: the slowest commit in flight during each phase after the lock.
    pub phases: Option<Phases>,
}

/// The slowest commit in flight during each of dbsnap's phases after the unlock (ms).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Phases {
    /// From the unlock to the end of the copy (the manifest's transfer duration).
    pub copy_ms: Option<f64>,
    /// From the end of the copy to "backup complete" (fsync of what the copy wrote,
    /// the manifest, the rename).
    pub publish_ms: Option<f64>,
    /// From "backup complete" to the end of the run (unmount, the snapshot's deletion).
    pub release_ms: Option<f64>,
}

impl Phases {
    fn of(measured: &Measured, commits: &[(f64, f64)]) -> Option<Phases> {
        let copy_end = measured.lock_to_ms + measured.detail["transfer"]["duration_ms"].as_f64()?;
        let published = measured.published_ms?;
        let worst = |from: f64, to: f64| {
            commits
                .iter()
                .filter(|(b, l)| *b < to && b + l > from)
                .map(|(_, l)| *l)
                .reduce(f64::max)
        };
        Some(Phases {
            copy_ms: worst(measured.lock_to_ms, copy_end),
            publish_ms: worst(copy_end, published),
            release_ms: worst(published, measured.end_ms),
        })
    }
}

impl Run {
    /// `commits` are (began, latency) in ms since the writers started.
    pub fn new(measured: Measured, commits: &[(f64, f64)], baseline_ms: f64) -> Run {
        let (start, end) = (measured.start_ms, measured.end_ms);
        let baseline: Vec<f64> = commits
            .iter()
            .filter(|(b, l)| *b >= start - baseline_ms && b + l < start)
            .map(|(_, l)| *l)
            .collect();
        let in_flight: Vec<(f64, f64)> = commits
            .iter()
            .filter(|(b, l)| *b < end && b + l > start)
            .copied()
            .collect();
        let (lock_from, lock_to) = (measured.lock_from_ms, measured.lock_to_ms);
        let worst_in_lock_ms = commits
            .iter()
            .filter(|(b, l)| *b < lock_to && b + l > lock_from)
            .map(|(_, l)| *l)
            .reduce(f64::max);
        let during: Vec<f64> = in_flight.iter().map(|(_, l)| *l).collect();
        Run {
            baseline_commits: baseline.len(),
            baseline_p99_ms: p99(&baseline),
            baseline_worst_ms: baseline.iter().copied().reduce(f64::max),
            commits_during: during.len(),
            p99_during_ms: p99(&during),
            worst_during_ms: during.iter().copied().reduce(f64::max),
            worst_in_lock_ms,
            delayed_during: during.iter().filter(|l| **l > DELAYED_MS).count(),
            lowest_second_vs_baseline: lowest_second(commits, start, end)
                .map(|fewest| fewest / (baseline.len() as f64 / (baseline_ms / 1e3)).max(1e-9)),
            delayed: in_flight
                .into_iter()
                .filter(|(_, l)| *l > DELAYED_MS)
                .collect(),
            phases: Phases::of(&measured, commits),
            measured,
        }
    }
}

/// The fewest commits acknowledged in any whole second between `start` and `end` (ms).
fn lowest_second(commits: &[(f64, f64)], start: f64, end: f64) -> Option<f64> {
    let seconds = ((end - start) / 1e3).floor() as usize;
    if seconds == 0 {
        return None;
    }
    let mut per_second = vec![0usize; seconds];
    for (began, latency) in commits {
        let at = began + latency;
        if at >= start {
            if let Some(n) = per_second.get_mut(((at - start) / 1e3) as usize) {
                *n += 1;
            }
        }
    }
    per_second.into_iter().min().map(|n| n as f64)
}

fn p99(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some(Data::new(values.to_vec()).percentile(99))
}

/// Median and range of one figure over the repeats of a case.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

/// `None` when no repeat has the figure.
pub fn spread(values: impl IntoIterator<Item = Option<f64>>) -> Option<Spread> {
    let values: Vec<f64> = values.into_iter().flatten().collect();
    if values.is_empty() {
        return None;
    }
    let n = values.len();
    let data = Data::new(values);
    Some(Spread {
        median: data.median(),
        min: data.min(),
        max: data.max(),
        n,
    })
}
