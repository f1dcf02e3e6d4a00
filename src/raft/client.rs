//! Client interaction (§8, dissertation chapter 6): writes go through the
//! log; linearizable reads use ReadIndex (dissertation §6.4) and never touch
//! the log; stale reads are served from the local state machine.

use super::log::Command;
use super::state::{
    ClientError, ClientRequest, ClientResponse, ClientResult, PendingRead, RaftNode, RequestId,
    Role,
};
use crate::kv::{self, ApplyResult};

impl RaftNode {
    /// Handle a batch of client requests: every write in the batch becomes
    /// one append (one fsync) and one AppendEntries per follower; every
    /// linearizable read in it shares one heartbeat round.
    pub fn client_requests(&mut self, requests: Vec<(RequestId, ClientRequest)>) {
        let mut writes = Vec::new();
        let mut new_reads = false;
        for (request, client_request) in requests {
            let (key, value) = match &client_request {
                ClientRequest::Set { key, value, .. } => (key, Some(value.as_str())),
                ClientRequest::Delete { key, .. } | ClientRequest::Get { key, .. } => (key, None),
            };
            if let Err(reason) = kv::validate(key, value) {
                self.outbox
                    .respond(request, Err(ClientError::InvalidArgument(reason)));
                continue;
            }
            let commit_index = self.commit_index;
            let not_leader = ClientError::NotLeader {
                leader: self.leader_id,
            };
            match client_request {
                ClientRequest::Get {
                    key,
                    linearizable: false,
                } => {
                    if self.may_be_behind() {
                        self.outbox.respond(
                            request,
                            Err(ClientError::Behind {
                                node: self.config.id,
                                last_applied: self.last_applied,
                                commit_index: self.commit_index,
                            }),
                        );
                        continue;
                    }
                    let value = self.state_machine.get(&key).map(str::to_owned);
                    self.outbox
                        .respond(request, Ok(ClientResponse::Value(value)));
                }
                ClientRequest::Get {
                    key,
                    linearizable: true,
                } => {
                    let Role::Leader(leader) = &mut self.role else {
                        self.outbox.respond(request, Err(not_leader));
                        continue;
                    };
                    // Dissertation §6.4 step 1: the read index is the commit
                    // index — but only once an entry of this term (the §8
                    // no-op) has committed, so waiting for the no-op covers it.
                    leader.pending_reads.push_back(PendingRead {
                        request,
                        key,
                        round: leader.read_round + 1,
                        read_index: commit_index.max(leader.noop_index),
                    });
                    new_reads = true;
                }
                ClientRequest::Set {
                    key,
                    value,
                    client_id,
                    sequence,
                } => writes.push((
                    request,
                    Command::Set {
                        key,
                        value,
                        client_id,
                        sequence,
                    },
                )),
                ClientRequest::Delete {
                    key,
                    client_id,
                    sequence,
                } => writes.push((
                    request,
                    Command::Delete {
                        key,
                        client_id,
                        sequence,
                    },
                )),
            }
        }
        if !writes.is_empty() {
            if !self.is_leader() {
                for (request, _) in writes {
                    let leader = self.leader_id;
                    self.outbox
                        .respond(request, Err(ClientError::NotLeader { leader }));
                }
            } else {
                let (requests, commands): (Vec<_>, Vec<_>) = writes.into_iter().unzip();
                let first = self.log.last_index() + 1;
                if let Role::Leader(leader) = &mut self.role {
                    for (i, request) in requests.into_iter().enumerate() {
                        leader.pending_writes.insert(first + i as u64, request);
                    }
                }
                self.append_as_leader(commands);
            }
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

    /// Whether this node's state machine may be older than its own log, so
    /// that a stale read could miss a write the node already holds. Only a
    /// leader of the current term says what is committed (a new leader
    /// itself learns it when its §8 no-op commits), and a restarted node's
    /// commit index starts back at its snapshot. So the node may be behind
    /// until it knows a leader, has seen an entry of its term committed,
    /// and has applied everything it knows is committed.
    fn may_be_behind(&self) -> bool {
        self.leader_id.is_none()
            || self.log.term_at(self.commit_index) != Some(self.current_term)
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
        if waiting && (!in_flight || !self.config.fast_path.shared_read_rounds) {
            leader.read_round += 1;
            self.broadcast_append_entries(true);
        }
    }

    /// The newest read round a majority (the leader included) has
    /// acknowledged: leadership was still ours when its heartbeats arrived.
    fn confirmed_read_round(&self) -> u64 {
        let Role::Leader(leader) = &self.role else {
            return 0;
        };
        let mut rounds: Vec<u64> = self
            .peers()
            .iter()
            .map(|p| leader.acked_read_round.get(p).copied().unwrap_or(0))
            .collect();
        rounds.push(leader.read_round);
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        rounds[self.majority() - 1]
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
        while let Some(read) = leader.pending_reads.front() {
            if read.round > confirmed_round || read.read_index > self.last_applied {
                break;
            }
            let read = leader.pending_reads.pop_front().expect("front exists");
            let value = self.state_machine.get(&read.key).map(str::to_owned);
            self.outbox
                .respond(read.request, Ok(ClientResponse::Value(value)));
        }
        self.start_read_round();
        // SKELETON
        // // Linearizable reads are never answered yet. Given:
        // // self.confirmed_read_round(), self.start_read_round().
        // let _ = Self::confirmed_read_round;
        // END SOLUTION
    }

    /// The answer to a write, from what applying it produced.
    pub(super) fn write_response(result: ApplyResult) -> ClientResult {
        match result {
            ApplyResult::Ok => Ok(ClientResponse::Set),
            ApplyResult::Deleted { existed } => Ok(ClientResponse::Deleted { existed }),
            ApplyResult::StaleSequence => Err(ClientError::StaleSequence),
        }
    }
}
