//! `raft-kv cluster`: every member of a cluster as a child `raft-kv node`
//! process on this machine, with every line they print prefixed `[nodeN] `.
//!
//! Commands typed in its terminal act on its own nodes (and no one else's),
//! so a crash is one word away:
//!
//! ```text
//! kill N      SIGKILL: node N crashes; the others elect a new leader
//! restart N   start node N again on its data dir, with the same flags
//! pause N     SIGSTOP: node N stays connected but answers nothing
//! resume N    SIGCONT: it carries on and catches up
//! status      each node's process and what it says of itself
//! help, quit
//! ```
//!
//! N is a node id, or `leader` for the node that says it leads. The answers
//! are prefixed `[cluster] `. When stdin is not a terminal the commands are
//! read all the same (tests type them through a pipe); when it is closed or
//! `/dev/null` the cluster just runs.
//!
//! Ctrl-C reaches every process of the terminal's process group: the nodes
//! stop at once (as in a crash; what they acknowledged is on disk), and the
//! cluster waits for them and exits 0. `kill PID` of the cluster does the
//! same, killing the nodes itself. If every node exits on its own (none was
//! stopped by a command), the cluster exits 1.
//!
//! If the cluster process dies without the chance to stop its nodes (even
//! `kill -9`), Linux kills them too (`PR_SET_PDEATHSIG`). Elsewhere that last
//! case is not covered, and the nodes must be stopped by hand.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};

use std::sync::Arc;

use crate::cli::Client;
use crate::config::{ConfigError, Members, Tuning, EXIT_BAD_CONFIG};
use crate::raft::NodeId;
use crate::server::live;
use crate::tls::{certs, Holder, Tls, TlsArgs};

/// How long the nodes get to exit after an interrupt before they are killed.
const GRACE: Duration = Duration::from_secs(2);
/// How often the supervisor looks for an interrupt while the nodes are quiet.
const POLL: Duration = Duration::from_millis(100);
/// How long `status` (and `kill leader`) waits for a node's own answer: a
/// paused node never answers.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// In the base dir: the token every node of the cluster is started with.
const TOKEN_FILE: &str = "cluster-token";
/// In the base dir: the certificates `--tls` makes.
const TLS_DIR: &str = "tls";

const COMMANDS: &str =
    "kill N, restart N, pause N, resume N, status, help, quit (N: a node id or 'leader')";
const HELP: [&str; 7] = [
    "kill N      SIGKILL node N, as in a crash (N: a node id, or 'leader')",
    "restart N   start node N again on its data dir with the same flags (killed first if running)",
    "pause N     SIGSTOP node N: it stays connected but answers nothing",
    "resume N    SIGCONT node N: it carries on and catches up",
    "status      each node's process, and its role, term and leader as it says",
    "quit        stop every node and exit, as Ctrl-C does",
    "Only this cluster's own nodes are touched.",
];

/// `raft-kv cluster`: run every member as a local child process.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Every member of the cluster, as ID=HOST:PORT,ID=HOST:PORT,…
    #[arg(
        long,
        value_name = "LIST",
        default_value = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
    )]
    pub peers: String,
    /// Base data directory: node N keeps its data in BASE/nodeN.
    #[arg(long, value_name = "BASE", default_value = "data")]
    pub data_dir: PathBuf,
    /// Run with mutual TLS: at the first start, `raft-kv certs` writes a CA
    /// and every certificate to BASE/tls; clients then need `--tls-dir BASE/tls`.
    #[arg(long, conflicts_with_all = ["tls_dir", "tls_cert"])]
    pub tls: bool,
    #[command(flatten)]
    pub tls_files: TlsArgs,
    /// Where to serve the page that shows the nodes live, with buttons that
    /// kill, pause and partition them (open http://HOST:PORT in a browser).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7000")]
    pub web_addr: String,
    /// Serve no page.
    #[arg(long)]
    pub no_web: bool,
    /// Slow motion, for a person to follow each step on the page: elections
    /// time out after 1.5-3 s and the leader sends heartbeats every 0.5 s
    /// (in place of --election-timeout-ms, --heartbeat-ms and --tick-ms).
    #[arg(long)]
    pub slow: bool,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// `--slow`'s timing: (election timeout range, heartbeat, tick) in ms.
