//! Figure 2 "Persistent state on all servers (Updated on stable storage
//! before responding to RPCs)": `current_term`, `voted_for` and `log[]`.
//!
//! The fields are private to this module, so the compiler sees to it that
//! they change only through the methods below, each of which persists what
//! it changes: `set_term` and `set_voted_for` are durable when they return,
//! and the [`Log`] writes every change through to its storage (made durable
//! by [`Log::sync`]).

use super::log::Log;
use super::message::{NodeId, Term};
use super::storage::{HardState, Storage};

/// `current_term`, `voted_for` and the log of one server.
pub struct Persistent {
    /// latest term server has seen (initialized to 0 on first boot, increases monotonically)
    current_term: Term,
    /// candidate_id that received vote in current term (None if none)
    voted_for: Option<NodeId>,
    /// log entries; each entry contains command for state machine, and term
    /// when entry was received by leader (first index is 1)
    log: Log,
}

impl Persistent {
    /// Whatever `storage` holds: term 0, no vote and an empty log on first boot.
    pub fn recover(storage: Box<dyn Storage>) -> Persistent {
        let (log, hard_state) = Log::recover(storage);
        Persistent {
            current_term: hard_state.current_term,
            voted_for: hard_state.voted_for,
            log,
        }
    }

    pub fn current_term(&self) -> Term {
        self.current_term
    }

    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The log, to change: its methods persist what they change.
    pub fn log_mut(&mut self) -> &mut Log {
        &mut self.log
    }

    /// Move to a newer term (Figure 2, "Rules for Servers / All Servers": set
    /// currentTerm = T), with no vote, or — for a new candidate — its vote
    /// for itself. Durable before it returns: one write for both fields.
    pub fn set_term(&mut self, term: Term, voted_for: Option<NodeId>) {
        assert!(term > self.current_term, "terms only increase");
        self.current_term = term;
        self.voted_for = voted_for;
        self.save();
    }

    /// Record our vote in current_term. Durable before it returns, so a vote
    /// is never granted twice in one term, even across a crash (§5.2).
    pub fn set_voted_for(&mut self, candidate: NodeId) {
        assert!(self.voted_for.is_none() || self.voted_for == Some(candidate));
        self.voted_for = Some(candidate);
        self.save();
    }

    fn save(&mut self) {
        // BEGIN SOLUTION persistence
        self.log.save_hard_state(HardState {
            current_term: self.current_term,
            voted_for: self.voted_for,
        });
        // SKELETON
        // // Kept in memory only: lost when the server crashes.
        // let _ = HardState::default;
        // END SOLUTION
    }
}
