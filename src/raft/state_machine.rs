//! The replicated state machine (§2), as Raft sees it: something that applies
//! committed commands in log order, answers reads, and can be saved to and
//! rebuilt from a snapshot (§7). Commands, queries and answers are bytes
//! encoded by the state machine; Raft never looks inside them. The key-value
//! store in `src/kv` is one; a test can plug in another.

use super::message::LogIndex;

/// A state machine's state frozen at one moment; calling it encodes that
/// state for a snapshot ([`StateMachine::freeze`]).
pub type FrozenState = Box<dyn FnOnce() -> Vec<u8> + Send>;

pub trait StateMachine: Send {
    /// Apply the committed command at `index` (All Servers: "apply
    /// log[lastApplied] to state machine"), returning the answer for the
    /// client that proposed it. Called once per entry, in index order, on
    /// every server alike, so it must be deterministic. The bytes came over
    /// the network: a command that does not decode is answered with an
    /// error, never a panic.
    fn apply(&mut self, index: LogIndex, command: &[u8]) -> Vec<u8>;

    /// Answer a read from the current state, without changing it.
    fn query(&self, query: &[u8]) -> Vec<u8>;

    /// The whole state as it is now, frozen, for a snapshot (§7): calling
    /// what this returns encodes it. The encoding happens on another
    /// thread while this state machine goes on applying, so the frozen view
    /// must not change with it — §7's "copy-on-write techniques ... so that
    /// new updates can be accepted without impacting the snapshot being
    /// written". Freezing must be cheap: it happens on the event loop.
    fn freeze(&self) -> FrozenState;

    /// Replace the whole state with a snapshot's (Figure 13 step 8). On an
    /// error the state is unchanged.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}
