//! Milestone 3: persistence (Figure 2 "Persistent state on all servers",
//! §5.2, §5.4). Nodes crash and restart; their simulated disks keep only what
//! was synced. Deterministic: replay one seed with
//! `RAFT_SEED=N cargo test --release --test persistence NAME`.

use raft_kv::kv::{self, ClientError, ClientRequest, ClientResponse};
use raft_kv::raft::{
    AppendEntries, Command, Entry, HardState, LogIndex, MemStorage, Message, NodeId, RequestId,
    RequestVote, RequestVoteReply, Role, Snapshot, Storage, Term,
};
use raft_kv::sim::{seeds, Cluster, SimConfig};
use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Clients that each write their own key, one request at a time, retrying
/// with the same (client_id, sequence) until acknowledged (§8, dissertation
/// §6.3). Write number s sets the key to "s", so the final value says which
/// writes took effect.
struct Clients {
    clients: Vec<Client>,
    /// ticks a client waits after an acknowledgment before its next write
    think: u64,
}

struct Client {
    client_id: u64,
    /// the latest acknowledged sequence
    acked: u64,
    /// the request in flight: (request id, sequence, tick sent)
    in_flight: Option<(RequestId, u64, u64)>,
    /// no new write before this tick
    next_write_at: u64,
}

impl Clients {
    fn new(count: u64, think: u64) -> Clients {
        let clients = (1..=count)
            .map(|client_id| Client {
                client_id,
                acked: 0,
                in_flight: None,
                next_write_at: 0,
            })
            .collect();
        Clients { clients, think }
    }

    fn key(client_id: u64) -> String {
        format!("client{client_id}")
    }

    /// Collect answers; on an acknowledgment check that the write is durable
    /// on a majority, and start the client's next write after its think time;
    /// retry what failed or went unanswered for 40 ticks.
    fn step(&mut self, c: &mut Cluster) {
        let think = self.think;
        for client in &mut self.clients {
            let sequence = match client.in_flight {
                None if c.now() < client.next_write_at => continue,
                None => client.acked + 1,
                Some((id, sequence, sent_at)) => match c.response(id) {
                    Some(Ok(ClientResponse::Set)) => {
                        assert_durable_on_majority(c, client.client_id, sequence);
                        client.acked = sequence;
                        client.next_write_at = c.now() + think;
                        client.in_flight = None;
                        continue;
                    }
                    Some(Err(ClientError::NotLeader { .. } | ClientError::LeadershipLost)) => {
                        sequence
                    }
                    Some(other) => panic!("write {sequence} answered {other:?}"),
                    None if c.now() - sent_at > 40 => sequence,
                    None => continue,
                },
            };
            // With no leader to send to, the old attempt stays in flight: it
            // may still commit, and its answer still counts.
            let Some(leader) = c.leader() else {
                continue;
            };
            let request = ClientRequest::Set {
                key: Self::key(client.client_id),
                value: sequence.to_string(),
                client_id: client.client_id,
                sequence,
            };
            let id = c.request(leader, request);
            client.in_flight = Some((id, sequence, c.now()));
        }
    }

    fn acked(&self) -> u64 {
        self.clients.iter().map(|c| c.acked).sum()
    }

    /// Node `id` holds every acknowledged write: each key holds its client's
    /// latest acknowledged sequence, or the one in flight (which may have
    /// committed without its answer arriving).
    fn check(&self, c: &Cluster, id: NodeId) {
        let state_machine = c.node(id).state_machine();
        for client in &self.clients {
            let key = Self::key(client.client_id);
            let value: u64 = state_machine.get(&key).map_or(0, |v| v.parse().unwrap());
            let attempted = client.in_flight.map_or(client.acked, |(_, s, _)| s);
            assert!(
                (client.acked..=attempted).contains(&value),
                "n{id}: {key} = {value}, but write {} was acknowledged (attempted up to {attempted})",
                client.acked
            );
        }
    }
}

/// Acknowledged means durable on a majority (Figure 2: persistent state is
/// "updated on stable storage before responding to RPCs"): otherwise a
/// power loss of the whole cluster could lose it.
fn assert_durable_on_majority(c: &Cluster, client_id: u64, sequence: u64) {
    let holds = |entries: &[Entry]| {
        entries.iter().any(|e| {
            let Command::Client(bytes) = &e.command else {
                return false;
            };
            matches!(kv::decode_command(bytes), Ok(kv::Command::Set { client_id: i, sequence: s, .. })
                if i == client_id && s == sequence)
        })
    };
    let durable = c
        .ids()
        .into_iter()
        .filter(|&id| holds(&c.disk(id).durable_entries()))
        .count();
    assert!(
        durable > c.ids().len() / 2,
        "write {sequence} of client {client_id} acknowledged while durable on only {durable} disks"
    );
}

