//! Backups: a snapshot as a file of its own (`raft-kv snapshot save`), and a
//! new data dir seeded from one (`raft-kv snapshot restore`), as etcd's
//! `etcdctl snapshot save` and `etcdutl snapshot restore` do.
//!
//! A backup file is a data dir's `snapshot` file, byte for byte: the same
//! header, with a CRC-32 over the header and the data (docs/storage.md), so
//! one reader checks both.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{corrupt, format, on, read_if_present, sync_dir, FileStorage, StorageError};
use crate::raft::{HardState, Snapshot, Storage};

/// `snapshot` as the bytes of a snapshot file.
pub fn snapshot_file_bytes(snapshot: &Snapshot) -> Vec<u8> {
    let header = format::encode_snapshot_header(snapshot);
    let mut bytes = Vec::with_capacity(header.len() + snapshot.data.len());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&snapshot.data);
    bytes.extend_from_slice(&format::encode_snapshot_trailer(snapshot));
    bytes
}

/// Check and decode the bytes of a snapshot file (`path` names it in errors).
pub fn decode_snapshot_file(path: &Path, bytes: Vec<u8>) -> Result<Snapshot, StorageError> {
    format::decode_snapshot(bytes).map_err(corrupt(path))
}

/// Read and check the snapshot file at `path`.
pub fn read_snapshot_file(path: &Path) -> Result<Snapshot, StorageError> {
    match read_if_present(path)? {
        Some(bytes) => decode_snapshot_file(path, bytes),
        None => Err(StorageError::Io {
            action: format!("reading {}", path.display()),
            source: io::Error::new(io::ErrorKind::NotFound, "no such file"),
        }),
    }
}

/// Make `dir` the data dir of a server that starts from `snapshot`: the
/// snapshot, an empty log that follows it, `current_term` = its term, no
/// vote, and `cluster_file`. The snapshot's entries count as committed: a
/// server recovers its commit index from its snapshot (§7).
///
/// `dir` must not exist, or be empty. It is filled under another name
/// beside it and renamed into place at the end, so a failure leaves it as
/// it was.
pub fn seed_data_dir(
    dir: &Path,
    snapshot: &Snapshot,
    cluster_file: &[u8],
) -> Result<(), StorageError> {
    check_new(dir)?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dir
        .file_name()
        .ok_or_else(|| inconsistent(dir, "names no directory".into()))?;
    let staging = parent.join(format!(".{}.restoring", name.to_string_lossy()));
    if staging.exists() {
        // What an interrupted restore of the same dir left: ours to remove.
        fs::remove_dir_all(&staging).map_err(StorageError::io(format!(
            "removing {} (left by an interrupted restore)",
            staging.display()
        )))?;
    }
    let seeded = fill(&staging, snapshot, cluster_file).and_then(|()| {
        fs::rename(&staging, dir)
            .and_then(|()| sync_dir(&parent))
            .map_err(on("renaming into place", dir))
            .map_err(StorageError::io("restoring"))
    });
    if seeded.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    seeded
}

fn fill(staging: &Path, snapshot: &Snapshot, cluster_file: &[u8]) -> Result<(), StorageError> {
    let mut storage = FileStorage::open(staging)?;
    let io = |what: &str| StorageError::io(format!("{what} in {}", staging.display()));
    // The term first: no stored entry may be newer than current_term.
    storage
        .save_hard_state(HardState {
            current_term: snapshot.last_included_term,
            voted_for: None,
        })
        .map_err(io("saving the hard state"))?;
    storage
        .save_snapshot(snapshot, false)
        .map_err(io("saving the snapshot"))?;
    storage.save_cluster_file(cluster_file)
}

/// Refuse to seed over anything: a data dir that holds a server's state
/// is not a restore's to replace.
fn check_new(dir: &Path) -> Result<(), StorageError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(inconsistent(
                dir,
                "is not empty: a restore seeds a new data dir, and never replaces one; \
                 give a new --data-dir, or remove this one yourself"
                    .into(),
            )),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            Err(inconsistent(dir, "is a file, not a directory".into()))
        }
        Err(e) => Err(StorageError::io(format!("reading {}", dir.display()))(e)),
    }
}

fn inconsistent(file: &Path, reason: String) -> StorageError {
    StorageError::Inconsistent {
        file: file.to_path_buf(),
        reason,
    }
}
