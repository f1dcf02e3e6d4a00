//! The Raft core on FileStorage: the simulated cluster of the other tests,
//! on three data dirs of real files ([`FileDisks`]), driven tick by tick
//! (no clock, no sockets). Writes made while a follower was cut off, a
//! restart of every node, and an InstallSnapshot to the laggard must leave
//! every node with the same data, read back from its dir.

use raft_kv::kv::{ClientRequest, ClientResponse};
use raft_kv::raft::NodeId;
use raft_kv::sim::{Cluster, FileDisks, SimConfig};
use tempfile::TempDir;

/// Set every key through the leader, a few per batch, and wait for the answers.
fn write(c: &mut Cluster, keys: std::ops::Range<u32>) {
    for batch in keys.collect::<Vec<_>>().chunks(4) {
        let leader = c.elect(2_000);
        let requests = batch
            .iter()
            .map(|&k| ClientRequest::Set {
                key: format!("key-{k}"),
                value: format!("value-{k}"),
                client_id: 0,
                sequence: 0,
            })
            .collect();
        for id in c.requests(leader, requests) {
            assert_eq!(
                c.wait_response(id, 2_000),
                Some(Ok(ClientResponse::Set)),
                "request {id}"
            );
        }
    }
}

/// Stop every node (releasing its dir) and start it again from its files.
fn restart_all(c: &mut Cluster) {
    for id in c.ids() {
        c.crash(id);
    }
    for id in c.ids() {
        c.restart(id);
    }
}

fn assert_holds(c: &Cluster, id: NodeId, keys: std::ops::Range<u32>) {
    let state_machine = c.node(id).state_machine();
    for k in keys {
        assert_eq!(
            state_machine.get(&format!("key-{k}")),
            Some(format!("value-{k}").as_str()),
            "node {id}, key-{k}"
        );
    }
}

#[test]
fn a_cluster_on_file_storage_keeps_its_data_across_restarts_and_snapshots() {
    let dir = TempDir::new().unwrap();
    let config = SimConfig::new(3, 1).snapshot_log_bytes(256, 100);
    let mut c = Cluster::with_storage(config, FileDisks::new(dir.path()));
    write(&mut c, 0..12);

    // One follower misses the next writes, while the others compact their
    // logs past what it has (§7).
    let leader = c.elect(2_000);
    let laggard = c.ids().into_iter().find(|&id| id != leader).unwrap();
    c.isolate(laggard);
    write(&mut c, 12..40);
    let leader = c.elect(2_000);
    // The leader's snapshots are written in the background.
    assert!(c.run_until(100, |c| c.node(leader).snapshot_in_progress().is_none()));
    let laggard_last = c.node(laggard).log().last_index();
    assert!(
        c.node(leader).log().snapshot_index() > laggard_last,
        "the leader compacted away entries the laggard lacks"
    );

    // Every node stops and starts again from its files; the laggard then
    // needs the snapshot, which it stores through FileStorage::save_snapshot.
    restart_all(&mut c);
    c.reconnect(laggard);
    write(&mut c, 40..44);
    c.converge(2_000);
    for id in c.ids() {
        assert_holds(&c, id, 0..44);
    }
    assert!(c.node(laggard).log().snapshot_index() > laggard_last);

    // And once more from disk, the laggard included.
    restart_all(&mut c);
    write(&mut c, 44..46);
    c.converge(2_000);
    for id in c.ids() {
        assert_holds(&c, id, 0..46);
    }
}
