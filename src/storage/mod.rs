//! File-backed stable storage for one node: the [`Storage`] the core persists
//! through, kept in a node's `--data-dir` (docs/storage.md).
//!
//! Figure 2 asks that current_term, voted_for and log[] be "updated on stable
//! storage before responding to RPCs". Three files hold them:
//!
//! - `hardstate`: current_term and voted_for, replaced atomically.
//! - `snapshot`: the latest snapshot (§7), replaced atomically.
//! - `log-<first index>`: the log's segments, each appended record by record
//!   until it is full and the next begins (src/storage/segments.rs).
//!
//! `LOCK` keeps two servers from sharing one dir.

mod backup;
mod error;
mod format;
mod segments;

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use log::{info, warn};

pub use backup::{decode_snapshot_file, read_snapshot_file, seed_data_dir, snapshot_file_bytes};
pub use error::StorageError;
use format::Corruption;
use segments::ScannedSegment;

use crate::raft::{Entry, HardState, LogIndex, Recovered, Snapshot, SnapshotWriter, Storage, Term};

const LOCK_FILE: &str = "LOCK";
const HARD_STATE_FILE: &str = "hardstate";
const SNAPSHOT_FILE: &str = "snapshot";
/// The single-file log of the versions before segments, rewritten by `open`.
const LEGACY_LOG_FILE: &str = "log";
/// The cluster this dir belongs to; its text is the server's (src/server/identity.rs).
const CLUSTER_FILE: &str = "cluster";
/// Where the snapshot writer thread writes a snapshot before it replaces
/// `snapshot` (apart from `snapshot.tmp`, which the event loop may be
/// writing at the same time: a snapshot installed from the leader).
const BACKGROUND_SNAPSHOT_FILE: &str = "snapshot.background.tmp";
/// The snapshot writer thread syncs the file after each piece of this many
/// bytes, then pauses this long, so that the disk is free for the log's
/// fsyncs in between.
const SNAPSHOT_WRITE_PIECE: usize = 1 << 20;
const SNAPSHOT_WRITE_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);
/// Each atomic replacement writes `<name>.tmp` first; a crash can leave one.
const TEMPORARY_FILES: [&str; 5] = [
    "hardstate.tmp",
    "snapshot.tmp",
    BACKGROUND_SNAPSHOT_FILE,
    "log.tmp",
    "cluster.tmp",
];
/// The last segment grows in steps of this many bytes, ahead of the records
/// written into it. An fsync after an append that also grew the file must write the
/// file's new length too; within the space already there it need not, which
/// makes the fsync of a typical append about a third cheaper (measured in
/// docs/performance.md). The space reads as zeros: the clean end of the log.
const LOG_GROWTH_BYTES: u64 = 4 << 20;
/// A segment takes no more appends once it holds this many bytes: a
/// snapshot frees the log in pieces of about this size. Far below the
/// snapshot floor (`--snapshot-log-bytes`, 64 MiB by default), so that
/// each snapshot frees most of the log.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;

/// Where a stored entry's record starts in its segment, and the entry's term.
#[derive(Clone, Copy, Debug)]
struct Record {
    offset: u64,
    term: Term,
}

/// One of the log's segment files.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// the index of the entry before its first (its header's)
    follows: LogIndex,
}

/// The [`Storage`] of a node, on files in one directory.
pub struct FileStorage {
    dir: PathBuf,
    /// Deletes the segments compactions free. Declared before the lock:
    /// fields drop in order, and dropping it waits for the deletions, so
    /// the dir is left as this storage had it before another may open it.
    deleter: Deleter,
    /// Held open for the life of this value: it carries the lock on `LOCK`.
    _lock: File,
    /// The log's segments, oldest first; never empty. Each begins where the
    /// one before it ends; the oldest may still hold entries the snapshot
    /// covers, the others do not.
    segments: Vec<Segment>,
    /// The last segment, opened for writing; records go at `log_end`.
    log: File,
    /// A segment holding this many bytes is full (`DEFAULT_SEGMENT_BYTES`).
    segment_bytes: u64,
    /// The stored entries: `records[i]` holds entry `first_index + i`.
    records: Vec<Record>,
    /// The index the first stored entry has (or the next append must have):
    /// one past the snapshot.
    first_index: LogIndex,
    /// Where the records in the last segment end.
    log_end: u64,
    /// The length of the last segment: `log_end` and zeros after it.
    log_len: u64,
    /// The last entry known to be on disk (fsynced, or in the snapshot).
    /// Each record written carries it as durable_before, so that recovery
    /// can tell a torn write of entries never acknowledged from damage to
    /// ones that may have been (Figure 2; docs/storage.md, "Torn writes and
    /// corruption").
    durable_index: LogIndex,
    hard_state: HardState,
    /// The snapshot the log follows: the entries through it are dropped.
    snapshot_index: LogIndex,
    /// The last index of the snapshot in `snapshot`, shared with the
    /// [`FileSnapshotWriter`]: ahead of `snapshot_index` while a snapshot
    /// the writer stored waits for `compact`. Held while `snapshot` is
    /// replaced, so that an older snapshot never replaces a newer one.
    stored_snapshot: Arc<Mutex<LogIndex>>,
    /// The last segment was written or truncated since the last fsync.
    unsynced: bool,
    /// The last segment was truncated since the last fsync.
    truncated_unsynced: bool,
    /// What `open` read, handed over by the first `recover`.
    recovered: Option<Recovered>,
}

