//! A deterministic, single-threaded cluster for tests and debugging.
//!
//! Every node is a real [`RaftNode`] with a simulated disk ([`MemStorage`],
//! or real files: [`Cluster::with_storage`]);
//! the network is a queue that can drop, delay, reorder and partition
//! messages, and deliver some so late that their sender has lost and regained
//! leadership meanwhile; time advances only when the test calls [`Cluster::tick`]. All
//! randomness comes from one seed, so a failing run replays exactly:
//! `RAFT_SEED=1234 cargo test name`. After every step the harness checks the
//! safety properties of Figure 3 and that every read answered so far was
//! linearizable (see [`Cluster::check`]) and, on any panic, prints the seed
//! and the trace of the run.

mod history;
mod invariants;
pub mod script;
mod storage;
mod timeline;
mod trace;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use history::History;

use crate::kv::{self, ClientError, ClientRequest, ClientResult, KvStore};
use crate::raft::{
    LogIndex, MemStorage, MembershipChange, Message, NodeId, Outbox, RaftConfig, RaftNode,
    RequestError, RequestId, Response, Snapshot, SnapshotToSave, SnapshotWriter, Term,
};
pub use history::ReadStats;
pub use invariants::Invariants;
pub use storage::{Disks, FileDisks, MemDisks};
pub use timeline::{Event, EventKind};
pub use trace::describe;

use crate::server::watch::View;

/// What [`Cluster::keep_view`] compares to tell a node's state changed.
type ViewKey = (
    Term,
    Option<NodeId>,
    Option<NodeId>,
    LogIndex,
    LogIndex,
    LogIndex,
    &'static str,
);

/// The simulated wall clocks start at 2023-11-14 22:13:20 UTC.
pub const SIM_EPOCH_MS: u64 = 1_700_000_000_000;
/// Wall-clock time per tick: the runtime's default tick (`--tick-ms`).
pub const MS_PER_TICK: u64 = 10;

/// How the simulated cluster behaves.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// number of nodes, with ids 1..=nodes
    pub nodes: usize,
    pub seed: u64,
    /// probability that a message is lost
    pub drop_rate: f64,
    /// each message is delivered after 0..=max_delay ticks; > 0 reorders messages
    pub max_delay: u64,
    /// probability that a message is delivered late: after more than the
    /// longest election timeout, up to `max_late_delay` ticks — by then its
    /// sender may have lost and regained leadership
    pub late_rate: f64,
    pub max_late_delay: u64,
    /// when several messages are due at one node at once, hand it a seeded
    /// random prefix of them in one turn, as the runtime's event loop does
    /// with every message waiting (group commit)
    pub batch_delivery: bool,
    /// `Cluster::requests` gives the core its batch in one turn (batching);
    /// false: one request per turn
    pub batching: bool,
    pub election_timeout_ticks: (u64, u64),
    pub heartbeat_ticks: u64,
    pub snapshot_log_bytes: usize,
    pub snapshot_chunk_bytes: usize,
    /// a node's own snapshot is written up to this many ticks after it is
    /// started (seeded), and reported durable up to as many after; 0 writes
    /// and reports it at once, in the turn that started it, as a node that
    /// snapshots on its event loop would
    pub max_snapshot_write_ticks: u64,
    pub max_in_flight: usize,
    pub max_bytes_per_message: usize,
    pub max_bytes_in_flight: usize,
    /// the bound on each state machine's session table (dissertation §6.3);
    /// `kv::MAX_SESSIONS` unless a test needs a small one
    pub max_sessions: usize,
    /// ask for pre-votes before elections (dissertation §9.6). Off unless a
    /// test turns it on: the course's tests and scripts follow Figure 2's
    /// elections, and a running node has it on (`--pre-vote`).
    pub pre_vote: bool,
    /// §6's rule that a server hearing from a leader ignores RequestVote
    /// (`RaftConfig::ignore_votes_while_led`); off unless a test turns it on.
    pub ignore_votes_while_led: bool,
    /// lease-based reads (`RaftConfig::lease_ticks`); 0: off
    pub lease_ticks: u64,
}

impl SimConfig {
    /// A reliable network of `nodes` nodes.
    pub fn new(nodes: usize, seed: u64) -> Self {
        let defaults = RaftConfig::new(1, vec![1]);
        SimConfig {
            nodes,
            seed,
            drop_rate: 0.0,
            max_delay: 0,
            late_rate: 0.0,
            max_late_delay: 0,
            batch_delivery: true,
            election_timeout_ticks: (15, 30),
            heartbeat_ticks: 5,
            snapshot_log_bytes: RaftConfig::new(1, vec![1]).snapshot_log_bytes,
            snapshot_chunk_bytes: 1 << 20,
            max_snapshot_write_ticks: 10,
            batching: true,
            max_in_flight: defaults.max_in_flight,
            max_bytes_per_message: defaults.max_bytes_per_message,
            max_bytes_in_flight: defaults.max_bytes_in_flight,
            max_sessions: kv::MAX_SESSIONS,
            pre_vote: false,
            ignore_votes_while_led: false,
            lease_ticks: 0,
        }
    }

    /// Pre-vote (dissertation §9.6) on or off.
    pub fn pre_vote(mut self, on: bool) -> Self {
        self.pre_vote = on;
        self
    }

    /// Every part of the fast path that the runtime can switch off, off:
    /// one message or request per turn (no group commit, no batching), no
    /// pipelining.
    pub fn without_fast_path(mut self) -> Self {
        self.batch_delivery = false;
        self.batching = false;
        self.max_in_flight = 1;
        self
    }

    /// Lose `drop_rate` of messages and delay each by up to `max_delay` ticks.
    /// On odd seeds the leader's byte windows are small too (a few commands
    /// per AppendEntries and in flight), so random runs also exercise flow
    /// control in bytes, which the default 1 MiB never reaches.
    pub fn unreliable(mut self, drop_rate: f64, max_delay: u64) -> Self {
        self.drop_rate = drop_rate;
        self.max_delay = max_delay;
        if self.seed % 2 == 1 {
            self.max_bytes_per_message = 64;
            self.max_bytes_in_flight = 256;
        }
        self
    }

