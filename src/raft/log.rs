//! The replicated log (Figure 2 "log[]", §5.3) and the commands it carries.
//!
//! Indexes are 1-based as in the paper: the first entry has index 1, and
//! index 0 with term 0 stands for "before the first entry". After a snapshot
//! (§7) the log starts just after `snapshot_index`.
//!
//! The log owns the node's [`Storage`]: every change goes to disk inside the
//! method that makes it, so no caller can forget to persist (Figure 2:
//! "updated on stable storage before responding to RPCs").

mod entries;

use super::membership::Configuration;
use super::message::{LogIndex, Term};
use super::storage::{HardState, Snapshot, Storage};
use entries::Entries;

/// What a log entry carries (Figure 2: "each entry contains command for
/// state machine"). The state machine's commands are bytes to Raft: it
/// stores, replicates and hands them back in order, and never looks inside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// The entry a new leader appends to commit an entry of its own term
    /// (§8). It is not given to the state machine.
    Noop,
    /// A command for the state machine, encoded by it
    /// ([`StateMachine`](super::state_machine::StateMachine)).
    Client(Vec<u8>),
    /// A cluster configuration (§6): in force on every server from the
    /// moment it is in that server's log. Not given to the state machine.
    Config(Configuration),
}

impl Command {
    /// Roughly how many bytes the command takes on the wire, for batching.
    pub fn size(&self) -> usize {
        match self {
            Command::Noop => 8,
            Command::Client(bytes) => bytes.len() + 8,
            Command::Config(configuration) => configuration.encode().len() + 8,
        }
    }
}

/// One log entry: a command and the term in which the leader received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: LogIndex,
    pub term: Term,
    pub command: Command,
}

/// The log: a snapshot of its prefix plus the entries after it, kept in
/// memory and mirrored on stable storage.
pub struct Log {
    storage: Box<dyn Storage>,
    /// index of the last entry covered by the snapshot (0 = no snapshot)
    snapshot_index: LogIndex,
    /// term of that entry
    snapshot_term: Term,
    /// the latest snapshot, kept to send to followers that lag behind it
    snapshot: Option<Snapshot>,
    /// entries snapshot_index+1 ..= last_index
    entries: Entries,
    /// the bytes of their commands (what triggers the next snapshot, §7)
    bytes: usize,
    /// entries up to here are on stable storage (see `sync`)
    durable_index: LogIndex,
    /// where the log was truncated since the last `sync`, in order (see
    /// [`Durable::still_holds`])
    truncated_since_sync: Vec<LogIndex>,
    /// the configuration entries among `entries`, in index order (§6)
    configurations: Vec<(LogIndex, Configuration)>,
}

/// Proof that every entry appended so far is on stable storage: only
/// [`Log::sync`] makes one. Replies that speak for the log are released
/// with it, so none can leave before the fsync it depends on (Figure 2:
/// "Updated on stable storage before responding to RPCs").
#[derive(Debug)]
pub struct Durable {
    /// the last index on stable storage when the proof was made
    through: LogIndex,
    /// where the log was truncated since the sync before, in order
    truncated: Vec<LogIndex>,
}

impl Durable {
    /// Whether the log still holds, durably, what a reply said it held
    /// through `index` when the log had been truncated `truncations` times
    /// since the last sync ([`Log::truncations_since_sync`]): not if a newer
    /// leader's entries replaced those entries since (§5.3), even if as many
    /// are durable again.
    pub fn still_holds(&self, index: LogIndex, truncations: usize) -> bool {
        index <= self.through && self.truncated.iter().skip(truncations).all(|&t| index < t)
    }
}

/// An I/O error while persisting leaves the server unable to keep its
/// promises; it stops rather than answer from state it could not save.
fn fatal(what: &str, error: std::io::Error) -> ! {
    panic!("stable storage failed while {what}: {error}; stopping this node")
}

impl Log {
    /// Restore the log from what `storage` recovered, returning the hard state
    /// alongside it.
    pub fn recover(mut storage: Box<dyn Storage>) -> (Log, HardState) {
        let recovered = storage.recover().unwrap_or_else(|e| fatal("recovering", e));
        let (snapshot_index, snapshot_term) = recovered
            .snapshot
            .as_ref()
            .map_or((0, 0), |s| (s.last_included_index, s.last_included_term));
        let mut entries = recovered.entries;
        // A crash between saving a snapshot and trimming the log leaves entries
        // the snapshot covers, or (after InstallSnapshot) entries that conflict
        // with it. Figure 13 receiver steps 6–7, applied again at recovery:
        // keep the entries after the snapshot only if the log agrees with it.
        let agrees = match entries.iter().position(|e| e.index == snapshot_index) {
            Some(at) if entries[at].term == snapshot_term => {
                entries.drain(..=at);
                true
            }
            Some(_) => false,
            None => entries
                .first()
                .is_none_or(|e| e.index == snapshot_index + 1),
        };
        if !agrees {
            let first_stored = entries.first().map_or(snapshot_index + 1, |e| e.index);
            entries.clear();
            storage
                .truncate_from(first_stored)
                .and_then(|_| storage.sync())
                .unwrap_or_else(|e| fatal("discarding a log that conflicts with the snapshot", e));
        }
        let durable_index = snapshot_index + entries.len() as u64;
        let configurations = configurations_in(&entries);
        let log = Log {
            storage,
            snapshot_index,
            snapshot_term,
            snapshot: recovered.snapshot,
            bytes: entries.iter().map(|e| e.command.size()).sum(),
            entries: Entries::from(entries),
            durable_index,
            truncated_since_sync: Vec::new(),
            configurations,
        };
        (log, recovered.hard_state)
    }

