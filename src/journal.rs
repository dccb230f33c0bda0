//! The state journal and the run lock.
//!
//! Every resource a run creates (snapshot, mount, partial directory) is written here
//! *before* it is created and removed after it is released. Whatever stops a run —
//! an error, SIGINT, kill -9, power loss — the next run or `dbsnap cleanup` finds the
//! leftovers here and releases them. The file is rewritten atomically (write, fsync,
//! rename) so a crash never leaves it half-written.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use dbsnap_backend_api::SnapshotSet;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{fail, Class};

const JOURNAL_FILE: &str = "journal.json";
const LOCK_FILE: &str = "run.lock";

/// A resource a run may leave behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resource {
    /// Snapshots (planned or created) of one lock window.
    Snapshot { set: SnapshotSet },
    /// The snapshots made readable using `workdir`.
    Mount { set: SnapshotSet, workdir: PathBuf },
    /// A backup directory being filled (`DEST/NAME.partial`).
    Partial { dir: PathBuf },
    /// A copy being received by a native stream for the backup being written in
    /// `partial` ([`dbsnap_backend_api::Received::id`]); it may live outside `partial`
    /// (ZFS). Released only while `partial` exists: once the backup is published, the
    /// copy is the backup's. On a backup host (`remote`), both are paths there and the
    /// copy is deleted over ssh.
    Received {
        backend: String,
        id: String,
        partial: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        remote: Option<RemoteDest>,
    },
    /// A backup directory on another host (`dir` inside the ssh destination `dest`,
    /// reached with `ssh`). A `resumable` one is being filled: released, it stays
    /// there as `NAME.partial` for the next run to resume from. One that is not is a
    /// backup being removed: released, it is deleted.
    RemotePartial {
        dest: String,
        ssh: crate::config::SshConfig,
        dir: PathBuf,
        resumable: bool,
    },
    /// A backup of an ssh destination pulled into `state_dir/pulled/NAME` to be
    /// verified here.
    Pulled { dir: PathBuf },
    /// A verification's scratch copy of a backup (`.dbsnap-verify-NAME`) and the run
    /// directory (socket, pid file) of the throwaway server started on it.
    Scratch { dir: PathBuf, run_dir: PathBuf },
    /// A backup fetched from a repository into `state_dir/staging/NAME` to be
    /// verified, removed once used.
    Fetched { dir: PathBuf },
    /// restic working on a repository for this run (`restic backup` of the backup being
    /// written, or forgetting, pruning, checking). Recorded before restic starts;
    /// `pid` once it runs. An interrupted one may leave a stale lock (on this host,
    /// of a dead process, taken after `started_at`) and a backup's claim and files
    /// without its manifest snapshot: `dbsnap cleanup` removes them.
    ResticRun {
        /// `[backup] dest`, with any password in it masked.
        repository: String,
        pid: Option<u32>,
        started_at: chrono::DateTime<chrono::Utc>,
        /// For a backup being written: the token its snapshots are tagged with
        /// (`dbsnap-run=TOKEN`), which tells them from another run's under that name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claim: Option<String>,
    },
}

/// An ssh destination as the journal names it: enough for `cleanup` to reach it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteDest {
    /// `[backup] dest` (the `ssh://` URL).
    pub dest: String,
    pub ssh: crate::config::SshConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The run that created the resource.
    pub run: String,
    pub resource: Resource,
}

/// Exclusive use of a state directory: one run at a time.
pub struct RunLock {
    _lock: Flock<File>,
}

