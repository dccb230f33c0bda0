//! The conformance suite every dbsnap snapshot backend must pass.
//!
//! [`run_all`] drives a [`SnapshotBackend`] through what dbsnap will ask of it — probe,
//! plan, snapshot, mount, read the frozen tree while the origin changes, unmount,
//! release — and through what goes wrong: a tampered or hostile journal, a run killed
//! at any point with only its journaled plan left, hostile file and directory names.
//! It needs a [`Fixture`]: directories on the storage under test. The
//! `dbsnap-conformance` command runs it against a backend named on its command line.
//!
//! Foreign snapshots (not made by dbsnap) that exist on the volumes before the suite
//! starts must never be listed, released or touched; create some to test that.

mod checks;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dbsnap_backend_api::SnapshotBackend;

/// Where the suite may work.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Writable directories on the storage under test; each plays a database directory.
    /// Directories on two different volumes also exercise multi-volume sets.
    pub data_dirs: Vec<PathBuf>,
    /// An empty directory for the mounts the suite asks the backend for.
    pub workdir: PathBuf,
    /// A directory the backend cannot snapshot (say, on tmpfs): `probe` must refuse it.
    pub unsupported_dir: Option<PathBuf>,
}

/// One check's outcome.
#[derive(Debug)]
pub struct CheckResult {
    pub name: &'static str,
    pub outcome: Result<(), String>,
    pub elapsed: Duration,
}

/// Every check's outcome, in order.
#[derive(Debug)]
pub struct Report {
    pub backend: String,
    pub checks: Vec<CheckResult>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.outcome.is_ok())
    }

    /// Panic with the whole report unless every check passed (for `#[test]`s).
    pub fn assert_passed(&self) {
        assert!(self.passed(), "{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "conformance of backend {}:", self.backend)?;
        for check in &self.checks {
            let ms = check.elapsed.as_millis();
            match &check.outcome {
                Ok(()) => writeln!(f, "  ok    {:<24} {ms:>6} ms", check.name)?,
                Err(e) => writeln!(f, "  FAIL  {:<24} {ms:>6} ms\n        {e}", check.name)?,
            }
        }
        let failed = self.checks.iter().filter(|c| c.outcome.is_err()).count();
        write!(
            f,
            "{} of {} checks passed",
            self.checks.len() - failed,
            self.checks.len()
        )
    }
}

/// Run every check against `backend`. Each check releases what it created, also when
/// it fails, so one failure does not cascade into the next check.
pub async fn run_all(backend: &dyn SnapshotBackend, fixture: &Fixture) -> Report {
    let ctx = checks::Ctx::new(backend, fixture);
    let mut results = Vec::new();
    for (name, check) in checks::ALL {
        let started = Instant::now();
        let outcome = check(&ctx).await;
        let cleanup = ctx.release_leftovers().await;
        results.push(CheckResult {
            name,
            outcome: outcome.and(cleanup),
            elapsed: started.elapsed(),
        });
    }
    Report {
        backend: backend.name().to_string(),
        checks: results,
    }
}
