//! The node runtime: what turns the synchronous Raft core into a running
//! server (`raft-kv node`), and a local cluster of them (`raft-kv cluster`).
//!
//! A node is four threads and the channels between them:
//!
//! ```text
//!   timer thread ──ticks──────────────────┐
//!                                          ▼
//!   gRPC bridge ──peer messages──▶  event loop (owns the RaftNode,    ──snapshot to save──▶ snapshot
//!   (tokio, tonic) ──client calls──▶  plain blocking code)  ◀──snapshot saved───── writer
//!        ▲                                 │
//!        └──── one Handoff per turn ◀──────┘ (messages, replies, answers)
//! ```
//!
//! - The **event loop** (`event_loop.rs`) is the only thread that touches
//!   Raft state: it `select!`s over its channels and calls `tick`, `step` or
//!   `client_requests` — no locks, no async, in the order things arrived.
//! - The **timer** (`timer.rs`) sends a tick every `--tick-ms`.
//! - The **snapshot writer** (`snapshot_writer.rs`) encodes and writes the
//!   node's own snapshots (§7), from a state the loop froze in O(1).
//! - The **bridge** (`bridge.rs`) owns the tokio runtime: it serves the peer
//!   and client gRPC services and makes the outbound RPCs. Nothing it does
//!   can block the event loop: every channel into the loop is bounded and
//!   written with `try_send`; the one out of it is unbounded, and the bridge
//!   drops messages a peer's full queue cannot take.
//!
//! A node stops only when killed: Raft is built for crash-stop, and
//! everything it has acknowledged is on disk already. SIGTERM first hands
//! a leader's leadership to a follower, within a bounded wait
//! (`graceful.rs`); SIGKILL and Ctrl-C stop it at once.

pub mod bridge;
mod cluster;
pub mod event_loop;
mod graceful;
pub mod identity;
mod live;
pub mod metrics;
pub mod restore;
mod snapshot_writer;
mod timer;
pub mod watch;

pub use cluster::{die_with_parent, interrupt};
pub use cluster::{run_cluster, ClusterArgs};

use std::io::LineWriter;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, unbounded, Sender};
use log::{error, info};
use tokio::sync::{mpsc, oneshot};

use crate::config::{self, NodeConfig, Tuning, EXIT_BAD_CONFIG};
use crate::kv::KvStore;
use crate::raft::{NodeId, RaftNode, Storage};
use crate::storage::FileStorage;
use bridge::Bridge;
use event_loop::{ClientCall, EventLoop, Inputs, RuntimeOutbox};
use identity::ClusterId;
use metrics::{Leadership, MeasuredKv, MeasuredStorage, Membership, Metrics, Observer};

/// Exit code of a node that stopped on an error it cannot recover from
/// (a failed disk write, a crashed thread).
pub const EXIT_FATAL: i32 = 1;
/// Peer messages waiting for the event loop; when full, more are refused
/// (Raft retries them).
const PEER_MESSAGES_LEN: usize = 4096;
/// Client calls waiting for the event loop; when full, clients are told to retry.
const CLIENT_CALLS_LEN: usize = 16 * 1024;

