//! Log compaction (§7) and Figure 13 "InstallSnapshot RPC".

use log::info;
// BEGIN SOLUTION snapshots
use log::warn;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::membership::Configuration;
use super::message::Message;
use super::message::{LogIndex, Term};
use super::state::{IncomingSnapshot, Role, SnapshotTransfer};
use super::storage::SnapshotToSave;
// SKELETON
// END SOLUTION

use super::message::{InstallSnapshot, InstallSnapshotReply, NodeId};
use super::state::RaftNode;
use super::state_machine::StateMachine;
use super::storage::Snapshot;

impl<S: StateMachine> RaftNode<S> {
    /// §7: "Each server takes snapshots independently, covering just the
    /// committed entries in its log." We snapshot what has been applied once
    /// the log has outgrown the last snapshot (below). The state machine is
    /// frozen here and written off the event loop (§7: "copy-on-write ... so
    /// that new updates can be accepted without impacting the snapshot being
    /// written"); the log keeps every entry until `snapshot_saved`.
    pub(super) fn maybe_snapshot(&mut self) {
        // BEGIN SOLUTION snapshots
        let log = self.persistent.log();
        // Dissertation §5.1.3: snapshot when the log exceeds the size of the
        // previous snapshot, so that the bytes written for snapshots stay
        // proportional to those written to the log — never below
        // `snapshot_log_bytes`, so a small state is not snapshotted at
        // every few entries.
        let last_snapshot_bytes = log.snapshot().map_or(0, |s| s.data.len());
        let base = self.config.snapshot_log_bytes.max(last_snapshot_bytes);
        if log.bytes() <= base
            || self.snapshot_in_progress.is_some()
            || self.last_applied <= log.snapshot_index()
        {
            return;
        }
        // Members with the same log would all snapshot at the same moment,
        // and on a shared disk their writes slow every fsync at once
        // (docs/performance.md): each waits for up to half as many bytes
        // again, drawn from its own seed and the snapshot it replaces.
        let mut stagger = SmallRng::seed_from_u64(self.config.seed ^ log.snapshot_index());
        if log.bytes() <= base + stagger.gen_range(0..=base / 2) {
            return;
        }
        let index = self.last_applied;
        let term = log.term_at(index).expect("applied entries are in the log");
        info!(
            "node {} term {}: snapshot through index {index} started ({} bytes of log)",
            self.config.id,
            self.current_term(),
            log.bytes()
        );
        self.snapshot_in_progress = Some(index);
        self.outbox.save_snapshot(SnapshotToSave {
            last_included_index: index,
            last_included_term: term,
            configuration: self.configuration_at(index),
            state: self.state_machine.freeze(),
        });
        // SKELETON
        // // Never compacts: the log grows without bound.
        // END SOLUTION
    }

    /// Our snapshot through `snapshot.last_included_index`, started by
    /// `maybe_snapshot`, is durable: the log entries it covers may go (§7).
    /// Until now the log kept them, so a crash while the snapshot was being
    /// written lost nothing.
    pub fn snapshot_saved(&mut self, snapshot: Snapshot) {
        // BEGIN SOLUTION snapshots
        let index = snapshot.last_included_index;
        if self.snapshot_in_progress == Some(index) {
            self.snapshot_in_progress = None;
        }
        // A newer snapshot from the leader may have replaced the log while
        // this one was written (Figure 13): then there is nothing to compact.
        let log = self.persistent.log();
        if index <= log.snapshot_index() || log.term_at(index) != Some(snapshot.last_included_term)
        {
            return;
        }
        info!(
            "node {} term {}: snapshot through index {index} ({} bytes), log compacted",
            self.config.id,
            self.current_term(),
            snapshot.data.len()
        );
        self.persistent.log_mut().compact(snapshot);
        // SKELETON
        // // Never called: maybe_snapshot starts no snapshot.
        // let _ = snapshot;
        // END SOLUTION
    }

