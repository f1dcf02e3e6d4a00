//! The `raft-kv` binary: run a node, a local cluster, or talk to a cluster.

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};

/// A Raft-replicated key-value store, written to be read beside the Raft paper.
#[derive(Parser)]
#[command(name = "raft-kv", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one Raft node (serves the peer and the client gRPC services).
    Node(raft_kv::server::NodeArgs),
    /// Run a local cluster of nodes as child processes, each line prefixed with its node.
    Cluster(raft_kv::server::ClusterArgs),
    /// Store a value: raft-kv set KEY VALUE
    Set(raft_kv::cli::SetArgs),
    /// Read a value: raft-kv get KEY [--stale]
    Get(raft_kv::cli::GetArgs),
    /// Remove a key: raft-kv delete KEY
    Delete(raft_kv::cli::DeleteArgs),
    /// Show every node's role, term, leader, commit and applied index.
    Status(raft_kv::cli::StatusArgs),
    /// Load a cluster (raft-kv or etcd) and report latency and throughput.
    Bench(raft_kv::bench::BenchArgs),
    /// Write a student copy of the project with solution regions removed (docs/course.md).
    Skeleton(raft_kv::course::SkeletonArgs),
}

fn main() {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => std::process::exit(usage_error(error)),
    };
    let code = match args.command {
        Command::Node(a) => raft_kv::server::run_node(a),
        Command::Cluster(a) => raft_kv::server::run_cluster(a),
        Command::Set(a) => raft_kv::cli::set(a),
        Command::Get(a) => raft_kv::cli::get(a),
        Command::Delete(a) => raft_kv::cli::delete(a),
        Command::Status(a) => raft_kv::cli::status(a),
        Command::Bench(a) => raft_kv::bench::run_bench(a),
        Command::Skeleton(a) => raft_kv::course::run_skeleton(a),
    };
    std::process::exit(code);
}

/// A bad subcommand or flag: one line, `raft-kv: error: …`, and exit code 2,
/// as for every other error (docs/api.md). Help and the version print as
/// clap prints them; so does the help shown for a bare `raft-kv`.
fn usage_error(error: clap::Error) -> i32 {
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        error.exit();
    }
    // The subcommand whose flags were wrong, to point at its --help.
    let subcommand = std::env::args().nth(1).filter(|word| {
        Args::command()
            .get_subcommands()
            .any(|command| command.get_name() == word)
    });
    let command = match subcommand {
        Some(name) => format!("raft-kv {name}"),
        None => "raft-kv".to_string(),
    };
    let rendered = error.render().to_string();
    eprintln!(
        "raft-kv: error: {}",
        raft_kv::cli::usage_error_line(&rendered, &command)
    );
    2
}
