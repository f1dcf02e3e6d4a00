//! Figure 2 "State": what every server keeps, what only the leader keeps,
//! and the boundary through which the core talks to the world.
//!
//! The core does no I/O and reads no clock. Time arrives through
//! [`RaftNode::tick`], messages through [`RaftNode::step`], client requests
//! through [`RaftNode::client_requests`]; randomness comes from a seeded RNG;
//! messages and client answers leave through an [`Outbox`], and only there;
//! the disk is behind the [`Storage`] that the log owns. How the runtime
//! drives these calls, a turn at a time, is `turn.rs`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::client::{RequestId, Response};
use super::log::Log;
use super::membership::Configuration;
use super::membership_change::ChangeInProgress;
use super::message::{LogIndex, Message, NodeId, Term};
use super::persistent::Persistent;
use super::state_machine::StateMachine;
use super::storage::{SnapshotToSave, Storage};

/// Where the core's output goes, one way: messages to peers (requests and
/// replies alike) and answers to clients. The runtime hands them to the gRPC
/// bridge; the test harness puts them on its simulated network.
pub trait Outbox: Send {
    /// Send a message to a peer.
    fn send(&mut self, to: NodeId, message: Message);
    /// Answer the client request `request`.
    fn respond(&mut self, request: RequestId, response: Response);
    /// Encode and write `snapshot` durably away from the core (§7), then
    /// report it with [`RaftNode::snapshot_saved`]: the runtime on a thread
    /// of its own, the test harness after a delay of its choosing.
    fn save_snapshot(&mut self, snapshot: SnapshotToSave);
    /// Messages may wait in the outbox until this is called, so that the
    /// runtime hands a whole turn's batch to the network at once
    /// ([`RaftNode::end_turn`] calls it).
    fn flush(&mut self) {}
}

/// The least bytes of log that trigger a snapshot (`RaftConfig::snapshot_log_bytes`).
/// Below it a small state with large values would be snapshotted every few
/// entries, writing it again and again (on a slow disk, while the log
/// waits for the same disk); 64 MiB of log held in memory is the price.
pub const DEFAULT_SNAPSHOT_LOG_BYTES: usize = 64 << 20;

/// Settings of the core. Times are in ticks: the runtime's timer thread sends
/// one tick every `--tick-ms`, and tests call `tick()` themselves.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// this server's id
    pub id: NodeId,
    /// the voters a new cluster starts with, this server included (§6: the
    /// configuration before the log holds one). Empty for a server that
    /// joins a running cluster: it waits for a leader to send it the log,
    /// whose configurations name it.
    pub members: Vec<NodeId>,
    /// where each of `members` is served (opaque to the core; it travels in
    /// configurations, §6). Empty in the simulated cluster.
    pub addresses: BTreeMap<NodeId, String>,
    /// the election timeout is drawn at random from this range (§5.2)
    pub election_timeout_ticks: (u64, u64),
    /// the leader sends heartbeats this often (§5.2)
    pub heartbeat_ticks: u64,
    /// take a snapshot (§7) when the log's entries since the last one hold
    /// more bytes than this and than that snapshot (`maybe_snapshot`)
    pub snapshot_log_bytes: usize,
    /// bytes of snapshot per InstallSnapshot message
    pub snapshot_chunk_bytes: usize,
    /// the largest snapshot a follower accepts: the chunks are gathered in
    /// memory until the last one arrives
    pub max_snapshot_bytes: u64,
    /// most entries in one AppendEntries
    pub max_entries_per_message: usize,
    /// most bytes of entries in one AppendEntries (at least one entry is
    /// always sent): a turn's batch fits in one message (etcd: MaxSizePerMsg)
    pub max_bytes_per_message: usize,
    /// most unanswered AppendEntries carrying entries per follower (pipelining)
    pub max_in_flight: usize,
    /// most bytes of entries unanswered per follower (etcd: MaxInflightBytes):
    /// a follower behind a slow disk is sent no more than it can soon write
    pub max_bytes_in_flight: usize,
    /// seed of the RNG that randomizes election timeouts
    pub seed: u64,
    /// ask for pre-votes before starting an election (dissertation §9.6),
    /// so that a server returning from a partition cannot depose a leader.
    /// Off here, so the core alone runs Figure 2's elections; a node turns
    /// it on (`--pre-vote`, on by default).
    pub pre_vote: bool,
    /// §6: ignore a RequestVote that arrives within the minimum election
    /// timeout of hearing from a leader, so that a removed server cannot
    /// depose it. Off here, so the core alone runs Figure 2's elections; a
    /// node turns it on, and so do the membership tests.
    pub ignore_votes_while_led: bool,
    /// Lease-based reads (dissertation §6.4.1, `lease.rs`): for this many
    /// ticks of its own clock after sending a heartbeat that a majority
    /// acknowledged, the leader serves linearizable reads without a round.
    /// 0 (the default): off, every read takes a ReadIndex round. Needs
    /// `ignore_votes_while_led` and fewer ticks than the minimum election
    /// timeout; safe only if no server's clock runs faster than the
    /// leader's by the ratio between the two.
    pub lease_ticks: u64,
}