/// `raft-kv node`: run one Raft node, serving peers and clients on its address.
/// --id, --data-dir and the members are needed, as flags or in --config.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// This node's id: a positive integer listed among the members.
    #[arg(long, value_name = "N")]
    pub id: Option<NodeId>,
    /// Every member of the cluster, this node included, as
    /// ID=HOST:PORT,ID=HOST:PORT,… e.g. 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003
    #[arg(long, value_name = "LIST")]
    pub peers: Option<String>,
    /// A TOML file with any of these flags as keys (id = 1, data-dir = "…",
    /// the members as a [members] table of ID = "HOST:PORT"); a flag given
    /// here wins over the file (docs/api.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where this node keeps its term, vote, log and snapshot (created if missing).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where to serve the peer service (default: this node's address in the
    /// member list), e.g. 0.0.0.0:7001 for every interface.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen_peers: Option<String>,
    /// Serve clients on a port of their own (default: on the peer port), so
    /// that a firewall can keep the peer port private (docs/deploy.md).
    #[arg(long, value_name = "HOST:PORT")]
    pub listen_clients: Option<String>,
    /// Serve Prometheus metrics over HTTP at http://HOST:PORT/metrics
    /// (default: no metrics endpoint).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Names a new cluster, with its member list, at its first start: give
    /// every member the same random token (docs/deploy.md). The data dir
    /// remembers the cluster; a later start needs no token.
    #[arg(long, value_name = "TOKEN")]
    pub cluster_token: Option<String>,
    /// Start empty and wait to be added to the running cluster of this id
    /// (`raft-kv member list` prints it) with `raft-kv member add`; give
    /// --listen-peers, not --peers. Streams of any other cluster are
    /// refused. Restart the node with the same flag.
    #[arg(long, value_name = "CLUSTER_ID")]
    pub join: Option<String>,
    /// Obey the FaultInjection admin RPC (proto/watch.proto), which drops
    /// peer messages on request: for `raft-kv cluster`'s partition button
    /// and tests, never for a cluster that holds data anyone needs.
    #[arg(long)]
    pub allow_fault_injection: bool,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// Run one node until it is killed; returns the process exit code.
/// `given`: the flags the command line gave, which win over `--config`.
pub fn run_node(args: NodeArgs, given: &config::file::Given) -> i32 {
    let config = match NodeConfig::load(args, given) {
        Ok(config) => config,
        Err(e) => return bad_config(e),
    };
    let listeners = match Listeners::bind(&config) {
        Ok(listeners) => listeners,
        Err(e) => return bad_config(e),
    };
    init_logging(config.log_level.filter());
    let storage = match FileStorage::open(&config.data_dir) {
        Ok(storage) => storage,
        Err(e) => {
            eprintln!("raft-kv: error: node {}: {e}", config.id);
            return EXIT_BAD_CONFIG;
        }
    };
    let cluster_id = match join_cluster(&config, &storage) {
        Ok(cluster_id) => cluster_id,
        Err(e) => {
            eprintln!(
                "raft-kv: error: node {}: data dir {}: {e}",
                config.id,
                config.data_dir.display()
            );
            return EXIT_BAD_CONFIG;
        }
    };
    exit_on_panic(config.id);
    let node = match Node::start(&config, Box::new(storage), listeners, cluster_id) {
        Ok(node) => node,
        Err(e) => {
            error!("node {}: cannot start: {e}", config.id);
            return EXIT_FATAL;
        }
    };
    // At most two election timeouts: a transfer is abandoned after one.
    let wait = 2 * config.timing.tick * config.timing.election_timeout_ticks.1 as u32;
    if let Err(e) = graceful::stop_gracefully_on_sigterm(config.id, node.client_calls.clone(), wait)
    {
        error!("node {}: cannot start: {e}", config.id);
        return EXIT_FATAL;
    }
    let serving = match &config.listen_clients {
        None => format!("peers and clients on {}", config.listen_peers),
        Some(clients) => format!("peers on {}, clients on {clients}", config.listen_peers),
    };
    info!(
        "node {}: pid {}, cluster {cluster_id}, serving {serving}{}, data in {}",
        config.id,
        std::process::id(),
        if config.tls.is_some() { " (TLS)" } else { "" },
        config.data_dir.display()
    );
    match node.wait() {
        Ok(()) => 0,
        Err(e) => {
            error!("{e}");
            EXIT_FATAL
        }
    }
}

/// The cluster this node belongs to: what its data dir says, or, at its
/// first start, a new record of the cluster its flags describe.
fn join_cluster(config: &NodeConfig, storage: &FileStorage) -> Result<ClusterId, String> {
    let stored = storage.cluster_file().map_err(|e| e.to_string())?;
    let (id, new_record) = match config.join {
        Some(cluster) => identity::establish_joined(stored.as_deref(), cluster)?,
        None => identity::establish(
            stored.as_deref(),
            &config.members,
            config.cluster_token.as_deref(),
        )?,
    };
    if let Some(record) = new_record {
        storage
            .save_cluster_file(record.encode().as_bytes())
            .map_err(|e| e.to_string())?;
    }
    Ok(id)
}