    /// Persist `current_term` and `voted_for` (durable when this returns).
    pub fn save_hard_state(&mut self, hard_state: HardState) {
        self.storage
            .save_hard_state(hard_state)
            .unwrap_or_else(|e| fatal("saving current_term and voted_for", e));
    }

    pub fn last_index(&self) -> LogIndex {
        self.snapshot_index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot_term, |e| e.term)
    }

    /// The last index that is on stable storage. A leader counts itself in a
    /// majority only up to here (dissertation §10.2.1).
    pub fn durable_index(&self) -> LogIndex {
        self.durable_index
    }

    pub fn snapshot_index(&self) -> LogIndex {
        self.snapshot_index
    }

    pub fn snapshot_term(&self) -> Term {
        self.snapshot_term
    }

    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// The first index still held as an entry (not compacted into the snapshot).
    pub fn first_index(&self) -> LogIndex {
        self.snapshot_index + 1
    }

    /// The term of the entry at `index`: 0 for index 0, the snapshot's term
    /// at its last index, None when the entry is compacted away or beyond the end.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.get(index).map(|e| e.term)
    }

    /// The entry at `index`, if the log still holds it.
    pub fn get(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    /// Entries from `from` to the end, in order.
    pub fn entries_from(&self, from: LogIndex) -> impl Iterator<Item = &Entry> {
        assert!(from > self.snapshot_index, "entry {from} is compacted");
        self.entries
            .iter_from((from - self.snapshot_index - 1) as usize)
    }

    /// Number of entries held outside the snapshot.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of the commands held outside the snapshot (see [`Command::size`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first index of the entries of `term`, searching back from `from`
    /// (the conflict hint of §5.3).
    pub fn first_index_of_term(&self, term: Term, from: LogIndex) -> LogIndex {
        let mut index = from;
        while index > self.first_index() && self.term_at(index - 1) == Some(term) {
            index -= 1;
        }
        index
    }

    /// The last index whose entry has `term`, or None (used by the leader to
    /// apply the conflict hint).
    pub fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        self.entries
            .iter_rev()
            .find(|e| e.term == term)
            .map(|e| e.index)
    }

    /// The latest configuration in the log (§6: in force, committed or
    /// not) and its index: a configuration entry's, or the snapshot's. None
    /// for a log that never held one.
    pub fn configuration(&self) -> Option<(LogIndex, &Configuration)> {
        match self.configurations.last() {
            Some((index, configuration)) => Some((*index, configuration)),
            None => self.snapshot_configuration(),
        }
    }

    /// The configuration in force just after entry `index` (the one a
    /// snapshot through `index` carries, §7). None if the log never held one.
    pub fn configuration_at(&self, index: LogIndex) -> Option<&Configuration> {
        let in_entries = self
            .configurations
            .iter()
            .rev()
            .find(|(at, _)| *at <= index);
        match in_entries {
            Some((_, configuration)) => Some(configuration),
            None => self.snapshot_configuration().map(|(_, c)| c),
        }
    }

    /// The configuration before the latest one, if the log still has it.
    pub fn previous_configuration(&self) -> Option<&Configuration> {
        match self.configurations.len() {
            0 => None,
            1 => self.snapshot_configuration().map(|(_, c)| c),
            n => Some(&self.configurations[n - 2].1),
        }
    }

    fn snapshot_configuration(&self) -> Option<(LogIndex, &Configuration)> {
        let snapshot = self.snapshot.as_ref()?;
        let configuration = snapshot.configuration.as_ref()?;
        Some((snapshot.last_included_index, configuration))
    }

    /// Append entries (Figure 2 "log[]"). They are written, not yet durable:
    /// [`Log::sync`] makes everything appended in one event-loop turn durable
    /// with one fsync (group commit), and only its [`Durable`] proof releases
    /// the replies that depend on them. The leader counts itself in a
    /// majority only up to `durable_index` (dissertation §10.2.1).
    pub fn append(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        for (entry, expected) in entries.iter().zip(self.last_index() + 1..) {
            assert_eq!(entry.index, expected, "log entries must be contiguous");
        }
        self.storage
            .append(&entries)
            .unwrap_or_else(|e| fatal("appending log entries", e));
        self.bytes += entries.iter().map(|e| e.command.size()).sum::<usize>();
        self.configurations.extend(configurations_in(&entries));
        self.entries.extend(entries);
    }

    /// Make every entry appended so far durable: one fsync however many
    /// were appended.
    pub fn sync(&mut self) -> Durable {
        if self.durable_index < self.last_index() {
            // BEGIN SOLUTION persistence
            self.storage
                .sync()
                .unwrap_or_else(|e| fatal("syncing the log", e));
            // SKELETON
            // // Written, never synced: lost when the server crashes.
            // END SOLUTION
            self.durable_index = self.last_index();
        }
        Durable {
            through: self.durable_index,
            truncated: std::mem::take(&mut self.truncated_since_sync),
        }
    }

    /// How many times the log was truncated since the last `sync`.
    pub fn truncations_since_sync(&self) -> usize {
        self.truncated_since_sync.len()
    }

    /// Delete the entry at `index` and all that follow it (Figure 2,
    /// AppendEntries receiver step 3). Durable when this returns.
    pub fn truncate_from(&mut self, index: LogIndex) {
        assert!(
            index > self.snapshot_index,
            "cannot truncate into the snapshot"
        );
        if index > self.last_index() {
            return;
        }
        // BEGIN SOLUTION persistence
        self.storage
            .truncate_from(index)
            .and_then(|_| self.storage.sync())
            .unwrap_or_else(|e| fatal("truncating the log", e));
        // SKELETON
        // self.storage
        //     .truncate_from(index)
        //     .unwrap_or_else(|e| fatal("truncating the log", e));
        // END SOLUTION
        self.bytes -= self
            .entries
            .truncate((index - self.snapshot_index - 1) as usize);
        self.durable_index = self.durable_index.min(self.last_index());
        self.truncated_since_sync.push(index);
        // §6: a server whose configuration entry is deleted goes back to the
        // one before it.
        self.configurations.retain(|&(at, _)| at < index);
    }

    /// Store a snapshot and discard the entries it covers (§7). With
    /// `keep_suffix`, entries after the snapshot stay (Figure 13 step 6: the
    /// log already has the snapshot's last entry); otherwise the whole log is
    /// discarded (step 7). Durable when this returns.
    pub fn install_snapshot(&mut self, snapshot: Snapshot, keep_suffix: bool) {
        let index = snapshot.last_included_index;
        // The storage makes the snapshot durable before it trims the log: a
        // crash in between leaves both, and `recover` reconciles them.
        let keep_suffix = keep_suffix && index <= self.last_index();
        self.storage
            .save_snapshot(&snapshot, keep_suffix)
            .unwrap_or_else(|e| fatal("saving a snapshot", e));
        if keep_suffix {
            self.drop_through(index);
        } else {
            // What was held may differ from what the snapshot replaces it with.
            self.truncated_since_sync.push(self.snapshot_index + 1);
            self.entries.clear();
            self.bytes = 0;
            self.configurations.clear();
        }
        self.set_snapshot(snapshot);
    }

    /// Discard the entries through `snapshot.last_included_index`, which it
    /// covers (§7): the node's own snapshot, taken in the background, is
    /// durable now. Until this call the log kept them, so a crash while it
    /// was written lost nothing. Durable when this returns.
    pub fn compact(&mut self, snapshot: Snapshot) {
        let index = snapshot.last_included_index;
        assert_eq!(
            self.term_at(index),
            Some(snapshot.last_included_term),
            "a snapshot of applied entries agrees with the log"
        );
        self.storage
            .compact(index)
            .unwrap_or_else(|e| fatal("compacting the log", e));
        self.drop_through(index);
        self.set_snapshot(snapshot);
    }

    /// Drop the entries through `index` from memory.
    fn drop_through(&mut self, index: LogIndex) {
        self.bytes -= self
            .entries
            .drop_front((index - self.snapshot_index) as usize);
        // The snapshot carries the configuration as of its last index (§7).
        self.configurations.retain(|&(at, _)| at > index);
    }

    fn set_snapshot(&mut self, snapshot: Snapshot) {
        self.snapshot_index = snapshot.last_included_index;
        self.snapshot_term = snapshot.last_included_term;
        self.snapshot = Some(snapshot);
        self.durable_index = self
            .durable_index
            .clamp(self.snapshot_index, self.last_index());
    }
}

/// The configuration entries among `entries`, with their indexes.
fn configurations_in(entries: &[Entry]) -> Vec<(LogIndex, Configuration)> {
    let configurations = entries.iter().filter_map(|e| match &e.command {
        Command::Config(configuration) => Some((e.index, configuration.clone())),
        _ => None,
    });
    configurations.collect()
}
