//! The Raft core: plain synchronous code that follows Figure 2 of the paper
//! section by section. It does no I/O and reads no clock (see `state.rs`).
//!
//! | Figure 2 / paper section          | file                 |
//! |-----------------------------------|----------------------|
//! | State                             | `state.rs`           |
//! | Persistent state on all servers   | `persistent.rs`      |
//! | AppendEntries RPC, commit rule    | `append_entries.rs`  |
//! | RequestVote RPC, elections        | `request_vote.rs`    |
//! | Rules for Servers                 | `rules.rs`           |
//! | Log (§5.3)                        | `log.rs`             |
//! | InstallSnapshot RPC (Figure 13)   | `install_snapshot.rs`|
//! | Client interaction (§8, ch. 6)    | `client.rs`          |
//! | Stable storage boundary           | `storage.rs`         |
//! | The replicated state machine      | `state_machine.rs`   |
//! | Turns: group commit, §10.2.1      | `turn.rs`            |
//! | Pre-vote (dissertation §9.6)      | `pre_vote.rs`        |
//! | Leadership transfer (§3.10)       | `transfer.rs`        |
//! | Configurations (§6, Figure 11)    | `membership.rs`      |
//! | Membership changes at the leader  | `membership_change.rs`|
//! | Lease-based reads (§6.4.1)        | `lease.rs`           |
//! | What no correct peer sends        | `validate.rs`        |
//!
//! `docs/paper-map.md` maps every rule to its function.

mod append_entries;
mod client;
mod install_snapshot;
mod lease;
pub mod log;
pub mod membership;
mod membership_change;
pub mod message;
mod persistent;
mod pre_vote;
mod request_vote;
mod rules;
pub mod state;
mod state_machine;
pub mod storage;
mod transfer;
mod turn;
mod validate;

pub use self::log::{Command, Durable, Entry, Log};
pub use client::MAX_PENDING_READS;
pub use client::{Request, RequestError, RequestId, Response};
pub use membership::Configuration;
pub use membership_change::MembershipChange;
pub use message::*;
pub use state::{NodeStatus, Outbox, RaftConfig, RaftNode, Role};
pub use state_machine::{FrozenState, StateMachine};
pub use storage::{
    HardState, MemStorage, Recovered, Snapshot, SnapshotToSave, SnapshotWriter, Storage,
};
pub use validate::MAX_TERM_JUMP;
