//! The event loop: the one thread that owns the [`RaftNode`].
//!
//! It waits on four channels with `crossbeam_channel::select!` and makes one
//! plain, blocking call into the core for each thing that arrives:
//!
//! | channel          | sender             | call into the core            |
//! |------------------|--------------------|-------------------------------|
//! | `ticks`          | timer thread       | `tick()`                      |
//! | `peer_messages`  | gRPC bridge        | `step_batch(messages)`        |
//! | `client_calls`   | gRPC bridge        | `client_requests(batch)`      |
//! | `shutdown`       | whoever stops us   | (leave the loop)              |
//!
//! What the core produces leaves through [`RuntimeOutbox`]. Messages to
//! peers, replies to peers' requests and answers to clients are gathered
//! during a turn and handed to the bridge together, as one [`Handoff`]: a
//! wake-up of the bridge's runtime is a syscall, and a context switch if it
//! sleeps, so one per turn rather than one per message. The core flushes its
//! messages early when it is about to wait on its disk, so followers start
//! writing while the leader does (dissertation §10.2.1).
//!
//! Waking a sleeping thread costs tens of microseconds on a virtual machine —
//! as much as a loopback round trip — and a request crosses between this
//! thread and the bridge several times. So after work the loop keeps polling
//! its channels for `--poll-us` before it sleeps (yielding the CPU between
//! polls): the reply that follows a request usually arrives within that time
//! and is taken without a wake-up.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use log::{debug, info};
use tokio::sync::{mpsc, oneshot};

use crate::raft::{
    ClientRequest, ClientResult, Message, NodeId, NodeStatus, Outbox, RaftNode, RequestId,
};

/// A message from a peer, for `RaftNode::step`. Requests carry the channel
/// their reply goes back on; replies to our own requests carry none.
#[derive(Debug)]
pub struct PeerMessage {
    pub from: NodeId,
    pub message: Message,
    pub reply: Option<oneshot::Sender<Message>>,
}

/// A call from a client, answered on its oneshot.
#[derive(Debug)]
pub enum ClientCall {
    Request(ClientRequest, oneshot::Sender<ClientResult>),
    Status(oneshot::Sender<NodeStatus>),
}

/// The receiving ends the event loop waits on.
pub struct Inputs {
    pub ticks: Receiver<()>,
    pub peer_messages: Receiver<PeerMessage>,
    pub client_calls: Receiver<ClientCall>,
    pub shutdown: Receiver<()>,
}

/// What one turn of the event loop hands the bridge (see the module docs).
#[derive(Debug, Default)]
pub struct Handoff {
    /// requests (and replies not tied to a request) to send to peers
    pub messages: Vec<(NodeId, Message)>,
    /// replies to peers' requests, each on the channel its RPC waits on
    pub peer_replies: Vec<(oneshot::Sender<Message>, Message)>,
    /// answers to clients, each on the channel its RPC waits on
    pub answers: Vec<(oneshot::Sender<ClientResult>, ClientResult)>,
}

impl Handoff {
    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.peer_replies.is_empty() && self.answers.is_empty()
    }
}

/// The core's [`Outbox`] in a running node.
pub struct RuntimeOutbox {
    id: NodeId,
    /// messages of this turn, not yet handed to the bridge
    messages: Vec<(NodeId, Message)>,
    to_bridge: mpsc::UnboundedSender<Handoff>,
    /// answers to clients, drained by the event loop
    responses: Sender<(RequestId, ClientResult)>,
}

impl RuntimeOutbox {
    pub fn new(
        id: NodeId,
        to_bridge: mpsc::UnboundedSender<Handoff>,
        responses: Sender<(RequestId, ClientResult)>,
    ) -> Self {
        RuntimeOutbox {
            id,
            messages: Vec::new(),
            to_bridge,
            responses,
        }
    }
}

impl Outbox for RuntimeOutbox {
    fn send(&mut self, to: NodeId, message: Message) {
        self.messages.push((to, message));
    }

    fn respond(&mut self, request: RequestId, result: ClientResult) {
        // Unbounded and owned by the event loop itself, so this cannot fail
        // while the loop runs.
        let _ = self.responses.send((request, result));
    }

