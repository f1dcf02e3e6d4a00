//! What a node shows a viewer (proto/watch.proto), and the fault injection
//! behind the page's partition button.
//!
//! - [`Publisher`], on the event loop: after a turn, a [`View`] of the
//!   node's Raft state goes into a `tokio::sync::watch` slot, which keeps
//!   only the newest — at most one every [`EVERY`] unless the role or term
//!   changed, so a busy loop builds a view a few dozen times a second, and
//!   never waits for a reader.
//! - [`Traffic`], on the bridge: per peer and message kind, atomic counts
//!   of what was sent and received; the watch RPC sends their differences.
//! - [`Faults`], on the bridge: the peers whose messages are dropped, in
//!   both directions, at the edge where they leave or arrive. The Raft core
//!   sees only a network that loses messages.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::raft::{LogIndex, Message, NodeId, RaftNode, Role, StateMachine, Term};
use crate::server::metrics::{kind, MESSAGE_KINDS};

/// How often, at most, a view is published when only counters moved.
const EVERY: Duration = Duration::from_millis(50);
/// How many of the log's last entries a view shows the terms of.
pub const TAIL: u64 = 24;

/// The node's Raft state as the event loop last published it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub id: NodeId,
    pub role: &'static str,
    pub term: Term,
    pub voted_for: Option<NodeId>,
    pub leader_id: Option<NodeId>,
    pub commit_index: LogIndex,
    pub last_applied: LogIndex,
    pub last_log_index: LogIndex,
    pub snapshot_index: LogIndex,
    /// the terms of the log's last entries, the first at `tail_start`
    pub tail_start: LogIndex,
    pub tail_terms: Vec<Term>,
    /// on a leader: (peer, nextIndex, matchIndex)
    pub followers: Vec<(NodeId, LogIndex, LogIndex)>,
    /// (ticks elapsed, timeout in ticks) of the election timer
    pub election_timer: (u64, u64),
}

impl View {
    pub fn of<S: StateMachine>(node: &RaftNode<S>) -> View {
        let log = node.log();
        let last = log.last_index();
        let tail_start = last.saturating_sub(TAIL - 1).max(log.first_index());
        let tail_terms = (tail_start..=last)
            .map(|i| log.term_at(i).unwrap_or(0))
            .collect();
        let followers = match node.role() {
            Role::Leader(leader) => leader
                .next_index
                .iter()
                .map(|(&peer, &next)| {
                    let matched = leader.match_index.get(&peer).copied().unwrap_or(0);
                    (peer, next, matched)
                })
                .collect(),
            _ => Vec::new(),
        };
        View {
            id: node.id(),
            role: node.role().name(),
            term: node.current_term(),
            voted_for: node.voted_for(),
            leader_id: node.leader_id(),
            commit_index: node.commit_index(),
            last_applied: node.last_applied(),
            last_log_index: last,
            snapshot_index: log.snapshot_index(),
            tail_start,
            tail_terms,
            followers,
            election_timer: node.election_timer(),
        }
    }
}

/// The event loop's side of the watch stream.
pub struct Publisher {
    slot: watch::Sender<Arc<View>>,
    published_at: Instant,
    /// what was published last: (term, role, counters)
    last: (Term, &'static str, [u64; 5]),
}

impl Publisher {
    /// The publisher, and the slot readers watch.
    pub fn new() -> (Publisher, watch::Receiver<Arc<View>>) {
        let (slot, view) = watch::channel(Arc::new(View::default()));
        let publisher = Publisher {
            slot,
            published_at: Instant::now(),
            last: (0, "", [0; 5]),
        };
        (publisher, view)
    }

