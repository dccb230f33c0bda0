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
    /// For dbsnap: what the writers saw during each phase after the lock.
    pub phases: Option<Phases>,
    /// From the end of the run until the filesystem had freed the snapshots it deleted;
    /// `None` for a case that deletes none (mariabackup, the writers alone).
    pub after_run: Option<Stretch>,
}

/// What the writers saw during one stretch of a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stretch {
    /// The slowest commit in flight at any time during it (ms).
    pub worst_ms: Option<f64>,
    /// The fewest commits acknowledged in any of the run's whole seconds that overlap
    /// it, as a share of the baseline's commits per second.
    pub lowest_second_vs_baseline: Option<f64>,
}

/// dbsnap's phases after the unlock.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Phases {
    /// From the unlock to the end of the copy (the manifest's transfer duration).
    pub copy: Stretch,
    /// From the end of the copy to "backup complete" (fsync of what the copy wrote,
    /// the manifest, the rename).
    pub publish: Stretch,
    /// From "backup complete" to the end of the run (unmount, the snapshot's release).
    pub release: Stretch,
}

/// The commits around one run, for the figures of any stretch of it.
struct Window<'a> {
    commits: &'a [(f64, f64)],
    start_ms: f64,
    /// Commits acknowledged in each whole second from `start_ms` on.
    per_second: Vec<usize>,
    baseline_per_second: f64,
}

impl Window<'_> {
    fn stretch(&self, from: f64, to: f64) -> Stretch {
        let worst_ms = self
            .commits
            .iter()
            .filter(|(b, l)| *b < to && b + l > from)
            .map(|(_, l)| *l)
            .reduce(f64::max);
        let second = |ms: f64| ((ms - self.start_ms) / 1e3).max(0.0);
        let first = second(from).floor() as usize;
        let last = (second(to).ceil() as usize).min(self.per_second.len());
        let fewest = self
            .per_second
            .get(first..last)
            .and_then(|s| s.iter().min());
        Stretch {
            worst_ms,
            lowest_second_vs_baseline: fewest
                .map(|n| *n as f64 / self.baseline_per_second.max(1e-9)),
        }
    }
}

impl Phases {
    fn of(measured: &Measured, window: &Window) -> Option<Phases> {
        let copy_end = measured.lock_to_ms + measured.detail["transfer"]["duration_ms"].as_f64()?;
        let published = measured.published_ms?;
        Some(Phases {
            copy: window.stretch(measured.lock_to_ms, copy_end),
            publish: window.stretch(copy_end, published),
            release: window.stretch(published, measured.end_ms),
        })
    }
}

impl Run {
    /// `commits` are (began, latency) in ms since the writers started. The run's
    /// figures cover it from its start until its deleted snapshots were freed.
    pub fn new(measured: Measured, commits: &[(f64, f64)], baseline_ms: f64) -> Run {
        let (start, end) = (measured.start_ms, measured.settled_ms);
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
        let window = Window {
            commits,
            start_ms: start,
            per_second: per_second(commits, start, end),
            baseline_per_second: baseline.len() as f64 / (baseline_ms / 1e3),
        };
        let in_lock = window.stretch(measured.lock_from_ms, measured.lock_to_ms);
        let whole = window.stretch(start, end);
        let during: Vec<f64> = in_flight.iter().map(|(_, l)| *l).collect();
        Run {
            baseline_commits: baseline.len(),
            baseline_p99_ms: p99(&baseline),
            baseline_worst_ms: baseline.iter().copied().reduce(f64::max),
            commits_during: during.len(),
            p99_during_ms: p99(&during),
            worst_during_ms: whole.worst_ms,
            worst_in_lock_ms: in_lock.worst_ms,
            delayed_during: during.iter().filter(|l| **l > DELAYED_MS).count(),
            lowest_second_vs_baseline: whole.lowest_second_vs_baseline,
            delayed: in_flight
                .into_iter()
                .filter(|(_, l)| *l > DELAYED_MS)
                .collect(),
            phases: Phases::of(&measured, &window),
            after_run: measured
                .deletes_snapshot
                .then(|| window.stretch(measured.end_ms, measured.settled_ms)),
            measured,
        }
    }
}

/// Commits acknowledged in each whole second between `start` and `end` (ms); a last
/// partial second is left out.
fn per_second(commits: &[(f64, f64)], start: f64, end: f64) -> Vec<usize> {
    let seconds = ((end - start) / 1e3).floor() as usize;
    let mut per_second = vec![0usize; seconds];
    for (began, latency) in commits {
        let at = began + latency;
        if at >= start {
            if let Some(n) = per_second.get_mut(((at - start) / 1e3) as usize) {
                *n += 1;
            }
        }
    }
    per_second
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