/// A thread that deletes the segments compactions free. Unlinking a 16 MiB
/// file takes milliseconds (six took 30 ms on the machine of
/// docs/performance.md), time the event loop would spend with heartbeats
/// waiting, and nothing needs to wait for it: a covered segment is garbage
/// whether or not it is gone yet. A new segment never takes the name of
/// one waiting here: names are first indexes, and new segments start after
/// the snapshot, covered ones at or before it.
struct Deleter {
    to_delete: Option<std::sync::mpsc::Sender<PathBuf>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Deleter {
    fn spawn() -> io::Result<Deleter> {
        let (to_delete, paths) = std::sync::mpsc::channel::<PathBuf>();
        let thread = std::thread::Builder::new()
            .name("segment-deleter".into())
            .spawn(move || {
                for path in paths {
                    if let Err(e) = fs::remove_file(&path) {
                        // Left for `open` to delete.
                        warn!("removing {}, which a snapshot covers: {e}", path.display());
                    }
                }
            })?;
        Ok(Deleter {
            to_delete: Some(to_delete),
            thread: Some(thread),
        })
    }

    fn delete(&self, path: PathBuf) {
        let sent = self.to_delete.as_ref().map(|to| to.send(path));
        if !matches!(sent, Some(Ok(()))) {
            warn!("the segment deleter has stopped; open will delete what it left");
        }
    }
}

impl Drop for Deleter {
    /// Wait for the deletions asked for, so that the dir is as the storage
    /// left it once the storage is gone.
    fn drop(&mut self) {
        drop(self.to_delete.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for FileStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStorage")
            .field("dir", &self.dir)
            .field("hard_state", &self.hard_state)
            .field("snapshot_index", &self.snapshot_index)
            .field("first_index", &self.first_index)
            .field("last_index", &self.last_index())
            .finish()
    }
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Give an I/O error the path it happened on.
fn on(action: &str, path: &Path) -> impl FnOnce(io::Error) -> io::Error {
    let context = format!("{action} {}", path.display());
    move |error| io::Error::new(error.kind(), format!("{context}: {error}"))
}

fn corrupt(file: &Path) -> impl FnOnce(Corruption) -> StorageError {
    let file = file.to_path_buf();
    move |c| StorageError::Corrupt {
        file,
        offset: c.offset,
        reason: c.reason,
    }
}

/// Make a directory's entries (files created, renamed or removed in it) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(on("syncing directory", dir))
}

/// Read a whole file; a missing one reads as None (first boot).
fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::io(format!("reading {}", path.display()))(e)),
    }
}

/// Replace `dir/name` with what `fill` writes, so that a reader (or a crash)
/// sees the old file or the new one, never a mix: write `name.tmp`, fsync it,
/// rename it over `name`, fsync the directory so the rename itself survives.
fn replace_atomically(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let temporary = dir.join(format!("{name}.tmp"));
    write_durably(&temporary, fill)?;
    rename_durably(dir, &temporary, name)
}

/// Create `path` with what `fill` writes, and fsync it; on an error, remove it.
fn write_durably(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let written = File::create(path)
        .and_then(|mut file| {
            fill(&mut file)?;
            file.sync_all()
        })
        .map_err(on("writing", path));
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// Rename `temporary` over `dir/name` and fsync the directory, so that the
/// rename itself survives a crash.
fn rename_durably(dir: &Path, temporary: &Path, name: &str) -> io::Result<()> {
    let target = dir.join(name);
    fs::rename(temporary, &target).map_err(on("renaming into place", &target))?;
    sync_dir(dir)
}

/// Refuse a snapshot index that the files cannot hold.
fn check_snapshot_index(index: LogIndex) -> io::Result<()> {
    if index == 0 {
        return Err(invalid_input(
            "a snapshot must cover at least entry 1".into(),
        ));
    }
    if !format::leaves_room_after(index) {
        return Err(invalid_input(format!(
            "a snapshot through {index} {}",
            format::NO_ROOM
        )));
    }
    Ok(())
}

/// The index of the stored snapshot, locked. A thread that panicked while
/// holding it stopped the process (the node's panic hook), so a poisoned
/// lock is never seen running; its value is still right if it were.
fn lock_index(index: &Mutex<LogIndex>) -> std::sync::MutexGuard<'_, LogIndex> {
    index
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes a node's own snapshots into its data dir, from the snapshot writer
/// thread (§7), while the event loop goes on with the log in the same dir.
pub struct FileSnapshotWriter {
    dir: PathBuf,
    /// shared with the [`FileStorage`]: see `FileStorage::stored_snapshot`
    stored_snapshot: Arc<Mutex<LogIndex>>,
}

impl SnapshotWriter for FileSnapshotWriter {
    fn write_snapshot(&mut self, snapshot: &Snapshot) -> io::Result<bool> {
        let index = snapshot.last_included_index;
        check_snapshot_index(index)?;
        let header = format::encode_snapshot_header(snapshot);
        let temporary = self.dir.join(BACKGROUND_SNAPSHOT_FILE);
        let started = Instant::now();
        write_durably(&temporary, |f| {
            f.write_all(&header)?;
            // In pieces, each synced before the next, with a pause between:
            // written at once, the whole snapshot would sit in the disk's
            // queue ahead of every log fsync until it is out, and the
            // node's writes would wait as long (docs/performance.md).
            for piece in snapshot.data.chunks(SNAPSHOT_WRITE_PIECE) {
                f.write_all(piece)?;
                f.sync_data()?;
                std::thread::sleep(SNAPSHOT_WRITE_PAUSE);
            }
            f.write_all(&format::encode_snapshot_trailer(snapshot))
        })?;
        let mut stored = lock_index(&self.stored_snapshot);
        if *stored >= index {
            // The leader's newer snapshot was installed meanwhile.
            let _ = fs::remove_file(&temporary);
            return Ok(false);
        }
        rename_durably(&self.dir, &temporary, SNAPSHOT_FILE)?;
        *stored = index;
        // What a snapshot costs, for `raft-kv bench`'s grow workload
        // (docs/performance.md).
        info!(
            "snapshot file written: {} bytes in {:.1} ms",
            header.len() + snapshot.data.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(true)
    }
}

/// Create `dir` and any missing parents, and make their names durable.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut path = dir;
    while !path.as_os_str().is_empty() && !path.exists() {
        missing.push(path);
        match path.parent() {
            Some(parent) => path = parent,
            None => break,
        }
    }
    fs::create_dir_all(dir).map_err(on("creating directory", dir))?;
    for created in missing.into_iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

/// `log`, opened for writing at the offsets `FileStorage` keeps.
fn open_for_writing(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(on("opening", path))
}

fn read_hard_state(path: &Path) -> Result<Option<HardState>, StorageError> {
    read_if_present(path)?
        .map(|bytes| format::decode_hard_state(&bytes).map_err(corrupt(path)))
        .transpose()
}

fn read_snapshot(path: &Path) -> Result<Option<Snapshot>, StorageError> {
    read_if_present(path)?
        .map(|bytes| format::decode_snapshot(bytes).map_err(corrupt(path)))
        .transpose()
}

/// Take the dir's lock for as long as the returned file stays open.
fn lock(dir: &Path) -> Result<File, StorageError> {
    let lock_file = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_file)
        .map_err(StorageError::io(format!("opening {}", lock_file.display())))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => Err(StorageError::Locked {
            dir: dir.to_path_buf(),
            lock_file,
        }),
        Err(TryLockError::Error(e)) => {
            Err(StorageError::io(format!("locking {}", lock_file.display()))(e))
        }
    }
}

