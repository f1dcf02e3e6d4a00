//! Client interaction (§8, dissertation chapter 6): writes go through the
//! log; linearizable reads use ReadIndex (dissertation §6.4) and never touch
//! the log; stale reads are served from the local state machine. Commands,
//! queries and answers are the state machine's bytes.

use super::log::{Command, Entry};
use super::membership_change::MembershipChange;
use super::message::{LogIndex, Message, NodeId, ReadIndex, ReadIndexReply};
use super::state::{PendingRead, RaftNode, ReadBatch, Reader, Role};
use super::state_machine::StateMachine;

/// Most reads a leader keeps waiting for a heartbeat round (§6.4) before it
/// refuses followers' ReadIndex requests: rounds complete within a round
/// trip while a majority answers, and without one the leader steps down
/// within an election timeout (§6.2), so only a peer asking in a flood
/// meanwhile reaches this.
pub const MAX_PENDING_READS: usize = 1 << 16;

/// Identifies one client request while it waits for its answer.
pub type RequestId = u64;

/// A client request, as the core sees it: the state machine has encoded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A command to append to the log and apply once committed.
    Write(Vec<u8>),
    /// A query for the state machine.
    Read {
        query: Vec<u8>,
        /// true: ReadIndex on the leader (dissertation §6.4); false: any
        /// node's own state, which may be stale
        linearizable: bool,
    },
    /// Hand leadership to node `to` (dissertation §3.10; `transfer.rs`);
    /// 0: to the most up-to-date follower.
    TransferLeadership { to: NodeId },
    /// Change the cluster's members (§6; `membership_change.rs`).
    ChangeMembership(MembershipChange),
}

impl Request {
    /// Bytes it brings: a write's command, a read's query.
    pub fn bytes(&self) -> usize {
        match self {
            Request::Write(command) => command.len(),
            Request::Read { query, .. } => query.len(),
            Request::TransferLeadership { .. } | Request::ChangeMembership(_) => 0,
        }
    }
}

/// Why the core did not serve a request. Nothing was applied for any of
/// these, except `LeadershipLost`, where the write may still commit later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// This node is not the leader; `leader` is the one it knows of, if any.
    NotLeader { leader: Option<NodeId> },
    /// This node stopped being leader before the request completed.
    LeadershipLost,
    /// A stale read on a node whose state machine may lack writes it already
    /// holds in its log (see `may_be_behind`). Another node, or this one a
    /// little later, can answer.
    Behind {
        node: NodeId,
        last_applied: LogIndex,
        commit_index: LogIndex,
    },
    /// The leader is handing its leadership to `target` (§3.10) and takes
    /// no writes meanwhile: retry, as after NotLeader.
    TransferInProgress { target: NodeId },
    /// A leadership transfer was refused or abandoned; says why.
    TransferFailed(String),
    /// Another membership change is not finished (§6: one at a time).
    ChangeInProgress(String),
    /// A membership change that cannot be made, or was abandoned; says why.
    MembershipRefused(String),
    /// A configuration removed this node from the cluster (§6).
    Removed { node: NodeId },
}

/// The state machine's answer, or why there is none.
pub type Response = Result<Vec<u8>, RequestError>;

impl<S: StateMachine> RaftNode<S> {
    /// Handle a batch of client requests: every write in the batch becomes
    /// one append and one AppendEntries per follower; every linearizable
    /// read in it shares one heartbeat round.
    pub fn client_requests(&mut self, requests: Vec<(RequestId, Request)>) {
        let mut writes = Vec::new();
        let mut new_reads = false;
        let mut follower_reads = Vec::new();
        for (request, client_request) in requests {
            if self.is_removed() {
                let node = self.config.id;
                self.outbox
                    .respond(request, Err(RequestError::Removed { node }));
                continue;
            }
            match client_request {
                Request::Read {
                    query,
                    linearizable: false,
                } => self.read_local(request, &query),
                Request::Read {
                    query,
                    linearizable: true,
                } if self.is_leader() => new_reads |= self.queue_read(request, query),
                Request::Read {
                    query,
                    linearizable: true,
                } => follower_reads.push((request, query)),
                Request::Write(command) => writes.push((request, command)),
                Request::TransferLeadership { to } => self.transfer_leadership(request, to),
                Request::ChangeMembership(change) => self.change_membership(request, change),
            }
        }
        if !follower_reads.is_empty() {
            self.ask_read_index(follower_reads);
        }
        if !writes.is_empty() {
            self.propose(writes);
        }
        if new_reads {
            // §6.4 step 2: one heartbeat round confirms leadership for every
            // read that arrived before it was sent — unless a round is in
            // flight already: then these reads wait for the next one, which
            // `serve_reads` starts when the current one is confirmed.
            self.start_read_round();
        }
        self.apply_committed();
    }