impl RaftConfig {
    /// Defaults for a cluster of `members`, as node `id`.
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Self {
        RaftConfig {
            id,
            members,
            addresses: BTreeMap::new(),
            election_timeout_ticks: (15, 30),
            heartbeat_ticks: 5,
            snapshot_log_bytes: DEFAULT_SNAPSHOT_LOG_BYTES,
            snapshot_chunk_bytes: 1 << 20,
            max_snapshot_bytes: 1 << 30,
            max_entries_per_message: 1024,
            max_bytes_per_message: 1 << 20,
            max_in_flight: 8,
            max_bytes_in_flight: 4 << 20,
            seed: id,
            pre_vote: false,
            ignore_votes_while_led: false,
            lease_ticks: 0,
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
    Leader(Box<Leader>),
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
    /// A leadership transfer in progress (dissertation §3.10).
    /// (boxed: most leaders never transfer, and Role stays small)
    pub transfer: Option<Box<Transfer>>,
    /// A membership change in progress (§6), one at a time.
    pub change: Option<Box<ChangeInProgress>>,
    /// The lease's clock and notes (`lease.rs`).
    pub lease: LeaseClock,
}

/// What a leader with a lease (dissertation §6.4.1) keeps.
#[derive(Clone, Debug, Default)]
pub struct LeaseClock {
    /// ticks since this server became leader
    pub ticks: u64,
    /// when each read round still of use was sent, as (round, ticks),
    /// oldest first
    pub rounds_sent_at: VecDeque<(u64, u64)>,
}

/// A leader handing its leadership to `target` (dissertation §3.10).
#[derive(Clone, Debug)]
pub struct Transfer {
    pub target: NodeId,
    /// the client request that asked for it, answered when it ends
    pub request: RequestId,
    /// ticks since it started: it is abandoned after an election timeout
    pub elapsed: u64,
    /// TimeoutNow has been sent: the target's log matched ours
    pub timeout_now_sent: bool,
}

/// How the leader is sending to one follower.
#[derive(Clone, Debug, Default)]
pub struct Flow {
    /// true until the leader knows where the follower's log matches its own:
    /// one AppendEntries at a time, backing up on each rejection (§5.3).
    /// false once it matches: entries are pipelined, next_index advancing
    /// as they are sent.
    pub probing: bool,
    /// AppendEntries with entries sent in this term and not yet answered,
    /// oldest first.
    pub in_flight: VecDeque<InFlight>,
    /// The snapshot being sent, when the follower needs entries the leader
    /// has compacted (§7, Figure 13).
    pub snapshot: Option<SnapshotTransfer>,
}

/// One unanswered AppendEntries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// the index of its last entry
    pub last_index: LogIndex,
    /// bytes of entries it carries
    pub bytes: usize,
}

impl Flow {
    /// Bytes of entries sent to this follower and not yet answered.
    pub fn bytes_in_flight(&self) -> usize {
        self.in_flight.iter().map(|m| m.bytes).sum()
    }

