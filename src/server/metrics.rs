//! What an operator graphs (docs/api.md, "Metrics"), and what health checks
//! read: the event loop and the snapshot writer only update atomics here
//! (a histogram takes an uncontended lock for a few nanoseconds); the
//! bridge turns them into `/metrics` and into the gRPC health status.
//!
//! The numbers come from where they pass, not from the Raft core: fsync
//! latency from a wrapper of the node's [`Storage`] ([`MeasuredStorage`]),
//! apply latency and sessions from one of its state machine
//! ([`MeasuredKv`]), role, term and indexes from the event loop after each
//! turn ([`Observer`]), messages and proposals from the bridge.

use std::io;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use crate::kv::KvStore;
use crate::raft::{
    self, Configuration, Entry, FrozenState, HardState, LogIndex, Message, NodeId, RaftNode,
    Recovered, RequestError, Snapshot, SnapshotWriter, StateMachine, Storage, Term,
};
use crate::server::watch::Publisher;

/// Where the event loop's time goes: waiting for work (polling, then
/// asleep), handling what came, and ending the turn (its fsync, commit,
/// apply, and the hand-off to the bridge).
const LOOP_PARTS: [&str; 3] = ["waiting", "handling", "end_turn"];

/// The kinds of peer message, in the order of [`kind`].
pub(crate) const MESSAGE_KINDS: [&str; 11] = [
    "RequestVote",
    "RequestVoteReply",
    "AppendEntries",
    "AppendEntriesReply",
    "InstallSnapshot",
    "InstallSnapshotReply",
    "ReadIndex",
    "ReadIndexReply",
    "PreVote",
    "PreVoteReply",
    "TimeoutNow",
];

pub(crate) fn kind(message: &Message) -> usize {
    match message {
        Message::RequestVote(_) => 0,
        Message::RequestVoteReply(_) => 1,
        Message::AppendEntries(_) => 2,
        Message::AppendEntriesReply(_) => 3,
        Message::InstallSnapshot(_) => 4,
        Message::InstallSnapshotReply(_) => 5,
        Message::ReadIndex(_) => 6,
        Message::ReadIndexReply(_) => 7,
        Message::PreVote(_) => 8,
        Message::PreVoteReply(_) => 9,
        Message::TimeoutNow(_) => 10,
    }
}

const ROLES: [&str; 3] = ["follower", "candidate", "leader"];

/// Why a write was not committed, as `raftkv_proposals_failed_total` labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposalFailure {
    /// this node is not the leader (the client is redirected)
    NotLeader,
    /// it stopped being leader before the write committed
    LeadershipLost,
    /// its queue to the event loop was full
    Overloaded,
}

const FAILURES: [&str; 3] = ["not_leader", "leadership_lost", "overloaded"];

type Labels = [(&'static str, &'static str); 1];

/// Every metric of a node; clones share the same numbers.
#[derive(Clone)]
pub struct Metrics {
    current_term: Gauge,
    roles: [Gauge; 3],
    has_leader: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    last_log_index: Gauge,
    leader_changes: Counter,
    proposals_committed: Counter,
    proposals_failed: [Counter; 3],
    fsync_duration: Histogram,
    apply_duration: Histogram,
    /// the event loop's time, by [`LOOP_PARTS`]
    loop_seconds: [Counter<f64, AtomicU64>; 3],
    sent: [Counter; MESSAGE_KINDS.len()],
    received: [Counter; MESSAGE_KINDS.len()],
    snapshots: Counter,
    snapshot_bytes: Gauge,
    snapshot_duration: Histogram,
    snapshots_installed: Counter,
    sessions: Gauge,
    keys: Gauge,
}

