//! FileStorage against its promises (docs/storage.md): what was made durable
//! comes back after a reopen, a torn last record is cut off, and any other
//! damage is refused with the file and byte offset named.

use std::fs;
use std::io::ErrorKind;
use std::ops::Range;
use std::path::{Path, PathBuf};

use prost::Message as _;
use raft_kv::kv;
use raft_kv::proto::peer::LogEntry;
use raft_kv::raft::{Command, Entry, HardState, LogIndex, Recovered, Snapshot, Storage, Term};
use raft_kv::storage::FileStorage;
use tempfile::TempDir;

fn set(index: LogIndex, term: Term) -> Entry {
    Entry {
        index,
        term,
        command: kv::Command::Set {
            key: format!("key-{index}"),
            value: format!("value of entry {index} in term {term}"),
            client_id: 42,
            sequence: index,
            timestamp_ms: 0,
        }
        .into(),
    }
}

fn entries(indexes: std::ops::RangeInclusive<LogIndex>, term: Term) -> Vec<Entry> {
    indexes.map(|i| set(i, term)).collect()
}

fn open(dir: &Path) -> FileStorage {
    FileStorage::open(dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
}

fn reopen(dir: &Path) -> Recovered {
    open(dir).recover().unwrap()
}

fn open_error(dir: &Path) -> String {
    FileStorage::open(dir).unwrap_err().to_string()
}

fn term(current_term: Term) -> HardState {
    HardState {
        current_term,
        voted_for: None,
    }
}

/// The bytes before each record's payload (docs/storage.md, "File formats").
const RECORD_HEADER_LEN: usize = 16;

/// The bytes before the first record of a version-4 log: magic, version,
/// the index of the snapshot the log follows, crc32 (docs/storage.md).
const LOG_HEADER_LEN: usize = 20;

/// The header of a log that follows the snapshot through `follows` (0: none),
/// as docs/storage.md describes it.
fn log_header(follows: LogIndex) -> Vec<u8> {
    let mut bytes = b"RKVL".to_vec();
    bytes.extend_from_slice(&4u32.to_le_bytes());
    bytes.extend_from_slice(&follows.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Where each record of the log `bytes` starts, and where the records end:
/// the file is grown ahead of them, and the rest reads as zeros
/// (docs/storage.md).
fn record_starts(bytes: &[u8]) -> (Vec<usize>, usize) {
    let mut starts = Vec::new();
    let mut at = LOG_HEADER_LEN;
    while at + RECORD_HEADER_LEN <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        starts.push(at);
        at += RECORD_HEADER_LEN + len;
    }
    (starts, at)
}

/// The name of the log segment whose first entry is `first`.
fn segment_name(first: LogIndex) -> String {
    format!("log-{first:020}")
}

/// The log's segments in `dir`, oldest first (docs/storage.md).
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_str().unwrap();
            name.strip_prefix("log-").is_some_and(|digits| {
                digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())
            })
        })
        .collect();
    found.sort();
    found
}

/// The segment appends go to; in most tests the only one.
fn last_segment(dir: &Path) -> PathBuf {
    segments(dir).pop().expect("a log segment")
}

fn log_end(dir: &Path) -> u64 {
    record_starts(&fs::read(last_segment(dir)).unwrap()).1 as u64
}

/// A fresh dir holding current_term `term` and the entries, each appended
/// and synced on its own; returns where each record ends in its segment.
fn dir_with(term: Term, log: &[Entry]) -> (TempDir, Vec<u64>) {
    dir_with_segments(term, log, None)
}

/// `dir_with`, a segment being full at `segment_bytes`: with 1, each entry
/// is in a segment of its own.
fn dir_with_segments(term: Term, log: &[Entry], segment_bytes: Option<u64>) -> (TempDir, Vec<u64>) {
    let dir = TempDir::new().unwrap();
    let mut storage = open(dir.path());
    if let Some(bytes) = segment_bytes {
        storage = storage.with_segment_bytes(bytes);
    }
    storage.save_hard_state(self::term(term)).unwrap();
    let mut ends = Vec::new();
    for entry in log {
        storage.append(std::slice::from_ref(entry)).unwrap();
        storage.sync().unwrap();
        ends.push(log_end(dir.path()));
    }
    (dir, ends)
}

/// A copy of `from`'s hard state and snapshot, with one log segment:
/// `log_bytes`, named as its header says (or as `from`'s last segment is,
/// when the bytes are too short to say).
fn copy_with_log(from: &Path, log_bytes: &[u8]) -> TempDir {
    let name = match log_bytes.get(8..16) {
        Some(follows) => {
            let follows = u64::from_le_bytes(follows.try_into().unwrap());
            segment_name(follows.wrapping_add(1))
        }
        None => last_segment(from)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string(),
    };
    copy_with_file(from, &name, log_bytes)
}

/// The same with `log_bytes` as the single-file `log` of the versions
/// before segments (docs/storage.md, "Upgrading").
fn copy_with_legacy_log(from: &Path, log_bytes: &[u8]) -> TempDir {
    copy_with_file(from, "log", log_bytes)
}

fn copy_with_file(from: &Path, name: &str, bytes: &[u8]) -> TempDir {
    let to = TempDir::new().unwrap();
    for name in ["hardstate", "snapshot"] {
        if from.join(name).exists() {
            fs::copy(from.join(name), to.path().join(name)).unwrap();
        }
    }
    fs::write(to.path().join(name), bytes).unwrap();
    to
}

/// The state machine's bytes in entry `index`.
fn command_bytes(index: LogIndex, term: Term) -> Vec<u8> {
    match set(index, term).command {
        Command::Client(bytes) => bytes,
        Command::Noop | Command::Config(_) => unreachable!("set() makes commands"),
    }
}

/// One record as docs/storage.md describes it, built without FileStorage,
/// as if every entry before it had been synced.
fn record(index: LogIndex, term: Term) -> Vec<u8> {
    let mut payload = vec![1]; // kind: a command
    payload.extend_from_slice(&index.to_le_bytes());
    payload.extend_from_slice(&term.to_le_bytes());
    payload.extend_from_slice(&command_bytes(index, term));
    let durable_before = index - 1;
    let mut checksummed = durable_before.to_le_bytes().to_vec();
    checksummed.extend_from_slice(&payload);
    let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&checksummed).to_le_bytes());
    bytes.extend_from_slice(&checksummed);
    bytes
}

/// A log following the snapshot through `follows`, holding these records.
fn handmade_log_after(follows: LogIndex, records: &[(LogIndex, Term)]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = log_header(follows);
    let mut offsets = Vec::new();
    for &(index, term) in records {
        offsets.push(bytes.len());
        bytes.extend_from_slice(&record(index, term));
    }
    (bytes, offsets)
}

fn handmade_log(records: &[(LogIndex, Term)]) -> (Vec<u8>, Vec<usize>) {
    handmade_log_after(0, records)
}

/// A snapshot file as docs/storage.md describes it, built without FileStorage.
fn handmade_snapshot(index: LogIndex, term: Term, data: &[u8]) -> Vec<u8> {
    let mut bytes = b"RKVS".to_vec();
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&index.to_le_bytes());
    bytes.extend_from_slice(&term.to_le_bytes());
    bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
    bytes.extend_from_slice(data);
    let crc = crc32fast::hash(&bytes);
    bytes.splice(32..32, crc.to_le_bytes());
    bytes
}

#[test]
fn a_new_dir_is_empty_and_hard_state_survives_reopen() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data").join("node1");
    let recovered = reopen(&data);
    assert_eq!(recovered.hard_state, HardState::default());
    assert_eq!(recovered.snapshot, None);
    assert!(recovered.entries.is_empty());

    let voted = HardState {
        current_term: 1,
        voted_for: Some(2),
    };
    open(&data).save_hard_state(voted).unwrap();
    assert_eq!(reopen(&data).hard_state, voted);

    open(&data).save_hard_state(term(3)).unwrap();
    assert_eq!(reopen(&data).hard_state, term(3));
}