    /// A stale read: this node's own state machine, unless it may be behind.
    fn read_local(&mut self, request: RequestId, query: &[u8]) {
        let response = if self.may_be_behind() {
            Err(RequestError::Behind {
                node: self.config.id,
                last_applied: self.last_applied,
                commit_index: self.commit_index,
            })
        } else {
            Ok(self.state_machine.query(query))
        };
        self.outbox.respond(request, response);
    }

    /// Queue a linearizable read on the leader; false if not the leader.
    fn queue_read(&mut self, request: RequestId, query: Vec<u8>) -> bool {
        let commit_index = self.commit_index;
        let lease_round = self.lease_read_round(commit_index);
        let Role::Leader(leader) = &mut self.role else {
            let leader = self.leader_id;
            self.outbox
                .respond(request, Err(RequestError::NotLeader { leader }));
            return false;
        };
        // Dissertation §6.4 step 1: the read index is the commit index — but
        // only once an entry of this term (the §8 no-op) has committed, so
        // waiting for the no-op covers it.
        // With a lease (§6.4.1, `lease.rs`), a round confirmed already.
        leader.pending_reads.push_back(PendingRead {
            reader: Reader::Client { request, query },
            round: lease_round.unwrap_or(leader.read_round + 1),
            read_index: commit_index.max(leader.noop_index),
        });
        true
    }

    /// A follower's linearizable reads (dissertation §6.4): it asks the
    /// leader for a read index, one message for the whole batch, and
    /// answers the reads itself once it has applied that far — so clients
    /// spread over the members share the read work. Without a leader to
    /// ask they are refused, and the client looks elsewhere.
    fn ask_read_index(&mut self, reads: Vec<(RequestId, Vec<u8>)>) {
        let leader = match self.leader_id {
            Some(leader) if matches!(self.role, Role::Follower) => leader,
            _ => {
                let leader = self.leader_id;
                for (request, _) in reads {
                    self.outbox
                        .respond(request, Err(RequestError::NotLeader { leader }));
                }
                return;
            }
        };
        let batch = self.next_read_batch;
        self.next_read_batch += 1;
        self.read_batches.push_back(ReadBatch {
            batch,
            leader,
            reads,
            read_index: None,
            waited: 0,
        });
        let term = self.current_term();
        self.send(leader, Message::ReadIndex(ReadIndex { term, batch }));
    }

    /// The leader's side of a follower's ReadIndex: the batch joins the next
    /// heartbeat round like the leader's own reads (§6.4 steps 1–3), and
    /// its read index goes back once a majority confirms the round. Only
    /// the leader of the follower's term may answer; anyone else says so.
    pub(super) fn handle_read_index(&mut self, from: NodeId, request: ReadIndex) {
        let commit_index = self.commit_index;
        let current = self.is_current(request.term);
        let Role::Leader(leader) = &mut self.role else {
            return self.refuse_read_index(from, request.batch);
        };
        if !current || leader.pending_reads.len() >= MAX_PENDING_READS {
            return self.refuse_read_index(from, request.batch);
        }
        leader.pending_reads.push_back(PendingRead {
            reader: Reader::Follower {
                follower: from,
                batch: request.batch,
            },
            round: leader.read_round + 1,
            read_index: commit_index.max(leader.noop_index),
        });
        self.start_read_round();
    }

    pub(super) fn refuse_read_index(&mut self, follower: NodeId, batch: u64) {
        let reply = ReadIndexReply {
            term: self.current_term(),
            batch,
            read_index: None,
        };
        self.send(follower, Message::ReadIndexReply(reply));
    }

    /// A follower learns the read index of one of its batches (or that the
    /// leader could not give one: its reads go back to their clients, who
    /// find the leader).
    pub(super) fn handle_read_index_reply(&mut self, from: NodeId, reply: ReadIndexReply) {
        let Some(position) = self
            .read_batches
            .iter()
            .position(|b| b.batch == reply.batch && b.leader == from && b.read_index.is_none())
        else {
            return;
        };
        match reply.read_index {
            Some(read_index) => self.read_batches[position].read_index = Some(read_index),
            None => {
                let batch = self.read_batches.remove(position).expect("found above");
                self.fail_read_batch(batch);
            }
        }
    }

    /// Answer every batch whose read index this follower has applied (§6.4
    /// step 4, on the follower).
    pub(super) fn serve_read_batches(&mut self) {
        let applied = self.last_applied;
        while let Some(position) = self
            .read_batches
            .iter()
            .position(|b| b.read_index.is_some_and(|index| index <= applied))
        {
            let batch = self.read_batches.remove(position).expect("found above");
            for (request, query) in batch.reads {
                let answer = self.state_machine.query(&query);
                self.outbox.respond(request, Ok(answer));
            }
        }
    }

    /// A tick on a follower: a batch the leader has not answered within an
    /// election timeout (a message lost, a leader gone) is sent back to
    /// its clients, who ask the leader itself.
    pub(super) fn age_read_batches(&mut self) {
        let patience = self.config.election_timeout_ticks.1;
        for batch in &mut self.read_batches {
            batch.waited += 1;
        }
        while self
            .read_batches
            .front()
            .is_some_and(|b| b.waited >= patience)
        {
            let batch = self.read_batches.pop_front().expect("front exists");
            self.fail_read_batch(batch);
        }
    }

