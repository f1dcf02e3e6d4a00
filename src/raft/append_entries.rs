//! Figure 2 "AppendEntries RPC", the leader's rules for replicating its log
//! (§5.3), and the commit rule (§5.3, §5.4.2, Figure 8).

// BEGIN SOLUTION replication
use log::warn;
// SKELETON
// END SOLUTION

use super::message::{AppendEntries, AppendEntriesReply, Message, NodeId};
// BEGIN SOLUTION replication
use super::log::{Entry, Log};
use super::message::{LogIndex, Term};
use super::state::{InFlight, RaftConfig};
// SKELETON
// END SOLUTION
use super::state::{Flow, RaftNode, Role};
use super::state_machine::StateMachine;

impl<S: StateMachine> RaftNode<S> {
    /// Send AppendEntries to every follower. A heartbeat goes to all of them,
    /// carrying whatever entries each one still needs; otherwise only
    /// followers with new entries to receive, within their in-flight window.
    pub(super) fn broadcast_append_entries(&mut self, heartbeat: bool) {
        if let Role::Leader(leader) = &mut self.role {
            if heartbeat {
                leader.heartbeat_elapsed = 0;
            }
        }
        if heartbeat {
            self.note_round_sent(false);
        }
        let peers = self.peers();
        self.track_peers(&peers);
        for peer in peers {
            self.send_append_entries(peer, heartbeat);
        }
    }

    /// Keep the leader's state per follower in step with the servers it
    /// sends to, which a configuration entry changes (§6): a new server
    /// starts like every follower of a new leader, probed from the end of
    /// the log.
    pub(super) fn track_peers(&mut self, peers: &[NodeId]) {
        let last_index = self.persistent.log().last_index();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let same = leader.next_index.len() == peers.len()
            && peers.iter().all(|p| leader.next_index.contains_key(p));
        if same {
            return;
        }
        leader.next_index.retain(|p, _| peers.contains(p));
        leader.match_index.retain(|p, _| peers.contains(p));
        leader.flow.retain(|p, _| peers.contains(p));
        for &peer in peers {
            leader.next_index.entry(peer).or_insert(last_index + 1);
            leader.match_index.entry(peer).or_insert(0);
            leader.flow.entry(peer).or_insert_with(|| Flow {
                probing: true,
                ..Flow::default()
            });
        }
    }

    /// Leaders: "If last log index ≥ nextIndex for a follower: send
    /// AppendEntries RPC with log entries starting at nextIndex". With
    /// `always`, send even if there is nothing new (a heartbeat, a retry).
    pub(super) fn send_append_entries(&mut self, peer: NodeId, always: bool) {
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        // BEGIN SOLUTION replication
        let config = &self.config;
        let next_index = leader.next_index[&peer];
        let flow = leader.flow.get_mut(&peer).expect("every peer has a flow");
        if next_index <= self.persistent.log().snapshot_index() {
            // The entries the follower needs are compacted away (§7).
            self.send_snapshot_chunk(peer, always);
            return;
        }
        let log = self.persistent.log();
        let Some((entries, bytes)) = entries_to_send(flow, log, next_index, config, always) else {
            return;
        };
        let prev_log_index = next_index - 1;
        let prev_log_term = log
            .term_at(prev_log_index)
            .expect("prev_log_index is at or after the snapshot");
        if let Some(last) = entries.last() {
            flow.in_flight.push_back(InFlight {
                last_index: last.index,
                bytes,
            });
            if !flow.probing {
                // Pipelining: assume these arrive and send what follows next
                // time without waiting; a rejection resets next_index.
                leader.next_index.insert(peer, last.index + 1);
            }
        }
        let request = AppendEntries {
            term: self.persistent.current_term(),
            leader_id: self.config.id,
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.commit_index,
            read_round: leader.read_round,
        };
        self.send(peer, Message::AppendEntries(request));
        // SKELETON
        // // Only heartbeats, so that followers know there is a leader (§5.2).
        // // Yours: entries from next_index, at most config.max_bytes_per_message
        // // of them (and config.max_entries_per_message), within the window of
        // // config.max_in_flight messages and config.max_bytes_in_flight bytes.
        // if !always {
        //     return;
        // }
        // let request = AppendEntries {
        //     term: self.persistent.current_term(),
        //     leader_id: self.config.id,
        //     prev_log_index: self.persistent.log().last_index(),
        //     prev_log_term: self.persistent.log().last_term(),
        //     entries: Vec::new(),
        //     leader_commit: self.commit_index,
        //     read_round: leader.read_round,
        // };
        // self.send(peer, Message::AppendEntries(request));
        // END SOLUTION
    }

