//! File-backed stable storage for one node: the [`Storage`] the core persists
//! through, kept in a node's `--data-dir` (docs/storage.md).
//!
//! Figure 2 asks that current_term, voted_for and log[] be "updated on stable
//! storage before responding to RPCs". Three files hold them:
//!
//! - `hardstate`: current_term and voted_for, replaced atomically.
//! - `snapshot`: the latest snapshot (§7), replaced atomically.
//! - `log`: the entries after the snapshot, appended record by record.
//!
//! `LOCK` keeps two servers from sharing one dir.

mod error;
mod format;

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use log::{info, warn};

pub use error::StorageError;
use format::Corruption;

use crate::raft::{Entry, HardState, LogIndex, Recovered, Snapshot, SnapshotWriter, Storage, Term};

const LOCK_FILE: &str = "LOCK";
const HARD_STATE_FILE: &str = "hardstate";
const SNAPSHOT_FILE: &str = "snapshot";
const LOG_FILE: &str = "log";
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
/// `log` grows in steps of this many bytes, ahead of the records written into
/// it. An fsync after an append that also grew the file must write the
/// file's new length too; within the space already there it need not, which
/// makes the fsync of a typical append about a third cheaper (measured in
/// docs/performance.md). The space reads as zeros: the clean end of the log.
const LOG_GROWTH_BYTES: u64 = 4 << 20;

/// Where a stored entry's record starts in `log`, and the entry's term.
#[derive(Clone, Copy, Debug)]
struct Record {
    offset: u64,
    term: Term,
}

