//! Retention: which backups (and kept snapshots) `dbsnap prune` keeps. The vocabulary
//! is sanoid's and btrbk's: `keep_last` newest ones, plus the newest one of each of the
//! last `keep_hourly` hours, `keep_daily` days, `keep_weekly` ISO weeks and
//! `keep_monthly` months that have one (UTC). Whatever any rule keeps is kept.
//!
//! Two rules sit above the policy: the newest backup that passed verification is
//! always kept, and a backup that failed verification fills no slot (it would push a
//! good one out).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `[retention]` in the configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_hourly: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
}

impl Policy {
    /// A policy that keeps nothing would delete everything: refused by `prune`.
    pub fn keeps_nothing(&self) -> bool {
        [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
        ]
        .iter()
        .all(|k| *k == 0)
    }
}

/// A backup or kept snapshot, as retention sees it.
#[derive(Debug, Clone)]
pub struct Item {
    pub name: String,
    pub time: DateTime<Utc>,
    /// `Some(true)`: passed verification; `Some(false)`: failed; `None`: not verified.
    pub verified: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub name: String,
    pub keep: bool,
    /// Why it is kept (`last`, `daily 2026-11-25`, `newest verified`); empty if it goes.
    pub reasons: Vec<String>,
}

/// Decide for every item; the result is in the order of `items`. Pure: no clock, no disk.
pub fn decide(items: &[Item], policy: &Policy) -> Vec<Decision> {
    // Newest first; the name breaks ties so the result does not depend on input order.
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| (items[b].time, &items[b].name).cmp(&(items[a].time, &items[a].name)));
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); items.len()];
    let eligible: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| items[i].verified != Some(false))
        .collect();

    for &i in eligible.iter().take(policy.keep_last as usize) {
        reasons[i].push("last".into());
    }
    let periods: [(&str, u32, &str); 4] = [
        ("hourly", policy.keep_hourly, "%Y-%m-%dT%H"),
        ("daily", policy.keep_daily, "%Y-%m-%d"),
        ("weekly", policy.keep_weekly, "%G-W%V"),
        ("monthly", policy.keep_monthly, "%Y-%m"),
    ];
    for (label, count, format) in periods {
        let mut seen: Vec<String> = Vec::new();
        for &i in &eligible {
            if seen.len() >= count as usize {
                break;
            }
            let bucket = items[i].time.format(format).to_string();
            if !seen.contains(&bucket) {
                reasons[i].push(format!("{label} {bucket}"));
                seen.push(bucket);
            }
        }
    }
    if let Some(&i) = order.iter().find(|&&i| items[i].verified == Some(true)) {
        reasons[i].push("newest verified".into());
    }
    items
        .iter()
        .zip(reasons)
        .map(|(item, reasons)| Decision {
            name: item.name.clone(),
            keep: !reasons.is_empty(),
            reasons,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap()
    }

    fn item(time: DateTime<Utc>, verified: Option<bool>) -> Item {
        Item {
            name: time.format("%Y%m%dT%H%M%SZ").to_string(),
            time,
            verified,
        }
    }

    fn kept(items: &[Item], policy: &Policy) -> Vec<String> {
        decide(items, policy)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.name)
            .collect()
    }

    /// 40 backups every 12 hours from 2026-10-01 00:00 (a Thursday) to 2026-10-20 12:00.
    fn forty() -> Vec<Item> {
        (0..40)
            .map(|n| item(at(2026, 10, 1, 0) + chrono::Duration::hours(12 * n), None))
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let got = kept(
            &forty(),
            &Policy {
                keep_last: 3,
                ..Default::default()
            },
        );
        assert_eq!(
            got,
            ["20261019T120000Z", "20261020T000000Z", "20261020T120000Z"]
        );
    }

    #[test]
    fn daily_weekly_monthly_keep_the_newest_of_each_period() {
        let policy = Policy {
            keep_last: 2,
            keep_daily: 4,
            keep_weekly: 3,
            keep_monthly: 2,
            ..Default::default()
        };
        let got = kept(&forty(), &policy);
        assert_eq!(
            got,
            [
                // weekly: the newest of ISO week 41 (Oct 5–11)
                "20261011T120000Z",
                // weekly: ISO week 42 (Oct 12–18)
                "20261018T120000Z",
                // daily Oct 17, 18, 19, 20 → the 12:00 one of each; 17th only daily
                "20261017T120000Z",
                "20261019T120000Z",
                // last 2 (and daily Oct 20, weekly 43, monthly Oct)
                "20261020T000000Z",
                "20261020T120000Z",
            ]
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
        // Monthly October is the newest backup; there is no other month with a backup.
        let decisions = decide(&forty(), &policy);
        let newest = decisions.last().unwrap();
        assert!(newest.reasons.contains(&"monthly 2026-10".to_string()));
        assert!(newest.reasons.contains(&"weekly 2026-W43".to_string()));
    }

    #[test]
    fn hourly_counts_hours_that_have_a_backup() {
        let items = vec![
            item(at(2026, 1, 1, 10), None),
            item(at(2026, 1, 1, 10) + chrono::Duration::minutes(30), None),
            item(at(2026, 1, 1, 12), None),
        ];
        let got = kept(
            &items,
            &Policy {
                keep_hourly: 2,
                ..Default::default()
            },
        );
        assert_eq!(got, ["20260101T103000Z", "20260101T120000Z"]);
    }

    #[test]
    fn newest_verified_is_always_kept_and_failed_ones_fill_no_slot() {
        let mut items = forty();
        items[10].verified = Some(true);
        items[39].verified = Some(false);
        let got = kept(
            &items,
            &Policy {
                keep_last: 2,
                ..Default::default()
            },
        );
        assert_eq!(
            got,
            ["20261006T000000Z", "20261019T120000Z", "20261020T000000Z"]
        );
        let d = decide(&items, &Policy::default());
        assert_eq!(d[10].reasons, ["newest verified"]);
    }

    #[test]
    fn empty_policy_keeps_nothing_and_is_flagged() {
        assert!(Policy::default().keeps_nothing());
        assert!(!Policy {
            keep_monthly: 1,
            ..Default::default()
        }
        .keeps_nothing());
    }
}
