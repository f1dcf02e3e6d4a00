//! The two gRPC services every node serves: the peer service `raftpeer.Raft`
//! (Figure 2, Figure 13) and the client service `raftkv.KeyValue`. Both only
//! translate: a peer's message goes to the event loop one way, once its
//! stream was admitted ([`PeerService::admit`]); a client's request goes
//! with an id, and its answer comes back from the event loop's handoff to
//! the oneshot registered under that id ([`Waiting`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Sender, TrySendError};
use log::debug;
use tokio::sync::oneshot;
use tonic::codegen::{http, BoxFuture, Context, Poll, Service};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status, Streaming};

use super::backup::{Backups, SnapshotStream};
use super::convert;
use super::pool::Announced;
use super::refusals::Refusals;
use crate::config::Address;
use crate::kv::{self, ClientError, ClientRequest, ClientResponse};
use crate::proto::kv as kv_pb;
use crate::proto::peer as peer_pb;
use crate::proto::{
    CLIENT_ADDRESS_METADATA, CLUSTER_ID_METADATA, FROM_METADATA, PEER_ADDRESS_METADATA,
};
use crate::proto::{LEADER_ADDR_METADATA, SESSION_ERROR_METADATA};
use crate::proto::{SEQUENCE_REUSED, SESSION_EXPIRED, STALE_SEQUENCE};
use crate::raft::membership::MAX_MEMBERS;
use crate::raft::{self, NodeId, RequestId};
use crate::server::event_loop::{ClientCall, MemberView, PeerMessage};
use crate::server::identity::ClusterId;
use crate::server::metrics::{Metrics, ProposalFailure};
use crate::server::watch::Watching;
use crate::tls;

pub(super) fn event_loop_gone() -> Status {
    Status::unavailable("this node is shutting down")
}

fn event_loop_busy() -> Status {
    Status::resource_exhausted("this node is overloaded; retry later")
}

/// `raftpeer.Raft`: messages from other servers, handed to `RaftNode::step`.
pub struct PeerService {
    pub id: NodeId,
    pub cluster_id: ClusterId,
    /// where the senders of streams say they are served
    pub announced: Announced,
    /// whether connections come over TLS, with a certificate to check
    pub tls: bool,
    pub client_addresses: ClientAddresses,
    pub refusals: Refusals,
    pub to_event_loop: Sender<PeerMessage>,
    pub metrics: Metrics,
    pub watching: Watching,
}

