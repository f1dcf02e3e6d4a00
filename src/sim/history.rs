//! What clients saw, checked after every step like the properties of
//! Figure 3: "Read-only operations ... must not return stale data" (§8).
//!
//! - A linearizable read (dissertation §6.4) returns the key's value at some
//!   log index between `lo`, the highest index of a write to the key
//!   acknowledged before the read was issued, and `hi`, the highest index
//!   known committed when it was answered.
//! - A stale read returns the key's value at some index up to the answering
//!   node's `last_applied`: a value that was written, or none.
//!
//! The values come from a reference state machine that replays the
//! committed entries in index order. An acknowledged write's index is the
//! lowest committed index holding exactly its command: with sessions (§6.3)
//! that is the copy that applied, a retry's later copies change nothing.
//! Entries compacted before the checker saw them leave a gap: the replay
//! resumes from a snapshot after it, and a read whose range touches the gap
//! is counted unverified, never failed.

use std::collections::{BTreeMap, HashMap};

use prost::Message as _;

use crate::kv::{self, ClientRequest, ClientResponse, ClientResult, KvStore};
use crate::proto::kv as pb;
use crate::raft::{Command, LogIndex, NodeId, RaftNode, RequestId, Term};

/// A write command, as the key that finds its first committed copy.
type Write = (String, Option<String>, u64, u64);

/// The key-value command an entry carries, if any.
fn kv_command(command: &Command) -> Option<kv::Command> {
    match command {
        Command::Client(bytes) => kv::decode_command(bytes).ok(),
        Command::Noop | Command::Config(_) => None,
    }
}

fn write_of(command: &kv::Command) -> Write {
    match command.clone() {
        kv::Command::Set {
            key,
            value,
            client_id,
            sequence,
            ..
        } => (key, Some(value), client_id, sequence),
        kv::Command::Delete {
            key,
            client_id,
            sequence,
            ..
        } => (key, None, client_id, sequence),
    }
}

fn write_of_request(request: &ClientRequest) -> Option<Write> {
    match request.clone() {
        ClientRequest::Set {
            key,
            value,
            client_id,
            sequence,
        } => Some((key, Some(value), client_id, sequence)),
        ClientRequest::Delete {
            key,
            client_id,
            sequence,
        } => Some((key, None, client_id, sequence)),
        ClientRequest::Get { .. } => None,
    }
}

/// How many answers the checker verified, and how many it could not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub linearizable_verified: u64,
    /// answered reads whose range touched a gap in the replay, or whose key
    /// had an acknowledged write the checker could not place in the log
    pub linearizable_unverified: u64,
    pub stale_verified: u64,
    pub stale_unverified: u64,
    /// acknowledged writes found in no committed entry the checker saw
    pub writes_unplaced: u64,
    /// times the replay resumed from a snapshot, and the entries it skipped
    pub gaps: u64,
    pub gap_entries: u64,
}

struct Issued {
    request: ClientRequest,
    at: u64,
    /// linearizable reads: the highest index of a write to the key
    /// acknowledged before the read was issued, with that write's request;
    /// None when such a write could not be placed
    lo: Option<(LogIndex, Option<RequestId>)>,
}

/// An answered read waiting for the replay to reach `hi`.
struct Read {
    request: RequestId,
    node: NodeId,
    answered_at: u64,
    key: String,
    value: Option<String>,
    /// None for a stale read
    lo: Option<(LogIndex, Option<RequestId>)>,
    hi: LogIndex,
}

/// The committed entries replayed in index order into a reference state machine.
#[derive(Default)]
struct Replay {
    state: KvStore,
    applied: LogIndex,
    /// per key, (index, value after it) for every write to it
    versions: HashMap<String, Vec<(LogIndex, Option<String>)>>,
    /// the lowest index of every write command replayed
    first: HashMap<Write, LogIndex>,
    /// (first, last) indices skipped by resuming from a snapshot at `last`
    gaps: Vec<(LogIndex, LogIndex)>,
}

impl Replay {
    fn apply(&mut self, index: LogIndex, command: &Command) {
        self.applied = index;
        if let Some(command) = kv_command(command) {
            self.state.apply_command(index, &command);
            let write = write_of(&command);
            let value = self.state.get(&write.0).map(str::to_owned);
            self.versions
                .entry(write.0.clone())
                .or_default()
                .push((index, value));
            self.first.entry(write).or_insert(index);
        }
    }

