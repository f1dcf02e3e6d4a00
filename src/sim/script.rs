//! Script tests: a scenario written as commands to the simulated cluster,
//! with what happened written beneath each block of them, one line per
//! event — messages sent, role and term changes, commits, client answers.
//! A student reads the run instead of assertions; the test fails when the
//! run no longer matches, with a diff. The format is in docs/scripts.md:
//!
//! ```text
//! # A three-node cluster elects a leader.
//! cluster 3 seed=1
//! tick 40
//! ---
//! t=18 n2 becomes candidate in term 1
//! t=18 n2 -> n1 RequestVote term=1 last=0@0
//! ...
//! ```
//!
//! `UPDATE_SCRIPTS=1` writes the actual output into the files instead of
//! comparing. The lines come from the cluster's event record
//! ([`Cluster::events`]), messages as the trace describes them
//! ([`describe`](super::describe)), so they are the same notation as the
//! trace a failing test prints. Everything is deterministic: one seed per
//! cluster, ticks for time, ordered maps only.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use super::{Cluster, EventKind, SimConfig};
use crate::kv::{ClientError, ClientRequest, ClientResponse, ClientResult};
use crate::raft::{NodeId, RequestId, Term};

/// What `show` can choose among; all are shown until a script says otherwise.
const CATEGORIES: [&str; 6] = ["roles", "votes", "appends", "snapshots", "log", "clients"];

/// The most ticks `stabilize` runs before it gives up.
const STABILIZE_TICKS: u64 = 1000;

/// Set to write the actual output into the scripts instead of comparing.
pub const UPDATE_VAR: &str = "UPDATE_SCRIPTS";

/// Run every `*.txt` script in `dir`, in name order; panic with a readable
/// report (a diff per script that differs) if any output differs from what
/// is written beneath its commands. With `UPDATE_SCRIPTS=1`, rewrite the
/// scripts with the actual output instead.
pub fn run_dir(dir: impl AsRef<Path>) {
    let dir = dir.as_ref();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.txt scripts in {}", dir.display());
    let update = std::env::var(UPDATE_VAR).is_ok_and(|v| !v.is_empty() && v != "0");
    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| run_file(file, update).err())
        .collect();
    if !failures.is_empty() {
        panic!(
            "\n{}\n{} of {} scripts in {} failed.\n",
            failures.join("\n"),
            failures.len(),
            files.len(),
            dir.strip_prefix(env!("CARGO_MANIFEST_DIR"))
                .unwrap_or(dir)
                .display()
        );
    }
}

/// Run one script; Err is the report of how it failed. With `update`, the
/// file is rewritten with the actual output, unless the script panics or
/// has a malformed command: that fails all the same.
pub fn run_file(path: &Path, update: bool) -> Result<(), String> {
    let name = path
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: cannot read it: {e}"))?;
    let mut script = parse(&text);
    let mut runner = Runner::default();
    let mut panicked = None;
    for block in &mut script.blocks {
        let mut output = Vec::new();
        for (offset, line) in block.input.iter().enumerate() {
            let command = line.trim();
            if command.is_empty() || command.starts_with('#') {
                continue;
            }
            if panicked.is_some() {
                output.push("(not run: the script panicked above)".to_string());
                break;
            }
            let at = format!("{name}:{}", block.line + offset);
            match panic::catch_unwind(AssertUnwindSafe(|| runner.run(command, &mut output))) {
                Ok(Ok(())) => {}
                Ok(Err(problem)) => return Err(format!("{at}: `{command}`: {problem}")),
                Err(payload) => {
                    // What happened up to the panic, then the panic.
                    runner.print_events(&mut output);
                    let message = payload
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| payload.downcast_ref::<&str>().copied())
                        .unwrap_or("(no message)");
                    let now = runner.cluster.as_ref().map(Cluster::now);
                    let at_tick = now.map_or(String::new(), |t| format!("t={t} "));
                    output.push(format!("{at_tick}panic: {message}"));
                    panicked = Some(at);
                }
            }
        }
        if output.is_empty() {
            output.push("ok".to_string());
        }
        block.actual = output;
    }
    if update && panicked.is_none() {
        let written = script.write();
        if written != text {
            std::fs::write(path, written).map_err(|e| format!("{name}: cannot write it: {e}"))?;
            println!("updated {name}");
        }
    }
    let differing: Vec<&Block> = script
        .blocks
        .iter()
        .filter(|b| b.expected.as_ref() != Some(&b.actual))
        .collect();
    if let Some(at) = panicked {
        let block = differing.first().copied();
        let diff = block.map(|b| report(&name, b)).unwrap_or_default();
        return Err(format!(
            "{at}: the script panicked (the panic is the last line of its output).\n{diff}"
        ));
    }
    if update {
        return Ok(());
    }
    let Some(first) = differing.first() else {
        return Ok(());
    };
    let mut message = report(&name, first);
    if differing.len() > 1 {
        message.push_str(&format!(
            "({} later blocks of {name} differ too.)\n",
            differing.len() - 1
        ));
    }
    message.push_str(&format!(
        "If the new output is right, write it into the script with\n    {UPDATE_VAR}=1 cargo test --profile course --test {}\n",
        test_target()
    ));
    Err(message)
}

