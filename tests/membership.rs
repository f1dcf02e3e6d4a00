//! Cluster membership changes (§6, Figure 11; src/raft/membership.rs and
//! membership_change.rs), one test per situation §6 names: learners caught
//! up before they count, the joint configuration C_old,new between C_old and
//! C_new, a leader that is not in C_new stepping down, removed servers that
//! must not disrupt the cluster, a crash in every phase of a change, a
//! change under partition — and Figure 10's danger, which the joint
//! configuration prevents. The harness checks Figure 3's properties after
//! every step (at most one leader per term, whatever the configurations),
//! and that committed configurations follow each other through C_old,new.
//! Deterministic: replay one seed with
//! `RAFT_SEED=N cargo test --release --test membership NAME`.

use std::collections::BTreeSet;

use raft_kv::kv::{ClientError, ClientRequest, ClientResponse};
use raft_kv::raft::{Command, Configuration, MembershipChange, NodeId, RequestError, Role};
use raft_kv::sim::{seeds, Cluster, SimConfig};

fn set(key: &str, value: &str, client_id: u64, sequence: u64) -> ClientRequest {
    ClientRequest::Set {
        key: key.into(),
        value: value.into(),
        client_id,
        sequence,
    }
}

/// A cluster as a node runs it: §6's rule that a server hearing from a
/// leader ignores RequestVote is on.
fn config(nodes: usize, seed: u64) -> SimConfig {
    let mut config = SimConfig::new(nodes, seed);
    config.ignore_votes_while_led = true;
    config
}

/// A cluster of `nodes` with a leader and `writes` writes committed.
fn running(config: SimConfig, writes: u64) -> Cluster {
    let mut c = Cluster::new(config);
    c.elect(300);
    for sequence in 1..=writes {
        let write = set(&format!("k{sequence}"), "v", 1, sequence);
        assert_eq!(c.submit(write, 300), Some(Ok(ClientResponse::Set)));
    }
    c.converge(300);
    c
}

fn add_learner(id: NodeId) -> MembershipChange {
    MembershipChange::AddLearner {
        id,
        address: format!("n{id}"),
    }
}

fn add_voter(id: NodeId) -> MembershipChange {
    MembershipChange::AddVoter {
        id,
        address: format!("n{id}"),
    }
}

fn voters(ids: &[NodeId]) -> BTreeSet<NodeId> {
    ids.iter().copied().collect()
}

/// The configurations in node `id`'s log, in order.
fn configurations_in_log(c: &Cluster, id: NodeId) -> Vec<Configuration> {
    let log = c.node(id).log();
    let entries = (log.first_index()..=log.last_index()).filter_map(|i| log.get(i));
    let configurations = entries.filter_map(|e| match &e.command {
        Command::Config(configuration) => Some(configuration.clone()),
        _ => None,
    });
    configurations.collect()
}

/// §6: a new server joins as a learner. It receives the log and catches up,
/// but it never stands for election and counts in no majority.
#[test]
fn a_learner_catches_up_but_neither_votes_nor_counts_6() {
    for seed in seeds(8) {
        let mut c = running(config(3, seed), 20);
        c.add_server(4);
        assert_eq!(c.run_change(add_learner(4), 500), Some(Ok(vec![])));
        let leader = c.converge(500);
        let learner = c.node(4);
        assert!(learner.configuration().learners.contains(&4));
        assert_eq!(learner.last_applied(), c.node(leader).commit_index());

        // Cut off, it waits: no election, however long.
        let term = c.node(4).current_term();
        c.isolate(4);
        c.ticks(300);
        assert!(matches!(c.node(4).role(), Role::Follower));
        assert_eq!(
            c.node(4).current_term(),
            term,
            "seed {seed}: a learner stood"
        );
        c.heal();

        // With the leader and the learner alone, nothing commits.
        let others: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
        c.partition(&[&[leader, 4], &others]);
        let commit_index = c.node(leader).commit_index();
        c.request(leader, set("alone", "v", 2, 1));
        c.ticks(10);
        assert_eq!(
            c.node(leader).commit_index(),
            commit_index,
            "seed {seed}: the learner's copy counted in a majority"
        );
    }
}

