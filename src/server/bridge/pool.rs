//! The senders to the other members, one per peer, opened when the event
//! loop first sends to it. A peer is reached at the address the
//! configuration in force gives it (§6: a new member's address arrives in
//! the configuration entry that adds it), published by the event loop
//! ([`Membership`]); `--peers` only seeds the first configuration.
//!
//! A server that is not in this node's configuration yet — the leader of
//! the cluster a node joins, before the log that names it has arrived — is
//! reached where its own streams say it is served ([`Announced`]): without
//! that, a joining node could not answer the AppendEntries that would
//! bring it the configuration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::refusals::Refusals;
use super::services::ClientAddresses;
use super::{peer_client, PeerSender, StreamMetadata, PEER_QUEUE_LEN};
use crate::config::Address;
use crate::raft::membership::MAX_MEMBERS;
use crate::raft::{Message, NodeId};
use crate::server::metrics::{Membership, Metrics};
use crate::server::watch::Watching;
use crate::tls::Tls;

/// Where each server that opened a stream to this node says its peers
/// reach it (gRPC metadata `raft-kv-peer-address`).
#[derive(Clone, Default)]
pub struct Announced(Arc<Mutex<HashMap<NodeId, Address>>>);

impl Announced {
    /// Remember `address` for `id`; at most [`MAX_MEMBERS`] servers, so a
    /// stranger that varies its id cannot grow the map.
    pub fn learn(&self, id: NodeId, address: Address) {
        let mut known = self.0.lock().expect("no panics while held");
        if known.len() < MAX_MEMBERS || known.contains_key(&id) {
            known.insert(id, address);
        }
    }

    fn of(&self, id: NodeId) -> Option<Address> {
        let known = self.0.lock().expect("no panics while held");
        known.get(&id).cloned()
    }
}

/// What it takes to open a sender to a peer, and the senders open.
pub struct PeerPool {
    pub id: NodeId,
    pub tls: Option<Tls>,
    pub max_message_bytes: usize,
    pub metadata: StreamMetadata,
    pub refusals: Refusals,
    pub metrics: Metrics,
    pub watching: Watching,
    pub membership: watch::Receiver<Membership>,
    pub announced: Announced,
    pub client_addresses: ClientAddresses,
    /// each member's address in the configuration in force
    pub addresses: HashMap<NodeId, Address>,
    /// each open sender's queue, with the address it sends to
    pub queues: HashMap<NodeId, (Address, mpsc::Sender<Message>)>,
}

impl PeerPool {
    /// The queue of the sender to `peer`, opened now if there is none or
    /// the peer's address changed; `None` if nobody says where it is.
    pub fn queue(&mut self, peer: NodeId) -> Option<&mpsc::Sender<Message>> {
        self.refresh();
        let address = match self.addresses.get(&peer) {
            Some(address) => address.clone(),
            None => self.announced.of(peer)?,
        };
        let open = self.queues.get(&peer).is_some_and(|(at, _)| *at == address);
        if !open {
            // Dropping the old queue stops the old sender.
            let queue = self.spawn(peer, &address)?;
            self.queues.insert(peer, (address, queue));
        }
        self.queues.get(&peer).map(|(_, queue)| queue)
    }

    /// Take the configuration the event loop last published, if it is new.
    /// Once a configuration without a server is committed, nothing more is
    /// sent to it (§6), and its sender stops.
    fn refresh(&mut self) {
        if !self.membership.has_changed().unwrap_or(false) {
            return;
        }
        let membership = self.membership.borrow_and_update().clone();
        self.addresses.clear();
        for (&id, text) in &membership.configuration.addresses {
            match Address::parse(text) {
                Ok(address) => {
                    self.client_addresses.know(id, &address);
                    self.addresses.insert(id, address);
                }
                Err(why) => self.refusals.warn(format!("address of {id}"), || {
                    format!("node {}: cannot send to node {id}: {why}", self.id)
                }),
            }
        }
        if membership.committed {
            let members = membership.configuration.members();
            let announced = &self.announced;
            self.queues
                .retain(|id, _| members.contains(id) || announced.of(*id).is_some());
        }
    }

    /// Start a [`PeerSender`] to `peer` at `address`; returns its queue.
    fn spawn(&self, peer: NodeId, address: &Address) -> Option<mpsc::Sender<Message>> {
        let peer_tls = self.tls.as_ref().map(|t| t.peer_config(peer));
        let client = match peer_client(address, peer_tls, self.max_message_bytes) {
            Ok(client) => client,
            Err(e) => {
                let id = self.id;
                self.refusals.warn(format!("address of {peer}"), || {
                    format!("node {id}: bad address {address} for peer {peer}: {e}")
                });
                return None;
            }
        };
        let (queue_tx, queue) = mpsc::channel(PEER_QUEUE_LEN);
        let sender = PeerSender {
            id: self.id,
            peer,
            client,
            metadata: self.metadata.clone(),
            refusals: self.refusals.clone(),
            metrics: self.metrics.clone(),
            watching: self.watching.clone(),
        };
        tokio::spawn(sender.run(queue));
        Some(queue_tx)
    }
}
