//! Figure 2 "RequestVote RPC" and the candidate's rules (§5.2, §5.4.1).

// BEGIN SOLUTION election
use log::info;
// SKELETON
// END SOLUTION
use super::message::{Message, NodeId, RequestVote, RequestVoteReply};
use super::state::{RaftNode, Role};
use super::state_machine::StateMachine;

impl<S: StateMachine> RaftNode<S> {
    /// Candidates (§5.2): "On conversion to candidate, start election:
    /// increment currentTerm, vote for self, reset election timer, send
    /// RequestVote RPCs to all other servers".
    pub(super) fn start_election(&mut self) {
        // BEGIN SOLUTION election
        if !self.become_candidate() {
            return;
        }
        if self.has_majority_of_votes() {
            // A cluster of one elects itself.
            self.become_leader();
            return;
        }
        let request = RequestVote {
            term: self.current_term(),
            candidate_id: self.config.id,
            last_log_index: self.log().last_index(),
            last_log_term: self.log().last_term(),
            leadership_transfer: self.transfer_election,
        };
        for peer in self.voting_peers() {
            self.send(peer, Message::RequestVote(request.clone()));
        }
        // SKELETON
        // // Given: self.become_candidate() (the term, the vote for itself,
        // // durable), self.voting_peers(), self.send(peer, message),
        // // self.log().last_index(), self.log().last_term().
        // let _ = Self::become_candidate;
        // todo!("milestone 1 (election): start_election (§5.2)")
        // END SOLUTION
    }

    /// RequestVote receiver implementation (Figure 2).
    pub fn handle_request_vote(&mut self, request: RequestVote) -> RequestVoteReply {
        // BEGIN SOLUTION election
        // 1. "Reply false if term < currentTerm (§5.1)". (A newer term was
        // already adopted by `step`.)
        let term_ok = request.term == self.current_term();
        // 2. "If votedFor is null or candidateId, and candidate's log is at
        // least as up-to-date as receiver's log, grant vote (§5.2, §5.4)".
        let not_voted_for_another = self.voted_for().is_none_or(|v| v == request.candidate_id);
        let log_ok = self.candidate_log_is_up_to_date(&request);
        let vote_granted = term_ok && not_voted_for_another && log_ok;
        if vote_granted {
            self.persistent.set_voted_for(request.candidate_id);
            // Followers: the timer restarts on "granting vote to candidate".
            self.reset_election_timer();
        }
        info!(
            "node {} term {}: vote for {} in term {}: {}",
            self.config.id,
            self.current_term(),
            request.candidate_id,
            request.term,
            if vote_granted {
                "granted"
            } else if !term_ok {
                "refused, stale term"
            } else if !not_voted_for_another {
                "refused, already voted"
            } else {
                "refused, candidate's log is behind (§5.4.1)"
            }
        );
        RequestVoteReply {
            term: self.current_term(),
            vote_granted,
        }
        // SKELETON
        // // Given: self.voted_for(), self.persistent.set_voted_for(candidate)
        // // (durable before it returns), self.reset_election_timer(); and
        // // yours, below, self.candidate_log_is_up_to_date(&request).
        // let _ = super::persistent::Persistent::set_voted_for;
        // let _ = Self::candidate_log_is_up_to_date;
        // todo!("milestone 1 (election): answer {request:?} (Figure 2, RequestVote RPC)")
        // END SOLUTION
    }

    /// §5.4.1: "If the logs have last entries with different terms, then the
    /// log with the later term is more up-to-date. If the logs end with the
    /// same term, then whichever log is longer is more up-to-date."
    pub(super) fn candidate_log_is_up_to_date(&self, request: &RequestVote) -> bool {
        // BEGIN SOLUTION election
        let (my_last_term, my_last_index) = (self.log().last_term(), self.log().last_index());
        request.last_log_term > my_last_term
            || (request.last_log_term == my_last_term && request.last_log_index >= my_last_index)
        // SKELETON
        // todo!("milestone 1 (election): is {request:?}'s log at least as up-to-date as ours? (§5.4.1)")
        // END SOLUTION
    }

    /// Candidates (§5.2): "If votes received from majority of servers: become leader".
    pub(super) fn handle_request_vote_reply(&mut self, from: NodeId, reply: RequestVoteReply) {
        // BEGIN SOLUTION election
        // Votes count only in the term they were cast for.
        if !self.is_current(reply.term) || !reply.vote_granted {
            return;
        }
        if let Role::Candidate { votes } = &mut self.role {
            votes.insert(from);
            if self.has_majority_of_votes() {
                self.become_leader();
            }
        }
        // SKELETON
        // // Given: self.is_current(term), self.has_majority_of_votes(),
        // // self.become_leader().
        // let _ = (Self::has_majority_of_votes, Self::become_leader);
        // todo!("milestone 1 (election): count {reply:?} from n{from} (§5.2)")
        // END SOLUTION
    }

    /// §6: "if a server receives a RequestVote request within the minimum
    /// election timeout of hearing from a current leader, it does not update
    /// its term or grant its vote" — so a server removed from the cluster,
    /// which hears no more heartbeats, cannot depose the leader. A candidate
    /// the leader itself sent (TimeoutNow, §3.10) is heard.
    pub(super) fn ignores_request_vote(&self, from: NodeId, message: &Message) -> bool {
        let Message::RequestVote(request) = message else {
            return false;
        };
        if !self.config.ignore_votes_while_led {
            return false;
        }
        // BEGIN SOLUTION membership
        let ignored = request.term > self.current_term()
            && !request.leadership_transfer
            && self.in_leader_contact();
        if ignored {
            log::info!(
                "node {} term {}: ignored RequestVote from {from} for term {}: a leader was heard from within the minimum election timeout (§6)",
                self.config.id,
                self.current_term(),
                request.term
            );
        }
        ignored
        // SKELETON
        // // Given: self.in_leader_contact(), and request.leadership_transfer.
        // let _ = (from, request);
        // false
        // END SOLUTION
    }

    fn has_majority_of_votes(&self) -> bool {
        match &self.role {
            Role::Candidate { votes } => self.is_quorum(votes),
            _ => false,
        }
    }
}