/// One counter or gauge per label value, registered as one family.
fn family<M: prometheus_client::metrics::TypedMetric + Clone + Default, const N: usize>(
    label: &'static str,
    values: [&'static str; N],
) -> (Family<Labels, M>, [M; N])
where
    Family<Labels, M>: prometheus_client::registry::Metric,
{
    let family = Family::<Labels, M>::default();
    let each = values.map(|value| family.get_or_create(&[(label, value)]).clone());
    (family, each)
}

impl Metrics {
    /// The metrics, and the registry that encodes them for a scrape.
    pub fn new() -> (Metrics, Registry) {
        let mut r = Registry::with_prefix("raftkv");
        let (roles, role) = family("role", ROLES);
        let (failed, proposals_failed) = family("reason", FAILURES);
        let (sent_family, sent) = family("type", MESSAGE_KINDS);
        let (received_family, received) = family("type", MESSAGE_KINDS);
        let (loop_family, loop_seconds) = family("part", LOOP_PARTS);
        let metrics = Metrics {
            current_term: Gauge::default(),
            roles: role,
            has_leader: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            last_log_index: Gauge::default(),
            leader_changes: Counter::default(),
            proposals_committed: Counter::default(),
            proposals_failed,
            // 100 µs to 3.3 s
            fsync_duration: Histogram::new(exponential_buckets(1e-4, 2.0, 16)),
            // 1 µs to 33 ms
            apply_duration: Histogram::new(exponential_buckets(1e-6, 2.0, 16)),
            loop_seconds,
            sent,
            received,
            snapshots: Counter::default(),
            snapshot_bytes: Gauge::default(),
            // 1 ms to 33 s
            snapshot_duration: Histogram::new(exponential_buckets(1e-3, 2.0, 16)),
            snapshots_installed: Counter::default(),
            sessions: Gauge::default(),
            keys: Gauge::default(),
        };
        metrics.register_state(&mut r, roles, failed);
        metrics.register_work(&mut r, sent_family, received_family);
        r.register_with_unit(
            "event_loop",
            "Time the event loop spent waiting for work, handling it, and ending turns (fsync included)",
            Unit::Seconds,
            loop_family,
        );
        (metrics, r)
    }

    /// The node's Raft state and its clients' writes.
    fn register_state(
        &self,
        r: &mut Registry,
        roles: Family<Labels, Gauge>,
        failed: Family<Labels, Counter>,
    ) {
        let m = self.clone();
        r.register("current_term", "The node's current term", m.current_term);
        r.register("role", "1 for the node's role, 0 for the others", roles);
        r.register(
            "has_leader",
            "1 when the node knows a leader of its current term, else 0",
            m.has_leader,
        );
        r.register(
            "commit_index",
            "Highest log index known to be committed",
            m.commit_index,
        );
        r.register(
            "applied_index",
            "Highest log index applied to the state machine",
            m.applied_index,
        );
        r.register(
            "last_log_index",
            "Index of the last log entry",
            m.last_log_index,
        );
        r.register(
            "leader_changes",
            "Times the node learned of a new leader (a new term's)",
            m.leader_changes,
        );
        r.register(
            "proposals_committed",
            "Writes this node proposed as leader that were committed and applied",
            m.proposals_committed,
        );
        r.register(
            "proposals_failed",
            "Writes this node was sent and did not commit, by reason",
            failed,
        );
        r.register(
            "sessions",
            "Client sessions the state machine holds",
            m.sessions,
        );
        r.register("keys", "Keys the state machine holds", m.keys);
    }

    /// What the node's disk and network do.
    fn register_work(
        &self,
        r: &mut Registry,
        sent: Family<Labels, Counter>,
        received: Family<Labels, Counter>,
    ) {
        let m = self.clone();
        let mut seconds = |name: &str, help: &str, h: Histogram| {
            r.register_with_unit(name, help, Unit::Seconds, h)
        };
        seconds(
            "fsync_duration",
            "Time to make a turn's log writes durable (fsync)",
            m.fsync_duration,
        );
        seconds(
            "apply_duration",
            "Time to apply one committed entry to the state machine",
            m.apply_duration,
        );
        seconds(
            "snapshot_duration",
            "Time to encode and durably write one of the node's own snapshots",
            m.snapshot_duration,
        );
        r.register(
            "peer_messages_sent",
            "Messages written to a peer's stream, by type",
            sent,
        );
        r.register(
            "peer_messages_received",
            "Messages received from peers, by type",
            received,
        );
        r.register(
            "snapshots",
            "Snapshots of its own state the node wrote",
            m.snapshots,
        );
        r.register_with_unit(
            "snapshot_size",
            "Size of the last snapshot the node wrote",
            Unit::Bytes,
            m.snapshot_bytes,
        );
        r.register(
            "snapshots_installed",
            "Snapshots received from a leader and installed",
            m.snapshots_installed,
        );
    }

    /// The counter of messages of `message`'s type written to a peer's
    /// stream (to count it once it is).
    pub fn sent(&self, message: &Message) -> &Counter {
        &self.sent[kind(message)]
    }

    /// A message received from a peer.
    pub fn received(&self, message: &Message) {
        self.received[kind(message)].inc();
    }

    /// The core's answer to a write this node was sent.
    pub fn proposal(&self, answer: &raft::Response) {
        match answer {
            Ok(_) => {
                self.proposals_committed.inc();
            }
            Err(RequestError::NotLeader { .. }) => self.proposal_failed(ProposalFailure::NotLeader),
            Err(RequestError::LeadershipLost) => {
                self.proposal_failed(ProposalFailure::LeadershipLost)
            }
            Err(RequestError::TransferInProgress { .. } | RequestError::Removed { .. }) => {
                self.proposal_failed(ProposalFailure::NotLeader)
            }
            // Only reads are refused as behind, only transfers fail so.
            Err(
                RequestError::Behind { .. }
                | RequestError::TransferFailed(_)
                | RequestError::ChangeInProgress(_)
                | RequestError::MembershipRefused(_),
            ) => {}
        }
    }

    pub fn proposal_failed(&self, why: ProposalFailure) {
        self.proposals_failed[why as usize].inc();
    }

    /// One of the node's own snapshots, durable after `seconds`.
    pub fn snapshot_written(&self, bytes: usize, seconds: f64) {
        self.snapshots.inc();
        self.snapshot_bytes.set(bytes as i64);
        self.snapshot_duration.observe(seconds);
    }
}

/// What health checks read, as the event loop last saw it: published only
/// when it changes, so that a busy node does not wake the bridge for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    pub term: Term,
    pub role: &'static str,
    /// the leader of `term`, once known (this node when it leads)
    pub leader_id: Option<NodeId>,
    /// a configuration removed this node from the cluster (§6)
    pub removed: bool,
}