impl RunLock {
    /// Take the run lock or fail at once, naming the process that holds it.
    pub fn acquire(state_dir: &Path) -> anyhow::Result<RunLock> {
        // 0700: the journal and records name snapshots, mounts and directories that
        // cleanup deletes; nobody else may write them.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|e| {
                fail(
                    Class::Config,
                    format!(
                        "cannot create the state directory {}: {e}. Set state_dir to a writable directory",
                        state_dir.display()
                    ),
                )
            })?;
        if let Ok(meta) = std::fs::metadata(state_dir) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o022 != 0 {
                tracing::warn!(
                    "the state directory {} is writable by other users: anyone who can write \
                     its journal can make `dbsnap cleanup` delete things. chmod 700 it",
                    state_dir.display()
                );
            }
        }
        let path = state_dir.join(LOCK_FILE);
        let file = open_state_file(&path, OpenFor::Lock).map_err(|e| {
            use nix::libc::{EACCES, EPERM, EROFS};
            match e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.raw_os_error())
            {
                Some(EACCES | EPERM | EROFS) => fail(
                    Class::Config,
                    format!(
                        "the state directory {} is not writable ({e:#}): make it writable for the \
                             user running dbsnap, or set state_dir to a directory that is",
                        state_dir.display()
                    ),
                ),
                _ => e,
            }
        })?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(fail(
                    Class::Busy,
                    format!(
                        "another dbsnap run is active (process {}; lock file {}). Wait for it to \
                         finish; two runs against one server must never interleave",
                        holder.trim(),
                        path.display()
                    ),
                ));
            }
            Err((_, e)) => return Err(anyhow::anyhow!("locking {}: {e}", path.display())),
        };
        lock.set_len(0)?;
        write!(&*lock, "{}", std::process::id())?;
        Ok(RunLock { _lock: lock })
    }
}

/// Whether a dbsnap run holds the run lock of `state_dir` now, found without taking
/// the lock (so a reader never makes a starting run fail as busy): the kernel lists
/// every held flock in /proc/locks with its holder's pid and the file's inode, and the
/// holder wrote its pid into the lock file. (The device in /proc/locks is not compared:
/// on btrfs it is the filesystem's, while stat() reports the subvolume's.)
pub fn run_active(state_dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let path = state_dir.join(LOCK_FILE);
    let (Ok(meta), Ok(holder)) = (std::fs::metadata(&path), std::fs::read_to_string(&path)) else {
        return false;
    };
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    holds_flock(&locks, holder.trim(), meta.ino())
}

/// Whether /proc/locks text lists a flock by process `pid` on inode `ino`. Its lines
/// read `1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF`.
fn holds_flock(locks: &str, pid: &str, ino: u64) -> bool {
    let inode = format!(":{ino}");
    locks.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"FLOCK")
            && fields.get(4) == Some(&pid)
            && fields.get(5).is_some_and(|f| f.ends_with(&inode))
    })
}

/// The journal's entries, read without the run lock (for status and metrics, which
/// change nothing). While a run is active they are that run's resources.
pub fn read_entries(state_dir: &Path) -> anyhow::Result<Vec<Entry>> {
    let path = state_dir.join(JOURNAL_FILE);
    match read_state_file(&path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        }
        Err(e) if is_not_found(&e) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The journal of one state directory. Only the holder of the [`RunLock`] writes it.
pub struct Journal {
    path: PathBuf,
    entries: Vec<Entry>,
}

impl Journal {
    pub fn open(state_dir: &Path, _lock: &RunLock) -> anyhow::Result<Journal> {
        let path = state_dir.join(JOURNAL_FILE);
        let entries = match read_state_file(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                fail(
                    Class::Internal,
                    format!(
                        "the state journal {} is unreadable ({e}); inspect it, release what it lists \
                         by hand, then delete it",
                        path.display()
                    ),
                )
            })?,
            Err(e) if is_not_found(&e) => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(Journal { path, entries })
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Record a resource before creating it.
    pub fn record(&mut self, run: &str, resource: Resource) -> anyhow::Result<()> {
        self.entries.push(Entry {
            run: run.to_string(),
            resource,
        });
        self.save()
    }

    /// Forget a resource after releasing it.
    pub fn forget(&mut self, resource: &Resource) -> anyhow::Result<()> {
        self.entries.retain(|e| &e.resource != resource);
        self.save()
    }

    /// Forget a partial backup that is published now, with the copies received into
    /// it: they are the backup's, no longer leftovers.
    pub fn forget_published(&mut self, partial: &Path) -> anyhow::Result<()> {
        self.entries.retain(|e| match &e.resource {
            Resource::Partial { dir } | Resource::RemotePartial { dir, .. } => dir != partial,
            Resource::Pulled { .. } => true,
            Resource::Received { partial: p, .. } => p != partial,
            Resource::Snapshot { .. }
            | Resource::Mount { .. }
            | Resource::Scratch { .. }
            | Resource::Fetched { .. }
            | Resource::ResticRun { .. } => true,
        });
        self.save()
    }

    fn save(&self) -> anyhow::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.entries)?;
        let mut file = open_state_file(&tmp, OpenFor::Replace)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// How a state file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFor {
    Read,
    /// The run lock: created if missing, kept.
    Lock,
    /// A temporary file that replaces the real one by rename: created or truncated.
    Replace,
}