    /// AppendEntries receiver implementation (Figure 2).
    pub fn handle_append_entries(&mut self, request: AppendEntries) -> AppendEntriesReply {
        let mut reply = AppendEntriesReply {
            term: self.current_term(),
            request_term: request.term,
            success: false,
            match_index: 0,
            conflict_term: 0,
            conflict_index: 0,
            prev_log_index: request.prev_log_index,
            read_round: request.read_round,
        };
        // 1. "Reply false if term < currentTerm (§5.1)". The sender is no
        // longer leader of our term: its read round is confirmed by nothing.
        if request.term < self.current_term() {
            reply.read_round = 0;
            return reply;
        }
        // The sender is the leader of our term. Candidates: "If AppendEntries
        // RPC received from new leader: convert to follower". Followers: the
        // election timer restarts on AppendEntries from the current leader.
        self.become_follower(request.term, Some(request.leader_id));
        self.reset_election_timer();
        // BEGIN SOLUTION replication

        // 2. "Reply false if log doesn't contain an entry at prevLogIndex
        // whose term matches prevLogTerm (§5.3)". The reply carries the
        // conflict hint so the leader can skip a whole term per round trip.
        if let Some((conflict_term, conflict_index)) =
            self.log_mismatch(request.prev_log_index, request.prev_log_term)
        {
            reply.conflict_term = conflict_term;
            reply.conflict_index = conflict_index;
            return reply;
        }
        let last_new_index = request.prev_log_index + request.entries.len() as u64;
        // 3. (in `new_entries`)
        let to_append = self.new_entries(request.entries);
        // 4. "Append any new entries not already in the log". Durable before
        // the reply leaves: the reply waits for the turn's fsync (`turn.rs`).
        self.persistent.log_mut().append(to_append);

        // 5. "If leaderCommit > commitIndex, set commitIndex =
        // min(leaderCommit, index of last new entry)".
        if request.leader_commit > self.commit_index {
            self.commit_index = self
                .commit_index
                .max(request.leader_commit.min(last_new_index));
        }
        reply.success = true;
        reply.match_index = last_new_index;
        reply
        // SKELETON
        // reply
        // END SOLUTION
    }

    // BEGIN SOLUTION replication
    /// Receiver step 2: None if the log holds an entry at `prev_log_index`
    /// of `prev_log_term`; otherwise the conflict hint (§5.3): the term of
    /// our entry there and the first index we hold of that term, or, with
    /// no entry there, term 0 and our last index + 1.
    fn log_mismatch(
        &self,
        prev_log_index: LogIndex,
        prev_log_term: Term,
    ) -> Option<(Term, LogIndex)> {
        let log = self.persistent.log();
        if prev_log_index > log.last_index() {
            return Some((0, log.last_index() + 1));
        }
        // Below our snapshot: what the snapshot covers is committed, so it
        // matches the leader's log by Leader Completeness.
        if prev_log_index < log.snapshot_index() {
            return None;
        }
        let term = log.term_at(prev_log_index).expect("prev is in the log");
        (term != prev_log_term).then(|| (term, log.first_index_of_term(term, prev_log_index)))
    }

