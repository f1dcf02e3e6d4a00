//! Milestone 2: log replication and commit (§5.3, §5.4). Deterministic:
//! replay one seed with `RAFT_SEED=N cargo test --test replication NAME`.

use raft_kv::kv::{self, ClientError, ClientRequest, ClientResponse};
use raft_kv::raft::{AppendEntries, AppendEntriesReply, Command, Entry, Message, Role};
use raft_kv::sim::{seeds, Cluster, SimConfig};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn set(key: &str, value: &str) -> ClientRequest {
    ClientRequest::Set {
        key: key.into(),
        value: value.into(),
        client_id: 0,
        sequence: 0,
    }
}

/// §5.3: the leader replicates an entry, commits it once a majority stores
/// it, and every node applies it.
#[test]
fn basic_agreement_5_3() {
    for seed in seeds(20) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let leader = c.elect(200);
        for i in 0..10 {
            let id = c.request(leader, set(&format!("k{i}"), &format!("v{i}")));
            assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
        }
        c.ticks(20);
        let commit = c.node(leader).commit_index();
        assert_eq!(commit, 11, "10 writes and the leader's no-op");
        for id in c.ids() {
            assert_eq!(
                c.node(id).last_applied(),
                commit,
                "n{id} did not apply everything"
            );
            assert_eq!(c.node(id).state_machine().get("k9"), Some("v9"));
        }
    }
}

fn session_set(key: &str, value: &str, client_id: u64, sequence: u64) -> ClientRequest {
    ClientRequest::Set {
        key: key.into(),
        value: value.into(),
        client_id,
        sequence,
    }
}

/// §5.3: with one follower down, the others still form a majority: every
/// write commits and is acknowledged, and the follower that came back catches
/// up on everything it missed.
#[test]
fn agreement_with_follower_down_5_3() {
    for seed in seeds(20) {
        for nodes in [3, 5] {
            let mut c = Cluster::new(SimConfig::new(nodes, seed));
            let leader = c.elect(200);
            let down = c.ids().into_iter().find(|&i| i != leader).unwrap();
            c.isolate(down);
            for i in 0..10 {
                let id = c.request(leader, set(&format!("k{i}"), "v"));
                assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
            }
            assert_eq!(c.node(leader).commit_index(), 11);
            c.reconnect(down);
            c.converge(200);
            assert_eq!(c.node(down).state_machine().get("k9"), Some("v"));
        }
    }
}

/// Figure 2 assumes stable storage, but a disk can be wiped or replaced,
/// or a damaged log cut short. A follower that comes back without entries
/// it acknowledged rejects the leader's AppendEntries with a log that ends
/// before match_index; the leader must take that for what it is — not for
/// a late reply — and send the entries again.
#[test]
fn a_follower_that_lost_acknowledged_entries_is_refilled_5_3() {
    for seed in seeds(20) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let leader = c.elect(200);
        for i in 0..10 {
            let id = c.request(leader, set(&format!("k{i}"), "v"));
            assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
        }
        c.converge(100);
        let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
        if seed % 2 == 0 {
            c.wipe(follower);
        } else {
            c.crash(follower);
            c.disk(follower).lose_entries_from(5);
            c.restart(follower);
        }
        let id = c.request(leader, set("after", "1"));
        assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
        c.converge(200);
        assert_eq!(c.node(follower).state_machine().get("k0"), Some("v"));
    }
}

/// §5.3 "fail-agree": a disconnected follower misses writes and catches up
/// once reconnected, while the leader keeps committing in between.
#[test]
fn disconnected_follower_catches_up_5_3() {
    for seed in seeds(20) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let leader = c.elect(200);
        let follower = c.ids().into_iter().find(|&i| i != leader).unwrap();
        let id = c.request(leader, set("before", "1"));
        assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
        c.isolate(follower);
        for i in 0..20 {
            let id = c.request(leader, set(&format!("k{i}"), "v"));
            assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
        }
        assert!(c.node(follower).log().last_index() < c.node(leader).log().last_index());
        c.reconnect(follower);
        let leader = c.converge(300);
        let id = c.request(leader, set("after", "1"));
        assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
        c.converge(100);
        assert_eq!(c.node(follower).state_machine().len(), 22);
    }
}

