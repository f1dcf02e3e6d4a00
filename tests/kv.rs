//! Milestone 5: the key-value service — client interaction (§8), sessions
//! for exactly-once writes (dissertation §6.3) and reads (§6.4).
//! Deterministic: replay one seed with
//! `RAFT_SEED=N cargo test --release --test kv NAME`.

use raft_kv::kv::{self, ClientError, ClientRequest, ClientResponse, ClientResult};
use raft_kv::raft::{
    AppendEntries, AppendEntriesReply, Message, NodeId, RequestId, RequestVote, Role,
};
use raft_kv::sim::{seeds, Cluster, SimConfig};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn set(key: &str, value: &str, client_id: u64, sequence: u64) -> ClientRequest {
    ClientRequest::Set {
        key: key.into(),
        value: value.into(),
        client_id,
        sequence,
    }
}

fn delete(key: &str, client_id: u64, sequence: u64) -> ClientRequest {
    ClientRequest::Delete {
        key: key.into(),
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

fn stale_get(key: &str) -> ClientRequest {
    ClientRequest::Get {
        key: key.into(),
        linearizable: false,
    }
}

fn value(v: &str) -> ClientResult {
    Ok(ClientResponse::Value(Some(v.into())))
}

fn absent() -> ClientResult {
    Ok(ClientResponse::Value(None))
}

// ---- A workload of concurrent clients, checked as it runs. ----

/// A client writing one key, one request at a time, retrying with the same
/// (client_id, sequence) until acknowledged.
struct Writer {
    client_id: u64,
    key: String,
    /// true: Set (odd sequences) and Delete (even) in turn, so every Delete
    /// must find the key — a write applied twice would show. false: Set the
    /// key to its sequence number, so reads can tell how recent they are.
    toggle: bool,
    acked: u64,
    /// (request, sequence, tick sent)
    in_flight: Option<(RequestId, u64, u64)>,
}

impl Writer {
    fn request(&self, sequence: u64) -> ClientRequest {
        if self.toggle && sequence.is_multiple_of(2) {
            delete(&self.key, self.client_id, sequence)
        } else {
            set(&self.key, &sequence.to_string(), self.client_id, sequence)
        }
    }

    /// The highest sequence that may have been applied.
    fn attempted(&self) -> u64 {
        self.in_flight.map_or(self.acked, |(_, s, _)| s)
    }
}

/// A client reading a counter key with linearizable reads.
struct Reader {
    /// index of the (counter) writer whose key it reads
    writer: usize,
    /// (request, the writer's acknowledged sequence when the read was issued, tick sent)
    in_flight: Option<(RequestId, u64, u64)>,
}

struct Workload {
    writers: Vec<Writer>,
    readers: Vec<Reader>,
    rng: StdRng,
    /// when false, writers finish what they have in flight and start nothing new
    writing: bool,
    reads_served: u64,
}

impl Workload {
    fn new(seed: u64, counters: u64, togglers: u64, readers: usize) -> Workload {
        let writers: Vec<_> = (1..=counters + togglers)
            .map(|client_id| Writer {
                client_id,
                key: format!("key{client_id}"),
                toggle: client_id > counters,
                acked: 0,
                in_flight: None,
            })
            .collect();
        let readers = (0..readers)
            .map(|i| Reader {
                writer: i % counters as usize,
                in_flight: None,
            })
            .collect();
        Workload {
            writers,
            readers,
            rng: StdRng::seed_from_u64(seed),
            writing: true,
            reads_served: 0,
        }
    }

    fn acked(&self) -> u64 {
        self.writers.iter().map(|w| w.acked).sum()
    }

    /// Some node that believes it leads: usually the newest leader, sometimes
    /// a deposed one that has not noticed yet.
    fn pick_leader(&mut self, c: &Cluster) -> Option<NodeId> {
        let leaders = c.leaders();
        if self.rng.gen_bool(0.2) {
            leaders.choose(&mut self.rng).copied()
        } else {
            c.leader()
        }
    }

    fn step(&mut self, c: &mut Cluster) {
        for w in 0..self.writers.len() {
            let writer = &self.writers[w];
            let sequence = match writer.in_flight {
                None if !self.writing => continue,
                None => writer.acked + 1,
                Some((id, sequence, sent_at)) => match c.response(id) {
                    Some(Ok(response)) => {
                        let expected = match writer.request(sequence) {
                            ClientRequest::Delete { .. } => {
                                ClientResponse::Deleted { existed: true }
                            }
                            _ => ClientResponse::Set,
                        };
                        assert_eq!(
                            response, &expected,
                            "client {} write {sequence}: a Delete that found nothing means \
                             the Set before it was lost or a write was applied twice",
                            writer.client_id
                        );
                        let writer = &mut self.writers[w];
                        writer.acked = sequence;
                        writer.in_flight = None;
                        continue;
                    }
                    Some(Err(ClientError::NotLeader { .. } | ClientError::LeadershipLost)) => {
                        sequence
                    }
                    Some(Err(other)) => panic!("write {sequence} failed: {other:?}"),
                    None if c.now() - sent_at > 40 => sequence,
                    None => continue,
                },
            };
            // With no leader to send to, the old attempt stays in flight: it
            // may still commit, and its answer still counts.
            let Some(leader) = self.pick_leader(c) else {
                continue;
            };
            let request = self.writers[w].request(sequence);
            let id = c.request(leader, request);
            self.writers[w].in_flight = Some((id, sequence, c.now()));
        }
        for r in 0..self.readers.len() {
            let writer = &self.writers[self.readers[r].writer];
            if let Some((id, acked_at_issue, sent_at)) = self.readers[r].in_flight {
                match c.response(id) {
                    Some(Ok(ClientResponse::Value(v))) => {
                        let seen: u64 = v.as_deref().map_or(0, |v| v.parse().unwrap());
                        // §6.4: a read reflects every write acknowledged before
                        // it was issued, and nothing not yet written.
                        assert!(
                            seen >= acked_at_issue,
                            "linearizable read of {} returned {seen}, but {acked_at_issue} \
                             was acknowledged before the read was issued",
                            writer.key
                        );
                        assert!(seen <= writer.attempted(), "read a value never written");
                        self.reads_served += 1;
                    }
                    Some(Err(ClientError::NotLeader { .. } | ClientError::LeadershipLost)) => {}
                    Some(other) => panic!("read answered {other:?}"),
                    None if c.now() - sent_at > 40 => {}
                    None => continue,
                }
                self.readers[r].in_flight = None;
            }
            let acked = writer.acked;
            let key = writer.key.clone();
            if let Some(leader) = self.pick_leader(c) {
                let id = c.request(leader, get(&key));
                self.readers[r].in_flight = Some((id, acked, c.now()));
            }
        }
    }

    /// Let every writer have one more write acknowledged, stop writing, let
    /// every write in flight finish and every reader be answered once more,
    /// then check that the leader holds exactly the
    /// acknowledged state.
    fn finish(&mut self, c: &mut Cluster, max_ticks: u64) {
        let deadline = c.now() + max_ticks;
        // Writes keep working: every writer gets one more acknowledged.
        let goals: Vec<u64> = self.writers.iter().map(|w| w.acked + 1).collect();
        while self
            .writers
            .iter()
            .zip(&goals)
            .any(|(w, &goal)| w.acked < goal)
        {
            assert!(c.now() < deadline, "writes no longer acknowledged");
            self.step(c);
            c.tick();
        }
        self.writing = false;
        while self.writers.iter().any(|w| w.in_flight.is_some()) {
            assert!(c.now() < deadline, "writes still unacknowledged");
            self.step(c);
            c.tick();
        }
        // Reads keep working too: every reader gets one more answer.
        let reads = self.reads_served + self.readers.len() as u64;
        while self.reads_served < reads {
            assert!(c.now() < deadline, "reads no longer answered");
            self.step(c);
            c.tick();
        }
        let leader = c.converge(300);
        let state_machine = c.node(leader).state_machine();
        for w in &self.writers {
            let expected = (!w.toggle || w.acked % 2 == 1).then(|| w.acked.to_string());
            let expected = expected.filter(|_| w.acked > 0);
            assert_eq!(
                state_machine.get(&w.key),
                expected.as_deref(),
                "client {} had {} writes acknowledged",
                w.client_id,
                w.acked
            );
        }
    }
}

/// §8 basics: Set, linearizable Get, Delete (reporting whether the key
/// existed) and Get of a missing key, through the leader; every node ends
/// with the same state machine.
#[test]
fn set_get_delete_8() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        c.elect(200);
        let answer = |c: &mut Cluster, r| c.submit(r, 200).expect("answered");
        assert_eq!(answer(&mut c, set("a", "1", 0, 0)), Ok(ClientResponse::Set));
        assert_eq!(answer(&mut c, get("a")), value("1"));
        assert_eq!(answer(&mut c, set("a", "2", 0, 0)), Ok(ClientResponse::Set));
        assert_eq!(answer(&mut c, get("a")), value("2"));
        assert_eq!(
            answer(&mut c, delete("a", 0, 0)),
            Ok(ClientResponse::Deleted { existed: true })
        );
        assert_eq!(
            answer(&mut c, delete("a", 0, 0)),
            Ok(ClientResponse::Deleted { existed: false })
        );
        assert_eq!(answer(&mut c, get("a")), Ok(ClientResponse::Value(None)));
        assert_eq!(
            answer(&mut c, get("never")),
            Ok(ClientResponse::Value(None))
        );
        let leader = c.converge(100);
        assert!(c.node(leader).state_machine().is_empty());
    }
}

