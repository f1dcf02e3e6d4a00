//! End-to-end durability tests on real `raft-kv node` processes and real
//! data directories: a crash of every node at once (`kill -9`, so nothing
//! but what is on disk survives; Figure 2 "persistent state"), a follower
//! that falls so far behind that only a snapshot can catch it up (§7,
//! Figure 13), and the lock that keeps two processes off one data dir.

mod common;

use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, free_ports, Cluster};
use raft_kv::cli::Client;

/// Writes from one writer thread: acknowledged ones, and ones whose outcome
/// is unknown (an error: the crash may have come before or after the commit).
#[derive(Default)]
struct Outcomes {
    acknowledged: Vec<(String, String)>,
    unknown: Vec<(String, String)>,
}

#[test]
fn crashing_every_node_during_writes_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(&[]);
    cluster.wait_for_leader();

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let writers: Vec<_> = (0..2)
        .map(|writer| {
            let stop = Arc::clone(&stop);
            let outcomes = Arc::clone(&outcomes);
            // Short, so the writers notice the crash and stop soon after it.
            let mut client = Client::new(&cluster.addrs)
                .unwrap()
                .with_timeout(Duration::from_secs(2));
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let write = (format!("w{writer}-{i}"), format!("value {writer}/{i}"));
                    let acknowledged = client.set(&write.0, &write.1).is_ok();
                    let mut outcomes = outcomes.lock().unwrap();
                    if acknowledged {
                        outcomes.acknowledged.push(write);
                    } else {
                        outcomes.unknown.push(write);
                    }
                }
            })
        })
        .collect();

    eventually("40 acknowledged writes", || {
        (outcomes.lock().unwrap().acknowledged.len() >= 40).then_some(())
    });
    for id in cluster.ids() {
        cluster.kill(id);
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }

    for id in cluster.ids() {
        cluster.spawn(id);
    }
    let outcomes = outcomes.lock().unwrap();
    let mut client = cluster.client();
    for (key, value) in &outcomes.acknowledged {
        assert_eq!(
            client.get(key, false).unwrap().as_deref(),
            Some(value.as_str()),
            "acknowledged write {key} lost in the crash"
        );
    }
    // A write cut off by the crash may or may not have committed, but if it
    // did, it holds exactly what was written.
    for (key, value) in &outcomes.unknown {
        let read = client.get(key, false).unwrap();
        assert!(
            read.is_none() || read.as_deref() == Some(value.as_str()),
            "{key} reads {read:?}, which was never written"
        );
    }
    client.set("after-restart", "yes").unwrap();

    // Every node applies the same committed log: stale reads on each one
    // converge to what the leader answered.
    for id in cluster.ids() {
        let mut local = cluster.client_of(id);
        for (key, value) in outcomes
            .acknowledged
            .iter()
            .chain([&("after-restart".to_string(), "yes".to_string())])
        {
            eventually(&format!("node {id} to apply {key}"), || {
                (local.get(key, true).unwrap().as_deref() == Some(value.as_str())).then_some(())
            });
        }
    }
}

#[test]
fn a_follower_far_behind_catches_up_through_install_snapshot() {
    let mut cluster = Cluster::start(&["--snapshot-log-bytes", "1000"]);
    let leader = cluster.wait_for_leader();
    let lagging = cluster.follower_of(leader);
    cluster.kill(lagging);

    // 400 entries of ~30 bytes, a snapshot every 1000 bytes or more: the
    // leader has compacted away the entries the lagging follower needs next,
    // so AppendEntries cannot catch it up; only InstallSnapshot can (§7).
    let mut client = cluster.client();
    for i in 0..200 {
        client.set(&format!("key-{i}"), &i.to_string()).unwrap();
        client.set("latest", &i.to_string()).unwrap();
    }
    let leader = cluster.wait_for_leader();
    let commit_index = cluster.status(leader).unwrap().commit_index;

    cluster.spawn(lagging);
    eventually(
        "the restarted follower to apply the leader's commit",
        || {
            let status = cluster.status(lagging)?;
            (status.last_applied >= commit_index).then_some(())
        },
    );
    assert!(
        cluster.log(lagging).contains("installed snapshot"),
        "node {lagging} caught up without InstallSnapshot:\n{}",
        cluster.log_tail(lagging)
    );

    let mut local = cluster.client_of(lagging);
    assert_eq!(local.get("latest", true).unwrap().as_deref(), Some("199"));
    assert_eq!(local.get("key-0", true).unwrap().as_deref(), Some("0"));
    assert_eq!(local.get("key-199", true).unwrap().as_deref(), Some("199"));
}

/// docs/storage.md's procedure for a node whose data dir is damaged: move
/// the dir aside and start the node on an empty one; the leader notices
/// that the node no longer holds entries it acknowledged, says so, and
/// refills it — here through InstallSnapshot, since it has compacted them.
#[test]
fn a_follower_whose_data_dir_was_wiped_is_refilled() {
    let mut cluster = Cluster::start(&["--snapshot-log-bytes", "1000"]);
    let leader = cluster.wait_for_leader();
    let wiped = cluster.follower_of(leader);
    let mut client = cluster.client();
    for i in 0..100 {
        client.set(&format!("key-{i}"), &i.to_string()).unwrap();
    }
    let mut local = cluster.client_of(wiped);
    eventually("the follower to apply every write", || {
        (local.get("key-99", true).unwrap().as_deref() == Some("99")).then_some(())
    });

    cluster.kill(wiped);
    let dir = cluster.data_dir(wiped);
    std::fs::rename(&dir, dir.with_extension("damaged")).unwrap();
    cluster.spawn(wiped);
    client.set("after-wipe", "yes").unwrap();
    let leader = cluster.wait_for_leader();
    let commit_index = cluster.status(leader).unwrap().commit_index;
    eventually("the wiped follower to apply the leader's commit", || {
        let status = cluster.status(wiped)?;
        (status.last_applied >= commit_index).then_some(())
    });
    assert!(
        cluster
            .log(leader)
            .contains(&format!("node {wiped} no longer holds entries")),
        "the leader did not warn about node {wiped}:\n{}",
        cluster.log_tail(leader)
    );
    let mut local = cluster.client_of(wiped);
    assert_eq!(local.get("key-0", true).unwrap().as_deref(), Some("0"));
    assert_eq!(
        local.get("after-wipe", true).unwrap().as_deref(),
        Some("yes")
    );
}

/// Kills a stray process if the test fails before it exits by itself.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_second_node_on_a_data_dir_in_use_refuses_to_start() {
    let mut cluster = Cluster::start(&[]);
    cluster.wait_for_leader();

    // Same id and data dir, but another port, so only the data dir clashes.
    let other = free_ports(1)[0];
    let peers = format!(
        "1=127.0.0.1:{other},2={},3={}",
        cluster.addr(2),
        cluster.addr(3)
    );
    let mut second = KillOnDrop(
        cluster
            .node_command(1, &peers)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a second raft-kv node"),
    );
    let exit = eventually("the second node to exit", || second.0.try_wait().unwrap());
    let mut message = String::new();
    std::io::Read::read_to_string(&mut second.0.stderr.take().unwrap(), &mut message).unwrap();
    assert!(!exit.success(), "the second node exited with {exit}");
    assert!(message.contains("in use"), "{message:?}");
    assert_eq!(message.trim().lines().count(), 1, "{message:?}");

    // The first node is untouched.
    assert!(cluster.status(1).is_some());
}