/// Open a file in the state directory, never through a symbolic link (`O_NOFOLLOW`):
/// a link planted there would make dbsnap write, or read its journal from, a file
/// of the planter's choice.
pub fn open_state_file(path: &Path, how: OpenFor) -> anyhow::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.custom_flags(nix::libc::O_NOFOLLOW).mode(0o600);
    match how {
        OpenFor::Read => options.read(true),
        OpenFor::Lock => options.read(true).write(true).create(true).truncate(false),
        OpenFor::Replace => options.write(true).create(true).truncate(true),
    };
    options.open(path).map_err(|e| {
        if e.raw_os_error() == Some(nix::libc::ELOOP) {
            fail(
                Class::Config,
                format!(
                    "{} is a symbolic link: dbsnap never follows links in its state directory. \
                     Remove the link (and check who put it there)",
                    path.display()
                ),
            )
        } else {
            anyhow::Error::new(e).context(format!("opening {}", path.display()))
        }
    })
}

/// Read a state file's text (see [`open_state_file`]).
pub fn read_state_file(path: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut open_state_file(path, OpenFor::Read)?, &mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(text)
}

/// Whether an error from [`open_state_file`] means the file does not exist.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbsnap_backend_api::SnapshotName;

    fn set(name: &str) -> SnapshotSet {
        SnapshotSet {
            backend: "btrfs".into(),
            name: SnapshotName::new(name).unwrap(),
            snapshots: vec![],
        }
    }

    #[test]
    fn survives_reopen_and_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        let mut j = Journal::open(dir.path(), &lock).unwrap();
        j.record(
            "r1",
            Resource::Snapshot {
                set: set("dbsnap-a"),
            },
        )
        .unwrap();
        j.record(
            "r1",
            Resource::Partial {
                dir: "/b/x.partial".into(),
            },
        )
        .unwrap();
        let j2 = Journal::open(dir.path(), &lock).unwrap();
        assert_eq!(j2.entries().len(), 2);
        j.forget(&Resource::Partial {
            dir: "/b/x.partial".into(),
        })
        .unwrap();
        let j3 = Journal::open(dir.path(), &lock).unwrap();
        assert_eq!(j3.entries().len(), 1);
    }

    #[test]
    fn a_held_run_lock_is_seen_in_proc_locks() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!run_active(dir.path()));
        let lock = RunLock::acquire(dir.path()).unwrap();
        assert!(run_active(dir.path()));
        drop(lock);
        assert!(!run_active(dir.path()));
        let line = "2: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF\n";
        assert!(holds_flock(line, "4242", 1234));
        assert!(!holds_flock(line, "4242", 234));
        assert!(!holds_flock(line, "424", 1234));
    }

    #[test]
    fn second_run_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RunLock::acquire(dir.path()).unwrap();
        let err = RunLock::acquire(dir.path()).err().unwrap();
        assert_eq!(crate::error::class_of(&err), Class::Busy);
        assert!(err.to_string().contains(&std::process::id().to_string()));
    }
}