#[test]
fn synced_entries_survive_reopen_and_appends_continue_after_them() {
    let dir = TempDir::new().unwrap();
    let mut storage = open(dir.path());
    storage.save_hard_state(term(2)).unwrap();
    let mut log = entries(1..=3, 1);
    log.push(Entry {
        index: 4,
        term: 2,
        command: kv::Command::Delete {
            key: "key-1".into(),
            client_id: 42,
            sequence: 4,
            timestamp_ms: 0,
        }
        .into(),
    });
    log.push(Entry {
        index: 5,
        term: 2,
        command: Command::Noop,
    });
    storage.append(&log[..3]).unwrap();
    storage.append(&log[3..]).unwrap();
    storage.sync().unwrap();
    drop(storage);

    let mut storage = open(dir.path());
    assert_eq!(storage.recover().unwrap().entries, log);
    storage.append(&[set(6, 2)]).unwrap();
    storage.sync().unwrap();
    drop(storage);
    log.push(set(6, 2));
    assert_eq!(reopen(dir.path()).entries, log);
}

#[test]
fn truncate_removes_the_suffix_and_new_entries_take_its_place() {
    let (dir, _) = dir_with(1, &entries(1..=10, 1));
    let mut storage = open(dir.path());
    storage.save_hard_state(term(2)).unwrap();
    storage.truncate_from(20).unwrap();
    storage.truncate_from(6).unwrap();
    storage.append(&entries(6..=7, 2)).unwrap();
    storage.sync().unwrap();
    drop(storage);
    let mut expected = entries(1..=5, 1);
    expected.extend(entries(6..=7, 2));
    assert_eq!(reopen(dir.path()).entries, expected);

    let mut storage = open(dir.path());
    storage.truncate_from(1).unwrap();
    storage.sync().unwrap();
    drop(storage);
    assert!(reopen(dir.path()).entries.is_empty());
    assert_eq!(
        log_end(dir.path()),
        LOG_HEADER_LEN as u64,
        "only the header is left"
    );

    let mut storage = open(dir.path());
    storage.append(&[set(1, 2)]).unwrap();
    storage.sync().unwrap();
    drop(storage);
    assert_eq!(reopen(dir.path()).entries, [set(1, 2)]);
}

