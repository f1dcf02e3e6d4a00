//! The gRPC bridge: the one thread of a node that runs tokio.
//!
//! Raft itself is synchronous (see `event_loop.rs`); this thread turns it
//! into network traffic and back, and is the only place prost types appear.
//!
//! - **Inbound.** A tonic server serves the peer service `raftpeer.Raft` and
//!   the client service `raftkv.KeyValue` (`services.rs`), on one port or,
//!   with `--listen-clients`, each on its own. With TLS, the bridge does the
//!   handshakes (`accept.rs`). A peer stream is admitted once, at its start:
//!   it must carry this cluster's id and a server's id, and with TLS come
//!   over a connection whose certificate names that server (any server of
//!   the cluster: a new member is heard from before this node's log names
//!   it, §6). A peer's
//!   message is converted (`convert.rs`) and sent to the event loop, one
//!   way; a client's request is sent with an id under which a oneshot waits
//!   for its answer ([`services::Waiting`]). Beside the client service are
//!   the standard health and reflection services (`health.rs`); with
//!   `--metrics-addr`, an HTTP listener serves `/metrics` (`scrape.rs`).
//!   Both read what the event loop publishes, never ask it.
//! - **Outbound.** The event loop hands over what each of its turns produced
//!   as one [`Handoff`]; a dispatcher task hands the answers to the clients
//!   waiting for them and puts the messages on per-peer queues, each peer
//!   reached where the configuration in force says (`pool.rs`). For each
//!   peer, a task keeps one `Send` stream open and writes every message of
//!   its queue to it in order — requests and replies alike, one way. When
//!   the stream fails (the peer is down, or stopped answering HTTP/2 pings)
//!   the task opens another after [`RECONNECT_DELAY`]; what cannot be sent
//!   meanwhile is dropped: Raft treats it as lost and retries (§5.3). A dead
//!   or slow peer costs a failed connect, never a stall.
//!
//! The runtime is `current_thread`. With three nodes sharing two cores and
//! 64 concurrent clients writing to the leader, a multi-threaded runtime
//! with one or two workers did no better (the differences were within
//! run-to-run noise), so each node keeps the simpler runtime and one tokio
//! thread.

mod accept;
mod backup;
mod convert;
mod health;
mod leadership;
mod membership;
mod pool;
mod refusals;
mod scrape;
mod services;
mod watching;

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::Sender;
use log::debug;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::metadata::MetadataValue;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::Code;
// tonic's own re-export of tokio-stream: the per-peer channel becomes the
// request stream of the `Send` RPC.
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

use crate::config::Address;
use crate::kv;
use crate::proto::kv::key_value_server::KeyValueServer;
use crate::proto::leadership::leadership_server::LeadershipServer;
use crate::proto::membership::membership_server::MembershipServer;
use crate::proto::peer::raft_client::RaftClient;
use crate::proto::peer::raft_server::RaftServer;
use crate::proto::{
    CLIENT_ADDRESS_METADATA, CLUSTER_ID_METADATA, FROM_METADATA, PEER_ADDRESS_METADATA,
};
use crate::raft::{Message, NodeId, RaftConfig};
use crate::server::event_loop::{ClientCall, Handoff, PeerMessage};
use crate::server::identity::ClusterId;
use crate::server::metrics::{Leadership, Membership, Metrics};
use crate::server::watch::Watching;
use crate::server::Listeners;
use crate::tls::Tls;
use leadership::LeadershipService;
use membership::MembershipService;
use pool::{Announced, PeerPool};
use refusals::Refusals;
use services::{ClientAddresses, ClientService, PeerService, Waiting};

