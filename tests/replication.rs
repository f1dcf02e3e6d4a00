//! Milestone 2: log replication and commit (§5.3, §5.4). Deterministic:
//! replay one seed with `RAFT_SEED=N cargo test --test replication NAME`.

use raft_kv::raft::{ClientRequest, ClientResponse};
use raft_kv::sim::{seeds, Cluster, SimConfig};

fn set(key: &str, value: &str) -> ClientRequest {
    ClientRequest::Set {
        key: key.into(),
        value: value.into(),
        client_id: 0,
        sequence: 0,
    }
}

/// §5.3: the leader replicates an entry, commits it once a majority stores
/// it, and every node applies it.
#[test]
fn basic_agreement_5_3() {
    for seed in seeds(20) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let leader = c.elect(200);
        for i in 0..10 {
            let id = c.request(leader, set(&format!("k{i}"), &format!("v{i}")));
            assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
        }
        c.ticks(20);
        let commit = c.node(leader).commit_index();
        assert_eq!(commit, 11, "10 writes and the leader's no-op");
        for id in c.ids() {
            assert_eq!(
                c.node(id).last_applied(),
                commit,
                "n{id} did not apply everything"
            );
            assert_eq!(c.node(id).state_machine().get("k9"), Some("v9"));
        }
    }
}

/// §5.3: all writes of a batch cost one fsync on the leader (group commit).
#[test]
fn batch_is_one_append_and_one_fsync_5_3() {
    let mut c = Cluster::new(SimConfig::new(3, 7));
    let leader = c.elect(200);
    c.ticks(10);
    let before = c.disk(leader).fsyncs();
    let ids = c.requests(
        leader,
        (0..100).map(|i| set(&format!("k{i}"), "v")).collect(),
    );
    assert_eq!(
        c.disk(leader).fsyncs() - before,
        1,
        "one fsync for the whole batch"
    );
    for id in ids {
        assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
    }
}