/// Several writers and linearizable readers at once on a reliable network:
/// every read reflects all writes acknowledged before it was issued (§6.4),
/// and every write is applied exactly once (§6.3).
#[test]
fn concurrent_clients_8() {
    for seed in seeds(20) {
        let mut c = Cluster::new(SimConfig::new(5, seed));
        let mut w = Workload::new(seed, 3, 3, 4);
        c.elect(200);
        for _ in 0..150 {
            w.step(&mut c);
            c.tick();
        }
        w.finish(&mut c, 300);
        assert!(w.acked() > 150, "only {} writes in 150 ticks", w.acked());
        assert!(w.reads_served > 150);
    }
}

/// The same on a network that drops, delays and reorders messages, with
/// leaders cut off and crashing now and then: answers may be lost and
/// requests retried, yet no read is stale and no write applies twice.
#[test]
fn clients_on_unreliable_network_8() {
    for seed in seeds(60) {
        let mut c = Cluster::new(SimConfig::new(5, seed).unreliable(0.1, 3));
        let mut rng = StdRng::seed_from_u64(seed);
        let mut w = Workload::new(seed, 2, 3, 3);
        for round in 0..15 {
            for _ in 0..rng.gen_range(10..40) {
                w.step(&mut c);
                c.tick();
            }
            if let Some(leader) = c.leader() {
                match round % 3 {
                    0 => c.isolate(leader),
                    1 => {
                        c.crash(leader);
                        c.restart(leader);
                    }
                    _ => c.heal(),
                }
            }
        }
        c.heal();
        c.set_unreliable(0.0, 0);
        // Once the network heals, every writer and reader makes progress
        // (`finish` asserts it), however little got through before.
        w.finish(&mut c, 2000);
    }
}

