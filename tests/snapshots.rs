//! Milestone 4: log compaction (§7) and InstallSnapshot (Figure 13).
//! Deterministic: replay one seed with
//! `RAFT_SEED=N cargo test --release --test snapshots NAME`.

use raft_kv::kv::KvStore;
use raft_kv::kv::{ClientRequest, ClientResponse};
use raft_kv::raft::{InstallSnapshot, NodeId, Term};
use raft_kv::sim::{seeds, Cluster, EventKind, SimConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Snapshot when the log holds more than this many bytes (and more than the
/// last snapshot): about 20 of the entries below.
const LOG_BYTES: usize = 512;
/// Bytes of snapshot per InstallSnapshot message: small, so a transfer takes many.
const CHUNK: usize = 64;

fn config(nodes: usize, seed: u64) -> SimConfig {
    SimConfig::new(nodes, seed).snapshot_log_bytes(LOG_BYTES, CHUNK)
}

fn set(key: &str, value: &str, client_id: u64, sequence: u64) -> ClientRequest {
    ClientRequest::Set {
        key: key.into(),
        value: value.into(),
        client_id,
        sequence,
    }
}

/// Write `count` keys `{prefix}{i}` = `v{i}` through the leader; all must be acknowledged.
fn write_keys(c: &mut Cluster, prefix: &str, count: u64, client_id: u64) {
    for i in 0..count {
        let request = set(&format!("{prefix}{i}"), &format!("v{i}"), client_id, i + 1);
        assert_eq!(
            c.submit(request, 1000),
            Some(Ok(ClientResponse::Set)),
            "write {prefix}{i} never acknowledged"
        );
    }
}

/// InstallSnapshot chunks sent (and not dropped) to node `to` after event `from`.
fn chunks_sent_to(c: &Cluster, to: NodeId, from: usize, term: Term) -> usize {
    let kind = format!("InstallSnapshot term={term} ");
    c.events()[from..]
        .iter()
        .filter(|e| {
            matches!(&e.kind, EventKind::Send { to: t, what, dropped: false, .. }
                if *t == to && what.starts_with(&kind))
        })
        .count()
}

/// The size of `leader`'s snapshot in chunks.
fn snapshot_chunks(c: &Cluster, leader: NodeId) -> usize {
    let snapshot = c
        .node(leader)
        .log()
        .snapshot()
        .expect("the leader has compacted");
    snapshot.data.len().div_ceil(CHUNK)
}

/// §7: "each server takes snapshots independently": during a long run of
/// writes every node's log — in memory and on its disk — stays bounded by
/// the larger of LOG_BYTES and the last snapshot (up to half as much again
/// to stagger the members, plus what is appended while a snapshot is
/// written), and compaction changes no answer.
#[test]
fn log_stays_bounded_7() {
    for seed in seeds(10) {
        let mut c = Cluster::new(config(3, seed));
        let leader = c.elect(200);
        let (mut longest, mut largest_snapshot) = (0, 0);
        for i in 0..300u64 {
            let id = c.request(
                leader,
                set(&format!("k{}", i % 50), &i.to_string(), 1, i + 1),
            );
            assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
            for id in c.ids() {
                let log = c.node(id).log();
                assert_eq!(log.len(), c.disk(id).durable_entries().len());
                longest = longest.max(log.bytes());
                let snapshot = log.snapshot().map_or(0, |s| s.data.len());
                largest_snapshot = largest_snapshot.max(snapshot);
            }
        }
        let bound = 2 * LOG_BYTES.max(largest_snapshot) + LOG_BYTES;
        assert!(
            longest <= bound,
            "a log grew to {longest} bytes; the bound is {bound}"
        );
        let leader = c.converge(100);
        for id in c.ids() {
            assert!(
                c.node(id).log().snapshot_index() > 250,
                "n{id} never compacted"
            );
        }
        let state_machine = c.node(leader).state_machine();
        assert_eq!(state_machine.len(), 50);
        assert_eq!(state_machine.get("k49"), Some("299"));
    }
}

/// §7: "the leader must occasionally send snapshots to followers that lag
/// behind". A follower cut off while the leader compacts past everything it
/// has catches up through InstallSnapshot — in many chunks (Figure 13
/// offset/done), not one per missed entry, and without resending the whole
/// snapshot for each chunk.
#[test]
fn lagging_follower_installs_snapshot_in_chunks_figure_13() {
    for seed in seeds(10) {
        let mut c = Cluster::new(config(3, seed));
        let leader = c.elect(200);
        let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
        write_keys(&mut c, "a", 5, 1);
        c.converge(50);
        c.isolate(follower);
        write_keys(&mut c, "b", 100, 2);
        assert!(c.node(leader).log().snapshot_index() > c.node(follower).log().last_index());

        let mark = c.events().len();
        c.reconnect(follower);
        let leader = c.converge(500);
        let chunks = snapshot_chunks(&c, leader);
        // A chunk of an earlier term may have met the follower's higher
        // term (it held elections while cut off); the count is the final
        // leader's.
        let sent = chunks_sent_to(&c, follower, mark, c.node(leader).current_term());
        assert!(
            chunks >= 3,
            "the snapshot is only {chunks} chunks: test too small"
        );
        assert_eq!(
            sent, chunks,
            "{sent} InstallSnapshot messages for a snapshot of {chunks} chunks on a reliable network"
        );
        assert!(c.node(follower).log().snapshot_index() > 0);
        assert_eq!(c.node(follower).state_machine().get("b99"), Some("v99"));
    }
}

/// One chunk in flight per follower: on a network that loses messages, a
/// chunk is sent again only when it or its answer was lost — never once per
/// heartbeat, never a second chain of chunks started by a late reply. The
/// transfer costs at most its chunks plus one resend per message lost.
#[test]
fn one_snapshot_chunk_in_flight_figure_13() {
    for seed in seeds(20) {
        let mut config = config(3, seed);
        // Elections would start transfers of other snapshots: keep one leader.
        config.election_timeout_ticks = (200, 400);
        let mut c = Cluster::new(config);
        let leader = c.elect(1000);
        let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
        c.isolate(follower);
        write_keys(&mut c, "b", 100, 2);
        let term = c.node(leader).current_term();
        // A snapshot that becomes durable mid-transfer starts the transfer
        // again, with it: let the last one finish first.
        assert!(c.run_until(100, |c| c.node(leader).snapshot_in_progress().is_none()));

        let mark = c.events().len();
        c.set_unreliable(0.2, 2);
        c.reconnect(follower);
        assert!(c.run_until(3000, |c| c.node(follower).log().snapshot_index() > 0));
        assert_eq!(c.node(leader).current_term(), term, "the leader changed");
        let chunks = snapshot_chunks(&c, leader);
        let is_transfer = |what: &str| what.starts_with("InstallSnapshot");
        let mut sent = 0;
        let mut lost = 0;
        for event in &c.events()[mark..] {
            match &event.kind {
                EventKind::Send { what, dropped, .. } if is_transfer(what) => {
                    sent += what.starts_with("InstallSnapshot ") as usize;
                    lost += *dropped as usize;
                }
                EventKind::Lost { what, .. } if is_transfer(what) => lost += 1,
                _ => {}
            }
        }
        assert!(
            sent <= chunks + lost,
            "{sent} InstallSnapshot messages for {chunks} chunks with {lost} messages lost"
        );
    }
}

/// The same on a network that drops, delays and reorders messages: chunks
/// arrive late, twice or never; the follower still installs exactly the
/// leader's snapshot (Figure 13 steps 2–5) and catches up.
#[test]
fn install_snapshot_unreliable_figure_13() {
    for seed in seeds(50) {
        let mut c = Cluster::new(config(3, seed).unreliable(0.1, 3));
        c.elect(300);
        write_keys(&mut c, "a", 5, 1);
        let leader = c.leader().unwrap();
        let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
        c.isolate(follower);
        write_keys(&mut c, "b", 60, 2);
        c.reconnect(follower);
        write_keys(&mut c, "c", 5, 3);
        c.set_unreliable(0.0, 0);
        c.converge(1000);
        assert_eq!(c.node(follower).state_machine().get("b59"), Some("v59"));
    }
}

/// Figure 13 step 2 ("create new snapshot file if first chunk"): a follower
/// that crashes in the middle of a transfer loses the chunks it held, and
/// the leader starts over; a leader that crashes in the middle is replaced by
/// one that sends its own snapshot. Either way the follower ends up equal.
#[test]
fn crash_during_snapshot_transfer_figure_13() {
    for seed in seeds(20) {
        for crash_leader in [false, true] {
            let mut c = Cluster::new(config(5, seed));
            let leader = c.elect(200);
            let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
            // Down rather than cut off, so that its term does not grow and
            // disrupt the leader when it returns.
            c.crash(follower);
            write_keys(&mut c, "b", 100, 1);
            let mark = c.events().len();
            // Delays spread the transfer over many ticks (with none, all its
            // round trips fit in one).
            c.set_unreliable(0.0, 2);
            c.restart(follower);
            let chunks_delivered = |c: &Cluster| {
                c.events()[mark..]
                    .iter()
                    .filter(|e| {
                        matches!(&e.kind, EventKind::Deliver { to, what, .. }
                            if *to == follower && what.starts_with("InstallSnapshot "))
                    })
                    .count()
            };
            let half = snapshot_chunks(&c, leader) / 2;
            let ok = c.run_until(200, |c| chunks_delivered(c) >= half);
            assert!(ok, "the transfer did not start");
            assert!(
                c.node(follower).log().snapshot_index() == 0,
                "already installed"
            );
            let victim = if crash_leader { leader } else { follower };
            c.crash(victim);
            c.ticks(20);
            c.restart(victim);
            c.set_unreliable(0.0, 0);
            write_keys(&mut c, "c", 3, 2);
            c.converge(500);
            assert_eq!(c.node(follower).state_machine().get("b99"), Some("v99"));
            assert!(c.node(follower).log().snapshot_index() > 0);
        }
    }
}

/// Every node crashes while clients write, and restarts from its snapshot
/// plus the log after it: nothing acknowledged is lost, and every node
/// applied the same commands in the same order.
#[test]
fn all_crash_restart_from_snapshot_and_log_7() {
    for seed in seeds(50) {
        let mut c = Cluster::new(config(5, seed));
        let mut rng = StdRng::seed_from_u64(seed);
        let mut acked = Vec::new();
        let mut sequence = 0;
        for _ in 0..4 {
            let leader = c.elect(300);
            let batch: Vec<_> = (0..rng.gen_range(10..40))
                .map(|_| {
                    sequence += 1;
                    let key = format!("k{sequence}");
                    (key.clone(), set(&key, "v", 1, sequence))
                })
                .collect();
            let keys: Vec<_> = batch.iter().map(|(k, _)| k.clone()).collect();
            let ids = c.requests(leader, batch.into_iter().map(|(_, r)| r).collect());
            // Long enough, sometimes, for a snapshot to be written, or
            // written and compacted; the crash loses the others.
            c.ticks(rng.gen_range(0..25));
            for (id, key) in ids.into_iter().zip(keys) {
                if let Some(Ok(_)) = c.response(id) {
                    acked.push(key);
                }
            }
            for id in c.ids() {
                c.crash(id);
            }
            for id in c.ids() {
                c.restart(id);
                let n = c.node(id);
                assert_eq!(n.last_applied(), n.log().snapshot_index());
            }
        }
        assert!(
            c.ids()
                .iter()
                .any(|&id| c.node(id).log().snapshot_index() > 0),
            "no node restarted from a snapshot"
        );
        c.elect(300);
        sequence += 1;
        assert_eq!(
            c.submit(set("last", "v", 1, sequence), 500),
            Some(Ok(ClientResponse::Set))
        );
        let leader = c.converge(300);
        for key in &acked {
            assert_eq!(
                c.node(leader).state_machine().get(key),
                Some("v"),
                "acknowledged {key} lost"
            );
        }
    }
}

/// A restarted node starts from its snapshot (Figure 13 step 8, at
/// recovery): commit_index and last_applied begin at the snapshot's last
/// included index, and the state machine is the snapshot's, before any
/// message arrives.
#[test]
fn restarted_node_starts_from_its_snapshot_7() {
    for seed in seeds(10) {
        let mut c = Cluster::new(config(3, seed));
        c.elect(200);
        write_keys(&mut c, "k", 50, 1);
        let leader = c.converge(100);
        let node = c.ids().into_iter().find(|&i| i != leader).unwrap();
        let snapshot = c.disk(node).durable_snapshot().expect("a snapshot on disk");
        assert!(snapshot.last_included_index > 0);
        c.isolate(node);
        c.crash(node);
        c.restart(node);
        let n = c.node(node);
        assert_eq!(n.log().snapshot_index(), snapshot.last_included_index);
        assert_eq!(n.last_applied(), snapshot.last_included_index);
        assert_eq!(n.commit_index(), snapshot.last_included_index);
        let expected = KvStore::restore(&snapshot.data).unwrap();
        assert_eq!(n.state_machine(), &expected);
        assert!(
            expected.len() as u64 >= snapshot.last_included_index - 2,
            "the snapshot holds the writes it covers"
        );
        c.reconnect(node);
        c.converge(200);
    }
}

/// Figure 13 receiver steps 2–4: a chunk is written only where it continues
/// what the follower holds ("write data into snapshot file at given
/// offset"); one that skips ahead or repeats — reordered or duplicated on the
/// network — is not, and the reply says where to resume. A first chunk sent
/// again keeps what has arrived; the first chunk of another snapshot starts
/// the file over. What is installed is exactly the leader's snapshot.
#[test]
fn chunks_written_only_at_their_offset_figure_13() {
    let mut c = Cluster::new(config(3, 1));
    let leader = c.elect(200);
    let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
    c.crash(follower);
    write_keys(&mut c, "k", 60, 1);
    let snapshot = c.node(leader).log().snapshot().unwrap().clone();
    let chunks = snapshot.data.len().div_ceil(CHUNK);
    assert!(chunks >= 4);
    c.restart(follower);
    c.isolate(follower);

    let term = c.node(leader).current_term();
    let chunk = |i: usize| {
        let start = i * CHUNK;
        let end = (start + CHUNK).min(snapshot.data.len());
        InstallSnapshot {
            term,
            leader_id: leader,
            last_included_index: snapshot.last_included_index,
            last_included_term: snapshot.last_included_term,
            offset: start as u64,
            data: snapshot.data[start..end].to_vec(),
            done: end == snapshot.data.len(),
            configuration: snapshot.configuration.clone(),
        }
    };
    let send = |c: &mut Cluster, i| {
        let reply = c.with_node(follower, |n| n.handle_install_snapshot(chunk(i)));
        assert_eq!(reply.term, term);
        (reply.next_offset as usize, reply.done)
    };
    assert_eq!(send(&mut c, 0), (CHUNK, false));
    assert_eq!(
        send(&mut c, 2),
        (CHUNK, false),
        "a chunk that skips ahead was written"
    );
    assert_eq!(send(&mut c, 1), (2 * CHUNK, false));
    assert_eq!(
        send(&mut c, 1),
        (2 * CHUNK, false),
        "a repeated chunk was written twice"
    );
    assert_eq!(
        send(&mut c, 0),
        (2 * CHUNK, false),
        "the first chunk sent again threw away what had arrived"
    );
    let other = InstallSnapshot {
        last_included_index: snapshot.last_included_index + 1,
        ..chunk(0)
    };
    let reply = c.with_node(follower, |n| n.handle_install_snapshot(other));
    assert_eq!(reply.next_offset, CHUNK as u64);
    assert_eq!(send(&mut c, 2), (0, false), "another snapshot had started");
    assert_eq!(
        send(&mut c, 0),
        (CHUNK, false),
        "its first chunk starts over"
    );
    for i in 1..chunks - 1 {
        assert_eq!(send(&mut c, i), ((i + 1) * CHUNK, false));
    }
    assert_eq!(send(&mut c, chunks - 1), (snapshot.data.len(), true));

    let n = c.node(follower);
    assert_eq!(n.log().snapshot(), Some(&snapshot));
    assert_eq!(c.disk(follower).durable_snapshot(), Some(snapshot.clone()));
    assert_eq!(n.last_applied(), snapshot.last_included_index);
    assert_eq!(
        n.state_machine(),
        &KvStore::restore(&snapshot.data).unwrap()
    );
}

/// Write keys `{prefix}{i}` one at a time through the leader until `node`
/// has a snapshot of its own in progress; the keys written, all
/// acknowledged.
fn write_until_snapshot_starts(
    c: &mut Cluster,
    node: NodeId,
    prefix: &str,
    client_id: u64,
) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..10_000u64 {
        let key = format!("{prefix}{i}");
        let request = set(&key, &format!("v{i}"), client_id, i + 1);
        assert_eq!(c.submit(request, 1000), Some(Ok(ClientResponse::Set)));
        keys.push(key);
        if c.node(node).snapshot_in_progress().is_some() {
            return keys;
        }
    }
    panic!("n{node} never started a snapshot");
}

/// Every key in `keys` is in every node's state machine.
fn all_hold(c: &Cluster, keys: &[String]) {
    for id in c.ids() {
        for key in keys {
            assert!(
                c.node(id).state_machine().get(key).is_some(),
                "n{id} lost acknowledged {key}"
            );
        }
    }
}

/// §7: the log keeps every entry until the snapshot that covers them is
/// durable. A node that crashes while its snapshot is being written —
/// before the write, or after it but before the node heard of it — comes
/// back with the old snapshot and the whole log, or the new snapshot and
/// the entries after it, and nothing acknowledged is lost. (The harness
/// checks after every step that no node compacts past its durable snapshot.)
#[test]
fn crash_while_a_snapshot_is_written_7() {
    let mut crashed_after_the_write = 0;
    for seed in seeds(20) {
        let mut config = config(3, seed);
        config.max_snapshot_write_ticks = 30;
        let mut c = Cluster::new(config);
        let leader = c.elect(200);
        let mut acked = write_until_snapshot_starts(&mut c, leader, "a", 21);
        let index = c.node(leader).snapshot_in_progress().unwrap();
        let before = c.node(leader).log().snapshot_index();
        assert!(before < index, "compacted before the snapshot was durable");
        let durable = |c: &Cluster| {
            let snapshot = c.disk(leader).durable_snapshot();
            snapshot.map_or(0, |s| s.last_included_index)
        };
        // Either at once, or once the file is durable but not yet reported.
        if seed % 2 == 0 {
            c.run_until(60, |c| {
                durable(c) == index || c.node(leader).snapshot_in_progress().is_none()
            });
        }
        let on_disk = durable(&c);
        assert!(on_disk == before || on_disk == index);
        if on_disk == index && c.node(leader).snapshot_in_progress().is_some() {
            crashed_after_the_write += 1;
        }
        c.crash(leader);
        c.restart(leader);
        let n = c.node(leader);
        assert_eq!(n.snapshot_in_progress(), None);
        assert_eq!(n.log().snapshot_index(), on_disk);
        assert!(n.log().last_index() >= index, "entries lost in the crash");
        acked.extend(write_until_snapshot_starts(&mut c, leader, "b", 22));
        c.converge(500);
        all_hold(&c, &acked);
    }
    assert!(
        crashed_after_the_write > 0,
        "no crash between write and report"
    );
}

/// A snapshot started by a leader that loses office before it is durable
/// still completes and compacts the log: it covers applied (committed)
/// entries only, which no later leader can change (§5.4). Meanwhile the
/// new leader's own snapshots and the old one's are independent (§7).
#[test]
fn a_snapshot_completes_after_its_leader_lost_office_7() {
    for seed in seeds(20) {
        let mut config = config(3, seed);
        config.max_snapshot_write_ticks = 60;
        let mut c = Cluster::new(config);
        let old = c.elect(200);
        let mut acked = write_until_snapshot_starts(&mut c, old, "a", 23);
        let index = c.node(old).snapshot_in_progress().unwrap();
        let term = c.node(old).current_term();
        c.isolate(old);
        let ok = c.run_until(300, |c| {
            c.leader()
                .is_some_and(|l| l != old && c.node(l).current_term() > term)
        });
        assert!(ok, "no new leader");
        acked.extend(write_keys_to(&mut c, "b", 20));
        c.reconnect(old);
        assert!(c.run_until(300, |c| c.node(old).snapshot_in_progress().is_none()));
        assert!(c.node(old).log().snapshot_index() >= index);
        c.converge(500);
        assert!(!c.node(old).is_leader() || c.node(old).current_term() > term);
        all_hold(&c, &acked);
    }
}

/// Write `count` keys through whoever leads; the keys.
fn write_keys_to(c: &mut Cluster, prefix: &str, count: u64) -> Vec<String> {
    write_keys(c, prefix, count, 9);
    (0..count).map(|i| format!("{prefix}{i}")).collect()
}

/// §7, "the leader must occasionally send snapshots to followers that lag
/// behind": while a newer snapshot is still being written, the leader sends
/// its latest durable one — and the follower, caught up from it, keeps up
/// through AppendEntries and the leader's next snapshot.
#[test]
fn lagging_follower_gets_the_durable_snapshot_while_another_is_written_figure_13() {
    let mut while_writing = 0;
    for seed in seeds(20) {
        let mut config = config(3, seed);
        config.max_snapshot_write_ticks = 200;
        let mut c = Cluster::new(config);
        let leader = c.elect(200);
        let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
        // Down rather than cut off, so that its term does not grow and
        // disrupt the leader when it returns.
        c.crash(follower);
        let mut acked = write_until_snapshot_starts(&mut c, leader, "a", 24);
        assert!(c.run_until(500, |c| c.node(leader).snapshot_in_progress().is_none()));
        acked.extend(write_until_snapshot_starts(&mut c, leader, "b", 25));
        let durable = c.node(leader).log().snapshot_index();
        let writing = c.node(leader).snapshot_in_progress().unwrap();
        assert!(durable > 0 && durable < writing);
        c.restart(follower);
        assert!(c.run_until(300, |c| c.node(follower).log().snapshot_index() > 0));
        if c.node(leader).snapshot_in_progress() == Some(writing) {
            assert_eq!(c.node(follower).log().snapshot_index(), durable);
            while_writing += 1;
        }
        acked.extend(write_keys_to(&mut c, "c", 10));
        c.converge(1000);
        all_hold(&c, &acked);
    }
    assert!(
        while_writing > 0,
        "every snapshot was durable before the transfer"
    );
}