#[test]
fn a_snapshot_compacts_the_log_and_both_survive_reopen() {
    let mut log = entries(1..=4, 1);
    log.extend(entries(5..=10, 2));
    let (dir, _) = dir_with(3, &log);
    let snapshot = Snapshot {
        last_included_index: 6,
        last_included_term: 2,
        data: b"the state machine through entry 6".to_vec(),
        configuration: None,
    };
    let mut storage = open(dir.path());
    storage.save_snapshot(&snapshot, true).unwrap();
    // The entries the snapshot covers stay in the segment (it holds kept
    // ones too); truncating among the kept ones and appending still work.
    storage.truncate_from(9).unwrap();
    storage.append(&entries(9..=11, 3)).unwrap();
    storage.sync().unwrap();
    drop(storage);

    let recovered = reopen(dir.path());
    assert_eq!(recovered.snapshot.as_ref(), Some(&snapshot));
    assert_eq!(
        recovered.entries,
        [&log[6..8], &entries(9..=11, 3)].concat()
    );

    // A snapshot past the end of the log (InstallSnapshot, Figure 13 step 7)
    // leaves it empty; the next entry follows the snapshot.
    let newer = Snapshot {
        last_included_index: 20,
        last_included_term: 3,
        data: b"through 20".to_vec(),
        configuration: None,
    };
    let mut storage = open(dir.path());
    storage.save_snapshot(&newer, true).unwrap();
    assert_eq!(
        storage.append(&[set(12, 3)]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    storage.append(&[set(21, 3)]).unwrap();
    storage.sync().unwrap();
    drop(storage);
    let recovered = reopen(dir.path());
    assert_eq!(recovered.snapshot, Some(newer));
    assert_eq!(recovered.entries, [set(21, 3)]);
}

#[test]
fn snapshots_that_would_break_the_dir_are_refused() {
    let (dir, _) = dir_with(2, &entries(1..=5, 2));
    let mut storage = open(dir.path());
    let at = |last_included_index, last_included_term| Snapshot {
        last_included_index,
        last_included_term,
        data: vec![1, 2, 3],
        configuration: None,
    };
    storage.save_snapshot(&at(4, 2), true).unwrap();
    for bad in [at(3, 2), at(0, 0), at(5, 3)] {
        let error = storage.save_snapshot(&bad, true).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{bad:?}: {error}");
    }
    drop(storage);
    let recovered = reopen(dir.path());
    assert_eq!(recovered.snapshot, Some(at(4, 2)));
    assert_eq!(recovered.entries, [set(5, 2)]);
}

#[test]
fn a_torn_write_at_every_offset_of_the_last_record_is_cut_off() {
    let log = entries(1..=4, 1);
    let (dir, ends) = dir_with(1, &log);
    let mut bytes = fs::read(last_segment(dir.path())).unwrap();
    assert!(
        bytes[ends[3] as usize..].iter().all(|&b| b == 0),
        "only zeros follow the records"
    );
    bytes.truncate(ends[3] as usize);
    let last_start = ends[2] as usize;
    for cut in last_start + 1..bytes.len() {
        // The length may have reached the disk without the data (zeros), or not.
        let mut zero_filled = bytes[..cut].to_vec();
        zero_filled.resize(bytes.len(), 0);
        for torn in [&bytes[..cut], &zero_filled[..]] {
            let copy = copy_with_log(dir.path(), torn);
            let mut storage = open(copy.path());
            assert_eq!(storage.recover().unwrap().entries, log[..3], "cut at {cut}");
            assert_eq!(log_end(copy.path()), ends[2], "cut at {cut}");
            storage.append(&log[3..]).unwrap();
            storage.sync().unwrap();
            drop(storage);
            assert_eq!(reopen(copy.path()).entries, log, "cut at {cut}");
        }
    }
}

#[test]
fn a_torn_batch_keeps_its_complete_records() {
    let dir = TempDir::new().unwrap();
    let mut storage = open(dir.path());
    storage.save_hard_state(term(1)).unwrap();
    storage.append(&entries(1..=2, 1)).unwrap();
    storage.sync().unwrap();
    let first_batch_end = log_end(dir.path());
    storage.append(&entries(3..=5, 1)).unwrap();
    storage.sync().unwrap();
    drop(storage);
    let bytes = fs::read(last_segment(dir.path())).unwrap();
    let third = record(3, 1).len() as u64;
    let fourth = record(4, 1).len() as u64;
    let cut = (first_batch_end + third + fourth / 2) as usize;
    let copy = copy_with_log(dir.path(), &bytes[..cut]);
    assert_eq!(reopen(copy.path()).entries, entries(1..=3, 1));
}

/// What the disk holds where a page of a write never reached it: the zeros
/// the file was grown with, or garbage.
#[derive(Clone, Copy, Debug)]
enum Hole {
    Zeros,
    Garbage,
}

/// `bytes` with a hole over `range`.
fn with_hole(bytes: &[u8], range: Range<usize>, hole: Hole) -> Vec<u8> {
    let mut damaged = bytes.to_vec();
    for at in range {
        damaged[at] = match hole {
            Hole::Zeros => 0,
            // Never the byte that was written.
            Hole::Garbage => damaged[at] ^ ((at as u8).wrapping_mul(151) | 1),
        };
    }
    assert_ne!(damaged, bytes, "the hole changes something");
    damaged
}

/// A power loss during the fsync of a batch that one `pwrite` wrote: the
/// kernel may have written a later page of it but not an earlier one. Nothing
/// of the batch was acknowledged, so the log is cut where the hole starts.
#[test]
fn a_hole_in_a_batch_never_synced_is_cut_off_at_every_offset() {
    let log = entries(1..=8, 1);
    let (dir, _) = dir_with(1, &log[..3]);
    let mut storage = open(dir.path());
    storage.append(&log[3..]).unwrap();
    drop(storage); // the crash came before `sync` returned
    let bytes = fs::read(last_segment(dir.path())).unwrap();
    let (starts, end) = record_starts(&bytes);
    let bytes = &bytes[..end];
    let last = starts[7];
    for hole_start in starts[3]..last {
        let damaged = starts.iter().rposition(|&s| s <= hole_start).unwrap();
        // The rest of the damaged record, or everything up to the batch's
        // last record; that one is whole either way.
        for hole_end in [starts[damaged + 1], last] {
            for hole in [Hole::Zeros, Hole::Garbage] {
                let case = format!("{hole:?} at {hole_start}..{hole_end}");
                let copy = copy_with_log(dir.path(), &with_hole(bytes, hole_start..hole_end, hole));
                let mut storage = open(copy.path());
                assert_eq!(storage.recover().unwrap().entries, log[..damaged], "{case}");
                assert_eq!(log_end(copy.path()), starts[damaged] as u64, "{case}");
                if hole_end == last && matches!(hole, Hole::Zeros) {
                    storage.append(&log[damaged..]).unwrap();
                    storage.sync().unwrap();
                    drop(storage);
                    assert_eq!(reopen(copy.path()).entries, log, "{case}");
                }
            }
        }
    }
}

/// The same holes in a batch that was fsynced before the next one was
/// written: the next batch's records say so, and the damaged entries may
/// have been acknowledged (Figure 2).
#[test]
fn a_hole_in_a_batch_synced_before_a_later_one_is_refused_at_every_offset() {
    let log = entries(1..=8, 1);
    let dir = TempDir::new().unwrap();
    let mut storage = open(dir.path());
    storage.save_hard_state(term(1)).unwrap();
    storage.append(&log[..5]).unwrap();
    storage.sync().unwrap();
    storage.append(&log[5..]).unwrap();
    drop(storage);
    let bytes = fs::read(last_segment(dir.path())).unwrap();
    let (starts, end) = record_starts(&bytes);
    let bytes = &bytes[..end];
    let later_batch = starts[5];
    for hole_start in starts[0]..later_batch {
        let damaged = starts.iter().rposition(|&s| s <= hole_start).unwrap();
        for hole_end in [starts[damaged + 1], later_batch] {
            for hole in [Hole::Zeros, Hole::Garbage] {
                let case = format!("{hole:?} at {hole_start}..{hole_end}");
                let torn = with_hole(bytes, hole_start..hole_end, hole);
                let copy = copy_with_log(dir.path(), &torn);
                let error = open_error(copy.path());
                let expected = format!(
                    "{} is corrupt at byte offset {}:",
                    last_segment(copy.path()).display(),
                    starts[damaged]
                );
                assert!(error.starts_with(&expected), "{case}: {error}");
                let proof = format!(
                    "a valid record follows at byte offset {later_batch}, written when entries through 5 were durable"
                );
                assert!(error.contains(&proof), "{case}: {error}");
                assert_eq!(
                    fs::read(last_segment(copy.path())).unwrap(),
                    torn,
                    "{case}: a refused log is left as it was"
                );
            }
        }
    }
}

/// With no record before the hole to say which entry the damaged one held,
/// the snapshot says it: the entry after it.
#[test]
fn a_hole_in_the_first_batch_after_a_snapshot_is_judged_against_the_snapshot() {
    let (dir, _) = dir_with(1, &entries(1..=5, 1));
    // A full segment: the batch starts the next one.
    let mut storage = open(dir.path()).with_segment_bytes(1);
    let snapshot = Snapshot {
        last_included_index: 5,
        last_included_term: 1,
        data: b"through 5".to_vec(),
        configuration: None,
    };
    storage.save_snapshot(&snapshot, true).unwrap();
    storage.append(&entries(6..=9, 1)).unwrap();
    drop(storage);
    let bytes = fs::read(last_segment(dir.path())).unwrap();
    let (starts, end) = record_starts(&bytes);
    assert_eq!(
        starts[0], LOG_HEADER_LEN,
        "the batch is the segment's first"
    );
    assert_eq!(segments(dir.path()), [dir.path().join(segment_name(6))]);
    let copy = copy_with_log(
        dir.path(),
        &with_hole(&bytes[..end], starts[0]..starts[1], Hole::Zeros),
    );
    let recovered = reopen(copy.path());
    assert_eq!(recovered.snapshot, Some(snapshot));
    assert!(recovered.entries.is_empty());
    assert_eq!(log_end(copy.path()), LOG_HEADER_LEN as u64);

    // Once it is synced (here by `open`) and another batch follows, the
    // same hole is refused.
    let mut storage = open(dir.path());
    storage.append(&entries(10..=10, 1)).unwrap();
    drop(storage);
    let bytes = fs::read(last_segment(dir.path())).unwrap();
    let (starts, end) = record_starts(&bytes);
    let copy = copy_with_log(
        dir.path(),
        &with_hole(&bytes[..end], starts[0]..starts[1], Hole::Zeros),
    );
    let error = open_error(copy.path());
    assert!(error.contains("corrupt at byte offset 20:"), "{error}");
}

/// A snapshot from the leader that conflicts with the log replaces all of it
/// (Figure 13 step 7): the batch written after it says only the entries in
/// the snapshot were durable, not the discarded ones.
#[test]
fn a_hole_in_the_first_batch_after_a_conflicting_snapshot_is_cut_off() {
    let (dir, _) = dir_with(2, &entries(1..=10, 1));
    let old_log = fs::read(last_segment(dir.path())).unwrap();
    let mut storage = open(dir.path());
    let snapshot = Snapshot {
        last_included_index: 6,
        last_included_term: 2,
        data: b"from the leader".to_vec(),
        configuration: None,
    };
    storage.save_snapshot(&snapshot, false).unwrap();
    storage.append(&entries(7..=9, 2)).unwrap();
    drop(storage);
    let torn_first_batch = |dir: &Path| {
        let bytes = fs::read(last_segment(dir)).unwrap();
        let (starts, end) = record_starts(&bytes);
        let copy = copy_with_log(
            dir,
            &with_hole(&bytes[..end], starts[0]..starts[1], Hole::Zeros),
        );
        let recovered = reopen(copy.path());
        assert_eq!(recovered.snapshot.as_ref(), Some(&snapshot));
        assert!(recovered.entries.is_empty());
    };
    torn_first_batch(dir.path());

    // The same when a crash interrupted the install and `open` finished it.
    fs::remove_file(dir.path().join(segment_name(7))).unwrap();
    fs::write(dir.path().join(segment_name(1)), &old_log).unwrap();
    let mut storage = open(dir.path());
    assert!(storage.recover().unwrap().entries.is_empty());
    storage.append(&entries(7..=9, 2)).unwrap();
    drop(storage);
    torn_first_batch(dir.path());
}

/// A truncation takes the entries it removes out of what is durable: the
/// batch written after it says only the kept ones were.
#[test]
fn a_hole_in_a_batch_written_after_a_truncation_is_cut_off() {
    let (dir, _) = dir_with(1, &entries(1..=5, 1));
    let mut storage = open(dir.path());
    storage.save_hard_state(term(2)).unwrap();
    storage.truncate_from(3).unwrap();
    storage.sync().unwrap();
    storage.append(&entries(3..=6, 2)).unwrap();
    drop(storage);
    let bytes = fs::read(last_segment(dir.path())).unwrap();
    let (starts, end) = record_starts(&bytes);
    let copy = copy_with_log(
        dir.path(),
        &with_hole(&bytes[..end], starts[2]..starts[3], Hole::Zeros),
    );
    assert_eq!(reopen(copy.path()).entries, entries(1..=2, 1));
}

/// A log as a build of format version 1 wrote it: records without
/// durable_before (docs/storage.md, "Upgrading from versions 1 and 2").
fn version_1_log(records: &[(LogIndex, Term)]) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = b"RKVL".to_vec();
    bytes.extend_from_slice(&1u32.to_le_bytes());
    let mut offsets = Vec::new();
    for &(index, term) in records {
        offsets.push(bytes.len());
        // The peer protocol's LogEntry, as versions 1 and 2 stored it (the
        // kind field, added later, is left out for a command).
        let payload = LogEntry {
            index,
            term,
            command: command_bytes(index, term),
            kind: 0,
        }
        .encode_to_vec();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
    }
    (bytes, offsets)
}

#[test]
fn a_version_1_log_is_rewritten_as_a_segment_at_open() {
    let (dir, _) = dir_with(1, &[]);
    let (version_1, offsets) = version_1_log(&[(1, 1), (2, 1), (3, 1)]);
    let copy = copy_with_legacy_log(dir.path(), &version_1);
    let mut storage = open(copy.path());
    assert_eq!(storage.recover().unwrap().entries, entries(1..=3, 1));
    storage.append(&[set(4, 1)]).unwrap();
    storage.sync().unwrap();
    drop(storage);
    assert!(!copy.path().join("log").exists(), "the old file is gone");
    assert_eq!(segments(copy.path()), [copy.path().join(segment_name(1))]);
    let upgraded = fs::read(last_segment(copy.path())).unwrap();
    assert_eq!(upgraded[4..8], 4u32.to_le_bytes(), "format version 4");
    let (expected, _) = handmade_log(&[(1, 1), (2, 1), (3, 1), (4, 1)]);
    assert_eq!(upgraded[..record_starts(&upgraded).1], expected);
    assert_eq!(reopen(copy.path()).entries, entries(1..=4, 1));

    // Version 1's rules still decide what its damage means: a torn last
    // record is cut off in the upgrade...
    let torn = &version_1[..version_1.len() - 5];
    let copy = copy_with_legacy_log(dir.path(), torn);
    assert_eq!(reopen(copy.path()).entries, entries(1..=2, 1));
    let upgraded = fs::read(last_segment(copy.path())).unwrap();
    assert_eq!(
        upgraded[..record_starts(&upgraded).1],
        handmade_log(&[(1, 1), (2, 1)]).0
    );

    // ...and damage before a valid record is refused, leaving the log as it was.
    let mut damaged = version_1.clone();
    damaged[offsets[1] + 12] ^= 4;
    let copy = copy_with_legacy_log(dir.path(), &damaged);
    let error = open_error(copy.path());
    let expected = format!(
        "{} is corrupt at byte offset {}:",
        copy.path().join("log").display(),
        offsets[1]
    );
    assert!(error.starts_with(&expected), "{error}");
    assert_eq!(fs::read(copy.path().join("log")).unwrap(), damaged);
    assert!(segments(copy.path()).is_empty());
}

/// A log as a build of format version 3 wrote it: the records of version 4
/// after an 8-byte header (magic and version), which said nothing of the
/// snapshot.
fn version_3_log(records: &[(LogIndex, Term)]) -> Vec<u8> {
    let (bytes, _) = handmade_log(records);
    [&b"RKVL\x03\0\0\0"[..], &bytes[LOG_HEADER_LEN..]].concat()
}

#[test]
fn a_version_3_log_is_rewritten_as_a_segment_at_open() {
    let (dir, _) = dir_with(1, &[]);
    let copy = copy_with_legacy_log(dir.path(), &version_3_log(&[(1, 1), (2, 1), (3, 1)]));
    assert_eq!(reopen(copy.path()).entries, entries(1..=3, 1));
    let upgraded = fs::read(last_segment(copy.path())).unwrap();
    assert_eq!(upgraded, handmade_log(&[(1, 1), (2, 1), (3, 1)]).0);

    // Beside a snapshot, the segment's header names the entry before its
    // first: from then on, losing the snapshot is noticed.
    let (dir, _) = dir_with(2, &entries(1..=4, 2));
    open(dir.path())
        .save_snapshot(&snapshot_through(2, 2), true)
        .unwrap();
    let copy = copy_with_legacy_log(dir.path(), &version_3_log(&[(3, 2), (4, 2)]));
    let mut storage = open(copy.path());
    assert_eq!(storage.recover().unwrap().entries, entries(3..=4, 2));
    storage.append(&[set(5, 2)]).unwrap();
    storage.sync().unwrap();
    drop(storage);
    assert_eq!(segments(copy.path()), [copy.path().join(segment_name(3))]);
    let upgraded = fs::read(last_segment(copy.path())).unwrap();
    assert_eq!(
        upgraded[..record_starts(&upgraded).1],
        handmade_log_after(2, &[(3, 2), (4, 2), (5, 2)]).0
    );
    fs::remove_file(copy.path().join("snapshot")).unwrap();
    let error = open_error(copy.path());
    assert!(
        error.contains("missing, yet the log follows entry 2"),
        "{error}"
    );

    // A version-3 log says nothing of the snapshot, so before the upgrade
    // its loss goes unnoticed, as it did in version 3; the entries after it
    // still cannot start the log.
    let copy = copy_with_legacy_log(dir.path(), &version_3_log(&[]));
    fs::remove_file(copy.path().join("snapshot")).unwrap();
    assert!(reopen(copy.path()).entries.is_empty());
    let copy = copy_with_legacy_log(dir.path(), &version_3_log(&[(3, 2)]));
    fs::remove_file(copy.path().join("snapshot")).unwrap();
    assert!(open_error(copy.path()).contains("entries 1..2 are missing"));
}

/// The single file of version 4 is a segment's layout already: it becomes
/// the first segment, named after its first entry. A crash during the
/// upgrade leaves `log` whole, and the next open starts again; a segment
/// beside it that is not its upgrade is refused, never deleted.
#[test]
fn a_version_4_single_file_log_is_rewritten_as_a_segment_at_open() {
    let (dir, _) = dir_with(2, &entries(1..=4, 2));
    open(dir.path())
        .save_snapshot(&snapshot_through(2, 2), true)
        .unwrap();
    let (single, _) = handmade_log_after(2, &[(3, 2), (4, 2)]);
    let copy = copy_with_legacy_log(dir.path(), &single);
    assert_eq!(reopen(copy.path()).entries, entries(3..=4, 2));
    assert!(!copy.path().join("log").exists());
    assert_eq!(segments(copy.path()), [copy.path().join(segment_name(3))]);
    assert_eq!(fs::read(last_segment(copy.path())).unwrap(), single);

    // Interrupted after the segment's rename, before `log` went: finished.
    fs::write(copy.path().join("log"), &single).unwrap();
    assert_eq!(reopen(copy.path()).entries, entries(3..=4, 2));
    assert!(!copy.path().join("log").exists());

    // A segment that is not the upgrade: refused, both left as they were.
    let copy = copy_with_legacy_log(dir.path(), &single);
    fs::write(copy.path().join(segment_name(3)), b"RKVL").unwrap();
    let error = open_error(copy.path());
    assert!(
        error.contains("holds both a single-file log") && error.contains("move aside"),
        "{error}"
    );
    assert_eq!(
        fs::read(copy.path().join(segment_name(3))).unwrap(),
        b"RKVL"
    );
    assert_eq!(fs::read(copy.path().join("log")).unwrap(), single);

    // Its header named the snapshot; losing the snapshot is noticed still.
    let copy = copy_with_legacy_log(dir.path(), &single);
    fs::remove_file(copy.path().join("snapshot")).unwrap();
    let error = open_error(copy.path());
    assert!(
        error.contains("missing, yet the log follows entry 2"),
        "{error}"
    );
    assert!(
        copy.path().join("log").exists(),
        "a refused dir is left as it was"
    );
}

#[test]
fn a_flipped_bit_anywhere_in_an_earlier_record_is_refused() {
    let (dir, ends) = dir_with(1, &entries(1..=4, 1));
    let bytes = fs::read(last_segment(dir.path())).unwrap();
    let (start, end) = (ends[0] as usize, ends[1] as usize);
    for at in start..end {
        let mut damaged = bytes.clone();
        damaged[at] ^= 1 << (at % 8);
        let copy = copy_with_log(dir.path(), &damaged);
        let error = open_error(copy.path());
        let expected = format!(
            "{} is corrupt at byte offset {start}:",
            last_segment(copy.path()).display()
        );
        assert!(error.starts_with(&expected), "byte {at}: {error}");
        assert_eq!(
            fs::read(last_segment(copy.path())).unwrap(),
            damaged,
            "a refused log is left as it was"
        );
    }
}

#[test]
fn a_damaged_log_header_is_refused() {
    let (dir, _) = dir_with(1, &entries(1..=2, 1));
    let bytes = fs::read(last_segment(dir.path())).unwrap();
    for at in 0..LOG_HEADER_LEN {
        for bit in 0..8 {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1 << bit;
            let copy = copy_with_log(dir.path(), &damaged);
            let error = open_error(copy.path());
            assert!(
                error.contains("/log-") && error.contains(" is corrupt at byte offset"),
                "byte {at} bit {bit}: {error}"
            );
        }
    }
    let copy = copy_with_log(dir.path(), &bytes[..5]);
    let error = open_error(copy.path());
    assert!(error.contains("file is 5 bytes, too short for"), "{error}");
    let copy = copy_with_log(dir.path(), &bytes[..12]);
    let error = open_error(copy.path());
    assert!(
        error.contains("file is 12 bytes, shorter than the 20-byte header"),
        "{error}"
    );
}

#[test]
fn a_flipped_bit_in_the_hard_state_is_refused() {
    let dir = TempDir::new().unwrap();
    open(dir.path())
        .save_hard_state(HardState {
            current_term: 7,
            voted_for: Some(3),
        })
        .unwrap();
    let path = dir.path().join("hardstate");
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 28);
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 1 << (at % 8);
        fs::write(&path, &damaged).unwrap();
        let error = open_error(dir.path());
        let expected = format!("{} is corrupt at byte offset", path.display());
        assert!(error.starts_with(&expected), "byte {at}: {error}");
    }
    fs::write(&path, &bytes[..20]).unwrap();
    assert!(open_error(dir.path()).contains("file is 20 bytes, a hard state is 28"));
}

