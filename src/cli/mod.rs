//! The command-line client: `raft-kv set | get | delete | status | health`,
//! `raft-kv snapshot` (src/cli/snapshot.rs) and `raft-kv member`
//! (src/cli/member.rs).
//! Exit codes (docs/api.md): 0 success, 1 `get` of an absent key or
//! `health` of a cluster without a healthy majority, 2 any error.

pub mod client;
pub mod member;
pub mod snapshot;
mod transfer;

pub use client::{Client, Error, Health, NodeHealth, DEFAULT_RPC_TIMEOUT, DEFAULT_TIMEOUT};
pub use transfer::{transfer_leader, TransferLeaderArgs};

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::kv::{self, MAX_VALUE_BYTES};
use crate::proto::kv::StatusResponse;
use crate::tls::{Holder, TlsArgs};

/// The addresses `make cluster` uses.
const DEFAULT_CLUSTER: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";

/// The clap id of the KEY argument: a name of its own, so that no flag
/// flattened beside it (TLS's `--key`) can be taken for the same argument.
const KEY_ID: &str = "key_argument";

/// How a command prints its answer: `-w, --write-out FORMAT`, named as
/// etcdctl names it. Every command that prints an answer takes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WriteOut {
    /// Lines for people to read.
    #[default]
    Table,
    /// One JSON document on stdout, for scripts (docs/api.md has its shape).
    Json,
}

/// The `-w` flag, flattened into each command that prints an answer.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct WriteOutFlag {
    /// How to print the answer: table (for people) or json (one JSON
    /// document on stdout, for scripts). Errors go to stderr either way.
    #[arg(short = 'w', long = "write-out", value_enum, value_name = "FORMAT", default_value_t = WriteOut::Table)]
    pub write_out: WriteOut,
}

/// `value` as one line of JSON.
pub fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("the CLI's output structs always serialize")
}

/// Flags every client subcommand shares.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterFlags {
    /// Client addresses of the nodes, comma-separated; any subset works for
    /// set/get/delete, since followers redirect to the leader. Scripts can
    /// set RAFT_KV_CLUSTER instead; the flag wins.
    #[arg(long, env = "RAFT_KV_CLUSTER", value_name = "ADDR,ADDR,...", value_delimiter = ',', default_value = DEFAULT_CLUSTER)]
    pub cluster: Vec<String>,
    /// How long to keep trying to reach a leader: 500ms, 5s, or plain seconds (2.5).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    // Mutual TLS, which the nodes require when they were started with it.
    #[command(flatten)]
    pub tls: TlsArgs,
}

#[derive(clap::Args, Debug)]
pub struct SetArgs {
    /// The key: 1 byte to 4 KiB of UTF-8.
    #[arg(id = KEY_ID, value_name = "KEY")]
    pub key: String,
    /// The value: up to 1 MiB of UTF-8. `-` reads it from stdin, byte for
    /// byte (to store a literal `-`: printf %s - | raft-kv set KEY -).
    #[arg(required_unless_present = "value_file", conflicts_with = "value_file")]
    pub value: Option<String>,
    /// Read the value from FILE instead, byte for byte (a trailing newline
    /// is kept): for values longer than a command line may be.
    #[arg(long, value_name = "FILE")]
    pub value_file: Option<PathBuf>,
    #[command(flatten)]
    pub flags: ClusterFlags,
}

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// The key to read.
    #[arg(id = KEY_ID, value_name = "KEY")]
    pub key: String,
    /// Read from any node's state machine instead of the leader (may be
    /// stale). A node that may be behind (just restarted, or in an election)
    /// says so instead of answering; the next node is tried.
    #[arg(long)]
    pub stale: bool,
    /// Print the value exactly as stored, without a newline after it (what
    /// set --value-file stored, byte for byte).
    #[arg(long)]
    pub raw: bool,
    #[command(flatten)]
    pub output: WriteOutFlag,
    #[command(flatten)]
    pub flags: ClusterFlags,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// The key to remove.
    #[arg(id = KEY_ID, value_name = "KEY")]
    pub key: String,
    #[command(flatten)]
    pub flags: ClusterFlags,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Redraw the table every second until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub output: WriteOutFlag,
    #[command(flatten)]
    pub flags: ClusterFlags,
}