/// The name of the test target running (`election` for
/// `target/course/deps/election-0123abcd`).
fn test_target() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let stem = exe.file_stem()?.to_str()?.to_string();
            Some(
                stem.rsplit_once('-')
                    .map_or(stem.clone(), |(name, _)| name.to_string()),
            )
        })
        .unwrap_or_else(|| "NAME".to_string())
}

/// How one block's output differs: where, its commands, and a diff.
fn report(name: &str, block: &Block) -> String {
    let commands: Vec<&str> = block
        .input
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let line = block.line
        + block
            .input
            .iter()
            .position(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
            .unwrap_or(0);
    let mut out = format!("---- {name}:{line}: the output of\n");
    for command in commands {
        out.push_str(&format!("    {command}\n"));
    }
    let expected = block.expected.clone().unwrap_or_default();
    if block.expected.is_none() {
        out.push_str("has no expected output written beneath it (no `---` line) yet:\n");
    } else {
        out.push_str("differs from what the script expects (- expected, + actual):\n");
    }
    out.push_str(&diff(&expected, &block.actual));
    out
}

/// A line diff of `expected` and `actual`, from their longest common
/// subsequence: `  ` both, `- ` expected only, `+ ` actual only. Long runs
/// of common lines are cut to their ends.
fn diff(expected: &[String], actual: &[String]) -> String {
    let (n, m) = (expected.len(), actual.len());
    // lcs[i][j]: the longest common subsequence of expected[i..] and actual[j..]
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut lines: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            lines.push((' ', &expected[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            lines.push(('-', &expected[i]));
            i += 1;
        } else {
            lines.push(('+', &actual[j]));
            j += 1;
        }
    }
    const CONTEXT: usize = 3;
    let changed: Vec<usize> = (0..lines.len()).filter(|&k| lines[k].0 != ' ').collect();
    let near = |k: usize| changed.iter().any(|&c| c.abs_diff(k) <= CONTEXT);
    let mut out = String::new();
    let mut skipped = 0;
    for (k, (mark, line)) in lines.iter().enumerate() {
        if *mark == ' ' && !near(k) {
            skipped += 1;
            continue;
        }
        if skipped > 0 {
            out.push_str(&same(skipped));
            skipped = 0;
        }
        out.push_str(&format!("{mark} {line}\n"));
    }
    if skipped > 0 {
        out.push_str(&same(skipped));
    }
    out
}

fn same(lines: usize) -> String {
    let s = if lines == 1 { "" } else { "s" };
    format!("  ... ({lines} line{s} the same)\n")
}

/// A script file: blocks of commands, each with the output expected of it.
struct Script {
    blocks: Vec<Block>,
    /// comments or blank lines after the last block
    trailing: Vec<String>,
}

struct Block {
    /// the lines before `---`, as written: comments, blank lines, commands
    input: Vec<String>,
    /// the 1-based line number of `input[0]`
    line: usize,
    /// the lines after `---`; None if the block has no `---` yet
    expected: Option<Vec<String>>,
    actual: Vec<String>,
}

fn is_command(line: &str) -> bool {
    let line = line.trim();
    !line.is_empty() && !line.starts_with('#')
}

/// Blocks are separated by blank lines: commands (and comments), `---`,
/// then output lines up to the next blank line. A block without `---` ends
/// at the first blank line after a command.
fn parse(text: &str) -> Script {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = i + 1;
        let mut input = Vec::new();
        let mut expected = None;
        while i < lines.len() {
            let l = lines[i];
            i += 1;
            if l == "---" {
                let mut output = Vec::new();
                while i < lines.len() && !lines[i].trim().is_empty() {
                    output.push(lines[i].to_string());
                    i += 1;
                }
                i += 1; // the blank line that ends it
                expected = Some(output);
                break;
            }
            if l.trim().is_empty() && input.iter().any(|l: &String| is_command(l)) {
                break;
            }
            input.push(l.to_string());
        }
        if expected.is_none() && !input.iter().any(|l| is_command(l)) {
            return Script {
                blocks,
                trailing: input,
            };
        }
        blocks.push(Block {
            input,
            line,
            expected,
            actual: Vec::new(),
        });
    }
    Script {
        blocks,
        trailing: Vec::new(),
    }
}

impl Script {
    /// The script with each block's actual output beneath its commands.
    fn write(&self) -> String {
        let mut out = String::new();
        for (i, block) in self.blocks.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            for line in block.input.iter().chain(["---".to_string()].iter()) {
                out.push_str(line);
                out.push('\n');
            }
            for line in &block.actual {
                out.push_str(line);
                out.push('\n');
            }
        }
        if !self.trailing.is_empty() {
            out.push('\n');
            for line in &self.trailing {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Runs the commands of one script against one cluster.
#[derive(Default)]
struct Runner {
    cluster: Option<Cluster>,
    /// the categories `show` left out
    hidden: BTreeSet<&'static str>,
    /// what each client request was, for its answer's line
    requests: BTreeMap<RequestId, String>,
    /// each running node's role and term as last printed
    known: BTreeMap<NodeId, (&'static str, Term)>,
    /// how many of the cluster's events have been printed
    printed: usize,
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{what} must be a number, not {text:?}"))
}

impl Runner {
    fn cluster(&mut self) -> Result<&mut Cluster, String> {
        self.cluster
            .as_mut()
            .ok_or_else(|| "no cluster yet: start with `cluster N`".to_string())
    }

    fn shows(&self, category: &str) -> bool {
        !self.hidden.contains(category)
    }

    /// A node id argument: `2` or `n2`, of a node of the cluster.
    fn node(&mut self, text: &str) -> Result<NodeId, String> {
        let id: NodeId = number(text.trim_start_matches('n'), "a node id")?;
        let cluster = self.cluster()?;
        if !cluster.ids().contains(&id) {
            return Err(format!("the cluster has no node {id}"));
        }
        Ok(id)
    }

    /// Run one command, adding its output to `out`. Err: the command is
    /// malformed (the script's fault, not the cluster's).
    fn run(&mut self, command: &str, out: &mut Vec<String>) -> Result<(), String> {
        let words: Vec<&str> = command.split_whitespace().collect();
        let (name, args) = words.split_first().expect("a command is not blank");
        let arity = |min: usize, max: usize| {
            if args.len() < min || args.len() > max {
                Err(format!(
                    "takes {min} to {max} arguments, not {}",
                    args.len()
                ))
            } else {
                Ok(())
            }
        };
        match *name {
            "cluster" => {
                arity(1, 2)?;
                let nodes: usize = number(args[0], "the number of nodes")?;
                let mut seed = 0;
                for arg in &args[1..] {
                    let value = arg
                        .strip_prefix("seed=")
                        .ok_or_else(|| format!("unknown option {arg:?}; expected seed=N"))?;
                    seed = number(value, "the seed")?;
                }
                let cluster = Cluster::new(SimConfig::new(nodes, seed));
                self.known = cluster
                    .ids()
                    .into_iter()
                    .map(|id| {
                        let node = cluster.node(id);
                        (id, (node.role().name(), node.current_term()))
                    })
                    .collect();
                self.printed = cluster.events().len();
                self.requests.clear();
                self.cluster = Some(cluster);
            }
            "show" => {
                arity(1, CATEGORIES.len())?;
                if args == ["all"] {
                    self.hidden.clear();
                } else {
                    for arg in args {
                        if !CATEGORIES.contains(arg) {
                            return Err(format!(
                                "unknown category {arg:?}; expected all or some of {}",
                                CATEGORIES.join(", ")
                            ));
                        }
                    }
                    self.hidden = CATEGORIES
                        .into_iter()
                        .filter(|c| !args.contains(c))
                        .collect();
                }
            }
            "tick" => {
                arity(0, 1)?;
                let ticks = args.first().map_or(Ok(1), |n| number(n, "ticks"))?;
                self.cluster()?.ticks(ticks);
            }
            "deliver" => {
                arity(0, 0)?;
                self.cluster()?.deliver_due();
            }
            "stabilize" => {
                arity(0, 1)?;
                let max = args
                    .first()
                    .map_or(Ok(STABILIZE_TICKS), |n| number(n, "ticks"))?;
                let logs = self.shows("log");
                let cluster = self.cluster()?;
                let settled = cluster.run_until(max, |c| c.settled(logs));
                self.print_events(out);
                if !settled {
                    out.push(format!("not settled after {max} ticks"));
                }
            }
            "partition" => {
                arity(1, usize::MAX)?;
                let mut groups = Vec::new();
                for group in args {
                    let ids = group
                        .split(',')
                        .map(|id| self.node(id))
                        .collect::<Result<Vec<_>, _>>()?;
                    groups.push(ids);
                }
                let groups: Vec<&[NodeId]> = groups.iter().map(Vec::as_slice).collect();
                self.cluster()?.partition(&groups);
            }
            "heal" => {
                arity(0, 0)?;
                self.cluster()?.heal();
            }
            "crash" | "restart" | "wipe" => {
                arity(1, 1)?;
                let id = self.node(args[0])?;
                let cluster = self.cluster()?;
                match *name {
                    "crash" => cluster.crash(id),
                    "restart" => cluster.restart(id),
                    _ => cluster.wipe(id),
                }
            }
            "set" | "delete" | "get" => self.client(name, args, out)?,
            "status" => {
                arity(0, 0)?;
                let logs = self.shows("log");
                let cluster = self.cluster()?;
                for id in cluster.ids() {
                    out.push(status(cluster, id, logs));
                }
            }
            _ => {
                return Err(
                    "unknown command; expected cluster, show, tick, deliver, stabilize, \
                     partition, heal, crash, restart, wipe, set, delete, get or status"
                        .to_string(),
                )
            }
        }
        self.print_events(out);
        Ok(())
    }

    /// `set KEY VALUE [via N]`, `delete KEY [via N]`, `get KEY [via N] [stale]`.
    fn client(&mut self, name: &str, args: &[&str], out: &mut Vec<String>) -> Result<(), String> {
        let (operands, mut options) = match name {
            "set" if args.len() >= 2 => args.split_at(2),
            "delete" | "get" if !args.is_empty() => args.split_at(1),
            _ => return Err("a key (and for set, a value) is missing".to_string()),
        };
        let mut via = None;
        let mut stale = false;
        while let Some((&option, rest)) = options.split_first() {
            match option {
                "via" => {
                    let id = rest.first().ok_or("via needs a node id")?;
                    via = Some(self.node(id)?);
                    options = &rest[1..];
                }
                "stale" if name == "get" => {
                    stale = true;
                    options = rest;
                }
                _ => return Err(format!("unknown option {option:?}")),
            }
        }
        let key = operands[0].to_string();
        let (request, text) = match name {
            "set" => (
                ClientRequest::Set {
                    key: key.clone(),
                    value: operands[1].to_string(),
                    client_id: 0,
                    sequence: 0,
                },
                format!("set {key}={}", operands[1]),
            ),
            "delete" => (
                ClientRequest::Delete {
                    key: key.clone(),
                    client_id: 0,
                    sequence: 0,
                },
                format!("delete {key}"),
            ),
            _ => (
                ClientRequest::Get {
                    key: key.clone(),
                    linearizable: !stale,
                },
                format!("get {key}{}", if stale { " (stale)" } else { "" }),
            ),
        };
        let show = self.shows("clients");
        let cluster = self.cluster()?;
        let now = cluster.now();
        let Some(to) = via.or_else(|| cluster.leader()) else {
            if show {
                out.push(format!("t={now} client: no leader to send {text} to"));
            }
            return Ok(());
        };
        if !cluster.is_up(to) {
            if show {
                out.push(format!("t={now} client: n{to} is down; {text} not sent"));
            }
            return Ok(());
        }
        let id = cluster.next_request;
        if show {
            out.push(format!("t={now} client -> n{to} #{id} {text}"));
        }
        self.requests.insert(id, text);
        let sent = self.cluster()?.request(to, request);
        debug_assert_eq!(sent, id);
        Ok(())
    }

    /// Print the events recorded since the last call, as lines.
    fn print_events(&mut self, out: &mut Vec<String>) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let events = &cluster.events()[self.printed..];
        self.printed = cluster.events().len();
        // A message lost in this same stretch is marked on its send line.
        let mut lost = BTreeMap::new();
        let mut sent = BTreeSet::new();
        for event in events {
            match &event.kind {
                EventKind::Lost { id, why, .. } => {
                    lost.insert(*id, why.as_str());
                }
                EventKind::Send { id, .. } => {
                    sent.insert(*id);
                }
                _ => {}
            }
        }
        let shows_message = |what: &str| {
            let category = if what.starts_with("RequestVote") {
                "votes"
            } else if what.starts_with("AppendEntries") {
                "appends"
            } else {
                "snapshots"
            };
            !self.hidden.contains(category)
        };
        let mut lines = Vec::new();
        for event in events {
            let text = match &event.kind {
                EventKind::Send {
                    id,
                    from,
                    to,
                    what,
                    dropped,
                    ..
                } => {
                    if !shows_message(what) {
                        continue;
                    }
                    let mut text = format!("n{from} -> n{to} {what}");
                    if *dropped {
                        text.push_str(" (dropped)");
                    }
                    if let Some(why) = lost.get(id) {
                        text.push_str(&format!(" (lost: {why})"));
                    }
                    text
                }
                EventKind::Lost {
                    id,
                    from,
                    to,
                    what,
                    why,
                } => {
                    if sent.contains(id) || !shows_message(what) {
                        continue;
                    }
                    format!("lost, {why}: n{from} -> n{to} {what}")
                }
                EventKind::Role { node, term, role } => {
                    let before = self.known.insert(*node, (role, *term));
                    if self.hidden.contains("roles") {
                        continue;
                    }
                    match before {
                        None => format!("n{node} starts as {role} in term {term}"),
                        Some((was, _)) if was != *role => {
                            format!("n{node} becomes {role} in term {term}")
                        }
                        Some(_) => format!("n{node} enters term {term} as {role}"),
                    }
                }
                EventKind::Commit { node, index } => {
                    if self.hidden.contains("log") {
                        continue;
                    }
                    format!("n{node} commit_index={index}")
                }
                EventKind::Answer { node, request, .. } => {
                    if self.hidden.contains("clients") {
                        continue;
                    }
                    let what = self
                        .requests
                        .get(request)
                        .map_or(String::new(), |r| format!(" {r}"));
                    let reply = cluster.response(*request).map_or("?".to_string(), answer);
                    format!("n{node} answers #{request}{what}: {reply}")
                }
                EventKind::Power { node, up, text } => {
                    if !up {
                        self.known.remove(node);
                        format!("n{node} crashes")
                    } else if text.starts_with("wipe") {
                        format!("n{node} restarts on an empty disk")
                    } else {
                        format!("n{node} restarts")
                    }
                }
                EventKind::Deliver { .. } | EventKind::Note(_) => continue,
            };
            lines.push((event.t, text));
        }
        fold(lines, out);
    }
}

/// Add `lines` to `out`, folding each run of ticks whose lines repeat those
/// of the tick printed before them (an idle leader's heartbeats) into one
/// line.
fn fold(lines: Vec<(u64, String)>, out: &mut Vec<String>) {
    let mut ticks: Vec<(u64, Vec<String>)> = Vec::new();
    for (t, text) in lines {
        match ticks.last_mut() {
            Some((last, texts)) if *last == t => texts.push(text),
            _ => ticks.push((t, vec![text])),
        }
    }
    let mut printed: Option<(u64, Vec<String>)> = None;
    let mut folded: Vec<u64> = Vec::new();
    let flush = |folded: &mut Vec<u64>,
                 printed: &Option<(u64, Vec<String>)>,
                 out: &mut Vec<String>| {
        let (Some(&first), Some(&last), Some((like, _))) = (folded.first(), folded.last(), printed)
        else {
            return;
        };
        out.push(if first == last {
            format!("t={first}: the same as t={like}")
        } else {
            format!(
                "t={first}..{last}: the same as t={like}, {} times",
                folded.len()
            )
        });
        folded.clear();
    };
    for (t, texts) in ticks {
        if printed.as_ref().is_some_and(|(_, p)| *p == texts) {
            folded.push(t);
            continue;
        }
        flush(&mut folded, &printed, out);
        out.extend(texts.iter().map(|text| format!("t={t} {text}")));
        printed = Some((t, texts));
    }
    flush(&mut folded, &printed, out);
}

/// A client's answer, in words.
fn answer(result: &ClientResult) -> String {
    match result {
        Ok(ClientResponse::Set) => "ok".to_string(),
        Ok(ClientResponse::Deleted { existed: true }) => "deleted".to_string(),
        Ok(ClientResponse::Deleted { existed: false }) => "not found".to_string(),
        Ok(ClientResponse::Value(Some(value))) => format!("value {value}"),
        Ok(ClientResponse::Value(None)) => "not found".to_string(),
        Err(ClientError::NotLeader { leader: Some(l) }) => {
            format!("not leader; the leader is n{l}")
        }
        Err(ClientError::NotLeader { leader: None }) => "not leader; no leader known".to_string(),
        Err(ClientError::LeadershipLost) => "leadership lost".to_string(),
        Err(ClientError::InvalidArgument(why)) => format!("invalid: {why}"),
        Err(ClientError::StaleSequence) => "stale sequence".to_string(),
        Err(ClientError::SequenceReused {
            client_id,
            sequence,
        }) => format!("sequence reused: client {client_id}, sequence {sequence}"),
        Err(ClientError::SessionExpired { client_id }) => {
            format!("session expired: client {client_id}")
        }
        Err(ClientError::Behind {
            last_applied,
            commit_index,
            ..
        }) => format!("behind: applied {last_applied} of {commit_index} committed"),
        Err(ClientError::TransferInProgress { target }) => {
            format!("leadership transfer to n{target} in progress")
        }
        Err(ClientError::Removed { node }) => format!("n{node} was removed"),
    }
}

/// One node's line of `status`: Figure 2's state, the log's only with `log` shown.
fn status(cluster: &Cluster, id: NodeId, logs: bool) -> String {
    if !cluster.is_up(id) {
        return format!("n{id} down");
    }
    let node = cluster.node(id);
    let name = |id: Option<NodeId>| id.map_or("-".to_string(), |id| format!("n{id}"));
    let mut line = format!(
        "n{id} {} term={} voted_for={} leader={}",
        node.role().name(),
        node.current_term(),
        name(node.voted_for()),
        name(node.leader_id()),
    );
    if logs {
        let log = node.log();
        line.push_str(&format!(
            " commit_index={} last_applied={} last={}@{}",
            node.commit_index(),
            node.last_applied(),
            log.last_index(),
            log.last_term()
        ));
    }
    line
}

impl Cluster {
    /// Whether the cluster has settled (`stabilize`): no message in flight,
    /// and a leader that a majority of the nodes can reach, every node it
    /// reaches in its term and following it — with `logs`, also holding its
    /// whole log, committed and applied as far as the leader's. Nodes cut
    /// off from the leader are not waited for.
    fn settled(&self, logs: bool) -> bool {
        if !self.network.is_empty() {
            return false;
        }
        let majority = self.config.nodes / 2 + 1;
        self.leaders().into_iter().any(|leader| {
            let l = self.node(leader);
            let reached: Vec<NodeId> = self
                .ids()
                .into_iter()
                .filter(|&id| {
                    self.is_up(id)
                        && (id == leader
                            || (self.can_talk(leader, id) && self.can_talk(id, leader)))
                })
                .collect();
            reached.len() >= majority
                && reached.iter().all(|&id| {
                    let n = self.node(id);
                    n.current_term() == l.current_term()
                        && n.leader_id() == Some(leader)
                        && (!logs
                            || (n.log().last_index() == l.log().last_index()
                                && n.commit_index() == l.commit_index()
                                && n.last_applied() == n.commit_index()))
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_is_written_back_as_it_was_read() {
        let text = "# A comment.\ncluster 3\ntick 2\n---\nt=1 a\nt=2 b\n\n# Another.\n\nstatus\n---\nok\n\n# trailing\n";
        let script = parse(text);
        assert_eq!(script.blocks.len(), 2);
        assert_eq!(script.blocks[1].line, 8);
        let mut script = script;
        for block in &mut script.blocks {
            block.actual = block.expected.clone().unwrap();
        }
        assert_eq!(script.write(), text);
    }

    #[test]
    fn a_block_without_output_ends_at_a_blank_line() {
        let script = parse("cluster 3\ntick\n\nstatus\n");
        assert_eq!(script.blocks.len(), 2);
        assert!(script.blocks.iter().all(|b| b.expected.is_none()));
        assert_eq!(script.blocks[1].input, vec!["status".to_string()]);
    }

    #[test]
    fn the_diff_marks_lines_of_one_side_only() {
        let lines = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            diff(&lines("a b c"), &lines("a x c")),
            "  a\n- b\n+ x\n  c\n"
        );
    }

    #[test]
    fn repeated_ticks_fold_into_one_line() {
        let mut out = Vec::new();
        let lines = [(5, "hb"), (10, "hb"), (15, "hb"), (17, "vote"), (20, "hb")];
        fold(
            lines.iter().map(|&(t, s)| (t, s.to_string())).collect(),
            &mut out,
        );
        assert_eq!(
            out,
            [
                "t=5 hb",
                "t=10..15: the same as t=5, 2 times",
                "t=17 vote",
                "t=20 hb"
            ]
        );
    }
}
