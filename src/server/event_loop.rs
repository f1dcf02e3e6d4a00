//! The event loop: the one thread that owns the [`RaftNode`].
//!
//! It waits on five channels with `crossbeam_channel::select!` and makes one
//! plain, blocking call into the core for each thing that arrives:
//!
//! | channel           | sender                 | call into the core            |
//! |-------------------|------------------------|-------------------------------|
//! | `ticks`           | timer thread           | `tick()`                      |
//! | `peer_messages`   | gRPC bridge            | `step_batch(messages)`        |
//! | `client_calls`    | gRPC bridge            | `client_requests(batch)`      |
//! | `snapshots_saved` | snapshot writer thread | `snapshot_saved(snapshot)`    |
//! | `shutdown`        | whoever stops us       | (leave the loop)              |
//!
//! Each of these is one turn, which ends with `end_turn()`: one fsync for
//! everything the turn appended, then the replies (src/raft/turn.rs). What
//! the core produces leaves through [`RuntimeOutbox`], one way: messages to
//! peers (requests and replies alike) and answers to clients are gathered
//! and handed to the bridge together, as one [`Handoff`] per flush: a
//! wake-up of the bridge's runtime is a syscall, and a context switch if it
//! sleeps. The core flushes the requests before its fsync, so followers
//! start writing while the leader does (dissertation §10.2.1).
//!
//! After each turn the loop records what it is for the metrics and the
//! health service ([`Observer`]): atomic stores, and a message to the
//! bridge only when its term, role or leader changed.
//!
//! Batching and group commit are how much one turn takes: the client
//! requests waiting, the peer messages waiting, up to one AppendEntries'
//! worth of bytes (`RaftConfig::max_bytes_per_message`) so that a turn's
//! write and fsync stay short however large the values (`--fast-path-off
//! batching` or `group-commit` takes one at a time, to measure what they
//! are worth). A turn longer than the heartbeat interval is logged: its
//! heartbeats were late.
//!
//! Waking a sleeping thread costs tens of microseconds on a virtual machine —
//! as much as a loopback round trip — and a request crosses between this
//! thread and the bridge several times. So after work the loop keeps polling
//! its channels for `--poll-us` before it sleeps (yielding the CPU between
//! polls): the reply that follows a request usually arrives within that time
//! and is taken without a wake-up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use log::{debug, info, warn};
use tokio::sync::{mpsc, oneshot};

use crate::config::FastPath;
use crate::raft::{
    LogIndex, Message, NodeId, NodeStatus, Outbox, RaftNode, Request, RequestError, RequestId,
    Response, Snapshot, SnapshotToSave, StateMachine,
};
use crate::server::metrics::{MeasuredKv, Observer};

/// A message from a peer, for `RaftNode::step`.
#[derive(Debug)]
pub struct PeerMessage {
    pub from: NodeId,
    pub message: Message,
}

/// A call from a client: a request under the id the bridge waits on, or a
/// query answered on its oneshot.
#[derive(Debug)]
pub enum ClientCall {
    Request(RequestId, Request),
    Status(oneshot::Sender<NodeStatus>),
    /// The leader's state machine as it is now, frozen, for a backup
    /// (`raft-kv snapshot save`); the bridge encodes it off the loop.
    Backup(oneshot::Sender<Result<SnapshotToSave, RequestError>>),
    /// The status with what only the loop knows of the members (§6), for
    /// `raft-kv status` and `member list`.
    Members(oneshot::Sender<MemberView>),
}

/// A node's status and its view of the members.
#[derive(Debug)]
pub struct MemberView {
    pub status: NodeStatus,
    /// a configuration removed this node (§6)
    pub removed: bool,
    /// each follower's match_index (Figure 2) when this node leads; empty
    /// otherwise
    pub match_indexes: BTreeMap<NodeId, LogIndex>,
}

/// The receiving ends the event loop waits on.
pub struct Inputs {
    pub ticks: Receiver<()>,
    pub peer_messages: Receiver<PeerMessage>,
    pub client_calls: Receiver<ClientCall>,
    /// our own snapshots, durable (src/server/snapshot_writer.rs)
    pub snapshots_saved: Receiver<Snapshot>,
    pub shutdown: Receiver<()>,
}

/// What the event loop hands the bridge at once (see the module docs).
#[derive(Debug, Default)]
pub struct Handoff {
    /// messages to peers, requests and replies alike
    pub messages: Vec<(NodeId, Message)>,
    /// answers to clients, by the id their request came with
    pub answers: Vec<(RequestId, Response)>,
}