/// Crash node `id` and restart it from its disk, checking that Figure 2's
/// persistent state came back: current_term, voted_for and the log up to what
/// was synced (everything, since the core syncs before answering).
fn crash_restart(c: &mut Cluster, id: NodeId) {
    let node = c.node(id);
    let before = (node.current_term(), node.voted_for());
    let log: Vec<(LogIndex, Term)> = (node.log().first_index()..=node.log().last_index())
        .map(|i| (i, node.log().term_at(i).unwrap()))
        .collect();
    c.crash(id);
    c.restart(id);
    let node = c.node(id);
    assert_eq!(
        (node.current_term(), node.voted_for()),
        before,
        "n{id}: current_term/voted_for not restored"
    );
    for (index, term) in log {
        assert_eq!(
            node.log().term_at(index),
            Some(term),
            "n{id} lost log entry {index}"
        );
    }
}

/// Restart every crashed node.
fn restart_all(c: &mut Cluster) {
    for id in c.ids() {
        if !c.is_up(id) {
            c.restart(id);
        }
    }
}

/// Let the clients write until `writes` more are acknowledged.
fn write_some(c: &mut Cluster, clients: &mut Clients, writes: u64, max_ticks: u64) {
    let target = clients.acked() + writes;
    for _ in 0..max_ticks {
        clients.step(c);
        if clients.acked() >= target {
            return;
        }
        c.tick();
    }
    panic!("only {} of {target} writes acknowledged", clients.acked());
}

/// What MemStorage promises, which the rest of these tests rely on: a crash
/// loses appends and truncations not yet synced; what `sync` or a durable
/// method wrote survives.
#[test]
fn unsynced_writes_are_lost_on_crash_figure_2() {
    let entry = |index, term| Entry {
        index,
        term,
        command: Command::Noop,
    };
    let mut disk = MemStorage::new();
    disk.append(&[entry(1, 1), entry(2, 1)]).unwrap();
    disk.sync().unwrap();
    disk.append(&[entry(3, 1)]).unwrap();
    disk.save_hard_state(HardState {
        current_term: 2,
        voted_for: Some(3),
    })
    .unwrap();
    disk.crash();
    let recovered = disk.recover().unwrap();
    assert_eq!(recovered.entries, vec![entry(1, 1), entry(2, 1)]);
    assert_eq!(recovered.hard_state.current_term, 2);
    assert_eq!(recovered.hard_state.voted_for, Some(3));

    // An unsynced truncation is lost too: the entries come back.
    disk.truncate_from(2).unwrap();
    disk.crash();
    assert_eq!(disk.recover().unwrap().entries.len(), 2);
    disk.truncate_from(2).unwrap();
    disk.sync().unwrap();
    disk.crash();
    assert_eq!(disk.recover().unwrap().entries, vec![entry(1, 1)]);

    // A conflicting suffix replaced, then synced, with a snapshot in between.
    disk.append(&[entry(2, 1), entry(3, 1), entry(4, 1)])
        .unwrap();
    disk.sync().unwrap();
    disk.truncate_from(3).unwrap();
    disk.append(&[entry(3, 2), entry(4, 2), entry(5, 2)])
        .unwrap();
    let snapshot = Snapshot {
        last_included_index: 2,
        last_included_term: 1,
        data: vec![],
        configuration: None,
    };
    disk.save_snapshot(&snapshot, true).unwrap();
    disk.sync().unwrap();
    disk.append(&[entry(6, 2)]).unwrap();
    disk.crash();
    let recovered = disk.recover().unwrap();
    assert_eq!(recovered.snapshot, Some(snapshot));
    assert_eq!(
        recovered.entries,
        vec![entry(3, 2), entry(4, 2), entry(5, 2)]
    );
}

