//! Lease-based reads (dissertation §6.4.1; src/raft/lease.rs), an option
//! that is off by default: what it buys — a linearizable read at the
//! leader answered at once, with no heartbeat round — and what it costs:
//! it is safe only while no follower's clock runs faster than the
//! leader's by more than the lease leaves room for. Deterministic: replay
//! one seed with `RAFT_SEED=N cargo test --release --test lease NAME`.

use raft_kv::kv::{ClientRequest, ClientResponse};
use raft_kv::raft::NodeId;
use raft_kv::sim::{seeds, Cluster, SimConfig};

fn set(key: &str, value: &str, client_id: u64, sequence: u64) -> ClientRequest {
    ClientRequest::Set {
        key: key.into(),
        value: value.into(),
        client_id,
        sequence,
    }
}

fn get(key: &str) -> ClientRequest {
    ClientRequest::Get {
        key: key.into(),
        linearizable: true,
    }
}

/// Three nodes, §6's vote rule on (a lease needs it), a lease of
/// `lease_ticks` (0: off) against a minimum election timeout of 15 ticks;
/// "k" = "1" committed everywhere.
fn cluster(seed: u64, lease_ticks: u64) -> (Cluster, NodeId) {
    let mut config = SimConfig::new(3, seed);
    config.ignore_votes_while_led = true;
    config.lease_ticks = lease_ticks;
    let mut c = Cluster::new(config);
    c.elect(300);
    assert_eq!(
        c.submit(set("k", "1", 1, 1), 300),
        Some(Ok(ClientResponse::Set))
    );
    let leader = c.converge(300);
    (c, leader)
}

/// With a lease, reads at the leader are answered in the turn they arrive,
/// and cost no message; without, they wait for a heartbeat round.
#[test]
fn a_lease_answers_reads_without_a_round_6_4_1() {
    for seed in seeds(6) {
        for lease in [0, 12] {
            let (mut c, leader) = cluster(seed, lease);
            if lease > 0 {
                assert!(
                    c.run_until(20, |c| c.node(leader).lease_holds()),
                    "seed {seed}"
                );
            }
            let sent = c.sent_by(leader, "AppendEntries");
            let reads: Vec<_> = (0..20).map(|_| c.request(leader, get("k"))).collect();
            let answered = reads.iter().filter(|&&r| c.response(r).is_some()).count();
            let expected = if lease > 0 { reads.len() } else { 0 };
            assert_eq!(answered, expected, "seed {seed}, lease {lease}");
            assert_eq!(
                c.sent_by(leader, "AppendEntries") > sent,
                lease == 0,
                "seed {seed}, lease {lease}: a round was sent"
            );
            for read in reads {
                let value = c.wait_response(read, 50);
                assert_eq!(value, Some(Ok(ClientResponse::Value(Some("1".into())))));
            }
        }
    }
}

/// The lease assumes the followers' clocks do not run fast. Cut the leader
/// off just after it renewed its lease: with clocks at one rate the others
/// cannot elect a new leader before the lease ends, so the old leader
/// never answers a read it should not; with the followers' clocks four
/// times as fast, they elect one and commit a write while the old leader,
/// by its own clock, still holds its lease — and it answers a stale read,
/// which the history checker reports. ReadIndex, with no lease, is safe
/// whatever the clocks.
#[test]
fn a_clock_that_runs_too_fast_breaks_the_lease_6_4_1() {
    let mut broken = 0;
    for seed in seeds(8) {
        for (lease, rate) in [(14, 1), (14, 4), (0, 4)] {
            let (mut c, old) = cluster(seed, lease);
            let others: Vec<NodeId> = c.ids().into_iter().filter(|&id| id != old).collect();
            for &id in &others {
                c.set_tick_rate(id, rate);
            }
            let renewed = |c: &Cluster| lease == 0 || c.node(old).lease_holds();
            assert!(c.run_until(20, renewed), "seed {seed}");
            c.partition(&[&[old], &others]);
            let elected = c.run_until(100, |c| others.iter().any(|&id| c.node(id).is_leader()));
            assert!(elected, "seed {seed}");
            let new = c.leader().unwrap();
            let write = c.request(new, set("k", "2", 2, 1));
            assert!(c.wait_response(write, 50).is_some(), "seed {seed}");
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                c.request(old, get("k"));
                c.ticks(10);
            }));
            let Err(panic) = outcome else { continue };
            let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(
                (lease, rate) == (14, 4) && text.contains("Linearizable read"),
                "seed {seed}, lease {lease}, clock {rate}x: {text}"
            );
            broken += 1;
        }
    }
    assert!(broken > 0, "no seed showed a fast clock breaking the lease");
}