    /// Continue after `data`, the state machine at `index`, skipping what
    /// lies between.
    fn resume(&mut self, index: LogIndex, data: &[u8]) {
        let snapshot = pb::StateMachineSnapshot::decode(data).expect("a node's snapshot decodes");
        let state = KvStore::restore_bounded(data, self.state.max_sessions())
            .expect("a node's snapshot decodes");
        self.gaps.push((self.applied + 1, index));
        let mut keys: Vec<String> = self.versions.keys().cloned().collect();
        keys.extend(snapshot.pairs.into_iter().map(|p| p.key));
        for key in keys {
            let value = state.get(&key).map(str::to_owned);
            let versions = self.versions.entry(key).or_default();
            if versions.last().is_none_or(|&(i, _)| i < index) {
                versions.push((index, value));
            }
        }
        self.state = state;
        self.applied = index;
    }

    /// Every value `key` had at an index in lo..=hi.
    fn values(&self, key: &str, lo: LogIndex, hi: LogIndex) -> Vec<Option<String>> {
        let none = Vec::new();
        let versions = self.versions.get(key).unwrap_or(&none);
        let at_lo = versions.partition_point(|&(i, _)| i <= lo);
        let mut values = vec![match at_lo {
            0 => None,
            n => versions[n - 1].1.clone(),
        }];
        for (i, value) in &versions[at_lo..] {
            if *i > hi {
                break;
            }
            if !values.contains(value) {
                values.push(value.clone());
            }
        }
        values
    }

    /// True if some index in lo..=hi lies in a gap (its value unknown).
    /// A gap's last index is known: the snapshot resumed from holds it.
    fn touches_gap(&self, lo: LogIndex, hi: LogIndex) -> bool {
        self.gaps
            .iter()
            .any(|&(first, last)| first < last && first <= hi && lo < last)
    }
}

#[derive(Default)]
pub struct History {
    issued: HashMap<RequestId, Issued>,
    /// answers collected since the last check: (node, request, result, tick)
    answered: Vec<(NodeId, RequestId, ClientResult, u64)>,
    /// per key, the highest index of an acknowledged write, and its request
    acked: HashMap<String, (LogIndex, RequestId)>,
    /// keys with an acknowledged write that could not be placed in the log,
    /// and the highest index it can have (the commit index at its answer);
    /// a write placed beyond that supersedes it
    unplaced: HashMap<String, LogIndex>,
    waiting: Vec<Read>,
    replay: Replay,
    stats: ReadStats,
}

impl History {
    /// A history whose reference state machine keeps at most `max_sessions`
    /// sessions, as the nodes' do (dissertation §6.3).
    pub fn with_max_sessions(max_sessions: usize) -> History {
        let mut history = History::default();
        history.replay.state = KvStore::with_max_sessions(max_sessions);
        history
    }

    /// A client issued `request` at tick `now`.
    pub fn issue(&mut self, id: RequestId, request: &ClientRequest, now: u64) {
        let lo = match request {
            ClientRequest::Get {
                key,
                linearizable: true,
            } => match self.unplaced.contains_key(key) {
                true => None,
                false => Some(
                    self.acked
                        .get(key)
                        .map_or((0, None), |&(i, r)| (i, Some(r))),
                ),
            },
            _ => None,
        };
        let issued = Issued {
            request: request.clone(),
            at: now,
            lo,
        };
        self.issued.insert(id, issued);
    }

    /// Node `node` answered request `id` at tick `now`; checked at the next
    /// `check`, once the commits of the same step are recorded.
    pub fn answer(&mut self, node: NodeId, id: RequestId, result: &ClientResult, now: u64) {
        self.answered.push((node, id, result.clone(), now));
    }

    pub fn stats(&self) -> ReadStats {
        let mut stats = self.stats.clone();
        for read in &self.waiting {
            match read.lo {
                Some(_) => stats.linearizable_unverified += 1,
                None => stats.stale_unverified += 1,
            }
        }
        stats
    }

    /// Replay what is newly committed, place acknowledged writes, and check
    /// every read answered since the last call whose range is replayed.
    pub fn check(
        &mut self,
        nodes: &[(NodeId, &RaftNode<KvStore>)],
        committed: &BTreeMap<LogIndex, (Term, Command)>,
    ) -> Result<(), String> {
        self.advance(nodes, committed);
        let hi = Self::highest_commit(nodes, committed);
        for (node, id, result, now) in std::mem::take(&mut self.answered) {
            let Some(issued) = self.issued.get(&id) else {
                continue; // a test called the core directly
            };
            match (&issued.request, result) {
                (
                    ClientRequest::Set { key, .. } | ClientRequest::Delete { key, .. },
                    Ok(ClientResponse::Set | ClientResponse::Deleted { .. }),
                ) => {
                    let key = key.clone();
                    let write = write_of_request(&issued.request).expect("a write");
                    match self.place(&write, committed) {
                        Some(index) => {
                            if self.unplaced.get(&key).is_some_and(|&bound| index > bound) {
                                self.unplaced.remove(&key);
                            }
                            let acked = self.acked.entry(key).or_insert((index, id));
                            if index > acked.0 {
                                *acked = (index, id);
                            }
                        }
                        None => {
                            self.stats.writes_unplaced += 1;
                            let bound = self.unplaced.entry(key).or_insert(hi);
                            *bound = (*bound).max(hi);
                        }
                    }
                }
                (ClientRequest::Get { key, linearizable }, Ok(ClientResponse::Value(value))) => {
                    let read = Read {
                        request: id,
                        node,
                        answered_at: now,
                        key: key.clone(),
                        value,
                        lo: issued.lo,
                        hi: if *linearizable {
                            hi
                        } else {
                            nodes
                                .iter()
                                .find(|(n, _)| *n == node)
                                .map_or(hi, |(_, n)| n.last_applied())
                        },
                    };
                    if *linearizable && read.lo.is_none() {
                        self.stats.linearizable_unverified += 1;
                    } else {
                        self.waiting.push(read);
                    }
                }
                _ => {}
            }
        }
        self.check_reads()
    }

