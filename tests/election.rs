//! Milestone 1: leader election (§5.2, §5.4.1). Deterministic: each test
//! runs on the simulated cluster from fixed seeds; replay one with
//! `RAFT_SEED=N cargo test --test election NAME`.

use std::sync::{Arc, Mutex};

use raft_kv::kv::KvStore;
use raft_kv::raft::{
    AppendEntries, Command, Entry, HardState, MemStorage, Message, NodeId, Outbox, RaftConfig,
    RaftNode, RequestId, RequestVote, RequestVoteReply, Response, Role, SnapshotToSave, Storage,
    Term,
};
use raft_kv::sim::{seeds, Cluster, SimConfig};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// The leader of `group` once it has settled: exactly one leader among those
/// nodes, and every one of them in its term and knowing it.
fn settled_leader(c: &Cluster, group: &[NodeId]) -> Option<NodeId> {
    let leaders: Vec<_> = group
        .iter()
        .copied()
        .filter(|&id| c.node(id).is_leader())
        .collect();
    let [leader] = leaders[..] else {
        return None;
    };
    let term = c.node(leader).current_term();
    group
        .iter()
        .all(|&id| c.node(id).current_term() == term && c.node(id).leader_id() == Some(leader))
        .then_some(leader)
}

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

/// Election Safety (Figure 3) on 5 and 7 nodes: at most one leader per term
/// over hundreds of seeded schedules of partitions on a lossy network,
/// checked after every step. (With crashes: tests/persistence.rs.)
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
                0 | 1 => c.isolate(victim),
                2 => c.reconnect(victim),
                _ => c.heal(),
            }
            c.ticks(20 + round % 7);
        }
        // The invariant checker ran after every step; the cluster also
        // recovers once the faults stop.
        c.heal();
        c.set_unreliable(0.0, 0);
        c.elect(1000);
        assert!(matches!(
            c.node(c.leader().unwrap()).role(),
            Role::Leader(_)
        ));
    }
}

/// §5.2 and Election Safety (Figure 3), round after round: cut off the leader
/// and random others (a minority in all) from a 5- or 7-node cluster; the
/// connected majority elects exactly one new leader in a newer term; once
/// everyone is back, the whole cluster settles on one leader again.
#[test]
fn many_elections_5_2() {
    for seed in seeds(40) {
        let nodes = if seed % 2 == 0 { 5 } else { 7 };
        let mut c = Cluster::new(SimConfig::new(nodes, seed));
        let mut rng = StdRng::seed_from_u64(seed);
        let all = c.ids();
        let mut leader = c.elect(300);
        assert!(c.run_until(300, |c| settled_leader(c, &all).is_some()));
        for round in 0..8 {
            let old_term = c.node(leader).current_term();
            let mut others: Vec<_> = all.iter().copied().filter(|&i| i != leader).collect();
            others.shuffle(&mut rng);
            let cut_count = 1 + round % (nodes / 2);
            let mut cut = vec![leader];
            cut.extend(&others[..cut_count - 1]);
            for &id in &cut {
                c.isolate(id);
            }
            let connected: Vec<_> = all.iter().copied().filter(|i| !cut.contains(i)).collect();
            let ok = c.run_until(400, |c| {
                settled_leader(c, &connected).is_some_and(|l| c.node(l).current_term() > old_term)
            });
            assert!(
                ok,
                "round {round}: the connected majority {connected:?} elected no leader"
            );
            c.heal();
            let ok = c.run_until(600, |c| settled_leader(c, &all).is_some());
            assert!(ok, "round {round}: the whole cluster did not settle");
            let new_leader = settled_leader(&c, &all).unwrap();
            assert!(c.node(new_leader).current_term() > old_term);
            leader = new_leader;
        }
    }
}

/// Hand node `x` (cut off from the network) the message `next(c)` before
/// each tick, for up to `ticks` ticks; the tick at which it became a
/// candidate, if it did.
fn ticks_until_candidate(
    c: &mut Cluster,
    x: NodeId,
    from: NodeId,
    ticks: u64,
    mut next: impl FnMut(&Cluster, u64) -> Option<Message>,
) -> Option<u64> {
    for t in 1..=ticks {
        if let Some(message) = next(c, t) {
            c.with_node(x, |n| n.step(from, message));
        }
        c.tick();
        if matches!(c.node(x).role(), Role::Candidate { .. }) {
            return Some(t);
        }
    }
    None
}

