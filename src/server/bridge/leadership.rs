//! `raftleadership.Leadership` (proto/leadership.proto): leadership transfer
//! (dissertation §3.10), handed to the core as a client request, so that
//! its answer comes back the way a write's does.

use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::services::{event_loop_gone, ClientService};
use crate::kv::ClientError;
use crate::proto::leadership as pb;
use crate::raft::{self, NodeId, RequestError};
use crate::server::event_loop::ClientCall;

/// Shares the client service's way into the event loop and its waiting list.
pub struct LeadershipService {
    pub id: NodeId,
    pub service: ClientService,
}

#[tonic::async_trait]
impl pb::leadership_server::Leadership for LeadershipService {
    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let to = request.into_inner().to;
        let service = &self.service;
        if to != 0 && service.addresses.of(to).is_none() {
            return Err(Status::invalid_argument(format!(
                "node {to} is not a member of this cluster"
            )));
        }
        let (answer_to, answer) = oneshot::channel();
        let id = service.waiting.register(answer_to);
        let call = ClientCall::Request(id, raft::Request::TransferLeadership { to });
        if let Err(status) = service.submit(call) {
            service.waiting.forget(id);
            return Err(status);
        }
        match answer.await.map_err(|_| event_loop_gone())? {
            Ok(_) => Ok(Response::new(pb::TransferLeaderResponse {
                // only the leader hands over
                previous_leader: self.id,
            })),
            Err(error) => Err(transfer_status(service, error)),
        }
    }
}

/// The status for a transfer the core refused or abandoned.
fn transfer_status(service: &ClientService, error: RequestError) -> Status {
    match error {
        RequestError::TransferInProgress { target } => Status::failed_precondition(format!(
            "a leadership transfer to node {target} is already in progress"
        )),
        RequestError::TransferFailed(reason) => Status::aborted(reason),
        other => service.status_of(ClientError::from(other)),
    }
}