    /// Receiver step 3: "If an existing entry conflicts with a new one (same
    /// index but different terms), delete the existing entry and all that
    /// follow it (§5.3)". Returns the entries not already in the log. A
    /// stale or repeated AppendEntries must not truncate entries it agrees
    /// with: only a conflict deletes.
    fn new_entries(&mut self, entries: Vec<Entry>) -> Vec<Entry> {
        let mut to_append = Vec::new();
        for entry in entries {
            if entry.index <= self.persistent.log().snapshot_index() {
                continue;
            }
            if !to_append.is_empty() {
                to_append.push(entry);
                continue;
            }
            match self.persistent.log().term_at(entry.index) {
                Some(term) if term == entry.term => {}
                Some(_) => {
                    // `refusal` turned away any message that could get here.
                    assert!(
                        entry.index > self.commit_index,
                        "a committed entry ({}) conflicts with the leader's log",
                        entry.index
                    );
                    self.persistent.log_mut().truncate_from(entry.index);
                    to_append.push(entry);
                }
                None => to_append.push(entry),
            }
        }
        to_append
    }
    // SKELETON
    // END SOLUTION

    /// The leader's handling of an AppendEntries reply (Figure 2 "Rules for
    /// Servers / Leaders").
    pub(super) fn handle_append_entries_reply(&mut self, from: NodeId, reply: AppendEntriesReply) {
        // Only a reply to a request of our current term says anything about
        // it; an older request's reply may carry our term all the same.
        if !self.is_current(reply.term) || !self.is_current(reply.request_term) {
            return;
        }
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        leader.heard_from.insert(from);
        // A reply to a request of our term confirms we were still leader
        // when the follower saw the round it echoes (dissertation §6.4).
        let acked = leader.acked_read_round.entry(from).or_insert(0);
        *acked = (*acked).max(reply.read_round);
        let flow = leader.flow.get_mut(&from).expect("every peer has a flow");
        if reply.success {
            flow.answered(reply.match_index);
        }
        // BEGIN SOLUTION replication
        if reply.success {
            // "If successful: update nextIndex and matchIndex for follower (§5.3)".
            let match_index = leader.match_index.get_mut(&from).expect("every peer");
            *match_index = (*match_index).max(reply.match_index);
            let next_index = leader.next_index.get_mut(&from).expect("every peer");
            *next_index = (*next_index).max(*match_index + 1);
            if flow.probing {
                // The probe was answered, or a heartbeat sent after it was
                // and the probe is lost: either way it is not in flight.
                flow.in_flight.clear();
                flow.probing = false;
            }
            self.advance_commit_index();
            self.send_append_entries(from, false);
        } else if self.back_up(from, &reply) {
            self.send_append_entries(from, true);
        }
        // SKELETON
        // END SOLUTION
        self.serve_reads();
    }

    // BEGIN SOLUTION replication
    /// Leaders: "If AppendEntries fails because of log inconsistency:
    /// decrement nextIndex and retry (§5.3)" — by a whole term at a time,
    /// using the follower's conflict hint. True if the follower is to be
    /// probed again from the new next_index.
    fn back_up(&mut self, from: NodeId, reply: &AppendEntriesReply) -> bool {
        let log = self.persistent.log();
        let hinted = match reply.conflict_term {
            0 => reply.conflict_index,
            term => log
                .last_index_of_term(term)
                .map_or(reply.conflict_index, |index| index + 1),
        };
        let last_index = log.last_index();
        let Role::Leader(leader) = &mut self.role else {
            return false;
        };
        let match_index = leader.match_index.get_mut(&from).expect("every peer");
        // A hint at or below match_index answers an older, reordered request:
        // the follower already holds more, so wait for the next reply or
        // heartbeat — unless the follower says its log ends before entries
        // it acknowledged, in answer to a request about one of them. Then it
        // has lost them: Figure 2 assumes stable storage, but disks are
        // wiped and replaced. Send them again.
        let lost_entries = reply.conflict_term == 0
            && reply.conflict_index <= *match_index
            && reply.prev_log_index >= *match_index;
        if lost_entries {
            warn!(
                "node {} term {}: node {from} no longer holds entries {}..={} it acknowledged (a wiped or damaged disk?); sending them again",
                self.config.id, self.persistent.current_term(), reply.conflict_index, *match_index
            );
            *match_index = reply.conflict_index.saturating_sub(1);
        }
        if hinted <= *match_index {
            return false;
        }
        leader.next_index.insert(from, hinted.min(last_index + 1));
        let flow = leader.flow.get_mut(&from).expect("every peer has a flow");
        flow.probing = true;
        flow.in_flight.clear();
        flow.snapshot = None;
        true
    }
    // SKELETON
    // END SOLUTION

