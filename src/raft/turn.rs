//! How the runtime drives the core: in turns. Not in Figure 2; this is where
//! the fast path lives, so that the functions carrying Figure 2's sentences
//! have one path each.
//!
//! A turn is whatever the event loop hands the core at once — one tick, all
//! the peer messages waiting, all the client requests waiting — followed by
//! one call to [`RaftNode::end_turn`]. During the turn the log is written
//! but not synced, requests to peers leave at once, and replies wait. At the
//! end of the turn:
//!
//! 1. the requests leave: a leader's AppendEntries reach the followers while
//!    it writes its own disk (dissertation §10.2.1);
//! 2. one fsync makes every entry the turn appended durable (group commit);
//! 3. a leader counts its own now-durable entries and may commit;
//! 4. the replies leave — released by the fsync's [`Durable`] proof, so
//!    Figure 2's "updated on stable storage before responding to RPCs" is
//!    kept by the types, not by care.
//!
//! Batching is the event loop giving the core many requests in one turn
//! (one append, one AppendEntries per follower); pipelining is the window
//! `RaftConfig::max_in_flight`.

use log::debug;

use super::log::Durable;
use super::message::Message;
use super::state::RaftNode;
use super::state_machine::StateMachine;

impl<S: StateMachine> RaftNode<S> {
    /// End the turn: sync once, then let the replies go (see the module docs).
    pub fn end_turn(&mut self) {
        self.outbox.flush();
        let durable = self.persistent.log_mut().sync();
        // The leader's own entries now count towards a majority.
        self.advance_commit_index();
        self.apply_committed();
        self.release_replies(durable);
        self.outbox.flush();
    }

    /// Hand the outbox the replies that waited for `durable`. A success
    /// reply whose entries a newer leader's AppendEntries replaced later in
    /// the same turn is dropped, as if lost: it would tell its leader that
    /// entries are stored here that are not.
    fn release_replies(&mut self, durable: Durable) {
        for (to, reply, truncations) in std::mem::take(&mut self.awaiting_sync) {
            if let Message::AppendEntriesReply(r) = &reply {
                if r.success && !durable.still_holds(r.match_index, truncations) {
                    debug!(
                        "node {} term {}: dropped the reply to {to}: entries through {} were replaced this turn",
                        self.config.id,
                        self.current_term(),
                        r.match_index
                    );
                    continue;
                }
            }
            self.outbox.send(to, reply);
        }
    }
}