/// §5.3 "fail-no-agree": an entry is committed only once a majority stores
/// it. With 3 of 5 followers cut off the leader appends but never commits,
/// and never acknowledges the write; after the partition heals the cluster
/// agrees again.
#[test]
fn no_commit_without_majority_5_3() {
    for seed in seeds(20) {
        let mut c = Cluster::new(SimConfig::new(5, seed));
        let leader = c.elect(200);
        let id = c.request(leader, set("a", "1"));
        assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
        let commit = c.node(leader).commit_index();
        let followers: Vec<_> = c.ids().into_iter().filter(|&i| i != leader).collect();
        for &f in &followers[..3] {
            c.isolate(f);
        }
        let id = c.request(leader, set("b", "2"));
        let index = c.node(leader).log().last_index();
        assert_eq!(index, commit + 1, "the leader appends at once");
        c.ticks(100);
        assert!(
            !c.committed().contains_key(&index),
            "committed without a majority"
        );
        assert!(
            matches!(
                c.response(id),
                None | Some(Err(ClientError::LeadershipLost))
            ),
            "a write without a majority was answered {:?}",
            c.response(id)
        );
        c.heal();
        let answer = c.submit(set("c", "3"), 300);
        assert_eq!(answer, Some(Ok(ClientResponse::Set)));
        c.converge(200);
    }
}

/// §5.3 with several clients at once: batches submitted in the same ticks,
/// by several clients, all commit, each write exactly once, in one order on
/// every node.
#[test]
fn concurrent_proposals_5_3() {
    for seed in seeds(20) {
        let mut c = Cluster::new(SimConfig::new(5, seed));
        let leader = c.elect(200);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pending = Vec::new();
        let mut sequence = [0u64; 4];
        for _ in 0..20 {
            for client in 0..4u64 {
                let size = rng.gen_range(1..=10);
                let batch = (0..size)
                    .map(|_| {
                        sequence[client as usize] += 1;
                        let s = sequence[client as usize];
                        session_set(&format!("c{client}-{s}"), "v", client + 1, s)
                    })
                    .collect();
                pending.extend(c.requests(leader, batch));
            }
            c.ticks(rng.gen_range(0..3));
        }
        c.ticks(20);
        for id in &pending {
            assert_eq!(c.response(*id), Some(&Ok(ClientResponse::Set)));
        }
        let leader = c.converge(100);
        let writes: usize = sequence.iter().map(|&s| s as usize).sum();
        assert_eq!(c.node(leader).state_machine().len(), writes);
        let committed_sets = c
            .committed()
            .values()
            .filter(|(_, command)| *command != Command::Noop)
            .count();
        assert_eq!(committed_sets, writes, "each write is in the log once");
    }
}

/// Figure 7: when a partitioned leader rejoins, followers in every state of
/// the figure — missing entries (a, b), with extra uncommitted entries of an
/// old term (c, d), both (e, f) — end with the new leader's log. The old
/// leader's uncommitted entries are overwritten, never applied, and their
/// clients told the leadership was lost.
#[test]
fn rejoining_leader_entries_overwritten_figure_7() {
    for seed in seeds(30) {
        let mut c = Cluster::new(SimConfig::new(7, seed));
        let old = c.elect(300);
        let id = c.request(old, set("w0", "v"));
        assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
        let others: Vec<_> = c.ids().into_iter().filter(|&i| i != old).collect();
        let (missing, partner, majority) = (others[0], others[1], &others[2..]);

        // `missing` misses committed entries.
        c.isolate(missing);
        for i in 1..=5 {
            let id = c.request(old, set(&format!("w{i}"), "v"));
            assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
        }
        // The old leader and its partner take 20 writes no majority will see.
        c.partition(&[&[old, partner], majority]);
        let doomed: Vec<_> = (0..20)
            .map(|i| c.request(old, set(&format!("u{i}"), "lost")))
            .collect();
        let ok = c.run_until(400, |c| majority.iter().any(|&l| c.node(l).is_leader()));
        assert!(ok, "the majority elected no leader");
        let new = *majority.iter().find(|&&l| c.node(l).is_leader()).unwrap();
        for i in 6..=8 {
            let id = c.request(new, set(&format!("w{i}"), "v"));
            assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
        }
        // The old leader's log is now longer than the new leader's, and conflicts.
        assert!(c.node(old).log().last_index() > c.node(new).log().last_index());

        c.heal();
        let leader = c.converge(500);
        assert_ne!(leader, old, "the deposed leader's log is not up to date");
        for id in doomed {
            assert_eq!(
                c.response(id),
                Some(&Err(ClientError::LeadershipLost)),
                "an overwritten write was not failed"
            );
        }
        for id in c.ids() {
            let sm = c.node(id).state_machine();
            assert_eq!(sm.get("u0"), None, "n{id} applied an overwritten entry");
            assert_eq!(sm.get("w8"), Some("v"));
            assert_eq!(sm.len(), 9);
        }
    }
}

