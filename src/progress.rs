//! Progress of the copy: a bar on a terminal, a log line every few seconds otherwise
//! (cron mails and journald should still show that a long copy is moving).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    bar: ProgressBar,
    started: Instant,
    last_log: Mutex<Instant>,
    /// What the pacer last set, for the log line (it changes every sample: logging
    /// each change would drown the log).
    pace: Mutex<Option<String>>,
}

impl Progress {
    pub fn new(total_bytes: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "copying {bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
            )
            .expect("valid template"),
        );
        Progress {
            bar,
            started: Instant::now(),
            last_log: Mutex::new(Instant::now()),
            pace: Mutex::new(None),
        }
    }

    pub fn set(&self, bytes: u64) {
        self.bar.set_position(bytes);
        if self.bar.is_hidden() {
            let mut last = self.last_log.lock().expect("not poisoned");
            if last.elapsed() >= LOG_EVERY {
                *last = Instant::now();
                let secs = self.started.elapsed().as_secs_f64().max(0.001);
                let pace = self.pace.lock().expect("not poisoned");
                tracing::info!(
                    "copied {} of {} ({}/s){}",
                    ByteSize::b(bytes).display().iec(),
                    ByteSize::b(self.bar.length().unwrap_or(0)).display().iec(),
                    ByteSize::b((bytes as f64 / secs) as u64).display().iec(),
                    pace.as_ref().map(|p| format!(", {p}")).unwrap_or_default()
                );
            }
        }
    }

    /// The rate the pacer set (0: unlimited).
    pub fn set_pace(&self, rate: u64) {
        let pace = match rate {
            0 => "unpaced".to_string(),
            r => format!("paced to {}/s", ByteSize::b(r).display().iec()),
        };
        self.bar.set_message(pace.clone());
        *self.pace.lock().expect("not poisoned") = Some(pace);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
