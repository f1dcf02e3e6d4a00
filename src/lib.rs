//! raft-kv: a Raft-replicated key-value store, written to be read beside the
//! Raft paper (Ongaro & Ousterhout, "In Search of an Understandable Consensus
//! Algorithm", extended version).
//!
//! - [`raft`]: the consensus core, synchronous and free of I/O (Figure 2).
//! - [`kv`]: the replicated state machine.
//! - [`sim`]: a deterministic in-memory cluster for tests and debugging.
//!
//! What is not the product has binaries of its own, beside `raft-kv`, which
//! runs them: the load generator (`raft-kv bench`, src/bin/raft-kv-bench/)
//! and the course's skeleton generator (`raft-kv skeleton`,
//! src/bin/raft-kv-skeleton/).

pub mod cli;
pub mod config;
pub mod grpc_codec;
pub mod kv;
pub mod raft;
pub mod server;
pub mod sim;
pub mod storage;
pub mod tls;
pub mod viewer;

/// The prost/tonic types generated from `proto/`. Only the gRPC bridge and
/// the encoders use them; the core has its own typed messages.
pub mod proto {
    pub mod peer {
        tonic::include_proto!("raftpeer");
    }
    /// The watch stream and fault injection of `raft-kv cluster`'s page.
    pub mod watch {
        tonic::include_proto!("raftwatch");
    }
    pub mod kv {
        tonic::include_proto!("raftkv");

        /// proto/kv.proto, leadership.proto and membership.proto compiled, as server
        /// reflection serves them.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            tonic::include_file_descriptor_set!("raftkv_descriptor");
    }
    pub mod leadership {
        tonic::include_proto!("raftleadership");
    }
    /// Membership changes (§6): `raft-kv member`.
    pub mod membership {
        tonic::include_proto!("raftmembership");
    }

    /// gRPC metadata key naming the leader's address when a follower
    /// refuses a client request (`UNAVAILABLE "not leader"`, docs/api.md).
    /// The server sets it, clients follow it (dissertation §6.2); it lives
    /// here, beside the generated types, so that a client needs nothing of
    /// the server to read it.
    pub const LEADER_ADDR_METADATA: &str = "leader-addr";

    /// gRPC metadata of a FAILED_PRECONDITION answer to a write: which §6.3
    /// session refusal it is, [`SESSION_EXPIRED`] among them, so that a
    /// client need not read the message.
    pub const SESSION_ERROR_METADATA: &str = "session-error";
    /// Values of [`SESSION_ERROR_METADATA`].
    pub const STALE_SEQUENCE: &str = "stale-sequence";
    pub const SEQUENCE_REUSED: &str = "sequence-reused";
    pub const SESSION_EXPIRED: &str = "session-expired";

    /// gRPC metadata of every peer stream (`raftpeer.Raft/Send`): the id of
    /// the sender's cluster (16 hex digits; src/server/identity.rs), the
    /// sender's node id, where its clients reach it (for redirects), and
    /// where its peers do (to answer a server the receiver's configuration
    /// does not name yet, §6). The receiver refuses a stream whose cluster
    /// id is not its own cluster's, with PERMISSION_DENIED.
    pub const CLUSTER_ID_METADATA: &str = "raft-kv-cluster-id";
    pub const FROM_METADATA: &str = "raft-kv-from";
    pub const CLIENT_ADDRESS_METADATA: &str = "raft-kv-client-address";
    pub const PEER_ADDRESS_METADATA: &str = "raft-kv-peer-address";
}
