//! Pre-vote (dissertation §9.6): "a candidate would first ask other servers
//! whether its log was up-to-date enough to get their vote. Only if the
//! candidate believed it could get votes from a majority of the cluster
//! would it increment its term and start a normal election." A server cut
//! off by a partition then keeps its term, and on its return cannot depose
//! a healthy leader. `RaftConfig::pre_vote` (`--pre-vote`) switches it off.

use std::collections::BTreeSet;

// BEGIN SOLUTION election
use log::info;

use super::message::RequestVote;
// SKELETON
// END SOLUTION
use super::message::{Message, NodeId, PreVote, PreVoteReply};
use super::state::RaftNode;
use super::state_machine::StateMachine;

impl<S: StateMachine> RaftNode<S> {
    /// The election timer fired (§5.2): with pre-vote, ask first (§9.6);
    /// without, become a candidate at once.
    pub(super) fn election_timer_fired(&mut self) {
        // §6: only voters stand for election; learners, servers that are
        // joining, and removed servers just wait to hear from a leader.
        if !self.configuration().is_voter(self.config.id) {
            self.reset_election_timer();
            return;
        }
        if self.config.pre_vote {
            self.start_pre_vote();
        } else {
            self.start_election();
        }
    }

    /// §9.6: ask every other server whether it would vote for us in
    /// current_term + 1, changing neither our term nor our vote. The timer
    /// restarts, so a round that finds no majority is tried again later.
    pub(super) fn start_pre_vote(&mut self) {
        let me = self.config.id;
        let Some(term) = self.current_term().checked_add(1) else {
            // start_election says why no election can start
            return self.start_election();
        };
        self.reset_election_timer();
        // Silent for an election timeout: we no longer know a leader (as a
        // candidate would not), so clients are not sent to a dead one and
        // health says so; the reads waiting on it go back to their clients.
        self.fail_read_batches();
        self.leader_id = None;
        self.pre_votes = Some(BTreeSet::from([me]));
        if self.has_majority_of_pre_votes() {
            return self.start_election();
        }
        log::info!(
            "node {me} term {}: election timeout; asking for pre-votes for term {term} (§9.6)",
            self.current_term()
        );
        let request = PreVote {
            term,
            candidate_id: me,
            last_log_index: self.log().last_index(),
            last_log_term: self.log().last_term(),
        };
        for peer in self.voting_peers() {
            self.send(peer, Message::PreVote(request.clone()));
        }
    }

    /// Whether this server heard from a current leader within the minimum
    /// election timeout (a leader hears from itself). It then grants no
    /// pre-vote (§9.6): the leader it knows is alive.
    pub fn in_leader_contact(&self) -> bool {
        self.is_leader() || self.leader_contact_elapsed < self.config.election_timeout_ticks.0
    }

    /// PreVote receiver (§9.6): grant if an election at the asked term could
    /// be won here — the term is newer than ours and the candidate's log is
    /// at least as up-to-date (§5.4.1) — and no current leader was heard
    /// from within the minimum election timeout. Nothing here changes: not
    /// the term, not the vote, not the timer.
    pub fn handle_pre_vote(&mut self, request: PreVote) -> PreVoteReply {
        // BEGIN SOLUTION election
        let term_ok = request.term > self.current_term();
        let log_ok = self.candidate_log_is_up_to_date(&RequestVote {
            term: request.term,
            candidate_id: request.candidate_id,
            last_log_index: request.last_log_index,
            last_log_term: request.last_log_term,
            leadership_transfer: false,
        });
        let leader_alive = self.in_leader_contact();
        let vote_granted = term_ok && log_ok && !leader_alive;
        info!(
            "node {} term {}: pre-vote for {} in term {}: {}",
            self.config.id,
            self.current_term(),
            request.candidate_id,
            request.term,
            if vote_granted {
                "granted"
            } else if !term_ok {
                "refused, stale term"
            } else if !log_ok {
                "refused, candidate's log is behind (§5.4.1)"
            } else {
                "refused, a current leader was heard from (§9.6)"
            }
        );
        PreVoteReply {
            term: self.current_term(),
            request_term: request.term,
            vote_granted,
        }
        // SKELETON
        // // Pre-vote (§9.6) is an extension: the course's tests run without
        // // it (SimConfig::pre_vote is false). Given:
        // // self.candidate_log_is_up_to_date(..), self.in_leader_contact().
        // PreVoteReply {
        //     term: self.current_term(),
        //     request_term: request.term,
        //     vote_granted: false,
        // }
        // END SOLUTION
    }

    /// Count a pre-vote (§9.6); with a majority, start the real election.
    /// A newer term in a refusal was adopted by `step` already.
    pub(super) fn handle_pre_vote_reply(&mut self, from: NodeId, reply: PreVoteReply) {
        // BEGIN SOLUTION election
        let round = self.current_term().checked_add(1);
        if !reply.vote_granted || Some(reply.request_term) != round || self.is_leader() {
            return;
        }
        let Some(votes) = &mut self.pre_votes else {
            return;
        };
        votes.insert(from);
        if self.has_majority_of_pre_votes() {
            self.start_election();
        }
        // SKELETON
        // // Given: self.has_majority_of_pre_votes(), self.start_election().
        // let _ = (from, reply);
        // END SOLUTION
    }

    fn has_majority_of_pre_votes(&self) -> bool {
        self.pre_votes
            .as_ref()
            .is_some_and(|votes| self.is_quorum(votes))
    }
}
