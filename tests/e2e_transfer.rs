//! End to end: leadership transfer (dissertation §3.10) between real
//! `raft-kv node` processes on free loopback ports.
//!
//! - `raft-kv transfer-leader --to ID` makes ID leader while a client keeps
//!   writing; no acknowledged write is lost. Bad targets are refused.
//! - SIGTERM to the leader hands leadership over before the node exits:
//!   a new leader within a round trip or two, not an election timeout, and
//!   no acknowledged write lost.
//! - Pre-vote (dissertation §9.6) is on by default; `--pre-vote=false`
//!   turns it off.
//!
//! Every process started here is killed by `common::Cluster`'s Drop guard.
#![cfg(unix)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{stderr, stdout, Cluster};

/// Writes `w0`, `w1`, … until told to stop; returns the keys acknowledged.
fn writer(cluster: &Cluster, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<String>> {
    let mut client = cluster.client();
    thread::spawn(move || {
        let mut acknowledged = Vec::new();
        for i in 0.. {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let key = format!("w{i}");
            if client.set(&key, "v").is_ok() {
                acknowledged.push(key);
            }
        }
        acknowledged
    })
}

/// Every acknowledged key reads back from the cluster.
fn all_present(cluster: &Cluster, keys: &[String]) {
    let mut client = cluster.client();
    for key in keys {
        assert_eq!(
            client.get(key, false).unwrap().as_deref(),
            Some("v"),
            "acknowledged write {key} lost"
        );
    }
}

#[test]
fn transfer_leader_moves_leadership_while_writes_go_on() {
    let mut cluster = Cluster::start(&[]);
    let leader = cluster.wait_for_leader();
    let term = cluster.status(leader).unwrap().term;
    let target = cluster.follower_of(leader);
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(&cluster, stop.clone());
    thread::sleep(Duration::from_millis(200));

    let output = cluster.cli(&["transfer-leader", "--to", &target.to_string()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let expected = format!("leadership transferred from node {leader} to node {target}");
    assert!(
        stdout(&output).starts_with(&expected),
        "{}",
        stdout(&output)
    );
    assert_eq!(cluster.wait_for_leader(), target);
    assert_eq!(cluster.status(target).unwrap().term, term + 1);

    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let acknowledged = writes.join().unwrap();
    assert!(
        acknowledged.len() > 10,
        "writes stalled: {}",
        acknowledged.len()
    );
    all_present(&cluster, &acknowledged);

    let again = cluster.cli(&["transfer-leader", "--to", &target.to_string()]);
    assert!(again.status.success());
    assert_eq!(
        stdout(&again),
        format!("node {target} is already the leader\n")
    );
    let unknown = cluster.cli(&["transfer-leader", "--to", "9"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert_eq!(
        stderr(&unknown),
        "raft-kv: error: invalid argument: node 9 is not a member of this cluster\n"
    );
}

#[test]
fn sigterm_to_the_leader_hands_over_before_it_exits() {
    let mut cluster = Cluster::start(&[]);
    let leader = cluster.wait_for_leader();
    let term = cluster.status(leader).unwrap().term;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(&cluster, stop.clone());
    thread::sleep(Duration::from_millis(200));

    let sent = Instant::now();
    let exit = cluster.terminate(leader);
    let exited_after = sent.elapsed();
    assert_eq!(exit.code(), Some(0), "{}", cluster.log_tail(leader));
    // At most two election timeouts (2 x 300 ms) and the exit itself.
    assert!(
        exited_after < Duration::from_secs(2),
        "took {exited_after:?}"
    );
    let log = cluster.log(leader);
    assert!(log.contains("handed leadership to node"), "{log}");
    let next = cluster.wait_for_leader();
    assert_ne!(next, leader);
    // Handed over: one election, the target's, not a timeout's.
    assert_eq!(cluster.status(next).unwrap().term, term + 1);

    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let acknowledged = writes.join().unwrap();
    all_present(&cluster, &acknowledged);
}

/// The nodes ask for pre-votes before their first election unless
/// `--pre-vote=false`; either way they elect a leader and serve.
#[test]
fn pre_vote_is_on_by_default_and_can_be_turned_off() {
    for (flags, asks) in [(&[][..], true), (&["--pre-vote=false"][..], false)] {
        let mut cluster = Cluster::start(flags);
        let leader = cluster.wait_for_leader();
        assert!(cluster.client().set("k", "v").is_ok());
        let logs: String = cluster.ids().map(|id| cluster.log(id)).collect();
        assert_eq!(
            logs.contains("asking for pre-votes"),
            asks,
            "flags {flags:?}, leader {leader}:\n{logs}"
        );
    }
}