impl PeerService {
    /// Decide, once per stream, whether it comes from a server of this
    /// cluster: its metadata must carry this cluster's id and another
    /// server's id, and with TLS its connection's certificate must name
    /// that server. The sender need not be in this node's configuration:
    /// a leader adds a server before the server knows it (§6), and the
    /// core takes messages from any server. Everyone else stops here.
    fn admit<T>(&self, request: &Request<T>) -> Result<NodeId, Status> {
        let text = |key: &str| {
            request
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let from_text = text(FROM_METADATA);
        let cluster = text(CLUSTER_ID_METADATA);
        if cluster != self.cluster_id.to_string() {
            let said = if cluster.is_empty() { "none" } else { cluster };
            return Err(self.refuse(
                request,
                format!("cluster id {said:.16}"),
                format!(
                    "its cluster id is {said:.20}, not this cluster's ({}): it is not a member \
                     of this cluster",
                    self.cluster_id
                ),
            ));
        }
        let from = match from_text.parse::<NodeId>() {
            Ok(from) if from != self.id && from != 0 => from,
            _ => {
                return Err(self.refuse(
                    request,
                    "sender".into(),
                    format!(
                        "it claims to be node '{from_text:.20}', not a peer of node {}",
                        self.id
                    ),
                ))
            }
        };
        if self.tls {
            let certified = request
                .peer_certs()
                .is_some_and(|chain| tls::names_node(&chain, from));
            if !certified {
                return Err(self.refuse(
                    request,
                    format!("certificate {from}"),
                    format!(
                        "it claims to be node {from}, but its TLS certificate does not name {}",
                        tls::node_name(from)
                    ),
                ));
            }
        }
        let address = |key| Address::parse(text(key)).ok();
        if let Some(address) = address(CLIENT_ADDRESS_METADATA) {
            self.client_addresses.learn(from, address);
        }
        if let Some(address) = address(PEER_ADDRESS_METADATA) {
            self.announced.learn(from, address);
        }
        Ok(from)
    }

    /// Log a refused stream (once in a while per kind) and say why to the sender.
    fn refuse<T>(&self, request: &Request<T>, kind: String, why: String) -> Status {
        let remote = request
            .remote_addr()
            .map_or("an unknown address".to_string(), |a| a.to_string());
        self.refusals.warn(format!("{kind} {remote}"), || {
            format!(
                "node {}: refused a peer stream from {remote}: {why}",
                self.id
            )
        });
        Status::permission_denied(format!("node {} refuses this stream: {why}", self.id))
    }
}

#[tonic::async_trait]
impl peer_pb::raft_server::Raft for PeerService {
    /// A peer's stream of messages, each handed to the event loop as it
    /// comes. A message that is malformed or names another sender than the
    /// stream's ends the stream (the peer's sender opens another).
    async fn send(
        &self,
        request: Request<Streaming<peer_pb::Envelope>>,
    ) -> Result<Response<peer_pb::Ack>, Status> {
        let stream_from = self.admit(&request)?;
        let remote = request.remote_addr();
        let mut envelopes = request.into_inner();
        while let Some(envelope) = envelopes.message().await? {
            let refused = |why: String| {
                let remote = remote.map_or("an unknown address".to_string(), |a| a.to_string());
                self.refusals.warn(format!("malformed {remote}"), || {
                    format!(
                        "node {}: ended the stream of node {stream_from} from {remote}: {why}",
                        self.id
                    )
                });
                Status::invalid_argument(why)
            };
            let (from, message) = convert::open_envelope(envelope).map_err(&refused)?;
            if from != stream_from {
                return Err(refused(format!(
                    "a message on node {stream_from}'s stream says it is from node {from}"
                )));
            }
            self.metrics.received(&message);
            let dropped = self.watching.faults.drops(from);
            self.watching.traffic.received(from, &message, dropped);
            if dropped {
                continue;
            }
            match self.to_event_loop.try_send(PeerMessage { from, message }) {
                Ok(()) => {}
                // A message the loop cannot take now is lost, as on a network.
                Err(TrySendError::Full(m)) => debug!(
                    "node {}: dropped a {} from {from}: the event loop is busy",
                    self.id,
                    m.message.name()
                ),
                Err(TrySendError::Disconnected(_)) => return Err(event_loop_gone()),
            }
        }
        Ok(Response::new(peer_pb::Ack {}))
    }
}

/// Where clients reach each server, for the `leader-addr` of a redirect: a
/// member's address in the configuration until it says otherwise (each
/// peer stream carries its sender's client address, which differs when it
/// serves clients on a port of their own).
#[derive(Clone)]
pub struct ClientAddresses(Arc<Mutex<HashMap<NodeId, Address>>>);

impl ClientAddresses {
    pub fn new(own_id: NodeId, own: &Address) -> ClientAddresses {
        let addresses = HashMap::from([(own_id, own.clone())]);
        ClientAddresses(Arc::new(Mutex::new(addresses)))
    }

    /// What server `id`'s stream says; at most [`MAX_MEMBERS`] servers are
    /// kept, so a stranger that varies its id cannot grow the map.
    fn learn(&self, id: NodeId, address: Address) {
        let mut addresses = self.0.lock().expect("no panics while held");
        if addresses.len() < 2 * MAX_MEMBERS || addresses.contains_key(&id) {
            addresses.insert(id, address);
        }
    }

    /// Member `id` is served at `peer_address` (its address in the
    /// configuration): where its clients go until its stream says otherwise.
    pub(super) fn know(&self, id: NodeId, peer_address: &Address) {
        let mut addresses = self.0.lock().expect("no panics while held");
        if addresses.len() < 2 * MAX_MEMBERS {
            addresses.entry(id).or_insert_with(|| peer_address.clone());
        }
    }

    pub(super) fn of(&self, id: NodeId) -> Option<Address> {
        self.0
            .lock()
            .expect("no panics while held")
            .get(&id)
            .cloned()
    }
}

/// The client requests handed to the event loop and not answered yet: the
/// one place an answer is matched to its request.
#[derive(Clone, Default)]
pub struct Waiting(Arc<Mutex<WaitingRequests>>);

#[derive(Default)]
struct WaitingRequests {
    next_id: RequestId,
    answers: HashMap<RequestId, oneshot::Sender<raft::Response>>,
}

impl Waiting {
    pub(super) fn register(&self, answer: oneshot::Sender<raft::Response>) -> RequestId {
        let mut waiting = self.0.lock().expect("no panics while held");
        waiting.next_id += 1;
        let id = waiting.next_id;
        waiting.answers.insert(id, answer);
        id
    }

    pub(super) fn forget(&self, id: RequestId) {
        self.0
            .lock()
            .expect("no panics while held")
            .answers
            .remove(&id);
    }