/// The [`Storage`] of a node, on files in one directory.
pub struct FileStorage {
    dir: PathBuf,
    /// Held open for the life of this value: it carries the lock on `LOCK`.
    _lock: File,
    log_path: PathBuf,
    /// `log`, opened for writing; records go at `log_end`.
    log: File,
    /// The stored entries: `records[i]` holds entry `first_index + i`.
    records: Vec<Record>,
    /// The index the first stored entry has (or the next append must have):
    /// one past the snapshot.
    first_index: LogIndex,
    /// Where the records in `log` end.
    log_end: u64,
    /// The length of `log`: `log_end` and zeros after it.
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
    /// The snapshot `log`'s header says the log follows: `snapshot_index`,
    /// but for a moment in `save_snapshot`, between the snapshot's write
    /// and the log's.
    log_follows: LogIndex,
    /// `log` was written or truncated since the last fsync.
    unsynced: bool,
    /// `log` was truncated since the last fsync.
    truncated_unsynced: bool,
    /// What `open` read, handed over by the first `recover`.
    recovered: Option<Recovered>,
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
            Ok(())
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

fn read_log(
    path: &Path,
    snapshot_index: LogIndex,
) -> Result<Option<format::ScannedLog>, StorageError> {
    read_if_present(path)?
        .map(|bytes| format::scan_log(&bytes, snapshot_index).map_err(corrupt(path)))
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
    for name in TEMPORARY_FILES {
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

/// The log's header names the snapshot the log was written to follow, and
/// `save_snapshot` writes it only once that snapshot is durable: a snapshot
/// that is missing, or ends before it, lost state the node had applied and
/// that no other file holds (a log compacted after it may hold nothing
/// else but its header).
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
            "missing, yet the log follows a snapshot through entry {log_follows}: the snapshot was lost, and with it the state through entry {log_follows}"
        ),
        Some(_) => format!(
            "ends at entry {snapshot_index}, yet the log follows a snapshot through entry {log_follows}: the snapshot was replaced by an older one"
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

/// Rewrite the older log `scanned` was read from in the current format,
/// leaving out a torn record, with a header naming the snapshot beside it
/// (through `snapshot_index`; an older log did not say which it follows).
/// The new file is fsynced whole before it replaces the old one, so each
/// of its records can say that every entry before it is durable.
fn upgrade_log(
    dir: &Path,
    scanned: &mut format::ScannedLog,
    snapshot_index: LogIndex,
) -> io::Result<()> {
    let mut bytes = format::log_header(snapshot_index).to_vec();
    let mut offsets = Vec::with_capacity(scanned.entries.len());
    for entry in &scanned.entries {
        offsets.push(bytes.len() as u64);
        format::encode_record(entry, entry.index.saturating_sub(1), &mut bytes)
            .map_err(invalid_input)?;
    }
    replace_atomically(dir, LOG_FILE, |f| f.write_all(&bytes))?;
    scanned.version = format::LOG_FORMAT_VERSION;
    scanned.follows_snapshot = snapshot_index;
    scanned.offsets = offsets;
    scanned.end = bytes.len() as u64;
    scanned.torn = None;
    Ok(())
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
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let snapshot = read_snapshot(&snapshot_path)?;
        let (snapshot_index, snapshot_term) = snapshot
            .as_ref()
            .map_or((0, 0), |s| (s.last_included_index, s.last_included_term));
        let log_path = dir.join(LOG_FILE);
        let mut scanned = match read_log(&log_path, snapshot_index)? {
            Some(scanned) => scanned,
            None if hard_state.is_some() || snapshot.is_some() => {
                // `open` creates the log before anything else can be saved,
                // so it was deleted, and with it entries this server may have
                // acknowledged (Figure 2: log[] is persistent state).
                return Err(StorageError::Inconsistent {
                    file: log_path,
                    reason:
                        "missing, yet the hard state or snapshot beside it exists: the log was lost"
                            .into(),
                });
            }
            None => {
                // First boot: no snapshot for the log to follow.
                replace_atomically(dir, LOG_FILE, |f| f.write_all(&format::log_header(0)))
                    .map_err(StorageError::io("creating the log"))?;
                format::ScannedLog {
                    version: format::LOG_FORMAT_VERSION,
                    end: format::LOG_HEADER_LEN,
                    ..Default::default()
                }
            }
        };
        // The snapshot cannot end at u64::MAX (format::decode_snapshot).
        let first_index = snapshot_index + 1;
        check_snapshot_reaches(&snapshot_path, snapshot.as_ref(), scanned.follows_snapshot)?;
        if let (Some(first), Some(&offset)) = (scanned.entries.first(), scanned.offsets.first()) {
            check_log_follows_snapshot(&log_path, (first.index, offset), snapshot.as_ref())?;
        }
        let newest_term = scanned
            .entries
            .last()
            .map_or(0, |e| e.term)
            .max(snapshot_term);
        check_hard_state_is_newest(&hard_state_path, hard_state, newest_term)?;
        let hard_state = hard_state.unwrap_or_default();

        if let Some(torn) = &scanned.torn {
            // A crash before an fsync covered the records from here on (no
            // later record says otherwise), so no RPC reply and no majority
            // counted on them (Figure 2).
            warn!(
                "{}: torn write at byte offset {} ({}); truncating the log to its last complete record at entry {}",
                log_path.display(),
                torn.offset,
                torn.reason,
                scanned.entries.last().map_or(0, |e| e.index)
            );
        }
        if scanned.version < format::LOG_FORMAT_VERSION {
            let section = match scanned.version {
                3 => "Upgrading from version 3",
                _ => "Upgrading from versions 1 and 2",
            };
            info!(
                "{}: format version {}; rewriting it in version {} (docs/storage.md, \"{section}\")",
                log_path.display(),
                scanned.version,
                format::LOG_FORMAT_VERSION
            );
            upgrade_log(dir, &mut scanned, snapshot_index)
                .map_err(StorageError::io("upgrading the log"))?;
        }
        let log = open_for_writing(&log_path).map_err(StorageError::io("opening the log"))?;
        if scanned.torn.is_some() {
            log.set_len(scanned.end).map_err(StorageError::io(format!(
                "truncating {}",
                log_path.display()
            )))?;
        }
        // A process that crashed after an append but before its fsync leaves
        // the records in the page cache, where the scan read them; the core
        // takes every entry `recover` returns as durable (Figure 2), so make
        // them so. This also makes a truncation above durable.
        log.sync_data()
            .map_err(StorageError::io(format!("syncing {}", log_path.display())))?;

        let log_len = log
            .metadata()
            .map_err(StorageError::io(format!("reading {}", log_path.display())))?
            .len();
        let mut storage = FileStorage {
            dir: dir.to_path_buf(),
            _lock: lock,
            log_path,
            log,
            records: scanned
                .offsets
                .iter()
                .zip(&scanned.entries)
                .map(|(&offset, e)| Record {
                    offset,
                    term: e.term,
                })
                .collect(),
            first_index: scanned.entries.first().map_or(first_index, |e| e.index),
            log_end: scanned.end,
            log_len,
            // The sync above made every record durable.
            durable_index: scanned.entries.last().map_or(first_index - 1, |e| e.index),
            hard_state,
            snapshot_index,
            stored_snapshot: Arc::new(Mutex::new(snapshot_index)),
            log_follows: scanned.follows_snapshot,
            unsynced: false,
            truncated_unsynced: false,
            recovered: None,
        };
        let mut entries = scanned.entries;
        let agrees_with_snapshot = match entries.iter().find(|e| e.index == snapshot_index) {
            Some(entry) => entry.term == snapshot_term,
            None => entries.first().is_none_or(|e| e.index > snapshot_index),
        };
        if snapshot.is_some() && !agrees_with_snapshot {
            // A crash while installing a snapshot from the leader, before the
            // old log was replaced: the log does not hold the snapshot's last
            // entry, so it is not the history the snapshot continues (Figure
            // 13 steps 6–7). Finish the job: discard it.
            info!(
                "{}: discarding entries {}..={}, which do not agree with the snapshot through {snapshot_index} (snapshot install interrupted by a crash)",
                storage.log_path.display(),
                storage.first_index,
                storage.last_index()
            );
            storage
                .discard_log(first_index)
                .map_err(StorageError::io("discarding the log"))?;
            entries.clear();
        } else if storage.first_index < first_index {
            // A crash between the two steps of save_snapshot: the snapshot is
            // durable, the log still holds what it covers. Finish the job.
            info!(
                "{}: dropping entries {}..={snapshot_index}, covered by the snapshot (compaction interrupted by a crash)",
                storage.log_path.display(),
                storage.first_index
            );
            storage
                .rewrite_log(first_index)
                .map_err(StorageError::io("compacting the log"))?;
            entries.retain(|e| e.index >= first_index);
        } else if storage.log_follows < snapshot_index {
            // The same crash when the log held nothing the snapshot covers:
            // only its header is behind, naming an older snapshot (or none).
            info!(
                "{}: the header names the snapshot through {}, not the one through {snapshot_index} (snapshot interrupted by a crash); rewriting it",
                storage.log_path.display(),
                storage.log_follows
            );
            storage
                .rewrite_log(first_index)
                .map_err(StorageError::io("rewriting the log's header"))?;
        }
        storage.recovered = Some(Recovered {
            hard_state,
            snapshot,
            entries,
        });
        Ok(storage)
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

    /// Replace `log` with one holding only the entries from `keep_from` on,
    /// its header naming the snapshot through `snapshot_index`.
    fn rewrite_log(&mut self, keep_from: LogIndex) -> io::Result<()> {
        let keep = (keep_from.saturating_sub(self.first_index) as usize).min(self.records.len());
        let copy_from = self.records.get(keep).map_or(self.log_end, |r| r.offset);
        let mut source = File::open(&self.log_path).map_err(on("opening", &self.log_path))?;
        source
            .seek(SeekFrom::Start(copy_from))
            .map_err(on("seeking in", &self.log_path))?;
        let mut kept = source.take(self.log_end - copy_from);
        // The snapshot through `snapshot_index` is durable (save_snapshot
        // writes it first), so the header may name it.
        let header = format::log_header(self.snapshot_index);
        replace_atomically(&self.dir, LOG_FILE, |tmp| {
            tmp.write_all(&header)?;
            io::copy(&mut kept, tmp)?;
            Ok(())
        })?;
        self.log_follows = self.snapshot_index;
        self.log = open_for_writing(&self.log_path)?;
        let shift = copy_from - format::LOG_HEADER_LEN;
        self.records.drain(..keep);
        for record in &mut self.records {
            record.offset -= shift;
        }
        self.log_end -= shift;
        self.log_len = self.log_end;
        self.first_index = keep_from.max(self.first_index);
        // The new file was fsynced whole before the rename.
        self.durable_index = self.last_index();
        self.unsynced = false;
        self.truncated_unsynced = false;
        Ok(())
    }

    /// Replace `log` with an empty one, to be continued at `first_index`.
    fn discard_log(&mut self, first_index: LogIndex) -> io::Result<()> {
        self.rewrite_log(self.last_index() + 1)?;
        self.first_index = first_index;
        // The discarded entries are no longer on disk, whatever rewrite_log
        // counted; the ones before `first_index` are, in the snapshot.
        self.durable_index = self.last_index();
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

    /// The second step of `save_snapshot`: drop the entries through `index`
    /// from `log` (all of them unless `keep_suffix`), and name the snapshot
    /// in its header.
    fn drop_covered_entries(&mut self, index: LogIndex, keep_suffix: bool) -> io::Result<()> {
        if !keep_suffix {
            // Figure 13 step 7, in the same rewrite: the old log, entry
            // `index` included, stays whole until the new one replaces it.
            return self.discard_log(index + 1);
        }
        let covers_entries = !self.records.is_empty() && self.first_index <= index;
        if covers_entries || self.log_follows != index {
            // With no entries to drop the header alone is rewritten: without
            // it, losing the snapshot would go unnoticed (docs/storage.md).
            return self.rewrite_log(index + 1);
        }
        // The same snapshot index again: nothing in the log changes.
        self.first_index = self.first_index.max(index + 1);
        // The entries through `index` are on disk in the snapshot.
        self.durable_index = self.durable_index.max(index);
        Ok(())
    }
}

impl Storage for FileStorage {
    fn recover(&mut self) -> io::Result<Recovered> {
        if let Some(recovered) = self.recovered.take() {
            return Ok(recovered);
        }
        // Asked again: the first call handed over its copy, so read the files.
        let snapshot = read_snapshot(&self.dir.join(SNAPSHOT_FILE))?;
        let entries = read_log(&self.log_path, self.snapshot_index)?
            .unwrap_or_default()
            .entries;
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
        if new_end > self.log_len {
            let new_len = new_end.next_multiple_of(LOG_GROWTH_BYTES);
            self.log
                .set_len(new_len)
                .map_err(on("growing", &self.log_path))?;
            self.log_len = new_len;
        }
        if let Err(error) = self.log.write_all_at(&buffer, self.log_end) {
            // Best effort: leave no partial record for the next append to
            // follow; recovery would cut it off as a torn write anyway.
            if self.log.set_len(self.log_end).is_ok() {
                self.log_len = self.log_end;
            }
            return Err(on("appending to", &self.log_path)(error));
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
        let keep = index.saturating_sub(self.first_index) as usize;
        let new_end = self.records.get(keep).map_or(self.log_end, |r| r.offset);
        self.log
            .set_len(new_end)
            .map_err(on("truncating", &self.log_path))?;
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
            .map_err(on("syncing", &self.log_path))?;
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
            f.write_all(&snapshot.data)
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
            "snapshot file written: {} bytes in {:.1} ms, log rewritten in {:.1} ms",
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
            "log compacted through {index}: rewritten in {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(())
    }
}
