//! The log as a chain of segment files (docs/storage.md, "The log's
//! segments"). A segment is a log file of its own — the 20-byte header, then
//! records — named `log-<first index>`, whose header gives the index of the
//! entry before its first. Only the last segment is written to; a snapshot
//! frees the sealed segments it covers by deleting them whole, so that
//! compaction never rewrites the entries that stay (§7).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::format::{self, ScannedLog};
use super::{corrupt, StorageError};
use crate::raft::LogIndex;

const PREFIX: &str = "log-";
/// Enough digits for any u64, so that names sort as their indexes do.
const DIGITS: usize = 20;

/// The name of the segment whose first entry is `first_index`.
pub fn name(first_index: LogIndex) -> String {
    format!("{PREFIX}{first_index:0DIGITS$}")
}

/// The first index a segment's file name gives; None for any other file
/// (`log-….tmp` included).
fn parse_name(name: &str) -> Option<LogIndex> {
    let digits = name.strip_prefix(PREFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether `name` is a segment being written (`log-<first index>.tmp`).
pub fn is_temporary(name: &str) -> bool {
    name.strip_suffix(".tmp").and_then(parse_name).is_some()
}

/// What a scan of one segment found.
pub struct ScannedSegment {
    pub path: PathBuf,
    pub scanned: ScannedLog,
}

impl ScannedSegment {
    /// The index of the entry before this segment's first.
    pub fn follows(&self) -> LogIndex {
        self.scanned.follows
    }

    /// The index of its last entry; `follows()` when it holds none.
    pub fn last_index(&self) -> LogIndex {
        self.scanned
            .entries
            .last()
            .map_or(self.follows(), |e| e.index)
    }

    /// An empty segment, as `open` creates on a first boot.
    pub fn empty(path: PathBuf, follows: LogIndex) -> ScannedSegment {
        ScannedSegment {
            path,
            scanned: ScannedLog {
                version: format::LOG_FORMAT_VERSION,
                follows,
                end: format::LOG_HEADER_LEN,
                ..Default::default()
            },
        }
    }
}

/// The segment files in `dir`, in index order.
pub fn list(dir: &Path) -> io::Result<Vec<(LogIndex, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_name) {
            found.push((first, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Read every segment in `dir`, in index order. A damaged record at the end
/// of the last one is a torn write (`ScannedLog::torn`, for the caller to
/// cut off); damage anywhere else is corruption, for a segment is synced
/// whole before the next one is created (`FileStorage::roll`).
pub fn read_all(dir: &Path) -> Result<Vec<ScannedSegment>, StorageError> {
    let found = list(dir).map_err(StorageError::io(format!(
        "listing the log segments in {}",
        dir.display()
    )))?;
    let count = found.len();
    let mut segments = Vec::with_capacity(count);
    for (i, (first, path)) in found.into_iter().enumerate() {
        let segment = read(first, path)?;
        if let (Some(torn), true) = (&segment.scanned.torn, i + 1 < count) {
            return Err(StorageError::Corrupt {
                file: segment.path,
                offset: torn.offset,
                reason: format!(
                    "{}; a later segment exists, and a segment is synced whole before the next is created, so this is damage, not a torn write",
                    torn.reason
                ),
            });
        }
        segments.push(segment);
    }
    Ok(segments)
}

fn read(first: LogIndex, path: PathBuf) -> Result<ScannedSegment, StorageError> {
    let bytes = fs::read(&path).map_err(StorageError::io(format!("reading {}", path.display())))?;
    let scanned = format::scan_log(&bytes, first.saturating_sub(1)).map_err(corrupt(&path))?;
    let damaged = |offset: u64, reason: String| StorageError::Corrupt {
        file: path.clone(),
        offset,
        reason,
    };
    if scanned.version != format::LOG_FORMAT_VERSION {
        return Err(damaged(
            4,
            format!(
                "format version {}, but a log segment is always in version {}",
                scanned.version,
                format::LOG_FORMAT_VERSION
            ),
        ));
    }
    if scanned.follows.checked_add(1) != Some(first) {
        return Err(damaged(
            8,
            format!(
                "the name says the segment starts at entry {first}, but its header says it follows entry {}",
                scanned.follows
            ),
        ));
    }
    if let (Some(entry), Some(&offset)) = (scanned.entries.first(), scanned.offsets.first()) {
        if entry.index != first {
            return Err(damaged(
                offset,
                format!(
                    "the first record is entry {}, not entry {first}",
                    entry.index
                ),
            ));
        }
    }
    Ok(ScannedSegment { path, scanned })
}

/// Each segment must begin where the one before it ends: a gap means a
/// segment was lost, and with it entries this server may have acknowledged.
pub fn check_chain(segments: &[ScannedSegment]) -> Result<(), StorageError> {
    for pair in segments.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        if after.follows() != before.last_index() {
            return Err(StorageError::Inconsistent {
                file: after.path.clone(),
                reason: format!(
                    "follows entry {}, but the segment before it ({}) ends at entry {}: a segment between them was lost",
                    after.follows(),
                    before.path.display(),
                    before.last_index()
                ),
            });
        }
        let last = before.scanned.entries.last();
        let first = after
            .scanned
            .entries
            .first()
            .zip(after.scanned.offsets.first());
        if let (Some(last), Some((first, &offset))) = (last, first) {
            format::check_follows(first.index, first.term, last.index, last.term).map_err(
                |reason| StorageError::Corrupt {
                    file: after.path.clone(),
                    offset,
                    reason,
                },
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_as_their_indexes_and_nothing_else_is_a_segment() {
        assert_eq!(name(1), "log-00000000000000000001");
        assert_eq!(name(u64::MAX), "log-18446744073709551615");
        assert!(name(9) < name(10));
        assert_eq!(parse_name(&name(12345)), Some(12345));
        for other in [
            "log",
            "log-1",
            "log-00000000000000000001.tmp",
            "log-0000000000000000000x",
            "hardstate",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
        assert!(is_temporary("log-00000000000000000001.tmp"));
        assert!(!is_temporary("log.tmp"));
    }
}
