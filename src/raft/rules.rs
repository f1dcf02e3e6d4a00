//! Figure 2 "Rules for Servers": what every server does on each message and
//! each tick, and the role changes (§5.1, Figure 4).

use log::{debug, info, warn};

use std::collections::BTreeSet;

use super::client::RequestError;
use super::log::{Command, Entry};
use super::message::{Message, NodeId, Term};
use super::state::{Flow, Leader, RaftNode, Reader, Role};
use super::state_machine::StateMachine;

impl<S: StateMachine> RaftNode<S> {
    /// Handle one message from peer `from`. A reply leaves through the
    /// outbox once what it speaks for is durable (`end_turn`).
    pub fn step(&mut self, from: NodeId, message: Message) {
        debug!(
            "node {} term {}: <- {from} {message}",
            self.config.id,
            self.current_term()
        );
        if let Some(reason) = self.refusal(from, &message) {
            warn!(
                "node {} term {}: refused a {} from {from}: {reason}",
                self.config.id,
                self.current_term(),
                message.name()
            );
            return;
        }
        if self.ignores_request_vote(from, &message) {
            return;
        }
        // All Servers: "If RPC request or response contains term T >
        // currentTerm: set currentTerm = T, convert to follower (§5.1)".
        // Not a PreVote's term: the candidate has not adopted it (§9.6).
        if message.term() > self.current_term() && !matches!(message, Message::PreVote(_)) {
            self.become_follower(message.term(), None);
        }
        match message {
            Message::RequestVote(request) => {
                let reply = self.handle_request_vote(request);
                self.send(from, Message::RequestVoteReply(reply));
            }
            Message::RequestVoteReply(reply) => self.handle_request_vote_reply(from, reply),
            Message::AppendEntries(request) => {
                let reply = self.handle_append_entries(request);
                self.send(from, Message::AppendEntriesReply(reply));
            }
            Message::AppendEntriesReply(reply) => {
                self.handle_append_entries_reply(from, reply);
                self.continue_transfer(from);
            }
            Message::InstallSnapshot(request) => {
                let reply = self.handle_install_snapshot(request);
                self.send(from, Message::InstallSnapshotReply(reply));
            }
            Message::InstallSnapshotReply(reply) => self.handle_install_snapshot_reply(from, reply),
            Message::ReadIndex(request) => self.handle_read_index(from, request),
            Message::ReadIndexReply(reply) => self.handle_read_index_reply(from, reply),
            Message::PreVote(request) => {
                let reply = self.handle_pre_vote(request);
                self.send(from, Message::PreVoteReply(reply));
            }
            Message::PreVoteReply(reply) => self.handle_pre_vote_reply(from, reply),
            Message::TimeoutNow(request) => self.handle_timeout_now(request),
        }
        // All Servers: "If commitIndex > lastApplied: increment lastApplied,
        // apply log[lastApplied] to state machine (§5.3)".
        self.apply_committed();
    }

    /// One unit of logical time has passed.
    pub fn tick(&mut self) {
        self.drop_abandoned_snapshot();
        match &mut self.role {
            // Followers (§5.2): "If election timeout elapses without receiving
            // AppendEntries RPC from current leader or granting vote to
            // candidate: convert to candidate". Candidates: "If election
            // timeout elapses: start new election".
            Role::Follower | Role::Candidate { .. } => {
                self.age_read_batches();
                self.election_elapsed += 1;
                self.leader_contact_elapsed = self.leader_contact_elapsed.saturating_add(1);
                if self.election_elapsed >= self.election_timeout {
                    self.election_timer_fired();
                }
            }
            Role::Leader(leader) => {
                // Leaders: "send initial empty AppendEntries RPCs (heartbeat)
                // to each server; repeat during idle periods to prevent
                // election timeouts (§5.2)".
                leader.heartbeat_elapsed += 1;
                leader.lease.ticks += 1;
                let heartbeat_due = leader.heartbeat_elapsed >= self.config.heartbeat_ticks;
                leader.check_quorum_elapsed += 1;
                let check_due = leader.check_quorum_elapsed >= self.config.election_timeout_ticks.1;
                if heartbeat_due {
                    // With a lease, each heartbeat renews it (`lease.rs`).
                    self.note_round_sent(true);
                    self.broadcast_append_entries(true);
                }
                if check_due {
                    self.check_quorum();
                }
                self.transfer_tick();
                self.membership_tick();
            }
        }
    }

    /// Dissertation §6.2: a leader that has not heard from a majority within an
    /// election timeout steps down, so that clients of a leader cut off in a
    /// minority partition learn it and go find the real one.
    fn check_quorum(&mut self) {
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let mut heard_from = std::mem::take(&mut leader.heard_from);
        leader.check_quorum_elapsed = 0;
        heard_from.insert(self.config.id);
        if !self.is_quorum(&heard_from) {
            info!(
                "node {} term {}: heard from {} of the voters ({}) in an election timeout; stepping down",
                self.config.id,
                self.current_term(),
                heard_from.len(),
                self.configuration()
            );
            self.become_follower(self.current_term(), None);
        }
    }

    // The role changes (§5.1, Figure 4), together.

