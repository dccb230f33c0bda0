//! The backup's record (`manifest.toml` in every backup): what was copied, from which
//! server, at which binary-log position, and what the lock cost. A backup directory
//! without a manifest is not a backup.

use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::db::version::ServerVersion;
use crate::db::{Coordinates, DbPath, LockRecord};

pub const MANIFEST_FILE: &str = "manifest.toml";
/// Files are stored under `<backup>/files/<absolute original path>`.
pub const FILES_DIR: &str = "files";
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub path: PathBuf,
    pub dbsnap_version: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub server: ServerRecord,
    pub lock: LockRecord,
    pub coordinates: Coordinates,
    pub snapshot: SnapshotRecord,
    /// The server's directories, as they were on the server, with their role.
    pub paths: Vec<DbPath>,
    pub transfer: TransferStats,
    /// Where each volume's copy is, for backups made by a native stream (one received
    /// copy per volume). Empty for rsync backups: their files are under `files/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stored: Vec<StoredVolume>,
    /// The outcome of `dbsnap verify` (absent until the backup is verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub version: ServerVersion,
    pub hostname: String,
    pub datadir: PathBuf,
    pub binlog_basename: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub backend: String,
    pub name: String,
    /// Whether all volumes were captured at one instant by the backend itself.
    pub atomic: bool,
    pub volumes: Vec<VolumeRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub volume: String,
    pub root: PathBuf,
    pub fstype: String,
    pub snapshot: String,
}

/// A volume's received copy inside a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredVolume {
    /// The volume's root on the server.
    pub root: PathBuf,
    /// Where its copy can be read: relative to the backup directory, or absolute when
    /// the backend keeps it elsewhere.
    pub path: PathBuf,
    /// The backend's identity for the copy, for deleting it.
    pub id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransferStats {
    pub method: TransferMethod,
    /// The previous backup this one was built from, if any.
    pub base: Option<String>,
    /// For a native stream: the source snapshot the stream was computed against (the
    /// base backup's snapshot). For dbsnap's copy engine: the base backup's snapshot
    /// whose extents said which blocks of changed files were unchanged (left unread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_snapshot: Option<String>,
    /// Why this backup is a full copy although an incremental one was possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_because: Option<String>,
    /// Size of the files that were new or changed.
    pub bytes: u64,
    /// Bytes actually written (changed blocks only, for in-place updates).
    pub bytes_written: u64,
    /// For dbsnap's engine updating a seeded copy in place: bytes it read from the seed
    /// to compare with (0 where the base's block digests said which blocks changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_bytes_read: Option<u64>,
    /// For dbsnap's engine: bytes it read from the snapshot (not files left as the base
    /// holds them, nor blocks whose extents are the parent snapshot's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_bytes_read: Option<u64>,
    pub files: u64,
    pub duration_ms: u64,
    /// The partial an interrupted run left, which this backup continued from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
    /// Bytes rsync put on the wire (to an ssh destination: before ssh's encryption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire_bytes: Option<u64>,
    /// For a restic repository: the snapshot holding the files (restic's short id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_snapshot: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Passed,
    Failed,
}

/// What verification found, stored in the manifest as `[verification]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    pub verdict: Verdict,
    pub verified_at: DateTime<Utc>,
    pub server_binary: PathBuf,
    pub server_version: String,
    /// Making the scratch copy.
    pub copy_ms: u64,
    /// From starting the server until it answered: InnoDB (and binlog) crash recovery.
    pub recovery_ms: u64,
    /// `CHECK TABLE` over all tables.
    pub check_ms: u64,
    pub tables_checked: u64,
    /// `@@gtid_binlog_pos` after recovery (MariaDB).
    pub recovered_gtid_binlog_pos: Option<String>,
    /// `@@gtid_executed` after recovery (MySQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_gtid_executed: Option<String>,
    /// Why the verdict is `failed` (empty when it passed).
    pub problems: Vec<String>,
    /// Worth knowing, not failing for (e.g. `[ERROR]` lines of a server that recovered).
    pub warnings: Vec<String>,
}