const SLOW: (&str, u64, u64) = ("1500-3000", 500, 50);

/// Run the cluster until interrupted; returns the process exit code.
pub fn run_cluster(mut args: ClusterArgs) -> i32 {
    if args.slow {
        args.tuning.election_timeout_ms = SLOW.0.to_string();
        args.tuning.heartbeat_ms = SLOW.1;
        args.tuning.tick_ms = SLOW.2;
    }
    let members = match check(&args) {
        Ok(members) => members,
        Err(e) => {
            eprintln!("raft-kv: error: {e}");
            return EXIT_BAD_CONFIG;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("raft-kv: error: cannot find the raft-kv executable: {e}");
            return 1;
        }
    };
    interrupt::catch();
    let (events_tx, events) = unbounded();
    let token = match cluster_token(&args.data_dir) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("raft-kv: error: {e}");
            return EXIT_BAD_CONFIG;
        }
    };
    let tls = match cluster_tls(&args, &members) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("raft-kv: error: {e}");
            return EXIT_BAD_CONFIG;
        }
    };
    let web = match web_listener(&args) {
        Ok(web) => web,
        Err(e) => {
            eprintln!("raft-kv: error: --web-addr: {e} (--no-web serves no page)");
            return EXIT_BAD_CONFIG;
        }
    };
    // The page's partition button needs it.
    let mut node_flags = vec![
        "--cluster-token".into(),
        token,
        "--allow-fault-injection".into(),
    ];
    node_flags.extend(tls.to_flags());
    let client_tls = tls.load(Holder::Client).expect("checked in cluster_tls");
    let live = web.map(|listener| {
        let typed = events_tx.clone();
        let command = Box::new(move |line: String| {
            let _ = typed.send(Event::Command(line));
        });
        let addresses = members
            .iter()
            .map(|(id, address)| (id, address.to_string()))
            .collect();
        (
            live::Shared::new(addresses, args.slow, client_tls.clone(), command),
            listener,
        )
    });
    let mut cluster = Cluster {
        exe,
        members,
        data_dir: args.data_dir,
        tuning: args.tuning,
        node_flags,
        client_tls,
        events: events_tx,
        nodes: BTreeMap::new(),
        live: live.as_ref().map(|(shared, _)| shared.clone()),
    };
    for id in cluster.members.ids() {
        if let Err(e) = cluster.start(id) {
            eprintln!("raft-kv: error: cannot start node {id}: {e}");
            return 1;
        }
    }
    if let Some((shared, listener)) = live {
        let address = listener.local_addr().map(|a| a.to_string());
        match (live::spawn(shared, listener), address) {
            (Ok(()), Ok(address)) => announce(&format!(
                "watch the cluster and break it at http://{address}{}",
                if args.slow { " (slow motion)" } else { "" }
            )),
            (Err(e), _) | (_, Err(e)) => announce(&format!("no page: {e}")),
        }
    }
    cluster.publish();
    if io::stdin().is_terminal() {
        announce(&format!("type a command and Enter: {COMMANDS}"));
    }
    read_commands(cluster.events.clone());
    cluster.supervise(events)
}

