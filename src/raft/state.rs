//! Figure 2 "State": what every server keeps, what only the leader keeps,
//! and the boundary through which the core talks to the world.
//!
//! The core does no I/O and reads no clock. Time arrives through
//! [`RaftNode::tick`], messages through [`RaftNode::step`], client requests
//! through [`RaftNode::client_requests`]; randomness comes from a seeded RNG;
//! messages and client answers leave through an [`Outbox`]; the disk is behind
//! the [`Storage`](super::storage::Storage) that the [`Log`] owns.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::log::Log;
use super::message::{LogIndex, Message, NodeId, Term};
use super::storage::Storage;
use crate::kv::StateMachine;

/// Identifies one client request while it waits for its answer.
pub type RequestId = u64;

/// A client request, as the core sees it (the gRPC bridge has decoded it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientRequest {
    Set {
        key: String,
        value: String,
        client_id: u64,
        sequence: u64,
    },
    Delete {
        key: String,
        client_id: u64,
        sequence: u64,
    },
    Get {
        key: String,
        /// true: ReadIndex on the leader (dissertation §6.4); false: any node's own state
        linearizable: bool,
    },
}

/// A successful answer to a client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientResponse {
    Set,
    Deleted { existed: bool },
    Value(Option<String>),
}

/// Why a client request failed. Nothing was applied for any of these, except
/// `LeadershipLost`, where the write may still commit later: the client must
/// retry with the same (client_id, sequence) to learn the outcome exactly once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// This node is not the leader; `leader` is the one it knows of, if any.
    NotLeader { leader: Option<NodeId> },
    /// This node stopped being leader before the request completed.
    LeadershipLost,
    /// The request is malformed (empty key, too large, …).
    InvalidArgument(String),
    /// The request's sequence is older than its client's latest (§6.3).
    StaleSequence,
    /// A stale read on a node whose state machine may lack writes it already
    /// holds in its log (see `may_be_behind`): answering could call a key
    /// that exists absent. Another node, or this one a little later, can answer.
    Behind {
        node: NodeId,
        last_applied: LogIndex,
        commit_index: LogIndex,
    },
}

pub type ClientResult = Result<ClientResponse, ClientError>;

/// Where the core's output goes: messages to peers and answers to clients.
/// The runtime hands messages to the gRPC bridge; the test harness puts them
/// on its simulated network.
pub trait Outbox: Send {
    /// Send a request (or a reply not tied to a request) to a peer.
    fn send(&mut self, to: NodeId, message: Message);
    /// Answer the client request `request`.
    fn respond(&mut self, request: RequestId, result: ClientResult);
    /// Messages may wait in the outbox until this is called, so that the
    /// runtime hands a whole batch to the network at once. The core calls it
    /// before it waits on its disk (the leader's followers then write in
    /// parallel, dissertation §10.2.1); the runtime after every call into
    /// the core.
    fn flush(&mut self) {}
}

/// Settings of the core. Times are in ticks: the runtime's timer thread sends
/// one tick every `--tick-ms`, and tests call `tick()` themselves.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// this server's id
    pub id: NodeId,
    /// every member of the cluster, this server included
    pub members: Vec<NodeId>,
    /// the election timeout is drawn at random from this range (§5.2)
    pub election_timeout_ticks: (u64, u64),
    /// the leader sends heartbeats this often (§5.2)
    pub heartbeat_ticks: u64,
    /// take a snapshot when the log holds more entries than this (§7)
    pub snapshot_threshold: usize,
    /// bytes of snapshot per InstallSnapshot message
    pub snapshot_chunk_bytes: usize,
    /// the largest snapshot a follower accepts: the chunks are gathered in
    /// memory until the last one arrives
    pub max_snapshot_bytes: u64,
    /// most entries in one AppendEntries
    pub max_entries_per_message: usize,
    /// most unanswered AppendEntries carrying entries per follower (pipelining)
    pub max_in_flight: usize,
    /// seed of the RNG that randomizes election timeouts
    pub seed: u64,
    /// the parts of the fast path that are on (all, unless measuring them)
    pub fast_path: FastPath,
}