/// The fast path (docs/performance.md) only makes things faster: with its
/// parts off — no pipelining, the leader syncing before it sends, a ReadIndex
/// round per batch of reads — the same kind of workload on an unreliable
/// network keeps the same guarantees.
#[test]
fn clients_without_the_fast_path_8() {
    for seed in seeds(30) {
        let config = SimConfig::new(5, seed)
            .unreliable(0.1, 3)
            .without_fast_path();
        let mut c = Cluster::new(config);
        let mut w = Workload::new(seed, 2, 3, 3);
        for round in 0..6 {
            for _ in 0..40 {
                w.step(&mut c);
                c.tick();
            }
            if let (Some(leader), 0) = (c.leader(), round % 2) {
                c.crash(leader);
                c.restart(leader);
            }
        }
        c.set_unreliable(0.0, 0);
        w.finish(&mut c, 2000);
    }
}

/// Dissertation §6.3, one key: a Set, then a Delete whose answer is lost and
/// is retried with the same (client_id, sequence) after another client wrote
/// the key again. The retry gets the recorded answer (existed: true) and is
/// not applied again, so the other client's value stays. An older sequence
/// is refused.
#[test]
fn retried_write_applies_once_6_3() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        c.elect(200);
        assert_eq!(
            c.submit(set("k", "1", 7, 1), 200),
            Some(Ok(ClientResponse::Set))
        );
        let deleted = Some(Ok(ClientResponse::Deleted { existed: true }));
        assert_eq!(c.submit(delete("k", 7, 2), 200), deleted);
        assert_eq!(
            c.submit(set("k", "2", 8, 1), 200),
            Some(Ok(ClientResponse::Set))
        );
        assert_eq!(
            c.submit(delete("k", 7, 2), 200),
            deleted,
            "not the recorded answer"
        );
        assert_eq!(
            c.submit(get("k"), 200),
            Some(value("2")),
            "the retry was applied"
        );
        assert_eq!(
            c.submit(set("k", "3", 7, 1), 200),
            Some(Err(ClientError::StaleSequence))
        );
        assert_eq!(c.submit(get("k"), 200), Some(value("2")));
    }
}

/// §6.3 across a change of leader: the leader replicates a Delete to both
/// followers and is cut off before it learns that it committed, so its
/// client hears LeadershipLost. The retry goes to the new leader, which has
/// the entry: it answers with the recorded result and applies it once.
#[test]
fn retry_after_leader_change_applies_once_6_3() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let old = c.elect(200);
        assert_eq!(
            c.submit(set("k", "1", 7, 1), 200),
            Some(Ok(ClientResponse::Set))
        );
        c.converge(50);

        // The Delete reaches the followers by hand; their replies never
        // reach the leader, and what the leader sent itself is lost.
        let first = c.request(old, delete("k", 7, 2));
        let n = c.node(old);
        let index = n.log().last_index();
        let request = AppendEntries {
            term: n.current_term(),
            leader_id: old,
            prev_log_index: index - 1,
            prev_log_term: n.log().term_at(index - 1).unwrap(),
            entries: vec![n.log().get(index).unwrap().clone()],
            leader_commit: n.commit_index(),
            read_round: 0,
        };
        c.isolate(old);
        for f in c.ids().into_iter().filter(|&i| i != old) {
            let reply = c.with_node(f, |n| n.handle_append_entries(request.clone()));
            assert!(reply.success);
        }
        let ok = c.run_until(300, |c| c.response(first).is_some());
        assert!(ok, "the cut-off leader never stepped down");
        assert_eq!(c.response(first), Some(&Err(ClientError::LeadershipLost)));

        let retried = c.submit(delete("k", 7, 2), 300);
        assert_eq!(retried, Some(Ok(ClientResponse::Deleted { existed: true })));
        c.heal();
        let leader = c.converge(300);
        assert_eq!(c.node(leader).state_machine().get("k"), None);
        assert_eq!(
            c.submit(set("k", "2", 8, 1), 200),
            Some(Ok(ClientResponse::Set))
        );
        assert_eq!(
            c.submit(delete("k", 7, 2), 200),
            Some(Ok(ClientResponse::Deleted { existed: true }))
        );
        assert_eq!(c.submit(get("k"), 200), Some(value("2")));
    }
}

/// §5.2/§8: a leader cut off in a minority can append but never commit.
/// Writes sent to it are never acknowledged — they fail with LeadershipLost
/// when it steps down (dissertation §6.2) or go unanswered — and never show up
/// later, after the partition heals.
#[test]
fn writes_to_minority_leader_never_succeed_8() {
    for seed in seeds(30) {
        let mut c = Cluster::new(SimConfig::new(5, seed));
        let old = c.elect(200);
        let others: Vec<_> = c.ids().into_iter().filter(|&i| i != old).collect();
        c.partition(&[&[old, others[0]], &others[1..]]);
        let doomed: Vec<_> = (0..5)
            .map(|i| c.request(old, set(&format!("minority{i}"), "x", 5, i + 1)))
            .collect();
        let ok = c.run_until(300, |c| others[1..].iter().any(|&i| c.node(i).is_leader()));
        assert!(ok, "the majority elected no leader");
        assert_eq!(
            c.submit(set("majority", "y", 6, 1), 300),
            Some(Ok(ClientResponse::Set))
        );
        c.ticks(100);
        for id in &doomed {
            assert!(
                matches!(
                    c.response(*id),
                    None | Some(Err(
                        ClientError::LeadershipLost | ClientError::NotLeader { .. }
                    ))
                ),
                "a write to the minority leader was answered {:?}",
                c.response(*id)
            );
        }
        c.heal();
        c.converge(500);
        for id in c.ids() {
            let state_machine = c.node(id).state_machine();
            assert_eq!(
                state_machine.get("minority0"),
                None,
                "n{id} applied a minority write"
            );
            assert_eq!(state_machine.get("majority"), Some("y"));
        }
        let lost = c.committed().values().any(|(_, cmd)| {
            let raft_kv::raft::Command::Client(bytes) = cmd else {
                return false;
            };
            matches!(kv::decode_command(bytes), Ok(kv::Command::Set { key, .. }) if key.starts_with("minority"))
        });
        assert!(!lost, "a minority write was committed");
    }
}