#[test]
fn a_flipped_bit_in_the_snapshot_is_refused() {
    let (dir, _) = dir_with(3, &entries(1..=3, 3));
    let mut storage = open(dir.path());
    storage
        .save_snapshot(
            &Snapshot {
                last_included_index: 2,
                last_included_term: 3,
                data: b"snapshot data".to_vec(),
                configuration: None,
            },
            true,
        )
        .unwrap();
    drop(storage);
    let path = dir.path().join("snapshot");
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 36 + 13 + 4, "header, data, no configuration");
    for at in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[at] ^= 1 << (at % 8);
        fs::write(&path, &damaged).unwrap();
        let error = open_error(dir.path());
        let expected = format!("{} is corrupt at byte offset", path.display());
        assert!(error.starts_with(&expected), "byte {at}: {error}");
    }
}

#[test]
fn a_half_written_temporary_file_is_ignored_and_removed() {
    let voted = HardState {
        current_term: 5,
        voted_for: Some(2),
    };
    let (dir, _) = dir_with(5, &entries(1..=3, 5));
    open(dir.path()).save_hard_state(voted).unwrap();
    let newer = fs::read(dir.path().join("hardstate")).unwrap();
    // A crash after writing part of the next hard state's temporary file.
    fs::write(dir.path().join("hardstate.tmp"), &newer[..13]).unwrap();
    fs::write(dir.path().join("snapshot.tmp"), b"RKVS garbage").unwrap();
    fs::write(dir.path().join("log.tmp"), b"RKVL\x01\0\0\0 garbage").unwrap();
    fs::write(dir.path().join("cluster.tmp"), b"cluster-id").unwrap();
    fs::write(dir.path().join(format!("{}.tmp", segment_name(9))), b"RKVL").unwrap();

    let recovered = reopen(dir.path());
    assert_eq!(recovered.hard_state, voted);
    assert_eq!(recovered.snapshot, None);
    assert_eq!(recovered.entries, entries(1..=3, 5));
    for name in [
        "hardstate.tmp",
        "snapshot.tmp",
        "log.tmp",
        "cluster.tmp",
        "log-00000000000000000009.tmp",
    ] {
        assert!(!dir.path().join(name).exists(), "{name} is removed");
    }
}