#[derive(clap::Args, Debug)]
pub struct HealthArgs {
    #[command(flatten)]
    pub output: WriteOutFlag,
    #[command(flatten)]
    pub flags: ClusterFlags,
}

/// `raft-kv set KEY VALUE`: prints `OK` once the write is committed and applied.
pub fn set(a: SetArgs) -> i32 {
    let value = match read_value(a.value.as_deref(), a.value_file.as_deref()) {
        Ok(value) => value,
        Err(message) => {
            eprintln!("raft-kv: error: {message}");
            return 2;
        }
    };
    run(&a.flags, |client| {
        client.set(&a.key, &value)?;
        println!("OK");
        Ok(0)
    })
}

/// The value of `set`: the argument itself, stdin for `-`, or the file.
fn read_value(value: Option<&str>, file: Option<&Path>) -> Result<String, String> {
    match (value, file) {
        (Some("-"), _) => read_limited(io::stdin().lock(), "stdin"),
        (Some(value), _) => Ok(value.to_owned()),
        (None, Some(path)) => {
            let cannot_read = |e: io::Error| format!("cannot read {}: {e}", path.display());
            let file = File::open(path).map_err(cannot_read)?;
            read_limited(file, &path.display().to_string())
        }
        (None, None) => Err("give a VALUE, '-' for stdin, or --value-file FILE".into()),
    }
}

/// Read a whole value, refusing one over the limit as a node would, and
/// without holding more than the limit in memory.
fn read_limited(mut reader: impl Read, source: &str) -> Result<String, String> {
    let cannot_read = |e: io::Error| format!("cannot read {source}: {e}");
    let limit = MAX_VALUE_BYTES as u64;
    let mut bytes = Vec::new();
    (&mut reader)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot_read)?;
    if bytes.len() as u64 > limit {
        // Count the rest without keeping it, to say how long it is.
        let rest = io::copy(&mut reader, &mut io::sink()).map_err(cannot_read)?;
        let len = bytes.len() as u64 + rest;
        return Err(Error::InvalidArgument(kv::value_too_long(len)).to_string());
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the value in {source} is not UTF-8 (byte {} is not)",
            e.utf8_error().valid_up_to()
        )
    })
}

/// `raft-kv get KEY`: prints the value (exit 0), or nothing with a note on
/// stderr when the key is absent (exit 1). `-w json` prints [`GetOutput`]
/// instead, with the same exit codes.
pub fn get(a: GetArgs) -> i32 {
    let json = a.output.write_out == WriteOut::Json;
    if json && a.raw {
        return usage("--raw prints the bare value; it does not go with -w json");
    }
    run(&a.flags, |client| {
        let value = client.get(&a.key, a.stale)?;
        let found = value.is_some();
        match value {
            _ if json => println!("{}", get_json(&a.key, value.as_deref())),
            Some(value) if a.raw => {
                print!("{value}");
                let _ = io::stdout().flush();
            }
            Some(value) => println!("{value}"),
            None => eprintln!("raft-kv: key not found"),
        }
        Ok(if found { 0 } else { 1 })
    })
}

/// What `get -w json` prints: `{"key":"k","found":true,"value":"v"}`, or
/// `"found":false` and a null value for an absent key.
#[derive(Serialize)]
pub struct GetOutput<'a> {
    pub key: &'a str,
    pub found: bool,
    pub value: Option<&'a str>,
}

pub fn get_json(key: &str, value: Option<&str>) -> String {
    to_json(&GetOutput {
        key,
        found: value.is_some(),
        value,
    })
}

/// A refused combination of flags: one line on stderr, exit code 2.
fn usage(message: &str) -> i32 {
    eprintln!("raft-kv: error: {message}");
    2
}