/// Largest gRPC message a node sends to a client: a value of 1 MiB and
/// its key, with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The largest peer message a node sends or decodes: an AppendEntries holds
/// at most `max_bytes_per_message` of entries, or one larger entry — which
/// the key-value store's limits bound — and an InstallSnapshot one chunk;
/// plus the few bytes each entry's index, term and framing add.
pub fn max_peer_message_bytes(config: &RaftConfig) -> usize {
    let largest_entry = kv::MAX_KEY_BYTES + kv::MAX_VALUE_BYTES + 1024;
    let framing = config.max_entries_per_message * 32 + 4096;
    config
        .max_bytes_per_message
        .max(config.snapshot_chunk_bytes)
        .max(largest_entry)
        + framing
}
/// Messages waiting to be sent to one peer; more are dropped.
pub const PEER_QUEUE_LEN: usize = 256;
/// Messages handed to one peer's open stream and not yet written to it;
/// more are dropped (a peer that stopped reading must not hold memory).
pub const PEER_STREAM_LEN: usize = 64;
/// How long to wait before opening a new stream to a peer whose last one
/// failed: a dead peer costs a connection attempt this often, not one per
/// message.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// How long a stopping server waits for its clients to hang up.
const GRACEFUL_SHUTDOWN: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// HTTP/2 pings notice a peer that vanished without closing its connection.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 flow-control windows large enough for a full AppendEntries batch
/// in one round trip (the default 64 KiB would need dozens).
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// What the bridge thread needs.
pub struct Bridge {
    pub id: NodeId,
    pub cluster_id: ClusterId,
    /// where peers reach this node (sent to peers, which may not know yet)
    pub peer_address: Address,
    /// the configuration in force, as the event loop publishes it
    pub membership: watch::Receiver<Membership>,
    /// where clients reach this node (sent to peers, which redirect to it)
    pub client_address: Address,
    /// the largest client request decoded (`--max-request-bytes`)
    pub max_request_bytes: usize,
    /// the largest peer message sent or decoded ([`max_peer_message_bytes`])
    pub max_peer_message_bytes: usize,
    pub tls: Option<Tls>,
    /// this node's listening sockets, bound early (see `Listeners::bind`)
    pub listeners: Listeners,
    pub peer_messages: Sender<PeerMessage>,
    pub client_calls: Sender<ClientCall>,
    /// what the event loop hands over, a turn at a time
    pub handoffs: mpsc::UnboundedReceiver<Handoff>,
    /// what the event loop last saw of the leader, for health checks
    pub leadership: watch::Receiver<Leadership>,
    pub metrics: Metrics,
    /// what `/metrics` shows, with `--metrics-addr`
    pub registry: Registry,
    /// the watch stream's view, the traffic counts and the partition
    pub watching: Watching,
    /// stops the server when fired or dropped
    pub shutdown: oneshot::Receiver<()>,
}

impl Bridge {
    /// Start the bridge thread. It returns when shut down, or with a one-line
    /// error if the server fails.
    pub fn spawn(self) -> std::io::Result<JoinHandle<Result<(), String>>> {
        thread::Builder::new()
            .name("grpc-bridge".into())
            .spawn(move || self.run())
    }

    fn run(self) -> Result<(), String> {
        let id = self.id;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("node {id}: cannot start the tokio runtime: {e}"))?;
        runtime.block_on(self.serve())
    }

    async fn serve(self) -> Result<(), String> {
        let Bridge {
            id,
            cluster_id,
            peer_address,
            mut membership,
            client_address,
            max_request_bytes,
            max_peer_message_bytes,
            tls,
            listeners,
            peer_messages,
            client_calls,
            handoffs,
            leadership,
            metrics,
            registry,
            watching,
            shutdown,
        } = self;
        let refusals = Refusals::default();
        let waiting = Waiting::default();
        let client_addresses = ClientAddresses::new(id, &client_address);
        let announced = Announced::default();
        // The first configuration too is taken as it comes.
        membership.mark_changed();
        let pool = PeerPool {
            id,
            tls: tls.clone(),
            max_message_bytes: max_peer_message_bytes,
            metadata: StreamMetadata {
                cluster_id: cluster_id.to_string(),
                from: id.to_string(),
                client_address: client_address.to_string(),
                peer_address: peer_address.to_string(),
            },
            refusals: refusals.clone(),
            metrics: metrics.clone(),
            watching: watching.clone(),
            membership,
            announced: announced.clone(),
            client_addresses: client_addresses.clone(),
            addresses: HashMap::new(),
            queues: HashMap::new(),
        };
        tokio::spawn(dispatch(handoffs, pool, waiting.clone()));

        let peer_service = RaftServer::new(PeerService {
            id,
            cluster_id,
            announced,
            tls: tls.is_some(),
            client_addresses: client_addresses.clone(),
            refusals: refusals.clone(),
            to_event_loop: peer_messages,
            metrics: metrics.clone(),
            watching: watching.clone(),
        })
        .max_decoding_message_size(max_peer_message_bytes)
        .max_encoding_message_size(max_peer_message_bytes);
        let service = ClientService {
            addresses: client_addresses,
            to_event_loop: client_calls,
            waiting,
            metrics,
            backups: backup::Backups::default(),
        };
        let leadership_service = LeadershipServer::new(LeadershipService {
            id,
            service: service.clone(),
        });
        let membership_service = MembershipServer::new(MembershipService {
            cluster_id,
            service: service.clone(),
        });
        let client_service = KeyValueServer::new(service)
            .max_decoding_message_size(max_request_bytes)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let client_service = services::RequestLimit::new(client_service, max_request_bytes);
        let clients = client_router(id, client_service, leadership)
            .await?
            .add_service(watching::watch_server(id, watching.clone()))
            .add_service(watching::fault_server(id, watching))
            .add_service(leadership_service)
            .add_service(membership_service);
        let tls_config = tls
            .map(|t| t.server_config())
            .transpose()
            .map_err(|e| format!("node {id}: TLS: {e}"))?;
        let listening = Listening {
            id,
            tls: tls_config,
            refusals,
        };
        listening
            .serve_all(listeners, peer_service, clients, registry, shutdown)
            .await
    }
}