/// Delete what a crash left of an atomic replacement: the file it was to
/// replace is still whole, so the temporary one is of no use.
fn remove_temporary_files(dir: &Path) -> Result<(), StorageError> {
    let segments_being_written = fs::read_dir(dir)
        .map_err(StorageError::io(format!("listing {}", dir.display())))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| segments::is_temporary(name));
    let names: Vec<String> = TEMPORARY_FILES
        .iter()
        .map(|name| name.to_string())
        .chain(segments_being_written)
        .collect();
    for name in names {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => info!(
                "removed {}, left by a write a crash interrupted",
                path.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io(format!("removing {}", path.display()))(e)),
        }
    }
    Ok(())
}

/// The oldest log segment's header names the entry it follows, and every
/// entry through it is in the snapshot: a segment is deleted (and the
/// single-file log of version 4 was rewritten) only once a snapshot holding
/// its entries is durable. A snapshot that is missing, or ends before that
/// entry, lost state the node had applied and that no other file holds.
fn check_snapshot_reaches(
    snapshot_path: &Path,
    snapshot: Option<&Snapshot>,
    log_follows: LogIndex,
) -> Result<(), StorageError> {
    let snapshot_index = snapshot.map_or(0, |s| s.last_included_index);
    if log_follows <= snapshot_index {
        return Ok(());
    }
    let reason = match snapshot {
        None => format!(
            "missing, yet the log follows entry {log_follows}: the snapshot was lost, and with it the state through entry {log_follows}"
        ),
        Some(_) => format!(
            "ends at entry {snapshot_index}, yet the log follows entry {log_follows}: the snapshot was replaced by an older one"
        ),
    };
    Err(StorageError::Inconsistent {
        file: snapshot_path.to_path_buf(),
        reason,
    })
}

/// The log holds the entries after the snapshot (or from index 1): a first
/// entry further on (its record at `offset`) means entries were lost.
fn check_log_follows_snapshot(
    log_path: &Path,
    (first_entry, offset): (LogIndex, u64),
    snapshot: Option<&Snapshot>,
) -> Result<(), StorageError> {
    let snapshot_index = snapshot.map_or(0, |s| s.last_included_index);
    if first_entry <= snapshot_index + 1 {
        return Ok(());
    }
    let after = match snapshot {
        Some(_) => format!("the snapshot ends at {snapshot_index}"),
        None => "there is no snapshot".to_string(),
    };
    Err(StorageError::Corrupt {
        file: log_path.to_path_buf(),
        offset,
        reason: format!(
            "the first entry is {first_entry} but {after}: entries {}..{} are missing",
            snapshot_index + 1,
            first_entry - 1
        ),
    })
}

/// current_term is saved before any entry or snapshot of a newer term is
/// stored, so a hard state older than them was lost or replaced — and with
/// it perhaps a vote, which must never be cast twice (§5.2).
fn check_hard_state_is_newest(
    path: &Path,
    hard_state: Option<HardState>,
    newest_term: Term,
) -> Result<(), StorageError> {
    let current_term = hard_state.map_or(0, |h| h.current_term);
    if newest_term <= current_term {
        return Ok(());
    }
    let reason = match hard_state {
        Some(_) => format!(
            "current_term {current_term} is older than term {newest_term} in the log or snapshot"
        ),
        None => format!("missing, yet the log or snapshot holds entries of term {newest_term}"),
    };
    Err(StorageError::Inconsistent {
        file: path.to_path_buf(),
        reason: format!("{reason}: the hard state was lost or replaced"),
    })
}