    /// Deliver `late_rate` of messages late: after a delay drawn from
    /// (longest election timeout, `max_late_delay`], across elections.
    pub fn late(mut self, late_rate: f64, max_late_delay: u64) -> Self {
        assert!(
            late_rate == 0.0 || max_late_delay > self.election_timeout_ticks.1,
            "a late message must be later than an election timeout"
        );
        self.late_rate = late_rate;
        self.max_late_delay = max_late_delay;
        self
    }

    /// Keep at most `max_sessions` client sessions per state machine.
    pub fn max_sessions(mut self, max_sessions: usize) -> Self {
        self.max_sessions = max_sessions;
        self
    }

    /// Snapshot once the log holds `log_bytes` (and more than the last
    /// snapshot); send snapshots in chunks of `chunk_bytes`.
    pub fn snapshot_log_bytes(mut self, log_bytes: usize, chunk_bytes: usize) -> Self {
        self.snapshot_log_bytes = log_bytes;
        self.snapshot_chunk_bytes = chunk_bytes;
        self
    }
}

/// What a node's outbox collected during one call into the core.
#[derive(Default)]
struct Collected {
    sent: Vec<(NodeId, Message)>,
    responses: Vec<(RequestId, Response)>,
    snapshots: Vec<SnapshotToSave>,
}

/// The outbox of a simulated node: the harness drains it after every call.
#[derive(Clone, Default)]
struct SimOutbox(Arc<Mutex<Collected>>);

impl Outbox for SimOutbox {
    fn send(&mut self, to: NodeId, message: Message) {
        self.0.lock().unwrap().sent.push((to, message));
    }
    fn respond(&mut self, request: RequestId, response: Response) {
        self.0.lock().unwrap().responses.push((request, response));
    }
    fn save_snapshot(&mut self, snapshot: SnapshotToSave) {
        self.0.lock().unwrap().snapshots.push(snapshot);
    }
}

struct SimNode {
    /// None while crashed
    node: Option<RaftNode<KvStore>>,
    outbox: SimOutbox,
    /// what the runtime's snapshot writer thread does with its storage
    snapshot_writer: Option<Box<dyn SnapshotWriter>>,
    restarts: u64,
    /// added to a running cluster (`add_server`): it starts with no
    /// configuration and waits for a leader (§6)
    joining: bool,
}

/// A node's own snapshot on its way to its disk: the simulated snapshot
/// writer thread (src/server/snapshot_writer.rs). It is written at
/// `write_at` and reported to the node at `saved_at`; a crash before
/// `write_at` loses it, one between the two leaves it on disk beside the
/// whole log.
struct SnapshotWrite {
    node: NodeId,
    write_at: u64,
    saved_at: u64,
    started: Option<SnapshotToSave>,
    written: Option<Snapshot>,
}

/// A message on the simulated network.
#[derive(Clone, Debug)]
struct InFlight {
    /// matches the Send event to the Deliver or Lost event in the timeline
    id: u64,
    sent_at: u64,
    deliver_at: u64,
    /// delayed past an election timeout (`SimConfig::late_rate`)
    late: bool,
    /// tie-breaker among messages due at the same tick (random when reordering)
    order: u64,
    from: NodeId,
    to: NodeId,
    message: Message,
}

/// A successful AppendEntries reply says the follower's log holds, on
/// stable storage, the leader's entries through `match_index`: at the end
/// of the turn that sent it (when the harness collects it, everything the
/// node wrote is synced) its log must reach that far, with an entry no newer
/// than the term of the request it answers (a leader of term t holds no
/// entry of a later term).
fn reply_holds(node: &RaftNode<KvStore>, message: &Message) -> Result<(), String> {
    let Message::AppendEntriesReply(reply) = message else {
        return Ok(());
    };
    let log = node.log();
    let m = reply.match_index;
    if !reply.success || m <= log.snapshot_index() {
        return Ok(());
    }
    match log.term_at(m) {
        Some(term) if term <= reply.request_term => Ok(()),
        held => Err(format!(
            "a successful AppendEntriesReply of request term {} claims entry {m}, but the log holds {}",
            reply.request_term,
            held.map_or("no such entry".to_string(), |t| format!("it in term {t}"))
        )),
    }
}

/// The simulated cluster.
pub struct Cluster {
    pub config: SimConfig,
    rng: StdRng,
    /// draws the batches of `deliver_due`, apart from the network's draws
    batch_rng: StdRng,
    nodes: BTreeMap<NodeId, SimNode>,
    /// where the nodes keep their state across crashes
    disks: Box<dyn Disks>,
    network: Vec<InFlight>,
    /// the nodes' own snapshots being written
    snapshot_writes: Vec<SnapshotWrite>,
    /// draws when they are written, apart from the network's draws
    snapshot_rng: StdRng,
    /// groups of nodes that can talk to each other; empty = no partition
    partition: Vec<BTreeSet<NodeId>>,
    /// links that drop everything, as (from, to)
    cut_links: BTreeSet<(NodeId, NodeId)>,
    now: u64,
    /// added to every node's wall clock by `advance_clock`, in ms
    clock_jump_ms: u64,
    /// each node's wall clock off the common one by this many ms
    clock_skew_ms: BTreeMap<NodeId, i64>,
    /// nodes whose tick timer runs fast: this many ticks per tick
    tick_rates: BTreeMap<NodeId, u64>,
    next_order: u64,
    next_request: RequestId,
    /// answers to client requests, by request id
    responses: BTreeMap<RequestId, ClientResult>,
    /// leadership transfers asked for, and the core's answers
    transfers: BTreeMap<RequestId, Option<Response>>,
    /// everything that happened, for the timeline
    events: Vec<Event>,
    /// the same, one line each
    trace: Vec<String>,
    /// each node's state when it changed, with how many events came before
    /// (for the replay in the timeline)
    views: Vec<(usize, View)>,
    /// what `views` last holds of each node: (term, vote, leader, commit,
    /// applied, last index, role)
    viewed: BTreeMap<NodeId, ViewKey>,
    /// (role, term, commit_index) of each node when last looked at
    observed: BTreeMap<NodeId, (&'static str, Term, LogIndex)>,
    next_message: u64,
    invariants: Invariants,
    /// every client request and answer, for the read checks
    history: History,
    /// messages delivered (sent by a node and not dropped), for RPC-count tests
    pub delivered: u64,
    /// of those, the ones handed over in a `step_batch` call with others
    pub batched: u64,
    /// messages sent by nodes, and the bytes of entries and snapshots in them
    pub sent: u64,
    pub sent_bytes: u64,
    /// tells this cluster from others the same test holds (see `Drop`)
    serial: u64,
}

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The cluster this thread checked last. When a test fails, only that
    /// one prints and writes its trace: a test that holds several clusters
    /// (one per case, built by the same setup) would otherwise print the
    /// same setup's trace once per cluster, and overwrite the failing one's
    /// trace file with an earlier cluster's of the same name and seed.
    static LAST_CHECKED: Cell<u64> = const { Cell::new(0) };
}

