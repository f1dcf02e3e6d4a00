//! The Raft core on FileStorage: three nodes whose disks are real files,
//! driven tick by tick with messages delivered in order (no clock, no
//! sockets). Writes made while a follower was cut off, a restart of every
//! node, and an InstallSnapshot to the laggard must leave every node with the
//! same data, read back from its dir.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use raft_kv::kv::{self, ClientRequest, ClientResponse, ClientResult, KvStore};
use raft_kv::raft::{Message, NodeId, Outbox, RaftConfig, RaftNode, RequestId, Response};
use raft_kv::storage::FileStorage;
use tempfile::TempDir;

const MEMBERS: [NodeId; 3] = [1, 2, 3];

#[derive(Default)]
struct Network {
    /// (from, to, message), delivered in order
    in_flight: VecDeque<(NodeId, NodeId, Message)>,
    responses: BTreeMap<RequestId, ClientResult>,
}

struct NetworkOutbox {
    id: NodeId,
    network: Arc<Mutex<Network>>,
}

impl Outbox for NetworkOutbox {
    fn send(&mut self, to: NodeId, message: Message) {
        let mut network = self.network.lock().unwrap();
        network.in_flight.push_back((self.id, to, message));
    }

    fn respond(&mut self, request: RequestId, response: Response) {
        self.network
            .lock()
            .unwrap()
            .responses
            .insert(request, kv::from_raft(response));
    }
}

struct Cluster {
    dirs: BTreeMap<NodeId, TempDir>,
    nodes: BTreeMap<NodeId, RaftNode<KvStore>>,
    network: Arc<Mutex<Network>>,
    cut_off: BTreeSet<NodeId>,
    next_request: RequestId,
}

impl Cluster {
    fn new() -> Cluster {
        let mut cluster = Cluster {
            dirs: MEMBERS
                .iter()
                .map(|&id| (id, TempDir::new().unwrap()))
                .collect(),
            nodes: BTreeMap::new(),
            network: Arc::default(),
            cut_off: BTreeSet::new(),
            next_request: 1,
        };
        for id in MEMBERS {
            cluster.start(id);
        }
        cluster
    }

    fn start(&mut self, id: NodeId) {
        let mut config = RaftConfig::new(id, MEMBERS.to_vec());
        config.snapshot_threshold = 10;
        config.snapshot_chunk_bytes = 100;
        config.seed = id;
        let storage = FileStorage::open(self.dirs[&id].path()).unwrap();
        let outbox = NetworkOutbox {
            id,
            network: self.network.clone(),
        };
        let node = RaftNode::new(config, Box::new(storage), KvStore::new(), Box::new(outbox));
        self.nodes.insert(id, node);
    }

    /// Stop every node (releasing its dir) and start it again from its files.
    fn restart_all(&mut self) {
        self.nodes.clear();
        self.network.lock().unwrap().in_flight.clear();
        for id in MEMBERS {
            self.start(id);
        }
    }

    fn tick(&mut self) {
        for node in self.nodes.values_mut() {
            node.tick();
            node.end_turn();
        }
        loop {
            let next = self.network.lock().unwrap().in_flight.pop_front();
            let Some((from, to, message)) = next else {
                break;
            };
            if self.cut_off.contains(&from) || self.cut_off.contains(&to) {
                continue;
            }
            let node = self.nodes.get_mut(&to).unwrap();
            node.step(from, message);
            node.end_turn();
        }
    }

    fn run_until(&mut self, what: &str, mut done: impl FnMut(&Cluster) -> bool) {
        for _ in 0..2_000 {
            if done(self) {
                return;
            }
            self.tick();
        }
        panic!("not reached in 2000 ticks: {what}");
    }

    fn leader(&self) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.is_leader() && !self.cut_off.contains(&n.status().id))
            .map(|n| n.status().id)
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    fn elect(&mut self) -> NodeId {
        self.run_until("a leader", |c| c.leader().is_some());
        self.leader().unwrap()
    }

    /// Set every key through the leader, a few per batch, and wait for the answers.
    fn write(&mut self, keys: std::ops::Range<u32>) {
        for batch in keys.collect::<Vec<_>>().chunks(4) {
            let leader = self.elect();
            let requests: Vec<(RequestId, raft_kv::raft::Request)> = batch
                .iter()
                .map(|&k| {
                    self.next_request += 1;
                    let request = ClientRequest::Set {
                        key: format!("key-{k}"),
                        value: format!("value-{k}"),
                        client_id: 0,
                        sequence: 0,
                    };
                    (self.next_request, kv::to_raft(request).unwrap())
                })
                .collect();
            let ids: Vec<RequestId> = requests.iter().map(|(id, _)| *id).collect();
            let node = self.nodes.get_mut(&leader).unwrap();
            node.client_requests(requests);
            node.end_turn();
            self.run_until("the writes' answers", |c| {
                let network = c.network.lock().unwrap();
                ids.iter().all(|id| network.responses.contains_key(id))
            });
            let network = self.network.lock().unwrap();
            for id in &ids {
                assert_eq!(
                    network.responses[id],
                    Ok(ClientResponse::Set),
                    "request {id}"
                );
            }
        }
    }

    /// Wait until every node has applied all the leader has committed.
    fn catch_up(&mut self) {
        let leader = self.elect();
        let commit = self.nodes[&leader].status().commit_index;
        self.run_until("every node applies everything", |c| {
            c.nodes.values().all(|n| n.status().last_applied >= commit)
        });
    }

    fn assert_holds(&self, id: NodeId, keys: std::ops::Range<u32>) {
        let state_machine = self.nodes[&id].state_machine();
        for k in keys {
            assert_eq!(
                state_machine.get(&format!("key-{k}")),
                Some(format!("value-{k}").as_str()),
                "node {id}, key-{k}"
            );
        }
    }
}

#[test]
fn a_cluster_on_file_storage_keeps_its_data_across_restarts_and_snapshots() {
    let mut cluster = Cluster::new();
    cluster.write(0..12);

    // One follower misses the next writes, while the others compact their
    // logs past what it has (§7).
    let leader = cluster.elect();
    let laggard = MEMBERS.into_iter().find(|&id| id != leader).unwrap();
    cluster.cut_off.insert(laggard);
    cluster.write(12..40);
    let leader = cluster.elect();
    let laggard_last = cluster.nodes[&laggard].status().last_log_index;
    assert!(
        cluster.nodes[&leader].log().snapshot_index() > laggard_last,
        "the leader compacted away entries the laggard lacks"
    );

    // Every node stops and starts again from its files; the laggard then
    // needs the snapshot, which it stores through FileStorage::save_snapshot.
    cluster.restart_all();
    cluster.cut_off.clear();
    cluster.write(40..44);
    cluster.catch_up();
    for id in MEMBERS {
        cluster.assert_holds(id, 0..44);
    }
    assert!(cluster.nodes[&laggard].log().snapshot_index() > laggard_last);

    // And once more from disk, the laggard included.
    cluster.restart_all();
    cluster.write(44..46);
    cluster.catch_up();
    for id in MEMBERS {
        cluster.assert_holds(id, 0..46);
    }
}
