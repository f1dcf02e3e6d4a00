//! Figure 2 "Rules for Servers": what every server does on each message and
//! each tick, and the role changes (§5.1, Figure 4).

use log::{debug, info, warn};

use super::message::{Message, NodeId, Term};
use super::state::{ClientError, Flow, Leader, RaftNode, Role};
use crate::raft::log::{Command, Entry};

impl RaftNode {
    /// Handle one message from peer `from`. For a request, returns the reply
    /// to send back; state it depends on is durable before this returns.
    pub fn step(&mut self, from: NodeId, message: Message) -> Option<Message> {
        debug!(
            "node {} term {}: <- {from} {message:?}",
            self.config.id, self.current_term
        );
        if let Some(reason) = self.refusal(from, &message) {
            warn!(
                "node {} term {}: refused a {} from {from}: {reason}",
                self.config.id,
                self.current_term,
                message.name()
            );
            return None;
        }
        // All Servers: "If RPC request or response contains term T >
        // currentTerm: set currentTerm = T, convert to follower (§5.1)".
        if message.term() > self.current_term {
            self.become_follower(message.term(), None);
        }
        let reply = match message {
            Message::RequestVote(request) => {
                Some(Message::RequestVoteReply(self.handle_request_vote(request)))
            }
            Message::RequestVoteReply(reply) => {
                self.handle_request_vote_reply(from, reply);
                None
            }
            Message::AppendEntries(request) => Some(Message::AppendEntriesReply(
                self.handle_append_entries(request),
            )),
            Message::AppendEntriesReply(reply) => {
                self.handle_append_entries_reply(from, reply);
                None
            }
            Message::InstallSnapshot(request) => Some(Message::InstallSnapshotReply(
                self.handle_install_snapshot(request),
            )),
            Message::InstallSnapshotReply(reply) => {
                self.handle_install_snapshot_reply(from, reply);
                None
            }
        };
        // All Servers: "If commitIndex > lastApplied: increment lastApplied,
        // apply log[lastApplied] to state machine (§5.3)".
        self.apply_committed();
        reply
    }

    /// Handle several messages that arrived together, as `step` would one by
    /// one, returning each one's reply in order — but with one fsync for all
    /// the entries they append, taken before any reply is returned (group
    /// commit on followers). Figure 2's "persist before responding" holds:
    /// the replies leave only after the sync.
    pub fn step_batch(&mut self, messages: Vec<(NodeId, Message)>) -> Vec<Option<Message>> {
        if !self.config.fast_path.group_commit {
            return messages
                .into_iter()
                .map(|(from, message)| self.step(from, message))
                .collect();
        }
        self.log.defer_sync(true);
        let replies = messages
            .into_iter()
            .map(|(from, message)| self.step(from, message))
            .collect();
        self.log.defer_sync(false);
        self.log.sync();
        replies
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
                self.election_elapsed += 1;
                if self.election_elapsed >= self.election_timeout {
                    self.start_election();
                }
            }
            Role::Leader(leader) => {
                // Leaders: "send initial empty AppendEntries RPCs (heartbeat)
                // to each server; repeat during idle periods to prevent
                // election timeouts (§5.2)".
                leader.heartbeat_elapsed += 1;
                let heartbeat_due = leader.heartbeat_elapsed >= self.config.heartbeat_ticks;
                leader.check_quorum_elapsed += 1;
                let check_due = leader.check_quorum_elapsed >= self.config.election_timeout_ticks.1;
                if heartbeat_due {
                    self.broadcast_append_entries(true);
                }
                if check_due {
                    self.check_quorum();
                }
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
        let reachable = leader.heard_from.len() + 1;
        leader.heard_from.clear();
        leader.check_quorum_elapsed = 0;
        if reachable < self.majority() {
            info!(
                "node {} term {}: heard from {reachable} of {} servers in an election timeout; stepping down",
                self.config.id,
                self.current_term,
                self.config.members.len()
            );
            self.become_follower(self.current_term, None);
        }
    }