    /// Fail every batch: the term or the leader they were asked of changed.
    pub(super) fn fail_read_batches(&mut self) {
        for batch in std::mem::take(&mut self.read_batches) {
            self.fail_read_batch(batch);
        }
    }

    fn fail_read_batch(&mut self, batch: ReadBatch) {
        let leader = self.leader_id;
        for (request, _) in batch.reads {
            self.outbox
                .respond(request, Err(RequestError::NotLeader { leader }));
        }
    }

    /// Leaders: "If command received from client: append entry to local
    /// log, respond after entry applied to state machine (§5.3)". A follower
    /// redirects the client to the leader it knows.
    fn propose(&mut self, writes: Vec<(RequestId, Vec<u8>)>) {
        let first = self.log().last_index() + 1;
        let term = self.current_term();
        let Role::Leader(leader) = &mut self.role else {
            let leader = self.leader_id;
            for (request, _) in writes {
                self.outbox
                    .respond(request, Err(RequestError::NotLeader { leader }));
            }
            return;
        };
        if let Some(transfer) = &leader.transfer {
            // §3.10: no new writes while the leadership is handed over.
            let target = transfer.target;
            for (request, _) in writes {
                self.outbox
                    .respond(request, Err(RequestError::TransferInProgress { target }));
            }
            return;
        }
        let mut entries = Vec::with_capacity(writes.len());
        for ((request, command), index) in writes.into_iter().zip(first..) {
            leader.pending_writes.insert(index, request);
            entries.push(Entry {
                index,
                term,
                command: Command::Client(command),
            });
        }
        self.append_as_leader(entries);
    }

    /// Whether this node's state machine may be older than its own log, so
    /// that a stale read could miss a write the node already holds. Only a
    /// leader of the current term says what is committed (a new leader
    /// itself learns it when its §8 no-op commits), and a restarted node's
    /// commit index starts back at its snapshot. So the node may be behind
    /// until it knows a leader, has seen an entry of its term committed,
    /// and has applied everything it knows is committed.
    fn may_be_behind(&self) -> bool {
        self.leader_id.is_none()
            || self.log().term_at(self.commit_index) != Some(self.current_term())
            || self.last_applied < self.commit_index
    }

    /// Send a new heartbeat round for the waiting reads, if they need one and
    /// no round is in flight. One round at a time keeps the number of
    /// heartbeats per second bounded however fast reads arrive: every read
    /// that arrives while a round is in flight shares the next one.
    pub(super) fn start_read_round(&mut self) {
        let confirmed_round = self.confirmed_read_round();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let waiting = leader
            .pending_reads
            .back()
            .is_some_and(|read| read.round > leader.read_round);
        let in_flight = confirmed_round < leader.read_round;
        if waiting && !in_flight {
            leader.read_round += 1;
            self.broadcast_append_entries(true);
        }
    }

    /// The newest read round a majority (the leader included) has
    /// acknowledged: leadership was still ours when its heartbeats arrived.
    pub(super) fn confirmed_read_round(&self) -> u64 {
        let Role::Leader(leader) = &self.role else {
            return 0;
        };
        let me = self.config.id;
        let round_of = |id| match id == me {
            true => leader.read_round,
            false => leader.acked_read_round.get(&id).copied().unwrap_or(0),
        };
        self.configuration().quorum_value(round_of)
    }

    /// Serve the linearizable reads whose round a majority has acknowledged
    /// (§6.4 step 3) once the state machine has caught up with their read
    /// index (step 4). A deposed leader never gets here: stepping down fails
    /// its pending reads.
    pub(super) fn serve_reads(&mut self) {
        // BEGIN SOLUTION kv
        let confirmed_round = self.confirmed_read_round();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let mut read_indexes = Vec::new();
        while let Some(read) = leader.pending_reads.front() {
            // A follower's batch needs only the round: it applies on its own.
            let applied = matches!(read.reader, Reader::Follower { .. })
                || read.read_index <= self.last_applied;
            if read.round > confirmed_round || !applied {
                break;
            }
            let read = leader.pending_reads.pop_front().expect("front exists");
            match read.reader {
                Reader::Client { request, query } => {
                    let answer = self.state_machine.query(&query);
                    self.outbox.respond(request, Ok(answer));
                }
                Reader::Follower { follower, batch } => {
                    read_indexes.push((follower, batch, read.read_index))
                }
            }
        }
        let term = self.current_term();
        for (follower, batch, read_index) in read_indexes {
            let reply = ReadIndexReply {
                term,
                batch,
                read_index: Some(read_index),
            };
            self.send(follower, Message::ReadIndexReply(reply));
        }
        self.start_read_round();
        // SKELETON
        // // Linearizable reads are never answered yet. Given:
        // // self.confirmed_read_round(), self.start_read_round().
        // let _ = Self::confirmed_read_round;
        // END SOLUTION
    }
}