/// The timers of §5.2. Followers: "If election timeout elapses without
/// receiving AppendEntries RPC from current leader or granting vote to
/// candidate: convert to candidate." Nothing else restarts the timer: not an
/// AppendEntries from a deposed leader (stale term), nor a RequestVote that is
/// refused. Each of the two that count does restart it.
#[test]
fn election_timer_restarts_only_for_current_leader_or_granted_vote_5_2() {
    for seed in seeds(20) {
        // Each case starts from the same elected cluster with follower x cut
        // off, once every node follows the leader: until its first heartbeat
        // a node may still be a candidate of the same term (§5.2), whose own
        // timer is about to expire.
        let setup = || {
            let mut c = Cluster::new(SimConfig::new(3, seed));
            let leader = c.elect(200);
            assert!(
                c.run_until(100, |c| c.ids().into_iter().all(|id| id == leader
                    || (matches!(c.node(id).role(), Role::Follower)
                        && c.node(id).leader_id() == Some(leader)))),
                "seed {seed}: the followers never heard from leader n{leader}"
            );
            let x = c.ids().into_iter().find(|&i| i != leader).unwrap();
            let other = c
                .ids()
                .into_iter()
                .find(|&i| i != leader && i != x)
                .unwrap();
            c.isolate(x);
            (c, leader, x, other)
        };
        let max_timeout = SimConfig::new(3, seed).election_timeout_ticks.1;
        let heartbeat = |term, leader_id| {
            Message::AppendEntries(AppendEntries {
                term,
                leader_id,
                prev_log_index: 0,
                prev_log_term: 0,
                entries: vec![],
                leader_commit: 0,
                read_round: 0,
            })
        };
        let ask_vote = |c: &Cluster, x: NodeId, term, candidate_id, up_to_date: bool| {
            let log = c.node(x).log();
            Message::RequestVote(RequestVote {
                term,
                candidate_id,
                last_log_index: if up_to_date { log.last_index() } else { 0 },
                last_log_term: if up_to_date { log.last_term() } else { 0 },
                leadership_transfer: false,
            })
        };

        // An AppendEntries of an older term every tick: x still times out.
        let (mut c, _, x, other) = setup();
        let term = c.node(x).current_term();
        let t = ticks_until_candidate(&mut c, x, other, max_timeout + 1, |_, _| {
            Some(heartbeat(term - 1, other))
        });
        assert!(
            t.is_some(),
            "seed {seed}: stale-term AppendEntries kept a follower from its election"
        );

        // A RequestVote it refuses (the candidate's term is stale) every tick.
        let (mut c, _, x, other) = setup();
        let term = c.node(x).current_term() - 1;
        let t = ticks_until_candidate(&mut c, x, other, max_timeout + 1, |c, _| {
            Some(ask_vote(c, x, term, other, true))
        });
        assert!(
            t.is_some(),
            "seed {seed}: refusing a vote restarted the election timer"
        );
        assert_eq!(c.node(x).voted_for(), Some(x), "x voted only for itself");

        // AppendEntries from the current leader, more often than the shortest
        // timeout: x never starts an election.
        let (mut c, leader, x, _) = setup();
        let term = c.node(x).current_term();
        let t = ticks_until_candidate(&mut c, x, leader, 10 * max_timeout, |_, t| {
            (t % 10 == 0).then(|| heartbeat(term, leader))
        });
        assert_eq!(
            t, None,
            "seed {seed}: the current leader's heartbeats were ignored"
        );

        // Granting a vote, as often: no election either.
        let (mut c, _, x, other) = setup();
        let t = ticks_until_candidate(&mut c, x, other, 10 * max_timeout, |c, t| {
            let term = c.node(x).current_term() + 1;
            (t % 10 == 0).then(|| ask_vote(c, x, term, other, true))
        });
        assert_eq!(
            t, None,
            "seed {seed}: granting a vote did not restart the timer"
        );
        assert_eq!(c.node(x).voted_for(), Some(other));
    }
}

/// An outbox that keeps what the node sends, for the tests below to read.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Message>>>);

impl Outbox for Capture {
    fn send(&mut self, _: NodeId, message: Message) {
        self.0.lock().unwrap().push(message);
    }
    fn respond(&mut self, _: RequestId, _: Response) {}
    fn save_snapshot(&mut self, _: SnapshotToSave) {}
}

/// Node `id` of the cluster {1, 2, 3}, started from a disk that holds term
/// `term`, no vote, and a log whose entry i has term `log_terms[i - 1]`.
fn node_from_disk(id: NodeId, term: Term, log_terms: &[Term]) -> (RaftNode<KvStore>, Capture) {
    let mut disk = MemStorage::new();
    let entries: Vec<_> = (1..)
        .zip(log_terms)
        .map(|(index, &term)| Entry {
            index,
            term,
            command: Command::Noop,
        })
        .collect();
    disk.append(&entries).unwrap();
    disk.sync().unwrap();
    disk.save_hard_state(HardState {
        current_term: term,
        voted_for: None,
    })
    .unwrap();
    let sent = Capture::default();
    let node = RaftNode::new(
        RaftConfig::new(id, vec![1, 2, 3]),
        Box::new(disk),
        KvStore::new(),
        Box::new(sent.clone()),
    );
    (node, sent)
}