impl Handoff {
    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.answers.is_empty()
    }
}

/// The core's [`Outbox`] in a running node.
pub struct RuntimeOutbox {
    id: NodeId,
    /// what was produced since the last flush
    handoff: Handoff,
    to_bridge: mpsc::UnboundedSender<Handoff>,
    to_snapshot_writer: Sender<SnapshotToSave>,
}

impl RuntimeOutbox {
    pub fn new(
        id: NodeId,
        to_bridge: mpsc::UnboundedSender<Handoff>,
        to_snapshot_writer: Sender<SnapshotToSave>,
    ) -> Self {
        RuntimeOutbox {
            id,
            handoff: Handoff::default(),
            to_bridge,
            to_snapshot_writer,
        }
    }
}

impl Outbox for RuntimeOutbox {
    fn send(&mut self, to: NodeId, message: Message) {
        self.handoff.messages.push((to, message));
    }

    fn respond(&mut self, request: RequestId, response: Response) {
        self.handoff.answers.push((request, response));
    }

    /// Never waits: the core has at most one snapshot in progress.
    fn save_snapshot(&mut self, snapshot: SnapshotToSave) {
        if self.to_snapshot_writer.send(snapshot).is_err() {
            debug!(
                "node {}: no snapshot: the writer thread has stopped",
                self.id
            );
        }
    }

    /// Never waits: the channel is unbounded, and the bridge drops what a
    /// slow or dead peer cannot take (Raft retries lost messages).
    fn flush(&mut self) {
        if self.handoff.is_empty() {
            return;
        }
        let handoff = std::mem::take(&mut self.handoff);
        if self.to_bridge.send(handoff).is_err() {
            debug!(
                "node {}: dropping messages: the bridge has stopped",
                self.id
            );
        }
    }
}

/// The event loop: the node and what it waits on.
pub struct EventLoop {
    node: RaftNode<MeasuredKv>,
    inputs: Inputs,
    /// the metrics and the health status, updated after each turn
    observer: Observer,
    /// how long to poll for more work before sleeping
    poll: Duration,
    /// what `--fast-path-off` left on
    fast_path: FastPath,
    /// most bytes of entries one turn takes in (beyond its first message):
    /// what fits one AppendEntries, so that a turn's write and fsync stay
    /// short and the timer's ticks are not kept waiting behind a large batch
    turn_bytes: usize,
    /// the heartbeat interval: a turn longer than twice this is worth a warning
    slow_turn: Duration,
    last_slow_turn_warning: Option<Instant>,
}

/// How often, at most, the slow-turn warning is logged.
const SLOW_TURN_WARNING_EVERY: Duration = Duration::from_secs(10);

/// What woke the loop.
enum Event {
    Tick,
    Peer(PeerMessage),
    Client(ClientCall),
    SnapshotSaved(Snapshot),
    /// shutdown, or a thread that feeds the loop has stopped (a node without
    /// its timer, its bridge or its snapshot writer can do nothing useful)
    Stop,
}

impl EventLoop {
    pub fn new(
        node: RaftNode<MeasuredKv>,
        inputs: Inputs,
        observer: Observer,
        poll: Duration,
        fast_path: FastPath,
        heartbeat: Duration,
    ) -> Self {
        let turn_bytes = node.config().max_bytes_per_message;
        EventLoop {
            node,
            inputs,
            observer,
            poll,
            fast_path,
            turn_bytes,
            slow_turn: heartbeat,
            last_slow_turn_warning: None,
        }
    }

    /// Run until shutdown.
    pub fn run(mut self) {
        let id = self.node.id();
        info!(
            "node {id} term {}: event loop started",
            self.node.current_term()
        );
        let mut poll = Duration::ZERO;
        let mut waiting_since = Instant::now();
        loop {
            let event = self.next_event(poll);
            let started = Instant::now();
            poll = self.poll;
            let bytes = match event {
                Event::Tick => {
                    self.node.tick();
                    // Ticks are the idle loop's only work: polling after
                    // them would burn the CPU of an idle cluster.
                    poll = Duration::ZERO;
                    0
                }
                Event::Peer(message) => self.on_peer_messages(message),
                Event::Client(call) => self.on_client_calls(call),
                Event::SnapshotSaved(snapshot) => {
                    self.node.snapshot_saved(snapshot);
                    0
                }
                Event::Stop => break,
            };
            let ending = Instant::now();
            self.node.end_turn();
            let ended = Instant::now();
            self.observer
                .turn_took(started - waiting_since, ending - started, ended - ending);
            waiting_since = ended;
            self.observer.after_turn(&self.node);
            self.check_turn(started, bytes);
        }
        info!(
            "node {id} term {}: event loop stopped",
            self.node.current_term()
        );
    }