    /// Hand `response` to whoever waits for request `id` (a caller that gave
    /// up meanwhile no longer needs it).
    pub fn answer(&self, id: RequestId, response: raft::Response) {
        let waiting = self
            .0
            .lock()
            .expect("no panics while held")
            .answers
            .remove(&id);
        match waiting {
            Some(answer) => {
                let _ = answer.send(response);
            }
            None => debug!("an answer to request {id}, which nobody waits for"),
        }
    }
}

/// `raftkv.KeyValue`: client requests, handed to `RaftNode::client_requests`.
/// The other services of the client port share a clone of it.
#[derive(Clone)]
pub struct ClientService {
    pub addresses: ClientAddresses,
    pub to_event_loop: Sender<ClientCall>,
    pub waiting: Waiting,
    pub metrics: Metrics,
    pub backups: Backups,
}

impl ClientService {
    pub(super) fn submit(&self, call: ClientCall) -> Result<(), Status> {
        match self.to_event_loop.try_send(call) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(event_loop_busy()),
            Err(TrySendError::Disconnected(_)) => Err(event_loop_gone()),
        }
    }

    /// Check a request, send it to the core and wait for its answer.
    pub(super) async fn call(&self, request: ClientRequest) -> Result<ClientResponse, Status> {
        let request = kv::to_raft(request, unix_ms()).map_err(|error| self.status_of(error))?;
        let write = matches!(request, raft::Request::Write(_));
        let (answer_to, answer) = oneshot::channel();
        let id = self.waiting.register(answer_to);
        if let Err(status) = self.submit(ClientCall::Request(id, request)) {
            self.waiting.forget(id);
            if write && status.code() == Code::ResourceExhausted {
                self.metrics.proposal_failed(ProposalFailure::Overloaded);
            }
            return Err(status);
        }
        let response = answer.await.map_err(|_| event_loop_gone())?;
        if write {
            self.metrics.proposal(&response);
        }
        kv::from_raft(response).map_err(|error| self.status_of(error))
    }

    /// The gRPC status for an error of the core; a refusal by a follower
    /// says where the leader is, in the message and in `leader-addr`.
    pub(super) fn status_of(&self, error: ClientError) -> Status {
        match error {
            ClientError::NotLeader { leader: Some(id) } => {
                let Some(address) = self.addresses.of(id) else {
                    return Status::unavailable(format!("not leader; the leader is node {id}"));
                };
                let mut metadata = MetadataMap::new();
                if let Ok(value) = MetadataValue::try_from(address.to_string()) {
                    metadata.insert(LEADER_ADDR_METADATA, value);
                }
                Status::with_metadata(
                    Code::Unavailable,
                    format!("not leader; the leader is node {id} at {address}"),
                    metadata,
                )
            }
            ClientError::NotLeader { leader: None } => {
                Status::unavailable("not leader; no leader is known yet")
            }
            ClientError::LeadershipLost => Status::unavailable(
                "not leader: leadership was lost before the request completed; \
                 retry with the same client_id and sequence",
            ),
            ClientError::TransferInProgress { target } => Status::unavailable(format!(
                "leadership transfer in progress: this leader is handing over to node \
                 {target} and takes no writes; retry (nothing was applied)"
            )),
            ClientError::Removed { node } => Status::unavailable(format!(
                "node {node} was removed from the cluster (§6) and serves no requests; \
                 ask another member"
            )),
            ClientError::InvalidArgument(reason) => Status::invalid_argument(reason),
            ClientError::StaleSequence => session_refusal(
                STALE_SEQUENCE,
                "stale sequence: this client has already applied a later request".into(),
            ),
            ClientError::SequenceReused {
                client_id,
                sequence,
            } => session_refusal(
                SEQUENCE_REUSED,
                format!(
                    "sequence reused: client {client_id} already used sequence {sequence} \
                     for another command; nothing was applied"
                ),
            ),
            ClientError::SessionExpired { client_id } => session_refusal(
                SESSION_EXPIRED,
                format!(
                    "session expired: client {client_id} has no session (it expired or was \
                     evicted); nothing was applied; start a new session with a new client_id \
                     and sequence 1"
                ),
            ),
            ClientError::Behind {
                node,
                last_applied,
                commit_index,
            } => Status::unavailable(if last_applied < commit_index {
                format!(
                    "node {node} is behind: it has applied its log up to index \
                     {last_applied} of {commit_index} committed; retry, or ask another node"
                )
            } else {
                format!(
                    "node {node} may be behind: it has applied its log up to index \
                     {last_applied}, but no leader of its term has told it yet what is \
                     committed (just restarted, or an election is running); retry, or \
                     ask another node"
                )
            }),
        }
    }
}

/// FAILED_PRECONDITION for a §6.3 session refusal, saying which in metadata.
fn session_refusal(kind: &'static str, message: String) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(SESSION_ERROR_METADATA, MetadataValue::from_static(kind));
    Status::with_metadata(Code::FailedPrecondition, message, metadata)
}

