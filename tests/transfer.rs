//! Leadership transfer (dissertation §3.10; src/raft/transfer.rs): the
//! leader brings the target up to date, takes no new writes meanwhile, and
//! sends TimeoutNow; the target starts an election at once. A transfer that
//! does not happen within an election timeout is abandoned and writes are
//! taken again. The harness checks Figure 3's properties (one leader per
//! term among them) after every step. Deterministic: replay one seed with
//! `RAFT_SEED=N cargo test --release --test transfer NAME`.

use raft_kv::kv::{ClientError, ClientRequest, ClientResponse};
use raft_kv::raft::{NodeId, RequestError};
use raft_kv::sim::{seeds, Cluster, SimConfig};

fn set(key: &str, value: &str, client_id: u64, sequence: u64) -> ClientRequest {
    ClientRequest::Set {
        key: key.into(),
        value: value.into(),
        client_id,
        sequence,
    }
}

/// A cluster of `nodes` with a leader and one write committed everywhere.
fn running(seed: u64, nodes: usize, pre_vote: bool) -> (Cluster, NodeId) {
    let mut c = Cluster::new(SimConfig::new(nodes, seed).pre_vote(pre_vote));
    c.elect(300);
    assert_eq!(
        c.submit(set("k", "0", 1, 1), 300),
        Some(Ok(ClientResponse::Set))
    );
    let leader = c.converge(300);
    (c, leader)
}

fn follower(c: &Cluster, leader: NodeId, nth: usize) -> NodeId {
    c.ids()
        .into_iter()
        .filter(|&id| id != leader)
        .nth(nth)
        .unwrap()
}

#[test]
fn transfer_makes_the_target_leader_3_10() {
    for seed in seeds(10) {
        for pre_vote in [true, false] {
            let (mut c, leader) = running(seed, 5, pre_vote);
            let target = follower(&c, leader, (seed % 4) as usize);
            let term = c.node(leader).current_term();
            let id = c.transfer_leadership(leader, target);
            let done = c.run_until(100, |c| c.transfer_answer(id).is_some());
            assert!(done, "seed {seed}: the transfer was never answered");
            assert_eq!(c.transfer_answer(id), Some(&Ok(Vec::new())), "seed {seed}");
            // The target's election took about one round trip, not a timeout.
            let ok = c.run_until(10, |c| c.leader() == Some(target));
            assert!(ok, "seed {seed}: n{target} did not become leader at once");
            assert_eq!(c.node(target).current_term(), term + 1);
            assert_eq!(
                c.submit(set("k", "1", 1, 2), 300),
                Some(Ok(ClientResponse::Set))
            );
            c.converge(300);
        }
    }
}

/// A target that missed entries is sent them first; writes that arrive
/// meanwhile are refused with TransferInProgress (clients retry them), and
/// every entry the old leader acknowledged is in the new leader's log.
#[test]
fn a_target_behind_is_caught_up_first_3_10() {
    for seed in seeds(10) {
        let (mut c, leader) = running(seed, 3, true);
        let target = follower(&c, leader, 0);
        c.isolate(target);
        for sequence in 2..40 {
            let id = c.request(leader, set("k", &sequence.to_string(), 1, sequence));
            assert!(c.wait_response(id, 50).is_some_and(|r| r.is_ok()));
        }
        let last = c.node(leader).log().last_index();
        assert!(c.node(target).log().last_index() < last);
        c.reconnect(target);
        let id = c.transfer_leadership(leader, target);
        let refused = c.request(leader, set("other", "x", 2, 1));
        assert_eq!(
            c.response(refused),
            Some(&Err(ClientError::TransferInProgress { target })),
            "seed {seed}: a write during the transfer"
        );
        let done = c.run_until(200, |c| c.transfer_answer(id).is_some());
        assert!(
            done && c.transfer_answer(id) == Some(&Ok(Vec::new())),
            "seed {seed}"
        );
        assert!(c.run_until(20, |c| c.leader() == Some(target)));
        assert!(
            c.node(target).log().last_index() > last,
            "n{target} holds every entry and its no-op"
        );
        assert_eq!(
            c.submit(set("other", "x", 2, 1), 300),
            Some(Ok(ClientResponse::Set))
        );
        c.converge(300);
    }
}

