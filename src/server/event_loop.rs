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
//! Batching and group commit are how much one turn takes: every client
//! request waiting, every peer message waiting (`--fast-path-off batching`
//! or `group-commit` takes one at a time, to measure what they are worth).
//!
//! Waking a sleeping thread costs tens of microseconds on a virtual machine —
//! as much as a loopback round trip — and a request crosses between this
//! thread and the bridge several times. So after work the loop keeps polling
//! its channels for `--poll-us` before it sleeps (yielding the CPU between
//! polls): the reply that follows a request usually arrives within that time
//! and is taken without a wake-up.

use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use log::{debug, info};
use tokio::sync::{mpsc, oneshot};

use crate::config::FastPath;
use crate::kv::KvStore;
use crate::raft::{
    Message, NodeId, NodeStatus, Outbox, RaftNode, Request, RequestId, Response, Snapshot,
    SnapshotToSave,
};

/// A message from a peer, for `RaftNode::step`.
#[derive(Debug)]
pub struct PeerMessage {
    pub from: NodeId,
    pub message: Message,
}

/// A call from a client: a request under the id the bridge waits on, or a
/// status query answered on its oneshot.
#[derive(Debug)]
pub enum ClientCall {
    Request(RequestId, Request),
    Status(oneshot::Sender<NodeStatus>),
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
    node: RaftNode<KvStore>,
    inputs: Inputs,
    /// how long to poll for more work before sleeping
    poll: Duration,
    /// what `--fast-path-off` left on
    fast_path: FastPath,
}

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
        node: RaftNode<KvStore>,
        inputs: Inputs,
        poll: Duration,
        fast_path: FastPath,
    ) -> Self {
        EventLoop {
            node,
            inputs,
            poll,
            fast_path,
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
        loop {
            let event = self.next_event(poll);
            poll = self.poll;
            match event {
                Event::Tick => {
                    self.node.tick();
                    // Ticks are the idle loop's only work: polling after
                    // them would burn the CPU of an idle cluster.
                    poll = Duration::ZERO;
                }
                Event::Peer(message) => self.on_peer_messages(message),
                Event::Client(call) => self.on_client_calls(call),
                Event::SnapshotSaved(snapshot) => self.node.snapshot_saved(snapshot),
                Event::Stop => break,
            }
            self.node.end_turn();
        }
        info!(
            "node {id} term {}: event loop stopped",
            self.node.current_term()
        );
    }

    /// The next thing to do: polled for up to `poll`, then waited for.
    fn next_event(&self, poll: Duration) -> Event {
        let inputs = &self.inputs;
        let started = Instant::now();
        loop {
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

    /// Step `first` and every peer message already waiting (group commit:
    /// the entries they append cost one fsync, at the end of the turn).
    fn on_peer_messages(&mut self, first: PeerMessage) {
        let more = if self.fast_path.group_commit {
            usize::MAX
        } else {
            0
        };
        let waiting = self.inputs.peer_messages.try_iter().take(more);
        for m in std::iter::once(first).chain(waiting) {
            self.node.step(m.from, m.message);
        }
    }

    /// Give the core `first` and every client request already waiting in
    /// one batch (batching: one append, one AppendEntries per follower).
    fn on_client_calls(&mut self, first: ClientCall) {
        let more = if self.fast_path.batching {
            usize::MAX
        } else {
            0
        };
        let mut batch = Vec::new();
        let waiting = self.inputs.client_calls.try_iter().take(more);
        for call in std::iter::once(first).chain(waiting) {
            match call {
                ClientCall::Request(id, request) => batch.push((id, request)),
                ClientCall::Status(answer) => {
                    let _ = answer.send(self.node.status());
                }
            }
        }
        if !batch.is_empty() {
            self.node.client_requests(batch);
        }
    }
}
