//! Milestone 1: leader election (§5.2, §5.4.1). Deterministic: each test
//! runs on the simulated cluster from fixed seeds; replay one with
//! `RAFT_SEED=N cargo test --test election NAME`.

use raft_kv::raft::{ClientRequest, Role};
use raft_kv::sim::{seeds, Cluster, SimConfig};

/// §5.2: a cluster elects exactly one leader, all nodes agree on its term,
/// and without faults the term stays put.
#[test]
fn initial_election_5_2() {
    for seed in seeds(50) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let leader = c.elect(200);
        let term = c.node(leader).current_term();
        c.ticks(10);
        for id in c.ids() {
            assert_eq!(
                c.node(id).current_term(),
                term,
                "n{id} disagrees on the term"
            );
            assert_eq!(c.node(id).leader_id(), Some(leader));
        }
        c.ticks(500);
        assert_eq!(
            c.leaders(),
            vec![leader],
            "leadership changed without faults"
        );
        assert_eq!(
            c.node(leader).current_term(),
            term,
            "term moved without faults"
        );
    }
}

/// §5.2: when the leader is cut off, the others elect a new one; when it
/// returns with its stale term it steps down without disrupting them.
#[test]
fn reelection_after_leader_cut_off_5_2() {
    for seed in seeds(50) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let old = c.elect(200);
        let old_term = c.node(old).current_term();
        c.isolate(old);
        let ok = c.run_until(300, |c| {
            c.leaders()
                .iter()
                .any(|&l| l != old && c.node(l).current_term() > old_term)
        });
        assert!(ok, "no new leader after the old one was cut off");
        let new = c.leader().unwrap();
        assert_ne!(new, old);
        let new_term = c.node(new).current_term();
        c.reconnect(old);
        c.ticks(50);
        assert!(!c.node(old).is_leader(), "the deposed leader still leads");
        assert_eq!(
            c.leader(),
            Some(new),
            "the rejoining node disrupted the leader"
        );
        assert_eq!(c.node(new).current_term(), new_term);
    }
}

/// §5.2: a minority cannot elect a leader; and with check-quorum
/// (dissertation §6.2) an old leader in the minority steps down.
#[test]
fn no_leader_in_minority_partition_5_2() {
    for seed in seeds(30) {
        let mut c = Cluster::new(SimConfig::new(5, seed));
        let leader = c.elect(200);
        let others: Vec<_> = c.ids().into_iter().filter(|&i| i != leader).collect();
        let minority = [leader, others[0]];
        let majority = [others[1], others[2], others[3]];
        c.partition(&[&minority, &majority]);
        c.ticks(300);
        for id in minority {
            assert!(
                !c.node(id).is_leader(),
                "n{id} leads in a minority partition"
            );
        }
        assert_eq!(
            c.leaders().len(),
            1,
            "the majority side should have exactly one leader"
        );
        assert!(majority.contains(&c.leader().unwrap()));
    }
}

/// §5.2: split votes resolve: even when every node times out at once,
/// randomized timeouts soon produce a single leader.
#[test]
fn split_votes_resolve_5_2() {
    for seed in seeds(50) {
        let mut config = SimConfig::new(5, seed);
        // A narrow range makes simultaneous candidates (split votes) likely.
        config.election_timeout_ticks = (10, 12);
        let mut c = Cluster::new(config);
        c.elect(1000);
        assert_eq!(c.leaders().len(), 1);
    }
}

/// §5.4.1: a candidate whose log is behind cannot win: voters refuse a
/// candidate whose last entry has an older term, or the same term and a
/// shorter log.
#[test]
fn candidate_with_stale_log_cannot_win_5_4_1() {
    for seed in seeds(30) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let leader = c.elect(200);
        let stale = c.ids().into_iter().find(|&i| i != leader).unwrap();
        c.isolate(stale);
        let id = c.request(
            leader,
            ClientRequest::Set {
                key: "k".into(),
                value: "v".into(),
                client_id: 0,
                sequence: 0,
            },
        );
        assert!(c.wait_response(id, 100).is_some_and(|r| r.is_ok()));
        let committed = c.node(leader).commit_index();
        // Cut the leader off too; the stale node and the up-to-date one
        // hold an election between themselves.
        c.heal();
        c.isolate(leader);
        c.run_until(500, |c| c.leaders().iter().any(|&l| l != leader));
        let new = c
            .leaders()
            .into_iter()
            .find(|&l| l != leader)
            .expect("a new leader");
        assert_ne!(
            new, stale,
            "a node missing committed entries won an election"
        );
        assert!(c.node(new).log().last_index() >= committed);
    }
}

/// Election Safety (Figure 3) on 5 and 7 nodes: at most one leader per term
/// over hundreds of seeded random fault schedules, checked after every step.
#[test]
fn at_most_one_leader_per_term_under_faults_5_2() {
    for seed in seeds(200) {
        let nodes = if seed % 2 == 0 { 5 } else { 7 };
        let mut c = Cluster::new(SimConfig::new(nodes, seed).unreliable(0.1, 3));
        let mut rng = seed;
        for round in 0..20 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let victim = 1 + (rng >> 33) % nodes as u64;
            match (rng >> 20) % 4 {
                0 => c.isolate(victim),
                1 => c.crash(victim),
                2 => c.heal(),
                _ => {
                    for id in c.ids() {
                        if !c.is_up(id) {
                            c.restart(id);
                        }
                    }
                }
            }
            c.ticks(20 + round % 7);
        }
        // The invariant checker ran after every step; the cluster also
        // recovers once the faults stop.
        c.heal();
        for id in c.ids() {
            if !c.is_up(id) {
                c.restart(id);
            }
        }
        c.set_unreliable(0.0, 0);
        c.elect(1000);
        assert!(matches!(
            c.node(c.leader().unwrap()).role(),
            Role::Leader(_)
        ));
    }
}
