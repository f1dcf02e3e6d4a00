//! Nodes running in this process on loopback ports, each with its three
//! threads and a simulated disk, driven through their real gRPC services.
//! These are not deterministic: they wait, with a deadline, for the cluster
//! to get somewhere.
//!
//! Why this harness and not `sim::Cluster`: each test checks what only the
//! runtime does, with its real threads and sockets. The Raft behaviour
//! beneath is tested on the simulated cluster (tests/election.rs,
//! replication.rs, snapshots.rs, kv.rs); here, that the runtime carries it:
//!
//! - the gRPC services' answers, codes and metadata:
//!   `a_follower_refuses_writes_and_names_the_leader`,
//!   `bad_client_input_is_refused_and_changes_nothing`,
//!   `a_node_with_no_leader_says_so`,
//!   `the_peer_service_refuses_strangers_and_malformed_entries` (the bridge
//!   refuses before the core sees anything);
//! - the event loop, timer and bridge threads carrying an election, writes,
//!   reads and a snapshot over loopback: `elects_a_leader_and_serves_writes_and_reads`,
//!   `a_dead_peer_does_not_stop_the_majority` (RPCs to a port nobody
//!   serves time out without blocking the event loop),
//!   `a_late_follower_catches_up_through_a_snapshot`;
//! - the health service beside the client service, over TLS, following
//!   the leader: `health_is_served_over_tls_and_follows_the_leader`;
//! - shutdown: `shutdown_stops_every_thread_and_frees_the_port`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::identity::ClusterId;
use super::{Listeners, Node};
use crate::config::{Address, FastPath, LogLevel, Members, NodeConfig, Timing};
use crate::proto::kv::key_value_client::KeyValueClient;
use crate::proto::kv::{
    Consistency, DeleteRequest, GetRequest, SetRequest, StatusRequest, StatusResponse,
};
use crate::proto::peer::envelope::Message as PeerMessage;
use crate::proto::peer::raft_client::RaftClient;
use crate::proto::peer::{AppendEntriesRequest, Envelope, LogEntry, RequestVoteRequest};
use crate::proto::{CLUSTER_ID_METADATA, FROM_METADATA, LEADER_ADDR_METADATA};
use crate::raft::{MemStorage, NodeId};
use crate::tls::{certs, Holder, TlsArgs};
use tonic::codegen::tokio_stream;

const DEADLINE: Duration = Duration::from_secs(10);

/// Up to three nodes on free loopback ports; dropping it stops them all.
struct TestCluster {
    members: Members,
    cluster_id: ClusterId,
    listeners: Vec<Option<TcpListener>>,
    disks: Vec<MemStorage>,
    nodes: Vec<Option<Node>>,
    snapshot_log_bytes: usize,
    /// `raft-kv certs` output, when the cluster runs with TLS
    tls_dir: Option<tempfile::TempDir>,
    runtime: tokio::runtime::Runtime,
}

