//! The stable-storage boundary of the Raft core.
//!
//! Figure 2 marks `current_term`, `voted_for` and `log[]` as persistent:
//! "updated on stable storage before responding to RPCs". The core never
//! touches files itself; it calls a [`Storage`]. `src/storage/` implements it on
//! files with fsync, and [`MemStorage`] is the simulated disk of the test
//! harness, which forgets everything not yet synced when a node crashes.

use std::io;
use std::sync::{Arc, Mutex};

use super::log::Entry;
use super::membership::Configuration;
use super::message::{LogIndex, NodeId, Term};
use super::state_machine::FrozenState;

/// The persistent state of Figure 2 besides the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// latest term server has seen (initialized to 0 on first boot, increases monotonically)
    pub current_term: Term,
    /// candidate_id that received vote in current term (None if none)
    pub voted_for: Option<NodeId>,
}

/// A snapshot of the state machine (§7): it replaces every log entry up
/// through `last_included_index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// the snapshot replaces all entries up through and including this index
    pub last_included_index: LogIndex,
    /// term of last_included_index
    pub last_included_term: Term,
    /// the state machine, encoded by `kv::StateMachine::snapshot`
    pub data: Vec<u8>,
    /// the configuration in force after `last_included_index` (§7: "the
    /// latest configuration as of the last included index"); None in a
    /// snapshot made before configurations were stored, whose cluster never
    /// changed: the members it started with
    pub configuration: Option<Configuration>,
}

/// A snapshot the core has started (§7): the state machine frozen just
/// after applying `last_included_index`. The runtime encodes and writes it
/// away from the event loop, with the storage's [`SnapshotWriter`], and
/// reports back through `RaftNode::snapshot_saved`.
pub struct SnapshotToSave {
    pub last_included_index: LogIndex,
    pub last_included_term: Term,
    pub configuration: Configuration,
    pub state: FrozenState,
}

impl SnapshotToSave {
    /// Encode the frozen state: the snapshot to write.
    pub fn encode(self) -> Snapshot {
        Snapshot {
            last_included_index: self.last_included_index,
            last_included_term: self.last_included_term,
            data: (self.state)(),
            configuration: Some(self.configuration),
        }
    }
}

impl std::fmt::Debug for SnapshotToSave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotToSave")
            .field("last_included_index", &self.last_included_index)
            .field("last_included_term", &self.last_included_term)
            .finish_non_exhaustive()
    }
}

/// Everything a node had made durable when it stopped.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    /// The log entries after the snapshot (or from index 1), in index order.
    /// Entries at or below the snapshot's index may still be present if the
    /// node crashed while compacting; the core drops them.
    pub entries: Vec<Entry>,
}

/// Stable storage for one Raft server.
///
/// Contract: a method that says "durable" has fsynced before it returns.
/// `append` and `truncate_from` only write; the caller makes them durable with
/// `sync`, so that all entries appended in one event-loop turn cost one fsync
/// (group commit). An I/O error is returned; the core treats it as fatal,
/// because a server that cannot persist must not answer RPCs.
pub trait Storage: Send {
    /// What was durable when the node last stopped (empty on first boot).
    fn recover(&mut self) -> io::Result<Recovered>;
    /// Replace `current_term` and `voted_for`. Durable (atomically: a reader
    /// sees the old or the new state, never a mix).
    fn save_hard_state(&mut self, hard_state: HardState) -> io::Result<()>;
    /// Append entries whose indexes follow the last stored entry. Not durable until `sync`.
    fn append(&mut self, entries: &[Entry]) -> io::Result<()>;
    /// Remove the entry at `index` and every entry after it. Not durable until `sync`.
    fn truncate_from(&mut self, index: LogIndex) -> io::Result<()>;
    /// Make every `append` and `truncate_from` so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Store `snapshot` durably, replacing any older one, then discard the log
    /// entries it covers (index <= last_included_index) and, unless
    /// `keep_suffix`, every entry after it too (Figure 13 step 7). The log is
    /// trimmed in one step after the snapshot is durable, so a crash leaves
    /// either the old log (which recovery checks against the snapshot) or the
    /// trimmed one — never a suffix without the entry that shows whether it
    /// agrees with the snapshot.
    fn save_snapshot(&mut self, snapshot: &Snapshot, keep_suffix: bool) -> io::Result<()>;
    /// A writer of this node's own snapshots, for another thread (§7: the
    /// node goes on while its snapshot is written).
    fn snapshot_writer(&self) -> Box<dyn SnapshotWriter>;
    /// Discard the log entries through `index`, which a snapshot that the
    /// [`SnapshotWriter`] made durable covers. Durable. A crash before it
    /// leaves the snapshot beside the whole log, which `recover` reconciles.
    fn compact(&mut self, index: LogIndex) -> io::Result<()>;
}

/// Writes a node's snapshots on a thread of its own.
pub trait SnapshotWriter: Send {
    /// Store `snapshot` durably, atomically replacing the stored one — unless
    /// that one is as new or newer (installed from the leader meanwhile):
    /// then nothing changes and this returns false. Never touches the log.
    fn write_snapshot(&mut self, snapshot: &Snapshot) -> io::Result<bool>;
}