impl Leadership {
    /// The health rule (docs/api.md): a node serves when it knows a leader
    /// of its current term and no configuration removed it.
    pub fn serving(&self) -> bool {
        self.leader_id.is_some() && !self.removed
    }
}

/// The configuration in force (§6) as the event loop last saw it, for the
/// bridge: where each member is served. Published only when it changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub configuration: Configuration,
    /// the index of its entry (0: the one the cluster started with)
    pub index: LogIndex,
    pub committed: bool,
}

impl Membership {
    pub fn of<S: StateMachine>(node: &RaftNode<S>) -> Membership {
        Membership {
            configuration: node.configuration().clone(),
            index: node.configuration_index(),
            committed: node.configuration_index() <= node.commit_index(),
        }
    }

    /// Whether `node`'s configuration differs from this one.
    fn differs<S: StateMachine>(&self, node: &RaftNode<S>) -> bool {
        self.index != node.configuration_index()
            || self.committed != (node.configuration_index() <= node.commit_index())
            || self.configuration != *node.configuration()
    }
}

/// The event loop's side: after each turn, the gauges and the leadership.
pub struct Observer {
    metrics: Metrics,
    leadership: watch::Sender<Leadership>,
    last: Leadership,
    membership: watch::Sender<Membership>,
    /// the last leader counted in `leader_changes`, with its term
    last_leader: Option<(Term, NodeId)>,
    /// the watch stream's view of the node (src/server/watch.rs)
    publisher: Option<Publisher>,
}

impl Observer {
    pub fn new(
        metrics: Metrics,
        leadership: watch::Sender<Leadership>,
        membership: watch::Sender<Membership>,
    ) -> Observer {
        Observer {
            metrics,
            leadership,
            last: Leadership::default(),
            membership,
            last_leader: None,
            publisher: None,
        }
    }

    /// Publish a view of the node after each turn for the watch stream too.
    pub fn watched(mut self, publisher: Publisher) -> Observer {
        self.publisher = Some(publisher);
        self
    }

    /// Count one turn's time: `waiting` for it, `handling` what came, and
    /// `ending` it (`RaftNode::end_turn`).
    pub fn turn_took(&self, waiting: Duration, handling: Duration, ending: Duration) {
        for (counter, time) in self
            .metrics
            .loop_seconds
            .iter()
            .zip([waiting, handling, ending])
        {
            counter.inc_by(time.as_secs_f64());
        }
    }