/// A node's listening sockets, bound before anything else starts, so that
/// a busy port is reported first and changes nothing.
pub struct Listeners {
    pub peers: TcpListener,
    /// clients' own port; `None` serves them on the peers' port
    pub clients: Option<TcpListener>,
    /// `/metrics`, with `--metrics-addr`
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    pub fn bind(config: &NodeConfig) -> Result<Listeners, config::ConfigError> {
        let peers = config::bind_listener(&config.listen_peers)?;
        let clients = config
            .listen_clients
            .as_ref()
            .map(config::bind_listener)
            .transpose()?;
        let metrics = config
            .metrics_addr
            .as_ref()
            .map(config::bind_listener)
            .transpose()?;
        Ok(Listeners {
            peers,
            clients,
            metrics,
        })
    }
}

fn bad_config(error: config::ConfigError) -> i32 {
    eprintln!("raft-kv: error: {error}");
    EXIT_BAD_CONFIG
}

/// Log lines carry a sub-millisecond timestamp, so election timing can be read
/// off them; other crates' lines are left out, so every line is ours and
/// names its node.
fn init_logging(level: log::LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .add_filter_allow_str("raft_kv")
        .build();
    let stderr = LineWriter::new(std::io::stderr());
    // Fails only if a logger is set already, which then keeps logging.
    let _ = simplelog::WriteLogger::init(level, config, stderr);
}

/// The core panics when stable storage fails (it must not answer from state
/// it could not save); any panic is a bug or such a failure. Stop the whole
/// process with the message on one line rather than run on without a thread.
fn exit_on_panic(id: NodeId) {
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or("(no message)");
        let location = info
            .location()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        eprintln!("node {id}: fatal: {message}{location}");
        std::process::exit(EXIT_FATAL);
    }));
}

/// A running node: its four threads and the means to stop them.
pub struct Node {
    id: NodeId,
    event_loop: JoinHandle<()>,
    bridge: JoinHandle<Result<(), String>>,
    timer: JoinHandle<()>,
    snapshot_writer: JoinHandle<()>,
    stop_event_loop: Sender<()>,
    /// the event loop's client channel, for a leader stopping on SIGTERM
    client_calls: Sender<ClientCall>,
    /// taken by `shutdown`; dropping it would stop the bridge too
    stop_bridge: Option<oneshot::Sender<()>>,
}