/// The services of the client listener: the key-value API, and beside it
/// the standard health and reflection services (`health.rs`).
async fn client_router(
    id: NodeId,
    client_service: services::RequestLimit<KeyValueServer<ClientService>>,
    leadership: watch::Receiver<Leadership>,
) -> Result<Router, String> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    health::report(id, reporter, leadership).await;
    let (reflection_v1, reflection_v1alpha) =
        health::reflection().map_err(|e| format!("node {id}: server reflection: {e}"))?;
    Ok(server()
        .add_service(client_service)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha))
}

/// A tonic server with the node's HTTP/2 settings.
fn server() -> Server {
    Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
}

/// How a node serves a listening socket: in plain text, or with TLS.
struct Listening {
    id: NodeId,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    refusals: Refusals,
}

impl Listening {
    /// Serve `router` on `listener` until `stopping` turns true.
    async fn serve(
        &self,
        router: Router,
        listener: std::net::TcpListener,
        mut stopping: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let id = self.id;
        let listener = listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(|e| format!("node {id}: cannot use the listening socket: {e}"))?;
        let stop = async move {
            let _ = stopping.wait_for(|&stop| stop).await;
        };
        let served = match &self.tls {
            None => {
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                router.serve_with_incoming_shutdown(incoming, stop).await
            }
            Some(config) => {
                let incoming =
                    accept::tls_incoming(id, listener, config.clone(), self.refusals.clone());
                router.serve_with_incoming_shutdown(incoming, stop).await
            }
        };
        served.map_err(|e| format!("node {id}: the gRPC server failed: {e}"))
    }
}

impl Listening {
    /// Serve the peer service and `clients` on one listener or each on its
    /// own, and the metrics on theirs, until `shutdown` fires or is dropped.
    async fn serve_all(
        &self,
        listeners: Listeners,
        peer_service: RaftServer<PeerService>,
        clients: Router,
        registry: Registry,
        shutdown: oneshot::Receiver<()>,
    ) -> Result<(), String> {
        let (stopping_tx, stopping) = watch::channel(false);
        tokio::spawn(async move {
            let _ = shutdown.await;
            let _ = stopping_tx.send(true);
        });
        if let Some(listener) = listeners.metrics {
            tokio::spawn(scrape::serve(self.id, listener, registry, stopping.clone()));
        }
        let serving = async {
            match listeners.clients {
                None => {
                    let both = clients.add_service(peer_service);
                    self.serve(both, listeners.peers, stopping.clone()).await
                }
                Some(clients_listener) => {
                    let peers = server().add_service(peer_service);
                    tokio::try_join!(
                        self.serve(peers, listeners.peers, stopping.clone()),
                        self.serve(clients, clients_listener, stopping.clone())
                    )
                    .map(|_| ())
                }
            }
        };
        // Shutdown closes connections gracefully, but a client that never
        // reads its GOAWAY must not keep the node from stopping.
        tokio::select! {
            served = serving => served,
            () = grace_after(stopping.clone()) => Ok(()),
        }
    }
}

/// Wait for the stop signal, then for [`GRACEFUL_SHUTDOWN`].
async fn grace_after(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|&stop| stop).await;
    tokio::time::sleep(GRACEFUL_SHUTDOWN).await;
}

/// A client for one peer that connects on first use and reconnects after
/// failures by itself; with `tls`, it accepts only that peer's certificate.
fn peer_client(
    address: &Address,
    tls: Option<tonic::transport::ClientTlsConfig>,
    max_message_bytes: usize,
) -> Result<RaftClient<Channel>, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(address.url(tls.is_some()))?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .connect_lazy();
    Ok(RaftClient::new(channel)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes))
}

/// Deliver what the event loop hands over: answers to the clients waiting
/// for them, messages to their peer's queue.
async fn dispatch(
    mut handoffs: mpsc::UnboundedReceiver<Handoff>,
    mut pool: PeerPool,
    waiting: Waiting,
) {
    while let Some(handoff) = handoffs.recv().await {
        deliver(handoff, &mut pool, &waiting);
    }
}