/// How a backup's data was moved, as `transfer.method` records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum TransferMethod {
    /// rsync into a fresh tree.
    #[default]
    Rsync,
    /// rsync into a reflink copy of the previous backup (changed blocks only).
    RsyncReflink,
    /// rsync with unchanged files hard-linked into the previous backup.
    RsyncLinkDest,
    /// dbsnap's local copy engine into a fresh tree.
    Copy,
    /// The local copy engine into a reflink copy of the previous backup (changed blocks).
    CopyReflink,
    /// The local copy engine with unchanged files hard-linked into the previous backup.
    CopyLinkDest,
    /// `restic backup` into a repository, deduplicated against its parent snapshot.
    Restic,
    /// The backend's native stream, by the name the backend gives it (`btrfs-send`).
    Stream(String),
}

impl TransferMethod {
    pub fn as_str(&self) -> &str {
        match self {
            TransferMethod::Rsync => "rsync",
            TransferMethod::RsyncReflink => "rsync+reflink",
            TransferMethod::RsyncLinkDest => "rsync+link-dest",
            TransferMethod::Copy => "copy",
            TransferMethod::CopyReflink => "copy+reflink",
            TransferMethod::CopyLinkDest => "copy+link-dest",
            TransferMethod::Restic => "restic",
            TransferMethod::Stream(name) => name,
        }
    }
}

impl From<String> for TransferMethod {
    fn from(text: String) -> Self {
        match text.as_str() {
            "rsync" => TransferMethod::Rsync,
            "rsync+reflink" => TransferMethod::RsyncReflink,
            "rsync+link-dest" => TransferMethod::RsyncLinkDest,
            "copy" => TransferMethod::Copy,
            "copy+reflink" => TransferMethod::CopyReflink,
            "copy+link-dest" => TransferMethod::CopyLinkDest,
            "restic" => TransferMethod::Restic,
            _ => TransferMethod::Stream(text),
        }
    }
}

impl From<TransferMethod> for String {
    fn from(method: TransferMethod) -> String {
        method.as_str().to_string()
    }
}

