//! The `raft-kv` binary: run a node, a local cluster, or talk to a cluster.

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};

/// A Raft-replicated key-value store, written to be read beside the Raft paper.
#[derive(Parser)]
#[command(name = "raft-kv", version, about, after_help = EXIT_CODES)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one Raft node (serves the peer and the client gRPC services).
    #[command(after_help = NODE_EXIT_CODES)]
    Node(raft_kv::server::NodeArgs),
    /// Run a local cluster of nodes as child processes, each line prefixed with its node.
    #[command(after_help = CLUSTER_EXIT_CODES)]
    Cluster(raft_kv::server::ClusterArgs),
    /// Store a value: raft-kv set KEY VALUE (or KEY - for stdin, or KEY --value-file FILE)
    #[command(after_help = SET_EXIT_CODES)]
    Set(raft_kv::cli::SetArgs),
    /// Read a value: raft-kv get KEY [--stale] [--raw]
    #[command(after_help = GET_EXIT_CODES)]
    Get(raft_kv::cli::GetArgs),
    /// Remove a key: raft-kv delete KEY
    #[command(after_help = DELETE_EXIT_CODES)]
    Delete(raft_kv::cli::DeleteArgs),
    /// Show every node's role, term, leader, commit and applied index.
    #[command(after_help = STATUS_EXIT_CODES)]
    Status(raft_kv::cli::StatusArgs),
    /// Load a cluster (raft-kv or etcd) and report latency and throughput.
    #[command(after_help = BENCH_EXIT_CODES)]
    Bench(raft_kv::bench::BenchArgs),
    /// Write a student copy of the project with solution regions removed (docs/course.md).
    #[command(after_help = SKELETON_EXIT_CODES)]
    Skeleton(raft_kv::course::SkeletonArgs),
}

// What each command's --help says about its exit codes (docs/api.md).
const EXIT_CODES: &str = "\
Exit codes (each command's --help has its own):
  0  success
  1  get: no such key
  2  any error: one line on stderr, starting 'raft-kv: error:'";
const SET_EXIT_CODES: &str = "\
Exit codes:
  0  stored (prints OK)
  2  any error: one line on stderr, starting 'raft-kv: error:'. A refused value
     is not stored; after a timeout the write may or may not have been";
const GET_EXIT_CODES: &str = "\
Exit codes:
  0  the key exists (prints its value)
  1  no such key (nothing on stdout, a note on stderr)
  2  any error: one line on stderr, starting 'raft-kv: error:'";
const DELETE_EXIT_CODES: &str = "\
Exit codes:
  0  the key is now absent (prints deleted, or not found if it already was)
  2  any error: one line on stderr, starting 'raft-kv: error:'";
const STATUS_EXIT_CODES: &str = "\
Exit codes:
  0  at least one node answered
  2  none did, or any other error: one line on stderr, starting 'raft-kv: error:'";
const NODE_EXIT_CODES: &str = "\
A node runs until it is killed; kill -9 is safe: what it acknowledged is on disk.
Exit codes:
  1  it stopped on an error it cannot recover from, such as a failed disk write
  2  it could not start (a bad flag or member list, its address in use, a data
     dir it cannot open): one line on stderr, starting 'raft-kv: error:'";
const CLUSTER_EXIT_CODES: &str = "\
Commands, typed in its terminal: kill N (SIGKILL), restart N (same data dir and
flags), pause N (SIGSTOP), resume N (SIGCONT), status, help, quit; N is a node
id or 'leader'.

Exit codes:
  0  stopped by Ctrl-C, quit, or kill PID of the cluster
  1  every node exited on its own
  2  bad flags: one line on stderr, starting 'raft-kv: error:'";
const BENCH_EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  a cluster failed
  2  bad flags: one line on stderr";
const SKELETON_EXIT_CODES: &str = "\
Exit codes:
  0  written
  2  any error: one line on stderr, starting 'raft-kv: error:'";

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