/// The parts of the fast path (docs/performance.md). Each is on by default
/// and none is needed for correctness: `--fast-path-off` turns them off, to
/// measure what each is worth. (Pipelining is `max_in_flight > 1`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastPath {
    /// one fsync for every entry appended in one event-loop turn: a
    /// follower's `step_batch` syncs once for all its messages, a leader
    /// once for all the commands it is given at once
    pub group_commit: bool,
    /// every client write given to the leader at once becomes one append and
    /// one AppendEntries per follower, rather than one per write
    pub batching: bool,
    /// the leader sends AppendEntries before its own fsync, not after
    /// (dissertation §10.2.1)
    pub parallel_write: bool,
    /// one ReadIndex heartbeat round in flight at a time, shared by every
    /// read that arrives meanwhile, rather than one per batch of reads
    pub shared_read_rounds: bool,
}

impl Default for FastPath {
    fn default() -> Self {
        FastPath {
            group_commit: true,
            batching: true,
            parallel_write: true,
            shared_read_rounds: true,
        }
    }
}

impl RaftConfig {
    /// Defaults for a cluster of `members`, as node `id`.
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Self {
        RaftConfig {
            id,
            members,
            election_timeout_ticks: (15, 30),
            heartbeat_ticks: 5,
            snapshot_threshold: 10_000,
            snapshot_chunk_bytes: 1 << 20,
            max_snapshot_bytes: 1 << 30,
            max_entries_per_message: 1024,
            max_in_flight: 8,
            seed: id,
            fast_path: FastPath::default(),
        }
    }
}

/// What a server is doing (§5.1, Figure 4).
#[derive(Debug)]
pub enum Role {
    Follower,
    Candidate {
        /// the servers that granted their vote in current_term, this one included
        votes: BTreeSet<NodeId>,
    },
    Leader(Leader),
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate { .. } => "candidate",
            Role::Leader(_) => "leader",
        }
    }
}

/// Figure 2 "Volatile state on leaders (reinitialized after election)", plus
/// the leader's bookkeeping for clients. It exists only inside `Role::Leader`,
/// so no other role can read or forget to reset it.
#[derive(Debug, Default)]
pub struct Leader {
    /// for each server, index of the next log entry to send to that server
    /// (initialized to leader last log index + 1)
    pub next_index: BTreeMap<NodeId, LogIndex>,
    /// for each server, index of highest log entry known to be replicated on
    /// server (initialized to 0, increases monotonically)
    pub match_index: BTreeMap<NodeId, LogIndex>,
    /// Flow control per follower (not in Figure 2).
    pub flow: BTreeMap<NodeId, Flow>,
    /// The no-op this leader appended on election (§8); until it commits, the
    /// leader does not know the latest commit index.
    pub noop_index: LogIndex,
    /// Writes waiting to be applied: log index → request.
    pub pending_writes: BTreeMap<LogIndex, RequestId>,
    /// Linearizable reads waiting for leadership confirmation and apply (§6.4).
    pub pending_reads: VecDeque<PendingRead>,
    /// The latest ReadIndex round started (dissertation §6.4).
    pub read_round: u64,
    /// For each follower, the latest read round it acknowledged in this term.
    pub acked_read_round: BTreeMap<NodeId, u64>,
    /// Followers heard from in this term since the last leadership check (§6.2).
    pub heard_from: BTreeSet<NodeId>,
    /// ticks since the last heartbeat
    pub heartbeat_elapsed: u64,
    /// ticks since the last check that a majority is still reachable
    pub check_quorum_elapsed: u64,
}