#[test]
fn the_cluster_file_is_kept_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    assert_eq!(storage.cluster_file().unwrap(), None);
    storage.save_cluster_file(b"cluster-id 1\n").unwrap();
    drop(storage);
    let storage = open(dir.path());
    assert_eq!(
        storage.cluster_file().unwrap().as_deref(),
        Some(&b"cluster-id 1\n"[..])
    );
}

#[test]
fn the_lock_refuses_a_second_open_until_the_first_is_dropped() {
    let dir = TempDir::new().unwrap();
    let data: PathBuf = dir.path().join("node1");
    let first = open(&data);
    assert_eq!(
        open_error(&data),
        format!(
            "data dir {} is in use by another raft-kv process (lock file {})",
            data.display(),
            data.join("LOCK").display()
        )
    );
    drop(first);
    open(&data);
}

#[test]
fn checksummed_records_that_break_the_log_rules_are_refused() {
    let (dir, _) = dir_with(3, &[]);
    // (index, term) of each record, the record refused, why
    type Case = (&'static [(LogIndex, Term)], usize, &'static str);
    let cases: [Case; 4] = [
        (&[(1, 1), (2, 1), (4, 1)], 2, "entry 4 follows entry 2"),
        (&[(1, 1), (2, 1), (2, 1)], 2, "entry 2 follows entry 2"),
        (
            &[(1, 2), (2, 3), (3, 2)],
            2,
            "lower than the previous entry's term 3",
        ),
        (
            &[(3, 1), (4, 1)],
            0,
            "the first record is entry 3, not entry 1",
        ),
    ];
    for (records, bad, reason) in cases {
        let (bytes, offsets) = handmade_log(records);
        let copy = copy_with_log(dir.path(), &bytes);
        let error = open_error(copy.path());
        let at = format!("corrupt at byte offset {}:", offsets[bad]);
        assert!(
            error.contains(&at) && error.contains(reason),
            "{records:?}: {error}"
        );
    }

    // The same format with the rules kept is read: docs/storage.md is accurate.
    let (bytes, _) = handmade_log(&[(1, 1), (2, 1), (3, 3)]);
    let copy = copy_with_log(dir.path(), &bytes);
    assert_eq!(
        reopen(copy.path()).entries,
        [set(1, 1), set(2, 1), set(3, 3)]
    );
}

#[test]
fn appends_that_would_break_the_log_are_refused_and_change_nothing() {
    let (dir, _) = dir_with(2, &entries(1..=3, 2));
    let mut storage = open(dir.path());
    let refused: [Vec<Entry>; 4] = [
        vec![set(5, 2)],
        vec![set(3, 2)],
        vec![set(4, 1)],
        vec![set(4, 2), set(5, 3)],
    ];
    for bad in refused {
        let error = storage.append(&bad).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{bad:?}");
    }
    storage.sync().unwrap();
    storage.append(&[set(4, 2)]).unwrap();
    storage.sync().unwrap();
    drop(storage);
    assert_eq!(reopen(dir.path()).entries, entries(1..=4, 2));
}

#[test]
fn hard_states_that_break_figure_2_are_refused_and_change_nothing() {
    let dir = TempDir::new().unwrap();
    let mut storage = open(dir.path());
    let voted = HardState {
        current_term: 4,
        voted_for: Some(1),
    };
    storage.save_hard_state(voted).unwrap();
    for bad in [
        term(3),
        term(4),
        HardState {
            current_term: 4,
            voted_for: Some(2),
        },
        HardState {
            current_term: 5,
            voted_for: Some(0),
        },
    ] {
        let error = storage.save_hard_state(bad).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{bad:?}");
    }
    drop(storage);
    assert_eq!(reopen(dir.path()).hard_state, voted);
}

#[test]
fn a_lost_hard_state_or_log_is_refused_rather_than_forgotten() {
    let (dir, _) = dir_with(3, &entries(1..=2, 3));
    let path = dir.path().join("hardstate");
    let current = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    let error = open_error(dir.path());
    assert!(
        error.starts_with(&format!("{}: missing", path.display())),
        "{error}"
    );

    // An older hard state in its place is no better.
    let older = TempDir::new().unwrap();
    open(older.path()).save_hard_state(term(2)).unwrap();
    fs::copy(older.path().join("hardstate"), &path).unwrap();
    assert!(open_error(dir.path()).contains("current_term 2 is older than term 3"));

    fs::write(&path, current).unwrap();
    assert_eq!(reopen(dir.path()).entries, entries(1..=2, 3));

    // Nor is a lost log taken for a first boot.
    let log = last_segment(dir.path());
    fs::rename(&log, dir.path().join("log.saved")).unwrap();
    let error = open_error(dir.path());
    assert!(
        error.starts_with(&format!("{}: holds no log segment", dir.path().display())),
        "{error}"
    );
    fs::rename(dir.path().join("log.saved"), &log).unwrap();
    assert_eq!(reopen(dir.path()).entries, entries(1..=2, 3));
}

