//! The page `raft-kv cluster` serves (`--web-addr`, http://127.0.0.1:7000
//! by default): the cluster's own nodes, live, with buttons that break
//! them. It runs on a thread of its own with a tokio runtime; the
//! supervisor's loop only hands it the processes' states and takes its
//! commands as if typed.
//!
//! - Each node's `raftwatch.Watch` stream (proto/watch.proto) fills
//!   [`Shared::states`] and the recent messages; a node that is down or
//!   paused just stops sending.
//! - `GET /` is the viewer (src/viewer.html); `GET /api/state?since=SEQ`
//!   what it draws, as JSON; `POST /api/node/ID/VERB` kills, restarts,
//!   pauses, resumes or partitions a node; `POST /api/heal`; `POST
//!   /api/write` with `{"key":…,"value":…}` writes through the leader, and
//!   each node is then read (stale) until the value shows on all.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tonic::transport::ClientTlsConfig;

use crate::cli::Client;
use crate::proto::watch::fault_injection_client::FaultInjectionClient;
use crate::proto::watch::watch_client::WatchClient;
use crate::proto::watch::{NodeState, PartitionRequest, WatchRequest};
use crate::raft::NodeId;
use crate::tls::Tls;

/// Messages the page can still fetch; older ones are forgotten.
const MESSAGES_KEPT: usize = 2000;
/// Lines of the cluster's answers the page shows.
const NOTES_KEPT: usize = 12;
const WATCH_INTERVAL_MS: u32 = 100;
const RECONNECT: Duration = Duration::from_millis(300);
const PROBE_EVERY: Duration = Duration::from_millis(400);
const RPC_TIMEOUT: Duration = Duration::from_millis(400);

/// A node process as the supervisor sees it.
#[derive(Clone, Debug, Default)]
pub struct Process {
    /// "running", "paused" or "exited"
    pub state: &'static str,
    pub pid: Option<u32>,
    /// how it exited
    pub how: String,
}

/// What the page's thread and the supervisor share.
pub struct Shared {
    members: Vec<(NodeId, String)>,
    slow: bool,
    started: Instant,
    tls: Option<Tls>,
    /// types a command, as a line on stdin would
    command: Box<dyn Fn(String) + Send + Sync>,
    processes: Mutex<BTreeMap<NodeId, Process>>,
    /// each node's last watch state, and when it came
    states: Mutex<BTreeMap<NodeId, (NodeState, Instant)>>,
    /// (sequence number, message summary), oldest first
    messages: Mutex<(u64, VecDeque<(u64, Value)>)>,
    /// the last write from the page: key, value, and what each node reads
    probe: Mutex<Option<Probe>>,
}

/// The page's last write: key, value, and what each node reads of the key.
type Probe = (String, String, BTreeMap<NodeId, String>);

static NOTES: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// A `[cluster]` line, shown on the page too.
pub fn note(line: &str) {
    let mut notes = NOTES.lock().unwrap_or_else(|e| e.into_inner());
    if notes.len() == NOTES_KEPT {
        notes.pop_front();
    }
    notes.push_back(line.to_string());
}

impl Shared {
    pub fn new(
        members: Vec<(NodeId, String)>,
        slow: bool,
        tls: Option<Tls>,
        command: Box<dyn Fn(String) + Send + Sync>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            members,
            slow,
            started: Instant::now(),
            tls,
            command,
            processes: Mutex::default(),
            states: Mutex::default(),
            messages: Mutex::default(),
            probe: Mutex::default(),
        })
    }

    /// The supervisor's view of its processes, after each of its events.
    pub fn set_processes(&self, processes: BTreeMap<NodeId, Process>) {
        *lock(&self.processes) = processes;
    }

    fn tls_config(&self) -> Option<ClientTlsConfig> {
        self.tls.as_ref().map(Tls::client_config)
    }

    fn millis(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serve the page on `listener` from a thread of its own, for as long as
/// the process runs.
pub fn spawn(shared: Arc<Shared>, listener: std::net::TcpListener) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("web".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => return note(&format!("no page: cannot start its runtime: {e}")),
            };
            runtime.block_on(serve(shared, listener));
        })?;
    Ok(())
}

async fn serve(shared: Arc<Shared>, listener: std::net::TcpListener) {
    for (id, address) in shared.members.clone() {
        tokio::spawn(watch_node(shared.clone(), id, address));
    }
    tokio::spawn(probe(shared.clone()));
    let app = Router::new()
        .route("/", get(page))
        .route("/api/state", get(state))
        .route("/api/node/{id}/{verb}", post(act))
        .route("/api/heal", post(heal))
        .route("/api/write", post(write))
        .with_state(shared);
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(listener) => listener,
        Err(e) => return note(&format!("no page: cannot use its socket: {e}")),
    };
    if let Err(e) = axum::serve(listener, app).await {
        note(&format!("the page stopped: {e}"));
    }
}

