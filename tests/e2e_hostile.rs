//! Hostile peers (issue 13, "let no one in who does not belong"): an
//! outsider speaks the peer protocol (`raftpeer.Raft/Send`) to the nodes of
//! a running 3-node cluster of real `raft-kv node` processes, and must get
//! nowhere. Each scenario sends every attack to every node, each on a
//! stream of its own:
//!
//! - an AppendEntries claiming to be the leader, with the leader's term and
//!   the next index, carrying a forged Set and a commit index that covers it;
//! - an InstallSnapshot that would replace the node's state with a forged one;
//! - a heartbeat at the next term naming a different leader to each node;
//! - a RequestVote at a much higher term.
//!
//! The outsiders: without TLS, one that sends no cluster id or a wrong one,
//! and a real node of another cluster whose member list names a node of
//! this one; with TLS, one with no certificate, one with the client
//! certificate, one with node 3's certificate claiming to be another node,
//! and one with a certificate of another CA. Then malformed messages on a
//! stream that looks legitimate (the right cluster id, a member's id).
//!
//! After each scenario: every write the CLI had acknowledged, before and
//! after, reads back linearizably and from every node's own state machine;
//! no forged key exists anywhere; the term and the leader are the ones from
//! before; no node exited; and each node attacked logged the refusal.
//!
//! A control shows the attacks are real: without TLS, an outsider that
//! sends the right cluster id (it is no secret) is admitted, and its forged
//! AppendEntries is applied. And a node restarted with another member list
//! or token, or a damaged `cluster` file, refuses to start.
//!
//! Elections here are slower than in the other end-to-end tests
//! (`SLOW_ELECTIONS`), so that a loaded machine does not hold one on its own
//! while a scenario compares terms.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, free_ports, runtime, stderr, stdout, write_certs, Cluster, Setup};
use raft_kv::kv::{encode_command, Command as KvCommand, KvStore};
use raft_kv::proto::kv::StatusResponse;
use raft_kv::proto::peer::envelope::Message as PeerMessage;
use raft_kv::proto::peer::raft_client::RaftClient;
use raft_kv::proto::peer::{
    AppendEntriesRequest, EntryKind, Envelope, InstallSnapshotRequest, LogEntry, RequestVoteRequest,
};
use raft_kv::proto::{CLUSTER_ID_METADATA, FROM_METADATA};
use raft_kv::tls::{Holder, TlsArgs};
use tokio::runtime::Runtime;
use tonic::codegen::tokio_stream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

const TOKEN: &str = "e2e-hostile-7c1d";
const SLOW_ELECTIONS: &str = "600-1200";
const HEARTBEAT: &str = "100";
/// How long an attack gets to land before the cluster's state is checked.
const SETTLE: Duration = Duration::from_millis(300);
/// The keys the attacks try to write; none may ever exist.
const FORGED_KEYS: [&str; 3] = ["forged-append", "forged-snapshot", "forged-gap"];
const FORGED_VALUE: &str = "written by an outsider";

fn setup(tls: bool) -> Setup<'static> {
    Setup {
        extra_flags: &["--cluster-token", TOKEN],
        election_timeout_ms: SLOW_ELECTIONS,
        heartbeat_ms: HEARTBEAT,
        tls,
    }
}

// ---------------------------------------------------------------------------
// What the outsider sends.

/// The cluster as the outsider sees it before an attack: what a forgery
/// needs to look current.
#[derive(Clone, Copy, Debug)]
struct View {
    leader: u64,
    term: u64,
    last_log_index: u64,
    commit_index: u64,
}

/// The member after `id` (1 → 2 → 3 → 1).
fn next_member(id: u64) -> u64 {
    id % 3 + 1
}

fn forged_set(key: &str) -> Vec<u8> {
    encode_command(&KvCommand::Set {
        key: key.into(),
        value: FORGED_VALUE.into(),
        client_id: 0,
        sequence: 0,
        timestamp_ms: 0,
    })
}

/// A state machine holding a forged key: what the forged InstallSnapshot carries.
fn forged_snapshot() -> Vec<u8> {
    let mut store = KvStore::new();
    store.apply_command(
        1,
        &KvCommand::Set {
            key: "forged-snapshot".into(),
            value: FORGED_VALUE.into(),
            client_id: 0,
            sequence: 0,
            timestamp_ms: 0,
        },
    );
    store.snapshot()
}