/// The simulated disk of the test harness: what `sync` (or a durable method)
/// has made durable survives [`MemStorage::crash`]; anything else is lost.
///
/// Cloning gives another handle to the same disk, so the harness keeps one
/// handle while a node owns the other, and hands it to the node's next
/// incarnation after a crash.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    disk: Arc<Mutex<MemDisk>>,
}

#[derive(Clone, Debug, Default)]
struct MemDisk {
    durable: Recovered,
    /// the state as written, including what is not yet synced
    written: Recovered,
    /// the lowest log index appended or truncated since the last sync: `sync`
    /// copies only from there, so a long run does not copy the whole log at
    /// every fsync
    unsynced_from: Option<LogIndex>,
    fsyncs: u64,
}

impl MemDisk {
    fn touch(&mut self, index: LogIndex) {
        self.unsynced_from = Some(self.unsynced_from.map_or(index, |i| i.min(index)));
    }
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Power loss: everything written but not synced is gone.
    pub fn crash(&self) {
        let mut disk = self.disk.lock().unwrap();
        disk.written = disk.durable.clone();
        disk.unsynced_from = None;
    }

    /// How many fsyncs this disk has seen (the group-commit tests count them).
    pub fn fsyncs(&self) -> u64 {
        self.disk.lock().unwrap().fsyncs
    }

    /// Damage: the durable log loses its entries from `index` on, as when
    /// a node's log is cut at a damaged record (for tests).
    pub fn lose_entries_from(&self, index: LogIndex) {
        let mut disk = self.disk.lock().unwrap();
        disk.durable.entries.retain(|e| e.index < index);
        disk.written = disk.durable.clone();
        disk.unsynced_from = None;
    }

    /// The durable log entries (for tests).
    pub fn durable_entries(&self) -> Vec<Entry> {
        self.disk.lock().unwrap().durable.entries.clone()
    }

    /// The last index of the durable snapshot (0: none), and the index of
    /// the first durable log entry (for the simulator's checks, which run
    /// after every step: no copies).
    pub fn durable_bounds(&self) -> (LogIndex, Option<LogIndex>) {
        let disk = self.disk.lock().unwrap();
        let snapshot = disk.durable.snapshot.as_ref();
        (
            snapshot.map_or(0, |s| s.last_included_index),
            disk.durable.entries.first().map(|e| e.index),
        )
    }

    /// The durable snapshot (for tests).
    pub fn durable_snapshot(&self) -> Option<Snapshot> {
        self.disk.lock().unwrap().durable.snapshot.clone()
    }
}

impl Storage for MemStorage {
    fn recover(&mut self) -> io::Result<Recovered> {
        Ok(self.disk.lock().unwrap().durable.clone())
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        disk.written.hard_state = hard_state;
        disk.durable.hard_state = hard_state;
        disk.fsyncs += 1;
        Ok(())
    }

    fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        if let (Some(last), Some(first)) = (disk.written.entries.last(), entries.first()) {
            assert_eq!(
                first.index,
                last.index + 1,
                "append must follow the last entry"
            );
        }
        if let Some(first) = entries.first() {
            disk.touch(first.index);
        }
        disk.written.entries.extend_from_slice(entries);
        Ok(())
    }

    fn truncate_from(&mut self, index: LogIndex) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        disk.written.entries.retain(|e| e.index < index);
        disk.touch(index);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        if let Some(from) = disk.unsynced_from.take() {
            // Entries are in index order on both sides: replace the durable
            // suffix from `from` with the written one.
            let disk = &mut *disk;
            let keep = disk.durable.entries.partition_point(|e| e.index < from);
            disk.durable.entries.truncate(keep);
            let start = disk.written.entries.partition_point(|e| e.index < from);
            disk.durable
                .entries
                .extend_from_slice(&disk.written.entries[start..]);
        }
        disk.fsyncs += 1;
        Ok(())
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot, keep_suffix: bool) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        let covered = snapshot.last_included_index;
        let keep = |e: &Entry| keep_suffix && e.index > covered;
        disk.written.snapshot = Some(snapshot.clone());
        disk.written.entries.retain(keep);
        disk.durable.snapshot = Some(snapshot.clone());
        disk.durable.entries.retain(keep);
        disk.fsyncs += 1;
        Ok(())
    }

    fn snapshot_writer(&self) -> Box<dyn SnapshotWriter> {
        Box::new(self.clone())
    }

    fn compact(&mut self, index: LogIndex) -> io::Result<()> {
        let mut disk = self.disk.lock().unwrap();
        disk.written.entries.retain(|e| e.index > index);
        disk.durable.entries.retain(|e| e.index > index);
        disk.fsyncs += 1;
        Ok(())
    }
}

/// The simulated disk writes a snapshot at once; the test harness decides
/// when (src/sim).
impl SnapshotWriter for MemStorage {
    fn write_snapshot(&mut self, snapshot: &Snapshot) -> io::Result<bool> {
        let mut disk = self.disk.lock().unwrap();
        let stored = disk.durable.snapshot.as_ref();
        if stored.is_some_and(|s| s.last_included_index >= snapshot.last_included_index) {
            return Ok(false);
        }
        disk.written.snapshot = Some(snapshot.clone());
        disk.durable.snapshot = Some(snapshot.clone());
        disk.fsyncs += 1;
        Ok(true)
    }
}
