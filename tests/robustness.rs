//! No message may crash a node. Every message from the network is input: one
//! that no correct server sends is refused with a warning and changes
//! nothing, and the node keeps serving (src/raft/validate.rs). Each test
//! here hands a node one such message, as a member or an outsider could
//! send it, then checks the node — and the cluster — carry on.
//! Deterministic: replay one seed with
//! `RAFT_SEED=N cargo test --release --test robustness NAME`.

use raft_kv::kv::{ClientError, ClientRequest, ClientResponse};
use raft_kv::raft::{
    AppendEntries, AppendEntriesReply, Command, Entry, InstallSnapshot, Message, NodeId, ReadIndex,
    RequestVote, Role, MAX_PENDING_READS, MAX_TERM_JUMP,
};
use raft_kv::sim::{seeds, Cluster, SimConfig};

fn set(key: &str, value: &str, client_id: u64, sequence: u64) -> ClientRequest {
    ClientRequest::Set {
        key: key.into(),
        value: value.into(),
        client_id,
        sequence,
    }
}

/// A cluster of three with a leader and one write committed everywhere;
/// returns (cluster, leader, a follower).
fn running_cluster(seed: u64) -> (Cluster, NodeId, NodeId) {
    let mut c = Cluster::new(SimConfig::new(3, seed));
    c.elect(200);
    assert_eq!(
        c.submit(set("k", "1", 1, 1), 200),
        Some(Ok(ClientResponse::Set))
    );
    let leader = c.converge(100);
    let follower = c.ids().into_iter().find(|&id| id != leader).unwrap();
    (c, leader, follower)
}

/// Hand `message` from `from` to node `to`; true if it was answered.
fn deliver(c: &mut Cluster, from: NodeId, to: NodeId, message: Message) -> bool {
    !c.exchange(to, from, message).is_empty()
}

/// The cluster still commits writes and every node agrees.
fn still_serves(c: &mut Cluster, sequence: u64) {
    assert_eq!(
        c.submit(set("after", &sequence.to_string(), 2, sequence), 500),
        Some(Ok(ClientResponse::Set)),
        "the cluster no longer commits writes"
    );
    c.converge(300);
}

/// §5.1: terms only grow, one per election. A RequestVote at the largest
/// term would be adopted and persisted, and the next election could not
/// count up from it: every node would be stuck for good, even after a
/// restart. A term that far ahead is refused.
#[test]
fn a_term_at_the_end_of_the_range_is_refused_5_1() {
    for seed in seeds(5) {
        let (mut c, leader, follower) = running_cluster(seed);
        let term = c.node(leader).current_term();
        for huge in [u64::MAX, term + MAX_TERM_JUMP + 1] {
            let vote = Message::RequestVote(RequestVote {
                term: huge,
                candidate_id: follower,
                last_log_index: u64::MAX,
                last_log_term: 1,
                leadership_transfer: false,
            });
            assert!(!deliver(&mut c, follower, leader, vote));
            assert_eq!(c.node(leader).current_term(), term);
            assert!(c.node(leader).is_leader());
        }
        c.restart(leader);
        still_serves(&mut c, 1);
    }
}

/// A term that is far ahead but possible (a server partitioned for a long
/// time, without pre-vote) is still adopted (§5.1): the limit refuses only
/// what no correct server reaches.
#[test]
fn a_large_but_possible_term_is_adopted_5_1() {
    let (mut c, leader, follower) = running_cluster(1);
    let term = c.node(leader).current_term() + MAX_TERM_JUMP;
    let vote = Message::RequestVote(RequestVote {
        term,
        candidate_id: follower,
        last_log_index: 0,
        last_log_term: 0,
        leadership_transfer: false,
    });
    assert!(deliver(&mut c, follower, leader, vote));
    assert_eq!(c.node(leader).current_term(), term);
    still_serves(&mut c, 1);
}

