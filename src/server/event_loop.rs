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
//! What the core produces leaves through [`RuntimeOutbox`]: messages go
//! straight to the bridge's per-peer queues (never waiting: a full queue
//! drops the message, which Raft tolerates as network loss), and client
//! answers go onto a channel the loop drains after every call, completing
//! each waiting client's oneshot.

use std::collections::HashMap;

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

/// The core's [`Outbox`] in a running node.
pub struct RuntimeOutbox {
    id: NodeId,
    /// one bounded queue per peer, read by the bridge
    peers: HashMap<NodeId, mpsc::Sender<Message>>,
    /// answers to clients, drained by the event loop
    responses: Sender<(RequestId, ClientResult)>,
}

impl RuntimeOutbox {
    pub fn new(
        id: NodeId,
        peers: HashMap<NodeId, mpsc::Sender<Message>>,
        responses: Sender<(RequestId, ClientResult)>,
    ) -> Self {
        RuntimeOutbox {
            id,
            peers,
            responses,
        }
    }
}

impl Outbox for RuntimeOutbox {
    /// Hand the message to the bridge now: the leader sends AppendEntries
    /// before its own fsync so that both proceed in parallel (dissertation
    /// §10.2.1), so this must not wait for anything.
    fn send(&mut self, to: NodeId, message: Message) {
        let Some(queue) = self.peers.get(&to) else {
            debug!("node {}: dropping a message to {to}: not a peer", self.id);
            return;
        };
        if let Err(error) = queue.try_send(message) {
            // A slow or dead peer must not stall us; Raft retries lost messages.
            let reason = match error {
                mpsc::error::TrySendError::Full(_) => "its queue is full",
                mpsc::error::TrySendError::Closed(_) => "the bridge has stopped",
            };
            debug!("node {}: dropping a message to {to}: {reason}", self.id);
        }
    }

    fn respond(&mut self, request: RequestId, result: ClientResult) {
        // Unbounded and owned by the event loop itself, so this cannot fail
        // while the loop runs.
        let _ = self.responses.send((request, result));
    }
}

/// The event loop's state besides the node: who is waiting for what.
pub struct EventLoop {
    node: RaftNode,
    inputs: Inputs,
    responses: Receiver<(RequestId, ClientResult)>,
    waiting: HashMap<RequestId, oneshot::Sender<ClientResult>>,
    next_request_id: RequestId,
}

impl EventLoop {
    /// `responses` is the receiving end of the channel given to the node's
    /// [`RuntimeOutbox`].
    pub fn new(
        node: RaftNode,
        inputs: Inputs,
        responses: Receiver<(RequestId, ClientResult)>,
    ) -> Self {
        EventLoop {
            node,
            inputs,
            responses,
            waiting: HashMap::new(),
            next_request_id: 1,
        }
    }

    /// Run until shutdown, or until a thread that feeds the loop has stopped
    /// (a node without its timer or its bridge can do nothing useful).
    pub fn run(mut self) {
        let id = self.node.id();
        info!(
            "node {id} term {}: event loop started",
            self.node.current_term()
        );
        loop {
            let keep_going = select! {
                recv(self.inputs.ticks) -> tick => tick.map(|()| self.node.tick()).is_ok(),
                recv(self.inputs.peer_messages) -> message => {
                    message.map(|message| self.on_peer_message(message)).is_ok()
                }
                recv(self.inputs.client_calls) -> call => {
                    call.map(|call| self.on_client_calls(call)).is_ok()
                }
                recv(self.inputs.shutdown) -> _ => false,
            };
            self.deliver_responses();
            if !keep_going {
                break;
            }
        }
        info!(
            "node {id} term {}: event loop stopped",
            self.node.current_term()
        );
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
                // The core has made the reply's state durable already (Figure
                // 2); if the caller gave up meanwhile, the reply is simply lost.
                let _ = reply.send(answer);
            }
        }
    }

    /// Take `first` and every call already waiting, and give all the client
    /// requests among them to the core in one batch: one append, one fsync,
    /// one AppendEntries per follower for all of them.
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

    /// Complete the clients the core has answered.
    fn deliver_responses(&mut self) {
        for (request_id, result) in self.responses.try_iter() {
            if let Some(answer) = self.waiting.remove(&request_id) {
                // A client that went away no longer needs its answer.
                let _ = answer.send(result);
            }
        }
    }
}