impl std::fmt::Display for TransferMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl Manifest {
    pub fn write(&self, backup_dir: &Path) -> anyhow::Result<()> {
        let path = backup_dir.join(MANIFEST_FILE);
        let text = toml::to_string_pretty(self).context("serialising the manifest")?;
        let tmp = backup_dir.join(format!("{MANIFEST_FILE}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    pub fn read(backup_dir: &Path) -> anyhow::Result<Manifest> {
        let path = backup_dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The manifest of a backup that restore or verify is about to read, checked first:
    /// a manifest dbsnap can parse, of a format it knows, whose copies are all inside
    /// the backup (or, for a native stream's received copy, at an absolute path) and
    /// present. Anything else is refused before any file is written.
    pub fn open_backup(backup_dir: &Path) -> anyhow::Result<Manifest> {
        let path = backup_dir.join(MANIFEST_FILE);
        let refuse = |why: String| {
            crate::error::fail(
                crate::error::Class::Config,
                format!("{} is not a usable backup: {why}", backup_dir.display()),
            )
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| refuse(format!("cannot read {}: {e}", path.display())))?;
        let manifest: Manifest = toml::from_str(&text)
            .map_err(|e| refuse(format!("{} does not parse: {e}", path.display())))?;
        if manifest.format != FORMAT {
            return Err(refuse(format!(
                "{} has format = {}, this dbsnap reads format {FORMAT}: use the dbsnap release \
                 that made it",
                path.display(),
                manifest.format
            )));
        }
        for stored in &manifest.stored {
            let climbs = stored
                .path
                .components()
                .any(|c| c == std::path::Component::ParentDir);
            if climbs {
                return Err(refuse(format!(
                    "{} names a stored copy {:?} outside the backup",
                    path.display(),
                    stored.path
                )));
            }
        }
        for dir in manifest.top_level_paths() {
            for (copy, _) in manifest.copies_of(backup_dir, &dir.path) {
                if !copy.is_dir() {
                    return Err(refuse(format!(
                        "the copy of the server's {} directory {} is missing ({} is not a directory)",
                        dir.role,
                        dir.path.display(),
                        copy.display()
                    )));
                }
            }
        }
        Ok(manifest)
    }

    /// Where an original server path is stored in an rsync backup (or in a scratch or
    /// restore layout that follows it).
    pub fn stored_path(backup_dir: &Path, original: &Path) -> PathBuf {
        backup_dir
            .join(FILES_DIR)
            .join(original.strip_prefix("/").unwrap_or(original))
    }

    /// The server directories not inside another one: each is copied (with what is
    /// below it) on its own by restore and verify.
    pub fn top_level_paths(&self) -> impl Iterator<Item = &DbPath> {
        self.paths.iter().filter(|d| {
            !self
                .paths
                .iter()
                .any(|o| o.path != d.path && d.path.starts_with(&o.path))
        })
    }

    /// Everything to copy to rebuild the server directory `original` from this backup,
    /// parents first: its own copy (destination `""`), then the copies of volumes that
    /// were received separately below it (destination: their path relative to
    /// `original`). An rsync backup holds nested volumes inside the parent's copy.
    pub fn copies_of(&self, backup_dir: &Path, original: &Path) -> Vec<(PathBuf, PathBuf)> {
        let mut copies = vec![(self.copy_of(backup_dir, original), PathBuf::new())];
        let mut nested: Vec<&StoredVolume> = self
            .stored
            .iter()
            .filter(|s| s.root != original && s.root.starts_with(original))
            .collect();
        nested.sort_by_key(|s| s.root.components().count());
        copies.extend(nested.into_iter().map(|s| {
            (
                backup_dir.join(&s.path),
                s.root
                    .strip_prefix(original)
                    .expect("filtered")
                    .to_path_buf(),
            )
        }));
        copies
    }

    /// Where an original server path is in this backup, whichever way it was made.
    pub fn copy_of(&self, backup_dir: &Path, original: &Path) -> PathBuf {
        let received = self
            .stored
            .iter()
            .filter(|s| original.starts_with(&s.root))
            .max_by_key(|s| s.root.components().count());
        match received {
            Some(s) => {
                let relative = original.strip_prefix(&s.root).expect("filtered");
                let copy = backup_dir.join(&s.path);
                if relative.as_os_str().is_empty() {
                    copy
                } else {
                    copy.join(relative)
                }
            }
            None => Self::stored_path(backup_dir, original),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Manifest {
        let now = Utc::now();
        Manifest {
            format: FORMAT,
            name: "20261125T214500Z".into(),
            path: "/srv/backups/20261125T214500Z".into(),
            dbsnap_version: "0.1.0".into(),
            started_at: now,
            finished_at: now,
            server: ServerRecord {
                version: ServerVersion::from_text("10.11.19-MariaDB"),
                hostname: "db1".into(),
                datadir: "/var/lib/mysql".into(),
                binlog_basename: Some("/var/lib/mysql/binlog".into()),
            },
            lock: LockRecord {
                mode: crate::db::lock_mode::LockMode::BackupStage,
                reason: "MariaDB 10.11.19 supports BACKUP STAGE".into(),
                prelude_ms: 3.25,
                wait_ms: 1.5,
                hold_ms: 67.25,
                attempts: 1,
                queued_sessions: 0,
                acquired_at: now,
                released_at: now,
            },
            coordinates: Coordinates {
                binlog_file: Some("binlog.000002".into()),
                binlog_position: Some(1234),
                gtid_binlog_pos: Some("0-1-42".into()),
                gtid_current_pos: Some("0-1-42".into()),
                ..Default::default()
            },
            snapshot: SnapshotRecord {
                backend: "btrfs".into(),
                name: "dbsnap-20261125T214500Z".into(),
                atomic: true,
                volumes: vec![],
            },
            paths: vec![DbPath {
                role: "datadir".into(),
                path: "/var/lib/mysql".into(),
            }],
            transfer: TransferStats::default(),
            stored: vec![],
            verification: None,
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample();
        m.write(dir.path()).unwrap();
        let back = Manifest::read(dir.path()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn stored_path_keeps_the_absolute_path() {
        assert_eq!(
            Manifest::stored_path(Path::new("/b/n"), Path::new("/var/lib/mysql")),
            PathBuf::from("/b/n/files/var/lib/mysql")
        );
    }

    #[test]
    fn copy_of_follows_received_volumes() {
        let mut m = sample();
        let backup = Path::new("/b/n");
        let datadir = Path::new("/var/lib/mysql");
        assert_eq!(
            m.copy_of(backup, datadir),
            PathBuf::from("/b/n/files/var/lib/mysql")
        );
        m.stored = vec![
            StoredVolume {
                root: "/var/lib".into(),
                path: "dbsnap-x.0".into(),
                id: "/b/n/dbsnap-x.0".into(),
            },
            StoredVolume {
                root: "/var/lib/mysql/binlog".into(),
                path: "dbsnap-x.1".into(),
                id: "/b/n/dbsnap-x.1".into(),
            },
        ];
        assert_eq!(
            m.copy_of(backup, datadir),
            PathBuf::from("/b/n/dbsnap-x.0/mysql")
        );
        assert_eq!(
            m.copy_of(backup, Path::new("/var/lib/mysql/binlog")),
            PathBuf::from("/b/n/dbsnap-x.1")
        );
        assert_eq!(
            m.copies_of(backup, datadir),
            vec![
                (PathBuf::from("/b/n/dbsnap-x.0/mysql"), PathBuf::new()),
                (PathBuf::from("/b/n/dbsnap-x.1"), PathBuf::from("binlog")),
            ]
        );
    }

    /// Manifests written by release 0.1.0 (before the records had types) load, and
    /// serialise to the very same text: the types changed, the format did not.
    #[test]
    fn manifests_of_release_0_1_0_load_and_serialise_to_the_same_text() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for file in ["manifest-0.1.0.toml", "manifest-0.1.0-rsync-failed.toml"] {
            let text = std::fs::read_to_string(fixtures.join(file)).unwrap();
            let m: Manifest = toml::from_str(&text).unwrap();
            assert_eq!(toml::to_string_pretty(&m).unwrap(), text, "{file}");
        }
        let json = std::fs::read_to_string(fixtures.join("manifest-0.1.0.json")).unwrap();
        let m: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string_pretty(&m).unwrap(), json);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_text_parses_without_panicking(text in "(?s).{0,400}") {
            let _ = toml::from_str::<Manifest>(&text);
        }
    }

    proptest! {
        // Each case writes and fsyncs real files: fewer cases keep `cargo test --lib` fast.
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn manifests_round_trip_through_their_file(
            name in ".{0,30}",
            hostname in ".{0,30}",
            version in ".{0,30}",
            datadir in "/[^\u{0}]{0,30}",
            reason in "(?s).{0,60}",
            hold_ms in 0.0f64..1e9,
            position in any::<u64>(),
            gtid in proptest::option::of("[0-9,:-]{0,30}"),
            binlog in proptest::option::of(".{0,20}"),
            exact in any::<bool>(),
            seconds in 0i64..4_000_000_000,
        ) {
            let at = DateTime::from_timestamp(seconds, 123_456_789).unwrap();
            let mut m = tests::sample();
            m.name = name;
            m.server.hostname = hostname;
            m.server.version = ServerVersion::from_text(&version);
            m.server.datadir = PathBuf::from(&datadir);
            m.paths[0].path = PathBuf::from(datadir);
            m.lock.reason = reason;
            m.lock.hold_ms = hold_ms;
            m.lock.acquired_at = at;
            m.started_at = at;
            m.coordinates.exact = exact;
            m.coordinates.binlog_position = Some(position);
            m.coordinates.binlog_file = binlog;
            m.coordinates.gtid_binlog_pos = gtid;
            let dir = tempfile::tempdir().unwrap();
            m.write(dir.path()).unwrap();
            prop_assert_eq!(Manifest::read(dir.path()).unwrap(), m);
        }
    }
}