/// How the leader is sending to one follower.
#[derive(Clone, Debug, Default)]
pub struct Flow {
    /// true until the leader knows where the follower's log matches its own:
    /// one AppendEntries at a time, backing up on each rejection (§5.3).
    /// false once it matches: entries are pipelined, next_index advancing
    /// as they are sent.
    pub probing: bool,
    /// AppendEntries sent in this term and not yet answered (forgotten at
    /// every heartbeat, since replies can be lost).
    pub in_flight: usize,
    /// The snapshot being sent, when the follower needs entries the leader
    /// has compacted (§7, Figure 13).
    pub snapshot: Option<SnapshotTransfer>,
}

/// A snapshot on its way to one follower, one chunk at a time.
#[derive(Clone, Debug)]
pub struct SnapshotTransfer {
    /// the last index the snapshot covers: which snapshot this is
    pub last_included_index: LogIndex,
    /// where the chunk in flight, or the next one to send, starts
    pub offset: u64,
    /// a chunk at `offset` was sent and not answered yet
    pub chunk_in_flight: bool,
    /// a heartbeat has passed since the chunk in flight was sent: at the
    /// next one it is presumed lost and sent again
    pub waited_a_heartbeat: bool,
}

/// A snapshot a follower is receiving (Figure 13 steps 2–4).
#[derive(Debug)]
pub struct IncomingSnapshot {
    pub last_included_index: LogIndex,
    pub last_included_term: Term,
    /// the chunks so far
    pub data: Vec<u8>,
    /// ticks since the last chunk: a transfer the leader abandoned is dropped
    pub idle_ticks: u64,
}

/// A linearizable read waiting on the leader.
#[derive(Clone, Debug)]
pub struct PendingRead {
    pub request: RequestId,
    pub key: String,
    /// the heartbeat round that must reach a majority before the read is served
    pub round: u64,
    /// the read is served once last_applied reaches this
    pub read_index: LogIndex,
}

/// A Raft server. The fields follow Figure 2 "State".
pub struct RaftNode {
    pub(super) config: RaftConfig,

    // Persistent state on all servers (Updated on stable storage before
    // responding to RPCs). Change them only through `set_term` and
    // `set_voted_for`, which persist first.
    /// latest term server has seen (initialized to 0 on first boot, increases monotonically)
    pub(super) current_term: Term,
    /// candidate_id that received vote in current term (None if none)
    pub(super) voted_for: Option<NodeId>,
    /// log entries; each entry contains command for state machine, and term
    /// when entry was received by leader (first index is 1)
    pub(super) log: Log,

    // Volatile state on all servers.
    /// index of highest log entry known to be committed (initialized to 0, increases monotonically)
    pub(super) commit_index: LogIndex,
    /// index of highest log entry applied to state machine (initialized to 0, increases monotonically)
    pub(super) last_applied: LogIndex,

    /// follower, candidate or leader, with the state only that role has
    pub(super) role: Role,
    /// the leader of current_term, once known (so followers can redirect clients)
    pub(super) leader_id: Option<NodeId>,
    /// ticks since the last reset of the election timer
    pub(super) election_elapsed: u64,
    /// this round's randomized election timeout (§5.2)
    pub(super) election_timeout: u64,
    pub(super) rng: StdRng,

    /// the replicated state machine
    pub(super) state_machine: StateMachine,
    /// a snapshot being received from the leader
    pub(super) incoming_snapshot: Option<IncomingSnapshot>,
    pub(super) outbox: Box<dyn Outbox>,
}

/// A snapshot of a node's state for Status and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: NodeId,
    pub role: &'static str,
    pub term: Term,
    pub leader_id: Option<NodeId>,
    pub commit_index: LogIndex,
    pub last_applied: LogIndex,
    pub last_log_index: LogIndex,
}

