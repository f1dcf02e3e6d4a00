//! Membership changes (Raft §6) against real `raft-kv node` processes:
//! `raft-kv node --join` and `raft-kv member list | add | promote | remove`.
//!
//! - `grow_to_five_and_shrink_to_three_while_a_client_writes`: every
//!   acknowledged write is readable at the end, from the servers that
//!   remain, none of which the cluster started with but one;
//! - `replace_a_killed_node`: remove it, add an empty one with a new id;
//!   restarts take the configuration from the data dir, not from --peers;
//! - `remove_the_leader`: the rest elect a leader, the old one says it was
//!   removed and serves nothing;
//! - `one_change_at_a_time_and_refusals_change_nothing`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use common::{eventually, stderr, stdout, Cluster, Setup};
use raft_kv::proto::kv::StatusResponse;
use serde_json::Value;

/// `raft-kv member ARGS -w json` against the cluster; the JSON it printed.
fn member(cluster: &Cluster, args: &[&str]) -> Value {
    let mut args = [&["member"][..], args, &["-w", "json"]].concat();
    let cluster_list = cluster.addrs.join(",");
    args.extend(["--cluster", &cluster_list, "--timeout", "30s"]);
    let output = common::cli(&args);
    assert!(
        output.status.success(),
        "raft-kv {args:?} failed: {}",
        stderr(&output)
    );
    serde_json::from_str(&stdout(&output)).expect("member prints JSON")
}

/// `raft-kv member ARGS`, which must fail; its one line on stderr.
fn member_refused(cluster: &Cluster, args: &[&str]) -> String {
    let output = cluster.cli(&[&["member"][..], args].concat());
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    let error = stderr(&output);
    assert_eq!(error.lines().count(), 1, "{error}");
    error
}