/// A success reply can only match entries the leader sent. One that claims
/// to match past the leader's last entry is ignored: the leader neither
/// commits on it nor sends from past its log.
#[test]
fn a_reply_matching_past_the_leaders_log_is_ignored_5_3() {
    for seed in seeds(5) {
        let (mut c, leader, follower) = running_cluster(seed);
        let term = c.node(leader).current_term();
        let last = c.node(leader).log().last_index();
        let commit = c.node(leader).commit_index();
        let reply = Message::AppendEntriesReply(AppendEntriesReply {
            term,
            request_term: term,
            success: true,
            match_index: last + 100,
            conflict_term: 0,
            conflict_index: 0,
            prev_log_index: 0,
            read_round: 0,
        });
        deliver(&mut c, follower, leader, reply);
        assert_eq!(c.node(leader).commit_index(), commit);
        still_serves(&mut c, 1);
    }
}

/// §5.4 (Leader Completeness): a leader of our term or a newer one holds
/// every entry we know committed. An AppendEntries that would overwrite a
/// committed entry did not come from a correct leader: it is refused and the
/// follower's log is unchanged.
#[test]
fn an_append_entries_that_overwrites_a_committed_entry_is_refused_5_4() {
    for seed in seeds(5) {
        let (mut c, leader, follower) = running_cluster(seed);
        let term = c.node(leader).current_term();
        let committed = c.node(follower).commit_index();
        let before: Vec<Entry> = (1..=c.node(follower).log().last_index())
            .filter_map(|i| c.node(follower).log().get(i).cloned())
            .collect();
        let forged = Message::AppendEntries(AppendEntries {
            term: term + 1,
            leader_id: leader,
            prev_log_index: committed - 1,
            prev_log_term: c.node(follower).log().term_at(committed - 1).unwrap(),
            entries: vec![Entry {
                index: committed,
                term: term + 1,
                command: Command::Noop,
            }],
            leader_commit: committed,
            read_round: 0,
        });
        assert!(!deliver(&mut c, leader, follower, forged));
        let after: Vec<Entry> = (1..=c.node(follower).log().last_index())
            .filter_map(|i| c.node(follower).log().get(i).cloned())
            .collect();
        assert_eq!(after, before, "the follower's log changed");
        assert_eq!(c.node(follower).current_term(), term);
        still_serves(&mut c, 1);
    }
}

/// A leader appends entries only in its own term, one index after another
/// (§5.3): entries out of order, with terms that decrease, of term 0 or
/// newer than the message are refused before they reach the disk, and a
/// snapshot of a term newer than its message too.
#[test]
fn entries_and_snapshots_that_break_the_log_rules_are_refused_5_3() {
    let (mut c, leader, follower) = running_cluster(3);
    let term = c.node(leader).current_term();
    let last = c.node(follower).log().last_index();
    let last_term = c.node(follower).log().last_term();
    let entry = |index, term| Entry {
        index,
        term,
        command: Command::Noop,
    };
    let append = |entries: Vec<Entry>| {
        Message::AppendEntries(AppendEntries {
            term,
            leader_id: leader,
            prev_log_index: last,
            prev_log_term: last_term,
            entries,
            leader_commit: 0,
            read_round: 0,
        })
    };
    let bad = [
        ("newer than the message", vec![entry(last + 1, term + 1)]),
        (
            "decreasing terms",
            vec![entry(last + 1, term), entry(last + 2, term - 1)],
        ),
        ("term 0", vec![entry(last + 1, 0)]),
        ("a gap", vec![entry(last + 2, term)]),
        (
            "repeated index",
            vec![entry(last + 1, term), entry(last + 1, term)],
        ),
        ("index overflow", vec![entry(u64::MAX, term)]),
    ];
    for (what, entries) in bad {
        assert!(
            !deliver(&mut c, leader, follower, append(entries)),
            "entries with {what} were answered"
        );
        assert_eq!(c.node(follower).log().last_index(), last, "{what}");
    }
    let snapshot = Message::InstallSnapshot(InstallSnapshot {
        term,
        leader_id: leader,
        last_included_index: last + 10,
        last_included_term: term + 1,
        offset: 0,
        data: vec![],
        done: true,
        configuration: None,
    });
    assert!(!deliver(&mut c, leader, follower, snapshot));
    assert_eq!(c.node(follower).log().snapshot_index(), 0);
    still_serves(&mut c, 1);
}