/// The token that names this cluster (src/server/identity.rs): drawn at
/// random when the base dir is new, and kept in BASE/cluster-token, so that
/// a node whose data dir was wiped joins the same cluster again.
fn cluster_token(base: &Path) -> Result<String, String> {
    let path = base.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) => {
            let token = token.trim().to_string();
            crate::config::check_cluster_token(&token)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(token)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let token = format!("{:016x}", rand::random::<u64>());
            std::fs::create_dir_all(base)
                .and_then(|()| std::fs::write(&path, format!("{token}\n")))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(token)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The TLS files of the cluster: `--tls` makes them in BASE/tls at the
/// first start (and uses them after), `--tls-dir` and the others name them.
/// Each node's certificate is checked here, so a wrong file is reported
/// once, before any node starts.
fn cluster_tls(args: &ClusterArgs, members: &Members) -> Result<TlsArgs, String> {
    let mut tls = args.tls_files.clone();
    if args.tls {
        let dir = args.data_dir.join(TLS_DIR);
        if !dir.join(crate::tls::CA_CERT_FILE).exists() {
            let nodes = certs::nodes(&members.to_peers_flag(), &[])?;
            certs::write(&dir, &nodes, false)?;
            announce(&format!(
                "wrote a CA and certificates to {}; clients need --tls-dir {}",
                dir.display(),
                dir.display()
            ));
        }
        tls.tls_dir = Some(dir);
    }
    if tls.enabled() {
        for id in members.ids() {
            tls.load(Holder::Node(id))?;
        }
        tls.load(Holder::Client)?;
    }
    Ok(tls)
}

/// The page's socket, bound before any node starts so that a busy port
/// stops the cluster before it begins.
fn web_listener(args: &ClusterArgs) -> Result<Option<std::net::TcpListener>, ConfigError> {
    if args.no_web {
        return Ok(None);
    }
    let address = crate::config::Address::parse(&args.web_addr).map_err(ConfigError)?;
    crate::config::bind_listener(&address).map(Some)
}

/// Check the flags here, so a mistake is reported once rather than by every node.
fn check(args: &ClusterArgs) -> Result<Members, ConfigError> {
    let members = Members::parse_peers(&args.peers)?;
    args.tuning.check()?;
    Ok(members)
}

/// What the output threads and the command reader tell the supervisor.
enum Event {
    Line(NodeId, String),
    /// The output of run `run` of the node has ended: it has exited, or is
    /// about to.
    Closed {
        id: NodeId,
        run: u64,
    },
    /// A line typed on stdin.
    Command(String),
    /// stdin is closed: no more commands will come.
    InputClosed,
}

/// The cluster's nodes and what it needs to start them again.
struct Cluster {
    exe: PathBuf,
    members: Members,
    data_dir: PathBuf,
    tuning: Tuning,
    /// flags every node gets besides the member list, data dir and tuning
    node_flags: Vec<String>,
    /// with TLS, the client certificate `status` asks the nodes with
    client_tls: Option<Tls>,
    /// Kept to hand to the output thread of every node started.
    events: Sender<Event>,
    nodes: BTreeMap<NodeId, Node>,
    /// what the page shows, when it is served
    live: Option<Arc<live::Shared>>,
}

/// One member's process, across its restarts.
struct Node {
    /// How many times it was started: the end of an earlier run's output
    /// must not be taken for the end of this one.
    run: u64,
    state: State,
}

enum State {
    Running {
        child: Child,
        paused: bool,
        /// `kill` or `restart` sent it SIGKILL.
        killed_by_command: bool,
    },
    Exited {
        how: String,
        by_command: bool,
    },
}

impl Cluster {
    /// Start node `id` (again) on its data dir, with the cluster's flags.
    fn start(&mut self, id: NodeId) -> io::Result<()> {
        let run = self.nodes.get(&id).map_or(1, |node| node.run + 1);
        let data_dir = self.node_data_dir(id);
        let child = self.spawn_node(id, run, &data_dir)?;
        let state = State::Running {
            child,
            paused: false,
            killed_by_command: false,
        };
        self.nodes.insert(id, Node { run, state });
        Ok(())
    }

    fn spawn_node(&self, id: NodeId, run: u64, data_dir: &Path) -> io::Result<Child> {
        // One pipe for stdout and stderr keeps each node's lines in order.
        let (output, output_writer) = io::pipe()?;
        let mut command = Command::new(&self.exe);
        command
            .arg("node")
            .args(["--id", &id.to_string()])
            .args(["--peers", &self.members.to_peers_flag()])
            .arg("--data-dir")
            .arg(data_dir)
            .args(self.tuning.to_flags())
            .args(&self.node_flags)
            .stdin(Stdio::null())
            .stdout(output_writer.try_clone()?)
            .stderr(output_writer);
        die_with_parent(&mut command);
        let child = command.spawn()?;
        // Close our copies of the pipe's write end, so the output ends when the node does.
        drop(command);
        let events = self.events.clone();
        thread::Builder::new()
            .name(format!("node{id}-output"))
            .spawn(move || forward_output(id, run, output, events))?;
        Ok(child)
    }

    fn node_data_dir(&self, id: NodeId) -> PathBuf {
        self.data_dir.join(format!("node{id}"))
    }

    /// Print the nodes' lines and exits and obey typed commands until an
    /// interrupt (and the grace period after it), `quit`, or until every node
    /// has exited on its own.
    fn supervise(&mut self, events: Receiver<Event>) -> i32 {
        let mut interrupted_at: Option<Instant> = None;
        let mut input_open = true;
        let mut told_all_stopped = false;
        loop {
            match events.recv_timeout(POLL) {
                Ok(Event::Line(id, line)) => say(id, &line),
                Ok(Event::Closed { id, run }) => self.reap(id, run),
                Ok(Event::Command(line)) if interrupted_at.is_none() => {
                    if self.obey(&line) == Flow::Quit {
                        self.kill_all();
                        return 0;
                    }
                }
                Ok(Event::Command(_)) => {}
                Ok(Event::InputClosed) => input_open = false,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
            self.publish();
            if interrupted_at.is_none() && interrupt::happened() {
                interrupted_at = Some(Instant::now());
                // A stopped process acts on the terminal's SIGINT only once
                // it runs again.
                for node in self.nodes.values_mut() {
                    if let State::Running { child, paused, .. } = &mut node.state {
                        if *paused && send(child, Signal::Continue).is_ok() {
                            *paused = false;
                        }
                    }
                }
            }
            if self.running() == 0 {
                if interrupted_at.is_some() {
                    return 0;
                }
                // Nodes stopped by a command may be restarted by the next one.
                if !input_open || !self.any_stopped_by_command() {
                    eprintln!("raft-kv: error: every node has exited");
                    return 1;
                }
                if !told_all_stopped {
                    announce("every node is stopped: 'restart N' starts one, Ctrl-C quits");
                    told_all_stopped = true;
                }
            } else {
                told_all_stopped = false;
            }
            if interrupted_at.is_some_and(|at| at.elapsed() >= GRACE) {
                self.kill_all();
                return 0;
            }
        }
    }

    /// Tell the page what each process is doing.
    fn publish(&self) {
        let Some(live) = &self.live else {
            return;
        };
        let processes = self
            .nodes
            .iter()
            .map(|(&id, node)| {
                let process = match &node.state {
                    State::Running { child, paused, .. } => live::Process {
                        state: if *paused { "paused" } else { "running" },
                        pid: Some(child.id()),
                        how: String::new(),
                    },
                    State::Exited { how, .. } => live::Process {
                        state: "exited",
                        pid: None,
                        how: how.clone(),
                    },
                };
                (id, process)
            })
            .collect();
        live.set_processes(processes);
    }

    fn running(&self) -> usize {
        self.nodes
            .values()
            .filter(|node| matches!(node.state, State::Running { .. }))
            .count()
    }

    fn any_stopped_by_command(&self) -> bool {
        self.nodes.values().any(|node| match node.state {
            State::Exited { by_command, .. } => by_command,
            State::Running { .. } => false,
        })
    }

    /// Run `run` of node `id` has closed its output: wait for it and report
    /// how it exited. An earlier run's end is old news (`restart` reaped it).
    fn reap(&mut self, id: NodeId, run: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.run == run {
            node.wait_for_exit(id);
        }
    }

    fn kill_all(&mut self) {
        for (&id, node) in &mut self.nodes {
            node.kill();
            node.wait_for_exit(id);
        }
    }

    /// Carry out one typed command; every answer is one `[cluster]` line.
    fn obey(&mut self, line: &str) -> Flow {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (verb, args) = match words.split_first() {
            Some((verb, args)) => (*verb, args),
            None => return Flow::Continue,
        };
        match (verb, args) {
            ("help", []) => {
                for line in HELP {
                    announce(line);
                }
            }
            ("status", []) => self.print_status(),
            ("quit", []) => return Flow::Quit,
            ("kill" | "restart" | "pause" | "resume", [which]) => match self.node_id(which) {
                Ok(id) => self.act(verb, id),
                Err(why) => announce(&why),
            },
            ("kill" | "restart" | "pause" | "resume", _) => {
                announce(&format!("'{verb}' takes one node id, like: {verb} 2"))
            }
            ("help" | "status" | "quit", _) => announce(&format!("'{verb}' takes no arguments")),
            _ => announce(&format!(
                "unknown command '{}'; commands: {COMMANDS}",
                line.trim()
            )),
        }
        Flow::Continue
    }

    /// The node a command names: its id, or `leader`.
    fn node_id(&self, which: &str) -> Result<NodeId, String> {
        if which == "leader" {
            return self
                .leader()
                .ok_or_else(|| "no node says it is the leader right now (an election may be running); try again, or type status".to_string());
        }
        match which.parse::<NodeId>() {
            Ok(id) if self.nodes.contains_key(&id) => Ok(id),
            _ => Err(format!(
                "'{which}' is not a node of this cluster ({})",
                self.ids().join(", ")
            )),
        }
    }

    fn ids(&self) -> Vec<String> {
        self.nodes.keys().map(|id| id.to_string()).collect()
    }

    fn act(&mut self, verb: &str, id: NodeId) {
        if verb == "restart" {
            return self.restart(id);
        }
        let node = self.nodes.get_mut(&id).expect("checked in node_id");
        let (child, paused) = match &mut node.state {
            State::Running { child, paused, .. } => (child, paused),
            State::Exited { how, .. } => {
                return announce(&format!(
                    "node {id} is not running (it exited: {how}); 'restart {id}' starts it"
                ))
            }
        };
        let pid = child.id();
        match (verb, *paused) {
            ("kill", _) => {
                node.kill();
                // Its exit is reported when its output ends, like any other.
                announce(&format!("node {id} (pid {pid}) killed with SIGKILL"));
            }
            ("pause", true) => announce(&format!(
                "node {id} is already paused; 'resume {id}' continues it"
            )),
            ("pause", false) => match send(child, Signal::Stop) {
                Ok(()) => {
                    *paused = true;
                    announce(&format!(
                        "node {id} (pid {pid}) paused with SIGSTOP: it answers nothing until 'resume {id}'"
                    ));
                }
                Err(e) => announce(&format!("cannot pause node {id}: {e}")),
            },
            ("resume", false) => announce(&format!("node {id} is not paused")),
            ("resume", true) => match send(child, Signal::Continue) {
                Ok(()) => {
                    *paused = false;
                    announce(&format!("node {id} (pid {pid}) resumed with SIGCONT"));
                }
                Err(e) => announce(&format!("cannot resume node {id}: {e}")),
            },
            (verb, _) => unreachable!("obey passes no verb {verb}"),
        }
    }

    /// Start node `id` again; a running one is killed first (a crash and a
    /// restart).
    fn restart(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("checked in node_id");
        if let State::Running { .. } = node.state {
            node.kill();
            node.wait_for_exit(id);
        }
        let data_dir = self.node_data_dir(id);
        announce(&format!(
            "starting node {id} again on {}",
            data_dir.display()
        ));
        if let Err(e) = self.start(id) {
            announce(&format!("cannot start node {id}: {e}"));
        }
    }

    /// The running, unpaused nodes' client addresses, by id.
    fn answering(&self) -> Vec<(NodeId, String)> {
        self.nodes
            .iter()
            .filter(|(_, node)| matches!(node.state, State::Running { paused: false, .. }))
            .filter_map(|(&id, _)| Some((id, self.members.address(id)?.to_string())))
            .collect()
    }

    /// Ask the answering nodes for their status, at once.
    fn statuses(&self) -> BTreeMap<NodeId, Result<crate::proto::kv::StatusResponse, String>> {
        let answering = self.answering();
        if answering.is_empty() {
            return BTreeMap::new();
        }
        let addrs: Vec<&str> = answering.iter().map(|(_, addr)| addr.as_str()).collect();
        let client = Client::new(&addrs).and_then(|c| c.with_tls(self.client_tls.as_ref()));
        let Ok(client) = client else {
            return BTreeMap::new();
        };
        let mut client = client.with_rpc_timeout(STATUS_TIMEOUT);
        let answers = client.status_all();
        answering
            .iter()
            .map(|(id, _)| *id)
            .zip(answers.into_iter().map(|(_, answer)| answer))
            .collect()
    }

    /// The node that says it leads, in the newest term any leader claims.
    fn leader(&self) -> Option<NodeId> {
        self.statuses()
            .into_iter()
            .filter_map(|(id, answer)| answer.ok().map(|status| (id, status)))
            .filter(|(_, status)| status.role == "leader")
            .max_by_key(|(_, status)| status.term)
            .map(|(id, _)| id)
    }

    /// One line per node: its process, and what it says of itself.
    fn print_status(&self) {
        let statuses = self.statuses();
        for (&id, node) in &self.nodes {
            let address = self
                .members
                .address(id)
                .map(|a| a.to_string())
                .unwrap_or_default();
            let line = match &node.state {
                State::Exited { how, .. } => format!("exited ({how})"),
                State::Running {
                    child,
                    paused: true,
                    ..
                } => format!("paused, pid {}", child.id()),
                State::Running { child, .. } => {
                    let raft = match statuses.get(&id) {
                        Some(Ok(s)) => {
                            let leader = match s.leader_id {
                                0 => "none known".to_string(),
                                leader => leader.to_string(),
                            };
                            format!(
                                "{}, term {}, leader {leader}, commit {}, applied {}",
                                s.role, s.term, s.commit_index, s.last_applied
                            )
                        }
                        Some(Err(why)) => format!("no answer: {why}"),
                        None => "no answer".to_string(),
                    };
                    format!("running, pid {}: {raft}", child.id())
                }
            };
            announce(&format!("node {id} at {address}: {line}"));
        }
    }
}

impl Node {
    /// SIGKILL, as in a crash. Its exit is reported by `wait_for_exit`.
    fn kill(&mut self) {
        if let State::Running {
            child,
            killed_by_command,
            ..
        } = &mut self.state
        {
            let _ = child.kill();
            *killed_by_command = true;
        }
    }

    /// Wait for the process, which has exited or been killed, and report how
    /// it exited.
    fn wait_for_exit(&mut self, id: NodeId) {
        let State::Running {
            child,
            killed_by_command,
            ..
        } = &mut self.state
        else {
            return;
        };
        let how = match child.wait() {
            Ok(status) => describe(status),
            Err(e) => format!("status unknown: {e}"),
        };
        say(id, &format!("exited: {how}"));
        self.state = State::Exited {
            how,
            by_command: *killed_by_command,
        };
    }
}

/// No path out of the cluster leaves a node behind.
impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let State::Running { child, .. } = &mut node.state {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

fn forward_output(id: NodeId, run: u64, output: io::PipeReader, events: Sender<Event>) {
    let mut output = BufReader::new(output);
    let mut line = Vec::new();
    loop {
        line.clear();
        match output.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if events.send(Event::Line(id, text)).is_err() {
                    return;
                }
            }
        }
    }
    let _ = events.send(Event::Closed { id, run });
}

/// Read commands from stdin on a thread of its own until it is closed.
fn read_commands(events: Sender<Event>) {
    // A cluster in the background of a shell (`make cluster &`) must not be
    // stopped for reading the terminal: with SIGTTIN ignored, the read fails
    // with EIO instead, and is tried again later (after `fg`).
    ignore_terminal_reads_in_background();
    let reader = move || {
        let stdin = io::stdin();
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdin.lock().read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    if events.send(Event::Command(text)).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_background_read(&e) => thread::sleep(Duration::from_secs(1)),
                Err(_) => break,
            }
        }
        let _ = events.send(Event::InputClosed);
    };
    if thread::Builder::new()
        .name("commands".into())
        .spawn(reader)
        .is_err()
    {
        announce("cannot read commands: no thread for it; the cluster runs without them");
    }
}