/// The ids of the members `list` (member JSON) names with `role`.
fn ids_of(list: &Value, role: &str) -> Vec<u64> {
    let members = list["members"].as_array().expect("members");
    members
        .iter()
        .filter(|m| m["role"] == role)
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

/// Add node `id` to the cluster: start it empty with --join, then add it.
fn add(cluster: &mut Cluster, id: u64, cluster_id: &str) -> Value {
    cluster.spawn_joining(id, cluster_id);
    let member_arg = format!("{id}={}", cluster.addr(id));
    member(cluster, &["add", &member_arg])
}

/// Wait until every running node of `ids` has `voters` committed in force
/// and knows the same leader, one of them; returns that leader's status.
fn wait_for_configuration(cluster: &mut Cluster, ids: &[u64], voters: &[u64]) -> StatusResponse {
    eventually(
        &format!("nodes {ids:?} agreeing on voters {voters:?}"),
        || {
            cluster.check_running();
            let statuses: Vec<StatusResponse> = ids
                .iter()
                .map(|&id| cluster.status(id))
                .collect::<Option<_>>()?;
            let leader = statuses.iter().find(|s| s.role == "leader")?.clone();
            let agreed = statuses.iter().all(|s| {
                s.voters == voters
                    && s.old_voters.is_empty()
                    && s.configuration_committed
                    && s.leader_id == leader.id
                    && s.term == leader.term
            });
            agreed.then_some(leader)
        },
    )
}

/// A client that writes `k0`, `k1`, … until told to stop; the keys whose
/// writes were acknowledged.
fn start_writer(cluster: &Cluster) -> (Arc<AtomicBool>, thread::JoinHandle<Vec<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut client = cluster.client();
    let stopping = stop.clone();
    let writer = thread::spawn(move || {
        let mut acknowledged = Vec::new();
        for i in 0.. {
            if stopping.load(Ordering::Relaxed) {
                break;
            }
            let key = format!("k{i}");
            if client.set(&key, &format!("v{i}")).is_ok() {
                acknowledged.push(key);
            }
        }
        acknowledged
    });
    (stop, writer)
}

#[test]
fn grow_to_five_and_shrink_to_three_while_a_client_writes() {
    let mut cluster = Cluster::start(&[]);
    cluster.wait_for_leader();
    let cluster_id = cluster.cluster_id(1);
    let (four, five) = (cluster.add_slot(), cluster.add_slot());
    let (stop, writer) = start_writer(&cluster);

    add(&mut cluster, four, &cluster_id);
    let list = add(&mut cluster, five, &cluster_id);
    assert_eq!(ids_of(&list, "voter"), [1, 2, 3, 4, 5], "{list}");
    assert_eq!(list["cluster_id"], cluster_id.as_str());
    wait_for_configuration(&mut cluster, &[1, 2, 3, 4, 5], &[1, 2, 3, 4, 5]);

    // Shrink to 3, 4, 5: two of the servers the cluster started with go.
    member(&cluster, &["remove", "1"]);
    let list = member(&cluster, &["remove", "2"]);
    assert_eq!(ids_of(&list, "voter"), [3, 4, 5], "{list}");
    wait_for_configuration(&mut cluster, &[3, 4, 5], &[3, 4, 5]);

    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.join().expect("the writer");
    assert!(
        acknowledged.len() > 10,
        "only {} writes",
        acknowledged.len()
    );
    let mut client = raft_kv::cli::Client::new(&cluster.addrs[2..])
        .unwrap()
        .with_timeout(common::PATIENCE);
    for key in &acknowledged {
        let value = client.get(key, false).expect("a linearizable read");
        assert_eq!(value.as_deref(), Some(&format!("v{}", &key[1..])[..]));
    }
}

#[test]
fn replace_a_killed_node() {
    let mut cluster = Cluster::start(&[]);
    cluster.wait_for_leader();
    let cluster_id = cluster.cluster_id(1);
    cluster.kill(3);
    let list = member(&cluster, &["remove", "3"]);
    assert_eq!(ids_of(&list, "voter"), [1, 2]);
    let four = cluster.add_slot();
    add(&mut cluster, four, &cluster_id);
    wait_for_configuration(&mut cluster, &[1, 2, 4], &[1, 2, 4]);
    assert!(cluster.cli(&["set", "after", "replacing"]).status.success());

    // Restarts: node 4 with --join again, node 1 with the --peers the
    // cluster started with (naming 3, not 4); each finds the configuration
    // in its data dir.
    for id in [four, 1] {
        cluster.kill(id);
        match id {
            1 => cluster.spawn(1),
            _ => cluster.spawn_joining(id, &cluster_id),
        }
        wait_for_configuration(&mut cluster, &[1, 2, 4], &[1, 2, 4]);
    }
    // Node 2 alone with node 4 are a majority: 4 votes and takes the log.
    cluster.kill(1);
    let four_addr = cluster.addr(four).to_string();
    let output = cluster.cli_to(&four_addr, &["set", "majority", "of 2 and 4"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = cluster.cli_to(&four_addr, &["get", "after"]);
    assert_eq!(stdout(&output), "replacing\n");
}

#[test]
fn remove_the_leader() {
    let mut cluster = Cluster::start(&[]);
    let leader = cluster.wait_for_leader();
    assert!(cluster.cli(&["set", "before", "1"]).status.success());
    member(&cluster, &["remove", &leader.to_string()]);
    let rest: Vec<u64> = cluster.ids().filter(|&id| id != leader).collect();
    let new_leader = wait_for_configuration(&mut cluster, &rest, &rest);
    assert_ne!(new_leader.id, leader);
    eventually("the old leader saying it was removed", || {
        let status = cluster.status(leader)?;
        (status.removed && cluster.log(leader).contains("removed from the cluster")).then_some(())
    });
    let output = cluster.cli(&["health"]);
    assert!(
        stdout(&output).contains("not serving (removed from the cluster)"),
        "{}",
        stdout(&output)
    );
    // It serves nothing; the others serve everything.
    let old = cluster.addr(leader).to_string();
    let mut args = vec!["set", "k", "v", "--cluster", &old, "--timeout", "1s"];
    let output = common::cli(&args);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("was removed from the cluster"),
        "{}",
        stderr(&output)
    );
    args.truncate(3);
    assert!(cluster.cli(&args).status.success());
    let output = cluster.cli(&["get", "before"]);
    assert_eq!(stdout(&output), "1\n");
}

#[test]
fn one_change_at_a_time_and_refusals_change_nothing() {
    // A slow election timeout: the change waiting on a learner that is
    // not running lasts three of them (src/raft/membership_change.rs).
    let mut cluster = Cluster::start_with(Setup {
        election_timeout_ms: "600-1200",
        heartbeat_ms: "50",
        ..Setup::default()
    });
    cluster.wait_for_leader();
    let before = member(&cluster, &["list"]);
    let index = before["configuration_index"].clone();

    // Refused outright: nothing changes.
    let error = member_refused(&cluster, &["add", &format!("1={}", cluster.addr(1))]);
    assert!(error.contains("node 1 is already a voter"), "{error}");
    let error = member_refused(&cluster, &["remove", "9"]);
    assert!(error.contains("node 9 is not a member"), "{error}");
    let error = member_refused(&cluster, &["promote", "2"]);
    assert!(error.contains("node 2 is already a voter"), "{error}");
    let error = member_refused(&cluster, &["add", "7=no-port"]);
    assert!(error.contains("is not HOST:PORT"), "{error}");
    let error = member_refused(&cluster, &["add", &format!("7={}", cluster.addr(2))]);
    assert!(error.contains("is node 2's address"), "{error}");
    assert_eq!(member(&cluster, &["list"]), before);

    // Node 4 is added but never started: the change waits for it to catch
    // up, and a second change meanwhile is refused.
    let four = cluster.add_slot();
    let four_arg = format!("{four}={}", cluster.addr(four));
    let cluster_list = cluster.addrs.join(",");
    let adding = std::process::Command::new(common::BIN)
        .args(["member", "add", &four_arg, "--cluster", &cluster_list])
        .args(["--timeout", "30s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("raft-kv member add");
    eventually("node 4 added as a learner", || {
        let list = member(&cluster, &["list"]);
        (ids_of(&list, "learner") == [four]).then_some(())
    });
    let error = member_refused(&cluster, &["remove", "2"]);
    assert!(
        error.contains("another membership change is in progress"),
        "{error}"
    );
    let output = adding.wait_with_output().expect("member add ends");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("made no progress catching up"),
        "{}",
        stderr(&output)
    );
    // Node 4 stays a learner; the voters are those of before.
    let after = member(&cluster, &["list"]);
    assert_eq!(ids_of(&after, "voter"), [1, 2, 3]);
    assert_ne!(after["configuration_index"], index);
    // And removing it is one change like any other.
    let list = member(&cluster, &["remove", &four.to_string()]);
    assert_eq!(ids_of(&list, "learner"), Vec::<u64>::new());
}