/// Only members take part, each under its own name: a message from a
/// server outside the cluster, or one that names another member as its
/// sender, is refused.
#[test]
fn messages_from_outsiders_or_under_another_name_are_refused() {
    let (mut c, leader, follower) = running_cluster(4);
    let term = c.node(leader).current_term();
    let other = c
        .ids()
        .into_iter()
        .find(|&id| id != leader && id != follower)
        .unwrap();
    let reply = |match_index| {
        Message::AppendEntriesReply(AppendEntriesReply {
            term,
            request_term: term,
            success: true,
            match_index,
            conflict_term: 0,
            conflict_index: 0,
            prev_log_index: 0,
            read_round: 0,
        })
    };
    deliver(&mut c, 99, leader, reply(1));
    deliver(&mut c, leader, leader, reply(1));
    let vote = Message::RequestVote(RequestVote {
        term: term + 1,
        candidate_id: other,
        last_log_index: 100,
        last_log_term: term,
        leadership_transfer: false,
    });
    assert!(!deliver(&mut c, follower, leader, vote.clone()));
    assert!(!deliver(&mut c, 99, leader, vote));
    assert_eq!(c.node(leader).current_term(), term);
    assert!(c.node(leader).is_leader());
    still_serves(&mut c, 1);
}

/// Dissertation §6.4: a follower's ReadIndex waits at the leader for the
/// next heartbeat round a majority confirms. A peer that keeps asking while
/// no round completes (here no message is delivered at all) must not grow
/// that queue without bound: past `MAX_PENDING_READS` waiting reads, each
/// ask is refused at once, and the asker's clients look elsewhere.
#[test]
fn read_index_requests_that_pile_up_are_refused_past_a_bound_6_4() {
    let (mut c, leader, follower) = running_cluster(5);
    let term = c.node(leader).current_term();
    let mut refused = 0;
    for batch in 0..(MAX_PENDING_READS as u64 + 100) {
        let ask = Message::ReadIndex(ReadIndex { term, batch });
        let back = c.exchange(leader, follower, ask);
        refused += back
            .iter()
            .filter(|m| matches!(m, Message::ReadIndexReply(r) if r.read_index.is_none()))
            .count();
    }
    assert_eq!(
        refused, 100,
        "every ask past the bound is refused, none before"
    );
    assert!(c.node(leader).is_leader());
    still_serves(&mut c, 1);
}

/// Figure 13 gathers a snapshot's chunks in memory until the last one. A
/// chunk past `max_snapshot_bytes` is refused, and a transfer that stops
/// coming is dropped after two election timeouts, so chunks that never
/// finish cannot take a node's memory.
#[test]
fn snapshot_chunks_that_never_finish_are_bounded_and_dropped_figure_13() {
    let (mut c, leader, follower) = running_cluster(5);
    let term = c.node(leader).current_term();
    c.isolate(follower);
    let max = c.node(follower).config().max_snapshot_bytes;
    let chunk = |offset: u64, len: usize| {
        Message::InstallSnapshot(InstallSnapshot {
            term,
            leader_id: leader,
            last_included_index: 1000,
            last_included_term: term,
            offset,
            data: vec![7; len],
            done: false,
            configuration: None,
        })
    };
    const MIB: usize = 1 << 20;
    for i in 0..8 {
        assert!(deliver(
            &mut c,
            leader,
            follower,
            chunk(i * MIB as u64, MIB)
        ));
    }
    assert_eq!(c.node(follower).incoming_snapshot_bytes(), 8 * MIB);
    assert!(!deliver(&mut c, leader, follower, chunk(max, 1)));
    assert!(!deliver(&mut c, leader, follower, chunk(u64::MAX, 1)));
    assert_eq!(c.node(follower).incoming_snapshot_bytes(), 8 * MIB);
    let timeout = c.config.election_timeout_ticks.1;
    c.ticks(2 * timeout + 1);
    assert_eq!(
        c.node(follower).incoming_snapshot_bytes(),
        0,
        "an abandoned snapshot transfer still holds memory"
    );
    c.heal();
    still_serves(&mut c, 1);
}

