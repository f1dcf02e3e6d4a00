//! `raftmembership.Membership` (proto/membership.proto): membership changes
//! (§6), handed to the core as client requests, so that their answers come
//! back the way a write's does; and the member list, which only the leader
//! gives, since only it knows how far each member's log matches its own.

use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::services::{event_loop_gone, ClientService};
use crate::config::Address;
use crate::kv::ClientError;
use crate::proto::membership as pb;
use crate::raft::{self, MembershipChange, NodeId, RequestError};
use crate::server::event_loop::{ClientCall, MemberView};
use crate::server::identity::ClusterId;

/// Shares the client service's way into the event loop and its waiting list.
pub struct MembershipService {
    pub cluster_id: ClusterId,
    pub service: ClientService,
}

impl MembershipService {
    /// The node's status and view of the members, from the event loop.
    async fn view(&self) -> Result<MemberView, Status> {
        let (answer_to, answer) = oneshot::channel();
        self.service.submit(ClientCall::Members(answer_to))?;
        answer.await.map_err(|_| event_loop_gone())
    }

    /// Ask the core for `change` and wait until it is committed; then the
    /// members as this node sees them (it may no longer lead: a leader
    /// that removed itself has stepped down).
    async fn change(&self, change: MembershipChange) -> Result<pb::MemberListResponse, Status> {
        let service = &self.service;
        let (answer_to, answer) = oneshot::channel();
        let id = service.waiting.register(answer_to);
        let call = ClientCall::Request(id, raft::Request::ChangeMembership(change));
        if let Err(status) = service.submit(call) {
            service.waiting.forget(id);
            return Err(status);
        }
        match answer.await.map_err(|_| event_loop_gone())? {
            Ok(_) => Ok(self.list_of(self.view().await?)),
            Err(error) => Err(change_status(service, error)),
        }
    }

    /// The leader's answer to MemberList.
    fn list_of(&self, view: MemberView) -> pb::MemberListResponse {
        let status = &view.status;
        let configuration = &status.configuration;
        let members = configuration.members().into_iter().map(|id| {
            let match_index = match id == status.id {
                true => status.last_log_index,
                false => view.match_indexes.get(&id).copied().unwrap_or(0),
            };
            let joint = configuration.is_joint();
            let (old, new) = (
                configuration.outgoing.contains(&id),
                configuration.voters.contains(&id),
            );
            pb::Member {
                id,
                address: configuration
                    .addresses
                    .get(&id)
                    .cloned()
                    .unwrap_or_default(),
                role: match configuration.learners.contains(&id) {
                    true => pb::MemberRole::Learner,
                    false => pb::MemberRole::Voter,
                } as i32,
                match_index,
                leaving: joint && old && !new,
                joining: joint && new && !old,
            }
        });
        pb::MemberListResponse {
            members: members.collect(),
            joint: configuration.is_joint(),
            configuration_index: status.configuration_index,
            committed: status.configuration_committed,
            leader_id: status.leader_id.unwrap_or(0),
            cluster_id: self.cluster_id.to_string(),
        }
    }
}

/// A node id from a request: 0 means none.
fn member_id(id: NodeId) -> Result<NodeId, Status> {
    match id {
        0 => Err(Status::invalid_argument(
            "node id 0 is reserved (it means 'none'); ids start at 1",
        )),
        id => Ok(id),
    }
}

#[tonic::async_trait]
impl pb::membership_server::Membership for MembershipService {
    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let view = self.view().await?;
        let status = &view.status;
        if view.removed {
            let error = ClientError::Removed { node: status.id };
            return Err(self.service.status_of(error));
        }
        if status.leader_id != Some(status.id) {
            let error = ClientError::NotLeader {
                leader: status.leader_id,
            };
            return Err(self.service.status_of(error));
        }
        Ok(Response::new(self.list_of(view)))
    }

    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let pb::MemberAddRequest {
            id,
            address,
            learner,
        } = request.into_inner();
        let id = member_id(id)?;
        // Checked here, where it is used: the core carries it as bytes.
        let address = Address::parse(&address)
            .map_err(|why| Status::invalid_argument(format!("node {id}: {why}")))?
            .to_string();
        let change = match learner {
            true => MembershipChange::AddLearner { id, address },
            false => MembershipChange::AddVoter { id, address },
        };
        self.change(change).await.map(Response::new)
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let id = member_id(request.into_inner().id)?;
        let change = MembershipChange::Promote { id };
        self.change(change).await.map(Response::new)
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        let id = member_id(request.into_inner().id)?;
        let change = MembershipChange::Remove { id };
        self.change(change).await.map(Response::new)
    }
}

/// The status for a change the core refused or abandoned.
fn change_status(service: &ClientService, error: RequestError) -> Status {
    match error {
        RequestError::ChangeInProgress(why) => Status::aborted(format!(
            "another membership change is in progress (one at a time, §6): {why}; \
             retry once it is done"
        )),
        RequestError::MembershipRefused(why) => Status::failed_precondition(why),
        RequestError::LeadershipLost => Status::unavailable(
            "leadership was lost before the change was committed: it may or may not \
             have been made; see raft-kv member list",
        ),
        other => service.status_of(ClientError::from(other)),
    }
}