impl Cluster {
    /// Start `config.nodes` nodes, all followers in term 0, each on a
    /// simulated disk ([`MemDisks`]).
    pub fn new(config: SimConfig) -> Cluster {
        Cluster::with_storage(config, MemDisks::default())
    }

    /// Start `config.nodes` nodes on `disks`: [`MemDisks`], or [`FileDisks`]
    /// to run the cluster on real data dirs.
    pub fn with_storage(config: SimConfig, disks: impl Disks + 'static) -> Cluster {
        let max_sessions = config.max_sessions;
        let mut cluster = Cluster {
            rng: StdRng::seed_from_u64(config.seed),
            batch_rng: StdRng::seed_from_u64(config.seed ^ 0xba7c4),
            snapshot_rng: StdRng::seed_from_u64(config.seed ^ 0x5a4b),
            config,
            nodes: BTreeMap::new(),
            disks: Box::new(disks),
            network: Vec::new(),
            snapshot_writes: Vec::new(),
            partition: Vec::new(),
            cut_links: BTreeSet::new(),
            now: 0,
            clock_jump_ms: 0,
            clock_skew_ms: BTreeMap::new(),
            tick_rates: BTreeMap::new(),
            next_order: 0,
            next_request: 1,
            responses: BTreeMap::new(),
            transfers: BTreeMap::new(),
            events: Vec::new(),
            trace: Vec::new(),
            views: Vec::new(),
            viewed: BTreeMap::new(),
            observed: BTreeMap::new(),
            next_message: 0,
            invariants: Invariants::default(),
            history: History::with_max_sessions(max_sessions),
            delivered: 0,
            batched: 0,
            sent: 0,
            sent_bytes: 0,
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
        };
        for id in cluster.ids_all() {
            let sim = SimNode {
                node: None,
                outbox: SimOutbox::default(),
                snapshot_writer: None,
                restarts: 0,
                joining: false,
            };
            cluster.nodes.insert(id, sim);
            cluster.start_node(id);
        }
        cluster
    }

    fn ids_all(&self) -> Vec<NodeId> {
        (1..=self.config.nodes as u64).collect()
    }

    /// The ids of every node, running or crashed.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Start a new, empty server `id` that joins the running cluster (§6):
    /// it has no configuration and waits to hear from a leader; a
    /// membership change adds it ([`Cluster::change_membership`]).
    pub fn add_server(&mut self, id: NodeId) {
        assert!(!self.nodes.contains_key(&id), "n{id} exists already");
        let sim = SimNode {
            node: None,
            outbox: SimOutbox::default(),
            snapshot_writer: None,
            restarts: 0,
            joining: true,
        };
        self.nodes.insert(id, sim);
        self.record(EventKind::Power {
            node: id,
            up: true,
            text: format!("add n{id} (joining)"),
        });
        self.start_node(id);
    }

    /// The running members of `leader`'s configuration (§6): a server
    /// removed, or not yet added, is not sent the log.
    fn members_up(&self, leader: NodeId) -> Vec<NodeId> {
        let configuration = self.node(leader).configuration();
        let members = self
            .ids()
            .into_iter()
            .filter(|&id| configuration.contains(id));
        members.filter(|&id| self.is_up(id)).collect()
    }

