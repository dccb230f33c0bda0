//! Pacing the copy by the server's own commit latency (`[backup] pace`).
//!
//! - [`Throttle`]: the rate the copy may read and write at, a token bucket the copy
//!   threads take from before each chunk; changed while the copy runs.
//! - [`Pacer`]: additive increase, multiplicative decrease on that rate, fed one commit
//!   latency sample at a time and compared with the baseline measured before the lock.
//!   Never below the floor (a backup always finishes), never above `bwlimit`.
//! - [`lower_io_priority`]: the copy's threads (and rsync) at the lowest best-effort I/O
//!   priority, which the BFQ scheduler honours (mq-deadline orders by class only, none
//!   ignores priorities).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use crate::db::probe::LatencyProbe;

/// A rate limit in bytes per second; 0 is none.
#[derive(Debug, Default)]
pub struct Throttle {
    rate: AtomicU64,
    /// When the bytes taken so far have been paid for at the current rate.
    paid_until: Mutex<Option<Instant>>,
}

/// How far ahead of the rate a copy may run (a burst of this much time's worth).
const BURST: Duration = Duration::from_millis(100);

impl Throttle {
    pub fn new(bytes_per_second: u64) -> Throttle {
        let throttle = Throttle::default();
        throttle.set_rate(bytes_per_second);
        throttle
    }

    pub fn set_rate(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::Relaxed);
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Wait until `bytes` may be moved at the current rate, or until `cancelled` is set
    /// (looked at every [`CANCEL_CHECK`]): a slow rate makes long waits, and a cancelled
    /// copy must let go of the snapshot's files at once. Whether the wait ran out.
    pub fn take(&self, bytes: u64, cancelled: &AtomicBool) -> bool {
        let rate = self.rate();
        let mut paid = self.paid_until.lock().expect("not poisoned");
        let now = Instant::now();
        if rate == 0 {
            *paid = None;
            return !cancelled.load(Ordering::Relaxed);
        }
        let start = paid.filter(|p| *p > now).unwrap_or(now);
        let until = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
        *paid = Some(until);
        drop(paid);
        let wake = until.checked_sub(BURST).unwrap_or(now);
        loop {
            if cancelled.load(Ordering::Relaxed) {
                return false;
            }
            let Some(left) = wake.checked_duration_since(Instant::now()) else {
                return true;
            };
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(CANCEL_CHECK));
        }
    }
}

/// How often a wait in [`Throttle::take`] looks whether the copy was cancelled.
const CANCEL_CHECK: Duration = Duration::from_millis(20);

/// `[backup] pace` and its bounds, in bytes per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaceSettings {
    /// Commit latency above `target × baseline` slows the copy.
    pub target: f64,
    /// The copy never goes slower than this.
    pub floor: u64,
    /// `bwlimit`: never faster than this (0: no cap).
    pub cap: u64,
}

/// What the pacer decided from one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Latency above target: the rate was cut.
    Slower,
    /// Latency within target: the rate grew (or stayed at the cap).
    Faster,
}

/// AIMD on the copy's rate, after a slow start.
#[derive(Debug)]
pub struct Pacer {
    settings: PaceSettings,
    baseline: Duration,
    /// The current limit in bytes per second.
    rate: u64,
    /// Until the server first shows strain the rate grows by half each sample (slow
    /// start); afterwards by [`INCREASE`].
    slow_start: bool,
}

/// The copy's first rate. Starting at full speed put up to a second's worth of the
/// disk's bandwidth in front of the server's commits before the first sample could
/// cut it (measured: the lowest second fell to 45 % of the baseline's commits).
const START: u64 = 32 << 20;
/// Each sample within target in slow start multiplies the rate by this (~5× a second).
const SLOW_START_GROWTH: f64 = 1.5;
/// Each sample within target after slow start adds this to the rate (~4 a second).
const INCREASE: u64 = 8 << 20;
/// A sample above target multiplies the rate by this.
const DECREASE: f64 = 0.5;
/// No disk here copies faster; growing further would only overflow.
const MAX_RATE: u64 = 64 << 30;