fn snapshot_through(index: LogIndex, term: Term) -> Snapshot {
    Snapshot {
        last_included_index: index,
        last_included_term: term,
        data: format!("the state machine through entry {index}").into_bytes(),
        configuration: None,
    }
}

/// Issue 15: a compaction deletes the segments a snapshot covers, and
/// without its snapshot such a dir would open with the entries after them
/// only, having forgotten everything the node applied. The oldest segment's
/// header names the entry it follows, so a snapshot lost or replaced by an
/// older one is refused like a lost log or hard state. (A snapshot lost
/// while the log still holds every entry from index 1 loses nothing: the
/// node applies them again.)
#[test]
fn a_lost_or_older_snapshot_is_refused_rather_than_forgotten() {
    // Each entry in a segment of its own.
    let (dir, _) = dir_with_segments(2, &entries(1..=6, 2), Some(1));
    let path = dir.path().join("snapshot");
    let missing = |follows: LogIndex| {
        format!(
            "{}: missing, yet the log follows entry {follows}: the snapshot was lost, and with it the state through entry {follows}; refusing to start (see docs/storage.md)",
            path.display()
        )
    };

    // Entries after the snapshot do not make up for it.
    open(dir.path())
        .save_snapshot(&snapshot_through(4, 2), true)
        .unwrap();
    assert_eq!(segments(dir.path())[0], dir.path().join(segment_name(5)));
    let older = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    assert_eq!(open_error(dir.path()), missing(4));
    fs::write(&path, &older).unwrap();
    assert_eq!(reopen(dir.path()).entries, entries(5..=6, 2));

    // Nor does a log that holds only entries the snapshot covers.
    open(dir.path())
        .save_snapshot(&snapshot_through(6, 2), true)
        .unwrap();
    assert_eq!(segments(dir.path()), [dir.path().join(segment_name(6))]);
    let log = fs::read(last_segment(dir.path())).unwrap();
    let current = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    assert_eq!(open_error(dir.path()), missing(5));

    // An older snapshot in its place is no better.
    fs::write(&path, &older).unwrap();
    assert_eq!(
        open_error(dir.path()),
        format!(
            "{}: ends at entry 4, yet the log follows entry 5: the snapshot was replaced by an older one; refusing to start (see docs/storage.md)",
            path.display()
        )
    );
    assert_eq!(
        fs::read(last_segment(dir.path())).unwrap(),
        log,
        "a refused dir is left as it was"
    );

    fs::write(&path, &current).unwrap();
    let mut storage = open(dir.path());
    let recovered = storage.recover().unwrap();
    assert_eq!(recovered.snapshot, Some(snapshot_through(6, 2)));
    assert!(recovered.entries.is_empty());
    storage.append(&[set(7, 2)]).unwrap();
    storage.sync().unwrap();
    drop(storage);
    assert_eq!(reopen(dir.path()).entries, [set(7, 2)]);
}

/// A snapshot saved when the log holds nothing it covers (say the first one
/// a new node installs) leaves a segment whose header names it.
#[test]
fn a_snapshot_beside_an_empty_log_is_named_in_the_log_header() {
    for keep_suffix in [true, false] {
        let (dir, _) = dir_with(3, &[]);
        let mut storage = open(dir.path());
        storage
            .save_snapshot(&snapshot_through(5, 3), keep_suffix)
            .unwrap();
        storage.append(&[set(6, 3)]).unwrap();
        storage.sync().unwrap();
        drop(storage);
        assert_eq!(segments(dir.path()), [dir.path().join(segment_name(6))]);
        let log = fs::read(last_segment(dir.path())).unwrap();
        assert_eq!(log[..LOG_HEADER_LEN], log_header(5), "{keep_suffix}");
        fs::remove_file(dir.path().join("snapshot")).unwrap();
        let error = open_error(dir.path());
        assert!(
            error.contains("missing, yet the log follows entry 5"),
            "{keep_suffix}: {error}"
        );
    }
}

/// Values no FileStorage writes, with valid checksums: refused, never an
/// index overflowing past u64::MAX.
#[test]
fn indexes_that_leave_no_room_for_the_next_entry_are_refused() {
    let (dir, _) = dir_with(1, &[]);
    let (log, _) = handmade_log_after(u64::MAX, &[]);
    let copy = copy_with_log(dir.path(), &log);
    let error = open_error(copy.path());
    assert!(
        error.contains(" is corrupt at byte offset 8:")
            && error.contains("the log follows entry 18446744073709551615"),
        "{error}"
    );

    for index in [u64::MAX, u64::MAX - 1] {
        let (log, _) = handmade_log_after(index, &[]);
        let copy = copy_with_log(dir.path(), &log);
        fs::write(
            copy.path().join("snapshot"),
            handmade_snapshot(u64::MAX, 1, b"data"),
        )
        .unwrap();
        let error = open_error(copy.path());
        assert!(
            error.contains("/snapshot is corrupt at byte offset 8:")
                && error.contains("last_included_index 18446744073709551615"),
            "{error}"
        );
    }

    let (log, offsets) = handmade_log_after(u64::MAX - 1, &[(u64::MAX, 1)]);
    let copy = copy_with_log(dir.path(), &log);
    fs::write(
        copy.path().join("snapshot"),
        handmade_snapshot(u64::MAX - 1, 1, b"data"),
    )
    .unwrap();
    let error = open_error(copy.path());
    assert!(
        error.contains(&format!(
            "/{} is corrupt at byte offset {}:",
            segment_name(u64::MAX),
            offsets[0]
        )) && error.contains("entry index 18446744073709551615"),
        "{error}"
    );

    // One below is the largest a snapshot may end at, and the writes
    // refuse to go past it.
    let (log, _) = handmade_log_after(u64::MAX - 1, &[]);
    let copy = copy_with_log(dir.path(), &log);
    fs::write(
        copy.path().join("snapshot"),
        handmade_snapshot(u64::MAX - 1, 1, b"data"),
    )
    .unwrap();
    let mut storage = open(copy.path());
    assert!(storage.recover().unwrap().entries.is_empty());
    let error = storage.append(&[set(u64::MAX, 1)]).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    let error = storage
        .save_snapshot(&snapshot_through(u64::MAX, 1), true)
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    drop(storage);
    assert!(reopen(copy.path()).entries.is_empty());
}

/// The segments in `dir`, by name, with their bytes.
fn segment_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    segments(dir)
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            (name, fs::read(&path).unwrap())
        })
        .collect()
}

