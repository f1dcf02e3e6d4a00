//! The `raft-kv` binary: run a node, a local cluster, or talk to a cluster.
//! `raft-kv bench` and `raft-kv skeleton` run the `raft-kv-bench` and
//! `raft-kv-skeleton` binaries beside it, as git runs its subcommands: the
//! load generator and the course's skeleton generator are not part of the
//! product.

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

// Memory allocated on one thread and freed on another is glibc malloc's
// slow path, and the bridge's normal case (Cargo.toml, docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Make another member the leader: raft-kv transfer-leader --to ID
    #[command(after_help = TRANSFER_EXIT_CODES)]
    TransferLeader(raft_kv::cli::TransferLeaderArgs),
    /// Change the cluster's members: raft-kv member list|add|promote|remove
    #[command(after_help = MEMBER_EXIT_CODES)]
    Member(raft_kv::cli::member::MemberArgs),
    /// Check every node's health: one line each; fails without a healthy majority.
    #[command(after_help = HEALTH_EXIT_CODES)]
    Health(raft_kv::cli::HealthArgs),
    /// Back up a cluster and restore it: raft-kv snapshot save|restore|status
    #[command(after_help = SNAPSHOT_EXIT_CODES)]
    Snapshot(SnapshotArgs),
    /// Write a cluster's CA and certificates for mutual TLS: raft-kv certs --out DIR --nodes 1,2,3
    #[command(after_help = CERTS_EXIT_CODES)]
    Certs(raft_kv::tls::certs::CertsArgs),
    /// Load a cluster (raft-kv or etcd) and report latency and throughput.
    #[command(disable_help_flag = true)]
    Bench(Passed),
    /// Write a student copy of the project with solution regions removed (docs/course.md).
    #[command(disable_help_flag = true)]
    Skeleton(Passed),
}

// What each command's --help says about its exit codes (docs/api.md).
const EXIT_CODES: &str = "\
Exit codes (each command's --help has its own):
  0  success
  1  get: no such key; health: fewer than a majority of the nodes healthy
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
const TRANSFER_EXIT_CODES: &str = "\
The leader sends the target what it lacks, takes no writes meanwhile (clients
retry them), and tells it to start an election (Raft dissertation §3.10).

Exit codes:
  0  the target leads (prints who led before, the new term, and how long it took)
  2  any error (not a member, another transfer running, the target did not take
     over within an election timeout): one line on stderr, starting 'raft-kv: error:'";
const MEMBER_EXIT_CODES: &str = "\
One change at a time, made by the leader (Raft §6): a new server joins as a
learner, catches up, and becomes a voter through the joint configuration.
Start a new server first, empty: raft-kv node --id N --data-dir DIR
--join CLUSTER_ID --listen-peers HOST:PORT (member list prints the cluster id).

Exit codes:
  0  done: the change is committed (prints the members)
  2  any error (another change in progress, already or not a member, the only
     voter, a learner that did not catch up, no leader): one line on stderr,
     starting 'raft-kv: error:'";
const HEALTH_EXIT_CODES: &str = "\
A node is healthy when it answers the gRPC health check SERVING: it knows a
leader of its current term (docs/api.md).

Exit codes:
  0  a majority of the nodes listed is healthy
  1  fewer are (the last line, on stderr, says how many)
  2  any other error: one line on stderr, starting 'raft-kv: error:'";
const SNAPSHOT_EXIT_CODES: &str = "\
save FILE streams a consistent snapshot from the leader (every write acknowledged
before it started is in it); restore FILE --data-dir DIR --id N --peers LIST
seeds node N of a new cluster from it (once per node); status FILE checks one.

Exit codes:
  0  done (prints what the snapshot holds)
  2  any error (no leader, a damaged file, a data dir that is not empty): one
     line on stderr, starting 'raft-kv: error:'. Nothing is left half written";
const CERTS_EXIT_CODES: &str = "\
Give every node and client --tls-dir DIR afterwards. Every certificate is valid
for 10 years: long, because this is a learning tool with no way to renew or
revoke one; run it again with --force for a new CA and new certificates.

Exit codes:
  0  written (prints each file and what it names)
  2  any error (a bad list, the files of an earlier run in DIR without --force,
     a file it cannot write): one line on stderr, starting 'raft-kv: error:'";
const NODE_EXIT_CODES: &str = "\
A node runs until it is killed; kill -9 is safe: what it acknowledged is on disk.
Exit codes:
  1  it stopped on an error it cannot recover from, such as a failed disk write
  2  it could not start (a bad flag or member list, its address in use, a TLS
     file missing or not its own, a data dir it cannot open or that belongs to
     another cluster): one line on stderr, starting 'raft-kv: error:'";
const CLUSTER_EXIT_CODES: &str = "\
Commands, typed in its terminal: kill N (SIGKILL), restart N (same data dir and
flags), pause N (SIGSTOP), resume N (SIGCONT), status, help, quit; N is a node
id or 'leader'.

Exit codes:
  0  stopped by Ctrl-C, quit, or kill PID of the cluster
  1  every node exited on its own
  2  bad flags: one line on stderr, starting 'raft-kv: error:'";