    /// Convert to follower in `term` (a newer term, or the current one when a
    /// candidate or leader learns of a legitimate leader).
    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let old_role = self.role.name();
        if term > self.current_term {
            self.set_term(term, None);
        }
        if let Role::Leader(leader_state) = std::mem::replace(&mut self.role, Role::Follower) {
            self.fail_pending_requests(leader_state);
        }
        // A leader that steps down no longer knows who leads: clients it
        // redirects must not be sent back to it.
        if leader.is_some() || self.leader_id == Some(self.config.id) {
            self.leader_id = leader;
        }
        if old_role != "follower" {
            info!(
                "node {} term {}: {old_role} -> follower",
                self.config.id, self.current_term
            );
            self.reset_election_timer();
        }
    }

    /// A leader that steps down answers every waiting client: the request
    /// may or may not commit later, and only the new leader can say.
    fn fail_pending_requests(&mut self, leader: Leader) {
        for (_, request) in leader.pending_writes {
            self.outbox
                .respond(request, Err(ClientError::LeadershipLost));
        }
        for read in leader.pending_reads {
            self.outbox
                .respond(read.request, Err(ClientError::LeadershipLost));
        }
    }

    /// Candidates (§5.2): "Upon election: ... become leader".
    pub(super) fn become_leader(&mut self) {
        info!(
            "node {} term {}: candidate -> leader",
            self.config.id, self.current_term
        );
        let last_index = self.log.last_index();
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
        self.role = Role::Leader(leader);
        self.leader_id = Some(self.config.id);
        self.append_as_leader(vec![Command::Noop]);
    }

    /// Append commands to the leader's log, send them to every follower at
    /// once, and then wait for the local disk. Writing locally in parallel
    /// with the followers is dissertation §10.2.1: the leader counts itself in
    /// a majority only from `log.durable_index()`, which `sync` advances.
    /// Returns the index of the first new entry.
    pub(super) fn append_as_leader(&mut self, commands: Vec<Command>) -> u64 {
        let first = self.log.last_index() + 1;
        if self.config.fast_path.batching {
            // One append and one AppendEntries per follower for all of them.
            self.append_and_send(commands);
        } else {
            for command in commands {
                self.append_and_send(vec![command]);
                if !self.config.fast_path.group_commit {
                    self.outbox.flush();
                    self.log.sync();
                }
            }
        }
        // With group commit, the one fsync for everything appended above
        // (without it each write was synced in the loop, and this finds
        // nothing left to do).
        self.outbox.flush();
        self.log.sync();
        self.advance_commit_index();
        first
    }

    fn append_and_send(&mut self, commands: Vec<Command>) {
        let first = self.log.last_index() + 1;
        let term = self.current_term;
        let entries: Vec<Entry> = commands
            .into_iter()
            .enumerate()
            .map(|(i, command)| Entry {
                index: first + i as u64,
                term,
                command,
            })
            .collect();
        // Leaders: "If command received from client: append entry to local log".
        self.log.append_unsynced(entries);
        if !self.config.fast_path.parallel_write {
            self.log.sync();
        }
        self.broadcast_append_entries(false);
    }

    /// All Servers: "If commitIndex > lastApplied: increment lastApplied,
    /// apply log[lastApplied] to state machine (§5.3)". Entries are applied
    /// in index order, each exactly once.
    pub(super) fn apply_committed(&mut self) {
        // BEGIN SOLUTION replication
        while self.last_applied < self.commit_index {
            let index = self.last_applied + 1;
            let entry = self
                .log
                .get(index)
                .unwrap_or_else(|| panic!("committed entry {index} missing from the log"));
            let result = self.state_machine.apply(&entry.command);
            self.last_applied = index;
            if let Role::Leader(leader) = &mut self.role {
                if let Some(request) = leader.pending_writes.remove(&index) {
                    self.outbox.respond(request, Self::write_response(result));
                }
            }
        }
        // SKELETON
        // // Given: self.state_machine.apply(&entry.command), and
        // // Self::write_response(result), the answer to a leader's client.
        // let _ = Self::write_response;
        // END SOLUTION
        self.serve_reads();
        self.maybe_snapshot();
    }

    /// The term reply rule shared by every reply handler: a reply from an
    /// older term answers a request we no longer care about.
    pub(super) fn is_current(&self, term: Term) -> bool {
        term == self.current_term
    }
}