/// Figure 2: a restarted node comes back with current_term, voted_for and its
/// log; its commit_index and last_applied are volatile, so it starts at 0 and
/// re-applies the committed entries it learns of from the leader, ending with
/// the same state machine.
#[test]
fn restarted_node_reapplies_committed_entries_figure_2() {
    for seed in seeds(20) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let mut clients = Clients::new(3, 10);
        c.elect(200);
        write_some(&mut c, &mut clients, 30, 2000);
        let leader = c.converge(200);
        let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
        let applied = c.node(follower).last_applied();
        crash_restart(&mut c, follower);
        assert_eq!(
            c.node(follower).last_applied(),
            0,
            "no snapshot: nothing applied yet"
        );
        assert!(c.node(follower).state_machine().is_empty());
        assert_eq!(c.node(follower).log().last_index(), applied);
        c.converge(200);
        clients.check(&c, follower);

        // The whole cluster.
        for id in c.ids() {
            crash_restart(&mut c, id);
        }
        c.elect(300);
        c.converge(300);
        for id in c.ids() {
            clients.check(&c, id);
        }
    }
}

/// Every acknowledged write survives the loss of power of the whole cluster:
/// all nodes crash at a random moment while clients write, and restart.
#[test]
fn acknowledged_writes_survive_all_crashing_figure_2() {
    for seed in seeds(50) {
        let mut c = Cluster::new(SimConfig::new(5, seed));
        let mut rng = StdRng::seed_from_u64(seed);
        let mut clients = Clients::new(4, 5);
        for _ in 0..3 {
            c.elect(300);
            write_some(&mut c, &mut clients, rng.gen_range(1..20), 3000);
            for _ in 0..rng.gen_range(0..5) {
                clients.step(&mut c);
                c.tick();
            }
            for id in c.ids() {
                c.crash(id);
            }
            restart_all(&mut c);
        }
        c.elect(300);
        write_some(&mut c, &mut clients, 1, 500);
        c.converge(300);
        for id in c.ids() {
            clients.check(&c, id);
        }
    }
}

/// Crash and restart one follower, the leader, or every node — during
/// replication, and during the election that follows a leader's crash (a
/// candidate or a voter goes down mid-election) — over many runs. Each restart
/// brings back the node's term, vote and log (checked by `crash_restart`), and
/// in the end nothing acknowledged is missing.
#[test]
fn crash_and_restart_during_elections_and_replication_figure_2() {
    for seed in seeds(100) {
        let mut c = Cluster::new(SimConfig::new(5, seed));
        let mut rng = StdRng::seed_from_u64(seed);
        let mut clients = Clients::new(3, 10);
        for _ in 0..30 {
            for _ in 0..rng.gen_range(1..25) {
                clients.step(&mut c);
                c.tick();
            }
            let leader = c.leader();
            let followers: Vec<_> = c.ids().into_iter().filter(|&i| Some(i) != leader).collect();
            match rng.gen_range(0..4) {
                0 => crash_restart(&mut c, *followers.choose(&mut rng).unwrap()),
                1 => {
                    for id in c.ids() {
                        crash_restart(&mut c, id);
                    }
                }
                _ => {
                    if let Some(leader) = leader {
                        crash_restart(&mut c, leader);
                    }
                    // The next election is under way within 15-30 ticks.
                    c.ticks(rng.gen_range(10..35));
                    let candidates: Vec<_> = c
                        .ids()
                        .into_iter()
                        .filter(|&i| c.node(i).status().role == "candidate")
                        .collect();
                    let victim = *candidates.choose(&mut rng).unwrap_or(&followers[0]);
                    crash_restart(&mut c, victim);
                }
            }
        }
        write_some(&mut c, &mut clients, 3, 2000);
        c.converge(300);
        for id in c.ids() {
            clients.check(&c, id);
        }
        assert!(clients.acked() > 10, "the test made little progress");
    }
}

/// Watches that commit_index never goes backwards while a node runs (Figure
/// 2: "increases monotonically"); the harness checks the same of
/// last_applied. A restart begins a new lifetime.
#[derive(Default)]
struct Monotonic {
    commit_index: BTreeMap<NodeId, LogIndex>,
}

impl Monotonic {
    fn check(&mut self, c: &Cluster) {
        for id in c.ids() {
            if !c.is_up(id) {
                self.commit_index.remove(&id);
                continue;
            }
            let now = c.node(id).commit_index();
            if let Some(before) = self.commit_index.insert(id, now) {
                assert!(
                    now >= before,
                    "n{id} commit_index went back from {before} to {now}"
                );
            }
        }
    }

    fn restarted(&mut self, id: NodeId) {
        self.commit_index.remove(&id);
    }
}