    /// Ask node `leader` for a membership change (§6); the answer is read
    /// with [`Cluster::transfer_answer`], as a transfer's is.
    pub fn change_membership(&mut self, leader: NodeId, change: MembershipChange) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        self.note(format!("membership request {id} to n{leader}: {change:?}"));
        self.transfers.insert(id, None);
        self.with_node(leader, |node| {
            node.client_requests(vec![(id, crate::raft::Request::ChangeMembership(change))])
        });
        id
    }

    /// Ask the leader for `change` and run until it answers; None if no
    /// leader answered within `max_ticks`.
    pub fn run_change(&mut self, change: MembershipChange, max_ticks: u64) -> Option<Response> {
        let deadline = self.now + max_ticks;
        while self.now < deadline {
            let Some(leader) = self.leader() else {
                self.tick();
                continue;
            };
            let request = self.change_membership(leader, change.clone());
            while self.now < deadline && self.transfer_answer(request).is_none() {
                self.tick();
            }
            match self.transfer_answer(request).cloned() {
                Some(Err(
                    RequestError::NotLeader { .. }
                    | RequestError::LeadershipLost
                    | RequestError::ChangeInProgress(_),
                )) => self.tick(),
                answer => return answer,
            }
        }
        None
    }

    fn start_node(&mut self, id: NodeId) {
        let sim = self.nodes.get_mut(&id).expect("node exists");
        let members = match sim.joining {
            true => Vec::new(),
            false => (1..=self.config.nodes as u64).collect(),
        };
        let mut config = RaftConfig::new(id, members);
        config.election_timeout_ticks = self.config.election_timeout_ticks;
        config.heartbeat_ticks = self.config.heartbeat_ticks;
        config.snapshot_log_bytes = self.config.snapshot_log_bytes;
        config.snapshot_chunk_bytes = self.config.snapshot_chunk_bytes;
        config.max_in_flight = self.config.max_in_flight;
        config.max_bytes_per_message = self.config.max_bytes_per_message;
        config.max_bytes_in_flight = self.config.max_bytes_in_flight;
        config.pre_vote = self.config.pre_vote;
        config.ignore_votes_while_led = self.config.ignore_votes_while_led;
        config.lease_ticks = self.config.lease_ticks;
        // Each node, and each restart of it, draws different timeouts.
        config.seed = self.config.seed ^ (id << 32) ^ (sim.restarts << 48);
        sim.outbox = SimOutbox::default();
        let storage = self.disks.open(id);
        sim.snapshot_writer = Some(storage.snapshot_writer());
        let node = RaftNode::new(
            config,
            storage,
            KvStore::with_max_sessions(self.config.max_sessions),
            Box::new(sim.outbox.clone()),
        );
        sim.node = Some(node);
        self.invariants.node_started(id);
        self.observed.remove(&id);
        self.observe(id);
    }

    /// Make node `id`'s tick timer run `rate` times as fast as the others'
    /// (a clock that drifts: what a lease must assume away, §6.4.1).
    pub fn set_tick_rate(&mut self, id: NodeId, rate: u64) {
        self.note(format!("n{id}'s clock runs {rate}x"));
        self.tick_rates.insert(id, rate.max(1));
    }

    /// Logical time: ticks since the start.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Node `id`'s wall clock, which the bridge stamps on the writes it
    /// receives (ms since the Unix epoch; dissertation §6.3): a fixed start,
    /// [`MS_PER_TICK`] per tick, jumps and the node's skew.
    pub fn clock_ms(&self, id: NodeId) -> u64 {
        let common = SIM_EPOCH_MS + self.now * MS_PER_TICK + self.clock_jump_ms;
        let skew = self.clock_skew_ms.get(&id).copied().unwrap_or(0);
        common.saturating_add_signed(skew)
    }

    /// Move every node's wall clock `ms` ahead, as if that much time passed
    /// with nothing to do: what expires sessions (§6.3) without running an
    /// hour of ticks.
    pub fn advance_clock(&mut self, ms: u64) {
        self.clock_jump_ms += ms;
        self.note(format!("wall clocks jump {ms} ms ahead"));
    }

    /// Set node `id`'s wall clock `skew_ms` off the others (either way).
    pub fn skew_clock(&mut self, id: NodeId, skew_ms: i64) {
        self.clock_skew_ms.insert(id, skew_ms);
        self.note(format!("n{id}'s wall clock is {skew_ms} ms off"));
    }

    pub fn node(&self, id: NodeId) -> &RaftNode<KvStore> {
        self.nodes[&id]
            .node
            .as_ref()
            .unwrap_or_else(|| panic!("n{id} is down"))
    }

    /// Mutable access to a node, for tests that call the core directly: one
    /// turn of the node (`f`, then `end_turn`). The harness puts what it
    /// sent on the network afterwards.
    pub fn with_node<R>(&mut self, id: NodeId, f: impl FnOnce(&mut RaftNode<KvStore>) -> R) -> R {
        let sim = self.nodes.get_mut(&id).expect("node exists");
        let node = sim.node.as_mut().unwrap_or_else(|| panic!("n{id} is down"));
        let result = f(node);
        node.end_turn();
        self.collect(id);
        self.check();
        result
    }

    /// Hand node `to` one message from `from` directly, for one turn, and
    /// return what it sent back to `from` instead of putting it on the
    /// network (tests that play a peer by hand). Everything else it sent
    /// goes on the network.
    pub fn exchange(&mut self, to: NodeId, from: NodeId, message: Message) -> Vec<Message> {
        let back = self.exchange_all(to, vec![(from, message)]);
        back.into_iter().map(|(_, m)| m).collect()
    }

    /// As [`Cluster::exchange`], with several messages in one turn (group
    /// commit); returns what went back to their senders, in order.
    pub fn exchange_all(
        &mut self,
        to: NodeId,
        messages: Vec<(NodeId, Message)>,
    ) -> Vec<(NodeId, Message)> {
        let senders: BTreeSet<NodeId> = messages.iter().map(|(from, _)| *from).collect();
        let first_new = self.next_message;
        self.with_node(to, |node| {
            for (from, message) in messages {
                node.step(from, message);
            }
        });
        let mut back = Vec::new();
        self.network.retain(|m| {
            let is_back = m.from == to && senders.contains(&m.to) && m.id > first_new;
            if is_back {
                back.push((m.id, m.to, m.message.clone()));
            }
            !is_back
        });
        back.sort_by_key(|(id, _, _)| *id);
        back.into_iter().map(|(_, to, m)| (to, m)).collect()
    }

    /// Whether node `id` exists and is running (a message to any other id
    /// is lost, as to an address nobody serves).
    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|sim| sim.node.is_some())
    }

    /// The simulated disk of a node (it survives crashes). Panics on a
    /// cluster whose disks are not [`MemDisks`].
    pub fn disk(&self, id: NodeId) -> &MemStorage {
        self.disks
            .memory(id)
            .unwrap_or_else(|| panic!("n{id}'s disk is not a MemStorage"))
    }

    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    /// Add a line to the trace (tests use it to mark their own steps).
    pub fn note(&mut self, text: impl AsRef<str>) {
        self.record(EventKind::Note(text.as_ref().to_string()));
    }

    fn record(&mut self, kind: EventKind) {
        let event = Event { t: self.now, kind };
        self.trace.push(event.to_string());
        self.events.push(event);
    }

    /// Record node `id`'s role, term and commit index changes.
    fn observe(&mut self, id: NodeId) {
        let Some(node) = self.nodes[&id].node.as_ref() else {
            return;
        };
        let now = (node.role().name(), node.current_term(), node.commit_index());
        let before = self.observed.insert(id, now);
        let (role, term, commit) = now;
        if before.is_none_or(|(r, t, _)| r != role || t != term) {
            self.record(EventKind::Role {
                node: id,
                term,
                role,
            });
        }
        if before.is_some_and(|(_, _, c)| c < commit) {
            self.record(EventKind::Commit {
                node: id,
                index: commit,
            });
        }
        self.keep_view(id);
    }

    /// Keep node `id`'s state for the replay, if it changed.
    fn keep_view(&mut self, id: NodeId) {
        let Some(node) = self.nodes[&id].node.as_ref() else {
            return;
        };
        let key = (
            node.current_term(),
            node.voted_for(),
            node.leader_id(),
            node.commit_index(),
            node.last_applied(),
            node.log().last_index(),
            node.role().name(),
        );
        if self.viewed.insert(id, key) != Some(key) {
            self.views.push((self.events.len(), View::of(node)));
        }
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Advance time by one tick: every running node ticks, then every
    /// message due by now is delivered.
    pub fn tick(&mut self) {
        self.now += 1;
        for id in self.ids() {
            let rate = self.tick_rates.get(&id).copied().unwrap_or(1);
            if let Some(node) = self.nodes.get_mut(&id).unwrap().node.as_mut() {
                for _ in 0..rate {
                    node.tick();
                }
                node.end_turn();
                self.collect(id);
                self.check();
            }
        }
        self.write_snapshots_due();
        self.deliver_due();
    }

    /// Write the snapshots due by now, and report those written to their
    /// node, each in a turn of its own (as the event loop takes it from the
    /// writer thread's channel).
    fn write_snapshots_due(&mut self) {
        let now = self.now;
        let mut notes = Vec::new();
        for write in &mut self.snapshot_writes {
            if write.write_at > now {
                continue;
            }
            if let Some(started) = write.started.take() {
                let snapshot = started.encode();
                let sim = self.nodes.get_mut(&write.node).expect("node exists");
                let writer = sim
                    .snapshot_writer
                    .as_mut()
                    .expect("a running node has one");
                let stored = writer
                    .write_snapshot(&snapshot)
                    .unwrap_or_else(|e| panic!("n{}: writing a snapshot: {e}", write.node));
                notes.push(format!(
                    "n{}: snapshot through {} {}",
                    write.node,
                    snapshot.last_included_index,
                    if stored { "written" } else { "superseded" }
                ));
                write.written = Some(snapshot);
            }
        }
        for note in notes {
            self.note(note);
        }
        let (due, waiting) = std::mem::take(&mut self.snapshot_writes)
            .into_iter()
            .partition(|w| w.saved_at <= now);
        self.snapshot_writes = waiting;
        for write in due {
            let snapshot = write.written.expect("written before it is saved");
            self.with_node(write.node, |node| node.snapshot_saved(snapshot));
        }
    }

    /// The snapshots of node `id` being written (for tests).
    pub fn snapshots_being_written(&self, id: NodeId) -> usize {
        self.snapshot_writes.iter().filter(|w| w.node == id).count()
    }

    pub fn ticks(&mut self, n: u64) {
        for _ in 0..n {
            self.tick();
        }
    }

    /// Tick until `done` holds, at most `max_ticks`; true if it did.
    pub fn run_until(&mut self, max_ticks: u64, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        for _ in 0..max_ticks {
            if done(self) {
                return true;
            }
            self.tick();
        }
        done(self)
    }

    /// Deliver every message due by now, including replies that fall due
    /// while doing so (with no delay a whole round trip fits in one tick).
    fn deliver_due(&mut self) {
        loop {
            let mut due: Vec<usize> = (0..self.network.len())
                .filter(|&i| self.network[i].deliver_at <= self.now)
                .collect();
            let key = |m: &InFlight| (m.deliver_at, m.order);
            let Some(&first) = due.iter().min_by_key(|&&i| key(&self.network[i])) else {
                break;
            };
            let to = self.network[first].to;
            due.retain(|&i| self.network[i].to == to);
            due.sort_by_key(|&i| key(&self.network[i]));
            // The runtime steps every message waiting in one turn together;
            // a random prefix stands for how many had arrived by then.
            let take = if self.config.batch_delivery && due.len() > 1 {
                self.batch_rng.gen_range(1..=due.len())
            } else {
                1
            };
            due.truncate(take);
            let ids: BTreeSet<u64> = due.iter().map(|&i| self.network[i].id).collect();
            let mut batch = Vec::with_capacity(take);
            let mut i = 0;
            while i < self.network.len() {
                if ids.contains(&self.network[i].id) {
                    batch.push(self.network.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            batch.sort_by_key(key);
            self.deliver(batch);
        }
    }

    /// Hand node `to` the messages of one event-loop turn, all for it.
    fn deliver(&mut self, messages: Vec<InFlight>) {
        let to = messages[0].to;
        let mut batch = Vec::with_capacity(messages.len());
        for m in messages {
            let why = if !self.can_talk(m.from, m.to) {
                Some("partitioned".to_string())
            } else if !self.is_up(m.to) {
                Some(format!("n{} is down", m.to))
            } else {
                None
            };
            match why {
                Some(why) => self.record(EventKind::Lost {
                    id: m.id,
                    from: m.from,
                    to: m.to,
                    what: describe(&m.message),
                    why,
                }),
                None => batch.push(m),
            }
        }
        let size = batch.len();
        if size == 0 {
            return;
        }
        if size > 1 {
            self.batched += size as u64;
        }
        let to_term = self.node(to).current_term();
        for (i, m) in batch.iter().enumerate() {
            self.delivered += 1;
            self.record(EventKind::Deliver {
                id: m.id,
                from: m.from,
                to,
                term: to_term,
                what: describe(&m.message),
                late_from: m.late.then_some(m.sent_at),
                batch: (size > 1).then_some((i + 1, size)),
            });
        }
        let node = self.nodes.get_mut(&to).unwrap().node.as_mut().expect("up");
        for m in batch {
            node.step(m.from, m.message);
        }
        node.end_turn();
        self.collect(to);
        self.check();
    }

    /// Move what node `id` sent and answered into the network and the
    /// response table.
    fn collect(&mut self, id: NodeId) {
        let sim = &self.nodes[&id];
        let collected = std::mem::take(&mut *sim.outbox.0.lock().unwrap());
        let term = sim.node.as_ref().map_or(0, |n| n.current_term());
        if let Some(node) = &sim.node {
            for (to, message) in &collected.sent {
                if let Err(lie) = reply_holds(node, message) {
                    panic!("n{id} -> n{to}: {lie}");
                }
            }
        }
        // The role change happened before the messages it sent.
        self.observe(id);
        for (to, message) in collected.sent {
            self.send(id, term, to, message);
        }
        for started in collected.snapshots {
            let max = self.config.max_snapshot_write_ticks;
            let write_at = self.now + self.snapshot_rng.gen_range(0..=max);
            let saved_at = write_at + self.snapshot_rng.gen_range(0..=max);
            self.snapshot_writes.push(SnapshotWrite {
                node: id,
                write_at,
                saved_at,
                started: Some(started),
                written: None,
            });
        }
        for (request, response) in collected.responses {
            if self.transfers.contains_key(&request) {
                self.note(format!("n{id} answers transfer {request}: {response:?}"));
                let previous = self.transfers.insert(request, Some(response));
                assert!(
                    previous.flatten().is_none(),
                    "transfer {request} answered twice"
                );
                continue;
            }
            let result = kv::from_raft(response);
            self.record(EventKind::Answer {
                node: id,
                request,
                result: format!("{result:?}"),
            });
            self.history.answer(id, request, &result, self.now);
            let previous = self.responses.insert(request, result);
            assert!(previous.is_none(), "request {request} answered twice");
        }
        if self.config.max_snapshot_write_ticks == 0 {
            self.write_snapshots_due();
        }
    }

    fn send(&mut self, from: NodeId, term: Term, to: NodeId, message: Message) {
        self.sent += 1;
        self.sent_bytes += trace::payload_bytes(&message);
        let lost = self.config.drop_rate > 0.0 && self.rng.gen_bool(self.config.drop_rate);
        let late = self.config.late_rate > 0.0 && self.rng.gen_bool(self.config.late_rate);
        let delay = if late {
            let longest_timeout = self.config.election_timeout_ticks.1;
            self.rng
                .gen_range(longest_timeout + 1..=self.config.max_late_delay)
        } else if self.config.max_delay > 0 {
            self.rng.gen_range(0..=self.config.max_delay)
        } else {
            0
        };
        // Replies and requests may overtake each other when delays vary.
        let order = if self.config.max_delay > 0 || late {
            self.rng.gen()
        } else {
            self.next_order += 1;
            self.next_order
        };
        self.next_message += 1;
        let id = self.next_message;
        self.record(EventKind::Send {
            id,
            from,
            term,
            to,
            what: describe(&message),
            dropped: lost,
            late_until: (late && !lost).then_some(self.now + delay),
        });
        if lost {
            return;
        }
        self.network.push(InFlight {
            id,
            sent_at: self.now,
            deliver_at: self.now + delay,
            late,
            order,
            from,
            to,
            message,
        });
    }

    fn can_talk(&self, from: NodeId, to: NodeId) -> bool {
        if self.cut_links.contains(&(from, to)) {
            return false;
        }
        self.partition.is_empty()
            || self
                .partition
                .iter()
                .any(|group| group.contains(&from) && group.contains(&to))
    }

    /// Split the cluster: nodes talk only within their group. Nodes in no
    /// group are isolated.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        self.partition = groups.iter().map(|g| g.iter().copied().collect()).collect();
        self.note(format!("partition {groups:?}"));
    }

    /// Cut node `id` off from every other node (both directions).
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.cut_links.insert((id, other));
                self.cut_links.insert((other, id));
            }
        }
        self.note(format!("isolate n{id}"));
    }

    /// Reconnect node `id` to every other node (undoes `isolate`).
    pub fn reconnect(&mut self, id: NodeId) {
        self.cut_links.retain(|&(a, b)| a != id && b != id);
        self.note(format!("reconnect n{id}"));
    }

    /// Remove every partition and cut link.
    pub fn heal(&mut self) {
        self.partition.clear();
        self.cut_links.clear();
        self.note("heal");
    }

    /// Crash node `id`: it stops, and its disk keeps what a crash leaves
    /// (on [`MemDisks`], only what was synced).
    pub fn crash(&mut self, id: NodeId) {
        let sim = self.nodes.get_mut(&id).unwrap();
        if sim.node.take().is_some() {
            sim.restarts += 1;
            sim.snapshot_writer = None;
            // The writer thread dies with the node; what it had written
            // stays on disk.
            self.snapshot_writes.retain(|w| w.node != id);
            self.disks.crash(id);
            self.record(EventKind::Power {
                node: id,
                up: false,
                text: format!("crash n{id}"),
            });
        }
    }

    /// Restart a crashed node from its disk.
    pub fn restart(&mut self, id: NodeId) {
        if self.is_up(id) {
            self.crash(id);
        }
        self.record(EventKind::Power {
            node: id,
            up: true,
            text: format!("restart n{id}"),
        });
        self.start_node(id);
        self.check();
    }

    /// Crash node `id` and start it again on an empty disk, as an operator
    /// does with a node whose data dir was damaged (docs/storage.md).
    pub fn wipe(&mut self, id: NodeId) {
        self.crash(id);
        self.disks.wipe(id);
        self.record(EventKind::Power {
            node: id,
            up: true,
            text: format!("wipe n{id}"),
        });
        self.start_node(id);
        self.check();
    }

    pub fn set_unreliable(&mut self, drop_rate: f64, max_delay: u64) {
        self.config.drop_rate = drop_rate;
        self.config.max_delay = max_delay;
        self.note(format!("network drop={drop_rate} delay<={max_delay}"));
    }

    /// Deliver `late_rate` of messages after more than an election timeout
    /// (see [`SimConfig::late`]); 0.0 stops it.
    pub fn set_late(&mut self, late_rate: f64, max_late_delay: u64) {
        self.config.late_rate = late_rate;
        self.config.max_late_delay = max_late_delay;
        self.note(format!("network late={late_rate} delay<={max_late_delay}"));
    }

    /// The running leaders, by term (more than one only if an old leader has
    /// not heard of the newer term yet).
    pub fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, s)| s.node.as_ref().is_some_and(|n| n.is_leader()))
            .map(|(&id, _)| id)
            .collect()
    }

    /// The leader with the highest term among running nodes, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.leaders()
            .into_iter()
            .max_by_key(|&id| self.node(id).current_term())
    }

    /// Tick until some node is leader and a majority of the running nodes
    /// agree on its term; panics after `max_ticks`.
    pub fn elect(&mut self, max_ticks: u64) -> NodeId {
        let majority = self.config.nodes / 2 + 1;
        let ok = self.run_until(max_ticks, |c| {
            c.leader().is_some_and(|l| {
                let term = c.node(l).current_term();
                c.ids()
                    .into_iter()
                    .filter(|&id| c.is_up(id) && c.node(id).current_term() == term)
                    .count()
                    >= majority
            })
        });
        assert!(ok, "no leader elected within {max_ticks} ticks");
        self.leader().expect("checked")
    }

    /// Submit a client request to node `to`; returns its id.
    pub fn request(&mut self, to: NodeId, request: ClientRequest) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        self.note(format!("client request {id} to n{to}: {request:?}"));
        self.history.issue(id, &request, self.now);
        self.give(to, vec![(id, request)]);
        id
    }

    /// Give node `to` client requests, checked and encoded as the gRPC
    /// bridge does: one turn for all of them (or one each without batching).
    fn give(&mut self, to: NodeId, requests: Vec<(RequestId, ClientRequest)>) {
        let mut batch = Vec::new();
        let now_ms = self.clock_ms(to);
        for (id, request) in requests {
            match kv::to_raft(request, now_ms) {
                Ok(request) => batch.push((id, request)),
                // Refused by the bridge: the core never sees it.
                Err(error) => self.answer_directly(to, id, Err(error)),
            }
        }
        if self.config.batching {
            self.with_node(to, |node| node.client_requests(batch));
        } else {
            for request in batch {
                self.with_node(to, |node| node.client_requests(vec![request]));
            }
        }
    }

    fn answer_directly(&mut self, node: NodeId, request: RequestId, result: ClientResult) {
        self.record(EventKind::Answer {
            node,
            request,
            result: format!("{result:?}"),
        });
        self.history.answer(node, request, &result, self.now);
        self.responses.insert(request, result);
    }

    /// How many messages of `kind` (`"ReadIndex"`, …) node `from` has sent.
    pub fn sent_by(&self, from: NodeId, kind: &str) -> usize {
        self.events
            .iter()
            .filter(|e| {
                matches!(&e.kind, EventKind::Send { from: f, what, .. }
                    if *f == from && what.split(' ').next() == Some(kind))
            })
            .count()
    }

    /// Ask node `leader` to hand its leadership to `to` (dissertation
    /// §3.10); the answer is read with [`Cluster::transfer_answer`].
    pub fn transfer_leadership(&mut self, leader: NodeId, to: NodeId) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        self.note(format!(
            "transfer request {id} to n{leader}: leadership to n{to}"
        ));
        self.transfers.insert(id, None);
        self.with_node(leader, |node| {
            node.client_requests(vec![(id, crate::raft::Request::TransferLeadership { to })])
        });
        id
    }

    /// The core's answer to transfer request `id`, once it came.
    pub fn transfer_answer(&self, id: RequestId) -> Option<&Response> {
        self.transfers.get(&id).and_then(Option::as_ref)
    }

    /// Submit several client requests to node `to` in one batch.
    pub fn requests(&mut self, to: NodeId, requests: Vec<ClientRequest>) -> Vec<RequestId> {
        let batch: Vec<_> = requests
            .into_iter()
            .map(|r| {
                let id = self.next_request;
                self.next_request += 1;
                (id, r)
            })
            .collect();
        let ids = batch.iter().map(|(id, _)| *id).collect();
        self.note(format!("client batch of {} to n{to}", batch.len()));
        for (id, request) in &batch {
            self.history.issue(*id, request, self.now);
        }
        self.give(to, batch);
        ids
    }

    /// Submit `request` the way a client does: to the current leader, again
    /// after "ask someone else" (§8) or no answer, until answered or
    /// `max_ticks` have passed. Writes that carry a session apply once
    /// however often they are retried (§6.3).
    pub fn submit(&mut self, request: ClientRequest, max_ticks: u64) -> Option<ClientResult> {
        let deadline = self.now + max_ticks;
        while self.now < deadline {
            let Some(leader) = self.leader() else {
                self.tick();
                continue;
            };
            let id = self.request(leader, request.clone());
            match self.wait_response(id, 40) {
                None
                | Some(Err(
                    ClientError::NotLeader { .. }
                    | ClientError::LeadershipLost
                    | ClientError::TransferInProgress { .. }
                    | ClientError::Removed { .. },
                )) => self.tick(),
                Some(result) => return Some(result),
            }
        }
        None
    }

    /// Tick until every running member (of the leader's configuration, §6)
    /// holds and has applied the leader's whole log, then check that their logs hold the same entries (beyond
    /// their snapshots) and their state machines are equal (State Machine
    /// Safety at rest); returns the leader. Panics after `max_ticks`.
    pub fn converge(&mut self, max_ticks: u64) -> NodeId {
        let ok = self.run_until(max_ticks, |c| {
            let Some(leader) = c.leader() else {
                return false;
            };
            let last = c.node(leader).log().last_index();
            c.members_up(leader).into_iter().all(|id| {
                c.node(id).log().last_index() == last && c.node(id).last_applied() == last
            })
        });
        assert!(ok, "the cluster did not converge within {max_ticks} ticks");
        let leader = self.leader().expect("converged");
        let expected = self.node(leader).log();
        for id in self.members_up(leader) {
            let log = self.node(id).log();
            for index in log.first_index().max(expected.first_index())..=log.last_index() {
                assert_eq!(
                    log.get(index),
                    expected.get(index),
                    "n{id}'s log differs from the leader's at {index}"
                );
            }
            assert_eq!(
                self.node(id).state_machine(),
                self.node(leader).state_machine(),
                "n{id}'s state machine differs from the leader's"
            );
        }
        leader
    }

    /// The answer to request `id`, if it has come.
    pub fn response(&self, id: RequestId) -> Option<&ClientResult> {
        self.responses.get(&id)
    }

    /// Tick until request `id` is answered; None if not within `max_ticks`.
    pub fn wait_response(&mut self, id: RequestId, max_ticks: u64) -> Option<ClientResult> {
        self.run_until(max_ticks, |c| c.response(id).is_some());
        self.response(id).cloned()
    }

    /// Highest commit index among running nodes.
    pub fn max_commit_index(&self) -> LogIndex {
        self.nodes
            .values()
            .filter_map(|s| s.node.as_ref().map(|n| n.commit_index()))
            .max()
            .unwrap_or(0)
    }

    /// The entries known committed (index → term), as the invariant checker saw them.
    pub fn committed(&self) -> &BTreeMap<LogIndex, (Term, crate::raft::Command)> {
        self.invariants.committed()
    }

    /// Check the safety properties now — Figure 3's, and that every read
    /// answered returns what a linearizable (or, for stale reads, some
    /// committed) state held; panics with the trace on a violation.
    pub fn check(&mut self) {
        LAST_CHECKED.with(|last| last.set(self.serial));
        let nodes: Vec<(NodeId, &RaftNode<KvStore>)> = self
            .nodes
            .iter()
            .filter_map(|(&id, s)| s.node.as_ref().map(|n| (id, n)))
            .collect();
        if let Err(violation) = self.invariants.check(&nodes) {
            panic!("safety violation at t={}: {violation}", self.now);
        }
        // §7: entries are discarded only once a snapshot covering them is
        // durable — and the disk still holds every entry after it.
        for &(id, node) in &nodes {
            let Some(disk) = self.disks.memory(id) else {
                continue;
            };
            let log = node.log();
            let (durable, first_on_disk) = disk.durable_bounds();
            if log.snapshot_index() > durable
                || first_on_disk.is_some_and(|first| first > log.snapshot_index() + 1)
            {
                panic!(
                    "safety violation at t={}: n{id} compacted its log through {} with the snapshot on disk through {durable} and its entries from {first_on_disk:?} (§7)",
                    self.now,
                    log.snapshot_index()
                );
            }
        }
        // After the commits of this step are recorded: an answer and the
        // commit it depends on arrive in the same step.
        let committed = self.invariants.committed();
        if let Err(violation) = self.history.check(&nodes, committed) {
            panic!("safety violation at t={}: {violation}", self.now);
        }
    }

    /// How many read answers the checker verified, and how many it could not.
    pub fn read_stats(&self) -> ReadStats {
        self.history.stats()
    }

    /// Write the trace to `target/sim-traces/NAME-seedN.trace.txt` and the
    /// HTML timeline beside it (`.timeline.html`); returns the trace's path.
    pub fn write_trace(&self, name: &str) -> std::path::PathBuf {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sim-traces");
        let _ = std::fs::create_dir_all(&dir);
        let stem = format!("{name}-seed{}", self.config.seed);
        let path = dir.join(format!("{stem}.trace.txt"));
        let _ = std::fs::write(&path, self.trace.join("\n") + "\n");
        let html = timeline::html(&stem, &self.ids(), &self.events, &self.views);
        let _ = std::fs::write(dir.join(format!("{stem}.timeline.html")), html);
        path
    }

    /// The run so far as a self-contained HTML timeline.
    pub fn timeline_html(&self, title: &str) -> String {
        timeline::html(title, &self.ids(), &self.events, &self.views)
    }
}

