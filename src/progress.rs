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
        }
    }

    pub fn set(&self, bytes: u64) {
        self.bar.set_position(bytes);
        if self.bar.is_hidden() {
            let mut last = self.last_log.lock().expect("not poisoned");
            if last.elapsed() >= LOG_EVERY {
                *last = Instant::now();
                let secs = self.started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(
                    "copied {} of {} ({}/s)",
                    ByteSize::b(bytes).display().iec(),
                    ByteSize::b(self.bar.length().unwrap_or(0)).display().iec(),
                    ByteSize::b((bytes as f64 / secs) as u64).display().iec()
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
        if self.bar.is_hidden() {
            tracing::info!("copy {pace}");
        }
        self.bar.set_message(pace);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