/// Churn: random crashes, restarts, partitions and isolations while clients
/// write, on a network that drops, delays and reorders messages — over many
/// runs. Safety is checked after every step; at the end, with the faults
/// gone, every node holds every acknowledged write.
#[test]
fn churn_on_unreliable_network_figure_2() {
    for seed in seeds(100) {
        let mut c = Cluster::new(SimConfig::new(5, seed).unreliable(0.1, 3));
        let mut rng = StdRng::seed_from_u64(seed);
        let mut clients = Clients::new(4, 5);
        let mut monotonic = Monotonic::default();
        for _ in 0..40 {
            for _ in 0..rng.gen_range(1..20) {
                clients.step(&mut c);
                c.tick();
                monotonic.check(&c);
            }
            let ids = c.ids();
            let id = *ids.choose(&mut rng).unwrap();
            match rng.gen_range(0..6) {
                0 => c.crash(id),
                1 => {
                    if !c.is_up(id) {
                        c.restart(id);
                        monotonic.restarted(id);
                    }
                }
                2 => {
                    let mut shuffled = ids.clone();
                    shuffled.shuffle(&mut rng);
                    let (a, b) = shuffled.split_at(rng.gen_range(1..ids.len()));
                    c.partition(&[a, b]);
                }
                3 => c.heal(),
                4 => c.isolate(id),
                _ => {
                    if c.is_up(id) {
                        crash_restart(&mut c, id);
                        monotonic.restarted(id);
                    }
                }
            }
        }
        c.heal();
        restart_all(&mut c);
        c.set_unreliable(0.0, 0);
        write_some(&mut c, &mut clients, 2, 2000);
        c.converge(500);
        for id in c.ids() {
            clients.check(&c, id);
        }
    }
}

/// Figure 8 with crashes, on a network that drops, delays and reorders: the
/// leader crashes at random moments, often right after appending, and comes
/// back later, so leaders of many terms leave uncommitted entries behind.
/// A restarted leader must not commit an old-term entry by counting replicas,
/// nor lose what it acknowledged; the checker verifies that no committed entry
/// ever changes.
#[test]
fn figure_8_unreliable_with_crashes() {
    for seed in seeds(100) {
        let mut c = Cluster::new(SimConfig::new(5, seed).unreliable(0.1, 5));
        let mut rng = StdRng::seed_from_u64(seed);
        let mut clients = Clients::new(3, 0);
        for _ in 0..60 {
            let ticks = if rng.gen_bool(0.1) {
                rng.gen_range(0..150)
            } else {
                rng.gen_range(0..13)
            };
            for _ in 0..ticks {
                clients.step(&mut c);
                c.tick();
            }
            if let Some(leader) = c.leader() {
                if rng.gen_bool(0.5) {
                    c.crash(leader);
                }
            }
            let down: Vec<_> = c.ids().into_iter().filter(|&i| !c.is_up(i)).collect();
            if down.len() > 2 || rng.gen_bool(0.3) {
                if let Some(&id) = down.choose(&mut rng) {
                    c.restart(id);
                }
            }
        }
        restart_all(&mut c);
        c.set_unreliable(0.0, 0);
        write_some(&mut c, &mut clients, 1, 1000);
        c.converge(500);
        for id in c.ids() {
            clients.check(&c, id);
        }
    }
}

/// Figure 2: voted_for is persistent state, "updated on stable storage before
/// responding to RPCs". A voter that grants its vote in a term, crashes and
/// restarts must still refuse any other candidate in that term (§5.2: "each
/// server will vote for at most one candidate in a given term").
#[test]
fn vote_survives_crash_figure_2() {
    let mut c = Cluster::new(SimConfig::new(3, 1));
    let ask = |candidate_id| {
        Message::RequestVote(RequestVote {
            term: 5,
            candidate_id,
            last_log_index: 0,
            last_log_term: 0,
            leadership_transfer: false,
        })
    };
    let granted = |reply: Vec<Message>| match reply.as_slice() {
        [Message::RequestVoteReply(RequestVoteReply { term, vote_granted })] => {
            let (term, vote_granted) = (*term, *vote_granted);
            assert_eq!(term, 5);
            vote_granted
        }
        other => panic!("expected a RequestVoteReply, got {other:?}"),
    };
    assert!(granted(c.exchange(1, 2, ask(2))));
    c.crash(1);
    c.restart(1);
    assert_eq!(
        c.node(1).current_term(),
        5,
        "current_term was not persisted"
    );
    assert_eq!(
        c.node(1).voted_for(),
        Some(2),
        "voted_for was not persisted"
    );
    assert!(
        !granted(c.exchange(1, 3, ask(3))),
        "voted twice in term 5 across a restart"
    );
    // The same candidate asking again (its reply was lost) gets the same answer.
    assert!(granted(c.exchange(1, 2, ask(2))));
}