impl TestCluster {
    /// Bind a port for each of `size` members; start none of them yet.
    fn new(size: usize, snapshot_log_bytes: usize) -> TestCluster {
        let listeners: Vec<TcpListener> = (0..size)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let list = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{}={}", i + 1, l.local_addr().unwrap()))
            .collect::<Vec<_>>()
            .join(",");
        let members = Members::parse_peers(&list).unwrap();
        TestCluster {
            cluster_id: ClusterId::derive(&members, "test"),
            members,
            listeners: listeners.into_iter().map(Some).collect(),
            disks: (0..size).map(|_| MemStorage::new()).collect(),
            nodes: (0..size).map(|_| None).collect(),
            snapshot_log_bytes,
            tls_dir: None,
            // A worker thread of its own keeps the clients' connections
            // alive between calls, so they hang up promptly at shutdown.
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// The same, with mutual TLS: certificates for every member and a
    /// client, from a CA of its own.
    fn with_tls(size: usize) -> TestCluster {
        let mut cluster = TestCluster::new(size, 10_000);
        let dir = tempfile::tempdir().unwrap();
        let nodes = certs::local_nodes(&cluster.members.ids());
        certs::write(dir.path(), &nodes, false).unwrap();
        cluster.tls_dir = Some(dir);
        cluster
    }

    fn tls_args(&self) -> Option<TlsArgs> {
        self.tls_dir.as_ref().map(|dir| TlsArgs {
            tls_dir: Some(dir.path().to_path_buf()),
            ..TlsArgs::default()
        })
    }

    /// A channel to node `id`; with TLS, as `holder`, or with no certificate.
    fn channel_as(&self, id: NodeId, holder: Option<Holder>) -> Result<Channel, String> {
        let tls = self.tls_args();
        let mut endpoint = Endpoint::from_shared(self.address(id).url(tls.is_some())).unwrap();
        if let Some(tls) = tls {
            let config = match holder {
                Some(holder) => tls.load(holder).unwrap().unwrap().client_config(),
                None => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
                    std::fs::read(tls.files(Holder::Client).unwrap().ca).unwrap(),
                )),
            };
            endpoint = endpoint.tls_config(config).unwrap();
        }
        self.runtime
            .block_on(endpoint.connect())
            .map_err(|e| format!("{e:?}"))
    }

    fn start(&mut self, id: NodeId) {
        let i = id as usize - 1;
        let tls = self
            .tls_args()
            .map(|args| args.load(Holder::Node(id)).unwrap().unwrap());
        let config = NodeConfig {
            id,
            members: self.members.clone(),
            data_dir: PathBuf::new(),
            timing: Timing::new("150-300", 50, 10).unwrap(),
            snapshot_log_bytes: self.snapshot_log_bytes,
            log_level: LogLevel::Info,
            poll: Duration::from_micros(500),
            fast_path: FastPath::default(),
            max_request_bytes: crate::config::DEFAULT_MAX_REQUEST_BYTES,
            pre_vote: true,
            lease_reads: false,
            listen_peers: self.address(id).clone(),
            listen_clients: None,
            client_address: self.address(id).clone(),
            metrics_addr: None,
            cluster_token: None,
            join: None,
            own_address: self.address(id).clone(),
            allow_fault_injection: true,
            tls,
        };
        let listeners = Listeners {
            peers: self.listeners[i].take().expect("each node starts once"),
            clients: None,
            metrics: None,
        };
        let disk = Box::new(self.disks[i].clone());
        let node = Node::start(&config, disk, listeners, self.cluster_id).unwrap();
        self.nodes[i] = Some(node);
    }

    fn start_all(&mut self) {
        for id in self.members.ids() {
            self.start(id);
        }
    }

    fn address(&self, id: NodeId) -> &Address {
        self.members.address(id).unwrap()
    }

    fn client(&self, id: NodeId) -> KeyValueClient<Channel> {
        KeyValueClient::new(self.channel_as(id, Some(Holder::Client)).unwrap())
    }

    fn status(&self, id: NodeId) -> Result<StatusResponse, Status> {
        let mut client = self.client(id);
        self.runtime
            .block_on(client.status(StatusRequest {}))
            .map(|r| r.into_inner())
    }

    fn running(&self) -> Vec<NodeId> {
        self.members
            .ids()
            .into_iter()
            .filter(|&id| self.nodes[id as usize - 1].is_some())
            .collect()
    }

    /// Wait until every running node names the same leader in the same term.
    fn leader(&self) -> NodeId {
        eventually("one leader that every running node agrees on", || {
            let statuses: Vec<StatusResponse> = self
                .running()
                .into_iter()
                .map(|id| self.status(id).ok())
                .collect::<Option<_>>()?;
            let leaders: Vec<&StatusResponse> =
                statuses.iter().filter(|s| s.role == "leader").collect();
            let [leader] = leaders[..] else {
                return None;
            };
            statuses
                .iter()
                .all(|s| s.leader_id == leader.id && s.term == leader.term)
                .then_some(leader.id)
        })
    }