/// §6: a voter joins through C_old,new: learner, caught up, joint, then
/// C_new — and from then on it counts.
#[test]
fn a_voter_joins_through_the_joint_configuration_6() {
    for seed in seeds(8) {
        let mut c = running(config(3, seed), 10);
        c.add_server(4);
        assert_eq!(c.run_change(add_voter(4), 1000), Some(Ok(vec![])));
        let leader = c.converge(500);
        let steps = configurations_in_log(&c, leader);
        let old = voters(&[1, 2, 3]);
        let new = voters(&[1, 2, 3, 4]);
        let expected = [
            (old.clone(), BTreeSet::new(), voters(&[4])),
            (new.clone(), old, BTreeSet::new()),
            (new.clone(), BTreeSet::new(), BTreeSet::new()),
        ];
        let got: Vec<_> = steps
            .iter()
            .map(|s| (s.voters.clone(), s.outgoing.clone(), s.learners.clone()))
            .collect();
        assert_eq!(got, expected, "seed {seed}");
        for id in 1..=4 {
            assert_eq!(c.node(id).configuration().voters, new, "seed {seed} n{id}");
        }
        // Four voters: with two of the old ones down, the new one makes
        // the majority.
        let down: Vec<NodeId> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
        c.crash(down[0]);
        assert_eq!(
            c.submit(set("after", "v", 2, 1), 500),
            Some(Ok(ClientResponse::Set))
        );
        c.crash(down[1]);
        c.request(leader, set("minority", "v", 3, 1));
        c.ticks(20);
        assert!(
            c.node(leader).commit_index() < c.node(leader).log().last_index(),
            "seed {seed}: two of four voters committed"
        );
    }
}

/// §7 and §6: a server that joins after the leader compacted its log is
/// caught up by InstallSnapshot, and the snapshot carries the
/// configuration; after a restart it still knows the cluster.
#[test]
fn a_new_server_caught_up_by_snapshot_knows_the_configuration_6_7() {
    for seed in seeds(5) {
        let mut c = running(config(3, seed).snapshot_log_bytes(300, 256), 60);
        let leader = c.leader().unwrap();
        assert!(c.node(leader).log().snapshot_index() > 0, "seed {seed}");
        c.add_server(4);
        assert_eq!(c.run_change(add_voter(4), 1000), Some(Ok(vec![])));
        c.converge(500);
        assert!(c.sent_by(leader, "InstallSnapshot") > 0, "seed {seed}");
        for sequence in 61..=120 {
            let write = set(&format!("k{sequence}"), "v", 1, sequence);
            assert_eq!(c.submit(write, 300), Some(Ok(ClientResponse::Set)));
        }
        c.converge(500);
        assert!(
            c.node(4).log().snapshot_index() > 0,
            "seed {seed}: n4 compacted"
        );
        c.restart(4);
        assert_eq!(c.node(4).configuration().voters, voters(&[1, 2, 3, 4]));
        c.converge(500);
    }
}

/// §6: "the leader steps down (returns to follower state) once it has
/// committed the C_new log entry" that leaves it out. The rest elect a
/// leader; the removed server says so and serves no one.
#[test]
fn a_leader_removed_steps_down_once_c_new_commits_6() {
    for seed in seeds(8) {
        let mut c = running(config(3, seed), 5);
        let old = c.leader().unwrap();
        let answer = c.run_change(MembershipChange::Remove { id: old }, 500);
        assert_eq!(answer, Some(Ok(vec![])), "seed {seed}");
        assert!(c.run_until(300, |c| c.leader().is_some_and(|l| l != old)));
        let leader = c.converge(500);
        assert!(!c.node(leader).configuration().contains(old));
        assert!(c.node(old).is_removed(), "seed {seed}");
        c.ticks(300);
        assert!(
            !c.node(old).is_leader(),
            "seed {seed}: the removed leader came back"
        );
        let read = c.request(
            old,
            ClientRequest::Get {
                key: "k1".into(),
                linearizable: true,
            },
        );
        assert!(matches!(
            c.wait_response(read, 5),
            Some(Err(ClientError::Removed { node })) if node == old
        ));
        c.restart(old);
        assert!(
            c.node(old).is_removed(),
            "seed {seed}: a restart forgot the removal"
        );
        assert_eq!(
            c.submit(set("after", "v", 2, 1), 300),
            Some(Ok(ClientResponse::Set))
        );
    }
}