    /// The next thing to do: polled for up to `poll`, then waited for.
    ///
    /// A peer message that is waiting goes first: replies move the commit
    /// index and AppendEntries keep a follower from timing out, while a
    /// client call can wait a turn (etcd, too, steps raft messages ahead
    /// of proposals). Picked at random among the rest, a leader taking in
    /// large writes turn after turn, each with its fsync, left the replies
    /// waiting — and its next AppendEntries with them — until a follower's
    /// election timeout ran out (docs/performance.md, "Large values").
    fn next_event(&self, poll: Duration) -> Event {
        let inputs = &self.inputs;
        let started = Instant::now();
        loop {
            if let Ok(message) = inputs.peer_messages.try_recv() {
                return Event::Peer(message);
            }
            select! {
                recv(inputs.peer_messages) -> m => return m.map_or(Event::Stop, Event::Peer),
                recv(inputs.client_calls) -> c => return c.map_or(Event::Stop, Event::Client),
                recv(inputs.ticks) -> t => return t.map_or(Event::Stop, |()| Event::Tick),
                recv(inputs.snapshots_saved) -> s => return s.map_or(Event::Stop, Event::SnapshotSaved),
                recv(inputs.shutdown) -> _ => return Event::Stop,
                default => {}
            }
            if started.elapsed() >= poll {
                break;
            }
            std::thread::yield_now();
        }
        select! {
            recv(inputs.peer_messages) -> m => m.map_or(Event::Stop, Event::Peer),
            recv(inputs.client_calls) -> c => c.map_or(Event::Stop, Event::Client),
            recv(inputs.ticks) -> t => t.map_or(Event::Stop, |()| Event::Tick),
            recv(inputs.snapshots_saved) -> s => s.map_or(Event::Stop, Event::SnapshotSaved),
            recv(inputs.shutdown) -> _ => Event::Stop,
        }
    }

    /// Step `first` and the peer messages already waiting (group commit:
    /// the entries they append cost one fsync, at the end of the turn), up
    /// to a turn's worth of bytes. Returns the bytes of entries taken.
    fn on_peer_messages(&mut self, first: PeerMessage) -> usize {
        let mut bytes = first.message.payload_bytes();
        self.node.step(first.from, first.message);
        while self.fast_path.group_commit && bytes < self.turn_bytes {
            let Ok(m) = self.inputs.peer_messages.try_recv() else {
                break;
            };
            bytes += m.message.payload_bytes();
            self.node.step(m.from, m.message);
        }
        bytes
    }

    /// Give the core `first` and the client requests already waiting, up to
    /// a turn's worth of bytes, in one batch (batching: one append, one
    /// AppendEntries per follower). Returns the bytes taken.
    fn on_client_calls(&mut self, first: ClientCall) -> usize {
        let mut bytes = 0;
        let mut batch = Vec::new();
        let mut call = Some(first);
        while let Some(next) = call.take() {
            match next {
                ClientCall::Request(id, request) => {
                    bytes += request.bytes();
                    batch.push((id, request));
                }
                ClientCall::Status(answer) => {
                    let _ = answer.send(self.node.status());
                }
                ClientCall::Backup(answer) => {
                    let _ = answer.send(self.backup());
                }
                ClientCall::Members(answer) => {
                    let _ = answer.send(MemberView {
                        status: self.node.status(),
                        removed: self.node.is_removed(),
                        match_indexes: self.node.match_indexes().cloned().unwrap_or_default(),
                    });
                }
            }
            if self.fast_path.batching && bytes < self.turn_bytes {
                call = self.inputs.client_calls.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            self.node.client_requests(batch);
        }
        bytes
    }

    /// The state machine frozen at `last_applied`, which only a leader
    /// gives: everything it has applied is committed (§5.4.2), and the
    /// bridge asks after a ReadIndex round, so it holds every write
    /// acknowledged before. Freezing is O(1) (src/kv: a persistent map).
    fn backup(&self) -> Result<SnapshotToSave, RequestError> {
        if !self.node.is_leader() {
            return Err(RequestError::NotLeader {
                leader: self.node.leader_id(),
            });
        }
        let index = self.node.last_applied();
        // Applied entries are kept in the log or covered by its snapshot.
        let term = self
            .node
            .log()
            .term_at(index)
            .ok_or(RequestError::LeadershipLost)?;
        Ok(SnapshotToSave {
            last_included_index: index,
            last_included_term: term,
            configuration: self.node.configuration_at(index),
            state: self.node.state_machine().freeze(),
        })
    }

    /// A turn that keeps the loop from its timer for longer than a heartbeat
    /// interval delays the leader's heartbeats, and followers that wait an
    /// election timeout for them start an election: say so, with the bytes
    /// the turn took in (etcd: "leader failed to send out heartbeat on time").
    fn check_turn(&mut self, started: Instant, bytes: usize) {
        let took = started.elapsed();
        if took <= 2 * self.slow_turn {
            return;
        }
        let now = Instant::now();
        if self
            .last_slow_turn_warning
            .is_some_and(|at| now.duration_since(at) < SLOW_TURN_WARNING_EVERY)
        {
            return;
        }
        self.last_slow_turn_warning = Some(now);
        warn!(
            "node {} term {}: one turn of the event loop took {} ms ({} KiB of requests and \
             entries taken in; the rest is storage work such as a snapshot install), longer \
             than twice the heartbeat interval ({} ms): heartbeats wait, and peers may start \
             elections — is the disk slow?",
            self.node.id(),
            self.node.current_term(),
            took.as_millis(),
            bytes / 1024,
            self.slow_turn.as_millis()
        );
    }
}

#[cfg(test)]
mod tests {
    use crossbeam_channel::{bounded, unbounded};