/// Hand `node` a RequestVote; whether it granted the vote.
fn vote(
    (node, sent): &mut (RaftNode<KvStore>, Capture),
    term: Term,
    candidate: NodeId,
    last_log: (u64, Term),
) -> bool {
    let request = RequestVote {
        term,
        candidate_id: candidate,
        last_log_index: last_log.0,
        last_log_term: last_log.1,
        leadership_transfer: false,
    };
    node.step(candidate, Message::RequestVote(request));
    node.end_turn();
    match sent.0.lock().unwrap().pop() {
        Some(Message::RequestVoteReply(reply)) => reply.vote_granted,
        other => panic!("a RequestVote must be answered with a RequestVoteReply, got {other:?}"),
    }
}

/// §5.4.1, the voter's side: "If the logs have last entries with different
/// terms, then the log with the later term is more up-to-date. If the logs
/// end with the same term, then whichever log is longer is more up-to-date."
/// A voter whose log ends with entry 3 of term 2 refuses a candidate whose
/// log is longer but ends in term 1, and one that ends in term 2 but is
/// shorter; it grants a shorter log ending in term 3, and an equal one.
#[test]
fn vote_only_for_an_up_to_date_log_5_4_1() {
    let cases = [
        ((10, 1), false, "a longer log whose last term is older"),
        ((2, 2), false, "a shorter log with the same last term"),
        ((1, 3), true, "a shorter log whose last term is later"),
        ((3, 2), true, "an equal log"),
        ((4, 2), true, "a longer log with the same last term"),
    ];
    for (last_log, granted, what) in cases {
        let mut voter = node_from_disk(1, 3, &[1, 1, 2]);
        assert_eq!(
            vote(&mut voter, 4, 2, last_log),
            granted,
            "voter's log ends with 3@2; the candidate's, {what}, ends with {}@{}: \
             the vote must be {} (§5.4.1)",
            last_log.0,
            last_log.1,
            if granted { "granted" } else { "refused" }
        );
    }
}

/// Figure 2, RequestVote receiver: "Reply false if term < currentTerm
/// (§5.1)"; "If votedFor is null or candidateId, and candidate's log is at
/// least as up-to-date as receiver's log, grant vote": one vote per term
/// (§5.2), which a candidate may ask for again.
#[test]
fn one_vote_per_term_and_none_for_an_older_term_5_2() {
    let mut voter = node_from_disk(1, 3, &[1]);
    assert!(
        !vote(&mut voter, 2, 2, (1, 1)),
        "granted a vote to a candidate of term 2 while in term 3"
    );
    assert_eq!(voter.0.voted_for(), None, "a refused vote is not recorded");
    assert!(vote(&mut voter, 3, 2, (1, 1)), "the first vote of term 3");
    assert!(
        !vote(&mut voter, 3, 3, (1, 1)),
        "voted for n3 in term 3 after voting for n2: two votes in one term"
    );
    assert!(
        vote(&mut voter, 3, 2, (1, 1)),
        "n2 asked again (its request or our reply was lost): votedFor is n2, so grant"
    );
    assert_eq!(voter.0.voted_for(), Some(2));
    assert_eq!(voter.0.current_term(), 3);
}

/// Candidates (§5.2): "If votes received from majority of servers: become
/// leader" — votes for this election, in this term. A granted
/// RequestVoteReply of an earlier term (an older election's reply, delayed
/// on the network) does not count; the same vote in the current term does.
#[test]
fn granted_vote_from_an_older_term_is_not_counted_5_2() {
    let (mut node, _) = node_from_disk(1, 3, &[]);
    let max_timeout = RaftConfig::new(1, vec![1]).election_timeout_ticks.1;
    for _ in 0..max_timeout {
        if matches!(node.role(), Role::Candidate { .. }) {
            break;
        }
        node.tick();
    }
    assert!(
        matches!(node.role(), Role::Candidate { .. }),
        "a follower that hears nothing for an election timeout becomes a candidate (§5.2)"
    );
    let term = node.current_term();
    assert_eq!(term, 4, "on conversion to candidate: increment currentTerm");
    let granted = |term| {
        Message::RequestVoteReply(RequestVoteReply {
            term,
            vote_granted: true,
        })
    };
    node.step(2, granted(term - 1));
    assert!(
        matches!(node.role(), Role::Candidate { .. }),
        "a vote granted in term {} made the candidate of term {term} leader",
        term - 1
    );
    node.step(2, granted(term));
    assert!(
        node.is_leader(),
        "with its own vote and n2's, of term {term}, a candidate has a majority of 3"
    );
}

/// §5.2: elections told as scripts, each command with what it
/// made happen written beneath it: `tests/scripts/election/*.txt`
/// (docs/scripts.md). A diff shows where a run goes another way.
#[test]
fn scripted_elections_5_2() {
    raft_kv::sim::script::run_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/scripts/election"
    ));
}