    fn set(&self, id: NodeId, key: &str, value: &str) -> Result<(), Status> {
        let mut client = self.client(id);
        let request = SetRequest {
            key: key.into(),
            value: value.into(),
            client_id: 0,
            sequence: 0,
        };
        self.runtime.block_on(client.set(request)).map(|_| ())
    }

    fn get(&self, id: NodeId, key: &str, consistency: i32) -> Result<Option<String>, Status> {
        let mut client = self.client(id);
        let request = GetRequest {
            key: key.into(),
            consistency,
        };
        let response = self.runtime.block_on(client.get(request))?.into_inner();
        Ok(response.found.then_some(response.value))
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            let _ = node.shutdown();
        }
    }
}

/// Poll `check` until it gives an answer, failing after [`DEADLINE`].
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(answer) = check() {
            return answer;
        }
        assert!(start.elapsed() < DEADLINE, "no {what} within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn follower_of(cluster: &TestCluster, leader: NodeId) -> NodeId {
    cluster
        .running()
        .into_iter()
        .find(|&id| id != leader)
        .unwrap()
}

#[test]
fn elects_a_leader_and_serves_writes_and_reads() {
    let mut cluster = TestCluster::new(3, 10_000);
    cluster.start_all();
    let leader = cluster.leader();

    cluster.set(leader, "color", "blue").unwrap();
    let linearizable = Consistency::Linearizable as i32;
    assert_eq!(
        cluster.get(leader, "color", linearizable).unwrap(),
        Some("blue".to_string())
    );
    assert_eq!(cluster.get(leader, "shape", linearizable).unwrap(), None);

    let follower = follower_of(&cluster, leader);
    eventually("the write on a follower", || {
        let value = cluster
            .get(follower, "color", Consistency::Stale as i32)
            .unwrap();
        (value.as_deref() == Some("blue")).then_some(())
    });

    let mut client = cluster.client(leader);
    let delete = |key: &str| DeleteRequest {
        key: key.into(),
        client_id: 0,
        sequence: 0,
    };
    let deleted = cluster
        .runtime
        .block_on(client.delete(delete("color")))
        .unwrap();
    assert!(deleted.into_inner().existed);
    let deleted = cluster
        .runtime
        .block_on(client.delete(delete("color")))
        .unwrap();
    assert!(!deleted.into_inner().existed);
}

#[test]
fn a_follower_refuses_writes_names_the_leader_and_serves_reads() {
    let mut cluster = TestCluster::new(3, 10_000);
    cluster.start_all();
    let leader = cluster.leader();
    let follower = follower_of(&cluster, leader);
    let leader_address = cluster.address(leader).to_string();

    let refusal = cluster.set(follower, "k", "v").unwrap_err();
    assert_eq!(refusal.code(), Code::Unavailable);
    assert_eq!(
        refusal.message(),
        format!("not leader; the leader is node {leader} at {leader_address}")
    );
    let named = refusal.metadata().get(LEADER_ADDR_METADATA).unwrap();
    assert_eq!(named.to_str().unwrap(), leader_address);

    // A linearizable read is the follower's to serve, after it asks the
    // leader for a read index (dissertation §6.4).
    let read = cluster
        .get(follower, "k", Consistency::Linearizable as i32)
        .unwrap();
    assert_eq!(read, None);
}

#[test]
fn bad_client_input_is_refused_and_changes_nothing() {
    let mut cluster = TestCluster::new(1, 10_000);
    cluster.start_all();
    let leader = cluster.leader();
    let before = cluster.status(leader).unwrap();

    let refusal = cluster.set(leader, "", "v").unwrap_err();
    assert_eq!(refusal.code(), Code::InvalidArgument);
    assert_eq!(refusal.message(), "key must not be empty");

    let refusal = cluster.get(leader, "k", 7).unwrap_err();
    assert_eq!(refusal.code(), Code::InvalidArgument);
    assert_eq!(
        refusal.message(),
        "unknown consistency 7; expected LINEARIZABLE (0) or STALE (1)"
    );

    let after = cluster.status(leader).unwrap();
    assert_eq!(after.last_log_index, before.last_log_index);
}