    /// A success reply came: the follower holds every entry through
    /// `match_index`, so no message carrying only those is in flight any
    /// more — including messages whose own replies were lost, which the
    /// reply to the next heartbeat clears this way.
    pub fn answered(&mut self, match_index: LogIndex) {
        while self
            .in_flight
            .front()
            .is_some_and(|m| m.last_index <= match_index)
        {
            self.in_flight.pop_front();
        }
    }
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
    pub reader: Reader,
    /// the heartbeat round that must reach a majority before the read is served
    pub round: u64,
    /// the read is served once last_applied reaches this
    pub read_index: LogIndex,
}

/// Who waits for a read on the leader.
#[derive(Clone, Debug)]
pub enum Reader {
    /// A client of the leader: answered from its state machine.
    Client {
        request: RequestId,
        /// the state machine's query
        query: Vec<u8>,
    },
    /// A follower's batch of reads (dissertation §6.4): told the read index,
    /// it answers them itself once it has applied that far.
    Follower { follower: NodeId, batch: u64 },
}

/// A batch of linearizable reads a follower holds while it asks the leader
/// for their read index (dissertation §6.4).
#[derive(Clone, Debug)]
pub struct ReadBatch {
    pub batch: u64,
    /// the leader asked, which alone may answer
    pub leader: NodeId,
    /// (request, query) of each read
    pub reads: Vec<(RequestId, Vec<u8>)>,
    /// the leader's answer, once it came: served when last_applied reaches it
    pub read_index: Option<LogIndex>,
    /// ticks since the batch was sent: one the leader has not answered within
    /// an election timeout is failed, so its clients go to the leader
    pub waited: u64,
}

/// A Raft server. The fields follow Figure 2 "State"; `S` is the replicated
/// state machine.
pub struct RaftNode<S: StateMachine> {
    pub(super) config: RaftConfig,

    /// Persistent state on all servers: current_term, voted_for, log[]
    /// (`persistent.rs`: they change only through methods that persist).
    pub(super) persistent: Persistent,

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
    /// ticks since a current leader was last heard from (dissertation §9.6:
    /// no pre-vote is granted within the minimum election timeout of it)
    pub(super) leader_contact_elapsed: u64,
    /// the servers that granted a pre-vote for current_term + 1, this one
    /// included, while a pre-vote round is on (§9.6)
    pub(super) pre_votes: Option<BTreeSet<NodeId>>,
    pub(super) rng: StdRng,