async fn page() -> impl axum::response::IntoResponse {
    (
        [(CONTENT_TYPE, "text/html; charset=utf-8")],
        crate::viewer::live_page(),
    )
}

/// Follow node `id`'s watch stream, reconnecting whenever it ends.
async fn watch_node(shared: Arc<Shared>, id: NodeId, address: String) {
    loop {
        if let Err(why) = follow(&shared, id, &address).await {
            log::debug!("watch of node {id}: {why}");
        }
        lock(&shared.states).remove(&id);
        tokio::time::sleep(RECONNECT).await;
    }
}

async fn follow(shared: &Shared, id: NodeId, address: &str) -> Result<(), String> {
    let channel = crate::cli::client::endpoint(address, shared.tls_config().as_ref())
        .map_err(|e| e.to_string())?
        .connect_timeout(RPC_TIMEOUT)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let request = WatchRequest {
        interval_ms: WATCH_INTERVAL_MS,
    };
    let mut stream = WatchClient::new(channel)
        .watch(request)
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    while let Some(state) = stream.message().await.map_err(|e| e.to_string())? {
        record(shared, id, state);
    }
    Ok(())
}

/// Keep `state` as node `id`'s newest, and its sent messages for the arrows.
fn record(shared: &Shared, id: NodeId, state: NodeState) {
    let t = shared.millis();
    {
        let mut messages = lock(&shared.messages);
        let (next, list) = &mut *messages;
        for sent in &state.sent {
            *next += 1;
            let summary = json!({
                "seq": *next, "t": t, "from": id, "to": sent.peer, "kind": sent.kind,
                "count": sent.count, "entries": sent.entries, "dropped": sent.dropped,
            });
            list.push_back((*next, summary));
            if list.len() > MESSAGES_KEPT {
                list.pop_front();
            }
        }
    }
    lock(&shared.states).insert(id, (state, Instant::now()));
}

fn state_json(state: &NodeState, age: Duration) -> Value {
    let followers: Vec<Value> = state
        .followers
        .iter()
        .map(|f| json!({"peer": f.peer, "next": f.next_index, "match": f.match_index}))
        .collect();
    let received: u64 = state.received.iter().map(|r| r.count).sum();
    json!({
        "role": state.role, "term": state.current_term, "voted_for": state.voted_for,
        "leader": state.leader_id, "commit": state.commit_index, "applied": state.last_applied,
        "last_index": state.last_log_index, "snapshot_index": state.snapshot_index,
        "tail_start": state.tail_start, "tail_terms": state.tail_terms,
        "followers": followers, "received": received,
        "timer": [state.election_elapsed_ticks, state.election_timeout_ticks],
        "tick_ms": state.tick_ms, "partitioned_from": state.partitioned_from,
        "age_ms": age.as_millis() as u64,
    })
}