#[test]
fn requests_over_the_size_limit_are_refused_before_they_are_read() {
    let mut cluster = TestCluster::new(1, 10_000);
    cluster.start_all();
    let leader = cluster.leader();
    let limit = crate::config::DEFAULT_MAX_REQUEST_BYTES;
    let before = cluster.status(leader).unwrap();

    // The largest key and value fit; a value over its own limit is read and
    // refused by the key-value layer; a request over the node's limit is
    // refused from its length alone.
    let key = "k".repeat(crate::kv::MAX_KEY_BYTES);
    let largest = "v".repeat(crate::kv::MAX_VALUE_BYTES);
    cluster.set(leader, &key, &largest).unwrap();
    let over_value = "v".repeat(crate::kv::MAX_VALUE_BYTES + 1);
    let refusal = cluster.set(leader, "k", &over_value).unwrap_err();
    assert_eq!(refusal.code(), Code::InvalidArgument);
    assert_eq!(
        refusal.message(),
        "value is 1048577 bytes; the limit is 1048576"
    );
    for size in [limit + 1, 5 << 20] {
        let refusal = cluster.set(leader, "k", &"v".repeat(size)).unwrap_err();
        assert_eq!(refusal.code(), Code::InvalidArgument);
        let message = refusal.message();
        let expected = format!("bytes; the limit is {limit} (--max-request-bytes)");
        assert!(
            message.starts_with("request is ") && message.ends_with(&expected),
            "{message}"
        );
    }

    let after = cluster.status(leader).unwrap();
    assert_eq!(after.last_log_index, before.last_log_index + 1);
}

#[test]
fn a_node_with_no_leader_says_so() {
    let mut cluster = TestCluster::new(3, 10_000);
    cluster.start(1);
    let refusal = cluster.set(1, "k", "v").unwrap_err();
    assert_eq!(refusal.code(), Code::Unavailable);
    assert_eq!(refusal.message(), "not leader; no leader is known yet");
    assert!(refusal.metadata().get(LEADER_ADDR_METADATA).is_none());
}

/// A peer stream's request, with the metadata a node of `cluster` sends.
fn stream(
    cluster: ClusterId,
    from: &str,
    envelopes: Vec<Envelope>,
) -> tonic::Request<tokio_stream::Iter<std::vec::IntoIter<Envelope>>> {
    let mut request = tonic::Request::new(tokio_stream::iter(envelopes));
    let metadata = request.metadata_mut();
    metadata.insert(CLUSTER_ID_METADATA, cluster.to_string().parse().unwrap());
    metadata.insert(FROM_METADATA, from.parse().unwrap());
    request
}

fn vote_request(from: NodeId) -> Envelope {
    let request = RequestVoteRequest {
        term: 1,
        candidate_id: from,
        last_log_index: 0,
        last_log_term: 0,
        leadership_transfer: false,
    };
    Envelope {
        from,
        message: Some(PeerMessage::RequestVote(request)),
    }
}