/// Dissertation §6.4: a leader serves a linearizable read only after a
/// majority confirms it is still leader. An old leader cut off from the
/// others never answers one — not before it notices (it still believes it is
/// leader while the new leader acknowledges a newer write), nor after: its
/// reads stay pending, then fail.
#[test]
fn partitioned_old_leader_never_serves_linearizable_reads_6_4() {
    let mut believed_leader_after_new_write = 0;
    for seed in seeds(50) {
        let mut c = Cluster::new(SimConfig::new(5, seed));
        let old = c.elect(200);
        assert_eq!(
            c.submit(set("k", "old", 1, 1), 200),
            Some(Ok(ClientResponse::Set))
        );
        c.isolate(old);
        let mut reads = vec![c.request(old, get("k"))];
        let ok = c.run_until(300, |c| c.leaders().iter().any(|&l| l != old));
        assert!(ok, "no new leader");
        let new = c.leaders().into_iter().find(|&l| l != old).unwrap();
        let id = c.request(new, set("k", "new", 1, 2));
        assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
        if c.node(old).is_leader() {
            believed_leader_after_new_write += 1;
            reads.push(c.request(old, get("k")));
        }
        for _ in 0..100 {
            c.tick();
            if c.node(old).is_leader() {
                reads.push(c.request(old, get("k")));
            }
        }
        for id in reads {
            assert!(
                matches!(
                    c.response(id),
                    None | Some(Err(
                        ClientError::LeadershipLost | ClientError::NotLeader { .. }
                    ))
                ),
                "the cut-off old leader answered a linearizable read with {:?}",
                c.response(id)
            );
        }
        assert_eq!(c.submit(get("k"), 100), Some(value("new")));
    }
    if std::env::var("RAFT_SEED").is_err() {
        assert!(
            believed_leader_after_new_write > 0,
            "no run had the old leader still believing it led after the new write"
        );
    }
}

/// STALE reads (linearizable: false) are served by any node from its own
/// state machine — fast, and possibly out of date, as documented; a
/// linearizable read sent to a follower asks the leader for a read index
/// (dissertation §6.4) and is answered by the follower, never out of date:
/// cut off from the leader, the follower sends it back to the client.
#[test]
fn stale_reads_served_by_followers_6_4() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let leader = c.elect(200);
        assert_eq!(
            c.submit(set("k", "1", 0, 0), 200),
            Some(Ok(ClientResponse::Set))
        );
        c.converge(50);
        let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
        let id = c.request(follower, stale_get("k"));
        assert_eq!(
            c.response(id),
            Some(&value("1")),
            "answered at once, locally"
        );
        let id = c.request(follower, get("k"));
        assert_eq!(c.response(id), None, "it waits for the leader's read index");
        assert_eq!(c.wait_response(id, 50), Some(value("1")));

        c.isolate(follower);
        assert_eq!(
            c.submit(set("k", "2", 0, 0), 200),
            Some(Ok(ClientResponse::Set))
        );
        let id = c.request(follower, stale_get("k"));
        assert_eq!(
            c.response(id),
            Some(&value("1")),
            "a stale read is the follower's own state"
        );
        let id = c.request(follower, get("k"));
        match c.wait_response(id, 400) {
            Some(Err(ClientError::NotLeader { .. })) => {}
            other => {
                panic!("seed {seed}: a cut-off follower answered a linearizable read: {other:?}")
            }
        }
        c.reconnect(follower);
        // Its election while cut off left it in a newer term: it answers
        // stale reads again once a leader of that term has told it what is
        // committed.
        c.run_until(300, |c| {
            let node = c.node(follower);
            node.state_machine().get("k") == Some("2")
                && node.leader_id().is_some()
                && node.log().term_at(node.commit_index()) == Some(node.current_term())
                && node.last_applied() == node.commit_index()
        });
        let id = c.request(follower, stale_get("k"));
        assert_eq!(c.response(id), Some(&value("2")), "seed {seed}");
    }
}

/// Linearizable reads at a follower (dissertation §6.4): a batch costs one
/// ReadIndex to the leader, whatever its size, and every read in it sees
/// every write acknowledged before it was sent.
#[test]
fn a_follower_serves_linearizable_reads_with_the_leaders_read_index_6_4() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let leader = c.elect(200);
        let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
        for round in 0..5 {
            let v = round.to_string();
            assert_eq!(
                c.submit(set("k", &v, 0, 0), 200),
                Some(Ok(ClientResponse::Set))
            );
            // At once, before the follower can have heard the commit.
            let asked = c.sent_by(follower, "ReadIndex");
            let ids = c.requests(follower, vec![get("k"), get("k"), get("other")]);
            for (id, want) in ids.iter().zip([value(&v), value(&v), absent()]) {
                assert_eq!(c.wait_response(*id, 100), Some(want), "seed {seed}");
            }
            let sent = c.sent_by(follower, "ReadIndex") - asked;
            assert_eq!(sent, 1, "seed {seed}: one ReadIndex per batch");
        }
        c.check();
    }
}

