//! `dbsnap status`: is there a recent, usable backup, and is nothing left hanging?
//! A pure function of the [`Inventory`] and the clock, so it is tested without servers.
//!
//! The split follows what a person must do and how soon:
//! - CRITICAL (2): there is no backup to restore from that can be relied on — none at
//!   all, the newest is older than `--max-age`, or the newest failed verification.
//! - WARNING (1): backups are fine, but something holds space or needs a look — a kept
//!   snapshot past its `--ttl` (pins space on the live server's filesystem) or no longer
//!   valid, or a crashed run's resources still in the journal (the next run or
//!   `dbsnap cleanup` releases them; if they stay, cleanup is failing).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::inventory::Inventory;
use crate::manifest::Verdict;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Ok,
    Warning,
    Critical,
}

impl State {
    pub fn exit_code(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
        }
    }

    fn word(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
        }
    }
}

/// Nagios's code for "the check itself could not run".
pub const UNKNOWN_EXIT_CODE: u8 = 3;

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub state: State,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NewestBackup {
    pub name: String,
    pub finished_at: DateTime<Utc>,
    pub age_seconds: i64,
    pub verification: Option<Verdict>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub state: State,
    pub exit_code: u8,
    /// The one line printed: `DBSNAP STATE - what`.
    pub line: String,
    pub problems: Vec<Problem>,
    pub newest_backup: Option<NewestBackup>,
    pub max_age_seconds: u64,
}

/// `invalid_kept`: kept snapshots the backend reports lost, as `(name, why)`.
pub fn evaluate(
    inv: &Inventory,
    invalid_kept: &[(String, String)],
    now: DateTime<Utc>,
    max_age: Duration,
    dest: &str,
) -> Report {
    let limit = humantime::format_duration(max_age);
    let newest = inv.newest().map(|m| NewestBackup {
        name: m.name.clone(),
        finished_at: m.finished_at,
        age_seconds: (now - m.finished_at).num_seconds(),
        verification: m.verification.as_ref().map(|v| v.verdict),
    });
    let mut problems = backup_problems(inv, newest.as_ref(), max_age, dest);
    problems.extend(kept_problems(inv, invalid_kept, now));
    if let Some(first) = inv.leftovers.first() {
        problems.push(Problem {
            state: State::Warning,
            message: format!(
                "a crashed run left {} resource(s) in the journal (run {}); run `dbsnap cleanup`",
                inv.leftovers.len(),
                first.run
            ),
        });
    }

    problems.sort_by_key(|p| std::cmp::Reverse(p.state));
    let state = problems.first().map_or(State::Ok, |p| p.state);
    let what = match (&newest, problems.is_empty()) {
        (Some(n), true) => format!(
            "newest backup {} finished {} ago (limit {limit})",
            n.name,
            humantime::format_duration(Duration::from_secs(n.age_seconds.max(0) as u64))
        ),
        _ => problems
            .iter()
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>()
            .join("; "),
    };
    Report {
        state,
        exit_code: state.exit_code(),
        line: format!("DBSNAP {} - {what}", state.word()),
        problems,
        newest_backup: newest,
        max_age_seconds: max_age.as_secs(),
    }
}

/// No backup, or the newest one too old or failed verification: critical.
fn backup_problems(
    inv: &Inventory,
    newest: Option<&NewestBackup>,
    max_age: Duration,
    dest: &str,
) -> Vec<Problem> {
    let critical = |message| Problem {
        state: State::Critical,
        message,
    };
    let (Some(n), Some(m)) = (newest, inv.newest()) else {
        return vec![critical(format!("no complete backup in {dest}"))];
    };
    let mut problems = Vec::new();
    let age = Duration::from_secs(n.age_seconds.max(0) as u64);
    if age > max_age {
        problems.push(critical(format!(
            "newest backup {} finished {} ago, older than {}",
            n.name,
            humantime::format_duration(age),
            humantime::format_duration(max_age)
        )));
    }
    if n.verification == Some(Verdict::Failed) {
        let why = m
            .verification
            .as_ref()
            .and_then(|v| v.problems.first())
            .map_or(String::new(), |p| format!(": {p}"));
        problems.push(critical(format!(
            "newest backup {} failed verification{why}",
            n.name
        )));
    }
    problems
}

/// Kept snapshots past their TTL, unreadable, or lost: warnings.
fn kept_problems(
    inv: &Inventory,
    invalid_kept: &[(String, String)],
    now: DateTime<Utc>,
) -> Vec<Problem> {
    let warning = |message| Problem {
        state: State::Warning,
        message,
    };
    let mut problems = Vec::new();
    match &inv.kept {
        Ok(kept) => {
            for k in kept {
                if let Some(at) = k.expires_at.filter(|at| *at <= now) {
                    problems.push(warning(format!(
                        "kept snapshot {} is past its TTL (expired {}); `dbsnap cleanup` releases it",
                        k.name,
                        at.format("%Y-%m-%d %H:%M:%S UTC")
                    )));
                }
            }
        }
        Err(e) => problems.push(warning(format!("a kept snapshot is invalid: {e}"))),
    }
    for (name, why) in invalid_kept {
        problems.push(warning(format!("kept snapshot {name} is invalid: {why}")));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_backup_is_critical_and_problems_come_worst_first() {
        let inv = Inventory {
            kept: Err("parsing x.toml".into()),
            ..Inventory::empty()
        };
        let r = evaluate(&inv, &[], Utc::now(), Duration::from_secs(3600), "/srv/b");
        assert_eq!(r.exit_code, 2);
        assert_eq!(
            r.line,
            "DBSNAP CRITICAL - no complete backup in /srv/b; a kept snapshot is invalid: parsing x.toml"
        );
    }

    #[test]
    fn an_invalid_kept_snapshot_alone_is_a_warning() {
        let r = evaluate(
            &Inventory::empty(),
            &[("s1".into(), "gone".into())],
            Utc::now(),
            Duration::from_secs(3600),
            "/d",
        );
        assert_eq!(r.state, State::Critical);
        assert!(
            r.problems
                .iter()
                .any(|p| p.state == State::Warning
                    && p.message == "kept snapshot s1 is invalid: gone")
        );
    }
}