#[test]
fn the_peer_service_refuses_strangers_and_malformed_entries() {
    let mut cluster = TestCluster::new(3, 10_000);
    cluster.start(1);
    let url = cluster.address(1).url(false);
    let mut peer = cluster.runtime.block_on(RaftClient::connect(url)).unwrap();
    let mut refusal = |request| cluster.runtime.block_on(peer.send(request)).unwrap_err();
    let ours = cluster.cluster_id;

    // A server of the cluster that node 1's configuration does not name yet
    // is heard (a leader adds a server before the server knows it, §6);
    // a stream that names no server, or node 1 itself, is not.
    for from in ["x", "0", "1"] {
        let stranger = refusal(stream(ours, from, vec![vote_request(9)]));
        assert_eq!(stranger.code(), Code::PermissionDenied);
        assert_eq!(
            stranger.message(),
            format!(
                "node 1 refuses this stream: it claims to be node '{from}', not a peer of node 1"
            )
        );
    }
    let another = ClusterId(ours.0 ^ 1);
    let foreign = refusal(stream(another, "2", vec![vote_request(2)]));
    assert_eq!(foreign.code(), Code::PermissionDenied);
    assert_eq!(
        foreign.message(),
        format!(
            "node 1 refuses this stream: its cluster id is {another}, not this cluster's \
             ({ours}): it is not a member of this cluster"
        )
    );
    let unlabelled = tonic::Request::new(tokio_stream::iter(vec![vote_request(2)]));
    assert_eq!(refusal(unlabelled).code(), Code::PermissionDenied);
    let impostor = refusal(stream(ours, "2", vec![vote_request(3)]));
    assert_eq!(impostor.code(), Code::InvalidArgument);
    assert_eq!(
        impostor.message(),
        "a message on node 2's stream says it is from node 3"
    );

    let gap = AppendEntriesRequest {
        term: 1,
        leader_id: 2,
        prev_log_index: 0,
        prev_log_term: 0,
        entries: vec![LogEntry {
            index: 2,
            term: 1,
            command: Vec::new(),
            kind: 0,
        }],
        leader_commit: 0,
        read_round: 0,
    };
    let envelope = Envelope {
        from: 2,
        message: Some(PeerMessage::AppendEntries(gap)),
    };
    let malformed = refusal(stream(ours, "2", vec![envelope]));
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert_eq!(
        malformed.message(),
        "entry 1 of AppendEntries has index 2, expected 1"
    );
    // No request reached the core: node 1 is still in term 0.
    assert_eq!(cluster.status(1).unwrap().term, 0);
}

/// The peer listener decodes no more than the largest message a member
/// sends (`max_peer_message_bytes`: one AppendEntries' worth of entries),
/// not the 64 MiB it once took: a larger one is refused before it is read,
/// and the node goes on serving.
#[test]
fn the_peer_service_refuses_messages_over_the_append_entries_cap() {
    let mut cluster = TestCluster::new(3, 10_000);
    cluster.start(1);
    let limit = crate::server::bridge::max_peer_message_bytes(&crate::raft::RaftConfig::new(
        1,
        vec![1, 2, 3],
    ));
    assert!(limit < 2 << 20, "the limit is {limit} bytes");
    let url = cluster.address(1).url(false);
    let mut peer = cluster.runtime.block_on(RaftClient::connect(url)).unwrap();
    let append = |command_bytes: usize| Envelope {
        from: 2,
        message: Some(PeerMessage::AppendEntries(AppendEntriesRequest {
            term: 1,
            leader_id: 2,
            prev_log_index: 0,
            prev_log_term: 0,
            entries: vec![LogEntry {
                index: 1,
                term: 1,
                command: vec![b'x'; command_bytes],
                kind: 0,
            }],
            leader_commit: 0,
            read_round: 0,
        })),
    };
    let ours = cluster.cluster_id;
    let too_large = cluster
        .runtime
        .block_on(peer.send(stream(ours, "2", vec![append(limit)])))
        .unwrap_err();
    assert_eq!(too_large.code(), Code::OutOfRange, "{too_large:?}");
    // Nothing reached the core, and the node still answers.
    assert_eq!(cluster.status(1).unwrap().term, 0);
    // The largest entry a member sends fits.
    let largest = crate::kv::MAX_KEY_BYTES + crate::kv::MAX_VALUE_BYTES + 64;
    let fits = cluster
        .runtime
        .block_on(peer.send(stream(ours, "2", vec![append(largest)])));
    assert!(fits.is_ok(), "{fits:?}");
    eventually("node 1 to take the entry", || {
        (cluster.status(1).ok()?.term == 1).then_some(())
    });
}