/// `GET /api/state?since=SEQ`: every node, and the messages after SEQ.
async fn state(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> String {
    let since: u64 = query
        .as_deref()
        .and_then(|q| q.strip_prefix("since="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let processes = lock(&shared.processes).clone();
    let states = lock(&shared.states).clone();
    let probe = lock(&shared.probe).clone();
    let nodes: Vec<Value> = shared
        .members
        .iter()
        .map(|(id, address)| {
            let process = processes.get(id).cloned().unwrap_or_default();
            let state = states.get(id).map(|(s, at)| state_json(s, at.elapsed()));
            let read = probe.as_ref().and_then(|(_, _, reads)| reads.get(id));
            json!({
                "id": id, "address": address, "process": process.state,
                "pid": process.pid, "how": process.how, "state": state, "read": read,
            })
        })
        .collect();
    let (next, messages) = {
        let messages = lock(&shared.messages);
        let newer: Vec<Value> = messages
            .1
            .iter()
            .filter(|(seq, _)| *seq > since)
            .map(|(_, m)| m.clone())
            .collect();
        (messages.0, newer)
    };
    let notes: Vec<String> = lock(&NOTES).iter().cloned().collect();
    let write = probe.map(|(key, value, _)| json!({"key": key, "value": value}));
    json!({
        "t": shared.millis(), "slow": shared.slow, "nodes": nodes, "messages": messages,
        "next": next, "notes": notes, "write": write,
    })
    .to_string()
}

/// `POST /api/node/ID/VERB`.
async fn act(
    State(shared): State<Arc<Shared>>,
    Path((id, verb)): Path<(NodeId, String)>,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    if !shared.members.iter().any(|(member, _)| *member == id) {
        return (StatusCode::NOT_FOUND, format!("no node {id}"));
    }
    match verb.as_str() {
        "kill" | "restart" | "pause" | "resume" => {
            (shared.command)(format!("{verb} {id}"));
            (StatusCode::OK, format!("{verb} {id}"))
        }
        "partition" => (StatusCode::OK, partition(&shared, Some(id)).await),
        _ => (
            StatusCode::NOT_FOUND,
            format!("unknown action '{verb}': kill, restart, pause, resume or partition"),
        ),
    }
}

async fn heal(State(shared): State<Arc<Shared>>) -> String {
    partition(&shared, None).await
}

/// Cut `cut` off from every other node (each side drops the other's
/// messages), or with `None` heal every partition. Returns what happened.
async fn partition(shared: &Shared, cut: Option<NodeId>) -> String {
    let ids: Vec<NodeId> = shared.members.iter().map(|(id, _)| *id).collect();
    let mut failed = Vec::new();
    for (id, address) in &shared.members {
        let drop_peers = match cut {
            None => Vec::new(),
            Some(cut) if cut == *id => ids.iter().copied().filter(|p| p != id).collect(),
            Some(cut) => vec![cut],
        };
        if let Err(why) = set_partition(shared, address, drop_peers).await {
            failed.push(format!("node {id}: {why}"));
        }
    }
    let done = match cut {
        Some(cut) => format!("partitioned node {cut} from the others"),
        None => "healed every partition".to_string(),
    };
    let line = match failed.is_empty() {
        true => done,
        false => format!("{done}, except at {}", failed.join("; ")),
    };
    crate::server::cluster::announce(&line);
    line
}

async fn set_partition(
    shared: &Shared,
    address: &str,
    drop_peers: Vec<NodeId>,
) -> Result<(), String> {
    let channel = crate::cli::client::endpoint(address, shared.tls_config().as_ref())
        .map_err(|e| e.to_string())?
        .connect_timeout(RPC_TIMEOUT)
        .timeout(RPC_TIMEOUT)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    FaultInjectionClient::new(channel)
        .set_partition(PartitionRequest { drop_peers })
        .await
        .map_err(|status| status.message().to_string())?;
    Ok(())
}

/// `POST /api/write` with `{"key": …, "value": …}`: a write through the
/// leader, as `raft-kv set` does it.
async fn write(
    State(shared): State<Arc<Shared>>,
    body: String,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let parsed: Result<(String, String), String> = serde_json::from_str::<Value>(&body)
        .map_err(|e| e.to_string())
        .and_then(|v| match (v["key"].as_str(), v["value"].as_str()) {
            (Some(k), Some(v)) => Ok((k.to_string(), v.to_string())),
            _ => Err("give {\"key\": \"…\", \"value\": \"…\"}".to_string()),
        });
    let (key, value) = match parsed {
        Ok(kv) => kv,
        Err(why) => return (StatusCode::BAD_REQUEST, why),
    };
    let addresses: Vec<String> = shared.members.iter().map(|(_, a)| a.clone()).collect();
    let tls = shared.tls.clone();
    let (k, v) = (key.clone(), value.clone());
    let written = tokio::task::spawn_blocking(move || {
        let mut client = Client::new(&addresses)
            .and_then(|c| c.with_tls(tls.as_ref()))
            .map_err(|e| e.to_string())?;
        client.set(&k, &v).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match written {
        Ok(()) => {
            *lock(&shared.probe) = Some((key.clone(), value.clone(), BTreeMap::new()));
            crate::server::cluster::announce(&format!("the page wrote {key} = {value}"));
            (StatusCode::OK, format!("wrote {key} = {value}"))
        }
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot write: {why}"),
        ),
    }
}

/// Read the page's last write from each node (a stale read: what that
/// node's own state machine holds), again and again.
async fn probe(shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some((key, _, _)) = lock(&shared.probe).clone() else {
            continue;
        };
        let (members, tls) = (shared.members.clone(), shared.tls.clone());
        let running: Vec<NodeId> = lock(&shared.processes)
            .iter()
            .filter(|(_, p)| p.state == "running")
            .map(|(id, _)| *id)
            .collect();
        let reads =
            tokio::task::spawn_blocking(move || read_everywhere(&members, &running, tls, &key))
                .await
                .unwrap_or_default();
        if let Some((_, _, known)) = lock(&shared.probe).as_mut() {
            *known = reads;
        }
    }
}

fn read_everywhere(
    members: &[(NodeId, String)],
    running: &[NodeId],
    tls: Option<Tls>,
    key: &str,
) -> BTreeMap<NodeId, String> {
    let mut reads = BTreeMap::new();
    for (id, address) in members.iter().filter(|(id, _)| running.contains(id)) {
        let client = Client::new(&[address])
            .and_then(|c| c.with_tls(tls.as_ref()))
            .map(|c| c.with_timeout(RPC_TIMEOUT).with_rpc_timeout(RPC_TIMEOUT));
        let read = client.and_then(|mut c| c.get(key, true));
        let shown = match read {
            Ok(Some(value)) => value,
            Ok(None) => "(none)".to_string(),
            Err(_) => "(no answer)".to_string(),
        };
        reads.insert(*id, shown);
    }
    reads
}