#[cfg(test)]
mod received_on_a_backup_host {
    use super::*;

    #[test]
    fn an_entry_without_a_host_reads_as_one_on_this_host_and_a_remote_one_round_trips() {
        let old = r#"{"kind":"received","backend":"btrfs","id":"/b/x.partial/dbsnap-a.0","partial":"/b/x.partial"}"#;
        let entry: Resource = serde_json::from_str(old).unwrap();
        assert!(matches!(entry, Resource::Received { remote: None, .. }));
        assert_eq!(serde_json::to_string(&entry).unwrap(), old);
        let remote = Resource::Received {
            backend: "zfs".into(),
            id: "bk/dbsnap-received/dbsnap-a.0.stream@dbsnap-a".into(),
            partial: "/srv/b/x.partial".into(),
            remote: Some(RemoteDest {
                dest: "ssh://backup@host/srv/b".into(),
                ssh: crate::config::SshConfig::default(),
            }),
        };
        let text = serde_json::to_string(&remote).unwrap();
        assert_eq!(serde_json::from_str::<Resource>(&text).unwrap(), remote);
    }
}

#[cfg(test)]
mod properties {
    use dbsnap_backend_api::{SnapshotName, Volume, VolumeSnapshot};
    use proptest::prelude::*;

    use super::*;

    fn resource() -> impl Strategy<Value = Resource> {
        prop_oneof![
            "/[^\u{0}]{0,30}".prop_map(|d| Resource::Partial { dir: d.into() }),
            ("/[^\u{0}]{0,30}", "/[^\u{0}]{0,30}").prop_map(|(d, r)| Resource::Scratch {
                dir: d.into(),
                run_dir: r.into(),
            }),
            (".{0,10}", ".{0,20}", "/.{0,20}").prop_map(|(b, i, p)| Resource::Received {
                backend: b,
                id: i,
                partial: p.into(),
                remote: None,
            }),
            (
                "dbsnap-[a-zA-Z0-9_.-]{1,30}",
                proptest::collection::vec((".{0,12}", "/.{0,12}", ".{0,12}"), 0..3)
            )
                .prop_map(|(name, snaps)| Resource::Snapshot {
                    set: SnapshotSet {
                        backend: "btrfs".into(),
                        name: SnapshotName::new(name).unwrap(),
                        snapshots: snaps
                            .into_iter()
                            .map(|(vid, root, id)| VolumeSnapshot {
                                volume: Volume {
                                    id: vid,
                                    root: root.into(),
                                    fstype: "btrfs".into()
                                },
                                id,
                            })
                            .collect(),
                    },
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_journal_text_is_refused_or_read_without_panicking(text in "(?s).{0,300}") {
            let dir = tempfile::tempdir().unwrap();
            let lock = RunLock::acquire(dir.path()).unwrap();
            std::fs::write(dir.path().join(JOURNAL_FILE), &text).unwrap();
            if let Err(e) = Journal::open(dir.path(), &lock) {
                prop_assert!(e.to_string().contains("journal.json"), "{}", e);
            }
        }
    }

    proptest! {
        // Each case writes and fsyncs real files: fewer cases keep `cargo test --lib` fast.
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn journals_round_trip_through_their_file(
            entries in proptest::collection::vec((".{0,12}", resource()), 0..6)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let lock = RunLock::acquire(dir.path()).unwrap();
            let mut journal = Journal::open(dir.path(), &lock).unwrap();
            for (run, resource) in &entries {
                journal.record(run, resource.clone()).unwrap();
            }
            let back = Journal::open(dir.path(), &lock).unwrap();
            let expected: Vec<Entry> = entries
                .into_iter()
                .map(|(run, resource)| Entry { run, resource })
                .collect();
            prop_assert_eq!(back.entries(), expected.as_slice());
        }
    }
}