/// Put back `files` (from `segment_files`), as a crash may: the deletions
/// of a compaction are not waited for.
fn put_back(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, bytes) in files {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

/// A compaction deletes whole segments and does not wait for the deletions
/// to be durable: a crash may bring back any of them, and `open` deletes
/// them again.
#[test]
fn a_compaction_interrupted_by_a_crash_is_finished_at_open() {
    let log = entries(1..=10, 1);
    for brought_back in [
        vec![0, 1, 2, 3, 4, 5],
        vec![0],
        vec![3],
        vec![1, 4],
        vec![5],
    ] {
        // Each entry in a segment of its own.
        let (dir, _) = dir_with_segments(1, &log, Some(1));
        let uncompacted = segment_files(dir.path());
        let snapshot = snapshot_through(6, 1);
        open(dir.path()).save_snapshot(&snapshot, true).unwrap();
        let compacted = segment_files(dir.path());
        assert_eq!(
            compacted,
            uncompacted[6..],
            "entries 1..=6 went with their segments"
        );
        let back: Vec<_> = brought_back
            .iter()
            .map(|&i| uncompacted[i].clone())
            .collect();
        put_back(dir.path(), &back);

        let mut storage = open(dir.path());
        let recovered = storage.recover().unwrap();
        assert_eq!(recovered.snapshot, Some(snapshot), "{brought_back:?}");
        assert_eq!(recovered.entries, log[6..], "{brought_back:?}");
        assert_eq!(segment_files(dir.path()), compacted, "{brought_back:?}");
        storage.append(&[set(11, 1)]).unwrap();
        storage.sync().unwrap();
        drop(storage);
        assert_eq!(reopen(dir.path()).entries, entries(7..=11, 1));
    }

    // A log that ended before the snapshot's index keeps nothing; the
    // crash came after the snapshot's rename, before the log was replaced.
    let (short, _) = dir_with(1, &entries(1..=3, 1));
    let uncompacted = segment_files(short.path());
    let mut storage = open(short.path());
    storage
        .save_snapshot(&snapshot_through(8, 1), true)
        .unwrap();
    drop(storage);
    fs::remove_file(short.path().join(segment_name(9))).unwrap();
    put_back(short.path(), &uncompacted);
    let mut storage = open(short.path());
    assert!(storage.recover().unwrap().entries.is_empty());
    assert_eq!(segments(short.path()), [short.path().join(segment_name(9))]);
    storage.append(&[set(9, 1)]).unwrap();
    storage.sync().unwrap();
    drop(storage);
    assert_eq!(reopen(short.path()).entries, [set(9, 1)]);
}

/// Figure 13 steps 6–7 across a crash: a snapshot from the leader whose
/// last entry conflicts with the local log replaces the whole log. A crash
/// after the snapshot is durable leaves the old segments, or the oldest of
/// them (they go newest first, each deletion durable before the next),
/// perhaps beside the new empty one; `open` discards them all rather than
/// keep a suffix of another history — here one whose segment begins right
/// after the snapshot's index.
#[test]
fn a_snapshot_install_interrupted_by_a_crash_discards_the_conflicting_log() {
    let log = entries(1..=9, 1);
    // Segments of three entries: 1..=3, 4..=6, 7..=9.
    let (dir, ends) = dir_with_segments(2, &log[..3], Some(1 << 20));
    let segment_bytes = ends[2] - 1;
    let mut storage = open(dir.path()).with_segment_bytes(segment_bytes);
    for entry in &log[3..] {
        storage.append(std::slice::from_ref(entry)).unwrap();
        storage.sync().unwrap();
    }
    drop(storage);
    let old = segment_files(dir.path());
    assert_eq!(old.len(), 3);
    assert_eq!(old[2].0, segment_name(7), "a segment follows entry 6");
    let snapshot = Snapshot {
        last_included_index: 6,
        last_included_term: 2,
        data: b"from the leader".to_vec(),
        configuration: None,
    };
    let mut storage = open(dir.path());
    storage.save_snapshot(&snapshot, false).unwrap();
    drop(storage);
    // Without a crash: nothing of the old log is left.
    assert!(reopen(dir.path()).entries.is_empty());
    let new = segment_files(dir.path());
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].0, segment_name(7));
    assert_eq!(new[0].1[..LOG_HEADER_LEN], log_header(6));

    for (kept, with_new) in [(3, false), (2, false), (1, false), (1, true)] {
        let case = format!("the {kept} oldest segments, the new one: {with_new}");
        for (name, _) in segment_files(dir.path()) {
            fs::remove_file(dir.path().join(name)).unwrap();
        }
        put_back(dir.path(), &old[..kept]);
        if with_new {
            put_back(dir.path(), &new);
        }
        let mut storage = open(dir.path());
        let recovered = storage.recover().unwrap();
        assert_eq!(recovered.snapshot.as_ref(), Some(&snapshot), "{case}");
        assert!(
            recovered.entries.is_empty(),
            "{case}: entries 7..=9 follow 6@1, not the snapshot's 6@2"
        );
        assert_eq!(segment_files(dir.path()), new, "{case}");
        storage.append(&[set(7, 2)]).unwrap();
        storage.sync().unwrap();
        drop(storage);
        assert_eq!(reopen(dir.path()).entries, [set(7, 2)], "{case}");
    }
}

/// Segments: the log rolls into a new one when the last is full, a
/// snapshot deletes the ones it covers whole, a truncation deletes the ones
/// after it, and each reopen reads them back as one log.
#[test]
fn the_log_rolls_into_segments_and_snapshots_delete_the_covered_ones() {
    let log = entries(1..=12, 1);
    let (dir, ends) = dir_with_segments(1, &log[..2], None);
    // Full after two entries.
    let full = ends[1];
    let mut storage = open(dir.path()).with_segment_bytes(full);
    for entry in &log[2..] {
        storage.append(std::slice::from_ref(entry)).unwrap();
        storage.sync().unwrap();
    }
    drop(storage);
    let names: Vec<String> = [1, 3, 5, 7, 9, 11].map(segment_name).to_vec();
    let files = segment_files(dir.path());
    assert_eq!(files.iter().map(|f| f.0.clone()).collect::<Vec<_>>(), names);
    for (i, (_, bytes)) in files.iter().enumerate() {
        let follows = 2 * i as u64;
        assert_eq!(bytes[..LOG_HEADER_LEN], log_header(follows), "segment {i}");
        if i + 1 < files.len() {
            let end = record_starts(bytes).1;
            assert_eq!(bytes.len(), end, "sealed: cut at its last record");
        }
    }
    assert_eq!(reopen(dir.path()).entries, log);

    // A snapshot through 6 covers the segments of 1..=2 and 3..=4 whole,
    // and 5..=6 too: the next segment follows it.
    // (A background thread deletes them; dropping the storage waits for it.)
    open(dir.path())
        .save_snapshot(&snapshot_through(6, 1), true)
        .unwrap();
    assert_eq!(segments(dir.path())[0], dir.path().join(segment_name(7)));
    // Entry 8 is the second of its segment: the later ones go, at once.
    let mut storage = open(dir.path()).with_segment_bytes(full);
    storage.save_hard_state(term(2)).unwrap();
    storage.truncate_from(8).unwrap();
    assert_eq!(segments(dir.path()), [dir.path().join(segment_name(7))]);
    storage.append(&entries(8..=10, 2)).unwrap();
    storage.sync().unwrap();
    drop(storage);
    let expected = [&log[6..7], &entries(8..=10, 2)[..]].concat();
    assert_eq!(reopen(dir.path()).entries, expected);
    // The batch went into the segment that had room when it began.
    assert_eq!(segments(dir.path()), [dir.path().join(segment_name(7))]);

    // A snapshot in the middle of a segment keeps it: the covered entries
    // stay on disk until the segment is deleted whole.
    let mut storage = open(dir.path());
    storage
        .save_snapshot(&snapshot_through(9, 2), true)
        .unwrap();
    drop(storage);
    assert_eq!(segments(dir.path()), [dir.path().join(segment_name(7))]);
    assert_eq!(reopen(dir.path()).entries, entries(10..=10, 2));
}