#[test]
fn with_tls_only_members_speak_for_members_and_only_certified_clients_connect() {
    let mut cluster = TestCluster::with_tls(3);
    cluster.start_all();
    let leader = cluster.leader();
    cluster.set(leader, "k", "over TLS").unwrap();
    let ours = cluster.cluster_id;

    // Without a certificate the handshake fails (with TLS 1.3 the client
    // learns it at its first call): no request reaches the node.
    let refused = cluster.channel_as(1, None).and_then(|channel| {
        let mut client = KeyValueClient::new(channel);
        let call = cluster.runtime.block_on(client.status(StatusRequest {}));
        call.map_err(|status| format!("{status:?}"))
    });
    assert!(refused.is_err());

    // The client's certificate is good for the client API, not for a peer;
    // node 3's, claiming to be node 2, neither.
    for (holder, claimed) in [(Holder::Client, "2"), (Holder::Node(3), "2")] {
        let channel = cluster.channel_as(1, Some(holder)).unwrap();
        let mut peer = RaftClient::new(channel);
        let request = stream(ours, claimed, vec![vote_request(2)]);
        let refusal = cluster.runtime.block_on(peer.send(request)).unwrap_err();
        assert_eq!(refusal.code(), Code::PermissionDenied, "{holder:?}");
        assert_eq!(
            refusal.message(),
            "node 1 refuses this stream: it claims to be node 2, but its TLS certificate \
             does not name node-2.raft-kv"
        );
    }
    // Node 2's own certificate is let in (its stream is then a peer's like
    // any other: this one holds no message).
    let mut peer = RaftClient::new(cluster.channel_as(1, Some(Holder::Node(2))).unwrap());
    let request = stream(ours, "2", vec![]);
    cluster.runtime.block_on(peer.send(request)).unwrap();

    assert_eq!(
        cluster
            .get(leader, "k", Consistency::Linearizable as i32)
            .unwrap(),
        Some("over TLS".to_string())
    );
}

#[test]
fn a_dead_peer_does_not_stop_the_majority() {
    let mut cluster = TestCluster::new(3, 10_000);
    cluster.start(1);
    cluster.start(2);
    let leader = cluster.leader();
    for i in 0..20 {
        cluster.set(leader, &format!("key{i}"), "value").unwrap();
    }
    let status = cluster.status(leader).unwrap();
    assert_eq!(status.last_applied, status.last_log_index);
}

#[test]
fn a_late_follower_catches_up_through_a_snapshot() {
    let mut cluster = TestCluster::new(3, 5);
    cluster.start(1);
    cluster.start(2);
    let leader = cluster.leader();
    for i in 0..30 {
        cluster.set(leader, &format!("key{i}"), "value").unwrap();
    }
    let target = cluster.status(leader).unwrap().commit_index;
    cluster.start(3);
    eventually("node 3 to catch up", || {
        let status = cluster.status(3).ok()?;
        (status.last_applied >= target).then_some(())
    });
    assert!(cluster.disks[2].durable_snapshot().is_some());
    assert_eq!(
        cluster.get(3, "key29", Consistency::Stale as i32).unwrap(),
        Some("value".to_string())
    );
}

#[test]
fn shutdown_stops_every_thread_and_frees_the_port() {
    let mut cluster = TestCluster::new(1, 10_000);
    cluster.start_all();
    cluster.leader();
    let node = cluster.nodes[0].take().unwrap();
    node.shutdown().unwrap();
    let address = cluster.address(1).to_string();
    TcpListener::bind(&address).unwrap();
}

/// The health service sits beside the client service, TLS included, and
/// says SERVING only while the node knows a leader of its term.
#[test]
fn health_is_served_over_tls_and_follows_the_leader() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let mut cluster = TestCluster::with_tls(3);
    let check = |cluster: &TestCluster, service: &str| {
        let channel = cluster.channel_as(1, Some(Holder::Client)).ok()?;
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let answer = cluster
            .runtime
            .block_on(HealthClient::new(channel).check(request));
        Some(answer.ok()?.into_inner().status())
    };
    cluster.start(1);
    eventually("node 1 to answer", || check(&cluster, ""));
    // Several election timeouts: alone of three, it elects no one.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(check(&cluster, ""), Some(ServingStatus::NotServing));
    cluster.start(2);
    cluster.leader();
    for service in ["", "raftkv.KeyValue"] {
        eventually("node 1 to serve", || {
            (check(&cluster, service)? == ServingStatus::Serving).then_some(())
        });
    }
}