impl Pacer {
    pub fn new(settings: PaceSettings, baseline: Duration) -> Pacer {
        let start = START.max(settings.floor);
        let rate = match settings.cap {
            0 => start,
            cap => start.min(cap),
        };
        Pacer {
            settings,
            baseline,
            rate,
            slow_start: true,
        }
    }

    /// The rate to set now, given the latest commit latency and the rate the copy
    /// actually moved at lately (a copy may move slower than its limit).
    pub fn observe(&mut self, latency: Duration, measured_rate: u64) -> (u64, Step) {
        let limit = self.baseline.as_secs_f64() * self.settings.target;
        let step = match latency.as_secs_f64() > limit {
            true => {
                self.slow_start = false;
                let from = self.rate.min(measured_rate.max(self.settings.floor));
                self.rate = ((from as f64 * DECREASE) as u64).max(self.settings.floor);
                Step::Slower
            }
            false => {
                self.rate = match self.slow_start {
                    true => (self.rate as f64 * SLOW_START_GROWTH) as u64,
                    false => self.rate + INCREASE,
                }
                .min(MAX_RATE);
                if self.settings.cap != 0 {
                    self.rate = self.rate.min(self.settings.cap);
                }
                Step::Faster
            }
        };
        (self.rate, step)
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The commit latency measured before the lock.
    pub fn baseline(&self) -> Duration {
        self.baseline
    }

    pub fn settings(&self) -> PaceSettings {
        self.settings
    }
}

/// How often the pacer samples the server's commit latency.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The probe's last three samples. The pacer acts on their median, so that one slow
/// commit does not halve the rate.
#[derive(Debug, Default)]
pub struct RecentLatencies(VecDeque<Duration>);

impl RecentLatencies {
    pub fn push(&mut self, latency: Duration) {
        if self.0.len() == 3 {
            self.0.pop_front();
        }
        self.0.push_back(latency);
    }