fn say(id: NodeId, line: &str) {
    // A closed stdout must not take the cluster down with it.
    let _ = writeln!(io::stdout(), "[node{id}] {line}");
}

/// A line of the cluster's own, such as the answer to a command; the page
/// shows it too.
pub(super) fn announce(line: &str) {
    live::note(line);
    let _ = writeln!(io::stdout(), "[cluster] {line}");
}

/// "code 2" or "signal 9".
fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("code {code}"),
        None => status.to_string(),
    }
}

/// The signals `pause` and `resume` send (`kill` uses `Child::kill`).
enum Signal {
    Stop,
    Continue,
}

#[cfg(unix)]
fn send(child: &Child, signal: Signal) -> io::Result<()> {
    let signal = match signal {
        Signal::Stop => libc::SIGSTOP,
        Signal::Continue => libc::SIGCONT,
    };
    let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
    // SAFETY: kill(2) has no memory effects; the pid is our own child, not
    // yet reaped, so it cannot name another process.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(unix))]
fn send(_child: &Child, _signal: Signal) -> io::Result<()> {
    Err(io::Error::other("pausing a process needs Unix signals"))
}

#[cfg(unix)]
fn ignore_terminal_reads_in_background() {
    // SAFETY: setting a signal to SIG_IGN installs no code.
    unsafe {
        libc::signal(libc::SIGTTIN, libc::SIG_IGN);
    }
}

#[cfg(not(unix))]
fn ignore_terminal_reads_in_background() {}

/// A read of the terminal by a background process group (see `read_commands`).
fn is_background_read(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        error.raw_os_error() == Some(libc::EIO) && io::stdin().is_terminal()
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

/// Have the kernel kill the node when the cluster process dies, however it
/// dies. `raft-kv bench --local` uses it for its nodes too.
#[cfg(target_os = "linux")]
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: between fork and exec, the closure makes only system calls
    // and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The cluster may have died before prctl took effect.
            if std::os::unix::process::parent_id() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            // The cluster ignores SIGTTIN (see `read_commands`); an ignored
            // signal would stay ignored across exec.
            libc::signal(libc::SIGTTIN, libc::SIG_DFL);
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_command: &mut Command) {}

/// Ctrl-C (SIGINT) and `kill` (SIGTERM) set a flag instead of ending the
/// cluster at once, so it can wait for its nodes. The handler is reset to
/// the default in the children when they exec, so the nodes still stop at
/// once on Ctrl-C. `raft-kv bench` uses it to stop and clean up too.
#[cfg(unix)]
pub mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    // Runs inside a signal handler: one atomic store is all that is safe here.
    extern "C" fn on_signal(_signum: libc::c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }

    pub fn catch() {
        let handler: extern "C" fn(libc::c_int) = on_signal;
        for signum in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: `on_signal` only stores to an atomic.
            unsafe {
                libc::signal(signum, handler as libc::sighandler_t);
            }
        }
    }

    pub fn happened() -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }
}

#[cfg(not(unix))]
pub mod interrupt {
    pub fn catch() {}

    pub fn happened() -> bool {
        false
    }
}
