//! How long the server takes to commit right now: the signal that paces the copy.
//!
//! The probe commits a one-row update of `dbsnap.pace_probe` (created if permitted) in
//! its own session with the binary log off for that session (`sql_log_bin = 0`), so
//! nothing reaches the binlog or a replica. A commit waits for the same redo-log write
//! and fsync as the application's commits, which is what the copy's I/O slows down;
//! the status counters (`Innodb_os_log_fsyncs`, `Innodb_data_pending_fsyncs`) count
//! fsyncs but say nothing of how long one takes. When the table or `sql_log_bin`
//! cannot be had (no CREATE/INSERT privilege, no SUPER/BINLOG ADMIN, a read-only
//! server), there is no probe and the copy runs unpaced (the log says why).

use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::credentials::Credentials;
use super::Server;

/// Samples for a baseline (their median).
pub const BASELINE_SAMPLES: usize = 9;

/// One commit-latency sample at a time. A seam: tests script the latencies.
#[async_trait]
pub trait LatencyProbe: Send {
    async fn sample(&mut self) -> anyhow::Result<Duration>;
}

/// The probe on a real server.
pub struct CommitProbe {
    conn: Conn,
}

const SETUP: [&str; 4] = [
    "SET SESSION sql_log_bin = 0",
    "CREATE DATABASE IF NOT EXISTS dbsnap",
    "CREATE TABLE IF NOT EXISTS dbsnap.pace_probe \
     (id TINYINT UNSIGNED PRIMARY KEY, commits BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB",
    "INSERT IGNORE INTO dbsnap.pace_probe VALUES (1, 0)",
];

impl CommitProbe {
    /// Prepare the probe on its own connection; an error says what was refused.
    pub async fn open(mut conn: Conn) -> anyhow::Result<CommitProbe> {
        for statement in SETUP {
            conn.query_drop(statement)
                .await
                .with_context(|| format!("`{statement}`"))?;
        }
        Ok(CommitProbe { conn })
    }

    /// Connect, prepare the probe and measure its baseline (the median of
    /// [`BASELINE_SAMPLES`]).
    pub async fn connect(credentials: &Credentials) -> anyhow::Result<(CommitProbe, Duration)> {
        let (_, conn) = Server::connect(credentials).await?;
        let mut probe = CommitProbe::open(conn).await?;
        let baseline = probe.baseline(BASELINE_SAMPLES).await?;
        Ok((probe, baseline))
    }

    /// The median of `n` samples: the baseline, before the lock.
    pub async fn baseline(&mut self, n: usize) -> anyhow::Result<Duration> {
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            samples.push(self.sample().await?);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        samples.sort();
        Ok(samples[samples.len() / 2])
    }
}

#[async_trait]
impl LatencyProbe for CommitProbe {
    async fn sample(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.conn
            .query_drop("UPDATE dbsnap.pace_probe SET commits = commits + 1 WHERE id = 1")
            .await
            .context("the pace probe's commit")?;
        Ok(started.elapsed())
    }
}