    fn advance(
        &mut self,
        nodes: &[(NodeId, &RaftNode<KvStore>)],
        committed: &BTreeMap<LogIndex, (Term, Command)>,
    ) {
        let target = Self::highest_commit(nodes, committed);
        loop {
            for (&index, (_, command)) in committed.range(self.replay.applied + 1..) {
                if index != self.replay.applied + 1 {
                    break;
                }
                self.replay.apply(index, command);
            }
            if self.replay.applied >= target {
                return;
            }
            // A hole: its entries were compacted on every node before any
            // check saw them. Resume from the oldest snapshot that covers
            // it, or failing that the newest one inside it.
            let hole_end = committed
                .range(self.replay.applied + 1..)
                .next()
                .map_or(target, |(&i, _)| i - 1);
            let snapshots: Vec<_> = nodes
                .iter()
                .filter_map(|(_, n)| n.log().snapshot())
                .filter(|s| s.last_included_index > self.replay.applied)
                .collect();
            let covering = snapshots
                .iter()
                .filter(|s| s.last_included_index >= hole_end)
                .min_by_key(|s| s.last_included_index);
            let newest = snapshots.iter().max_by_key(|s| s.last_included_index);
            let Some(snapshot) = covering.or(newest) else {
                return;
            };
            self.stats.gaps += 1;
            self.stats.gap_entries += snapshot.last_included_index - self.replay.applied;
            self.replay
                .resume(snapshot.last_included_index, &snapshot.data);
        }
    }

    /// The highest index known committed: entries compacted before any check
    /// saw them are missing from `committed`, not from commit indexes.
    fn highest_commit(
        nodes: &[(NodeId, &RaftNode<KvStore>)],
        committed: &BTreeMap<LogIndex, (Term, Command)>,
    ) -> LogIndex {
        let recorded = committed.last_key_value().map_or(0, |(&i, _)| i);
        nodes
            .iter()
            .map(|(_, n)| n.commit_index())
            .fold(recorded, LogIndex::max)
    }

    /// The index at which an acknowledged write took effect.
    fn place(
        &self,
        write: &Write,
        committed: &BTreeMap<LogIndex, (Term, Command)>,
    ) -> Option<LogIndex> {
        if let Some(&index) = self.replay.first.get(write) {
            return Some(index);
        }
        // Beyond a hole the replay has not passed, or inside a gap filled
        // after the replay resumed past it.
        committed
            .iter()
            .find(|(_, (_, command))| kv_command(command).is_some_and(|c| &write_of(&c) == write))
            .map(|(&index, _)| index)
    }