    /// Publish the node's state if it changed, no more often than
    /// [`EVERY`] unless its term or role did.
    pub fn after_turn<S: StateMachine>(&mut self, node: &RaftNode<S>) {
        let leader = node.leader_id().unwrap_or(0);
        let now = (
            node.current_term(),
            node.role().name(),
            [
                leader,
                node.commit_index(),
                node.last_applied(),
                node.log().last_index(),
                node.election_timer().0,
            ],
        );
        if now == self.last {
            return;
        }
        let urgent = (now.0, now.1) != (self.last.0, self.last.1);
        if !urgent && self.published_at.elapsed() < EVERY {
            return;
        }
        self.last = now;
        self.published_at = Instant::now();
        self.slot.send_replace(Arc::new(View::of(node)));
    }
}

/// Counts of one kind of message to or from one peer.
#[derive(Default)]
struct Counts {
    count: AtomicU64,
    entries: AtomicU64,
    dropped: AtomicU64,
}

/// One direction's counts, per peer and kind.
type Table = HashMap<NodeId, [Counts; MESSAGE_KINDS.len()]>;

/// What crossed the bridge, per peer and kind, since the node started.
pub struct Traffic {
    sent: Table,
    received: Table,
}

/// One row of [`Traffic::totals`]: (peer, kind, count, entries, dropped).
pub type Total = (NodeId, &'static str, u64, u64, u64);

impl Traffic {
    pub fn new(peers: impl IntoIterator<Item = NodeId>) -> Traffic {
        let peers: Vec<NodeId> = peers.into_iter().collect();
        let table = || peers.iter().map(|&p| (p, Default::default())).collect();
        Traffic {
            sent: table(),
            received: table(),
        }
    }

    /// Whether `peer` is one of this node's peers.
    pub fn knows(&self, peer: NodeId) -> bool {
        self.sent.contains_key(&peer)
    }

    pub fn sent(&self, peer: NodeId, message: &Message, dropped: bool) {
        count(&self.sent, peer, message, dropped);
    }

    pub fn received(&self, peer: NodeId, message: &Message, dropped: bool) {
        count(&self.received, peer, message, dropped);
    }

    /// Every nonzero count: (sent, received).
    pub fn totals(&self) -> (Vec<Total>, Vec<Total>) {
        (totals(&self.sent), totals(&self.received))
    }
}

fn count(table: &Table, peer: NodeId, message: &Message, dropped: bool) {
    let Some(kinds) = table.get(&peer) else {
        return;
    };
    let counts = &kinds[kind(message)];
    counts.count.fetch_add(1, Ordering::Relaxed);
    if let Message::AppendEntries(m) = message {
        counts
            .entries
            .fetch_add(m.entries.len() as u64, Ordering::Relaxed);
    }
    if dropped {
        counts.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

fn totals(table: &Table) -> Vec<Total> {
    let mut rows = Vec::new();
    for (&peer, kinds) in table {
        for (counts, name) in kinds.iter().zip(MESSAGE_KINDS) {
            let count = counts.count.load(Ordering::Relaxed);
            if count > 0 {
                let entries = counts.entries.load(Ordering::Relaxed);
                let dropped = counts.dropped.load(Ordering::Relaxed);
                rows.push((peer, name, count, entries, dropped));
            }
        }
    }
    rows.sort_unstable();
    rows
}

/// `now` less `before`, row by row: what happened in between.
pub fn since(before: &[Total], now: &[Total]) -> Vec<Total> {
    now.iter()
        .filter_map(|&(peer, name, count, entries, dropped)| {
            let old = before
                .iter()
                .find(|row| (row.0, row.1) == (peer, name))
                .map_or((0, 0, 0), |row| (row.2, row.3, row.4));
            let row = (
                peer,
                name,
                count.saturating_sub(old.0),
                entries.saturating_sub(old.1),
                dropped.saturating_sub(old.2),
            );
            (row.2 > 0).then_some(row)
        })
        .collect()
}

/// The peers this node is cut off from (`SetPartition`), and whether it
/// may be told to be at all (`--allow-fault-injection`).
#[derive(Default)]
pub struct Faults {
    pub allowed: bool,
    /// a cheap check for the usual case: no partition
    any: AtomicBool,
    blocked: Mutex<BTreeSet<NodeId>>,
}

impl Faults {
    pub fn new(allowed: bool) -> Faults {
        Faults {
            allowed,
            ..Faults::default()
        }
    }

    /// Whether messages to and from `peer` are dropped.
    pub fn drops(&self, peer: NodeId) -> bool {
        self.any.load(Ordering::Relaxed)
            && self
                .blocked
                .lock()
                .expect("no panics while held")
                .contains(&peer)
    }

    pub fn set(&self, peers: BTreeSet<NodeId>) {
        let mut blocked = self.blocked.lock().expect("no panics while held");
        self.any.store(!peers.is_empty(), Ordering::Relaxed);
        *blocked = peers;
    }

    pub fn blocked(&self) -> Vec<NodeId> {
        let blocked = self.blocked.lock().expect("no panics while held");
        blocked.iter().copied().collect()
    }
}

/// What the bridge needs to serve the watch stream and fault injection.
#[derive(Clone)]
pub struct Watching {
    pub view: watch::Receiver<Arc<View>>,
    pub traffic: Arc<Traffic>,
    pub faults: Arc<Faults>,
    pub tick_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{RequestVote, RequestVoteReply};

    #[test]
    fn traffic_counts_by_peer_and_kind_and_since_subtracts() {
        let traffic = Traffic::new([2, 3]);
        let vote = Message::RequestVote(RequestVote {
            term: 1,
            candidate_id: 1,
            last_log_index: 0,
            last_log_term: 0,
            leadership_transfer: false,
        });
        let before = traffic.totals().0;
        traffic.sent(2, &vote, false);
        traffic.sent(2, &vote, true);
        traffic.sent(9, &vote, false);
        let reply = Message::RequestVoteReply(RequestVoteReply {
            term: 1,
            vote_granted: true,
        });
        traffic.received(3, &reply, false);
        let (sent, received) = traffic.totals();
        assert_eq!(since(&before, &sent), vec![(2, "RequestVote", 2, 0, 1)]);
        assert_eq!(received, vec![(3, "RequestVoteReply", 1, 0, 0)]);
        assert_eq!(since(&sent, &sent), vec![]);
    }

    #[test]
    fn faults_drop_only_the_peers_set() {
        let faults = Faults::new(true);
        assert!(!faults.drops(2));
        faults.set([2].into());
        assert!(faults.drops(2) && !faults.drops(3));
        faults.set(BTreeSet::new());
        assert!(!faults.drops(2));
    }
}