/// Rewrite the single-file `log` of the versions before segments (format
/// versions 1 to 4) as one segment, leaving out a torn record, and delete
/// it. Until `log` is deleted it is the log: a crash during the upgrade
/// leaves it whole, and the next `open` starts again.
fn upgrade_legacy_log(dir: &Path, snapshot: Option<&Snapshot>) -> Result<(), StorageError> {
    let path = dir.join(LEGACY_LOG_FILE);
    let Some(bytes) = read_if_present(&path)? else {
        return Ok(());
    };
    let snapshot_index = snapshot.map_or(0, |s| s.last_included_index);
    let scanned = format::scan_log(&bytes, snapshot_index).map_err(corrupt(&path))?;
    check_snapshot_reaches(&dir.join(SNAPSHOT_FILE), snapshot, scanned.follows)?;
    if let (Some(first), Some(&offset)) = (scanned.entries.first(), scanned.offsets.first()) {
        check_log_follows_snapshot(&path, (first.index, offset), snapshot)?;
    }
    let (name, segment) = legacy_as_segment(&scanned.entries, snapshot_index)
        .map_err(StorageError::io("upgrading the log"))?;
    check_no_other_segments(dir, &name, &segment)?;
    if let Some(torn) = &scanned.torn {
        warn_torn(&path, torn, scanned.entries.last());
    }
    let section = match scanned.version {
        4 => "Upgrading from version 4",
        3 => "Upgrading from version 3",
        _ => "Upgrading from versions 1 and 2",
    };
    info!(
        "{}: a single-file log in format version {}; rewriting it as a log segment (docs/storage.md, \"{section}\")",
        path.display(),
        scanned.version
    );
    replace_atomically(dir, &name, |f| f.write_all(&segment))
        .and_then(|()| fs::remove_file(&path).map_err(on("removing", &path)))
        .and_then(|()| sync_dir(dir))
        .map_err(StorageError::io("upgrading the log"))
}

/// The entries of a single-file log as one segment: its name and bytes.
/// The file is fsynced whole before it is named, so each record can say
/// that every entry before it is durable.
fn legacy_as_segment(entries: &[Entry], snapshot_index: LogIndex) -> io::Result<(String, Vec<u8>)> {
    // Indexes start at 1 (format::decode_entry refuses 0).
    let follows = entries.first().map_or(snapshot_index, |e| e.index - 1);
    let mut bytes = format::log_header(follows).to_vec();
    for entry in entries {
        format::encode_record(entry, entry.index - 1, &mut bytes).map_err(invalid_input)?;
    }
    Ok((segments::name(follows + 1), bytes))
}

/// The one segment an upgrade interrupted after its rename leaves beside
/// `log` is the upgrade itself, byte for byte. Anything else there is not
/// ours to delete: which of the two is the log, only the operator knows.
fn check_no_other_segments(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    let found = segments::list(dir).map_err(StorageError::io("listing the log segments"))?;
    let ours = |path: &Path| path.ends_with(name) && fs::read(path).is_ok_and(|b| b == bytes);
    match found.as_slice() {
        [] => Ok(()),
        [(_, path)] if ours(path) => Ok(()),
        _ => Err(StorageError::Inconsistent {
            file: dir.to_path_buf(),
            reason: format!(
                "holds both a single-file log (`log`, from a build before log segments) and log segments that are not its upgrade ({} of them, from {}): move aside whichever is not this node's log",
                found.len(),
                found[0].1.display()
            ),
        }),
    }
}

fn warn_torn(path: &Path, torn: &Corruption, last_good: Option<&Entry>) {
    // A crash before an fsync covered the records from here on (no later
    // record says otherwise), so no RPC reply and no majority counted on
    // them (Figure 2).
    warn!(
        "{}: torn write at byte offset {} ({}); truncating it to its last complete record, entry {}",
        path.display(),
        torn.offset,
        torn.reason,
        last_good.map_or(0, |e| e.index)
    );
}

/// Create the segment that follows entry `follows`, durably (its name
/// included), and open it for appending.
fn create_segment(dir: &Path, follows: LogIndex) -> io::Result<(PathBuf, File)> {
    let name = segments::name(follows + 1);
    replace_atomically(dir, &name, |f| f.write_all(&format::log_header(follows)))?;
    let path = dir.join(name);
    let file = open_for_writing(&path)?;
    Ok((path, file))
}

/// Delete segments newest first, each deletion durable before the next, so
/// that a crash leaves the oldest ones: a log that still disagrees with the
/// snapshot, which `open` discards again (Figure 13 step 7). Left with the
/// newer ones instead, it could find a segment that seems to follow the
/// snapshot and keep entries of the history the snapshot replaced.
fn delete_newest_first<'a>(
    dir: &Path,
    paths: impl DoubleEndedIterator<Item = &'a Path>,
) -> io::Result<()> {
    for path in paths.rev() {
        fs::remove_file(path).map_err(on("removing", path))?;
        sync_dir(dir)?;
    }
    Ok(())
}