// ---- Figure 8, built step by step. Every message is carried by hand: the
// nodes are cut off from the simulated network and time never advances for
// all of them at once, so each step is exactly the paper's. ----

/// Figure 8 at scale: on a network that drops, delays and reorders, leaders
/// are cut off at random moments (often just after appending) while clients
/// keep writing. The checker verifies after every step that no committed
/// entry is ever lost or changed; at the end the cluster agrees and holds
/// every acknowledged write.
#[test]
fn figure_8_unreliable() {
    for seed in seeds(100) {
        let mut c = Cluster::new(SimConfig::new(5, seed).unreliable(0.1, 5));
        let mut rng = StdRng::seed_from_u64(seed);
        let mut writes = Vec::new();
        for round in 0..60 {
            if let Some(leader) = c.leader() {
                let key = format!("k{round}");
                let id = c.request(leader, session_set(&key, "v", 1, round + 1));
                writes.push((id, key));
            }
            let ticks = if rng.gen_bool(0.1) {
                rng.gen_range(0..150)
            } else {
                rng.gen_range(0..13)
            };
            c.ticks(ticks);
            if let Some(leader) = c.leader() {
                if rng.gen_bool(0.5) {
                    c.isolate(leader);
                }
            }
            if rng.gen_bool(0.3) {
                let id = *c.ids().choose(&mut rng).unwrap();
                c.reconnect(id);
            }
        }
        c.heal();
        c.set_unreliable(0.0, 0);
        assert_eq!(
            c.submit(session_set("last", "v", 2, 1), 500),
            Some(Ok(ClientResponse::Set))
        );
        let leader = c.converge(500);
        for (id, key) in writes {
            if let Some(Ok(_)) = c.response(id) {
                assert_eq!(
                    c.node(leader).state_machine().get(&key),
                    Some("v"),
                    "acknowledged write {key} lost"
                );
            }
        }
    }
}

/// §5.2: an idle leader sends only heartbeats — one AppendEntries per
/// follower per heartbeat interval, each answered once — and nobody else
/// sends anything.
#[test]
fn idle_cluster_sends_only_heartbeats_5_2() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(5, seed));
        c.elect(200);
        c.ticks(20);
        let followers = 4;
        let ticks = 1000;
        let heartbeats = ticks / c.config.heartbeat_ticks;
        let before = c.sent;
        c.ticks(ticks);
        let sent = c.sent - before;
        assert!(
            (2 * followers * (heartbeats - 1)..=2 * followers * (heartbeats + 1)).contains(&sent),
            "{sent} messages in {ticks} idle ticks; expected about {} heartbeats and replies",
            2 * followers * heartbeats
        );
    }
}

/// §5.3: agreement on K entries submitted in batches takes about one
/// AppendEntries (and one reply) per batch per follower, not one per entry.
#[test]
fn agreement_message_count_is_per_batch_5_3() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(5, seed));
        let leader = c.elect(200);
        c.ticks(20);
        let (batches, batch_size) = (20, 50);
        let start = (c.sent, c.now());
        for b in 0..batches {
            let batch = (0..batch_size)
                .map(|i| set(&format!("k{b}-{i}"), "v"))
                .collect();
            c.requests(leader, batch);
            c.tick();
        }
        c.converge(100);
        let sent = c.sent - start.0;
        let heartbeats = (c.now() - start.1) / c.config.heartbeat_ticks + 1;
        let bound = 2 * 4 * (batches + heartbeats);
        assert!(
            sent <= bound,
            "{sent} messages to agree on {} entries in {batches} batches (bound {bound})",
            batches * batch_size
        );
    }
}