/// A restarted node's commit index starts back at its snapshot, so its
/// state machine lacks writes its own log holds until a leader of its term
/// tells it what is committed. A stale read there must not call a key that
/// exists absent: the node says it is behind, and answers once caught up.
#[test]
fn a_restarted_follower_does_not_call_an_existing_key_absent_6_4() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let leader = c.elect(200);
        assert_eq!(
            c.submit(set("k", "1", 0, 0), 200),
            Some(Ok(ClientResponse::Set))
        );
        c.converge(50);
        let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
        c.crash(follower);
        c.restart(follower);
        assert_eq!(c.node(follower).state_machine().get("k"), None);

        let id = c.request(follower, stale_get("k"));
        match c.response(id) {
            Some(Err(ClientError::Behind {
                node,
                last_applied: 0,
                ..
            })) if *node == follower => {}
            other => panic!("seed {seed}: a restarted follower answered {other:?}"),
        }
        c.run_until(300, |c| {
            c.node(follower).state_machine().get("k") == Some("1")
                && c.node(follower).leader_id().is_some()
        });
        c.ticks(10);
        let id = c.request(follower, stale_get("k"));
        assert_eq!(c.response(id), Some(&value("1")), "seed {seed}");
    }
}

/// After the whole cluster restarts, even the new leader does not know what
/// is committed until its no-op commits (§8), nor do its followers until it
/// tells them: at no moment does any node answer a stale read of an existing
/// key with "absent".
#[test]
fn after_a_full_restart_no_stale_read_calls_an_existing_key_absent_6_4() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        c.elect(200);
        assert_eq!(
            c.submit(set("k", "1", 0, 0), 200),
            Some(Ok(ClientResponse::Set))
        );
        c.converge(50);
        for id in c.ids() {
            c.crash(id);
        }
        for id in c.ids() {
            c.restart(id);
        }
        let mut answered = 0;
        for _ in 0..300 {
            for id in c.ids() {
                let request = c.request(id, stale_get("k"));
                match c.response(request) {
                    Some(Err(ClientError::Behind { .. })) => {}
                    Some(answer) if *answer == value("1") => answered += 1,
                    other => panic!("seed {seed}: node {id} answered {other:?} at t={}", c.now()),
                }
            }
            c.tick();
        }
        assert!(answered > 0, "seed {seed}: no node ever caught up");
    }
}

/// Bad input gets a clear error and changes nothing: an empty key, a key
/// over 4 KiB or a value over 1 MiB is refused with InvalidArgument — on the
/// leader and on a follower, alone or in a batch with valid requests —
/// before anything is appended or synced. The limits themselves are accepted.
#[test]
fn invalid_input_is_refused_and_changes_nothing_8() {
    let mut c = Cluster::new(SimConfig::new(3, 1));
    let leader = c.elect(200);
    c.ticks(10);
    let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
    let long_key = "k".repeat(4097);
    let long_value = "v".repeat(1024 * 1024 + 1);
    let invalid = vec![
        set("", "v", 1, 1),
        set(&long_key, "v", 1, 1),
        set("k", &long_value, 1, 1),
        delete("", 1, 1),
        delete(&long_key, 1, 1),
        get(""),
        stale_get(&long_key),
    ];
    for node in [leader, follower] {
        let last = c.node(node).log().last_index();
        let fsyncs = c.disk(node).fsyncs();
        let ids = c.requests(node, invalid.clone());
        for (id, request) in ids.into_iter().zip(&invalid) {
            match c.response(id) {
                Some(Err(ClientError::InvalidArgument(reason))) => {
                    assert!(!reason.is_empty() && !reason.contains('\n'), "{reason:?}");
                }
                other => panic!("{request:.60?} answered {other:?}"),
            }
        }
        assert_eq!(
            c.node(node).log().last_index(),
            last,
            "invalid input appended"
        );
        assert_eq!(c.disk(node).fsyncs(), fsyncs, "invalid input synced");
    }
    c.ticks(20);
    assert!(c.node(leader).state_machine().is_empty());

    // In one batch with valid writes, only the valid ones are appended.
    let last = c.node(leader).log().last_index();
    let ids = c.requests(
        leader,
        vec![
            set("", "v", 1, 1),
            set(&"k".repeat(4096), &"v".repeat(1024 * 1024), 1, 1),
            set("k", &long_value, 1, 2),
        ],
    );
    assert_eq!(c.node(leader).log().last_index(), last + 1);
    assert_eq!(c.wait_response(ids[1], 50), Some(Ok(ClientResponse::Set)));
    assert!(matches!(
        c.response(ids[2]),
        Some(Err(ClientError::InvalidArgument(_)))
    ));
    c.converge(100);
}