/// §6: a removed server that never learned of its removal times out and
/// stands again and again, with ever higher terms. With §6's rule — ignore
/// RequestVote within the minimum election timeout of hearing from a
/// leader — it cannot depose the leader; without it, it does.
#[test]
fn a_removed_server_cannot_disrupt_the_cluster_6() {
    for seed in seeds(8) {
        for rule in [true, false] {
            let mut config = config(3, seed);
            config.ignore_votes_while_led = rule;
            let mut c = running(config, 5);
            let leader = c.leader().unwrap();
            let removed = if leader == 1 { 2 } else { 1 };
            c.isolate(removed);
            let answer = c.run_change(MembershipChange::Remove { id: removed }, 500);
            assert_eq!(answer, Some(Ok(vec![])), "seed {seed}");
            let leader = c.converge(300);
            let term = c.node(leader).current_term();
            c.ticks(200);
            assert!(c.node(removed).current_term() > term, "it stood meanwhile");
            c.reconnect(removed);
            c.ticks(200);
            let deposed = c.node(leader).current_term() != term || !c.node(leader).is_leader();
            assert_eq!(deposed, !rule, "seed {seed}, §6 rule {rule}");
        }
    }
}

/// One change at a time: a second request while one is in progress gets
/// a clear error. A learner that does not catch up fails the change and
/// stays a learner.
#[test]
fn one_change_at_a_time_and_a_learner_that_never_catches_up_6() {
    for seed in seeds(5) {
        let mut c = running(config(3, seed), 5);
        let leader = c.leader().unwrap();
        // n4 is never started: it cannot catch up.
        let first = c.change_membership(leader, add_voter(4));
        c.ticks(2);
        let second = c.change_membership(leader, add_learner(5));
        c.ticks(1);
        assert!(
            matches!(
                c.transfer_answer(second),
                Some(Err(RequestError::ChangeInProgress(_)))
            ),
            "seed {seed}: {:?}",
            c.transfer_answer(second)
        );
        assert!(c.run_until(1000, |c| c.transfer_answer(first).is_some()));
        let Some(Err(RequestError::MembershipRefused(why))) = c.transfer_answer(first) else {
            panic!("seed {seed}: {:?}", c.transfer_answer(first));
        };
        assert!(why.contains("no progress"), "{why}");
        assert!(c.node(leader).configuration().learners.contains(&4));
        let again = c.run_change(add_learner(4), 300);
        assert!(
            matches!(again, Some(Err(RequestError::MembershipRefused(_)))),
            "{again:?}"
        );
        let remove = c.run_change(MembershipChange::Remove { id: 4 }, 300);
        assert_eq!(remove, Some(Ok(vec![])));
        assert_eq!(
            c.node(leader).configuration(),
            &Configuration::new([1, 2, 3])
        );
    }
}

/// A crash of the leader in every phase of a change — learner appended,
/// C_old,new appended, C_new appended — leaves a cluster that agrees on
/// one configuration, never stuck in C_old,new, and takes the change again.
#[test]
fn a_crash_in_every_phase_of_a_change_leaves_one_configuration_6() {
    for seed in seeds(6) {
        for phase in 1..=3 {
            let mut c = running(config(3, seed), 5);
            c.add_server(4);
            let leader = c.leader().unwrap();
            c.change_membership(leader, add_voter(4));
            let reached = c.run_until(500, |c| configurations_in_log(c, leader).len() >= phase);
            assert!(reached, "seed {seed} phase {phase}");
            c.crash(leader);
            c.ticks(100);
            c.restart(leader);
            let leader = c.converge(1000);
            let settled = c.node(leader).configuration().clone();
            assert!(!settled.is_joint(), "seed {seed} phase {phase}: {settled}");
            for id in c.ids() {
                assert_eq!(c.node(id).configuration(), &settled, "n{id}");
            }
            if !settled.voters.contains(&4) {
                assert_eq!(c.run_change(add_voter(4), 1000), Some(Ok(vec![])));
            }
            let leader = c.converge(1000);
            assert_eq!(c.node(leader).configuration().voters, voters(&[1, 2, 3, 4]));
        }
    }
}

/// A partition in the middle of a change: the side with majorities of
/// both configurations goes on; after the partition heals the cluster
/// settles on one configuration and commits.
#[test]
fn a_change_under_partition_settles_after_it_heals_6() {
    for seed in seeds(6) {
        let mut c = running(config(5, seed), 5);
        let leader = c.leader().unwrap();
        let removed = if leader == 5 { 4 } else { 5 };
        c.change_membership(leader, MembershipChange::Remove { id: removed });
        let joint = c.run_until(200, |c| {
            configurations_in_log(c, leader)
                .last()
                .is_some_and(Configuration::is_joint)
        });
        assert!(joint, "seed {seed}");
        let majority: Vec<NodeId> = (1..=5)
            .filter(|&id| id != leader && id != removed)
            .collect();
        c.partition(&[&[leader, removed], &majority]);
        assert!(
            c.run_until(500, |c| majority.iter().any(|&id| c.node(id).is_leader())),
            "seed {seed}: the side with both majorities elected no leader"
        );
        c.heal();
        let leader = c.converge(1000);
        let settled = c.node(leader).configuration().clone();
        assert!(!settled.is_joint(), "seed {seed}: {settled}");
        assert_eq!(
            c.submit(set("after", "v", 2, 1), 500),
            Some(Ok(ClientResponse::Set))
        );
    }
}