/// No resending everything: replicating K entries of S bytes to F followers
/// sends about K·S·F bytes of entries, on a reliable network and on one that
/// loses and reorders some messages.
#[test]
fn agreement_bytes_are_bounded_5_3() {
    for seed in seeds(10) {
        for (drop_rate, max_delay) in [(0.0, 0), (0.05, 2)] {
            let mut c = Cluster::new(SimConfig::new(3, seed).unreliable(drop_rate, max_delay));
            c.elect(300);
            let value = "x".repeat(1000);
            let mut payload = 0u64;
            let before = c.sent_bytes;
            for i in 0..100 {
                let key = format!("k{i:03}");
                let command: Command = kv::Command::Set {
                    key: key.clone(),
                    value: value.clone(),
                    client_id: 1,
                    sequence: i + 1,
                    timestamp_ms: raft_kv::sim::SIM_EPOCH_MS,
                }
                .into();
                payload += command.size() as u64;
                let response = c.submit(session_set(&key, &value, 1, i + 1), 500);
                assert_eq!(response, Some(Ok(ClientResponse::Set)));
            }
            c.set_unreliable(0.0, 0);
            c.converge(300);
            let sent = c.sent_bytes - before;
            assert!(
                sent >= 2 * payload && sent <= 3 * 2 * payload,
                "{sent} bytes of entries sent to replicate {payload} bytes to 2 followers \
                 (drop={drop_rate})"
            );
        }
    }
}

/// Figure 2 AppendEntries step 3 deletes entries only on a conflict ("same
/// index but different terms"). An old AppendEntries from the current leader
/// arriving after newer ones agrees with all it carries: it must not cut off
/// the entries that came after it, and its reply must not move the leader's
/// match_index back.
#[test]
fn stale_append_entries_never_truncate_5_3() {
    for seed in seeds(10) {
        let mut c = Cluster::new(SimConfig::new(3, seed));
        let leader = c.elect(200);
        for i in 0..5 {
            let id = c.request(leader, set(&format!("k{i}"), "v"));
            assert_eq!(c.wait_response(id, 50), Some(Ok(ClientResponse::Set)));
        }
        c.converge(50);
        let f = c.ids().into_iter().find(|&i| i != leader).unwrap();
        let last = c.node(f).log().last_index();
        let commit = c.node(f).commit_index();
        let durable = c.disk(f).durable_entries();
        let log = c.node(leader).log();
        let late = AppendEntries {
            term: c.node(leader).current_term(),
            leader_id: leader,
            prev_log_index: 1,
            prev_log_term: log.term_at(1).unwrap(),
            entries: vec![log.get(2).unwrap().clone(), log.get(3).unwrap().clone()],
            leader_commit: 1,
            read_round: 0,
        };
        let reply = c.with_node(f, |n| n.handle_append_entries(late));
        assert!(reply.success);
        assert_eq!(reply.match_index, 3, "it matches up to its own last entry");
        assert_eq!(
            c.node(f).log().last_index(),
            last,
            "entries after it were cut off"
        );
        assert_eq!(c.disk(f).durable_entries(), durable);
        assert_eq!(c.node(f).commit_index(), commit, "commit_index went back");

        let match_before = match c.node(leader).role() {
            Role::Leader(l) => l.match_index[&f],
            _ => unreachable!(),
        };
        assert_eq!(match_before, last);
        c.exchange(leader, f, Message::AppendEntriesReply(reply));
        match c.node(leader).role() {
            Role::Leader(l) => assert_eq!(l.match_index[&f], last, "match_index went back"),
            _ => panic!("the leader stepped down"),
        }
    }
}

/// §5.3 over hundreds of runs of a network that drops, delays and reorders
/// messages: every acknowledged write is committed, and at the end every
/// node has applied the same log to the same state machine.
#[test]
fn agreement_on_unreliable_network_5_3() {
    for seed in seeds(300) {
        let mut c = Cluster::new(SimConfig::new(5, seed).unreliable(0.1, 4));
        for i in 0..10u64 {
            let key = format!("k{i}");
            let response = c.submit(session_set(&key, &i.to_string(), 1, i + 1), 1000);
            assert_eq!(
                response,
                Some(Ok(ClientResponse::Set)),
                "write {i} never acknowledged"
            );
        }
        c.set_unreliable(0.0, 0);
        let leader = c.converge(300);
        for i in 0..10u64 {
            let expected = i.to_string();
            assert_eq!(
                c.node(leader).state_machine().get(&format!("k{i}")),
                Some(expected.as_str())
            );
        }
    }
}