    /// the replicated state machine
    pub(super) state_machine: S,
    /// a snapshot being received from the leader
    pub(super) incoming_snapshot: Option<IncomingSnapshot>,
    /// the last index of our own snapshot being written, until it is
    /// durable (`snapshot_saved`): at most one at a time
    pub(super) snapshot_in_progress: Option<LogIndex>,
    pub(super) outbox: Box<dyn Outbox>,
    /// replies held until this turn's fsync (`turn.rs`), each with the
    /// log's truncation count when it was made
    pub(super) awaiting_sync: Vec<(NodeId, Message, usize)>,
    /// a follower's linearizable reads waiting for their read index, oldest first
    pub(super) read_batches: VecDeque<ReadBatch>,
    /// the number of the next batch
    pub(super) next_read_batch: u64,
    /// the configuration in force while the log holds none (§6): the
    /// members the cluster started with, or none for a joining server
    pub(super) initial_configuration: Configuration,
    /// the configuration that removed this server, once it has one (§6):
    /// it no longer votes, stands or serves, and says so
    pub(super) removed_at: Option<LogIndex>,
    /// true while starting the election a TimeoutNow asked for (§3.10)
    pub(super) transfer_election: bool,
    /// a configuration in force has named this server: one that no longer
    /// does has removed it (a joining server is not removed, just not yet added)
    pub(super) was_member: bool,
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
    /// the configuration in force (§6), and the index of its entry (0: the
    /// one the cluster started with)
    pub configuration: Configuration,
    pub configuration_index: LogIndex,
    /// whether that entry is committed
    pub configuration_committed: bool,
}

impl<S: StateMachine> RaftNode<S> {
    /// Start a server from whatever its storage holds: a new one starts as a
    /// follower in term 0 with an empty log (Figure 2); a restarted one with
    /// its persistent state, its snapshot loaded into `state_machine`.
    pub fn new(
        config: RaftConfig,
        storage: Box<dyn Storage>,
        mut state_machine: S,
        outbox: Box<dyn Outbox>,
    ) -> Self {
        assert!(
            config.members.is_empty() || config.members.contains(&config.id),
            "id must be a member"
        );
        assert!(
            config.lease_ticks == 0
                || (config.ignore_votes_while_led
                    && config.lease_ticks < config.election_timeout_ticks.0),
            "a lease needs §6's vote rule and must end before the minimum election timeout"
        );
        // A server the cluster started with was a member; one that joined
        // learns it from its log.
        let was_member = config.members.contains(&config.id);
        let initial_configuration = Configuration {
            voters: config.members.iter().copied().collect(),
            addresses: config.addresses.clone(),
            ..Configuration::default()
        };
        let persistent = Persistent::recover(storage);
        if let Some(snapshot) = persistent.log().snapshot() {
            state_machine
                .restore(&snapshot.data)
                .unwrap_or_else(|e| panic!("the snapshot's state machine is corrupt: {e}"));
        }
        let snapshot_index = persistent.log().snapshot_index();
        let rng = StdRng::seed_from_u64(config.seed);
        let mut node = RaftNode {
            config,
            persistent,
            // Everything in the snapshot was committed and applied.
            commit_index: snapshot_index,
            last_applied: snapshot_index,
            role: Role::Follower,
            leader_id: None,
            election_elapsed: 0,
            election_timeout: 0,
            leader_contact_elapsed: u64::MAX,
            pre_votes: None,
            rng,
            state_machine,
            incoming_snapshot: None,
            snapshot_in_progress: None,
            outbox,
            awaiting_sync: Vec::new(),
            read_batches: VecDeque::new(),
            next_read_batch: 1,
            initial_configuration,
            removed_at: None,
            transfer_election: false,
            was_member,
        };
        node.reset_election_timer();
        node.notice_removal();
        node
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn current_term(&self) -> Term {
        self.persistent.current_term()
    }

    pub fn voted_for(&self) -> Option<NodeId> {
        self.persistent.voted_for()
    }

    pub fn log(&self) -> &Log {
        self.persistent.log()
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

    pub fn state_machine(&self) -> &S {
        &self.state_machine
    }

    pub fn config(&self) -> &RaftConfig {
        &self.config
    }

    /// Ticks since the election timer was last reset, and the timeout it
    /// runs to: what a viewer shows draining (src/server/watch.rs).
    pub fn election_timer(&self) -> (u64, u64) {
        (self.election_elapsed, self.election_timeout)
    }

    /// The last index of our own snapshot being written, if one is.
    pub fn snapshot_in_progress(&self) -> Option<LogIndex> {
        self.snapshot_in_progress
    }

    /// Bytes of a snapshot being received and held in memory.
    pub fn incoming_snapshot_bytes(&self) -> usize {
        self.incoming_snapshot.as_ref().map_or(0, |s| s.data.len())
    }

    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            id: self.config.id,
            role: self.role.name(),
            term: self.current_term(),
            leader_id: self.leader_id,
            commit_index: self.commit_index,
            last_applied: self.last_applied,
            last_log_index: self.log().last_index(),
            configuration: self.configuration().clone(),
            configuration_index: self.configuration_index(),
            configuration_committed: self.configuration_index() <= self.commit_index,
        }
    }