impl Drop for Cluster {
    /// On a failed test, say how to replay it and show how it ended.
    fn drop(&mut self) {
        if std::thread::panicking() && LAST_CHECKED.with(Cell::get) == self.serial {
            let name = std::thread::current()
                .name()
                .unwrap_or("sim")
                .replace("::", "-");
            let path = self.write_trace(&name);
            let tail = self.trace.len().saturating_sub(40);
            eprintln!("---- last trace lines ----");
            for line in &self.trace[tail..] {
                eprintln!("{line}");
            }
            eprintln!(
                "---- failed with seed {seed}: replay with RAFT_SEED={seed}; full trace in {} ----",
                path.display(),
                seed = self.config.seed
            );
        }
    }
}

/// The seeds a randomized test runs: `0..count`; `0..count * N` with
/// `RAFT_SEEDS_SCALE=N` (CI's many-seed run, `make skeleton-check`); only
/// `RAFT_SEED` when set.
pub fn seeds(count: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("RAFT_SEED") {
        return vec![seed.parse().expect("RAFT_SEED must be a number")];
    }
    let scale = std::env::var("RAFT_SEEDS_SCALE").map_or(1, |scale| {
        scale
            .parse()
            .expect("RAFT_SEEDS_SCALE must be a whole number")
    });
    (0..count * scale).collect()
}
