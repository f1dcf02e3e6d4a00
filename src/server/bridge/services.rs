//! The two gRPC services every node serves on its one address: the peer
//! service `raftpeer.Raft` (Figure 2, Figure 13) and the client service
//! `raftkv.KeyValue`. Both only translate: each call becomes a message to
//! the event loop, and the answer comes back on a oneshot channel.

use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};
use log::debug;
use tokio::sync::oneshot;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};

use super::convert;
use crate::config::Members;
use crate::proto::kv as kv_pb;
use crate::proto::peer as peer_pb;
use crate::raft::{
    ClientError, ClientRequest, ClientResponse, ClientResult, Message, NodeId, NodeStatus,
};
use crate::server::event_loop::{ClientCall, PeerMessage};

pub use crate::proto::LEADER_ADDR_METADATA;

fn event_loop_gone() -> Status {
    Status::unavailable("this node is shutting down")
}

fn event_loop_busy() -> Status {
    Status::resource_exhausted("this node is overloaded; retry later")
}

/// `raftpeer.Raft`: requests from other servers, handed to `RaftNode::step`.
pub struct PeerService {
    pub id: NodeId,
    pub members: Arc<Members>,
    pub to_event_loop: Sender<PeerMessage>,
}

impl PeerService {
    /// The sender of a request is the candidate or leader it names; the core
    /// keeps state per member, so anyone else is refused.
    fn check_sender(&self, from: NodeId) -> Result<NodeId, Status> {
        if from == self.id || !self.members.contains(from) {
            return Err(Status::invalid_argument(format!(
                "node {from} is not a peer of node {}",
                self.id
            )));
        }
        Ok(from)
    }

    /// Hand a request to the event loop and wait for the core's reply.
    async fn exchange(&self, from: NodeId, message: Message) -> Result<Message, Status> {
        let (reply, answer) = oneshot::channel();
        let peer_message = PeerMessage {
            from,
            message,
            reply: Some(reply),
        };
        match self.to_event_loop.try_send(peer_message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(event_loop_busy()),
            Err(TrySendError::Disconnected(_)) => return Err(event_loop_gone()),
        }
        let reply = answer.await.map_err(|_| event_loop_gone())?;
        debug!(
            "node {} term {}: -> {from} {}",
            self.id,
            reply.term(),
            convert::summary(&reply)
        );
        Ok(reply)
    }
}

fn wrong_reply(message: Message) -> Status {
    Status::internal(format!(
        "the core answered with {}",
        convert::summary(&message)
    ))
}

#[tonic::async_trait]
impl peer_pb::raft_server::Raft for PeerService {
    async fn request_vote(
        &self,
        request: Request<peer_pb::RequestVoteRequest>,
    ) -> Result<Response<peer_pb::RequestVoteReply>, Status> {
        let request = convert::request_vote_from_proto(request.into_inner());
        let from = self.check_sender(request.candidate_id)?;
        match self.exchange(from, Message::RequestVote(request)).await? {
            Message::RequestVoteReply(reply) => {
                Ok(Response::new(convert::request_vote_reply_to_proto(reply)))
            }
            other => Err(wrong_reply(other)),
        }
    }

    async fn append_entries(
        &self,
        request: Request<peer_pb::AppendEntriesRequest>,
    ) -> Result<Response<peer_pb::AppendEntriesReply>, Status> {
        let request = convert::append_entries_from_proto(request.into_inner())
            .map_err(Status::invalid_argument)?;
        let from = self.check_sender(request.leader_id)?;
        match self.exchange(from, Message::AppendEntries(request)).await? {
            Message::AppendEntriesReply(reply) => {
                Ok(Response::new(convert::append_entries_reply_to_proto(reply)))
            }
            other => Err(wrong_reply(other)),
        }
    }

    async fn install_snapshot(
        &self,
        request: Request<peer_pb::InstallSnapshotRequest>,
    ) -> Result<Response<peer_pb::InstallSnapshotReply>, Status> {
        let request = convert::install_snapshot_from_proto(request.into_inner());
        let from = self.check_sender(request.leader_id)?;
        match self
            .exchange(from, Message::InstallSnapshot(request))
            .await?
        {
            Message::InstallSnapshotReply(reply) => Ok(Response::new(
                convert::install_snapshot_reply_to_proto(reply),
            )),
            other => Err(wrong_reply(other)),
        }
    }
}

/// `raftkv.KeyValue`: client requests, handed to `RaftNode::client_requests`.
pub struct ClientService {
    pub members: Arc<Members>,
    pub to_event_loop: Sender<ClientCall>,
}

impl ClientService {
    fn submit(&self, call: ClientCall) -> Result<(), Status> {
        match self.to_event_loop.try_send(call) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(event_loop_busy()),
            Err(TrySendError::Disconnected(_)) => Err(event_loop_gone()),
        }
    }

    /// Send a request to the core and wait for its answer.
    async fn call(&self, request: ClientRequest) -> Result<ClientResponse, Status> {
        let (answer_to, answer) = oneshot::channel::<ClientResult>();
        self.submit(ClientCall::Request(request, answer_to))?;
        let result = answer.await.map_err(|_| event_loop_gone())?;
        result.map_err(|error| self.status_of(error))
    }

    /// The gRPC status for an error of the core; a refusal by a follower
    /// says where the leader is, in the message and in `leader-addr`.
    fn status_of(&self, error: ClientError) -> Status {
        match error {
            ClientError::NotLeader { leader: Some(id) } => {
                let Some(address) = self.members.address(id) else {
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
            ClientError::InvalidArgument(reason) => Status::invalid_argument(reason),
            ClientError::StaleSequence => Status::failed_precondition(
                "stale sequence: this client has already applied a later request",
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
        let (answer_to, answer) = oneshot::channel::<NodeStatus>();
        self.submit(ClientCall::Status(answer_to))?;
        let status = answer.await.map_err(|_| event_loop_gone())?;
        Ok(Response::new(kv_pb::StatusResponse {
            id: status.id,
            role: status.role.to_string(),
            term: status.term,
            leader_id: status.leader_id.unwrap_or(0),
            commit_index: status.commit_index,
            last_applied: status.last_applied,
            last_log_index: status.last_log_index,
        }))
    }
}