fn envelope(from: u64, message: PeerMessage) -> Envelope {
    Envelope {
        from,
        message: Some(message),
    }
}

/// One attack on one node: what it is, who it claims to come from, and the
/// message.
struct Attack {
    what: String,
    from: u64,
    envelope: Envelope,
}

/// The four attacks on `target`. The AppendEntries and the InstallSnapshot
/// claim to come from the leader (from another member when `target` is the
/// leader); the heartbeat and the RequestVote from the member after
/// `target`, so that each node hears of a different leader. `claim`, when
/// given, replaces every claimed sender.
fn attacks(view: View, target: u64, claim: Option<u64>) -> Vec<Attack> {
    let leader_or_other = if target == view.leader {
        next_member(target)
    } else {
        view.leader
    };
    let as_leader = claim.unwrap_or(leader_or_other);
    let as_other = claim.unwrap_or(next_member(target));
    let next = view.last_log_index + 1;
    vec![
        Attack {
            what: format!(
                "AppendEntries from 'leader' {as_leader} with a forged Set at index {next}"
            ),
            from: as_leader,
            envelope: envelope(
                as_leader,
                PeerMessage::AppendEntries(AppendEntriesRequest {
                    term: view.term,
                    leader_id: as_leader,
                    prev_log_index: view.last_log_index,
                    // Every entry since the election is of its term.
                    prev_log_term: view.term,
                    entries: vec![LogEntry {
                        index: next,
                        term: view.term,
                        command: forged_set("forged-append"),
                        kind: EntryKind::Command as i32,
                    }],
                    leader_commit: next,
                    read_round: 0,
                }),
            ),
        },
        Attack {
            what: format!("InstallSnapshot from 'leader' {as_leader} of a forged state"),
            from: as_leader,
            envelope: envelope(
                as_leader,
                PeerMessage::InstallSnapshot(InstallSnapshotRequest {
                    term: view.term,
                    leader_id: as_leader,
                    last_included_index: view.last_log_index + 100,
                    last_included_term: view.term,
                    offset: 0,
                    data: forged_snapshot(),
                    done: true,
                    configuration: Vec::new(),
                }),
            ),
        },
        Attack {
            what: format!(
                "heartbeat at term {} naming node {as_other} leader",
                view.term + 1
            ),
            from: as_other,
            envelope: envelope(
                as_other,
                PeerMessage::AppendEntries(AppendEntriesRequest {
                    term: view.term + 1,
                    leader_id: as_other,
                    prev_log_index: view.last_log_index,
                    prev_log_term: view.term,
                    entries: vec![],
                    leader_commit: view.commit_index,
                    read_round: 0,
                }),
            ),
        },
        Attack {
            what: format!("RequestVote from {as_other} at term {}", view.term + 1000),
            from: as_other,
            envelope: envelope(
                as_other,
                PeerMessage::RequestVote(RequestVoteRequest {
                    term: view.term + 1000,
                    candidate_id: as_other,
                    last_log_index: view.last_log_index + 1000,
                    last_log_term: view.term + 1000,
                    leadership_transfer: false,
                }),
            ),
        },
    ]
}

// ---------------------------------------------------------------------------
// The outsider's connection.

/// A gRPC connection to `addr`, plaintext or with `tls`.
fn connect(rt: &Runtime, addr: &str, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("{e:?}"))?;
    }
    rt.block_on(endpoint.connect())
        .map_err(|e| format!("connect failed: {e:?}"))
}