    pub fn median(&self) -> Option<Duration> {
        let mut sorted: Vec<Duration> = self.0.iter().copied().collect();
        sorted.sort();
        sorted.get(sorted.len() / 2).copied()
    }
}

/// Steer `throttle` by the probe's samples (the median of the last three, so that one
/// slow commit does not halve the copy), every `every`; `moved` reads the bytes copied
/// so far, `shown` is told each new rate. Returns only when the probe fails; the copy
/// then keeps its current rate.
pub async fn steer(
    probe: &mut dyn LatencyProbe,
    pacer: &mut Pacer,
    throttle: &Throttle,
    every: Duration,
    moved: &(dyn Fn() -> u64 + Sync),
    shown: &(dyn Fn(u64) + Sync),
) {
    let mut recent = RecentLatencies::default();
    let mut last = (Instant::now(), moved());
    loop {
        tokio::time::sleep(every).await;
        let latency = match probe.sample().await {
            Ok(latency) => latency,
            Err(e) => {
                tracing::warn!("pace: the probe failed ({e:#}); the copy keeps its current rate");
                return;
            }
        };
        recent.push(latency);
        let now = (Instant::now(), moved());
        let secs = now.0.duration_since(last.0).as_secs_f64().max(0.001);
        let measured = (now.1.saturating_sub(last.1) as f64 / secs) as u64;
        last = now;
        let before = throttle.rate();
        let (rate, step) = pacer.observe(recent.median().unwrap_or(latency), measured);
        if rate != before {
            throttle.set_rate(rate);
            shown(rate);
            tracing::debug!(?latency, ?step, rate, "pace");
        }
    }
}

/// The calling thread (and what it starts) at the lowest best-effort I/O priority
/// (class 2, level 7), so that the server's own reads and writes go first where the
/// scheduler honours priorities (BFQ). Not the idle class: under a server that never
/// stops writing, an idle-class copy could starve, and the pacer already yields.
pub fn lower_io_priority() {
    if !set_lowest_io_priority() {
        tracing::debug!(
            "ioprio_set: {}; the copy keeps its I/O priority",
            std::io::Error::last_os_error()
        );
    }
}

/// [`lower_io_priority`] without logging: async-signal-safe, for a child between fork
/// and exec (rsync). Whether it took.
pub fn set_lowest_io_priority() -> bool {
    const IOPRIO_WHO_PROCESS: libc::c_int = 1;
    const IOPRIO_CLASS_BE: libc::c_int = 2;
    const LOWEST: libc::c_int = 7;
    let priority = (IOPRIO_CLASS_BE << 13) | LOWEST;
    // SAFETY: a plain syscall; 0 names the calling thread.
    unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, priority) == 0 }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const MB: u64 = 1 << 20;
    const BASELINE: Duration = Duration::from_millis(2);

    #[test]
    fn the_pacer_acts_on_the_median_of_the_last_three_samples() {
        let ms = Duration::from_millis;
        let mut recent = RecentLatencies::default();
        assert_eq!(recent.median(), None);
        for latency in [ms(1), ms(90), ms(2), ms(3)] {
            recent.push(latency);
        }
        // 1 ms has dropped out; one slow commit among 2 and 3 ms does not count.
        assert_eq!(recent.median(), Some(ms(3)));
    }

    fn settings() -> PaceSettings {
        PaceSettings {
            target: 2.0,
            floor: 10 * MB,
            cap: 0,
        }
    }

    #[test]
    fn the_copy_starts_slow_and_grows_until_slow_commits_cut_it_then_recovers_linearly() {
        let mut pacer = Pacer::new(settings(), BASELINE);
        assert_eq!(
            pacer.rate(),
            START,
            "not at full speed before the first sample"
        );
        let (rate, step) = pacer.observe(Duration::from_millis(3), START);
        assert_eq!((rate, step), (START * 3 / 2, Step::Faster), "slow start");
        let (rate, step) = pacer.observe(Duration::from_millis(20), rate);
        assert_eq!((rate, step), (START * 3 / 4, Step::Slower));
        let (rate, _) = pacer.observe(Duration::from_millis(20), rate);
        assert_eq!(rate, START * 3 / 8);
        let mut last = rate;
        for _ in 0..5 {
            let (rate, step) = pacer.observe(Duration::from_millis(3), last);
            assert_eq!(
                (rate, step),
                (last + INCREASE, Step::Faster),
                "additive now"
            );
            last = rate;
        }
    }

    #[test]
    fn the_rate_never_falls_below_the_floor() {
        let mut pacer = Pacer::new(settings(), BASELINE);
        for _ in 0..50 {
            let (rate, _) = pacer.observe(Duration::from_secs(1), 300 * MB);
            assert!(rate >= 10 * MB, "{rate}");
        }
        assert_eq!(pacer.rate(), 10 * MB);
    }

    #[test]
    fn the_rate_never_exceeds_bwlimit() {
        let mut pacer = Pacer::new(
            PaceSettings {
                cap: 50 * MB,
                ..settings()
            },
            BASELINE,
        );
        assert!(pacer.rate() <= 50 * MB);
        pacer.observe(Duration::from_millis(50), 50 * MB);
        for _ in 0..20 {
            let (rate, _) = pacer.observe(Duration::from_millis(1), 50 * MB);
            assert!(rate <= 50 * MB);
        }
        assert_eq!(pacer.rate(), 50 * MB);
    }

    /// Commit latencies from a script; fails at its end, which ends `steer`.
    struct Scripted(VecDeque<Duration>);

    #[async_trait::async_trait]
    impl LatencyProbe for Scripted {
        async fn sample(&mut self) -> anyhow::Result<Duration> {
            self.0
                .pop_front()
                .ok_or_else(|| anyhow::anyhow!("end of script"))
        }
    }

    /// The rates `steer` set for a script of commit latencies (in ms), copying as fast
    /// as each rate allows.
    async fn rates_for(script: &[u64], settings: PaceSettings) -> (Vec<u64>, u64) {
        let mut probe = Scripted(script.iter().map(|ms| Duration::from_millis(*ms)).collect());
        let mut pacer = Pacer::new(settings, BASELINE);
        let throttle = Throttle::new(pacer.rate());
        let copied = AtomicU64::new(0);
        // A disk that moves at most 400 MB/s, else the throttle's rate: per 10 ms
        // sample, a hundredth of that.
        let moved = || {
            let rate = throttle.rate().min(400 * MB);
            copied.fetch_add(rate / 100, Ordering::Relaxed) + rate / 100
        };
        let shown = Mutex::new(Vec::new());
        let show = |rate| shown.lock().unwrap().push(rate);
        let every = Duration::from_millis(10);
        steer(&mut probe, &mut pacer, &throttle, every, &moved, &show).await;
        (shown.into_inner().unwrap(), throttle.rate())
    }

    #[tokio::test]
    async fn injected_slow_commits_slow_the_copy_which_recovers_and_never_falls_below_the_floor() {
        let script: Vec<u64> = [2, 2, 2]
            .into_iter()
            .chain([40; 12])
            .chain([2; 40])
            .collect();
        let (rates, last) = rates_for(&script, settings()).await;
        let lowest = *rates.iter().min().unwrap();
        assert_eq!(rates[0], START * 3 / 2, "slow start first: {rates:?}");
        assert_eq!(
            lowest,
            10 * MB,
            "cut down to the floor, not below: {rates:?}"
        );
        assert!(last > lowest + 100 * MB, "recovered: {rates:?}");
        let peak = rates.windows(2).position(|w| w[1] < w[0]).unwrap();
        let bottom = rates.iter().position(|r| *r == lowest).unwrap();
        assert!(rates[..=peak].windows(2).all(|w| w[1] > w[0]), "{rates:?}");
        assert!(
            rates[peak..=bottom].windows(2).all(|w| w[1] < w[0]),
            "{rates:?}"
        );
        assert!(rates[bottom..].windows(2).all(|w| w[1] > w[0]), "{rates:?}");
    }

    #[tokio::test]
    async fn commits_at_the_baseline_let_the_copy_grow_to_the_disks_speed() {
        let (rates, last) = rates_for(&[2; 20], settings()).await;
        assert!(rates.windows(2).all(|w| w[1] > w[0]), "{rates:?}");
        assert!(last > 400 * MB, "past what the disk moves: {rates:?}");
    }

    #[test]
    fn the_throttle_holds_a_copy_to_its_rate() {
        let throttle = Throttle::new(100 * MB);
        let started = Instant::now();
        let go_on = AtomicBool::new(false);
        for _ in 0..30 {
            assert!(throttle.take(MB, &go_on));
        }
        // 30 MB at 100 MB/s is 0.3 s, less the burst allowance.
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[test]
    fn a_copy_waiting_for_the_throttle_stops_waiting_when_it_is_cancelled() {
        // 64 MB at 1 MB/s: a minute's wait, unless cancelled.
        let throttle = Arc::new(Throttle::new(MB));
        let cancelled = Arc::new(AtomicBool::new(false));
        let waiting = {
            let (throttle, cancelled) = (throttle.clone(), cancelled.clone());
            std::thread::spawn(move || throttle.take(64 * MB, &cancelled))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiting.is_finished(), "the chunk waits for its turn");
        cancelled.store(true, Ordering::Relaxed);
        let stopped = Instant::now();
        while !waiting.is_finished() && stopped.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            waiting.is_finished(),
            "still waiting after its cancellation"
        );
        assert!(
            !waiting.join().unwrap(),
            "the wait reports the cancellation"
        );
    }
}