    use super::*;
    use crate::kv::KvStore;
    use crate::raft::{MemStorage, RaftConfig, RequestVote};
    use crate::server::metrics::{MeasuredKv, Metrics, Observer};

    /// The senders of a loop's inputs: the peers', the clients', the
    /// timer's, and (kept open, for a closed one stops the loop) the
    /// snapshot writer's and the shutdown's.
    struct Senders {
        peers: Sender<PeerMessage>,
        clients: Sender<ClientCall>,
        ticks: Sender<()>,
        _open: (Sender<Snapshot>, Sender<()>),
    }

    fn event_loop() -> (EventLoop, Senders) {
        let (handoff_tx, _handoff_rx) = mpsc::unbounded_channel();
        let (to_write_tx, _to_write_rx) = unbounded();
        let outbox = RuntimeOutbox::new(1, handoff_tx, to_write_tx);
        let config = RaftConfig::new(1, vec![1, 2, 3]);
        let storage = Box::new(MemStorage::new());
        let (metrics, _registry) = Metrics::new();
        let kv = MeasuredKv::new(KvStore::new(), metrics.clone());
        let node = RaftNode::new(config, storage, kv, Box::new(outbox));
        let (peers, peer_messages) = bounded(8);
        let (clients, client_calls) = bounded(8);
        let (ticks, tick_rx) = bounded(1);
        let (saved, snapshots_saved) = bounded(1);
        let (stop, shutdown) = bounded(1);
        let inputs = Inputs {
            ticks: tick_rx,
            peer_messages,
            client_calls,
            snapshots_saved,
            shutdown,
        };
        let heartbeat = Duration::from_millis(50);
        let (leadership, _) = tokio::sync::watch::channel(Default::default());
        let (membership, _) = tokio::sync::watch::channel(Default::default());
        let observer = Observer::new(metrics, leadership, membership);
        let event_loop = EventLoop::new(
            node,
            inputs,
            observer,
            Duration::ZERO,
            FastPath::default(),
            heartbeat,
        );
        let senders = Senders {
            peers,
            clients,
            ticks,
            _open: (saved, stop),
        };
        (event_loop, senders)
    }

    #[test]
    fn a_waiting_peer_message_goes_before_client_calls_and_ticks() {
        let (event_loop, inputs) = event_loop();
        for _ in 0..50 {
            let (answer, _) = oneshot::channel();
            inputs.clients.send(ClientCall::Status(answer)).unwrap();
            inputs.ticks.send(()).unwrap();
            let vote = Message::RequestVote(RequestVote {
                term: 1,
                candidate_id: 2,
                last_log_index: 0,
                last_log_term: 0,
                leadership_transfer: false,
            });
            inputs
                .peers
                .send(PeerMessage {
                    from: 2,
                    message: vote,
                })
                .unwrap();
            let first = event_loop.next_event(Duration::ZERO);
            assert!(matches!(first, Event::Peer(_)));
            for _ in 0..2 {
                let next = event_loop.next_event(Duration::ZERO);
                assert!(matches!(next, Event::Client(_) | Event::Tick));
            }
        }
    }
}