/// Dissertation §6.4 step 1 (and §8): a new leader does not know which
/// entries are committed until an entry of its own term — its no-op —
/// commits. A read it receives first must wait for the no-op, even once a
/// majority has confirmed its leadership; otherwise it could miss a write
/// the old leader acknowledged.
#[test]
fn new_leader_reads_wait_for_its_noop_6_4() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let old = c.elect(200);
        let id = c.request(old, set("k", "acknowledged", 1, 1));
        assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
        let index = c.node(old).commit_index();
        c.crash(old);
        let (a, b) = {
            let rest: Vec<_> = c.ids().into_iter().filter(|&i| i != old).collect();
            (rest[0], rest[1])
        };
        assert!(
            c.node(a).commit_index() < index,
            "followers do not know it committed yet"
        );

        // a becomes leader with b's vote, carried by hand; what a sends
        // itself is lost.
        c.isolate(a);
        c.isolate(b);
        while !matches!(c.node(a).role(), Role::Candidate { .. }) {
            c.with_node(a, |n| n.tick());
        }
        let n = c.node(a);
        let request = RequestVote {
            term: n.current_term(),
            candidate_id: a,
            last_log_index: n.log().last_index(),
            last_log_term: n.log().last_term(),
            leadership_transfer: false,
        };
        let reply = c.exchange(b, a, Message::RequestVote(request)).pop();
        c.exchange(a, b, reply.unwrap());
        assert!(c.node(a).is_leader());
        let read = c.request(a, get("k"));

        // b confirms a's leadership for the read's round, but has not
        // received the no-op.
        let n = c.node(a);
        let Role::Leader(state) = n.role() else {
            unreachable!()
        };
        let noop = n.log().last_index();
        let heartbeat = AppendEntries {
            term: n.current_term(),
            leader_id: a,
            prev_log_index: noop - 1,
            prev_log_term: n.log().term_at(noop - 1).unwrap(),
            entries: vec![],
            leader_commit: n.commit_index(),
            read_round: state.read_round,
        };
        let reply = c.exchange(b, a, Message::AppendEntries(heartbeat)).pop();
        assert!(matches!(
            reply,
            Some(Message::AppendEntriesReply(AppendEntriesReply {
                success: true,
                ..
            }))
        ));
        c.exchange(a, b, reply.unwrap());
        assert_eq!(
            c.response(read),
            None,
            "read served before the new leader's no-op committed"
        );

        c.heal();
        assert_eq!(c.wait_response(read, 50), Some(value("acknowledged")));
    }
}

/// Sessions (§6.3) are part of the state machine, so they survive snapshots
/// (§7) and restarts: with frequent compaction and nodes crashing, a workload
/// of retried writes still applies every write exactly once and reads stay
/// linearizable.
#[test]
fn sessions_survive_snapshots_and_crashes_6_3() {
    for seed in seeds(40) {
        let config = SimConfig::new(5, seed)
            .unreliable(0.05, 2)
            .snapshot_log_bytes(400, 256);
        let mut c = Cluster::new(config);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut w = Workload::new(seed, 2, 3, 2);
        for _ in 0..15 {
            for _ in 0..rng.gen_range(10..40) {
                w.step(&mut c);
                c.tick();
            }
            let id = *c.ids().choose(&mut rng).unwrap();
            c.crash(id);
            c.restart(id);
        }
        for id in c.ids() {
            c.crash(id);
        }
        for id in c.ids() {
            c.restart(id);
        }
        c.set_unreliable(0.0, 0);
        w.finish(&mut c, 2000);
        assert!(
            c.ids()
                .iter()
                .all(|&id| c.node(id).log().snapshot_index() > 0),
            "some node never compacted"
        );
    }
}

/// Dissertation §6.3: the session table is part of the state machine, so it
/// is in every snapshot. A write retried after its entry was compacted away
/// and every node restarted from snapshots still gets its recorded answer,
/// and is not applied a second time.
#[test]
fn sessions_survive_snapshot_and_restart_6_3() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(3, seed).snapshot_log_bytes(512, 64));
        c.elect(200);
        let delete = ClientRequest::Delete {
            key: "k".into(),
            client_id: 7,
            sequence: 2,
        };
        assert_eq!(
            c.submit(set("k", "1", 7, 1), 200),
            Some(Ok(ClientResponse::Set))
        );
        assert_eq!(
            c.submit(delete.clone(), 200),
            Some(Ok(ClientResponse::Deleted { existed: true }))
        );
        assert_eq!(
            c.submit(set("k", "2", 8, 1), 200),
            Some(Ok(ClientResponse::Set))
        );
        for i in 0..60 {
            let filler = set(&format!("filler{i}"), "v", 9, i + 1);
            assert_eq!(c.submit(filler, 1000), Some(Ok(ClientResponse::Set)));
        }
        c.converge(100);
        for id in c.ids() {
            c.crash(id);
        }
        for id in c.ids() {
            c.restart(id);
            assert!(
                c.node(id).log().snapshot_index() > 3,
                "the session entries are compacted"
            );
        }
        assert_eq!(
            c.submit(delete, 300),
            Some(Ok(ClientResponse::Deleted { existed: true })),
            "the retry did not get the recorded answer"
        );
        assert_eq!(
            c.submit(set("k", "3", 7, 1), 200),
            Some(Err(ClientError::StaleSequence))
        );
        let leader = c.converge(100);
        assert_eq!(
            c.node(leader).state_machine().get("k"),
            Some("2"),
            "a retried delete was applied twice"
        );
    }
}

