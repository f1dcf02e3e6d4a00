//! The replicated state machine (§2), as Raft sees it: something that applies
//! committed commands in log order, answers reads, and can be saved to and
//! rebuilt from a snapshot (§7). Commands, queries and answers are bytes
//! encoded by the state machine; Raft never looks inside them. The key-value
//! store in `src/kv` is one; a test can plug in another.

use super::message::LogIndex;

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

    /// The whole state, encoded, for a snapshot (§7).
    fn snapshot(&self) -> Vec<u8>;

    /// Replace the whole state with a snapshot's (Figure 13 step 8). On an
    /// error the state is unchanged.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}
