//! What restic prints: `--json` messages of `backup`, snapshots, locks, its version.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// One snapshot of `restic snapshots --json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub short_id: String,
    pub time: DateTime<Utc>,
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    pub hostname: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A lock file (`restic cat lock ID`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Lock {
    /// Its storage id (not part of the JSON).
    #[serde(default)]
    pub id: String,
    pub time: DateTime<Utc>,
    #[serde(default)]
    pub exclusive: bool,
    pub hostname: String,
    pub pid: u32,
}

/// The last message of `restic backup --json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Summary {
    #[serde(default)]
    pub files_new: u64,
    #[serde(default)]
    pub files_changed: u64,
    #[serde(default)]
    pub files_unmodified: u64,
    /// Bytes added to the repository (after deduplication and compression).
    pub data_added: u64,
    pub total_files_processed: u64,
    pub total_bytes_processed: u64,
    /// Seconds.
    pub total_duration: f64,
    pub snapshot_id: String,
}

/// A line of `restic backup --json`.
#[derive(Debug, PartialEq)]
pub enum Message {
    Status {
        bytes_done: u64,
    },
    Summary(Summary),
    /// A file restic could not read, as restic describes it.
    Error(String),
    Other,
}

pub fn backup_message(line: &str) -> Message {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
        return Message::Other;
    };
    match value["message_type"].as_str() {
        Some("status") => Message::Status {
            bytes_done: value["bytes_done"].as_u64().unwrap_or(0),
        },
        Some("summary") => serde_json::from_value(value)
            .map(Message::Summary)
            .unwrap_or(Message::Other),
        Some("error") => Message::Error(format!(
            "{} {}: {}",
            value["during"].as_str().unwrap_or(""),
            value["item"].as_str().unwrap_or(""),
            value["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value["error"].to_string())
        )),
        _ => Message::Other,
    }
}

/// The summary in the output of `restic backup --json`.
pub fn summary_of(out: &str) -> Option<Summary> {
    out.lines().find_map(|l| match backup_message(l) {
        Message::Summary(s) => Some(s),
        _ => None,
    })
}

/// `restic 0.14.0 compiled with go1.19.8 on linux/amd64` → (0, 14, 0).
pub fn parse_version(out: &str) -> Option<(u32, u32, u32)> {
    let word = out.split_whitespace().nth(1)?;
    let mut parts = word
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>());
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from restic 0.14.0.
    const BACKUP_OUTPUT: &str = r#"{"message_type":"status","percent_done":0.5036033333333333,"total_files":1,"total_bytes":3000000,"bytes_done":1510810,"current_files":["/tmp/rx/data/f"]}
{"message_type":"summary","files_new":1,"files_changed":0,"files_unmodified":0,"dirs_new":3,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":3,"tree_blobs":4,"data_added":3001548,"total_files_processed":1,"total_bytes_processed":3000000,"total_duration":0.351061613,"snapshot_id":"8d4cfe14"}"#;

    #[test]
    fn backup_status_and_summary_lines_are_read() {
        let mut lines = BACKUP_OUTPUT.lines();
        assert_eq!(
            backup_message(lines.next().unwrap()),
            Message::Status {
                bytes_done: 1510810
            }
        );
        let summary = summary_of(BACKUP_OUTPUT).unwrap();
        assert_eq!(summary.snapshot_id, "8d4cfe14");
        assert_eq!(summary.data_added, 3001548);
        assert_eq!(summary.total_bytes_processed, 3000000);
        assert_eq!(backup_message("not json"), Message::Other);
    }

    #[test]
    fn snapshots_and_locks_as_restic_0_14_prints_them() {
        let snapshots: Vec<Snapshot> = serde_json::from_str(
            r#"[{"time":"2026-12-01T09:15:11.762880924Z","tree":"c9df","paths":["/tmp/rx/data"],"hostname":"h1","username":"root","tags":["dbsnap","dbsnap-datadir=/a b"],"id":"8d4cfe14c849","short_id":"8d4cfe14"}]"#,
        )
        .unwrap();
        assert_eq!(snapshots[0].tags[1], "dbsnap-datadir=/a b");
        let lock: Lock = serde_json::from_str(
            r#"{"time": "2026-12-01T09:15:33.521178458Z", "exclusive": false, "hostname": "vm", "username": "root", "pid": 12516}"#,
        )
        .unwrap();
        assert_eq!((lock.hostname.as_str(), lock.pid), ("vm", 12516));
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("restic 0.14.0 compiled with go1.19.8 on linux/amd64"),
            Some((0, 14, 0))
        );
        assert_eq!(parse_version("restic 0.16.4"), Some((0, 16, 4)));
        assert_eq!(parse_version("garbage"), None);
    }
}