    /// Send our snapshot to a follower that needs entries we have compacted
    /// away (§7: "the leader must occasionally send snapshots to followers
    /// that lag behind"), one chunk at a time: the next chunk leaves when the
    /// follower has answered this one. With `resend` (a heartbeat), a chunk
    /// unanswered for a whole heartbeat interval is presumed lost and sent
    /// again.
    pub(super) fn send_snapshot_chunk(&mut self, peer: NodeId, resend: bool) {
        // BEGIN SOLUTION snapshots
        let chunk_bytes = self.config.snapshot_chunk_bytes;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let snapshot = self
            .persistent
            .log()
            .snapshot()
            .expect("a compacted log has a snapshot");
        let flow = leader.flow.get_mut(&peer).expect("every peer has a flow");
        let transfer = match &mut flow.snapshot {
            Some(t) if t.last_included_index == snapshot.last_included_index => t,
            other => other.insert(SnapshotTransfer {
                last_included_index: snapshot.last_included_index,
                offset: 0,
                chunk_in_flight: false,
                waited_a_heartbeat: false,
            }),
        };
        if transfer.chunk_in_flight && !(resend && transfer.waited_a_heartbeat) {
            transfer.waited_a_heartbeat |= resend;
            return;
        }
        let start = (transfer.offset as usize).min(snapshot.data.len());
        let end = (start + chunk_bytes).min(snapshot.data.len());
        transfer.chunk_in_flight = true;
        transfer.waited_a_heartbeat = false;
        let request = InstallSnapshot {
            term: self.current_term(),
            leader_id: self.config.id,
            last_included_index: snapshot.last_included_index,
            last_included_term: snapshot.last_included_term,
            offset: start as u64,
            data: snapshot.data[start..end].to_vec(),
            done: end == snapshot.data.len(),
            configuration: Some(self.configuration_at(snapshot.last_included_index)),
        };
        self.send(peer, Message::InstallSnapshot(request));
        // SKELETON
        // // Given: self.persistent.log().snapshot(), the transfer's progress in
        // // leader.flow[&peer].snapshot, self.config.snapshot_chunk_bytes.
        // todo!("milestone 4 (snapshots): send n{peer} the next chunk (resend: {resend})")
        // END SOLUTION
    }

    /// InstallSnapshot receiver implementation (Figure 13).
    pub fn handle_install_snapshot(&mut self, request: InstallSnapshot) -> InstallSnapshotReply {
        // BEGIN SOLUTION snapshots
        let mut reply = InstallSnapshotReply {
            term: self.current_term(),
            request_term: request.term,
            last_included_index: request.last_included_index,
            offset: request.offset,
            next_offset: 0,
            done: false,
        };
        // 1. "Reply immediately if term < currentTerm".
        if request.term < self.current_term() {
            return reply;
        }
        self.become_follower(request.term, Some(request.leader_id));
        self.reset_election_timer();

        let index = request.last_included_index;
        if index <= self.commit_index {
            // We already hold everything this snapshot covers, committed.
            reply.next_offset = request.offset + request.data.len() as u64;
            reply.done = true;
            return reply;
        }
        // Steps 2–4: gather the chunk; the whole snapshot once it is done.
        let Some(data) = self.gather_chunk(&request, &mut reply) else {
            return reply;
        };
        // Steps 5–8.
        let id = (index, request.last_included_term);
        if self.install(id, data, request.configuration, request.leader_id) {
            reply.done = true;
        } else {
            reply.next_offset = 0; // ask for it again, from the start
        }
        reply
        // SKELETON
        // todo!(
        //     "milestone 4 (snapshots): the chunk at offset {} of the snapshot through {} (Figure 13)",
        //     request.offset,
        //     request.last_included_index
        // )
        // END SOLUTION
    }

    // BEGIN SOLUTION snapshots
    /// Figure 13 receiver steps 2–4: add the chunk to the snapshot being
    /// received; the whole snapshot once the last chunk is in. `reply` says
    /// how much has arrived.
    fn gather_chunk(
        &mut self,
        request: &InstallSnapshot,
        reply: &mut InstallSnapshotReply,
    ) -> Option<Vec<u8>> {
        let id = (request.last_included_index, request.last_included_term);
        let same_snapshot =
            |s: &IncomingSnapshot| (s.last_included_index, s.last_included_term) == id;
        // 2. "Create new snapshot file if first chunk (offset is 0)" — unless
        // it is the snapshot we are already receiving: a first chunk sent
        // again must not throw away what has arrived. The chunks are
        // gathered in memory; the file is written once, in step 5.
        if request.offset == 0 && !self.incoming_snapshot.as_ref().is_some_and(same_snapshot) {
            self.incoming_snapshot = Some(IncomingSnapshot {
                last_included_index: id.0,
                last_included_term: id.1,
                data: Vec::new(),
                idle_ticks: 0,
            });
        }
        // 3. "Write data into snapshot file at given offset". A chunk that
        // does not continue what we have is answered with where we are.
        let incoming = self
            .incoming_snapshot
            .as_mut()
            .filter(|s| same_snapshot(s))?;
        incoming.idle_ticks = 0;
        let data = &mut incoming.data;
        if data.len() as u64 == request.offset {
            data.extend_from_slice(&request.data);
        }
        reply.next_offset = data.len() as u64;
        // 4. "Reply and wait for more data chunks if done is false".
        if !request.done || reply.next_offset != request.offset + request.data.len() as u64 {
            return None;
        }
        self.incoming_snapshot.take().map(|s| s.data)
    }