#[derive(clap::Args)]
struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Copy a consistent snapshot of the cluster into FILE, from the leader.
    Save(raft_kv::cli::snapshot::SaveArgs),
    /// Check a snapshot FILE and say what it holds.
    Status(raft_kv::cli::snapshot::FileStatusArgs),
    /// Seed a new node's data dir from a snapshot FILE (run once per node).
    Restore(raft_kv::server::restore::RestoreArgs),
}

/// The arguments of a command that another binary runs, passed to it as
/// they are (`--help` included).
#[derive(clap::Args)]
struct Passed {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// The commands that are binaries of their own, `raft-kv-COMMAND`.
const SIBLINGS: [&str; 2] = ["bench", "skeleton"];

fn main() {
    // `raft-kv help bench` is `raft-kv bench --help`, as for the other commands.
    let words: Vec<OsString> = std::env::args_os().skip(1).collect();
    if let [help, command] = &words[..] {
        if let Some(command) = SIBLINGS.iter().find(|&&c| help == "help" && command == c) {
            std::process::exit(run_sibling(command, vec!["--help".into()]));
        }
    }
    // The matches, not only the flags: `raft-kv node --config` needs to know
    // which flags the command line gave, to let them win over the file.
    let parsed = Args::command()
        .try_get_matches()
        .and_then(|matches| Ok((Args::from_arg_matches(&matches)?, matches)));
    let (args, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => std::process::exit(usage_error(error)),
    };
    let code = match args.command {
        Command::Node(a) => {
            let node = matches
                .subcommand_matches("node")
                .expect("the node command");
            raft_kv::server::run_node(a, &raft_kv::config::file::flags_given(node))
        }
        Command::Cluster(a) => raft_kv::server::run_cluster(a),
        Command::Set(a) => raft_kv::cli::set(a),
        Command::Get(a) => raft_kv::cli::get(a),
        Command::Delete(a) => raft_kv::cli::delete(a),
        Command::Status(a) => raft_kv::cli::status(a),
        Command::TransferLeader(a) => raft_kv::cli::transfer_leader(a),
        Command::Member(a) => raft_kv::cli::member::member(a),
        Command::Health(a) => raft_kv::cli::health(a),
        Command::Snapshot(a) => match a.command {
            SnapshotCommand::Save(a) => raft_kv::cli::snapshot::save(a),
            SnapshotCommand::Status(a) => raft_kv::cli::snapshot::status(a),
            SnapshotCommand::Restore(a) => raft_kv::server::restore::run(a),
        },
        Command::Certs(a) => raft_kv::tls::certs::run(a),
        Command::Bench(a) => run_sibling("bench", a.args),
        Command::Skeleton(a) => run_sibling("skeleton", a.args),
    };
    std::process::exit(code);
}

/// Run `raft-kv-COMMAND`, the binary beside this one, with `args`; returns
/// its exit code. On Unix it replaces this process (exec), so that its exit
/// code, its signals and Ctrl-C are the command's own, as if it were a
/// subcommand. Named `raft-kv COMMAND` (argv[0]), its help and errors say
/// so.
fn run_sibling(command: &str, args: Vec<OsString>) -> i32 {
    let me = match std::env::current_exe() {
        Ok(path) => path,
        Err(error) => {
            eprintln!("raft-kv {command}: error: cannot find the raft-kv executable: {error}");
            return 2;
        }
    };
    let binary = format!("raft-kv-{command}");
    let sibling = me.with_file_name(format!("{binary}{}", std::env::consts::EXE_SUFFIX));
    if !sibling.is_file() {
        eprintln!(
            "raft-kv {command}: the {binary} binary is not beside {}; `cargo build --release` builds both",
            me.display()
        );
        return 2;
    }
    let mut child = std::process::Command::new(&sibling);
    child.args(args);
    #[cfg(unix)]
    let result: std::io::Result<i32> = {
        use std::os::unix::process::CommandExt;
        // exec returns only if it failed.
        Err(child.arg0(format!("raft-kv {command}")).exec())
    };
    #[cfg(not(unix))]
    let result = child.status().map(|status| status.code().unwrap_or(1));
    result.unwrap_or_else(|error| {
        eprintln!(
            "raft-kv {command}: error: cannot run {}: {error}",
            sibling.display()
        );
        2
    })
}

/// A bad subcommand or flag: one line, `raft-kv: error: …`, and exit code 2,
/// as for every other error (docs/api.md). Help and the version print as
/// clap prints them; so does the help shown for a bare `raft-kv`.
fn usage_error(error: clap::Error) -> i32 {
    // The (sub)subcommand whose flags were wrong, to point at its --help.
    let mut command = "raft-kv".to_string();
    let mut level = Args::command();
    for word in std::env::args().skip(1) {
        let Some(next) = level.find_subcommand(&word).cloned() else {
            break;
        };
        command = format!("{command} {word}");
        level = next;
    }
    raft_kv::cli::usage_error(error, &command)
}