/// Dissertation §6.4, a regression: a reply confirms leadership only for a
/// request of the leader's current term. Read rounds start again at 0 in
/// every term, so a rejection of an old-term heartbeat that echoed its read
/// round would confirm the same-numbered round of a later term of the same
/// leader. The schedule: L leads term t at read round R; one heartbeat of
/// round R to B is held back; L loses and regains leadership (term t+2 or
/// later); the old heartbeat reaches B, which rejects it in that term; L is
/// cut off, the
/// others elect a leader and acknowledge a newer write; a read at L, which
/// still believes it leads, must not be answered with the old value.
#[test]
fn a_reply_to_an_old_term_heartbeat_confirms_no_read_round_6_4() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let l = c.elect(200);
        assert_eq!(
            c.submit(set("k", "old", 1, 1), 200),
            Some(Ok(ClientResponse::Set))
        );
        c.converge(50);
        for _ in 0..3 {
            assert_eq!(c.submit(get("k"), 50), Some(value("old")));
        }
        let b = c.ids().into_iter().find(|&id| id != l).unwrap();
        let n = c.node(l);
        let Role::Leader(leader) = n.role() else {
            panic!("n{l} leads")
        };
        assert!(leader.read_round >= 3, "the reads started read rounds");
        let held_back = Message::AppendEntries(AppendEntries {
            term: n.current_term(),
            leader_id: l,
            prev_log_index: n.log().last_index(),
            prev_log_term: n.log().last_term(),
            entries: vec![],
            leader_commit: n.commit_index(),
            read_round: leader.read_round,
        });
        let t = n.current_term();

        // L loses leadership (t+1) and wins it back (t+2), its timer alone
        // running out.
        c.crash(l);
        assert!(c.run_until(300, |c| c.leader().is_some()));
        c.restart(l);
        c.converge(100);
        let follower_term = c.node(l).current_term();
        while !matches!(c.node(l).role(), Role::Candidate { .. }) {
            c.with_node(l, |n| n.tick());
        }
        c.tick();
        assert!(c.node(l).is_leader(), "n{l} won the election it started");
        assert!(c.node(l).current_term() == follower_term + 1 && follower_term > t);

        // The held-back heartbeat of term t reaches B, now in L's new term.
        let reply = c
            .exchange(b, l, held_back)
            .pop()
            .expect("a request is answered");
        c.exchange(l, b, reply);

        // L is cut off; the others elect a leader and acknowledge a write.
        c.isolate(l);
        assert!(c.run_until(300, |c| c.leaders().iter().any(|&x| x != l)));
        let new = c.leaders().into_iter().find(|&x| x != l).unwrap();
        let write = c.request(new, set("k", "new", 1, 2));
        assert_eq!(c.wait_response(write, 50), Some(Ok(ClientResponse::Set)));
        assert!(c.node(l).is_leader(), "check-quorum has not fired yet");

        let read = c.request(l, get("k"));
        c.ticks(100);
        assert!(
            matches!(
                c.response(read),
                None | Some(Err(
                    ClientError::LeadershipLost | ClientError::NotLeader { .. }
                ))
            ),
            "the cut-off leader answered {:?} after `new` was acknowledged",
            c.response(read)
        );
    }
}

// ---- Honest and bounded sessions (dissertation §6.3, issue 15). ----

/// Every running node's state machine, sessions and clock included, is the
/// leader's: they discarded the same sessions at the same index.
fn replicas_agree(c: &mut Cluster) {
    let leader = c.converge(300);
    for id in c.ids() {
        assert_eq!(
            c.node(id).state_machine(),
            c.node(leader).state_machine(),
            "n{id}'s state machine differs from the leader's"
        );
    }
}

/// Dissertation §6.3: the session remembers which command its sequence
/// applied. The same (client_id, sequence) for another command is refused
/// with SequenceReused and not applied (issue 15: `Set other=E` answered
/// OK and then `get other` found nothing); the same command again is a
/// retry and gets the recorded answer.
#[test]
fn a_reused_sequence_for_another_command_is_refused_6_3() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        c.elect(200);
        let ok = Some(Ok(ClientResponse::Set));
        assert_eq!(c.submit(set("k", "A", 7, 1), 200), ok);
        assert_eq!(c.submit(set("k", "B", 7, 2), 200), ok);
        let reused = Some(Err(ClientError::SequenceReused {
            client_id: 7,
            sequence: 2,
        }));
        assert_eq!(c.submit(set("other", "E", 7, 2), 200), reused);
        assert_eq!(c.submit(delete("k", 7, 2), 200), reused);
        assert_eq!(
            c.submit(get("other"), 200),
            Some(Ok(ClientResponse::Value(None)))
        );
        assert_eq!(c.submit(get("k"), 200), Some(value("B")));
        assert_eq!(c.submit(set("k", "B", 7, 2), 200), ok, "a retry");
        replicas_agree(&mut c);
    }
}

/// The valid range: client_id 0 is no session and needs sequence 0; a
/// session's sequences are 1 to 2^63 - 1. Anything else is refused with
/// InvalidArgument before it is proposed, by leader and follower alike.
#[test]
fn sequences_out_of_range_are_refused_before_the_log_6_3() {
    let mut c = Cluster::new(SimConfig::new(3, 1));
    let leader = c.elect(200);
    c.ticks(10);
    let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
    let max = kv::MAX_SEQUENCE;
    let invalid = vec![
        set("k", "v", 7, 0),
        set("k", "v", 7, max + 1),
        set("k", "v", 7, u64::MAX),
        set("k", "v", 0, 1),
        delete("k", 7, 0),
        delete("k", 0, u64::MAX),
    ];
    for node in [leader, follower] {
        let last = c.node(node).log().last_index();
        let ids = c.requests(node, invalid.clone());
        for (id, request) in ids.into_iter().zip(&invalid) {
            match c.response(id) {
                Some(Err(ClientError::InvalidArgument(reason))) => {
                    assert!(reason.contains("sequence"), "{reason}");
                }
                other => panic!("{request:?} answered {other:?}"),
            }
        }
        assert_eq!(c.node(node).log().last_index(), last, "appended");
    }
    // The ends of the range are accepted.
    let ok = Some(Ok(ClientResponse::Set));
    assert_eq!(c.submit(set("k", "1", 7, 1), 200), ok);
    assert_eq!(c.submit(set("k", "2", 7, max), 200), ok);
    assert_eq!(c.submit(set("k", "3", 0, 0), 200), ok);
    replicas_agree(&mut c);
}