/// Replace every segment with one empty segment that follows the snapshot
/// through `snapshot_index` (Figure 13 step 7: discard the entire log). The
/// oldest goes last, after the new one exists: a dir is never left without
/// a segment, which `open` would take for a lost log.
fn discard_segments(
    dir: &Path,
    old: &[PathBuf],
    snapshot_index: LogIndex,
) -> io::Result<(PathBuf, File)> {
    delete_newest_first(dir, old.iter().skip(1).map(PathBuf::as_path))?;
    let (path, file) = create_segment(dir, snapshot_index)?;
    if let Some(oldest) = old.first().filter(|&oldest| *oldest != path) {
        fs::remove_file(oldest).map_err(on("removing", oldest))?;
        sync_dir(dir)?;
    }
    Ok((path, file))
}

/// Bring the segments into agreement with the snapshot through `index` of
/// `term`, finishing what a crash interrupted (docs/storage.md, Recovery).
fn reconcile(
    dir: &Path,
    mut found: Vec<ScannedSegment>,
    (index, term): (LogIndex, Term),
) -> Result<Vec<ScannedSegment>, StorageError> {
    let stored_term = found
        .iter()
        .flat_map(|s| &s.scanned.entries)
        .find(|e| e.index == index)
        .map(|e| e.term);
    let agrees = match stored_term {
        Some(stored) => stored == term,
        // The segment that held it was deleted by a compaction.
        None => found.iter().any(|s| s.follows() == index),
    };
    if agrees {
        return remove_covered(dir, found, index);
    }
    if stored_term.is_none() {
        // Without entry `index`, only a log that ends before it may go: a
        // gap is a lost segment, not a snapshot install to finish.
        segments::check_chain(&found)?;
    }
    // A crash while installing a snapshot from the leader, before the old
    // log was discarded: the log does not hold the snapshot's last entry,
    // so it is not the history the snapshot continues (Figure 13 steps 6–7).
    info!(
        "{}: discarding log entries {}..={}, which do not agree with the snapshot through {index} (snapshot install interrupted by a crash)",
        dir.display(),
        found.first().map_or(0, |s| s.follows() + 1),
        found.last().map_or(0, ScannedSegment::last_index),
    );
    let old: Vec<PathBuf> = found.drain(..).map(|s| s.path).collect();
    let (path, _) =
        discard_segments(dir, &old, index).map_err(StorageError::io("discarding the log"))?;
    Ok(vec![ScannedSegment::empty(path, index)])
}

/// Delete the oldest segments while the snapshot through `index` holds
/// every entry of the next one's predecessor: what a compaction deleted
/// before a crash made it forget (it does not wait for the deletions to be
/// durable).
fn remove_covered(
    dir: &Path,
    mut found: Vec<ScannedSegment>,
    index: LogIndex,
) -> Result<Vec<ScannedSegment>, StorageError> {
    let covered = found
        .windows(2)
        .take_while(|w| w[0].last_index() <= index && w[1].follows() <= index)
        .count();
    if covered == 0 {
        return Ok(found);
    }
    info!(
        "{}: deleting {covered} log segments the snapshot through {index} covers (compaction interrupted by a crash)",
        dir.display()
    );
    for segment in found.drain(..covered) {
        fs::remove_file(&segment.path).map_err(StorageError::io(format!(
            "removing {}",
            segment.path.display()
        )))?;
    }
    sync_dir(dir).map_err(StorageError::io("compacting the log"))?;
    Ok(found)
}

impl FileStorage {
    /// Open (creating on first boot) the data dir `dir`, lock it, and read
    /// everything it holds for [`Storage::recover`]. A torn write (damage in
    /// log records no fsync had covered) is cut off; any other damage is an
    /// error naming the file and offset.
    pub fn open(dir: &Path) -> Result<FileStorage, StorageError> {
        create_dir_durably(dir).map_err(StorageError::io("preparing the data dir"))?;
        let lock = lock(dir)?;
        remove_temporary_files(dir)?;

        let hard_state_path = dir.join(HARD_STATE_FILE);
        let hard_state = read_hard_state(&hard_state_path)?;
        let snapshot = read_snapshot(&dir.join(SNAPSHOT_FILE))?;
        upgrade_legacy_log(dir, snapshot.as_ref())?;
        let found = Self::read_segments(dir, hard_state.is_some() || snapshot.is_some())?;
        // The oldest segment may still hold entries the snapshot covers, but
        // never begin after it: a compaction deletes a segment only once
        // the snapshot is durable.
        check_snapshot_reaches(
            &dir.join(SNAPSHOT_FILE),
            snapshot.as_ref(),
            found[0].follows(),
        )?;
        let snapshot_point = snapshot
            .as_ref()
            .map(|s| (s.last_included_index, s.last_included_term));
        let found = match snapshot_point {
            Some(point) => reconcile(dir, found, point)?,
            None => found,
        };
        segments::check_chain(&found)?;
        let newest_term = found
            .iter()
            .filter_map(|s| s.scanned.entries.last())
            .map(|e| e.term)
            .chain(snapshot_point.map(|(_, term)| term))
            .max()
            .unwrap_or(0);
        check_hard_state_is_newest(&hard_state_path, hard_state, newest_term)?;
        let snapshot_index = snapshot_point.map_or(0, |(index, _)| index);
        let (mut storage, entries) = Self::assemble(dir, lock, found, snapshot_index)?;
        storage.hard_state = hard_state.unwrap_or_default();
        storage.recovered = Some(Recovered {
            hard_state: storage.hard_state,
            snapshot,
            entries,
        });
        Ok(storage)
    }

