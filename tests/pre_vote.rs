//! Pre-vote (dissertation §9.6; src/raft/pre_vote.rs). A server cut off by a
//! partition keeps timing out. Without pre-vote each timeout is an election
//! in a new term, and on its return that term deposes the healthy leader:
//! the term rises and every request waiting on the leader fails. With
//! pre-vote it first asks, nobody who hears from the leader says yes, and
//! its term stays where it was. The same scenarios run both ways.
//! Deterministic: replay one seed with
//! `RAFT_SEED=N cargo test --release --test pre_vote NAME`.

use raft_kv::kv::{ClientError, ClientRequest, ClientResponse};
use raft_kv::raft::{Message, NodeId, PreVote, Role};
use raft_kv::sim::{seeds, Cluster, SimConfig};

fn set(key: &str, value: &str, client_id: u64, sequence: u64) -> ClientRequest {
    ClientRequest::Set {
        key: key.into(),
        value: value.into(),
        client_id,
        sequence,
    }
}

/// Three nodes, one write committed everywhere, then follower x cut off for
/// ten election timeouts while the other two carry on; returns (cluster,
/// leader, x, the other follower, the leader's term).
fn partitioned_follower(seed: u64, pre_vote: bool) -> (Cluster, NodeId, NodeId, NodeId, u64) {
    let config = SimConfig::new(3, seed).pre_vote(pre_vote);
    let max_timeout = config.election_timeout_ticks.1;
    let mut c = Cluster::new(config);
    c.elect(300);
    assert_eq!(
        c.submit(set("k", "1", 1, 1), 300),
        Some(Ok(ClientResponse::Set))
    );
    let leader = c.converge(200);
    let term = c.node(leader).current_term();
    let mut followers = c.ids().into_iter().filter(|&id| id != leader);
    let (x, other) = (followers.next().unwrap(), followers.next().unwrap());
    c.isolate(x);
    c.ticks(10 * max_timeout);
    assert_eq!(
        c.leader(),
        Some(leader),
        "seed {seed}: the majority kept its leader"
    );
    (c, leader, x, other, term)
}

/// x returns while the other follower is the one cut off, and a write
/// waits on the leader, which now needs x to commit it.
fn return_with_a_waiting_write(seed: u64, pre_vote: bool) -> (Cluster, NodeId, u64, bool) {
    let (mut c, leader, _, other, term) = partitioned_follower(seed, pre_vote);
    c.heal();
    c.isolate(other);
    let id = c.request(leader, set("k", "2", 1, 2));
    let answered = c.run_until(200, |c| c.response(id).is_some());
    assert!(answered, "seed {seed}: the write was never answered");
    let failed = matches!(c.response(id), Some(Err(ClientError::LeadershipLost)));
    c.heal();
    c.converge(500);
    (c, leader, term, failed)
}

#[test]
fn without_pre_vote_a_returning_node_deposes_the_leader_9_6() {
    for seed in seeds(10) {
        let x_term = {
            let (c, _, x, _, _) = partitioned_follower(seed, false);
            c.node(x).current_term()
        };
        let (c, leader, term, failed) = return_with_a_waiting_write(seed, false);
        assert!(
            x_term > term + 1,
            "seed {seed}: a cut-off node without pre-vote counts its terms up ({x_term})"
        );
        assert!(
            failed,
            "seed {seed}: the waiting write should have failed with LeadershipLost"
        );
        let now = c.leader().expect("converged");
        assert!(
            c.node(now).current_term() > term,
            "seed {seed}: the term should have risen past {term} (leader n{leader} before)"
        );
    }
}

#[test]
fn with_pre_vote_a_returning_node_does_not_disrupt_the_leader_9_6() {
    for seed in seeds(10) {
        let x_term = {
            let (c, _, x, _, term) = partitioned_follower(seed, true);
            assert_eq!(
                c.node(x).current_term(),
                term,
                "seed {seed}: with pre-vote a cut-off node keeps its term"
            );
            c.node(x).current_term()
        };
        let (c, leader, term, failed) = return_with_a_waiting_write(seed, true);
        assert!(!failed, "seed {seed}: the waiting write failed");
        assert_eq!(x_term, term);
        assert_eq!(c.leader(), Some(leader), "seed {seed}: the leader changed");
        assert_eq!(
            c.node(leader).current_term(),
            term,
            "seed {seed}: the term rose"
        );
    }
}

/// Everybody reconnected at once: without pre-vote the leader falls and
/// the term rises; with it, neither.
#[test]
fn a_healed_partition_elects_again_only_without_pre_vote_9_6() {
    for seed in seeds(10) {
        for pre_vote in [false, true] {
            let (mut c, leader, _, _, term) = partitioned_follower(seed, pre_vote);
            c.heal();
            c.ticks(100);
            c.converge(500);
            let now = c.leader().expect("converged");
            let term_now = c.node(now).current_term();
            if pre_vote {
                assert_eq!((now, term_now), (leader, term), "seed {seed}: disrupted");
            } else {
                assert!(
                    term_now > term,
                    "seed {seed}: no new election without pre-vote"
                );
            }
        }
    }
}