    /// Never waits: the channel is unbounded, and the bridge drops what a
    /// slow or dead peer cannot take (Raft retries lost messages).
    fn flush(&mut self) {
        if self.messages.is_empty() {
            return;
        }
        let messages = std::mem::take(&mut self.messages);
        let handoff = Handoff {
            messages,
            ..Handoff::default()
        };
        if self.to_bridge.send(handoff).is_err() {
            debug!(
                "node {}: dropping messages: the bridge has stopped",
                self.id
            );
        }
    }
}

/// The event loop's state besides the node: who is waiting for what.
pub struct EventLoop {
    node: RaftNode,
    inputs: Inputs,
    responses: Receiver<(RequestId, ClientResult)>,
    waiting: HashMap<RequestId, oneshot::Sender<ClientResult>>,
    next_request_id: RequestId,
    to_bridge: mpsc::UnboundedSender<Handoff>,
    /// what this turn hands the bridge besides the core's messages
    handoff: Handoff,
    /// how long to poll for more work before sleeping
    poll: Duration,
}

/// What woke the loop.
enum Event {
    Tick,
    Peer(PeerMessage),
    Client(ClientCall),
    /// shutdown, or a thread that feeds the loop has stopped (a node without
    /// its timer or its bridge can do nothing useful)
    Stop,
}

impl EventLoop {
    /// `responses` is the receiving end of the channel given to the node's
    /// [`RuntimeOutbox`], `to_bridge` the same channel to the bridge.
    pub fn new(
        node: RaftNode,
        inputs: Inputs,
        responses: Receiver<(RequestId, ClientResult)>,
        to_bridge: mpsc::UnboundedSender<Handoff>,
        poll: Duration,
    ) -> Self {
        EventLoop {
            node,
            inputs,
            responses,
            waiting: HashMap::new(),
            next_request_id: 1,
            to_bridge,
            handoff: Handoff::default(),
            poll,
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
                Event::Peer(message) => self.on_peer_message(message),
                Event::Client(call) => self.on_client_calls(call),
                Event::Stop => break,
            }
            self.end_turn();
        }
        self.end_turn();
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
            recv(inputs.shutdown) -> _ => Event::Stop,
        }
    }

    /// Take `first` and every peer message already waiting, and step them
    /// through the core together: the entries they append cost one fsync.
    fn on_peer_message(&mut self, first: PeerMessage) {
        let mut reply_channels = Vec::new();
        let mut messages = Vec::new();
        for m in std::iter::once(first).chain(self.inputs.peer_messages.try_iter()) {
            reply_channels.push(m.reply);
            messages.push((m.from, m.message));
        }
        let answers = self.node.step_batch(messages);
        for (reply, answer) in reply_channels.into_iter().zip(answers) {
            if let (Some(reply), Some(answer)) = (reply, answer) {
                // The core has made the reply's state durable already
                // (Figure 2).
                self.handoff.peer_replies.push((reply, answer));
            }
        }
    }

    /// Take `first` and every call already waiting, and give all the client
    /// requests among them to the core in one batch: one append, one fsync,
    /// one AppendEntries per follower for all of them (unless
    /// `--fast-path-off` says otherwise: `RaftNode::append_as_leader`).
    fn on_client_calls(&mut self, first: ClientCall) {
        let mut batch = Vec::new();
        for call in std::iter::once(first).chain(self.inputs.client_calls.try_iter()) {
            match call {
                ClientCall::Request(request, answer) => {
                    let request_id = self.next_request_id;
                    self.next_request_id += 1;
                    self.waiting.insert(request_id, answer);
                    batch.push((request_id, request));
                }
                ClientCall::Status(answer) => {
                    let _ = answer.send(self.node.status());
                }
            }
        }
        if !batch.is_empty() {
            self.node.client_requests(batch);
        }
    }

    /// Hand the bridge everything this turn produced, in one piece.
    fn end_turn(&mut self) {
        for (request_id, result) in self.responses.try_iter() {
            if let Some(answer) = self.waiting.remove(&request_id) {
                self.handoff.answers.push((answer, result));
            }
        }
        if !self.handoff.is_empty() {
            let handoff = std::mem::take(&mut self.handoff);
            // Fails only once the bridge has stopped, and then nobody waits.
            let _ = self.to_bridge.send(handoff);
        }
        self.node.flush_outbox();
    }
}