/// Dissertation §6.3: a client without a session may only start one at
/// sequence 1; a later sequence is answered SessionExpired and not
/// applied — its session expired or was evicted, and an earlier request
/// of it may or may not have been applied.
#[test]
fn a_later_sequence_without_a_session_is_told_it_expired_6_3() {
    for seed in seeds(5) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        c.elect(200);
        let expired = Some(Err(ClientError::SessionExpired { client_id: 9 }));
        assert_eq!(c.submit(set("k", "v", 9, 2), 200), expired);
        assert_eq!(c.submit(delete("k", 9, 5), 200), expired);
        assert_eq!(
            c.submit(get("k"), 200),
            Some(Ok(ClientResponse::Value(None)))
        );
        replicas_agree(&mut c);
        assert_eq!(c.node(c.leader().unwrap()).state_machine().sessions(), 0);
    }
}

/// Dissertation §6.3: "servers must agree on when sessions expire", so
/// expiry is decided from the log. Each write carries the time its leader
/// received it; a session unused for longer than the TTL by the largest
/// such time applied is expired, on every replica at the same index — even
/// when the nodes' clocks differ and leadership moves to a node whose
/// clock is behind (the log's clock never goes back).
#[test]
fn sessions_expire_by_the_log_clock_on_every_replica_6_3() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let first = c.elect(200);
        let ok = Some(Ok(ClientResponse::Set));
        assert_eq!(c.submit(set("a", "1", 1, 1), 200), ok);
        assert_eq!(c.submit(set("b", "1", 2, 1), 200), ok);
        // Time passes: client 2 stays active, client 1 is idle.
        c.advance_clock(kv::SESSION_TTL_MS / 2);
        assert_eq!(c.submit(set("b", "2", 2, 2), 200), ok);
        c.advance_clock(kv::SESSION_TTL_MS / 2 + 60_000);
        // Client 3's write carries the time at which client 1 is too old.
        assert_eq!(c.submit(set("c", "1", 3, 1), 200), ok);
        replicas_agree(&mut c);
        let expired = Some(Err(ClientError::SessionExpired { client_id: 1 }));
        assert_eq!(c.submit(set("a", "2", 1, 2), 200), expired);
        assert_eq!(c.submit(get("a"), 200), Some(value("1")));
        assert_eq!(c.submit(set("b", "3", 2, 3), 200), ok, "2 was in use");

        // A new leader whose clock is two hours behind: its writes carry
        // earlier times, which neither move the log's clock back nor
        // expire anyone.
        c.skew_clock(first, 0);
        for id in c.ids().into_iter().filter(|&id| id != first) {
            c.skew_clock(id, -2 * 3_600_000);
        }
        c.crash(first);
        c.elect(300);
        assert_eq!(c.submit(set("b", "4", 2, 4), 300), ok);
        assert_eq!(c.submit(set("c", "2", 3, 2), 300), ok);
        c.restart(first);
        replicas_agree(&mut c);
        let leader = c.leader().unwrap();
        assert_eq!(c.node(leader).state_machine().sessions(), 2);
    }
}

/// Dissertation §6.3: the table is bounded. Beyond the bound the least
/// recently used session, by the log index of its last use, is evicted —
/// the same one on every replica, and across snapshots and restarts.
#[test]
fn the_least_recently_used_session_is_evicted_at_the_bound_6_3() {
    for seed in seeds(10) {
        let config = SimConfig::new(3, seed)
            .max_sessions(3)
            .snapshot_log_bytes(120, 64);
        let mut c = Cluster::new(config);
        c.elect(200);
        let ok = Some(Ok(ClientResponse::Set));
        for client in 1..=3 {
            assert_eq!(c.submit(set("k", "v", client, 1), 200), ok);
        }
        // Client 1 is used again, so 2 is now the least recently used.
        assert_eq!(c.submit(set("k", "w", 1, 2), 200), ok);
        for client in 4..=12 {
            let filler = set(&format!("f{client}"), "v", client, 1);
            assert_eq!(c.submit(filler, 200), ok);
            if client == 4 {
                let expired = Some(Err(ClientError::SessionExpired { client_id: 2 }));
                assert_eq!(c.submit(set("k", "x", 2, 2), 200), expired);
            }
        }
        replicas_agree(&mut c);
        // Snapshots are written in the background: let them land.
        let compacted = |c: &Cluster| {
            c.ids()
                .iter()
                .all(|&id| c.node(id).log().snapshot_index() > 0)
        };
        assert!(c.run_until(200, compacted), "never compacted");
        for id in c.ids() {
            c.crash(id);
        }
        for id in c.ids() {
            c.restart(id);
        }
        c.elect(300);
        replicas_agree(&mut c);
        let leader = c.leader().unwrap();
        assert!(
            c.node(leader).log().snapshot_index() > 0,
            "the snapshot survived"
        );
        assert_eq!(c.node(leader).state_machine().sessions(), 3);
        // 10, 11 and 12 remain: a retry of 12 gets its recorded answer.
        assert_eq!(c.submit(set("f12", "v", 12, 1), 200), ok);
        let expired = Some(Err(ClientError::SessionExpired { client_id: 9 }));
        assert_eq!(c.submit(set("f9", "w", 9, 2), 200), expired);
    }
}