/// Pre-vote must not cost availability: when the leader really is gone,
/// the others are elected as before, in the next term.
#[test]
fn with_pre_vote_a_crashed_leader_is_replaced_9_6() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(5, seed).pre_vote(true));
        let leader = c.elect(300);
        let term = c.node(leader).current_term();
        c.crash(leader);
        let ok = c.run_until(500, |c| c.leader().is_some_and(|l| l != leader));
        assert!(ok, "seed {seed}: no new leader after n{leader} crashed");
        let now = c.leader().unwrap();
        assert!(c.node(now).current_term() > term);
        assert_eq!(
            c.submit(set("k", "1", 1, 1), 300),
            Some(Ok(ClientResponse::Set))
        );
        c.restart(leader);
        c.converge(500);
    }
}

/// The receiver's rules: granted only for a newer term, an up-to-date log
/// (§5.4.1), and no current leader heard within the minimum election
/// timeout; nothing changes on the receiver either way.
#[test]
fn pre_vote_is_granted_only_when_an_election_could_win_9_6() {
    for seed in seeds(5) {
        let mut c = Cluster::new(SimConfig::new(3, seed).pre_vote(true));
        let leader = c.elect(300);
        c.converge(200);
        let x = c.ids().into_iter().find(|&id| id != leader).unwrap();
        let asker = c
            .ids()
            .into_iter()
            .find(|&id| id != leader && id != x)
            .unwrap();
        let term = c.node(x).current_term();
        let ask = |c: &Cluster, term| {
            Message::PreVote(PreVote {
                term,
                candidate_id: asker,
                last_log_index: c.node(x).log().last_index(),
                last_log_term: c.node(x).log().last_term(),
            })
        };
        let granted = |replies: Vec<Message>| match replies.as_slice() {
            [Message::PreVoteReply(r)] => r.vote_granted,
            other => panic!("seed {seed}: expected one PreVoteReply, got {other:?}"),
        };
        // x hears from the leader: refused, and x is unchanged.
        let vote = ask(&c, term + 1);
        assert!(!granted(c.exchange(x, asker, vote)), "seed {seed}");
        assert_eq!(c.node(x).current_term(), term);
        assert_eq!(c.node(x).leader_id(), Some(leader));
        // The leader itself refuses.
        let vote = ask(&c, term + 1);
        assert!(!granted(c.exchange(leader, asker, vote)));
        assert!(c.node(leader).is_leader());
        // Cut off from the leader for the minimum election timeout (x may
        // start pre-vote rounds of its own meanwhile: they change nothing).
        c.isolate(x);
        let min = SimConfig::new(3, seed).election_timeout_ticks.0;
        c.ticks(min);
        assert!(!c.node(x).in_leader_contact());
        let term = c.node(x).current_term();
        let vote = ask(&c, term + 1);
        assert!(
            granted(c.exchange(x, asker, vote)),
            "seed {seed}: should grant"
        );
        assert_eq!(c.node(x).current_term(), term, "a pre-vote changes no term");
        let mut behind = ask(&c, term + 1);
        if let Message::PreVote(m) = &mut behind {
            m.last_log_index -= 1;
        }
        assert!(
            !granted(c.exchange(x, asker, behind)),
            "not for a shorter log"
        );
        assert!(matches!(c.node(x).role(), Role::Follower));
    }
}

/// Figure 3's properties hold with pre-vote on under lost, delayed and
/// late messages, crashes and partitions (the harness checks them after
/// every step), and the cluster keeps committing.
#[test]
fn safety_under_faults_with_pre_vote_9_6() {
    for seed in seeds(10) {
        let config = SimConfig::new(5, seed)
            .pre_vote(true)
            .unreliable(0.1, 3)
            .late(0.02, 60);
        let mut c = Cluster::new(config);
        for round in 0..6u64 {
            c.ticks(50);
            let victim = (seed + round) % 5 + 1;
            c.crash(victim);
            let _ = c.submit(set("k", &round.to_string(), 1, round + 1), 300);
            c.restart(victim);
            c.isolate((seed + round + 2) % 5 + 1);
            c.ticks(80);
            c.heal();
        }
        c.set_unreliable(0.0, 0);
        c.set_late(0.0, 0);
        assert_eq!(
            c.submit(set("end", "1", 2, 1), 1000),
            Some(Ok(ClientResponse::Set)),
            "seed {seed}: the cluster stopped committing"
        );
        c.converge(1000);
    }
}