    fn check_reads(&mut self) -> Result<(), String> {
        let applied = self.replay.applied;
        let (ready, waiting): (Vec<Read>, Vec<Read>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|r| r.hi <= applied);
        self.waiting = waiting;
        for read in ready {
            let (lo, write) = read.lo.unwrap_or((0, None));
            let allowed = self.replay.values(&read.key, lo, read.hi);
            let linearizable = read.lo.is_some();
            if allowed.contains(&read.value) {
                match linearizable {
                    true => self.stats.linearizable_verified += 1,
                    false => self.stats.stale_verified += 1,
                }
                continue;
            }
            if self.replay.touches_gap(lo, read.hi) {
                match linearizable {
                    true => self.stats.linearizable_unverified += 1,
                    false => self.stats.stale_unverified += 1,
                }
                continue;
            }
            let issued = &self.issued[&read.request];
            let (key, value, id, node) = (&read.key, &read.value, read.request, read.node);
            return Err(if linearizable {
                let after = match write {
                    Some(w) => format!("write request {w} at index {lo}"),
                    None => "no write".to_string(),
                };
                format!(
                    "Linearizable read (§6.4): request {id}, Get {key:?} issued at t={} and \
                     answered by n{node} at t={}, returned {value:?}; allowed: {allowed:?}, \
                     the key's values from index {lo} (the latest acknowledged write when the \
                     read was issued: {after}) to index {} (the highest commit index at the answer)",
                    issued.at, read.answered_at, read.hi
                )
            } else {
                format!(
                    "Stale read (§6.4): request {id}, Get {key:?} answered by n{node} at t={} \
                     returned {value:?}, a value the key never had up to n{node}'s last_applied \
                     {}; it had {allowed:?}",
                    read.answered_at, read.hi
                )
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::ClientError;

    fn set(key: &str, value: &str, client_id: u64, sequence: u64) -> ClientRequest {
        ClientRequest::Set {
            key: key.into(),
            value: value.into(),
            client_id,
            sequence,
        }
    }

    fn command(request: &ClientRequest) -> Command {
        match request.clone() {
            ClientRequest::Set {
                key,
                value,
                client_id,
                sequence,
            } => Command::Client(kv::encode_command(&kv::Command::Set {
                key,
                value,
                client_id,
                sequence,
                timestamp_ms: 0,
            })),
            _ => unreachable!(),
        }
    }

    fn get(key: &str, linearizable: bool) -> ClientRequest {
        ClientRequest::Get {
            key: key.into(),
            linearizable,
        }
    }

    fn value(v: Option<&str>) -> ClientResult {
        Ok(ClientResponse::Value(v.map(str::to_owned)))
    }

    /// A log of `commands` from index 1, all committed in term 1.
    fn log(commands: &[Command]) -> BTreeMap<LogIndex, (Term, Command)> {
        (1..).zip(commands.iter().map(|c| (1, c.clone()))).collect()
    }

    #[test]
    fn a_read_must_see_the_writes_acknowledged_before_it() {
        let mut h = History::default();
        let (a, b) = (set("k", "a", 1, 1), set("k", "b", 2, 1));
        h.issue(1, &a, 0);
        h.answer(1, 1, &Ok(ClientResponse::Set), 1);
        let mut committed = log(&[Command::Noop, command(&a)]);
        h.check(&[], &committed).unwrap();
        // Issued after a's acknowledgement, answered once b committed
        // (unacknowledged): either value is linearizable.
        h.issue(2, &get("k", true), 2);
        h.issue(3, &get("k", true), 2);
        h.issue(4, &b, 2);
        committed.insert(3, (1, command(&b)));
        h.answer(1, 2, &value(Some("a")), 3);
        h.answer(1, 3, &value(Some("b")), 3);
        h.check(&[], &committed).unwrap();
        assert_eq!(h.stats().linearizable_verified, 2);
        // Once b is acknowledged, a read issued later must not return a.
        h.answer(1, 4, &Ok(ClientResponse::Set), 4);
        h.check(&[], &committed).unwrap();
        h.issue(5, &get("k", true), 5);
        h.answer(1, 5, &value(Some("a")), 6);
        let error = h.check(&[], &committed).unwrap_err();
        assert!(error.contains("request 5"), "{error}");
        assert!(error.contains(r#"Get "k""#), "{error}");
        assert!(error.contains(r#"returned Some("a")"#), "{error}");
        assert!(error.contains(r#"allowed: [Some("b")]"#), "{error}");
    }

    #[test]
    fn a_retried_write_takes_effect_at_its_first_copy_6_3() {
        let mut h = History::default();
        let (a, b) = (set("k", "a", 1, 1), set("k", "b", 2, 1));
        // a commits at 1, b at 2, a's retry at 3 changes nothing (§6.3).
        let committed = log(&[command(&a), command(&b), command(&a)]);
        h.issue(1, &a, 0);
        h.issue(2, &b, 0);
        h.check(&[], &committed).unwrap();
        h.answer(1, 2, &Ok(ClientResponse::Set), 1);
        h.answer(1, 1, &Ok(ClientResponse::Set), 1);
        h.check(&[], &committed).unwrap();
        h.issue(3, &get("k", true), 2);
        h.answer(1, 3, &value(Some("b")), 2);
        h.check(&[], &committed).unwrap();
        assert_eq!(h.stats().linearizable_verified, 1);
    }

    #[test]
    fn a_stale_read_returns_a_value_written() {
        let mut h = History::default();
        let a = set("k", "a", 1, 1);
        let committed = log(&[command(&a)]);
        for (id, answer) in [(1, None), (2, Some("a")), (3, Some("zzz"))] {
            h.issue(id, &get("k", false), 0);
            h.answer(2, id, &value(answer), 0);
        }
        h.issue(4, &get("k", false), 0);
        h.answer(2, 4, &Err(ClientError::LeadershipLost), 0);
        let error = h.check(&[], &committed).unwrap_err();
        assert!(error.starts_with("Stale read"), "{error}");
        assert!(error.contains("request 3"), "{error}");
        assert_eq!(h.stats().stale_verified, 2);
    }
}
