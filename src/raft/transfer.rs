//! Leadership transfer (dissertation §3.10): "the prior leader sends its
//! log entries to the target server", stops accepting new client requests,
//! and "sends it a TimeoutNow request. This request has the same effect as
//! the target server's election timer firing". If the transfer "does not
//! complete within an election timeout, the prior leader aborts the
//! transfer and resumes accepting client requests".

use log::{info, warn};

use super::client::{RequestError, RequestId};
use super::message::{Message, NodeId, TimeoutNow};
use super::state::{RaftNode, Role, Transfer};
use super::state_machine::StateMachine;

impl<S: StateMachine> RaftNode<S> {
    /// Start handing leadership to `to` (0: to the most up-to-date
    /// follower, as a leader asked to stop does); `request` is answered
    /// when it ends (with Ok once this leader steps down after sending
    /// TimeoutNow).
    pub(super) fn transfer_leadership(&mut self, request: RequestId, to: NodeId) {
        let me = self.config.id;
        let to = if to == 0 {
            self.most_up_to_date_follower().unwrap_or(me)
        } else {
            to
        };
        let refusal = match &self.role {
            Role::Leader(_) if to == me => {
                self.outbox.respond(request, Ok(Vec::new()));
                return;
            }
            Role::Leader(_) if !self.voting_peers().contains(&to) => RequestError::TransferFailed(
                format!("node {to} is not a voting member of this cluster"),
            ),
            Role::Leader(leader) => match &leader.transfer {
                Some(transfer) => RequestError::TransferInProgress {
                    target: transfer.target,
                },
                None => return self.begin_transfer(request, to),
            },
            _ => RequestError::NotLeader {
                leader: self.leader_id,
            },
        };
        self.outbox.respond(request, Err(refusal));
    }

    /// The voting follower with the highest match_index (the lowest id of
    /// those), which needs the least catching up; a learner cannot lead (§6).
    fn most_up_to_date_follower(&self) -> Option<NodeId> {
        let Role::Leader(leader) = &self.role else {
            return None;
        };
        let configuration = self.configuration();
        let best = leader
            .match_index
            .iter()
            .filter(|&(&id, _)| configuration.is_voter(id))
            .max_by_key(|&(&id, &m)| (m, std::cmp::Reverse(id)));
        best.map(|(&id, _)| id)
    }

    fn begin_transfer(&mut self, request: RequestId, to: NodeId) {
        info!(
            "node {} term {}: transferring leadership to {to} (§3.10)",
            self.config.id,
            self.current_term()
        );
        if let Role::Leader(leader) = &mut self.role {
            leader.transfer = Some(Box::new(Transfer {
                target: to,
                request,
                elapsed: 0,
                timeout_now_sent: false,
            }));
        }
        // Bring the target up to date: send what it lacks now, not at the
        // next heartbeat. TimeoutNow waits for the answer, even when the
        // target holds our log already: a target that cannot answer (down,
        // paused) must not find a TimeoutNow waiting when it comes back,
        // after the transfer was abandoned.
        self.send_append_entries(to, true);
    }

    /// Called on every AppendEntries reply from `from`: once the transfer's
    /// target holds our whole log, send it TimeoutNow. It goes again with
    /// each later reply until we step down, in case it was lost; the target
    /// ignores one of a term it has left.
    pub(super) fn continue_transfer(&mut self, from: NodeId) {
        let last_index = self.log().last_index();
        let term = self.current_term();
        let me = self.config.id;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let Some(transfer) = &mut leader.transfer else {
            return;
        };
        if transfer.target != from || leader.match_index.get(&from) != Some(&last_index) {
            return;
        }
        if !transfer.timeout_now_sent {
            info!("node {me} term {term}: node {from} holds our log through {last_index}; sending TimeoutNow");
        }
        transfer.timeout_now_sent = true;
        let timeout_now = TimeoutNow {
            term,
            leader_id: me,
        };
        self.send(from, Message::TimeoutNow(timeout_now));
    }

    /// A leader's tick: a transfer that has not made the target leader
    /// within an election timeout is abandoned, and writes are taken again.
    pub(super) fn transfer_tick(&mut self) {
        let timeout = self.config.election_timeout_ticks.1;
        let me = self.config.id;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let Some(transfer) = &mut leader.transfer else {
            return;
        };
        transfer.elapsed += 1;
        if transfer.elapsed < timeout {
            return;
        }
        let Transfer {
            target, request, ..
        } = *leader.transfer.take().expect("checked above");
        warn!(
            "node {me} term {}: leadership transfer to {target} abandoned after {timeout} ticks; taking writes again",
            self.current_term()
        );
        let reason = format!(
            "leadership transfer aborted: node {target} did not take over within an election \
             timeout; node {me} is still the leader and accepts writes again"
        );
        self.outbox
            .respond(request, Err(RequestError::TransferFailed(reason)));
    }

    /// A leader stepping down mid-transfer answers its requester: the
    /// transfer did its work if TimeoutNow went out (the target's election
    /// is what deposed us).
    pub(super) fn end_transfer(&mut self, transfer: Transfer) {
        let response = if transfer.timeout_now_sent {
            Ok(Vec::new())
        } else {
            Err(RequestError::LeadershipLost)
        };
        self.outbox.respond(transfer.request, response);
    }

    /// TimeoutNow receiver (§3.10): from the leader of our term, start an
    /// election at once — without a pre-vote (§9.6), since the leader asked.
    pub(super) fn handle_timeout_now(&mut self, request: TimeoutNow) {
        let from_our_leader = self.leader_id == Some(request.leader_id);
        let voter = self.configuration().is_voter(self.config.id);
        if request.term != self.current_term() || self.is_leader() || !from_our_leader || !voter {
            return;
        }
        info!(
            "node {} term {}: TimeoutNow from leader {}: starting an election (§3.10)",
            self.config.id,
            self.current_term(),
            request.leader_id
        );
        // The other servers hear from this leader still, and §6 would have
        // them ignore our RequestVote: it says that the leader sent us.
        self.transfer_election = true;
        self.start_election();
        self.transfer_election = false;
    }
}