/// `raft-kv delete KEY`: prints `deleted` or `not found`; both exit 0,
/// because either way the key is now absent.
pub fn delete(a: DeleteArgs) -> i32 {
    run(&a.flags, |client| {
        let existed = client.delete(&a.key)?;
        println!("{}", if existed { "deleted" } else { "not found" });
        Ok(0)
    })
}

/// `raft-kv status [--watch]`: one row per node; exit 0 if any node answered.
/// `-w json` prints one JSON array of [`NodeStatus`] instead.
pub fn status(a: StatusArgs) -> i32 {
    let json = a.output.write_out == WriteOut::Json;
    if json && a.watch {
        return usage("--watch redraws the table; it does not go with -w json");
    }
    run(&a.flags, |client| {
        if !a.watch {
            let rows = client.status_all();
            if json {
                println!("{}", status_json(&rows));
            } else {
                print!("{}", status_table(&rows));
            }
            let answered = rows.iter().any(|(_, answer)| answer.is_ok());
            if !answered {
                eprintln!("raft-kv: error: no node answered");
            }
            return Ok(if answered { 0 } else { 2 });
        }
        loop {
            let rows = client.status_all();
            // ANSI: clear the screen, cursor home.
            print!("\x1b[2J\x1b[H{}", status_table(&rows));
            println!("\nrefreshing every second; Ctrl-C to stop");
            let _ = io::stdout().flush();
            std::thread::sleep(Duration::from_secs(1));
        }
    })
}

/// `raft-kv health`: one line per node, as etcdctl's `endpoint health`
/// prints them; exit 0 when a majority of the nodes listed is healthy
/// (serving: it knows a leader of its term), 1 otherwise.
pub fn health(a: HealthArgs) -> i32 {
    run(&a.flags, |client| {
        let nodes = client.health_all();
        if a.output.write_out == WriteOut::Json {
            let rows: Vec<HealthJson> = nodes.iter().map(HealthJson::new).collect();
            println!("{}", to_json(&rows));
        } else {
            for node in &nodes {
                println!("{}", health_line(node));
            }
        }
        let healthy = nodes.iter().filter(|node| node.healthy()).count();
        let majority = nodes.len() / 2 + 1;
        if healthy >= majority {
            return Ok(0);
        }
        eprintln!(
            "raft-kv: unhealthy: {healthy} of {} nodes healthy, fewer than a majority ({majority})",
            nodes.len()
        );
        Ok(1)
    })
}

/// One node in `health -w json`: `health_line` as fields; `null` for what
/// the node did not say.
#[derive(Serialize, Debug, PartialEq)]
pub struct HealthJson<'a> {
    address: &'a str,
    healthy: bool,
    leader: Option<u64>,
    term: Option<u64>,
    took_ms: Option<f64>,
    error: Option<&'a str>,
}

impl<'a> HealthJson<'a> {
    pub fn new(node: &'a NodeHealth) -> HealthJson<'a> {
        let answer = node.answer.as_ref();
        let status = answer.ok().and_then(|health| health.status.as_ref());
        HealthJson {
            address: &node.address,
            healthy: node.healthy(),
            leader: status.map(|s| s.leader_id).filter(|&id| id != 0),
            term: status.map(|s| s.term),
            took_ms: answer
                .ok()
                .map(|h| (h.took.as_secs_f64() * 1e4).round() / 10.0),
            error: answer.err().map(String::as_str),
        }
    }
}

/// `127.0.0.1:7001 is healthy: serving, leader 2, term 3, took 1.2ms`.
pub fn health_line(node: &NodeHealth) -> String {
    let health = match &node.answer {
        Ok(health) => health,
        Err(why) => return format!("{} is unhealthy: {why}", node.address),
    };
    let removed = health.status.as_ref().is_some_and(|s| s.removed);
    let mut line = if health.serving {
        format!("{} is healthy: serving", node.address)
    } else if removed {
        format!(
            "{} is unhealthy: not serving (removed from the cluster)",
            node.address
        )
    } else {
        format!(
            "{} is unhealthy: not serving (no leader known)",
            node.address
        )
    };
    if let Some(status) = &health.status {
        if status.leader_id != 0 {
            line += &format!(", leader {}", status.leader_id);
        }
        line += &format!(", term {}", status.term);
    }
    let ms = health.took.as_secs_f64() * 1e3;
    line + &format!(", took {ms:.1}ms")
}

/// One node in `status -w json`: the table's columns, or for a node that
/// did not answer, its address and why.
#[derive(Serialize, Debug, PartialEq)]
#[serde(untagged)]
pub enum NodeStatus<'a> {
    Answered {
        id: u64,
        address: &'a str,
        role: &'a str,
        term: u64,
        /// `null` while the node knows no leader
        leader: Option<u64>,
        commit: u64,
        applied: u64,
        last_log: u64,
        configuration: ConfigurationJson,
        /// a configuration removed the node from the cluster (§6)
        removed: bool,
    },
    Unreachable {
        address: &'a str,
        error: &'a str,
    },
}