/// Dissertation §6.2: a leader that steps down because it no longer hears
/// from a majority does not know who leads. It must not redirect clients to
/// itself.
#[test]
fn a_leader_that_steps_down_redirects_to_nobody_6_2() {
    for seed in seeds(5) {
        let (mut c, leader, _) = running_cluster(seed);
        c.isolate(leader);
        assert!(c.run_until(200, |c| !c.node(leader).is_leader()));
        assert_ne!(c.node(leader).leader_id(), Some(leader));
        let id = c.request(leader, set("k", "2", 1, 2));
        assert!(
            matches!(
                c.response(id),
                Some(Err(ClientError::NotLeader { leader: l })) if *l != Some(leader)
            ),
            "answered {:?}",
            c.response(id)
        );
    }
}

/// Pipelining (flow control, not in the paper): at most `max_in_flight`
/// AppendEntries carrying entries go unanswered to a follower, however many
/// heartbeats pass; a heartbeat to a follower whose window is full carries
/// no entries.
#[test]
fn unanswered_append_entries_stay_within_the_window() {
    let mut config = SimConfig::new(3, 6);
    config.max_in_flight = 2;
    let mut c = Cluster::new(config);
    c.elect(200);
    assert_eq!(
        c.submit(set("k", "0", 1, 1), 200),
        Some(Ok(ClientResponse::Set))
    );
    let leader = c.converge(100);
    let follower = c.ids().into_iter().find(|&id| id != leader).unwrap();
    c.isolate(follower);
    let term = c.node(leader).current_term();
    for sequence in 2..=6 {
        c.request(leader, set("k", &sequence.to_string(), 1, sequence));
        c.ticks(3);
    }
    // Several heartbeat intervals: the window must not reopen by itself.
    c.ticks(50);
    let Role::Leader(l) = c.node(leader).role() else {
        panic!("n{leader} leads")
    };
    assert!(
        l.flow[&follower].in_flight.len() <= 2,
        "{:?} unanswered, the window is 2",
        l.flow[&follower].in_flight
    );
    let with_entries = c
        .trace()
        .iter()
        .rev()
        .take_while(|line| !line.contains("isolate"))
        .filter(|line| {
            line.contains(&format!("n{leader}@{term} -> n{follower} AppendEntries"))
                && !line.contains(" [] ")
        })
        .count();
    assert!(
        with_entries <= 2,
        "{with_entries} AppendEntries with entries sent unanswered, the window is 2"
    );
    // Healed, the follower catches up and the window empties.
    c.heal();
    c.ticks(100);
    assert_eq!(
        c.node(follower).log().last_index(),
        c.node(leader).log().last_index()
    );
}

/// Flow control in bytes (etcd's MaxSizePerMsg and MaxInflightBytes): each
/// AppendEntries carries at most `max_bytes_per_message` of entries (one
/// larger entry alone), and a follower that does not answer is sent at most
/// `max_bytes_in_flight` (the message that crosses it included) however
/// large the backlog, so a leader never queues more for a slow follower than
/// it can soon write.
#[test]
fn bytes_in_flight_stay_within_the_byte_window() {
    let mut config = SimConfig::new(3, 8);
    config.max_bytes_per_message = 300;
    config.max_bytes_in_flight = 700;
    let mut c = Cluster::new(config);
    c.elect(200);
    let leader = c.converge(100);
    let follower = c.ids().into_iter().find(|&id| id != leader).unwrap();
    c.isolate(follower);
    let value = "v".repeat(100);
    for sequence in 1..=30 {
        c.request(leader, set(&format!("k{sequence}"), &value, 1, sequence));
        if sequence % 5 == 0 {
            c.ticks(1);
        }
    }
    c.request(leader, set("big", &"b".repeat(1000), 2, 1));
    c.ticks(60);
    let Role::Leader(l) = c.node(leader).role() else {
        panic!("n{leader} leads")
    };
    let flow = &l.flow[&follower];
    assert!(!flow.in_flight.is_empty(), "entries were sent");
    for message in &flow.in_flight {
        assert!(
            message.bytes <= 300,
            "{message:?} carries more than 300 bytes"
        );
    }
    assert!(
        flow.bytes_in_flight() <= 700 + 300,
        "{} bytes unanswered, the window is 700",
        flow.bytes_in_flight()
    );
    c.heal();
    c.ticks(200);
    assert_eq!(
        c.node(follower).log().last_index(),
        c.node(leader).log().last_index(),
        "the follower catches up, one window at a time"
    );
    assert_eq!(
        c.node(follower).state_machine().get("big").map(str::len),
        Some(1000)
    );
}

