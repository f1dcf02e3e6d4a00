//! Why a data dir could not be opened, in one line an operator can act on.

use std::fmt;
use std::io;
use std::path::PathBuf;

#[derive(Debug)]
pub enum StorageError {
    /// Another FileStorage (in this or another process) holds the dir's lock.
    Locked { dir: PathBuf, lock_file: PathBuf },
    /// The file system refused an operation; `action` names it and the path.
    Io { action: String, source: io::Error },
    /// A file's bytes are damaged, or break the rules of its format.
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// Each file is intact but together they cannot be right (say, a log
    /// whose entries are newer than the stored current_term).
    Inconsistent { file: PathBuf, reason: String },
}

impl StorageError {
    pub(super) fn io(action: impl Into<String>) -> impl FnOnce(io::Error) -> StorageError {
        let action = action.into();
        move |source| StorageError::Io { action, source }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Locked { dir, lock_file } => write!(
                f,
                "data dir {} is in use by another raft-kv process (lock file {})",
                dir.display(),
                lock_file.display()
            ),
            StorageError::Io { action, source } => write!(f, "{action}: {source}"),
            StorageError::Corrupt {
                file,
                offset,
                reason,
            } => write!(
                f,
                "{} is corrupt at byte offset {offset}: {reason}; refusing to start (see docs/storage.md)",
                file.display()
            ),
            StorageError::Inconsistent { file, reason } => write!(
                f,
                "{}: {reason}; refusing to start (see docs/storage.md)",
                file.display()
            ),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<StorageError> for io::Error {
    fn from(error: StorageError) -> io::Error {
        let kind = match &error {
            StorageError::Locked { .. } => io::ErrorKind::ResourceBusy,
            StorageError::Io { source, .. } => source.kind(),
            StorageError::Corrupt { .. } | StorageError::Inconsistent { .. } => {
                io::ErrorKind::InvalidData
            }
        };
        io::Error::new(kind, error.to_string())
    }
}