impl<'a> NodeStatus<'a> {
    pub fn new(address: &'a str, answer: &'a Result<StatusResponse, String>) -> NodeStatus<'a> {
        match answer {
            Ok(s) => NodeStatus::Answered {
                id: s.id,
                address,
                role: &s.role,
                term: s.term,
                leader: (s.leader_id != 0).then_some(s.leader_id),
                commit: s.commit_index,
                applied: s.last_applied,
                last_log: s.last_log_index,
                configuration: ConfigurationJson {
                    voters: s.voters.clone(),
                    old_voters: s.old_voters.clone(),
                    learners: s.learners.clone(),
                    index: s.configuration_index,
                    committed: s.configuration_committed,
                },
                removed: s.removed,
            },
            Err(error) => NodeStatus::Unreachable { address, error },
        }
    }
}

/// The configuration a node has in force (§6), in `status -w json`.
#[derive(Serialize, Debug, PartialEq)]
pub struct ConfigurationJson {
    voters: Vec<u64>,
    /// while joint: C_old's voters; else empty
    old_voters: Vec<u64>,
    learners: Vec<u64>,
    /// the index of its entry (0: the cluster's first)
    index: u64,
    committed: bool,
}

/// A node's configuration in a cell of the status table: `1,2,3`, while
/// joint `1,2,4 (joint with 1,2,3)`, then its learners (`+ learners 5`),
/// and `(uncommitted)` until its entry is committed.
pub fn configuration_cell(s: &StatusResponse) -> String {
    let list = |ids: &[u64]| {
        let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
        ids.join(",")
    };
    let mut cell = list(&s.voters);
    if !s.old_voters.is_empty() {
        cell += &format!(" (joint with {})", list(&s.old_voters));
    }
    if !s.learners.is_empty() {
        cell += &format!(" + learners {}", list(&s.learners));
    }
    if cell.is_empty() {
        cell = "none (waiting to join)".into();
    }
    if !s.configuration_committed {
        cell += " (uncommitted)";
    }
    cell
}

/// `status -w json`: one array, a [`NodeStatus`] per address, in the
/// order of --cluster.
pub fn status_json(rows: &[(String, Result<StatusResponse, String>)]) -> String {
    let nodes: Vec<NodeStatus> = rows
        .iter()
        .map(|(address, answer)| NodeStatus::new(address, answer))
        .collect();
    to_json(&nodes)
}

/// Build the client from the shared flags and run `command`; any error is
/// one line on stderr and exit code 2.
fn run(flags: &ClusterFlags, command: impl FnOnce(&mut Client) -> Result<i32, Error>) -> i32 {
    run_with(flags, flags.timeout.min(DEFAULT_RPC_TIMEOUT), command)
}

/// [`run`] for a call that may take as long as `--timeout` to be answered
/// (a membership change waits for a new server to catch up): retrying one
/// that timed out would only find it in progress.
fn run_patiently(
    flags: &ClusterFlags,
    command: impl FnOnce(&mut Client) -> Result<i32, Error>,
) -> i32 {
    run_with(flags, flags.timeout, command)
}