/// Figure 2 voted_for, over many runs: voters crash and restart at random in
/// the middle of elections (narrow timeouts make split votes, hence many
/// elections); the checker verifies after every step that no term ever has
/// two leaders, which a voter forgetting its vote would cause.
#[test]
fn restarting_voters_never_elect_two_leaders_figure_2() {
    for seed in seeds(100) {
        let mut config = SimConfig::new(5, seed).unreliable(0.05, 2);
        config.election_timeout_ticks = (8, 10);
        let mut c = Cluster::new(config);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut elections = 0;
        let mut last_leader_term = 0;
        for _ in 0..300 {
            c.tick();
            if let Some(l) = c.leader() {
                let term = c.node(l).current_term();
                if term > last_leader_term {
                    elections += 1;
                    last_leader_term = term;
                    // Depose it at once to force the next election.
                    c.crash(l);
                    c.restart(l);
                }
            }
            let victim = *c.ids().choose(&mut rng).unwrap();
            if rng.gen_bool(0.1) {
                c.crash(victim);
                c.restart(victim);
            }
        }
        assert!(
            elections >= 3,
            "only {elections} elections: the test exercised little"
        );
    }
}

/// Election Safety (Figure 3) with crashes: at most one leader per term over
/// hundreds of seeded schedules of partitions, crashes and restarts on 5 and 7
/// nodes — which holds only if term and vote survive a crash (Figure 2).
#[test]
fn at_most_one_leader_per_term_with_crashes_figure_2() {
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

/// Replication scenarios that involve crashes and restarts: they hold only
/// when term, vote and log survive a crash, so they grade this milestone
/// (as in the paper, Figure 8 is a story of crashes).
mod with_crashes {
    use super::*;
    use raft_kv::raft::{AppendEntries, AppendEntriesReply};
    use raft_kv::sim::EventKind;

    fn set(key: &str, value: &str) -> ClientRequest {
        ClientRequest::Set {
            key: key.into(),
            value: value.into(),
            client_id: 0,
            sequence: 0,
        }
    }

    /// §5.3/§5.4: when the leader crashes, a new one is elected and carries on;
    /// nothing the old leader acknowledged is lost. With two of three nodes down
    /// nothing commits.
    #[test]
    fn leader_failure_5_3() {
        for seed in seeds(20) {
            let mut c = Cluster::new(SimConfig::new(3, seed));
            let first = c.elect(200);
            let id = c.request(first, set("a", "1"));
            assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
            c.crash(first);
            let second = c.elect(300);
            assert_ne!(second, first);
            let id = c.request(second, set("b", "2"));
            assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
            assert_eq!(c.node(second).state_machine().get("a"), Some("1"));

            c.crash(second);
            let last = c
                .ids()
                .into_iter()
                .find(|&i| i != first && i != second)
                .unwrap();
            let commit = c.node(last).commit_index();
            c.ticks(300);
            assert!(c.leaders().is_empty(), "one node of three elected itself");
            assert_eq!(c.node(last).commit_index(), commit);

            c.restart(first);
            c.restart(second);
            let leader = c.converge(400);
            assert_eq!(c.node(leader).state_machine().get("b"), Some("2"));
        }
    }

    /// Tick node `id` alone until it is a candidate in a term above `above`.
    fn campaign(c: &mut Cluster, id: NodeId, above: Term) -> Term {
        for _ in 0..1000 {
            c.with_node(id, |n| n.tick());
            let n = c.node(id);
            if matches!(n.role(), Role::Candidate { .. }) && n.current_term() > above {
                return n.current_term();
            }
        }
        panic!("n{id} never stood for election");
    }

    /// Carry `candidate`'s RequestVote to `voter`, and the reply back.
    fn vote(c: &mut Cluster, candidate: NodeId, voter: NodeId) -> bool {
        let n = c.node(candidate);
        let request = RequestVote {
            term: n.current_term(),
            candidate_id: candidate,
            last_log_index: n.log().last_index(),
            last_log_term: n.log().last_term(),
            leadership_transfer: false,
        };
        let reply = c
            .exchange(voter, candidate, Message::RequestVote(request))
            .pop()
            .expect("a request is answered");
        let granted = matches!(
            reply,
            Message::RequestVoteReply(RequestVoteReply {
                vote_granted: true,
                ..
            })
        );
        c.exchange(candidate, voter, reply);
        granted
    }

    /// Carry an AppendEntries with `leader`'s entries prev+1..=last to
    /// `follower`, and the reply back; true if the follower accepted it.
    fn append(
        c: &mut Cluster,
        leader: NodeId,
        follower: NodeId,
        prev: LogIndex,
        last: LogIndex,
    ) -> bool {
        let n = c.node(leader);
        let log = n.log();
        let request = AppendEntries {
            term: n.current_term(),
            leader_id: leader,
            prev_log_index: prev,
            prev_log_term: log.term_at(prev).unwrap(),
            entries: (prev + 1..=last)
                .map(|i| log.get(i).unwrap().clone())
                .collect(),
            leader_commit: n.commit_index(),
            read_round: 0,
        };
        let reply = c
            .exchange(follower, leader, Message::AppendEntries(request))
            .pop()
            .expect("a request is answered");
        let ok = matches!(
            reply,
            Message::AppendEntriesReply(AppendEntriesReply { success: true, .. })
        );
        c.exchange(leader, follower, reply);
        ok
    }

    /// Figure 8 (a)–(c) on servers S1..S5 (ids 1..5), with this implementation's
    /// no-op (§8) as the first entry of each leader:
    /// (a) S1 leads term 1 and replicates index 2 (a client write) to S2 only;
    /// (b) S1 crashes; S5 is elected for term 2 by S3, S4 and itself and accepts
    ///     a different entry at index 2 (its no-op) and 3;
    /// (c) S5 crashes; S1 restarts, is elected for term 3, and replicates index 2
    ///     to S3: now on a majority (S1, S2, S3), though of an older term.
    fn figure_8_up_to_c() -> Cluster {
        let mut c = Cluster::new(SimConfig::new(5, 8));
        for id in 1..=5 {
            c.isolate(id);
        }
        // (a)
        campaign(&mut c, 1, 0);
        assert!(vote(&mut c, 1, 2) && vote(&mut c, 1, 3));
        assert!(c.node(1).is_leader());
        for f in 2..=5 {
            assert!(append(&mut c, 1, f, 0, 1));
        }
        assert_eq!(c.node(1).commit_index(), 1);
        c.request(1, set("x", "from S1 in term 1"));
        assert!(append(&mut c, 1, 2, 1, 2));
        assert_eq!(c.node(1).commit_index(), 1, "index 2 is on 2 of 5 servers");
        // (b)
        c.crash(1);
        campaign(&mut c, 5, 1);
        assert!(vote(&mut c, 5, 3) && vote(&mut c, 5, 4));
        assert!(c.node(5).is_leader());
        c.request(5, set("y", "from S5 in term 2"));
        assert_eq!(c.node(5).log().term_at(2), Some(2));
        // (c)
        c.crash(5);
        c.restart(1);
        campaign(&mut c, 1, 2);
        assert!(vote(&mut c, 1, 2) && vote(&mut c, 1, 3));
        assert!(c.node(1).is_leader());
        let term = c.node(1).current_term();
        assert!(append(&mut c, 1, 3, 1, 2));
        assert!(append(&mut c, 1, 2, 2, 2));
        for s in [1, 2, 3] {
            assert_eq!(
                c.node(s).log().term_at(2),
                Some(1),
                "S{s} holds index 2 of term 1"
            );
        }
        assert!(
            c.node(1).log().term_at(3) == Some(term),
            "S1's own no-op is at 3"
        );
        c
    }

    /// Figure 8 (c)→(d): "a leader cannot determine commitment using log entries
    /// from older terms". Index 2 of term 1 is on a majority, yet S1 must not
    /// commit it — and rightly so: S5 can still be elected (by S2, S3, S4) and
    /// overwrite it.
    #[test]
    fn old_term_entry_not_committed_by_counting_replicas_figure_8() {
        let mut c = figure_8_up_to_c();
        assert!(
            c.node(1).commit_index() < 2,
            "S1 committed an entry of an older term by counting replicas (§5.4.2)"
        );
        assert!(!c.committed().contains_key(&2));
        // (d)
        c.crash(1);
        c.restart(5);
        let above = c.node(2).current_term();
        campaign(&mut c, 5, above);
        for voter in [2, 3, 4] {
            assert!(vote(&mut c, 5, voter), "S{voter} refused S5");
        }
        assert!(c.node(5).is_leader());
        let last = c.node(5).log().last_index();
        for f in [2, 3, 4] {
            assert!(append(&mut c, 5, f, 1, last));
        }
        assert_eq!(c.node(5).commit_index(), last);
        for s in [2, 3, 4, 5] {
            assert_eq!(
                c.node(s).log().term_at(2),
                Some(2),
                "S{s}: index 2 was replaced"
            );
            assert_eq!(c.node(s).state_machine().get("x"), None);
        }
    }

    /// Figure 8 (c)→(e): once S1 replicates an entry of its own term (its no-op)
    /// to a majority, that entry commits, and with it index 2 of term 1 (§5.4.2:
    /// "all prior entries are committed indirectly"). S5 can no longer win.
    #[test]
    fn old_term_entry_committed_with_current_term_entry_figure_8() {
        let mut c = figure_8_up_to_c();
        assert!(append(&mut c, 1, 2, 2, 3));
        assert!(
            c.node(1).commit_index() < 2,
            "3 is on 2 of 5 servers so far"
        );
        assert!(append(&mut c, 1, 3, 2, 3));
        assert_eq!(c.node(1).commit_index(), 3);
        assert_eq!(
            c.node(1).state_machine().get("x"),
            Some("from S1 in term 1")
        );
        // (e) S1 crashes; S5 cannot collect a majority any more.
        c.crash(1);
        c.restart(5);
        let above = c.node(2).current_term();
        campaign(&mut c, 5, above);
        let votes = [2, 3, 4]
            .into_iter()
            .filter(|&v| vote(&mut c, 5, v))
            .count();
        assert_eq!(votes, 1, "only S4, whose log lacks index 2, votes for S5");
        assert!(!c.node(5).is_leader());
    }

    /// AppendEntriesReply rejections that node `id` sent after event `from`.
    fn rejections_from(c: &Cluster, id: NodeId, from: usize) -> usize {
        c.events()[from..]
            .iter()
            .filter(|e| {
                matches!(&e.kind, EventKind::Send { from, what, .. }
                if *from == id && what.starts_with("AppendEntriesReply") && what.contains("reject"))
            })
            .count()
    }

    /// §5.3's optimization: "the follower can include the term of the
    /// conflicting entry and the first index it stores for that term ... one
    /// AppendEntries RPC will be required for each term with conflicting
    /// entries, rather than one RPC per entry." Two followers come back with 50
    /// conflicting entries of one term, facing a leader whose log is longer and
    /// of another term there: the leader must get past them in a couple of
    /// round trips, not 50.
    #[test]
    fn backup_skips_a_whole_term_per_round_trip_5_3() {
        for seed in seeds(20) {
            let mut c = Cluster::new(SimConfig::new(5, seed));
            let old = c.elect(200);
            let id = c.request(old, set("w0", "v"));
            assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
            c.ticks(5);
            let others: Vec<_> = c.ids().into_iter().filter(|&i| i != old).collect();
            let partner = others[0];
            let rest = &others[1..];

            // The old leader and its partner take 50 writes nobody else sees,
            // then crash before their terms can move.
            c.partition(&[&[old, partner], rest]);
            for i in 0..50 {
                c.request(old, set(&format!("u{i}"), "v"));
            }
            c.tick();
            assert_eq!(
                c.node(partner).log().last_index(),
                c.node(old).log().last_index()
            );
            c.crash(old);
            c.crash(partner);

            // The others elect a leader N; it takes 50 writes alone and crashes.
            let ok = c.run_until(300, |c| rest.iter().any(|&l| c.node(l).is_leader()));
            assert!(ok);
            let n = *rest.iter().find(|&&l| c.node(l).is_leader()).unwrap();
            c.isolate(n);
            for i in 0..50 {
                c.request(n, set(&format!("n{i}"), "v"));
            }
            c.crash(n);
            c.heal();
            c.restart(n);
            // Only N can win now (its log is the longest of the latest term), and it
            // commits its 50 entries with its new no-op.
            let ok = c.run_until(500, |c| {
                c.is_up(n)
                    && c.node(n).is_leader()
                    && c.node(n).commit_index() == c.node(n).log().last_index()
            });
            assert!(ok, "N did not become leader and commit");

            let mark = c.events().len();
            c.restart(old);
            c.restart(partner);
            let leader = c.converge(200);
            assert_eq!(leader, n);
            for id in [old, partner] {
                let rejections = rejections_from(&c, id, mark);
                assert!(
                (1..=3).contains(&rejections),
                "n{id} rejected {rejections} AppendEntries to back up over 50 entries of one term"
            );
                assert_eq!(c.node(id).state_machine().get("u0"), None);
                assert_eq!(c.node(id).state_machine().get("n49"), Some("v"));
            }
        }
    }
}

/// A write without a session.
fn plain_set(key: &str, value: &str) -> ClientRequest {
    ClientRequest::Set {
        key: key.into(),
        value: value.into(),
        client_id: 0,
        sequence: 0,
    }
}

/// Group commit on a follower: AppendEntries that arrive together
/// (stepped in one event-loop turn) cost one fsync, and every entry is on
/// the disk when the replies are handed back (Figure 2: persist before
/// responding).
#[test]
fn follower_batch_of_append_entries_is_one_fsync_figure_2() {
    let mut c = Cluster::new(SimConfig::new(3, 11));
    let leader = c.elect(200);
    c.ticks(10);
    let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
    c.isolate(follower);
    let term = c.node(leader).current_term();
    let last = c.node(follower).log().last_index();
    let append = |prev: LogIndex, key: &str| {
        let entry = Entry {
            index: prev + 1,
            term,
            command: kv::Command::Set {
                key: key.into(),
                value: "v".into(),
                client_id: 0,
                sequence: 0,
                timestamp_ms: 0,
            }
            .into(),
        };
        (
            leader,
            Message::AppendEntries(AppendEntries {
                term,
                leader_id: leader,
                prev_log_index: prev,
                prev_log_term: term,
                entries: vec![entry],
                leader_commit: 0,
                read_round: 0,
            }),
        )
    };
    let before = c.disk(follower).fsyncs();
    let batch = vec![
        append(last, "a"),
        append(last + 1, "b"),
        append(last + 2, "c"),
    ];
    let replies = c.exchange_all(follower, batch);
    assert_eq!(
        c.disk(follower).fsyncs() - before,
        1,
        "one fsync for the batch"
    );
    assert_eq!(replies.len(), 3);
    for (i, (_, reply)) in replies.into_iter().enumerate() {
        match reply {
            Message::AppendEntriesReply(r) => {
                assert!(r.success, "reply {i} refused");
                assert_eq!(r.match_index, last + 1 + i as u64);
            }
            other => panic!("expected an AppendEntriesReply, got {other:?}"),
        }
    }
    let durable = c.disk(follower).durable_entries();
    assert_eq!(
        durable.last().map(|e| e.index),
        Some(last + 3),
        "the entries are durable before the replies are returned"
    );
}

/// Give the leader 100 writes at once and check that every one commits;
/// returns how many fsyncs the leader made for them.
fn leader_fsyncs_for_100_writes(config: SimConfig) -> u64 {
    let mut c = Cluster::new(config);
    let leader = c.elect(200);
    c.ticks(10);
    let before = c.disk(leader).fsyncs();
    let ids = c.requests(
        leader,
        (0..100).map(|i| plain_set(&format!("k{i}"), "v")).collect(),
    );
    let fsyncs = c.disk(leader).fsyncs() - before;
    for id in ids {
        assert_eq!(c.wait_response(id, 200), Some(Ok(ClientResponse::Set)));
    }
    fsyncs
}

/// §5.3: all writes of a batch cost one fsync on the leader (group commit).
#[test]
fn batch_is_one_append_and_one_fsync_5_3() {
    let fsyncs = leader_fsyncs_for_100_writes(SimConfig::new(3, 7));
    assert_eq!(fsyncs, 1, "one fsync for the whole batch");
}

/// Without batching, the runtime gives the leader one write per turn, and
/// every turn ends with its own fsync: 100 writes, 100 fsyncs. Every write
/// commits either way.
#[test]
fn without_batching_every_write_is_its_own_fsync() {
    let mut config = SimConfig::new(3, 7);
    config.batching = false;
    let fsyncs = leader_fsyncs_for_100_writes(config);
    assert_eq!(fsyncs, 100);
}