/// Random bytes from outside, under load: while clients write and read and
/// the network drops and delays messages, every node is handed random
/// messages — malformed ones under a member's name (terms past the limit,
/// entries out of order or of impossible terms, impossible snapshots and
/// chunks, replies to requests newer than themselves, or matching or
/// installing past the log), stale ones (an older
/// term: Raft ignores them by design), and anything at all from servers
/// outside the cluster. No node may panic, the harness checks the Figure 3
/// invariants (and reads) after every step, and at the end the cluster still
/// commits writes and converges.
///
/// Well-formed messages of the current term under a member's name are left
/// out on purpose: a forged AppendEntries or vote of the right shape is
/// indistinguishable from the member's own and can break safety; keeping
/// outsiders from sending them is authentication's job, not validation's.
#[test]
fn random_and_malformed_messages_never_crash_a_node() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let mut injected = 0;
    for seed in seeds(30) {
        let nodes = if seed % 3 == 0 { 5 } else { 3 };
        let mut c = Cluster::new(SimConfig::new(nodes, seed).unreliable(0.05, 3));
        let mut rng = StdRng::seed_from_u64(seed ^ 0xbad);
        let mut sequence = 0;
        for tick in 0..600 {
            c.tick();
            if tick % 100 == 50 {
                let id = rng.gen_range(1..=nodes as u64);
                c.restart(id);
            }
            if let Some(leader) = c.leader() {
                sequence += 1;
                let key = format!("k{}", sequence % 7);
                c.request(leader, set(&key, &sequence.to_string(), 1, sequence));
                c.request(
                    leader,
                    ClientRequest::Get {
                        key,
                        linearizable: true,
                    },
                );
            }
            for _ in 0..3 {
                let to = rng.gen_range(1..=nodes as u64);
                if !c.is_up(to) {
                    continue;
                }
                let outsider = rng.gen_bool(0.3);
                let from = if outsider {
                    *[0, nodes as u64 + 1, 99, u64::MAX]
                        .get(rng.gen_range(0..4))
                        .unwrap()
                } else {
                    rng.gen_range(1..=nodes as u64)
                };
                let (term, last) = {
                    let n = c.node(to);
                    (n.current_term(), n.log().last_index())
                };
                let message = if outsider {
                    random_message(&mut rng, from, term, last)
                } else {
                    let Some(m) = malformed_message(&mut rng, from, term, last) else {
                        continue;
                    };
                    m
                };
                injected += 1;
                c.note(format!("inject from {from} to n{to}: {message:?}"));
                c.with_node(to, |n| n.step(from, message));
            }
        }
        c.heal();
        c.set_unreliable(0.0, 0);
        for id in c.ids() {
            if !c.is_up(id) {
                c.restart(id);
            }
        }
        assert_eq!(
            c.submit(set("final", "1", 2, 1), 1000),
            Some(Ok(ClientResponse::Set)),
            "the cluster no longer commits writes"
        );
        c.converge(1000);
    }
    assert!(injected > 10_000, "only {injected} messages injected");
}

/// Any message at all, its fields drawn near the receiver's state and at the
/// edges of their ranges.
fn random_message(rng: &mut impl rand::Rng, from: NodeId, term: u64, last: u64) -> Message {
    let mut number = |near: u64| match rng.gen_range(0..6) {
        0 => 0,
        1 => u64::MAX,
        2 => rng.gen(),
        _ => near.saturating_add(rng.gen_range(0..3)).saturating_sub(1),
    };
    let (t, i, x) = (number(term), number(last), number(1));
    let entries = (0..(x % 4))
        .map(|k| Entry {
            index: i.wrapping_add(k),
            term: t.wrapping_sub(k),
            command: Command::Noop,
        })
        .collect();
    match x % 6 {
        0 => Message::RequestVote(RequestVote {
            term: t,
            candidate_id: from,
            last_log_index: i,
            last_log_term: t,
            leadership_transfer: false,
        }),
        1 => Message::AppendEntries(AppendEntries {
            term: t,
            leader_id: from,
            prev_log_index: i,
            prev_log_term: t / 2,
            entries,
            leader_commit: i,
            read_round: x,
        }),
        2 => Message::InstallSnapshot(InstallSnapshot {
            term: t,
            leader_id: from,
            last_included_index: i,
            last_included_term: t,
            offset: x,
            data: vec![0xff; (x % 64) as usize],
            done: x % 2 == 0,
            configuration: None,
        }),
        3 => Message::AppendEntriesReply(AppendEntriesReply {
            term: t,
            request_term: t,
            success: x % 2 == 0,
            match_index: i,
            conflict_term: t,
            conflict_index: i,
            prev_log_index: i,
            read_round: x,
        }),
        4 => Message::RequestVoteReply(raft_kv::raft::RequestVoteReply {
            term: t,
            vote_granted: true,
        }),
        _ => Message::InstallSnapshotReply(raft_kv::raft::InstallSnapshotReply {
            term: t,
            request_term: t,
            last_included_index: i,
            offset: x,
            next_offset: i,
            done: x % 2 == 0,
        }),
    }
}