    /// Every segment in `dir`; on a first boot, a new empty one.
    fn read_segments(dir: &Path, holds_state: bool) -> Result<Vec<ScannedSegment>, StorageError> {
        let found = segments::read_all(dir)?;
        if !found.is_empty() {
            return Ok(found);
        }
        if holds_state {
            // `open` creates a segment before anything else can be saved,
            // so the log was deleted, and with it entries this server may
            // have acknowledged (Figure 2: log[] is persistent state).
            return Err(StorageError::Inconsistent {
                file: dir.to_path_buf(),
                reason: "holds no log segment (log-<first index>), yet the hard state or snapshot beside it exists: the log was lost".into(),
            });
        }
        let (path, _) = create_segment(dir, 0).map_err(StorageError::io("creating the log"))?;
        Ok(vec![ScannedSegment::empty(path, 0)])
    }

    /// The storage over `found`, reconciled with the snapshot through
    /// `snapshot_index`, its last segment made ready for appends; and the
    /// entries after the snapshot.
    fn assemble(
        dir: &Path,
        lock: File,
        found: Vec<ScannedSegment>,
        snapshot_index: LogIndex,
    ) -> Result<(FileStorage, Vec<Entry>), StorageError> {
        let last = found
            .last()
            .expect("read_segments returns at least one segment");
        let log = open_for_writing(&last.path).map_err(StorageError::io("opening the log"))?;
        if let Some(torn) = &last.scanned.torn {
            warn_torn(&last.path, torn, last.scanned.entries.last());
            log.set_len(last.scanned.end)
                .map_err(StorageError::io(format!(
                    "truncating {}",
                    last.path.display()
                )))?;
        }
        // A process that crashed after an append but before its fsync leaves
        // the records in the page cache, where the scan read them; the core
        // takes every entry `recover` returns as durable (Figure 2), so make
        // them so. This also makes a truncation above durable.
        log.sync_data()
            .map_err(StorageError::io(format!("syncing {}", last.path.display())))?;
        let log_len = log
            .metadata()
            .map_err(StorageError::io(format!("reading {}", last.path.display())))?
            .len();
        let log_end = last.scanned.end;
        let mut records = Vec::new();
        let mut entries = Vec::new();
        let mut segment_list = Vec::with_capacity(found.len());
        for segment in found {
            let follows = segment.follows();
            let scanned = segment.scanned;
            for (entry, offset) in scanned.entries.into_iter().zip(scanned.offsets) {
                if entry.index > snapshot_index {
                    records.push(Record {
                        offset,
                        term: entry.term,
                    });
                    entries.push(entry);
                }
            }
            segment_list.push(Segment {
                path: segment.path,
                follows,
            });
        }
        let first_index = snapshot_index + 1;
        let storage = FileStorage {
            dir: dir.to_path_buf(),
            _lock: lock,
            segments: segment_list,
            log,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            // The sync above made every record durable.
            durable_index: snapshot_index + records.len() as u64,
            records,
            first_index,
            log_end,
            log_len,
            hard_state: HardState::default(),
            snapshot_index,
            stored_snapshot: Arc::new(Mutex::new(snapshot_index)),
            unsynced: false,
            truncated_unsynced: false,
            recovered: None,
            deleter: Deleter::spawn().map_err(StorageError::io("starting the segment deleter"))?,
        };
        Ok((storage, entries))
    }

    /// A segment is full at `bytes` (for tests, which need several
    /// segments without writing megabytes; `DEFAULT_SEGMENT_BYTES` otherwise).
    pub fn with_segment_bytes(mut self, bytes: u64) -> FileStorage {
        self.segment_bytes = bytes.max(format::LOG_HEADER_LEN + 1);
        self
    }
    /// What the file `cluster` holds, if it exists (the server decides
    /// what it means: src/server/identity.rs).
    pub fn cluster_file(&self) -> Result<Option<Vec<u8>>, StorageError> {
        read_if_present(&self.dir.join(CLUSTER_FILE))
    }

    /// Write the file `cluster`, atomically and durably.
    pub fn save_cluster_file(&self, bytes: &[u8]) -> Result<(), StorageError> {
        replace_atomically(&self.dir, CLUSTER_FILE, |f| f.write_all(bytes))
            .map_err(StorageError::io("saving the cluster file"))
    }