    /// Leaders: "If there exists an N such that N > commitIndex, a majority
    /// of matchIndex[i] ≥ N, and log[N].term == currentTerm: set commitIndex =
    /// N (§5.3, §5.4)". The term condition is Figure 8's lesson: an entry of
    /// an earlier term is never committed by counting replicas, only along
    /// with an entry of the leader's own term.
    pub(super) fn advance_commit_index(&mut self) {
        // BEGIN SOLUTION replication
        let Role::Leader(leader) = &self.role else {
            return;
        };
        // The leader counts itself only for entries on its own disk, and
        // only if it votes (§6: a leader being removed "does not count
        // itself in majorities"); joint, a majority of both configurations.
        let (me, durable) = (self.config.id, self.persistent.log().durable_index());
        let match_of = |id| match id == me {
            true => durable,
            false => leader.match_index.get(&id).copied().unwrap_or(0),
        };
        let n = self.configuration().quorum_value(match_of);
        if n > self.commit_index && self.persistent.log().term_at(n) == Some(self.current_term()) {
            self.commit_index = n;
        }
        // SKELETON
        // END SOLUTION
    }
}

// BEGIN SOLUTION replication
/// What to send a follower from `next_index`: nothing when no entries are
/// new or its window is full, unless `always` (a heartbeat, a retry). A
/// heartbeat to a follower whose window is full carries no entries: a
/// follower behind a slow disk is not sent more than it can soon write.
fn entries_to_send(
    flow: &mut Flow,
    log: &Log,
    next_index: LogIndex,
    config: &RaftConfig,
    always: bool,
) -> Option<(Vec<Entry>, usize)> {
    if always && flow.probing {
        // A heartbeat sends the probe again: the last one may be lost.
        flow.in_flight.clear();
    }
    let window_full = window_full(flow, config);
    let has_new_entries = next_index <= log.last_index();
    if !always && (!has_new_entries || window_full) {
        return None;
    }
    if window_full {
        return Some((Vec::new(), 0));
    }
    Some(entries_from(log, next_index, config))
}

/// The entries from `next_index` on, at most `max_entries_per_message` of
/// them and `max_bytes_per_message` bytes (but at least one), and their bytes.
fn entries_from(log: &Log, next_index: LogIndex, config: &RaftConfig) -> (Vec<Entry>, usize) {
    let mut entries = Vec::new();
    let mut bytes = 0;
    for entry in log
        .entries_from(next_index)
        .take(config.max_entries_per_message)
    {
        let size = entry.command.size();
        if !entries.is_empty() && bytes + size > config.max_bytes_per_message {
            break;
        }
        bytes += size;
        entries.push(entry.clone());
    }
    (entries, bytes)
}

/// Whether a follower has as much in flight as it may: one AppendEntries
/// while probing for where its log matches ours (§5.3); once it does
/// (pipelining), `max_in_flight` messages or `max_bytes_in_flight` bytes.
fn window_full(flow: &Flow, config: &RaftConfig) -> bool {
    if flow.probing {
        !flow.in_flight.is_empty()
    } else {
        flow.in_flight.len() >= config.max_in_flight
            || flow.bytes_in_flight() >= config.max_bytes_in_flight
    }
}
// SKELETON
// END SOLUTION