impl RaftNode {
    /// Start a server from whatever its storage holds: a new one starts as a
    /// follower in term 0 with an empty log (Figure 2); a restarted one with
    /// its persistent state, its snapshot loaded into the state machine.
    pub fn new(config: RaftConfig, storage: Box<dyn Storage>, outbox: Box<dyn Outbox>) -> Self {
        assert!(config.members.contains(&config.id), "id must be a member");
        let (log, hard_state) = Log::recover(storage);
        let state_machine = match log.snapshot() {
            Some(snapshot) => StateMachine::restore(&snapshot.data)
                .unwrap_or_else(|e| panic!("the snapshot's state machine is corrupt: {e}")),
            None => StateMachine::new(),
        };
        let snapshot_index = log.snapshot_index();
        let rng = StdRng::seed_from_u64(config.seed);
        let mut node = RaftNode {
            config,
            current_term: hard_state.current_term,
            voted_for: hard_state.voted_for,
            log,
            // Everything in the snapshot was committed and applied.
            commit_index: snapshot_index,
            last_applied: snapshot_index,
            role: Role::Follower,
            leader_id: None,
            election_elapsed: 0,
            election_timeout: 0,
            rng,
            state_machine,
            incoming_snapshot: None,
            outbox,
        };
        node.reset_election_timer();
        node
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn current_term(&self) -> Term {
        self.current_term
    }

    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }

    pub fn commit_index(&self) -> LogIndex {
        self.commit_index
    }

    pub fn last_applied(&self) -> LogIndex {
        self.last_applied
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader_id
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn state_machine(&self) -> &StateMachine {
        &self.state_machine
    }

    pub fn config(&self) -> &RaftConfig {
        &self.config
    }

    /// Bytes of a snapshot being received and held in memory.
    pub fn incoming_snapshot_bytes(&self) -> usize {
        self.incoming_snapshot.as_ref().map_or(0, |s| s.data.len())
    }

    /// Hand every message the core has produced to the network now (see
    /// [`Outbox::flush`]).
    pub fn flush_outbox(&mut self) {
        self.outbox.flush();
    }

    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            id: self.config.id,
            role: self.role.name(),
            term: self.current_term,
            leader_id: self.leader_id,
            commit_index: self.commit_index,
            last_applied: self.last_applied,
            last_log_index: self.log.last_index(),
        }
    }

    /// The other members, in id order (so runs are deterministic).
    pub(super) fn peers(&self) -> Vec<NodeId> {
        let me = self.config.id;
        self.config
            .members
            .iter()
            .copied()
            .filter(|&p| p != me)
            .collect()
    }

    /// How many servers make a majority of the cluster.
    pub(super) fn majority(&self) -> usize {
        self.config.members.len() / 2 + 1
    }

    /// Move to a newer term (Figure 2, "Rules for Servers / All Servers": set
    /// currentTerm = T), with no vote, or — for a new candidate — its vote for
    /// itself. Durable before it returns: one write for both fields.
    pub(super) fn set_term(&mut self, term: Term, voted_for: Option<NodeId>) {
        assert!(term > self.current_term, "terms only increase");
        self.current_term = term;
        self.voted_for = voted_for;
        self.leader_id = None;
        self.persist_hard_state();
    }

    /// Record our vote in current_term. Durable before it returns, so a vote
    /// is never granted twice in one term, even across a crash (§5.2).
    pub(super) fn set_voted_for(&mut self, candidate: NodeId) {
        assert!(self.voted_for.is_none() || self.voted_for == Some(candidate));
        self.voted_for = Some(candidate);
        self.persist_hard_state();
    }

    fn persist_hard_state(&mut self) {
        // BEGIN SOLUTION persistence
        self.log.save_hard_state(super::storage::HardState {
            current_term: self.current_term,
            voted_for: self.voted_for,
        });
        // SKELETON
        // // Kept in memory only: lost when the server crashes.
        // END SOLUTION
    }

    /// Draw a fresh random election timeout and restart the timer (§5.2:
    /// randomized timeouts make split votes rare).
    pub(super) fn reset_election_timer(&mut self) {
        let (min, max) = self.config.election_timeout_ticks;
        self.election_timeout = self.rng.gen_range(min..=max);
        self.election_elapsed = 0;
    }
}