    /// The configuration in force (§6: "a server always uses the latest
    /// configuration in its log, regardless of whether the entry is
    /// committed").
    pub fn configuration(&self) -> &Configuration {
        match self.log().configuration() {
            Some((_, configuration)) => configuration,
            None => &self.initial_configuration,
        }
    }

    /// The index of the configuration in force (0: the initial one).
    pub fn configuration_index(&self) -> LogIndex {
        self.log().configuration().map_or(0, |(index, _)| index)
    }

    /// The configuration in force just after entry `index`: what a snapshot
    /// through `index` carries (§7).
    pub fn configuration_at(&self, index: LogIndex) -> Configuration {
        let at = self.log().configuration_at(index);
        at.unwrap_or(&self.initial_configuration).clone()
    }

    /// Whether a configuration has removed this server (§6).
    pub fn is_removed(&self) -> bool {
        self.removed_at.is_some()
    }

    /// On a leader, each follower's match_index (Figure 2): how far each
    /// member's log is known to match, for `member list`. None elsewhere.
    pub fn match_indexes(&self) -> Option<&BTreeMap<NodeId, LogIndex>> {
        match &self.role {
            Role::Leader(leader) => Some(&leader.match_index),
            _ => None,
        }
    }

    /// The servers the leader sends its log to, in id order (so runs are
    /// deterministic): every other member of the configuration in force —
    /// and, until that configuration commits, of the one before it, so
    /// that a server being removed still learns of its removal (§6).
    pub(super) fn peers(&self) -> Vec<NodeId> {
        let me = self.config.id;
        let mut peers = self.configuration().members();
        if self.configuration_index() > self.commit_index {
            if let Some(previous) = self.log().previous_configuration() {
                peers.extend(previous.members());
            } else if self.log().configuration().is_some() {
                peers.extend(self.initial_configuration.members());
            }
        }
        peers.into_iter().filter(|&p| p != me).collect()
    }

    /// The other voters of the configuration in force, in id order: the
    /// servers an election asks (§6: of both C_old and C_new when joint).
    pub(super) fn voting_peers(&self) -> Vec<NodeId> {
        let me = self.config.id;
        let voters = self.configuration().all_voters();
        voters.into_iter().filter(|&p| p != me).collect()
    }

    /// Whether `granted` (this server's own vote included, if it votes)
    /// wins an election: a majority of the configuration in force, of both
    /// C_old and C_new when joint (§6).
    pub(super) fn is_quorum(&self, granted: &BTreeSet<NodeId>) -> bool {
        self.configuration().has_quorum(granted)
    }

    /// Move to a newer term (Figure 2, "Rules for Servers / All Servers":
    /// set currentTerm = T), durably, with no vote or a candidate's vote for
    /// itself. A new term has no known leader yet.
    pub(super) fn set_term(&mut self, term: Term, voted_for: Option<NodeId>) {
        self.persistent.set_term(term, voted_for);
        self.leader_id = None;
        // a pre-vote round asked about the term after the old one
        self.pre_votes = None;
    }

    /// Send a message to a peer. A request leaves at once; a reply speaks
    /// for our log and waits for this turn's fsync (`end_turn`).
    pub(super) fn send(&mut self, to: NodeId, message: Message) {
        if message.is_request() {
            self.outbox.send(to, message);
        } else {
            let truncations = self.log().truncations_since_sync();
            self.awaiting_sync.push((to, message, truncations));
        }
    }

    /// Draw a fresh random election timeout and restart the timer (§5.2:
    /// randomized timeouts make split votes rare).
    pub(super) fn reset_election_timer(&mut self) {
        let (min, max) = self.config.election_timeout_ticks;
        self.election_timeout = self.rng.gen_range(min..=max);
        self.election_elapsed = 0;
    }
}