impl Node {
    /// Recover the node from `storage` and start its threads, serving on
    /// `listeners` as a member of cluster `cluster_id`.
    pub fn start(
        config: &NodeConfig,
        storage: Box<dyn Storage>,
        listeners: Listeners,
        cluster_id: ClusterId,
    ) -> std::io::Result<Node> {
        let id = config.id;
        let (tick_tx, tick_rx) = bounded(1);
        let (peer_tx, peer_rx) = bounded(PEER_MESSAGES_LEN);
        let (client_tx, client_rx) = bounded(CLIENT_CALLS_LEN);
        let (stop_event_loop, shutdown_rx) = bounded(1);
        let (stop_bridge, bridge_shutdown) = oneshot::channel();

        let (metrics, registry) = Metrics::new();
        let (leadership_tx, leadership) = tokio::sync::watch::channel(Leadership::default());
        let (handoff_tx, handoff_rx) = mpsc::unbounded_channel();
        let (to_write_tx, to_write_rx) = unbounded();
        let (saved_tx, saved_rx) = bounded(1);
        let snapshot_writer = snapshot_writer::spawn(
            id,
            storage.snapshot_writer(),
            to_write_rx,
            saved_tx,
            metrics.clone(),
        )?;
        let outbox = RuntimeOutbox::new(id, handoff_tx, to_write_tx);
        let (publisher, view) = watch::Publisher::new();
        let watching = watch::Watching {
            view,
            traffic: Arc::new(watch::Traffic::new(
                config.members.ids().into_iter().filter(|&p| p != id),
            )),
            faults: Arc::new(watch::Faults::new(config.allow_fault_injection)),
            tick_ms: config.timing.tick.as_millis() as u64,
        };
        let raft_config = config.raft_config();
        let max_peer_message_bytes = bridge::max_peer_message_bytes(&raft_config);
        // Measured where their work passes: fsyncs, applies.
        let storage = Box::new(MeasuredStorage::new(storage, metrics.clone()));
        let state_machine = MeasuredKv::new(KvStore::new(), metrics.clone());
        let node = RaftNode::new(raft_config, storage, state_machine, Box::new(outbox));
        // From the data dir when it holds a configuration, not from --peers.
        let (membership_tx, membership) = tokio::sync::watch::channel(Membership::of(&node));

        let bridge = Bridge {
            id,
            cluster_id,
            peer_address: config.address().clone(),
            membership,
            client_address: config.client_address.clone(),
            max_request_bytes: config.max_request_bytes,
            max_peer_message_bytes,
            tls: config.tls.clone(),
            listeners,
            peer_messages: peer_tx,
            client_calls: client_tx.clone(),
            handoffs: handoff_rx,
            leadership,
            metrics: metrics.clone(),
            registry,
            watching,
            shutdown: bridge_shutdown,
        }
        .spawn()?;
        let inputs = Inputs {
            ticks: tick_rx,
            peer_messages: peer_rx,
            client_calls: client_rx,
            snapshots_saved: saved_rx,
            shutdown: shutdown_rx,
        };
        let observer = Observer::new(metrics, leadership_tx, membership_tx).watched(publisher);
        let event_loop = spawn_event_loop(config, node, inputs, observer)?;
        let timer = timer::spawn(config.timing.tick, tick_tx)?;
        Ok(Node {
            id,
            event_loop,
            bridge,
            timer,
            snapshot_writer,
            stop_event_loop,
            client_calls: client_tx,
            stop_bridge: Some(stop_bridge),
        })
    }

    /// Block until the node stops: after [`Node::shutdown`], or by itself,
    /// which only an error makes it do.
    pub fn wait(self) -> Result<(), String> {
        let id = self.id;
        let served = self
            .bridge
            .join()
            .unwrap_or_else(|_| Err(format!("node {id}: the gRPC bridge thread panicked")));
        Self::stop_the_rest(id, self.stop_event_loop, self.event_loop, self.timer)?;
        // It stops with the event loop, once the snapshot it is writing is
        // written.
        self.snapshot_writer
            .join()
            .map_err(|_| format!("node {id}: the snapshot writer thread panicked"))?;
        served
    }

    /// Stop serving, stop the event loop and the timer, and wait for them.
    pub fn shutdown(mut self) -> Result<(), String> {
        if let Some(stop_bridge) = self.stop_bridge.take() {
            let _ = stop_bridge.send(());
        }
        self.wait()
    }

    fn stop_the_rest(
        id: NodeId,
        stop_event_loop: Sender<()>,
        event_loop: JoinHandle<()>,
        timer: JoinHandle<()>,
    ) -> Result<(), String> {
        let _ = stop_event_loop.send(());
        event_loop
            .join()
            .map_err(|_| format!("node {id}: the event loop panicked"))?;
        // The timer notices the event loop is gone at its next tick.
        timer
            .join()
            .map_err(|_| format!("node {id}: the timer thread panicked"))
    }
}

/// Start the event loop thread with `node`.
fn spawn_event_loop(
    config: &NodeConfig,
    node: RaftNode<MeasuredKv>,
    inputs: Inputs,
    observer: Observer,
) -> std::io::Result<JoinHandle<()>> {
    let (poll, fast_path) = (config.poll, config.fast_path);
    let heartbeat = config.timing.tick * config.timing.heartbeat_ticks as u32;
    thread::Builder::new()
        .name("event-loop".into())
        .spawn(move || EventLoop::new(node, inputs, observer, poll, fast_path, heartbeat).run())
}

#[cfg(test)]
mod tests;
