use std::path::PathBuf;

use crate::command::CommandError;

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// What can go wrong in a backend. Every variant carries what to do next.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A path is on storage this backend cannot snapshot.
    #[error("{path} cannot be snapshotted by the {backend} backend: {reason}. {hint}")]
    Unsupported {
        backend: String,
        path: PathBuf,
        reason: String,
        hint: String,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl BackendError {
    /// `path` is on storage the `backend` cannot snapshot: why, and what to do.
    pub fn unsupported(
        backend: &str,
        path: &std::path::Path,
        reason: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        BackendError::Unsupported {
            backend: backend.into(),
            path: path.to_path_buf(),
            reason: reason.into(),
            hint: hint.into(),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        BackendError::Io {
            context: context.into(),
            source,
        }
    }
}