fn run_with(
    flags: &ClusterFlags,
    rpc_timeout: Duration,
    command: impl FnOnce(&mut Client) -> Result<i32, Error>,
) -> i32 {
    let tls = match flags.tls.load(Holder::Client) {
        Ok(tls) => tls,
        Err(message) => {
            eprintln!("raft-kv: error: {message}");
            return 2;
        }
    };
    let result = Client::new(&flags.cluster).and_then(|client| {
        let mut client = client
            .with_tls(tls.as_ref())?
            .with_timeout(flags.timeout)
            .with_rpc_timeout(rpc_timeout);
        command(&mut client)
    });
    result.unwrap_or_else(|error| {
        eprintln!("raft-kv: error: {error}");
        2
    })
}

/// A bad flag of `command` (`raft-kv get`): prints one line, `raft-kv:
/// error: …`, and returns exit code 2, as for every other error
/// (docs/api.md). Help and the version print as clap prints them, and exit.
pub fn usage_error(error: clap::Error, command: &str) -> i32 {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        error.exit();
    }
    let rendered = error.render().to_string();
    eprintln!("raft-kv: error: {}", usage_error_line(&rendered, command));
    2
}

/// The flags of a command that is a binary of its own (`raft-kv-bench`,
/// `raft-kv-skeleton`), or exit as [`usage_error`] says. `raft-kv bench`
/// runs `raft-kv-bench` with `raft-kv bench` as its name (argv[0]), so its
/// help and its errors name the command the user typed.
pub fn parse_or_exit<T: clap::Parser>() -> T {
    T::try_parse().unwrap_or_else(|error| {
        // As clap names it in the usage lines.
        let first = std::env::args_os().next().unwrap_or_default();
        let name = match Path::new(&first).file_name() {
            Some(name) => name.to_string_lossy().into_owned(),
            None => T::command().get_name().to_string(),
        };
        std::process::exit(usage_error(error, &name))
    })
}

/// One line for one of clap's errors, which it renders in 3 to 7 lines:
/// the error itself, its tip if it has one, and where to read more, e.g.
/// `unexpected argument '--stal' found (tip: a similar argument exists:
/// '--stale'); see 'raft-kv get --help'`. `command` is the command whose
/// flags were being parsed (`raft-kv get`).
pub fn usage_error_line(rendered: &str, command: &str) -> String {
    let mut error = String::new();
    let mut tips = Vec::new();
    // clap separates the error, each tip, the usage and the "try --help"
    // line with blank lines.
    for (i, paragraph) in rendered.trim().split("\n\n").enumerate() {
        let text = paragraph
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if i == 0 {
            error = text
                .strip_prefix("error:")
                .unwrap_or(&text)
                .trim()
                .to_owned();
        } else if let Some(tip) = text.strip_prefix("tip:") {
            tips.push(format!(" (tip: {})", tip.trim()));
        }
    }
    format!("{error}{}; see '{command} --help'", tips.concat())
}