    /// The data dir this storage holds locked.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn last_index(&self) -> LogIndex {
        self.first_index + self.records.len() as u64 - 1
    }

    /// Seal the last segment — cut its spare space off and sync it, every
    /// record in it durable — and start the next, which follows the last
    /// entry. Recovery counts on it: damage in a segment a later one follows
    /// is corruption, never a torn write.
    fn roll(&mut self) -> io::Result<()> {
        let sealed = &self.segments[self.segments.len() - 1].path;
        self.log
            .set_len(self.log_end)
            .map_err(on("sealing", sealed))?;
        self.log.sync_data().map_err(on("syncing", sealed))?;
        self.durable_index = self.last_index();
        self.unsynced = false;
        self.truncated_unsynced = false;
        let follows = self.last_index();
        let (path, file) = create_segment(&self.dir, follows)?;
        self.segments.push(Segment { path, follows });
        self.log = file;
        self.log_end = format::LOG_HEADER_LEN;
        self.log_len = format::LOG_HEADER_LEN;
        self.delete_covered_segments()
    }

    /// The position in `segments` of the one holding entry `index`.
    fn segment_of(&self, index: LogIndex) -> usize {
        self.segments
            .partition_point(|s| s.follows < index)
            .saturating_sub(1)
    }

    /// Delete the sealed segments the snapshot covers whole (§7), on the
    /// deleter thread. Not made durable: a segment a crash brings back is
    /// covered still, and `open` deletes it again.
    fn delete_covered_segments(&mut self) -> io::Result<()> {
        let covered = self
            .segments
            .windows(2)
            .take_while(|w| w[1].follows <= self.snapshot_index)
            .count();
        for segment in self.segments.drain(..covered) {
            self.deleter.delete(segment.path);
        }
        Ok(())
    }

    /// Replace the log with an empty segment that follows the snapshot
    /// through `snapshot_index` (Figure 13 step 7).
    fn discard_log(&mut self, snapshot_index: LogIndex) -> io::Result<()> {
        let old: Vec<PathBuf> = self.segments.drain(..).map(|s| s.path).collect();
        let (path, file) = discard_segments(&self.dir, &old, snapshot_index)?;
        self.segments.push(Segment {
            path,
            follows: snapshot_index,
        });
        self.log = file;
        self.log_end = format::LOG_HEADER_LEN;
        self.log_len = format::LOG_HEADER_LEN;
        self.records.clear();
        self.first_index = snapshot_index + 1;
        // The entries through `snapshot_index` are on disk, in the snapshot.
        self.durable_index = snapshot_index;
        self.unsynced = false;
        self.truncated_unsynced = false;
        Ok(())
    }

    /// Refuse what would leave the dir in a state `open` refuses.
    fn check_append(&self, entries: &[Entry]) -> io::Result<()> {
        let mut previous = (self.last_index(), self.records.last().map(|r| r.term));
        for entry in entries {
            let (previous_index, previous_term) = previous;
            if !format::leaves_room_after(entry.index) {
                return Err(invalid_input(format!(
                    "cannot append entry {}: its index {}",
                    entry.index,
                    format::NO_ROOM
                )));
            }
            if entry.index != previous_index + 1 {
                return Err(invalid_input(format!(
                    "cannot append entry {}: the log ends at entry {previous_index}",
                    entry.index
                )));
            }
            if let Some(previous_term) = previous_term {
                format::check_follows(entry.index, entry.term, previous_index, previous_term)
                    .map_err(|reason| invalid_input(format!("cannot append: {reason}")))?;
            }
            if entry.term > self.hard_state.current_term {
                return Err(invalid_input(format!(
                    "cannot append entry {} of term {}: current_term is {} (save the hard state first, Figure 2)",
                    entry.index, entry.term, self.hard_state.current_term
                )));
            }
            previous = (entry.index, Some(entry.term));
        }
        Ok(())
    }

    /// The second step of `save_snapshot` and `compact`: drop the entries
    /// through `index` (all of them unless `keep_suffix`), and the segments
    /// that held only those.
    fn drop_covered_entries(&mut self, index: LogIndex, keep_suffix: bool) -> io::Result<()> {
        if !keep_suffix || index > self.last_index() {
            // Figure 13 step 7; also when there is no suffix to keep, for
            // the next entry must follow the snapshot in the last segment.
            return self.discard_log(index);
        }
        let covered = (index + 1).saturating_sub(self.first_index) as usize;
        self.records.drain(..covered.min(self.records.len()));
        self.first_index = self.first_index.max(index + 1);
        // The entries through `index` are on disk in the snapshot.
        self.durable_index = self.durable_index.max(index);
        self.delete_covered_segments()
    }
}

impl Storage for FileStorage {
    fn recover(&mut self) -> io::Result<Recovered> {
        if let Some(recovered) = self.recovered.take() {
            return Ok(recovered);
        }
        // Asked again: the first call handed over its copy, so read the files.
        let snapshot = read_snapshot(&self.dir.join(SNAPSHOT_FILE))?;
        let entries = segments::read_all(&self.dir)?
            .into_iter()
            .flat_map(|s| s.scanned.entries)
            .filter(|e| e.index > self.snapshot_index)
            .collect();
        Ok(Recovered {
            hard_state: self.hard_state,
            snapshot,
            entries,
        })
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> io::Result<()> {
        let old = self.hard_state;
        if hard_state.voted_for == Some(0) {
            return Err(invalid_input(
                "cannot store a vote for node 0: node ids start at 1 (0 stands for none)".into(),
            ));
        }
        if hard_state.current_term < old.current_term {
            return Err(invalid_input(format!(
                "current_term cannot go back from {} to {} (Figure 2: it increases monotonically)",
                old.current_term, hard_state.current_term
            )));
        }
        if hard_state.current_term == old.current_term
            && old.voted_for.is_some()
            && hard_state.voted_for != old.voted_for
        {
            return Err(invalid_input(format!(
                "the vote of term {} went to {:?}; it cannot change to {:?} (§5.2: one vote per term)",
                old.current_term, old.voted_for, hard_state.voted_for
            )));
        }
        if hard_state == old {
            return Ok(());
        }
        let bytes = format::encode_hard_state(hard_state);
        replace_atomically(&self.dir, HARD_STATE_FILE, |f| f.write_all(&bytes))?;
        self.hard_state = hard_state;
        Ok(())
    }

    fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.check_append(entries)?;
        if self.truncated_unsynced {
            // Writing over bytes whose removal is not yet durable could, after
            // a crash, splice old and new records into a log that reads as
            // corrupt. Make the truncation durable first (and durable_index
            // with it, before the records below carry it).
            self.sync()?;
        }
        if self.log_end >= self.segment_bytes {
            self.roll()?;
        }
        let mut buffer = Vec::new();
        let mut records = Vec::with_capacity(entries.len());
        for entry in entries {
            let offset = self.log_end + buffer.len() as u64;
            format::encode_record(entry, self.durable_index, &mut buffer).map_err(invalid_input)?;
            records.push(Record {
                offset,
                term: entry.term,
            });
        }
        let new_end = self.log_end + buffer.len() as u64;
        let path = &self.segments[self.segments.len() - 1].path;
        if new_end > self.log_len {
            let new_len = new_end.next_multiple_of(LOG_GROWTH_BYTES);
            self.log.set_len(new_len).map_err(on("growing", path))?;
            self.log_len = new_len;
        }
        if let Err(error) = self.log.write_all_at(&buffer, self.log_end) {
            // Best effort: leave no partial record for the next append to
            // follow; recovery would cut it off as a torn write anyway.
            if self.log.set_len(self.log_end).is_ok() {
                self.log_len = self.log_end;
            }
            return Err(on("appending to", path)(error));
        }
        self.log_end = new_end;
        self.records.extend(records);
        self.unsynced = true;
        Ok(())
    }