/// A dead target: after an election timeout the transfer is abandoned,
/// the leader is still leader in the same term and takes writes again.
#[test]
fn a_dead_target_aborts_the_transfer_and_writes_resume_3_10() {
    for seed in seeds(10) {
        let (mut c, leader) = running(seed, 3, true);
        let target = follower(&c, leader, 1);
        let term = c.node(leader).current_term();
        c.crash(target);
        let id = c.transfer_leadership(leader, target);
        let max_timeout = SimConfig::new(3, seed).election_timeout_ticks.1;
        c.ticks(max_timeout - 1);
        assert_eq!(
            c.transfer_answer(id),
            None,
            "seed {seed}: aborted too early"
        );
        let refused = c.request(leader, set("k", "1", 1, 2));
        assert_eq!(
            c.response(refused),
            Some(&Err(ClientError::TransferInProgress { target }))
        );
        c.ticks(2);
        assert!(
            matches!(
                c.transfer_answer(id),
                Some(Err(RequestError::TransferFailed(_)))
            ),
            "seed {seed}: {:?}",
            c.transfer_answer(id)
        );
        assert_eq!(c.leader(), Some(leader));
        assert_eq!(c.node(leader).current_term(), term);
        let id = c.request(leader, set("k", "1", 1, 2));
        assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
        c.restart(target);
        c.converge(300);
    }
}

/// What no transfer can start: on a follower (NotLeader, naming the
/// leader), to a node that is not a member, a second one while one runs.
#[test]
fn transfers_that_cannot_start_are_refused_3_10() {
    for seed in seeds(3) {
        let (mut c, leader) = running(seed, 3, true);
        let (a, b) = (follower(&c, leader, 0), follower(&c, leader, 1));
        let id = c.transfer_leadership(a, b);
        assert_eq!(
            c.transfer_answer(id),
            Some(&Err(RequestError::NotLeader {
                leader: Some(leader)
            }))
        );
        let id = c.transfer_leadership(leader, 9);
        assert!(matches!(
            c.transfer_answer(id),
            Some(Err(RequestError::TransferFailed(_)))
        ));
        c.isolate(a);
        let first = c.transfer_leadership(leader, a);
        let second = c.transfer_leadership(leader, b);
        assert_eq!(
            c.transfer_answer(second),
            Some(&Err(RequestError::TransferInProgress { target: a }))
        );
        assert!(c.run_until(100, |c| c.transfer_answer(first).is_some()));
        let id = c.transfer_leadership(leader, leader);
        assert_eq!(
            c.transfer_answer(id),
            Some(&Ok(Vec::new())),
            "to itself: done"
        );
        c.heal();
        c.converge(300);
    }
}

/// Transfers asked for again and again, to random targets, while messages
/// are lost and delayed and nodes crash: never two leaders in a term (the
/// harness checks), nothing acknowledged lost, and the cluster still serves.
#[test]
fn transfers_under_faults_keep_safety_3_10() {
    for seed in seeds(10) {
        let config = SimConfig::new(5, seed).pre_vote(true).unreliable(0.1, 3);
        let mut c = Cluster::new(config);
        c.elect(500);
        for round in 0..20u64 {
            if let Some(leader) = c.leader() {
                let target = (seed + round) % 5 + 1;
                c.transfer_leadership(leader, target);
            }
            let _ = c.submit(set("k", &round.to_string(), 1, round + 1), 100);
            if round % 7 == 3 {
                let victim = (seed + round) % 5 + 1;
                c.crash(victim);
                c.ticks(30);
                c.restart(victim);
            }
            c.ticks(10);
        }
        c.set_unreliable(0.0, 0);
        assert_eq!(
            c.submit(set("end", "1", 2, 1), 1000),
            Some(Ok(ClientResponse::Set)),
            "seed {seed}"
        );
        c.converge(1000);
    }
}
