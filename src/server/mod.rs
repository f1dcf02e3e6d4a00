//! The node runtime: one event-loop thread running the Raft core, a timer
//! thread sending ticks, and a gRPC bridge thread owning tokio.
//! (Being built; see docs/architecture.md.)

/// `raft-kv node` flags.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {}

/// `raft-kv cluster` flags.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {}

/// Run one node until it is stopped; returns the process exit code.
pub fn run_node(_args: NodeArgs) -> i32 {
    eprintln!("raft-kv node: not built yet");
    2
}

/// Run a local cluster; returns the process exit code.
pub fn run_cluster(_args: ClusterArgs) -> i32 {
    eprintln!("raft-kv cluster: not built yet");
    2
}