/// Open a peer stream on `channel` with `metadata` and send `envelopes` on
/// it; the stream's outcome.
fn send(
    rt: &Runtime,
    channel: Channel,
    metadata: &[(&'static str, String)],
    envelopes: Vec<Envelope>,
) -> Result<(), Status> {
    let mut request = tonic::Request::new(tokio_stream::iter(envelopes));
    for (key, value) in metadata {
        let value: MetadataValue<_> = value.parse().expect("ASCII metadata");
        request.metadata_mut().insert(*key, value);
    }
    rt.block_on(RaftClient::new(channel).send(request))
        .map(|_| ())
}

/// A cluster id that is not `ours`.
fn another_cluster_id(ours: &str) -> String {
    let other = u64::from_str_radix(ours, 16).unwrap() ^ 0x5a5a_0000_0000_0001;
    format!("{other:016x}")
}

// ---------------------------------------------------------------------------
// What must hold after each scenario.

fn statuses(cluster: &Cluster) -> Vec<StatusResponse> {
    cluster
        .ids()
        .map(|id| {
            eventually(&format!("node {id} to answer status"), || {
                cluster.status(id)
            })
        })
        .collect()
}

/// Wait for a leader every node knows, then for every node to have applied
/// what it committed; the cluster as an outsider would see it.
fn view(cluster: &mut Cluster) -> View {
    let leader = cluster.wait_for_leader();
    let status = eventually("every node to apply the leader's commit index", || {
        let all = statuses(cluster);
        let lead = all.iter().find(|s| s.id == leader)?.clone();
        all.iter()
            .all(|s| s.last_applied == lead.commit_index && s.last_log_index == lead.last_log_index)
            .then_some(lead)
    });
    View {
        leader,
        term: status.term,
        last_log_index: status.last_log_index,
        commit_index: status.commit_index,
    }
}

/// The writes the CLI acknowledged, to be read back after every scenario.
#[derive(Default)]
struct Writes(Vec<(String, String)>);

impl Writes {
    /// `raft-kv set KEY VALUE`, which must succeed.
    fn set(&mut self, cluster: &Cluster, key: &str, value: &str) {
        let output = cluster.cli(&["set", key, value]);
        assert!(
            output.status.success(),
            "raft-kv set {key} {value}: {}",
            stderr(&output)
        );
        self.0.push((key.into(), value.into()));
    }
}

/// `raft-kv get KEY` against `cluster`'s nodes at `at` (`--cluster`),
/// linearizable through the leader, or with `stale` from the first node
/// that answers: Some(value), or None when the key does not exist.
fn get(cluster: &Cluster, at: &str, key: &str, stale: bool) -> Option<String> {
    let mut args = vec!["get", key];
    if stale {
        args.push("--stale");
    }
    let output = cluster.cli_to(at, &args);
    match output.status.code() {
        Some(0) => Some(stdout(&output).trim_end_matches('\n').to_string()),
        Some(1) => None,
        _ => panic!("raft-kv get {key} at {at}: {}", stderr(&output)),
    }
}

/// The lines node `id` logged after its log was `since` bytes long.
fn log_since(cluster: &Cluster, id: u64, since: usize) -> String {
    cluster.log(id).get(since..).unwrap_or_default().to_string()
}

fn log_sizes(cluster: &Cluster) -> Vec<usize> {
    cluster.ids().map(|id| cluster.log(id).len()).collect()
}

/// After scenario `name`: no node exited; the term and the leader are
/// `before`'s on every node; a new write succeeds; every acknowledged write
/// reads back through the leader and from each node's own state machine;
/// no forged key exists anywhere; unless `logged` is empty, each node
/// logged, since its log was `logs[id - 1]` bytes long, a line containing
/// every one of `logged`.
fn check_unharmed(
    cluster: &mut Cluster,
    name: &str,
    before: View,
    writes: &mut Writes,
    logs: &[usize],
    logged: &[String],
) {
    cluster.check_running();
    for status in statuses(cluster) {
        assert_eq!(
            (status.term, status.leader_id),
            (before.term, before.leader),
            "{name}: node {} moved from term {} under leader {} (role {})",
            status.id,
            before.term,
            before.leader,
            status.role
        );
    }
    writes.set(cluster, &format!("after-{name}"), &format!("{name}, after"));
    let all = cluster.addrs.join(",");
    for (key, value) in &writes.0 {
        assert_eq!(
            get(cluster, &all, key, false).as_deref(),
            Some(value.as_str()),
            "{name}: {key}"
        );
    }
    for key in FORGED_KEYS {
        assert_eq!(get(cluster, &all, key, false), None, "{name}: {key} exists");
    }
    let settled = view(cluster);
    assert_eq!(
        (settled.term, settled.leader),
        (before.term, before.leader),
        "{name}: the term or the leader changed"
    );
    for id in cluster.ids() {
        let at = cluster.addr(id).to_string();
        for (key, value) in &writes.0 {
            assert_eq!(
                get(cluster, &at, key, true).as_deref(),
                Some(value.as_str()),
                "{name}: {key} on node {id}"
            );
        }
        for key in FORGED_KEYS {
            assert_eq!(
                get(cluster, &at, key, true),
                None,
                "{name}: {key} on node {id}"
            );
        }
    }
    for id in cluster.ids().filter(|_| !logged.is_empty()) {
        eventually(&format!("{name}: node {id} to log {logged:?}"), || {
            log_since(cluster, id, logs[id as usize - 1])
                .lines()
                .any(|line| logged.iter().all(|part| line.contains(part)))
                .then_some(())
        });
    }
    cluster.check_running();
}

// ---------------------------------------------------------------------------
// The scenarios.

/// What the outsider gets back.
enum Expect {
    /// Every stream is refused with this code and a message containing this.
    Refused(Code, String),
    /// The TLS handshake fails: no stream gets through (the error comes at
    /// the connect or, with TLS 1.3, at the first call).
    HandshakeFails,
}

/// An outsider: how it connects, and what its streams say.
struct Outsider {
    name: &'static str,
    /// the TLS configuration it connects with, if any
    tls: Option<ClientTlsConfig>,
    /// the cluster id its streams carry, if any
    cluster_id: Option<String>,
    /// the sender every stream claims, instead of `attacks`' choice
    claim: Option<fn(u64) -> u64>,
    expect: Expect,
    /// what every node attacked must log (parts of one line)
    logged: Vec<String>,
}

/// Send every attack to every node as `outsider`, then check that nothing
/// came of it.
fn run(cluster: &mut Cluster, writes: &mut Writes, outsider: Outsider) {
    let name = outsider.name;
    writes.set(
        cluster,
        &format!("before-{name}"),
        &format!("{name}, before"),
    );
    let before = view(cluster);
    let logs = log_sizes(cluster);
    let rt = runtime();
    for target in cluster.ids() {
        for attack in attacks(before, target, outsider.claim.map(|c| c(target))) {
            let what = format!("{name}: {} to node {target}", attack.what);
            let mut metadata = vec![(FROM_METADATA, attack.from.to_string())];
            if let Some(id) = &outsider.cluster_id {
                metadata.push((CLUSTER_ID_METADATA, id.clone()));
            }
            let sent = connect(&rt, cluster.addr(target), outsider.tls.clone())
                .map_err(Status::unavailable)
                .and_then(|channel| send(&rt, channel, &metadata, vec![attack.envelope]));
            if let Err(status) = &sent {
                // Shown with --nocapture: what an outsider is told.
                eprintln!("{what}: {:?}: {}", status.code(), status.message());
            }
            match &outsider.expect {
                Expect::Refused(code, message) => {
                    let status = sent.expect_err(&format!("{what} was accepted"));
                    assert_eq!(status.code(), *code, "{what}: {status:?}");
                    assert!(
                        status.message().contains(message.as_str()),
                        "{what}: {status:?}"
                    );
                }
                Expect::HandshakeFails => {
                    let status = sent.expect_err(&format!("{what} was accepted"));
                    assert!(
                        !matches!(
                            status.code(),
                            Code::PermissionDenied | Code::InvalidArgument
                        ),
                        "{what}: the stream got past TLS to the peer service: {status:?}"
                    );
                }
            }
        }
    }
    std::thread::sleep(SETTLE);
    check_unharmed(cluster, name, before, writes, &logs, &outsider.logged);
}

#[test]
fn without_tls_outsiders_without_the_cluster_id_are_refused() {
    let mut cluster = Cluster::start_with(setup(false));
    let mut writes = Writes::default();
    cluster.wait_for_leader();
    let ours = cluster.cluster_id(1);
    for id in cluster.ids() {
        assert_eq!(cluster.cluster_id(id), ours, "node {id}'s cluster id");
    }

    run(
        &mut cluster,
        &mut writes,
        Outsider {
            name: "no-cluster-id",
            tls: None,
            cluster_id: None,
            claim: None,
            expect: Expect::Refused(Code::PermissionDenied, "its cluster id is none".into()),
            logged: vec![
                "refused a peer stream from 127.0.0.1:".into(),
                "its cluster id is none".into(),
            ],
        },
    );
    let wrong = another_cluster_id(&ours);
    let refusal = format!("its cluster id is {wrong}, not this cluster's ({ours})");
    run(
        &mut cluster,
        &mut writes,
        Outsider {
            name: "wrong-cluster-id",
            tls: None,
            cluster_id: Some(wrong.clone()),
            claim: None,
            expect: Expect::Refused(Code::PermissionDenied, refusal.clone()),
            logged: vec![
                "refused a peer stream from 127.0.0.1:".into(),
                refusal.clone(),
            ],
        },
    );
    a_node_of_another_cluster_is_refused(&mut cluster, &mut writes);
    malformed_messages_end_a_legitimate_looking_stream(&mut cluster, &mut writes);
}

/// The control: the attacks are not harmless in themselves. Without TLS
/// the cluster id keeps clusters apart but authenticates nobody (it is in
/// every data dir, and derived from the member list and the token): an
/// outsider who sends it and a member's id is admitted, and its forged
/// AppendEntries lands in a follower's state machine, which from then on
/// disagrees with the others. (docs/deploy.md says so; TLS is the remedy,
/// `with_tls_outsiders_without_a_members_certificate_are_refused`.)
#[test]
fn without_tls_an_outsider_who_knows_the_cluster_id_can_forge() {
    let mut cluster = Cluster::start_with(setup(false));
    let mut writes = Writes::default();
    writes.set(&cluster, "k", "v");
    let before = view(&mut cluster);
    let ours = cluster.cluster_id(1);
    let target = cluster.follower_of(before.leader);
    let rt = runtime();
    let forged = attacks(before, target, None).remove(0);
    let metadata = [
        (CLUSTER_ID_METADATA, ours),
        (FROM_METADATA, forged.from.to_string()),
    ];
    let channel = connect(&rt, cluster.addr(target), None).unwrap();
    send(&rt, channel, &metadata, vec![forged.envelope]).expect("admitted");
    let at = cluster.addr(target).to_string();
    eventually(
        &format!("the forged Set to be applied on node {target}"),
        || {
            (get(&cluster, &at, "forged-append", true).as_deref() == Some(FORGED_VALUE))
                .then_some(())
        },
    );
    let leader = cluster.addr(before.leader).to_string();
    assert_eq!(get(&cluster, &leader, "forged-append", true), None);
}

/// A real node of another cluster (another token) whose member list names
/// node 1 of this one as its peer: its RequestVotes reach node 1, which
/// refuses its streams; it is told why.
fn a_node_of_another_cluster_is_refused(cluster: &mut Cluster, writes: &mut Writes) {
    let name = "another-cluster";
    writes.set(cluster, "before-another-cluster", "another-cluster, before");
    let before = view(cluster);
    let logs = log_sizes(cluster);
    let dir = tempfile::tempdir().unwrap();
    let own = format!("127.0.0.1:{}", free_ports(1)[0]);
    let peers = format!("1={},2={own}", cluster.addr(1));
    let log = std::fs::File::create(dir.path().join("stranger.log")).unwrap();
    let mut stranger = Command::new(common::BIN)
        .args([
            "node",
            "--id",
            "2",
            "--peers",
            &peers,
            "--cluster-token",
            "another",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--election-timeout-ms", "150-300", "--heartbeat-ms", "50"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let stranger_log = || std::fs::read_to_string(dir.path().join("stranger.log")).unwrap();
    let refused = eventually("the stranger to be told node 1 refused it", || {
        stranger_log()
            .lines()
            .find(|line| line.contains("node 1 refused our messages"))
            .map(str::to_string)
    });
    let _ = stranger.kill();
    let _ = stranger.wait();
    assert!(refused.contains("its cluster id is"), "{refused}");
    std::thread::sleep(SETTLE);
    check_unharmed(cluster, name, before, writes, &logs, &[]);
    let line = log_since(cluster, 1, logs[0]);
    assert!(
        line.contains("node 1: refused a peer stream from 127.0.0.1:")
            && line.contains(&format!("not this cluster's ({})", cluster.cluster_id(1))),
        "node 1 did not log the stranger's refusal:\n{line}"
    );
}

/// Malformed messages on a stream that carries the right cluster id and a
/// member's id (without TLS, anyone can say so): each ends its stream with
/// INVALID_ARGUMENT before the core sees it; a stream naming no node, or
/// the receiver itself, is refused at its start.
fn malformed_messages_end_a_legitimate_looking_stream(cluster: &mut Cluster, writes: &mut Writes) {
    let name = "malformed";
    writes.set(cluster, "before-malformed", "malformed, before");
    let before = view(cluster);
    let logs = log_sizes(cluster);
    let ours = cluster.cluster_id(1);
    let rt = runtime();
    for target in cluster.ids() {
        let member = next_member(target);
        let gap = before.last_log_index + 2;
        let append = |prev: u64, entries: Vec<LogEntry>| {
            envelope(
                member,
                PeerMessage::AppendEntries(AppendEntriesRequest {
                    term: before.term,
                    leader_id: member,
                    prev_log_index: prev,
                    prev_log_term: before.term,
                    entries,
                    leader_commit: gap,
                    read_round: 0,
                }),
            )
        };
        let entry = |index: u64, kind: i32, command: Vec<u8>| LogEntry {
            index,
            term: before.term,
            command,
            kind,
        };
        let command = EntryKind::Command as i32;
        let noop = EntryKind::Noop as i32;
        // (claimed sender in the metadata, the envelope, expected code and message part)
        let cases: Vec<(String, Envelope, Code, String)> = vec![
            (
                member.to_string(),
                Envelope {
                    from: member,
                    message: None,
                },
                Code::InvalidArgument,
                "the envelope holds no message".into(),
            ),
            (
                member.to_string(),
                append(
                    before.last_log_index,
                    vec![entry(gap, command, forged_set("forged-gap"))],
                ),
                Code::InvalidArgument,
                format!(
                    "entry 1 of AppendEntries has index {gap}, expected {}",
                    before.last_log_index + 1
                ),
            ),
            (
                member.to_string(),
                append(
                    before.last_log_index,
                    vec![
                        entry(before.last_log_index + 1, noop, vec![]),
                        entry(gap + 5, command, forged_set("forged-gap")),
                    ],
                ),
                Code::InvalidArgument,
                format!("entry 2 of AppendEntries has index {}", gap + 5),
            ),
            (
                member.to_string(),
                append(
                    before.last_log_index,
                    vec![entry(
                        before.last_log_index + 1,
                        noop,
                        forged_set("forged-gap"),
                    )],
                ),
                Code::InvalidArgument,
                "a no-op with a command".into(),
            ),
            (
                member.to_string(),
                append(
                    before.last_log_index,
                    vec![entry(
                        before.last_log_index + 1,
                        7,
                        forged_set("forged-gap"),
                    )],
                ),
                Code::InvalidArgument,
                "unknown kind 7".into(),
            ),
            (
                member.to_string(),
                envelope(
                    9,
                    PeerMessage::RequestVote(RequestVoteRequest {
                        term: before.term + 1000,
                        candidate_id: 9,
                        last_log_index: before.last_log_index + 1000,
                        last_log_term: before.term + 1000,
                        leadership_transfer: false,
                    }),
                ),
                Code::InvalidArgument,
                format!("a message on node {member}'s stream says it is from node 9"),
            ),
            (
                "9".into(),
                append(
                    before.last_log_index,
                    vec![entry(
                        before.last_log_index + 1,
                        command,
                        forged_set("forged-gap"),
                    )],
                ),
                // A server this node does not know is heard (a new member
                // is, before its configuration arrives, §6); what it sends
                // must be its own.
                Code::InvalidArgument,
                format!("a message on node 9's stream says it is from node {member}"),
            ),
            (
                "0".into(),
                append(before.last_log_index, vec![]),
                Code::PermissionDenied,
                format!("it claims to be node '0', not a peer of node {target}"),
            ),
            (
                target.to_string(),
                append(before.last_log_index, vec![]),
                Code::PermissionDenied,
                format!("it claims to be node '{target}', not a peer of node {target}"),
            ),
        ];
        for (claimed, message, code, expected) in cases {
            let what = format!("node {target}, stream from '{claimed}': {expected}");
            // A connection of its own each: the log says one line per
            // connection and kind of refusal at most every 10 s.
            let channel = connect(&rt, cluster.addr(target), None).unwrap();
            let metadata = [
                (CLUSTER_ID_METADATA, ours.clone()),
                (FROM_METADATA, claimed.clone()),
            ];
            let status = send(&rt, channel, &metadata, vec![message])
                .expect_err(&format!("{what}: accepted"));
            assert_eq!(status.code(), code, "{what}: {status:?}");
            assert!(status.message().contains(&expected), "{what}: {status:?}");
            let logged = if code == Code::InvalidArgument {
                format!("node {target}: ended the stream of node {claimed} from 127.0.0.1:")
            } else {
                format!("node {target}: refused a peer stream from 127.0.0.1:")
            };
            eventually(&format!("{what}: node {target} to log it"), || {
                log_since(cluster, target, logs[target as usize - 1])
                    .lines()
                    .any(|line| line.contains(&logged) && line.contains(&expected))
                    .then_some(())
            });
        }
    }
    std::thread::sleep(SETTLE);
    // (Each refusal was found in its node's log above.)
    check_unharmed(cluster, name, before, writes, &logs, &[]);
}

/// The TLS configuration of an outsider that trusts the cluster's CA (its
/// certificate is no secret) and shows `identity`, if any.
fn outsider_tls(tls_dir: &std::path::Path, identity: Option<(&str, &str)>) -> ClientTlsConfig {
    let ca = std::fs::read(tls_dir.join("ca.pem")).unwrap();
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    match identity {
        None => config,
        Some((cert, key)) => config.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        )),
    }
}

#[test]
fn with_tls_outsiders_without_a_members_certificate_are_refused() {
    let mut cluster = Cluster::start_with(setup(true));
    let mut writes = Writes::default();
    cluster.wait_for_leader();
    let ours = cluster.cluster_id(1);
    let tls_dir = cluster.tls_dir().unwrap().to_path_buf();
    let load = |holder| {
        TlsArgs {
            tls_dir: Some(tls_dir.clone()),
            ..TlsArgs::default()
        }
        .load(holder)
        .unwrap()
        .unwrap()
        .client_config()
    };
    let other_ca = tempfile::tempdir().unwrap();
    write_certs(other_ca.path(), "1,2,3");
    let path = |name: &str| other_ca.path().join(name).display().to_string();
    let (other_cert, other_key) = (path("node-1.pem"), path("node-1.key"));

    run(
        &mut cluster,
        &mut writes,
        Outsider {
            name: "no-certificate",
            tls: Some(outsider_tls(&tls_dir, None)),
            cluster_id: Some(ours.clone()),
            claim: None,
            expect: Expect::HandshakeFails,
            logged: vec![
                "refused a connection from 127.0.0.1:".into(),
                "the TLS handshake failed".into(),
            ],
        },
    );
    run(
        &mut cluster,
        &mut writes,
        Outsider {
            name: "client-certificate",
            tls: Some(load(Holder::Client)),
            cluster_id: Some(ours.clone()),
            claim: None,
            expect: Expect::Refused(
                Code::PermissionDenied,
                "but its TLS certificate does not name node-".into(),
            ),
            logged: vec![
                "refused a peer stream from 127.0.0.1:".into(),
                "but its TLS certificate does not name node-".into(),
            ],
        },
    );
    run(
        &mut cluster,
        &mut writes,
        Outsider {
            name: "node-3-as-node-1",
            tls: Some(load(Holder::Node(3))),
            cluster_id: Some(ours.clone()),
            // Node 1 (node 2 to node 1 itself): never node 3, whose
            // certificate this is.
            claim: Some(|target| if target == 1 { 2 } else { 1 }),
            expect: Expect::Refused(
                Code::PermissionDenied,
                "but its TLS certificate does not name node-".into(),
            ),
            logged: vec![
                "refused a peer stream from 127.0.0.1:".into(),
                "but its TLS certificate does not name node-".into(),
            ],
        },
    );
    run(
        &mut cluster,
        &mut writes,
        Outsider {
            name: "another-ca",
            tls: Some(outsider_tls(&tls_dir, Some((&other_cert, &other_key)))),
            cluster_id: Some(ours.clone()),
            claim: None,
            expect: Expect::HandshakeFails,
            logged: vec![
                "refused a connection from 127.0.0.1:".into(),
                "the TLS handshake failed".into(),
            ],
        },
    );
}

// ---------------------------------------------------------------------------
// Cluster identity at start.

/// Run `command` (a node that must refuse to start) and wait for it to
/// exit; kill it and fail if it is still running after a while.
fn run_to_exit(mut command: Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start raft-kv node");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("the node started anyway:\n{}", stderr(&output));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The one line a node that refuses to start prints.
fn refusal_to_start(output: &Output) -> String {
    let text = stderr(output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert_eq!(lines.len(), 1, "expected one line:\n{text}");
    assert!(lines[0].starts_with("raft-kv: error: "), "{text}");
    lines[0].to_string()
}

#[test]
fn a_node_restarted_with_another_member_list_or_token_refuses_to_start() {
    // No token: the cluster is named by the default one, so that a restart
    // can be given another.
    let mut cluster = Cluster::start(&[]);
    let leader = cluster.wait_for_leader();
    let output = cluster.cli(&["set", "k", "v"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let ours = cluster.cluster_id(1);
    let target = cluster.follower_of(leader);
    cluster.kill(target);

    let fourth = format!("{},4=127.0.0.1:{}", cluster.peers(), free_ports(1)[0]);
    let line = refusal_to_start(&run_to_exit(cluster.node_command(target, &fourth)));
    assert!(
        line.contains(&format!(
            "belongs to cluster {ours} of members {}",
            cluster.peers()
        )),
        "{line}"
    );

    let mut another_token = cluster.node_command(target, &cluster.peers());
    another_token.args(["--cluster-token", "another"]);
    let line = refusal_to_start(&run_to_exit(another_token));
    assert!(
        line.contains(&format!(
            "belongs to cluster {ours}, created with another --cluster-token"
        )),
        "{line}"
    );

    // A damaged record is refused too, not believed or rewritten.
    let record = cluster.data_dir(target).join("cluster");
    let good = std::fs::read_to_string(&record).unwrap();
    std::fs::write(&record, good.replacen("members 1=", "members 4=", 1)).unwrap();
    let line = refusal_to_start(&run_to_exit(cluster.node_command(target, &cluster.peers())));
    assert!(line.contains("damaged"), "{line}");
    std::fs::write(&record, &good).unwrap();

    // With its own member list it starts and catches up.
    cluster.spawn(target);
    cluster.wait_for_leader();
    let output = cluster.cli(&["set", "k2", "v2"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let at = cluster.addr(target).to_string();
    eventually(&format!("node {target} to apply k2"), || {
        (get(&cluster, &at, "k2", true).as_deref() == Some("v2")).then_some(())
    });
    assert_eq!(get(&cluster, &at, "k", true).as_deref(), Some("v"));
}

/// A connection showing a certificate of another CA is refused, and the
/// log says why in plain words. (Each `raft-kv certs` CA has a name of its
/// own, so rustls reports an unknown issuer; were two CAs named alike, a bad
/// signature, which the log explains the same way.)
#[test]
fn a_certificate_of_another_raft_kv_ca_is_explained_in_the_log() {
    let cluster = Cluster::start_with(setup(true));
    let tls_dir = cluster.tls_dir().unwrap().to_path_buf();
    let other_ca = tempfile::tempdir().unwrap();
    write_certs(other_ca.path(), "1,2,3");
    let path = |name: &str| other_ca.path().join(name).display().to_string();
    let tls = outsider_tls(&tls_dir, Some((&path("node-2.pem"), &path("node-2.key"))));
    let rt = runtime();
    let sent = connect(&rt, cluster.addr(1), Some(tls))
        .map_err(Status::unavailable)
        .and_then(|channel| send(&rt, channel, &[(FROM_METADATA, "2".into())], vec![]));
    assert!(sent.is_err(), "a certificate of another CA was let in");
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let log = cluster.log(1);
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("refused a connection from"))
        {
            break line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "node 1 logged no refusal:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        line.contains("its certificate is not signed by this cluster's CA"),
        "the refusal does not say why in words: {line}"
    );
}

/// A member started with another CA's files (a deployment mistake, not an
/// attack) gets nowhere either — and both sides say why in their logs, so
/// the mistake is found from either end.
#[test]
fn a_member_with_another_ca_is_refused_and_both_sides_say_why() {
    let mut cluster = Cluster::prepare_with(setup(true));
    cluster.spawn(1);
    cluster.spawn(2);
    let leader = cluster.wait_for_leader();
    let other = tempfile::tempdir().unwrap();
    write_certs(other.path(), "1,2,3");
    let log_path = other.path().join("node3.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let node3 = Command::new(common::BIN)
        .args(["node", "--id", "3", "--peers", &cluster.peers()])
        .arg("--data-dir")
        .arg(other.path().join("data"))
        .arg("--tls-dir")
        .arg(other.path())
        .args([
            "--cluster-token",
            TOKEN,
            "--election-timeout-ms",
            SLOW_ELECTIONS,
        ])
        .args(["--heartbeat-ms", HEARTBEAT])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _node3 = Kill(node3);

    let unknown = "over TLS: invalid peer certificate: UnknownIssuer";
    eventually("node 3 to say it cannot reach the others", || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.contains(&format!("cannot reach node {leader} {unknown}"))
            .then_some(())
    });
    eventually("the leader to say it cannot reach node 3", || {
        let log = cluster.log(leader);
        // Node 3, dialling, distrusts the leader's certificate first, so the
        // leader hears of it as an alert.
        (log.contains(&format!("node {leader}: cannot reach node 3 {unknown}"))
            && log.contains("it does not trust this node's certificate (it has another CA?)"))
        .then_some(())
    });
    let status = cluster.status(leader).unwrap();
    assert_eq!(status.role, "leader");
}