/// The time a write is received, which its command carries (§6.3): the
/// bridge reads the clock so that the Raft core never does.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn wrong_response(response: ClientResponse) -> Status {
    Status::internal(format!("the core answered with {response:?}"))
}

#[tonic::async_trait]
impl kv_pb::key_value_server::KeyValue for ClientService {
    async fn set(
        &self,
        request: Request<kv_pb::SetRequest>,
    ) -> Result<Response<kv_pb::SetResponse>, Status> {
        let kv_pb::SetRequest {
            key,
            value,
            client_id,
            sequence,
        } = request.into_inner();
        let request = ClientRequest::Set {
            key,
            value,
            client_id,
            sequence,
        };
        match self.call(request).await? {
            ClientResponse::Set => Ok(Response::new(kv_pb::SetResponse {})),
            other => Err(wrong_response(other)),
        }
    }

    async fn get(
        &self,
        request: Request<kv_pb::GetRequest>,
    ) -> Result<Response<kv_pb::GetResponse>, Status> {
        let request = request.into_inner();
        let linearizable = match kv_pb::Consistency::try_from(request.consistency) {
            Ok(kv_pb::Consistency::Linearizable) => true,
            Ok(kv_pb::Consistency::Stale) => false,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown consistency {}; expected LINEARIZABLE (0) or STALE (1)",
                    request.consistency
                )))
            }
        };
        let request = ClientRequest::Get {
            key: request.key,
            linearizable,
        };
        match self.call(request).await? {
            ClientResponse::Value(value) => Ok(Response::new(kv_pb::GetResponse {
                found: value.is_some(),
                value: value.unwrap_or_default(),
            })),
            other => Err(wrong_response(other)),
        }
    }

    async fn delete(
        &self,
        request: Request<kv_pb::DeleteRequest>,
    ) -> Result<Response<kv_pb::DeleteResponse>, Status> {
        let kv_pb::DeleteRequest {
            key,
            client_id,
            sequence,
        } = request.into_inner();
        let request = ClientRequest::Delete {
            key,
            client_id,
            sequence,
        };
        match self.call(request).await? {
            ClientResponse::Deleted { existed } => {
                Ok(Response::new(kv_pb::DeleteResponse { existed }))
            }
            other => Err(wrong_response(other)),
        }
    }

    async fn status(
        &self,
        _request: Request<kv_pb::StatusRequest>,
    ) -> Result<Response<kv_pb::StatusResponse>, Status> {
        let (answer_to, answer) = oneshot::channel();
        self.submit(ClientCall::Members(answer_to))?;
        let MemberView {
            status, removed, ..
        } = answer.await.map_err(|_| event_loop_gone())?;
        let ids = |set: &std::collections::BTreeSet<NodeId>| set.iter().copied().collect();
        Ok(Response::new(kv_pb::StatusResponse {
            id: status.id,
            role: status.role.to_string(),
            term: status.term,
            leader_id: status.leader_id.unwrap_or(0),
            commit_index: status.commit_index,
            last_applied: status.last_applied,
            last_log_index: status.last_log_index,
            voters: ids(&status.configuration.voters),
            old_voters: ids(&status.configuration.outgoing),
            learners: ids(&status.configuration.learners),
            configuration_index: status.configuration_index,
            configuration_committed: status.configuration_committed,
            removed,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<kv_pb::SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        Ok(Response::new(self.backup().await?))
    }
}

/// A client service whose too-large requests are refused as what they are:
/// the caller's mistake (INVALID_ARGUMENT, naming the limit and the flag),
/// not tonic's OUT_OF_RANGE. tonic refuses them from the length prefix,
/// before reading the body, so a large request costs no memory.
#[derive(Clone)]
pub struct RequestLimit<S> {
    inner: S,
    limit: usize,
}

impl<S> RequestLimit<S> {
    pub fn new(inner: S, limit: usize) -> RequestLimit<S> {
        RequestLimit { inner, limit }
    }
}

impl<S: NamedService> NamedService for RequestLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for RequestLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (answer, limit) = (self.inner.call(request), self.limit);
        Box::pin(async move {
            let response = answer.await?;
            Ok(match too_large(&response) {
                Some(size) => Status::invalid_argument(format!(
                    "request is {size} bytes; the limit is {limit} (--max-request-bytes)"
                ))
                .into_http(),
                None => response,
            })
        })
    }
}

/// The size tonic found, if `response` is its refusal of a request over
/// the decoding limit.
fn too_large<T>(response: &http::Response<T>) -> Option<String> {
    let status = Status::from_header_map(response.headers())?;
    let found = status
        .message()
        .strip_prefix("Error, decoded message length too large: found ")?;
    (status.code() == Code::OutOfRange).then(|| found.split(' ').next().unwrap_or("?").to_string())
}