/// Figure 10: switching directly from C_old = {1,2,3} to C_new =
/// {1,2,3,4,5} lets a majority of C_new commit while a majority of C_old
/// still elects on its own; the harness reports it. Through C_old,new
/// neither side can act alone, and nothing is reported.
#[test]
fn switching_directly_is_caught_and_the_joint_configuration_is_safe_figure_10() {
    for seed in seeds(4) {
        for joint in [false, true] {
            let mut config = config(3, seed);
            config.ignore_votes_while_led = false;
            let mut c = running(config, 3);
            for id in [4, 5] {
                c.add_server(id);
                assert_eq!(c.run_change(add_learner(id), 500), Some(Ok(vec![])));
            }
            let leader = c.converge(500);
            let old: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
            c.partition(&[&[leader, 4, 5], &old]);
            let mut next = Configuration::new([1, 2, 3, 4, 5]);
            next.addresses = c.node(leader).configuration().addresses.clone();
            if joint {
                next.outgoing = voters(&[1, 2, 3]);
            }
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                c.with_node(leader, |n| n.append_configuration_unchecked(next));
                c.ticks(100);
                c.transfer_leadership(leader, 4);
                c.ticks(200);
            }));
            if joint {
                assert!(
                    outcome.is_ok(),
                    "seed {seed}: the joint configuration was unsafe"
                );
                assert!(!c.node(4).is_leader(), "n4 won without a majority of C_old");
            } else {
                let message = outcome.expect_err("a direct switch went unnoticed");
                let text = message
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_default();
                assert!(text.contains("Figure 10"), "seed {seed}: {text}");
            }
        }
    }
}

/// Changes of every kind, one after another, on an unreliable network
/// with crashes and partitions: after every step the harness checks Figure
/// 3's properties and that committed configurations step through C_old,new;
/// at the end the cluster agrees on one configuration and commits.
#[test]
fn random_changes_under_faults_keep_every_invariant_6() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    for seed in seeds(12) {
        let mut c = Cluster::new(config(3, seed).unreliable(0.05, 3));
        c.elect(500);
        for id in 4..=6 {
            c.add_server(id);
        }
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6);
        let mut sequence = 0;
        let mut change = None;
        for tick in 0..3000 {
            c.tick();
            let Some(leader) = c.leader() else { continue };
            if tick % 7 == 0 {
                sequence += 1;
                c.request(leader, set(&format!("k{}", sequence % 5), "v", 1, sequence));
            }
            let answered = change.is_none_or(|id| c.transfer_answer(id).is_some());
            if tick % 40 == 0 && answered {
                let id = rng.gen_range(1..=6);
                let changes = [
                    add_voter(id),
                    add_learner(id),
                    MembershipChange::Promote { id },
                    MembershipChange::Remove { id },
                ];
                let pick = changes[rng.gen_range(0..4)].clone();
                change = Some(c.change_membership(leader, pick));
            }
            match tick % 500 {
                100 => {
                    let id = rng.gen_range(1..=6);
                    c.crash(id);
                }
                200 => {
                    let a = rng.gen_range(1..=6);
                    let rest: Vec<NodeId> = (1..=6).filter(|&id| id != a).collect();
                    c.partition(&[&[a], &rest]);
                }
                300 => c.heal(),
                400 => {
                    for id in c.ids() {
                        if !c.is_up(id) {
                            c.restart(id);
                        }
                    }
                }
                _ => {}
            }
        }
        c.heal();
        c.set_unreliable(0.0, 0);
        for id in c.ids() {
            if !c.is_up(id) {
                c.restart(id);
            }
        }
        let leader = c.converge(2000);
        let settled = c.node(leader).configuration().clone();
        assert!(!settled.is_joint(), "seed {seed}: {settled}");
        assert!(
            c.submit(set("final", "v", 2, 1), 1000).is_some(),
            "seed {seed}: the cluster no longer commits"
        );
    }
}