/// The status table, aligned, one row per address; an unreachable node's row
/// says why.
pub fn status_table(rows: &[(String, Result<StatusResponse, String>)]) -> String {
    let header = [
        "ID", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST LOG", "MEMBERS",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|(addr, answer)| match answer {
            Ok(s) => vec![
                s.id.to_string(),
                addr.clone(),
                if s.removed {
                    "removed".into()
                } else {
                    s.role.clone()
                },
                s.term.to_string(),
                if s.leader_id == 0 {
                    "-".into()
                } else {
                    s.leader_id.to_string()
                },
                s.commit_index.to_string(),
                s.last_applied.to_string(),
                s.last_log_index.to_string(),
                configuration_cell(s),
            ],
            Err(why) => vec!["-".into(), addr.clone(), format!("unreachable: {why}")],
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &cells {
        // An unreachable row's message runs to the end of the line and does
        // not widen the columns after the address.
        if row.len() == header.len() {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        } else {
            widths[1] = widths[1].max(row[1].len());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(&cells) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Parse `500ms`, `5s` or a plain number of seconds (`2.5`); must be positive.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let seconds = number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .map(|n| n * unit)
        .ok_or_else(|| format!("{text:?} is not a positive duration like 500ms, 5s or 2.5"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        for bad in ["", "0", "-1s", "fast", "ms", "1h", "inf", "NaN"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn values_are_read_byte_for_byte_up_to_the_limit() {
        let value = "é\n".repeat(MAX_VALUE_BYTES / 3) + &"x".repeat(MAX_VALUE_BYTES % 3);
        assert_eq!(value.len(), MAX_VALUE_BYTES);
        assert_eq!(read_limited(value.as_bytes(), "stdin"), Ok(value.clone()));
        assert_eq!(read_limited(&b"-"[..], "stdin"), Ok("-".into()));
        assert_eq!(read_limited(&b""[..], "stdin"), Ok(String::new()));

        let too_long = value + "xy";
        assert_eq!(
            read_limited(too_long.as_bytes(), "stdin"),
            Err(format!(
                "invalid argument: value is {} bytes; the limit is {MAX_VALUE_BYTES}",
                MAX_VALUE_BYTES + 2
            ))
        );
        assert_eq!(
            read_limited(&b"ab\xffc"[..], "v.bin"),
            Err("the value in v.bin is not UTF-8 (byte 2 is not)".into())
        );
    }

    #[test]
    fn a_value_comes_from_the_argument_stdin_or_a_file() {
        assert_eq!(read_value(Some("plain"), None), Ok("plain".into()));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "-\n").unwrap();
        assert_eq!(read_value(None, Some(&path)), Ok("-\n".into()));
        let missing = dir.path().join("missing");
        let message = read_value(None, Some(&missing)).unwrap_err();
        assert!(
            message.starts_with(&format!("cannot read {}: ", missing.display())),
            "{message}"
        );
    }

    #[test]
    fn usage_errors_fit_on_one_line() {
        let rendered = "error: unexpected argument '--stal' found\n\n  tip: a similar argument exists: '--stale'\n\nUsage: raft-kv get --stale <KEY>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_error_line(rendered, "raft-kv get"),
            "unexpected argument '--stal' found (tip: a similar argument exists: '--stale'); see 'raft-kv get --help'"
        );
        let rendered = "error: the following required arguments were not provided:\n  <KEY>\n\nUsage: raft-kv get <KEY>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_error_line(rendered, "raft-kv get"),
            "the following required arguments were not provided: <KEY>; see 'raft-kv get --help'"
        );
        let rendered = "error: invalid value 'loud' for '--log-level <LEVEL>'\n  [possible values: error, warn]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_error_line(rendered, "raft-kv node"),
            "invalid value 'loud' for '--log-level <LEVEL>' [possible values: error, warn]; see 'raft-kv node --help'"
        );
    }

    /// The TLS flags sit beside KEY (whose clap id must not be `key`, the
    /// id of `--key`).
    #[test]
    fn tls_flags_parse_beside_the_key() {
        use clap::Parser;
        #[derive(Parser)]
        enum Cli {
            Set(SetArgs),
            Get(GetArgs),
            Delete(DeleteArgs),
            Status(StatusArgs),
            Health(HealthArgs),
        }
        let parse = |args: &[&str]| Cli::try_parse_from([&["raft-kv"], args].concat()).unwrap();
        let Cli::Set(set) = parse(&["set", "k", "v", "--cert", "c", "--key", "kk", "--ca", "a"])
        else {
            panic!("not set");
        };
        assert_eq!((set.key.as_str(), set.value.as_deref()), ("k", Some("v")));
        let tls = &set.flags.tls;
        assert_eq!(tls.key.as_deref(), Some(Path::new("kk")));
        assert_eq!(tls.files(Holder::Client).unwrap().cert, Path::new("c"));
        let Cli::Get(get) = parse(&["get", "--tls-dir", "d", "k"]) else {
            panic!("not get");
        };
        assert_eq!(get.key, "k");
        assert_eq!(get.flags.tls.tls_dir.as_deref(), Some(Path::new("d")));
        let Cli::Delete(delete) = parse(&["delete", "k"]) else {
            panic!("not delete");
        };
        assert_eq!(delete.key, "k");
        assert!(!delete.flags.tls.enabled());
        let Cli::Status(status) = parse(&["status", "--tls-dir", "d"]) else {
            panic!("not status");
        };
        assert!(status.flags.tls.enabled());
        let Cli::Health(health) = parse(&["health", "--tls-dir", "d", "--cluster", "a:1,b:2"])
        else {
            panic!("not health");
        };
        assert!(health.flags.tls.enabled());
        assert_eq!(health.flags.cluster, ["a:1", "b:2"]);
        assert!(Cli::try_parse_from(["raft-kv", "get", "k", "--key", "kk"]).is_err());
    }

    #[test]
    fn health_json_has_every_node_and_the_unreachable_ones_error() {
        let status = StatusResponse {
            term: 3,
            leader_id: 2,
            ..StatusResponse::default()
        };
        let nodes = [
            NodeHealth {
                address: "127.0.0.1:7001".into(),
                answer: Ok(Health {
                    serving: true,
                    took: Duration::from_micros(1234),
                    status: Some(status),
                }),
            },
            NodeHealth {
                address: "127.0.0.1:7002".into(),
                answer: Err("connection refused".into()),
            },
        ];
        let rows: Vec<HealthJson> = nodes.iter().map(HealthJson::new).collect();
        let parsed: serde_json::Value = serde_json::from_str(&to_json(&rows)).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!([
                {"address": "127.0.0.1:7001", "healthy": true, "leader": 2, "term": 3,
                 "took_ms": 1.2, "error": null},
                {"address": "127.0.0.1:7002", "healthy": false, "leader": null, "term": null,
                 "took_ms": null, "error": "connection refused"}
            ])
        );
    }

    #[test]
    fn health_lines_say_what_etcdctl_says() {
        let status = StatusResponse {
            id: 1,
            role: "follower".into(),
            term: 3,
            leader_id: 2,
            ..StatusResponse::default()
        };
        let node = |answer| NodeHealth {
            address: "127.0.0.1:7001".into(),
            answer,
        };
        let serving = Health {
            serving: true,
            took: Duration::from_micros(1234),
            status: Some(status.clone()),
        };
        assert_eq!(
            health_line(&node(Ok(serving.clone()))),
            "127.0.0.1:7001 is healthy: serving, leader 2, term 3, took 1.2ms"
        );
        let alone = Health {
            serving: false,
            status: Some(StatusResponse {
                leader_id: 0,
                term: 7,
                ..status
            }),
            ..serving.clone()
        };
        assert_eq!(
            health_line(&node(Ok(alone))),
            "127.0.0.1:7001 is unhealthy: not serving (no leader known), term 7, took 1.2ms"
        );
        let no_status = Health {
            status: None,
            ..serving
        };
        assert_eq!(
            health_line(&node(Ok(no_status))),
            "127.0.0.1:7001 is healthy: serving, took 1.2ms"
        );
        assert_eq!(
            health_line(&node(Err("tcp connect error: Connection refused".into()))),
            "127.0.0.1:7001 is unhealthy: tcp connect error: Connection refused"
        );
    }

    #[test]
    fn status_table_aligns_and_marks_unreachable_nodes() {
        let up = StatusResponse {
            id: 1,
            role: "leader".into(),
            term: 12,
            leader_id: 1,
            commit_index: 340,
            last_applied: 339,
            last_log_index: 341,
            voters: vec![1, 2, 4],
            old_voters: vec![1, 2, 3],
            learners: vec![5],
            configuration_index: 338,
            configuration_committed: false,
            removed: false,
        };
        let removed = StatusResponse {
            id: 3,
            role: "follower".into(),
            voters: vec![1, 2],
            configuration_committed: true,
            removed: true,
            ..StatusResponse::default()
        };
        let rows = vec![
            ("127.0.0.1:7001".to_string(), Ok(up)),
            ("127.0.0.1:7003".to_string(), Ok(removed)),
            (
                "127.0.0.1:7002".to_string(),
                Err("connection refused".to_string()),
            ),
        ];
        let table = status_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines,
            [
                "ID  ADDRESS         ROLE     TERM  LEADER  COMMIT  APPLIED  LAST LOG  MEMBERS",
                "1   127.0.0.1:7001  leader   12    1       340     339      341       1,2,4 (joint with 1,2,3) + learners 5 (uncommitted)",
                "3   127.0.0.1:7003  removed  0     -       0       0        0         1,2",
                "-   127.0.0.1:7002  unreachable: connection refused",
            ]
        );
    }

    #[test]
    fn get_json_says_whether_the_key_was_found() {
        use serde_json::{json, Value};
        let found: Value = serde_json::from_str(&get_json("k", Some("a \"v\"\n"))).unwrap();
        assert_eq!(
            found,
            json!({"key": "k", "found": true, "value": "a \"v\"\n"})
        );
        let absent: Value = serde_json::from_str(&get_json("k", None)).unwrap();
        assert_eq!(absent, json!({"key": "k", "found": false, "value": null}));
        assert!(!get_json("k", Some("two\nlines")).contains('\n'));
    }

    #[test]
    fn status_json_has_every_node_and_the_unreachable_ones_error() {
        use serde_json::{json, Value};
        let node = |id, leader_id| StatusResponse {
            id,
            role: if id == leader_id {
                "leader"
            } else {
                "candidate"
            }
            .into(),
            term: 12,
            leader_id,
            commit_index: 340,
            last_applied: 339,
            last_log_index: 341,
            voters: vec![1, 2, 3],
            configuration_committed: true,
            ..StatusResponse::default()
        };
        let rows = vec![
            ("127.0.0.1:7001".to_string(), Ok(node(1, 1))),
            ("127.0.0.1:7002".to_string(), Ok(node(2, 0))),
            (
                "127.0.0.1:7003".to_string(),
                Err("connection refused".into()),
            ),
        ];
        let text = status_json(&rows);
        assert_eq!(text.lines().count(), 1, "{text}");
        let nodes: Value = serde_json::from_str(&text).unwrap();
        let configuration = json!({"voters": [1, 2, 3], "old_voters": [], "learners": [],
                                   "index": 0, "committed": true});
        assert_eq!(
            nodes,
            json!([
                {"id": 1, "address": "127.0.0.1:7001", "role": "leader", "term": 12,
                 "leader": 1, "commit": 340, "applied": 339, "last_log": 341,
                 "configuration": configuration, "removed": false},
                {"id": 2, "address": "127.0.0.1:7002", "role": "candidate", "term": 12,
                 "leader": null, "commit": 340, "applied": 339, "last_log": 341,
                 "configuration": configuration, "removed": false},
                {"address": "127.0.0.1:7003", "error": "connection refused"}
            ])
        );
        assert_eq!(status_json(&[]), "[]");
    }

    #[test]
    fn write_out_is_table_unless_json_is_asked_for() {
        use clap::Parser;
        #[derive(Parser)]
        enum Cli {
            Get(GetArgs),
            Status(StatusArgs),
        }
        let parse = |args: &[&str]| Cli::try_parse_from([&["raft-kv"], args].concat());
        let Ok(Cli::Get(get)) = parse(&["get", "k"]) else {
            panic!("not get");
        };
        assert_eq!(get.output.write_out, WriteOut::Table);
        let Ok(Cli::Get(get)) = parse(&["get", "-w", "json", "k"]) else {
            panic!("not get");
        };
        assert_eq!(get.output.write_out, WriteOut::Json);
        let Ok(Cli::Status(status)) = parse(&["status", "--write-out=json"]) else {
            panic!("not status");
        };
        assert_eq!(status.output.write_out, WriteOut::Json);
        assert!(parse(&["status", "-w", "yaml"]).is_err());
    }
}