    fn truncate_from(&mut self, index: LogIndex) -> io::Result<()> {
        if index > self.last_index() {
            return Ok(());
        }
        // Entries the snapshot holds stay: they are committed (§5.4).
        let index = index.max(self.first_index);
        let holder = self.segment_of(index);
        if holder + 1 < self.segments.len() {
            // The later segments go for good before the holder is cut:
            // brought back by a crash, one would follow entries no longer
            // there.
            let later: Vec<PathBuf> = self.segments.drain(holder + 1..).map(|s| s.path).collect();
            delete_newest_first(&self.dir, later.iter().map(PathBuf::as_path))?;
            self.log = open_for_writing(&self.segments[holder].path)?;
        }
        let keep = (index - self.first_index) as usize;
        let new_end = self.records.get(keep).map_or(self.log_end, |r| r.offset);
        self.log
            .set_len(new_end)
            .map_err(on("truncating", &self.segments[holder].path))?;
        self.records.truncate(keep);
        self.log_end = new_end;
        self.log_len = new_end;
        self.durable_index = self.durable_index.min(index.saturating_sub(1));
        self.unsynced = true;
        self.truncated_unsynced = true;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        // fdatasync covers the file's length too, so truncations are included.
        self.log
            .sync_data()
            .map_err(on("syncing", &self.segments[self.segments.len() - 1].path))?;
        self.durable_index = self.last_index();
        self.unsynced = false;
        self.truncated_unsynced = false;
        Ok(())
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot, keep_suffix: bool) -> io::Result<()> {
        let index = snapshot.last_included_index;
        check_snapshot_index(index)?;
        let stored_snapshot = Arc::clone(&self.stored_snapshot);
        let mut stored = lock_index(&stored_snapshot);
        if index < *stored {
            return Err(invalid_input(format!(
                "snapshot through {index} is older than the stored one through {}",
                *stored
            )));
        }
        if snapshot.last_included_term > self.hard_state.current_term {
            return Err(invalid_input(format!(
                "snapshot of term {} is newer than current_term {} (save the hard state first)",
                snapshot.last_included_term, self.hard_state.current_term
            )));
        }
        let header = format::encode_snapshot_header(snapshot);
        let started = Instant::now();
        replace_atomically(&self.dir, SNAPSHOT_FILE, |f| {
            f.write_all(&header)?;
            f.write_all(&snapshot.data)?;
            f.write_all(&format::encode_snapshot_trailer(snapshot))
        })?;
        *stored = index;
        drop(stored);
        let written = started.elapsed();
        self.snapshot_index = index;
        // Only now that the snapshot is durable may the entries it covers go
        // (§7); a crash before the rewrite leaves both, and `open` finishes it.
        self.drop_covered_entries(index, keep_suffix)?;
        // What a snapshot costs the node's event loop, for `raft-kv bench`'s
        // grow workload (docs/performance.md).
        info!(
            "snapshot file written: {} bytes in {:.1} ms, log compacted in {:.1} ms",
            header.len() + snapshot.data.len(),
            written.as_secs_f64() * 1e3,
            (started.elapsed() - written).as_secs_f64() * 1e3
        );
        Ok(())
    }

    fn snapshot_writer(&self) -> Box<dyn SnapshotWriter> {
        Box::new(FileSnapshotWriter {
            dir: self.dir.clone(),
            stored_snapshot: Arc::clone(&self.stored_snapshot),
        })
    }

    fn compact(&mut self, index: LogIndex) -> io::Result<()> {
        let stored = *lock_index(&self.stored_snapshot);
        if index > stored {
            return Err(invalid_input(format!(
                "cannot compact the log through {index}: the stored snapshot ends at {stored}"
            )));
        }
        if index <= self.snapshot_index {
            return Ok(());
        }
        let started = Instant::now();
        self.snapshot_index = index;
        // The snapshot is durable (the writer's rename was fsynced), so the
        // entries it covers may go (§7).
        self.drop_covered_entries(index, true)?;
        info!(
            "log compacted through {index} in {:.1} ms ({} segments left)",
            started.elapsed().as_secs_f64() * 1e3,
            self.segments.len()
        );
        Ok(())
    }
}