    /// Record the node's state after a turn: atomic stores, and a message
    /// to the bridge only when the leadership changed.
    pub fn after_turn(&mut self, node: &RaftNode<MeasuredKv>) {
        let m = &self.metrics;
        m.commit_index.set(node.commit_index() as i64);
        m.applied_index.set(node.last_applied() as i64);
        m.last_log_index.set(node.log().last_index() as i64);
        if let Some(publisher) = &mut self.publisher {
            publisher.after_turn(node);
        }
        if self.membership.borrow().differs(node) {
            self.membership.send_replace(Membership::of(node));
        }
        let now = Leadership {
            term: node.current_term(),
            role: node.role().name(),
            leader_id: node.leader_id(),
            removed: node.is_removed(),
        };
        if now == self.last {
            return;
        }
        m.current_term.set(now.term as i64);
        for (gauge, role) in m.roles.iter().zip(ROLES) {
            gauge.set(i64::from(role == now.role));
        }
        m.has_leader.set(i64::from(now.serving()));
        if let Some(leader) = now.leader_id {
            if self.last_leader != Some((now.term, leader)) {
                self.last_leader = Some((now.term, leader));
                m.leader_changes.inc();
            }
        }
        self.last = now;
        self.leadership.send_replace(now);
    }
}

/// The node's [`Storage`], timing each fsync of the log.
pub struct MeasuredStorage {
    inner: Box<dyn Storage>,
    metrics: Metrics,
}

impl MeasuredStorage {
    pub fn new(inner: Box<dyn Storage>, metrics: Metrics) -> MeasuredStorage {
        MeasuredStorage { inner, metrics }
    }
}

impl Storage for MeasuredStorage {
    fn recover(&mut self) -> io::Result<Recovered> {
        self.inner.recover()
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> io::Result<()> {
        self.inner.save_hard_state(hard_state)
    }

    fn append(&mut self, entries: &[Entry]) -> io::Result<()> {
        self.inner.append(entries)
    }

    fn truncate_from(&mut self, index: LogIndex) -> io::Result<()> {
        self.inner.truncate_from(index)
    }

    fn sync(&mut self) -> io::Result<()> {
        let started = Instant::now();
        let synced = self.inner.sync();
        self.metrics
            .fsync_duration
            .observe(started.elapsed().as_secs_f64());
        synced
    }

    /// Only a snapshot from the leader is saved here; the node's own go
    /// through the snapshot writer.
    fn save_snapshot(&mut self, snapshot: &Snapshot, keep_suffix: bool) -> io::Result<()> {
        self.inner.save_snapshot(snapshot, keep_suffix)?;
        self.metrics.snapshots_installed.inc();
        Ok(())
    }

    fn snapshot_writer(&self) -> Box<dyn SnapshotWriter> {
        self.inner.snapshot_writer()
    }

    fn compact(&mut self, index: LogIndex) -> io::Result<()> {
        self.inner.compact(index)
    }
}

/// The key-value store, timing each apply and counting its sessions and keys.
pub struct MeasuredKv {
    store: KvStore,
    metrics: Metrics,
}

impl MeasuredKv {
    pub fn new(store: KvStore, metrics: Metrics) -> MeasuredKv {
        MeasuredKv { store, metrics }
    }

    fn count(&self) {
        self.metrics.sessions.set(self.store.sessions() as i64);
        self.metrics.keys.set(self.store.len() as i64);
    }
}

impl StateMachine for MeasuredKv {
    fn apply(&mut self, index: LogIndex, command: &[u8]) -> Vec<u8> {
        let started = Instant::now();
        let answer = StateMachine::apply(&mut self.store, index, command);
        self.metrics
            .apply_duration
            .observe(started.elapsed().as_secs_f64());
        self.count();
        answer
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        StateMachine::query(&self.store, query)
    }

    fn freeze(&self) -> FrozenState {
        StateMachine::freeze(&self.store)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        StateMachine::restore(&mut self.store, snapshot)?;
        self.count();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn every_metric_is_named_with_its_unit_and_prefix() {
        let (metrics, registry) = Metrics::new();
        metrics.proposal(&Ok(Vec::new()));
        metrics.proposal(&Err(RequestError::NotLeader { leader: None }));
        metrics.proposal_failed(ProposalFailure::Overloaded);
        metrics.snapshot_written(1234, 0.5);
        let text = scrape(&registry);
        for line in [
            "raftkv_proposals_committed_total 1",
            "raftkv_proposals_failed_total{reason=\"not_leader\"} 1",
            "raftkv_proposals_failed_total{reason=\"overloaded\"} 1",
            "raftkv_proposals_failed_total{reason=\"leadership_lost\"} 0",
            "raftkv_snapshot_size_bytes 1234",
            "raftkv_snapshot_duration_seconds_count 1",
            "raftkv_fsync_duration_seconds_count 0",
            "raftkv_peer_messages_sent_total{type=\"AppendEntries\"} 0",
            "raftkv_role{role=\"leader\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