/// A segment is synced whole before the next one is created, so damage in
/// one that a later segment follows is never a torn write; a segment
/// missing from the middle of the chain lost entries.
#[test]
fn damage_in_a_sealed_segment_or_a_lost_one_is_refused() {
    let log = entries(1..=6, 1);
    let (dir, _) = dir_with_segments(1, &log, Some(1));
    let files = segment_files(dir.path());
    let copy = |files: &[(String, Vec<u8>)]| {
        let to = TempDir::new().unwrap();
        fs::copy(dir.path().join("hardstate"), to.path().join("hardstate")).unwrap();
        put_back(to.path(), files);
        to
    };

    // The last record of a sealed segment cut short.
    let mut damaged = files.clone();
    let len = damaged[2].1.len();
    damaged[2].1.truncate(len - 3);
    let to = copy(&damaged);
    let error = open_error(to.path());
    assert!(
        error.starts_with(&format!(
            "{} is corrupt at byte offset {LOG_HEADER_LEN}:",
            to.path().join(segment_name(3)).display()
        )) && error.contains("a later segment exists"),
        "{error}"
    );
    // The same in the last segment is a torn write, cut off.
    let mut torn = files.clone();
    let end = record_starts(&torn[5].1).1;
    torn[5].1.truncate(end - 3);
    assert_eq!(reopen(copy(&torn).path()).entries, log[..5]);

    // A lost segment.
    let mut lost = files.clone();
    lost.remove(3);
    let to = copy(&lost);
    let error = open_error(to.path());
    assert!(
        error.starts_with(&format!(
            "{}: follows entry 4,",
            to.path().join(segment_name(5)).display()
        )) && error.contains("ends at entry 3: a segment between them was lost"),
        "{error}"
    );
    // Beside a snapshot that does not cover the lost entry, the same. (One
    // that covers it makes the loss harmless: compactions delete such
    // segments.)
    fs::write(
        to.path().join("snapshot"),
        handmade_snapshot(3, 1, b"three"),
    )
    .unwrap();
    let error = open_error(to.path());
    assert!(error.contains("a segment between them was lost"), "{error}");

    // A lost segment that held the snapshot's last entry, with no segment
    // beginning right after it, is not taken for a log that ended before
    // the snapshot (which would be discarded): it is refused.
    let (two, ends) = dir_with_segments(1, &log[..2], None);
    let mut storage = open(two.path()).with_segment_bytes(ends[1]);
    storage.append(&log[2..]).unwrap(); // 3..=6 in one segment after 1..=2
    storage.sync().unwrap();
    storage.append(&entries(7..=8, 1)).unwrap();
    storage.sync().unwrap();
    drop(storage);
    assert_eq!(
        segments(two.path()),
        [1, 3, 7].map(|first| two.path().join(segment_name(first)))
    );
    fs::remove_file(two.path().join(segment_name(3))).unwrap();
    fs::write(
        two.path().join("snapshot"),
        handmade_snapshot(4, 1, b"four"),
    )
    .unwrap();
    let error = open_error(two.path());
    assert!(error.contains("a segment between them was lost"), "{error}");
    assert_eq!(
        segments(two.path()).len(),
        2,
        "a refused dir is left as it was"
    );

    // A segment whose name and header disagree.
    let mut renamed = files.clone();
    renamed[5].0 = segment_name(7);
    let error = open_error(copy(&renamed).path());
    assert!(
        error.contains(
            "the name says the segment starts at entry 7, but its header says it follows entry 5"
        ),
        "{error}"
    );
}

#[test]
fn recover_asked_twice_gives_the_same_answer() {
    let (dir, _) = dir_with(2, &entries(1..=5, 2));
    let mut storage = open(dir.path());
    storage
        .save_snapshot(
            &Snapshot {
                last_included_index: 2,
                last_included_term: 2,
                data: b"two".to_vec(),
                configuration: None,
            },
            true,
        )
        .unwrap();
    drop(storage);
    let mut storage = open(dir.path());
    let first = storage.recover().unwrap();
    let second = storage.recover().unwrap();
    assert_eq!(first.hard_state, second.hard_state);
    assert_eq!(first.snapshot, second.snapshot);
    assert_eq!(first.entries, second.entries);
    assert_eq!(first.entries, entries(3..=5, 2));
}

#[test]
fn the_log_grows_ahead_of_its_records_and_reopens_at_their_end() {
    let log = entries(1..=3, 1);
    let (dir, ends) = dir_with(1, &log);
    let len = fs::metadata(last_segment(dir.path())).unwrap().len();
    assert!(len > ends[2], "the file is grown ahead of its records");
    let mut storage = open(dir.path());
    assert_eq!(storage.recover().unwrap().entries, log);
    storage.append(&entries(4..=4, 1)).unwrap();
    storage.sync().unwrap();
    drop(storage);
    assert_eq!(
        fs::metadata(last_segment(dir.path())).unwrap().len(),
        len,
        "the append went into the space already there"
    );
    assert_eq!(reopen(dir.path()).entries, entries(1..=4, 1));
}

fn snapshot_at(index: LogIndex, term: Term) -> Snapshot {
    Snapshot {
        last_included_index: index,
        last_included_term: term,
        data: format!("the state through {index}").into_bytes(),
        configuration: None,
    }
}

/// §7: a node's own snapshot is written by another thread's
/// `SnapshotWriter` while the log stays whole; only `compact` drops the
/// entries it covers. A crash in between reopens with the new snapshot
/// beside the whole log, and recovery hands back only what follows it.
#[test]
fn a_snapshot_written_in_the_background_then_compacted_7() {
    let dir = TempDir::new().unwrap();
    let mut storage = open(dir.path());
    storage.save_hard_state(term(1)).unwrap();
    storage.append(&entries(1..=10, 1)).unwrap();
    storage.sync().unwrap();
    let mut writer = storage.snapshot_writer();
    let writing = std::thread::spawn(move || writer.write_snapshot(&snapshot_at(6, 1)).unwrap());
    assert!(writing.join().unwrap(), "the snapshot was stored");

    // A crash here: the snapshot, and the log with every entry.
    drop(storage);
    let recovered = reopen(dir.path());
    assert_eq!(recovered.snapshot, Some(snapshot_at(6, 1)));
    assert_eq!(recovered.entries, entries(7..=10, 1));

    let mut storage = open(dir.path());
    storage.compact(6).unwrap();
    storage.append(&entries(11..=12, 1)).unwrap();
    storage.sync().unwrap();
    drop(storage);
    let recovered = reopen(dir.path());
    assert_eq!(recovered.snapshot, Some(snapshot_at(6, 1)));
    assert_eq!(recovered.entries, entries(7..=12, 1));
}

/// A snapshot installed from the leader while the node's own older one is
/// being written wins: the writer leaves it in place, and the log cannot
/// be compacted past what is stored.
#[test]
fn a_background_snapshot_never_replaces_a_newer_one_figure_13() {
    let dir = TempDir::new().unwrap();
    let mut storage = open(dir.path());
    storage.save_hard_state(term(2)).unwrap();
    storage.append(&entries(1..=5, 1)).unwrap();
    storage.sync().unwrap();
    let mut writer = storage.snapshot_writer();
    storage.save_snapshot(&snapshot_at(20, 2), false).unwrap();
    assert!(!writer.write_snapshot(&snapshot_at(4, 1)).unwrap());
    assert!(storage.compact(21).is_err(), "no snapshot reaches 21");
    drop(storage);
    let recovered = reopen(dir.path());
    assert_eq!(recovered.snapshot, Some(snapshot_at(20, 2)));
    assert_eq!(recovered.entries, []);
    assert!(!dir.path().join("snapshot.background.tmp").exists());
}

/// `raft-kv snapshot restore`: a seeded dir opens as a server that has the
/// snapshot, an empty log after it, and the snapshot's term; the file of a
/// backup is the storage's own snapshot file, and damage in it is refused.
#[test]
fn a_seeded_data_dir_recovers_the_snapshot_its_term_and_an_empty_log() {
    let base = TempDir::new().unwrap();
    let snapshot = Snapshot {
        last_included_index: 41,
        last_included_term: 3,
        data: b"the state machine".to_vec(),
        configuration: None,
    };
    let file = base.path().join("backup.snap");
    fs::write(&file, raft_kv::storage::snapshot_file_bytes(&snapshot)).unwrap();
    assert_eq!(
        raft_kv::storage::read_snapshot_file(&file).unwrap(),
        snapshot
    );

    let dir = base.path().join("node1");
    // What an interrupted restore left beside it is cleared first.
    fs::create_dir(base.path().join(".node1.restoring")).unwrap();
    raft_kv::storage::seed_data_dir(&dir, &snapshot, b"cluster file").unwrap();
    assert!(!base.path().join(".node1.restoring").exists());
    let storage = open(&dir);
    assert_eq!(
        storage.cluster_file().unwrap().as_deref(),
        Some(&b"cluster file"[..])
    );
    drop(storage);
    let recovered = reopen(&dir);
    assert_eq!(recovered.hard_state, term(3));
    assert_eq!(recovered.snapshot, Some(snapshot.clone()));
    assert!(recovered.entries.is_empty());

    let again = raft_kv::storage::seed_data_dir(&dir, &snapshot, b"other").unwrap_err();
    assert!(again.to_string().contains("is not empty"), "{again}");
    assert_eq!(
        open(&dir).cluster_file().unwrap().as_deref(),
        Some(&b"cluster file"[..])
    );

    let mut damaged = fs::read(&file).unwrap();
    damaged[10] ^= 1;
    fs::write(&file, damaged).unwrap();
    let error = raft_kv::storage::read_snapshot_file(&file).unwrap_err();
    assert!(error.to_string().contains("crc32 mismatch"), "{error}");
}