    /// Figure 13 receiver steps 5–8 for a complete snapshot through `index`
    /// of `term`; false if it does not decode (nothing changed).
    fn install(
        &mut self,
        (index, term): (LogIndex, Term),
        data: Vec<u8>,
        last_config: Option<Configuration>,
        leader: NodeId,
    ) -> bool {
        let (me, current_term) = (self.config.id, self.current_term());
        // 8. "Reset state machine using snapshot contents" — first, so that a
        // snapshot that does not decode changes nothing.
        if let Err(error) = self.state_machine.restore(&data) {
            warn!("node {me} term {current_term}: snapshot from leader {leader} does not decode ({error}); asking for it again");
            return false;
        }
        // 6. "If existing log entry has same index and term as snapshot's last
        // included entry, retain log entries following it and reply".
        let keep_suffix = self.persistent.log().term_at(index) == Some(term);
        // 5. "Save snapshot file, discard any existing or partial snapshot
        // with a smaller index"; 7. otherwise "Discard the entire log".
        let snapshot = Snapshot {
            last_included_index: index,
            last_included_term: term,
            data,
            // §6: the configuration as of the snapshot, in force from now on
            // unless an entry the log keeps after it says otherwise
            configuration: last_config,
        };
        self.persistent
            .log_mut()
            .install_snapshot(snapshot, keep_suffix);
        self.commit_index = index;
        self.last_applied = index;
        info!("node {me} term {current_term}: installed snapshot through index {index} from leader {leader}");
        true
    }
    // SKELETON
    // END SOLUTION

    /// The leader's handling of an InstallSnapshot reply: once the follower
    /// has installed the snapshot, continue with AppendEntries after it;
    /// otherwise send the next chunk from where the follower says it is.
    pub(super) fn handle_install_snapshot_reply(
        &mut self,
        from: NodeId,
        reply: InstallSnapshotReply,
    ) {
        // BEGIN SOLUTION snapshots
        if !self.is_current(reply.term) || !self.is_current(reply.request_term) {
            return;
        }
        let snapshot_len = self
            .persistent
            .log()
            .snapshot()
            .map_or(0, |s| s.data.len() as u64);
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        leader.heard_from.insert(from);
        let flow = leader.flow.get_mut(&from).expect("every peer has a flow");
        if reply.done {
            // The follower holds everything through last_included_index.
            let match_index = leader.match_index.get_mut(&from).expect("every peer");
            *match_index = (*match_index).max(reply.last_included_index);
            let next_index = leader.next_index.get_mut(&from).expect("every peer");
            *next_index = (*next_index).max(*match_index + 1);
            if flow
                .snapshot
                .as_ref()
                .is_some_and(|t| t.last_included_index <= reply.last_included_index)
            {
                flow.snapshot = None;
                flow.probing = false;
                flow.in_flight.clear();
            }
            self.advance_commit_index();
            self.send_append_entries(from, false);
            return;
        }
        // Only the answer to the chunk in flight moves the transfer on: any
        // other is a late or repeated one, already superseded.
        let Some(transfer) = flow.snapshot.as_mut().filter(|t| {
            t.chunk_in_flight
                && t.last_included_index == reply.last_included_index
                && t.offset == reply.offset
        }) else {
            return;
        };
        if reply.next_offset > snapshot_len {
            warn!(
                "node {} term {}: ignored an InstallSnapshot reply from {from} holding {} bytes of a {snapshot_len}-byte snapshot",
                self.config.id, self.current_term(), reply.next_offset
            );
            return;
        }
        transfer.offset = reply.next_offset;
        transfer.chunk_in_flight = false;
        self.send_snapshot_chunk(from, false);
        // SKELETON
        // // Given: self.send_snapshot_chunk (yours, above), self.advance_commit_index().
        // let _ = Self::send_snapshot_chunk;
        // todo!("milestone 4 (snapshots): {reply:?} from n{from}")
        // END SOLUTION
    }

    /// A follower drops a snapshot it is receiving when no chunk has come
    /// for two election timeouts: the leader that sent it has given up (or
    /// lost office), and the memory it holds must not stay taken for good.
    pub(super) fn drop_abandoned_snapshot(&mut self) {
        let limit = 2 * self.config.election_timeout_ticks.1;
        if let Some(incoming) = &mut self.incoming_snapshot {
            incoming.idle_ticks += 1;
            if incoming.idle_ticks > limit {
                info!(
                    "node {} term {}: no chunk of the snapshot through {} for {limit} ticks; dropping the {} bytes received",
                    self.config.id,
                    self.persistent.current_term(),
                    incoming.last_included_index,
                    incoming.data.len()
                );
                self.incoming_snapshot = None;
            }
        }
    }
}