/// Figure 2 AppendEntries step 5: "If leaderCommit > commitIndex, set
/// commitIndex = min(leaderCommit, index of last new entry)". Entries after
/// the last new one may be left from an older leader and conflict with what
/// the current leader committed but has not sent yet (its message was cut
/// short by the batch limit): they must not be marked committed, let alone
/// applied.
#[test]
fn commit_index_stops_at_last_new_entry_figure_2() {
    let mut c = Cluster::new(SimConfig::new(3, 1));
    for id in c.ids() {
        c.isolate(id);
    }
    let entry = |index, term, value: &str| Entry {
        index,
        term,
        command: kv::Command::Set {
            key: format!("k{index}"),
            value: value.into(),
            client_id: 0,
            sequence: 0,
            timestamp_ms: 0,
        }
        .into(),
    };
    let append = |term, leader_id, prev_log_index, prev_log_term, entries, leader_commit| {
        Message::AppendEntries(AppendEntries {
            term,
            leader_id,
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
            read_round: 0,
        })
    };
    // n2, leader of term 1, gave n1 entries 1..=6 and committed none of them.
    let old_entries = (1..=6).map(|i| entry(i, 1, "old")).collect();
    c.with_node(1, |n| n.step(2, append(1, 2, 0, 0, old_entries, 0)));
    // n3 leads term 2 with 1..=3 of term 1 and 4..=6 of its own, all
    // committed; this message carries only entry 3.
    let reply = c.exchange(1, 3, append(2, 3, 2, 1, vec![entry(3, 1, "old")], 6));
    assert!(matches!(
        reply.as_slice(),
        [Message::AppendEntriesReply(AppendEntriesReply {
            success: true,
            match_index: 3,
            ..
        })]
    ));
    assert_eq!(
        c.node(1).commit_index(),
        3,
        "committed entries past the last one known to match the leader's log"
    );
    assert_eq!(c.node(1).state_machine().get("k4"), None);
    assert_eq!(c.node(1).state_machine().get("k3"), Some("old"));
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

/// Figure 2, "persist before responding", within one turn: a follower that
/// answers AppendEntries from the leader of term 1 and then, in the same
/// turn, takes a newer leader's entries in their place must not let the
/// first reply go: it would tell the old leader that entries are stored
/// here that are not, and that leader could count them towards a majority.
/// The reply is dropped, as if lost; the newer leader's goes.
#[test]
fn a_reply_whose_entries_were_replaced_in_the_same_turn_is_not_sent_5_3() {
    for newer in [vec![2], vec![2, 3]] {
        let mut c = Cluster::new(SimConfig::new(3, 1));
        for id in c.ids() {
            c.isolate(id);
        }
        let entry = |index, term| Entry {
            index,
            term,
            command: Command::Noop,
        };
        let old_leader = Message::AppendEntries(AppendEntries {
            term: 1,
            leader_id: 2,
            prev_log_index: 0,
            prev_log_term: 0,
            entries: vec![entry(1, 1), entry(2, 1), entry(3, 1)],
            leader_commit: 0,
            read_round: 0,
        });
        let new_leader = Message::AppendEntries(AppendEntries {
            term: 2,
            leader_id: 3,
            prev_log_index: 1,
            prev_log_term: 1,
            entries: newer.iter().map(|&i| entry(i, 2)).collect(),
            leader_commit: 0,
            read_round: 0,
        });
        let replies = c.exchange_all(1, vec![(2, old_leader), (3, new_leader)]);
        let last = *newer.last().unwrap();
        assert!(
            matches!(
                replies.as_slice(),
                [(3, Message::AppendEntriesReply(AppendEntriesReply { success: true, match_index, .. }))]
                    if *match_index == last
            ),
            "only the newer leader's reply may leave, got {replies:?}"
        );
        assert_eq!(c.node(1).log().term_at(2), Some(2));
    }
}

/// §5.3, §5.4: replication told as scripts, each command with what it made
/// happen written beneath it: `tests/scripts/replication/*.txt`
/// (docs/scripts.md). A diff shows where a run goes another way.
#[test]
fn scripted_replication_5_3() {
    raft_kv::sim::script::run_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/scripts/replication"
    ));
}
