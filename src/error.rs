//! Failures a user can act on, each with its own exit code.
//!
//! Code deep in dbsnap returns `anyhow::Error` with context; where a failure has a
//! class the user (or a script) should tell apart, it is raised as a [`Failure`], and
//! `main` turns its class into the exit code.

use std::fmt;

use dbsnap_backend_api::BackendError;

/// The class of a failure; each maps to one exit code (documented in `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Anything not classified below (a bug, or an unexpected system error).
    Internal,
    /// The configuration file or the command line is wrong.
    Config,
    /// The server cannot be reached or refused the credentials.
    Connection,
    /// The database user lacks a privilege dbsnap needs.
    Privileges,
    /// The database's files are not on storage the backend can snapshot.
    Layout,
    /// The destination is missing, not writable, or too full; or the directory a
    /// restore or rollback would write is used by a running server or not empty.
    Destination,
    /// The lock could not be acquired in time, or was held too long.
    Lock,
    /// Another dbsnap run holds the run lock.
    Busy,
    /// Creating, reading or releasing a snapshot failed.
    Snapshot,
    /// Copying the files failed.
    Transfer,
    /// A backup failed verification: its copy does not recover or check cleanly.
    Verify,
    /// A user hook failed or timed out.
    Hook,
    /// A kept snapshot became invalid while it was kept (e.g. a classic LVM snapshot
    /// overflowed): what was read from it is not a consistent copy.
    SnapshotInvalid,
    /// The backup host cannot be reached, refused dbsnap's key, or its host key is
    /// unknown or changed; or the ssh connection was lost.
    Remote,
    /// The restic repository is missing, unreachable, locked, or refused the password.
    Repository,
    /// Interrupted by SIGINT or SIGTERM; everything was cleaned up.
    Interrupted,
}

impl Class {
    pub fn exit_code(self) -> u8 {
        match self {
            Class::Internal => 1,
            Class::Config => 2,
            Class::Connection => 3,
            Class::Privileges => 4,
            Class::Layout => 5,
            Class::Destination => 6,
            Class::Lock => 7,
            Class::Busy => 8,
            Class::Snapshot => 9,
            Class::Transfer => 10,
            Class::Verify => 11,
            Class::Hook => 12,
            Class::SnapshotInvalid => 13,
            Class::Remote => 14,
            Class::Repository => 15,
            Class::Interrupted => 130,
        }
    }

    /// The exit codes, for `--help`.
    pub const TABLE: &'static str = "\
Exit codes:
  0    success
  1    internal error
  2    bad configuration or command line
  3    cannot connect to the server, or wrong credentials
  4    the database user lacks a privilege
  5    a database path is not on storage the backend can snapshot
  6    destination missing, not writable or full; restore/rollback target in use or not empty
  7    lock not acquired within the wait budget, or held too long
  8    another dbsnap run is active
  9    snapshot failed
  10   copy failed
  11   verification failed: the backup's copy does not recover or check cleanly
  12   a hook failed
  13   a kept snapshot became invalid while kept (released; what read it is not consistent)
  14   backup host unreachable, key refused, host key unknown or changed, or connection lost
  15   restic repository missing, unreachable, locked, or wrong password
  130  interrupted (SIGINT/SIGTERM); cleaned up";
}

/// A failure with its class, what happened, and what to do about it.
#[derive(Debug)]
pub struct Failure {
    pub class: Class,
    pub message: String,
    /// The backend's own error, when a backend failed: its kind and source, kept for
    /// whoever needs more than the message (the message already says it all).
    pub backend: Option<BackendError>,
}

impl Failure {
    pub fn new(class: Class, message: impl Into<String>) -> Self {
        Failure {
            class,
            message: message.into(),
            backend: None,
        }
    }
}

/// A backend's error with the class the user sees: a path the backend cannot
/// snapshot is a layout problem (exit 5), anything else a snapshot failure (exit 9).
pub fn backend_error(e: BackendError) -> anyhow::Error {
    let class = match &e {
        BackendError::Unsupported { .. } => Class::Layout,
        _ => Class::Snapshot,
    };
    Failure {
        class,
        message: e.to_string(),
        backend: Some(e),
    }
    .into()
}

/// The backend error behind `err`, if a backend failed.
pub fn backend_cause(err: &anyhow::Error) -> Option<&BackendError> {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .and_then(|f| f.backend.as_ref())
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Shorthand: `Err(fail(Class::Config, "..."))?`.
pub fn fail(class: Class, message: impl Into<String>) -> anyhow::Error {
    Failure::new(class, message).into()
}

/// The class of an error chain: the first [`Failure`] in it, else `Internal`.
pub fn class_of(err: &anyhow::Error) -> Class {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map_or(Class::Internal, |f| f.class)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn class_survives_context() {
        let err: anyhow::Result<()> = Err(fail(Class::Lock, "timed out"));
        let err = err.context("taking the lock").unwrap_err();
        assert_eq!(class_of(&err), Class::Lock);
        assert_eq!(class_of(&anyhow::anyhow!("x")), Class::Internal);
    }

    #[test]
    fn a_backend_error_keeps_its_kind_and_source_through_context() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such subvolume");
        let err: anyhow::Result<()> = Err(backend_error(BackendError::io("listing", io)));
        let err = err.context("taking the snapshot").unwrap_err();
        assert_eq!(class_of(&err), Class::Snapshot);
        let Some(BackendError::Io { source, .. }) = backend_cause(&err) else {
            panic!("the backend error is gone: {err:#}");
        };
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(
            format!("{err:#}"),
            "taking the snapshot: listing: no such subvolume"
        );
        let unsupported = backend_error(BackendError::Unsupported {
            backend: "btrfs".into(),
            path: "/srv".into(),
            reason: "ext4".into(),
            hint: "move it".into(),
        });
        assert_eq!(class_of(&unsupported), Class::Layout);
    }

    #[test]
    fn exit_codes_are_distinct() {
        let all = [
            Class::Internal,
            Class::Config,
            Class::Connection,
            Class::Privileges,
            Class::Layout,
            Class::Destination,
            Class::Lock,
            Class::Busy,
            Class::Snapshot,
            Class::Transfer,
            Class::Verify,
            Class::Hook,
            Class::SnapshotInvalid,
            Class::Remote,
            Class::Repository,
            Class::Interrupted,
        ];
        let mut codes: Vec<u8> = all.iter().map(|c| c.exit_code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        let readme = include_str!("../README.md");
        for code in codes {
            assert!(
                Class::TABLE.contains(&format!("\n  {code} ")),
                "{code} missing from TABLE"
            );
            assert!(
                readme.contains(&format!("\n| {code} | ")),
                "{code} missing from the README's exit-code table"
            );
        }
    }
}