/// A message under member `from`'s name that no correct member sends, or
/// one of an older term than the receiver's (which Raft ignores). None when
/// the receiver's term is too young for an older one.
fn malformed_message(
    rng: &mut impl rand::Rng,
    from: NodeId,
    term: u64,
    last: u64,
) -> Option<Message> {
    let stale = term.checked_sub(rng.gen_range(1..=2));
    let entry = |index, term| Entry {
        index,
        term,
        command: Command::Noop,
    };
    Some(match rng.gen_range(0..9) {
        0 => Message::RequestVote(RequestVote {
            term: term + MAX_TERM_JUMP + rng.gen_range(1..1000),
            candidate_id: from,
            last_log_index: last,
            last_log_term: term,
            leadership_transfer: false,
        }),
        1 => {
            let bad = match rng.gen_range(0..4) {
                0 => vec![entry(last + 1, term + 1)],
                1 => vec![entry(last + 1, term.max(1)), entry(last + 2, 0)],
                2 => vec![entry(last + 2, term)],
                _ => vec![entry(last + 1, term), entry(last + 1, term)],
            };
            Message::AppendEntries(AppendEntries {
                term,
                leader_id: from,
                prev_log_index: last,
                prev_log_term: term,
                entries: bad,
                leader_commit: last + 5,
                read_round: rng.gen(),
            })
        }
        2 => Message::InstallSnapshot(InstallSnapshot {
            term,
            leader_id: from,
            last_included_index: last + 1,
            last_included_term: if rng.gen() { term + 1 } else { 0 },
            offset: 0,
            data: vec![1, 2, 3],
            done: true,
            configuration: None,
        }),
        3 => Message::InstallSnapshot(InstallSnapshot {
            term,
            leader_id: from,
            last_included_index: last + 1,
            last_included_term: term.max(1),
            offset: u64::MAX - rng.gen_range(0..10),
            data: vec![1, 2, 3],
            done: rng.gen(),
            configuration: None,
        }),
        4 => Message::AppendEntriesReply(AppendEntriesReply {
            term,
            request_term: term + 1,
            success: true,
            match_index: rng.gen(),
            conflict_term: 0,
            conflict_index: 0,
            prev_log_index: 0,
            read_round: u64::MAX,
        }),
        5 => Message::AppendEntries(AppendEntries {
            term: stale?,
            leader_id: from,
            prev_log_index: last,
            prev_log_term: stale?,
            entries: vec![entry(last + 1, stale?)],
            leader_commit: last + 1,
            read_round: rng.gen(),
        }),
        7 => Message::InstallSnapshotReply(raft_kv::raft::InstallSnapshotReply {
            term,
            request_term: term,
            last_included_index: last + rng.gen_range(1..u64::MAX - last),
            offset: 0,
            next_offset: 0,
            done: true,
        }),
        6 => Message::AppendEntriesReply(AppendEntriesReply {
            term,
            request_term: term,
            success: true,
            match_index: last + rng.gen_range(1..1000),
            conflict_term: 0,
            conflict_index: 0,
            prev_log_index: 0,
            read_round: 0,
        }),
        _ => Message::AppendEntriesReply(AppendEntriesReply {
            term,
            request_term: stale?,
            success: true,
            match_index: last,
            conflict_term: 0,
            conflict_index: 0,
            prev_log_index: 0,
            read_round: u64::MAX,
        }),
    })
}