/// One handoff: answers first, then messages. A full queue drops the
/// message: a slow or dead peer must not hold up the others, and Raft treats
/// the message as lost (§5.3).
fn deliver(handoff: Handoff, pool: &mut PeerPool, waiting: &Waiting) {
    let id = pool.id;
    for (request, response) in handoff.answers {
        waiting.answer(request, response);
    }
    for (peer, message) in handoff.messages {
        let Some(queue) = pool.queue(peer) else {
            debug!("node {id}: dropping a message to {peer}: its address is unknown");
            continue;
        };
        if let Err(error) = queue.try_send(message) {
            let reason = match error {
                mpsc::error::TrySendError::Full(_) => "its queue is full",
                mpsc::error::TrySendError::Closed(_) => "its sender has stopped",
            };
            debug!("node {id}: dropping a message to {peer}: {reason}");
        }
    }
}

/// What every peer stream a node opens says about it, in its gRPC metadata:
/// checked once per stream by the receiver (`PeerService::admit`).
#[derive(Clone)]
struct StreamMetadata {
    cluster_id: String,
    from: String,
    client_address: String,
    peer_address: String,
}

impl StreamMetadata {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        for (key, value) in [
            (CLUSTER_ID_METADATA, &self.cluster_id),
            (FROM_METADATA, &self.from),
            (CLIENT_ADDRESS_METADATA, &self.client_address),
            (PEER_ADDRESS_METADATA, &self.peer_address),
        ] {
            if let Ok(value) = MetadataValue::try_from(value.as_str()) {
                metadata.insert(key, value);
            }
        }
        request
    }
}

/// Sends the event loop's messages for one peer, over one stream at a time.
struct PeerSender {
    id: NodeId,
    peer: NodeId,
    client: RaftClient<Channel>,
    metadata: StreamMetadata,
    refusals: Refusals,
    metrics: Metrics,
    watching: Watching,
}

impl PeerSender {
    async fn run(self, mut queue: mpsc::Receiver<Message>) {
        let (id, peer) = (self.id, self.peer);
        while let Some(first) = queue.recv().await {
            // Open a stream and write the queue to it until it fails.
            let (stream, envelopes) = mpsc::channel(PEER_STREAM_LEN);
            let mut client = self.client.clone();
            let request = self.metadata.request(ReceiverStream::new(envelopes));
            let mut call = tokio::spawn(async move { client.send(request).await });
            let mut next = Some(first);
            while let Some(message) = next.take() {
                debug!("node {id} term {}: -> {peer} {}", message.term(), message);
                let sent = self.metrics.sent(&message);
                let dropped = self.watching.faults.drops(peer);
                self.watching.traffic.sent(peer, &message, dropped);
                let sending = match dropped {
                    // A partition (`SetPartition`): lost as on a cut network.
                    true => Ok(()),
                    false => stream.try_send(convert::envelope(id, message)),
                };
                match sending {
                    Ok(()) if dropped => {}
                    Ok(()) => {
                        sent.inc();
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        debug!("node {id}: -> {peer} dropped: its stream is full")
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
                tokio::select! {
                    message = queue.recv() => next = message,
                    ended = &mut call => {
                        self.ended(ended);
                        break;
                    }
                }
            }
            drop(stream);
            if !call.is_finished() {
                call.abort();
            }
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
    }

    /// A stream the peer refused is worth a warning (another cluster, or a
    /// certificate it does not take); any other end is the network's doing.
    fn ended<T>(&self, ended: Result<Result<T, tonic::Status>, tokio::task::JoinError>) {
        let (id, peer) = (self.id, self.peer);
        match ended {
            Ok(Err(status))
                if matches!(
                    status.code(),
                    Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument
                ) =>
            {
                self.refusals
                    .warn(format!("refused by {peer} {}", status.message()), || {
                        format!(
                            "node {id}: node {peer} refused our messages: {}",
                            status.message()
                        )
                    })
            }
            Ok(Err(status)) => match tls_failure(&status) {
                // A TLS failure does not heal by retrying: wrong files.
                Some(why) => self.refusals.warn(format!("tls to {peer} {why}"), || {
                    format!("node {id}: cannot reach node {peer} over TLS: {why}")
                }),
                None => debug!("node {id}: the stream to {peer} ended: {status}"),
            },
            _ => debug!("node {id}: the stream to {peer} ended"),
        }
    }
}

/// The TLS error somewhere in the causes of `status`, if any: a peer whose
/// certificate does not name it, or is of another CA, or that refused ours.
fn tls_failure(status: &tonic::Status) -> Option<String> {
    use tokio_rustls::rustls;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = cause {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        let inner = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        if let Some(tls) = inner.and_then(|e| e.downcast_ref::<rustls::Error>()) {
            return Some(tls.to_string());
        }
        cause = error.source();
    }
    None
}