    /// Convert to follower in `term` (a newer term, or the current one when a
    /// candidate or leader learns of a legitimate leader).
    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let old_role = self.role.name();
        // A follower's reads wait on the leader of its term: a new term
        // or another leader will not answer them.
        let leader_changed = leader.is_some_and(|l| self.leader_id != Some(l));
        if term > self.current_term() || leader_changed {
            self.fail_read_batches();
        }
        if term > self.current_term() {
            self.set_term(term, None);
        }
        if let Role::Leader(leader_state) = std::mem::replace(&mut self.role, Role::Follower) {
            self.fail_pending_requests(*leader_state);
        }
        if leader.is_some() {
            // heard from the leader of our term (§9.6)
            self.leader_contact_elapsed = 0;
            self.pre_votes = None;
        }
        // A leader that steps down no longer knows who leads: clients it
        // redirects must not be sent back to it.
        if leader.is_some() || self.leader_id == Some(self.config.id) {
            self.leader_id = leader;
        }
        if old_role != "follower" {
            info!(
                "node {} term {}: {old_role} -> follower",
                self.config.id,
                self.current_term()
            );
            self.reset_election_timer();
        }
    }

    /// Candidates (§5.2): "On conversion to candidate, start election:
    /// increment currentTerm, vote for self, reset election timer". The term
    /// and the vote are durable together before any RequestVote leaves, so
    /// a crash cannot make us vote twice in this term. False if the term
    /// cannot grow.
    pub(super) fn become_candidate(&mut self) -> bool {
        let old_role = self.role.name();
        let me = self.config.id;
        let Some(term) = self.current_term().checked_add(1) else {
            log::error!(
                "node {me}: current_term is {}, the largest term there is: no election can start",
                self.current_term()
            );
            return false;
        };
        self.fail_read_batches();
        self.set_term(term, Some(me));
        self.pre_votes = None;
        self.role = Role::Candidate {
            votes: BTreeSet::from([me]),
        };
        info!("node {me} term {term}: {old_role} -> candidate");
        self.reset_election_timer();
        true
    }

    /// A leader that steps down answers every waiting client: the request
    /// may or may not commit later, and only the new leader can say.
    fn fail_pending_requests(&mut self, mut leader: Leader) {
        if let Some(transfer) = leader.transfer.take() {
            self.end_transfer(*transfer);
        }
        if let Some(change) = leader.change.take() {
            self.outbox
                .respond(change.request, Err(RequestError::LeadershipLost));
        }
        for (_, request) in leader.pending_writes {
            self.outbox
                .respond(request, Err(RequestError::LeadershipLost));
        }
        for read in leader.pending_reads {
            match read.reader {
                Reader::Client { request, .. } => self
                    .outbox
                    .respond(request, Err(RequestError::LeadershipLost)),
                Reader::Follower { follower, batch } => self.refuse_read_index(follower, batch),
            }
        }
    }

    /// Candidates (§5.2): "Upon election: ... become leader".
    pub(super) fn become_leader(&mut self) {
        info!(
            "node {} term {}: candidate -> leader",
            self.config.id,
            self.current_term()
        );
        let last_index = self.log().last_index();
        let mut leader = Leader::default();
        for peer in self.peers() {
            // "Volatile state on leaders (Reinitialized after election)"
            leader.next_index.insert(peer, last_index + 1);
            leader.match_index.insert(peer, 0);
            leader.flow.insert(
                peer,
                Flow {
                    probing: true,
                    ..Flow::default()
                },
            );
        }
        // §8: "each leader commit a blank no-op entry into the log at the
        // start of its term", so that entries of earlier terms commit with it
        // (§5.4.2) and reads know the commit index (dissertation §6.4).
        leader.noop_index = last_index + 1;
        self.role = Role::Leader(Box::new(leader));
        self.leader_id = Some(self.config.id);
        let noop = Entry {
            index: last_index + 1,
            term: self.current_term(),
            command: Command::Noop,
        };
        self.append_as_leader(vec![noop]);
    }

    /// Leaders: "If command received from client: append entry to local
    /// log", and send it to every follower. The fsync waits for the end of
    /// the turn (`end_turn`), so the followers write in parallel with the
    /// leader (dissertation §10.2.1): the leader counts itself in a majority
    /// only from `log.durable_index()`.
    pub(super) fn append_as_leader(&mut self, entries: Vec<Entry>) {
        self.persistent.log_mut().append(entries);
        self.broadcast_append_entries(false);
        // A cluster of one commits on its own fsync: see `end_turn`.
    }

    /// All Servers: "If commitIndex > lastApplied: increment lastApplied,
    /// apply log[lastApplied] to state machine (§5.3)". Entries are applied
    /// in index order, each exactly once.
    pub(super) fn apply_committed(&mut self) {
        // BEGIN SOLUTION replication
        while self.last_applied < self.commit_index {
            let index = self.last_applied + 1;
            let entry = self
                .persistent
                .log()
                .get(index)
                .unwrap_or_else(|| panic!("committed entry {index} missing from the log"));
            let answer = match &entry.command {
                Command::Noop | Command::Config(_) => Vec::new(),
                Command::Client(command) => self.state_machine.apply(index, command),
            };
            self.last_applied = index;
            if let Role::Leader(leader) = &mut self.role {
                if let Some(request) = leader.pending_writes.remove(&index) {
                    self.outbox.respond(request, Ok(answer));
                }
            }
        }
        // SKELETON
        // // Given: self.state_machine.apply(index, command) for a
        // // Command::Client, and self.outbox.respond(request, Ok(answer))
        // // for a leader's client waiting in pending_writes.
        // END SOLUTION
        self.serve_reads();
        self.serve_read_batches();
        self.maybe_snapshot();
        // §6: a committed configuration may let the leader take the next
        // step of a change, or tell it to step down; and a configuration
        // appended or installed may have removed this server.
        self.advance_membership();
        self.notice_removal();
    }

    /// The term reply rule shared by every reply handler: a reply from an
    /// older term answers a request we no longer care about.
    pub(super) fn is_current(&self, term: Term) -> bool {
        term == self.current_term()
    }
}
