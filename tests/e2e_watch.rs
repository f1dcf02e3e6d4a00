//! The viewer's RPCs against real `raft-kv node` processes
//! (proto/watch.proto): the watch stream of a node's state and messages,
//! and the fault injection that partitions a node, refused unless the node
//! was started with --allow-fault-injection. And `raft-kv cluster`'s page,
//! over plain HTTP (tests/ui.rs drives it in a browser).

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, free_ports, runtime, Cluster, BIN};
use raft_kv::proto::watch::fault_injection_client::FaultInjectionClient;
use raft_kv::proto::watch::watch_client::WatchClient;
use raft_kv::proto::watch::{NodeState, PartitionRequest, WatchRequest};
use tonic::transport::Channel;
use tonic::Code;

fn channel(rt: &tokio::runtime::Runtime, addr: &str) -> Channel {
    rt.block_on(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .expect("connect to the node")
}

/// The first `n` states node `addr` streams.
fn watch(rt: &tokio::runtime::Runtime, addr: &str, n: usize) -> Vec<NodeState> {
    let mut client = WatchClient::new(channel(rt, addr));
    rt.block_on(async {
        let request = WatchRequest { interval_ms: 50 };
        let mut stream = client.watch(request).await.unwrap().into_inner();
        let mut states = Vec::new();
        while states.len() < n {
            states.push(stream.message().await.unwrap().expect("a state"));
        }
        states
    })
}

fn set_partition(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    drop_peers: Vec<u64>,
) -> Result<Vec<u64>, tonic::Status> {
    let mut client = FaultInjectionClient::new(channel(rt, addr));
    rt.block_on(client.set_partition(PartitionRequest { drop_peers }))
        .map(|reply| reply.into_inner().partitioned_from)
}

#[test]
fn the_leader_streams_its_state_its_followers_and_its_messages() {
    let mut cluster = Cluster::start(&[]);
    let leader = cluster.wait_for_leader();
    cluster.client().set("k", "v").unwrap();
    let rt = runtime();
    let states = watch(&rt, cluster.addr(leader), 6);
    let last = states.last().unwrap();
    assert_eq!((last.id, last.role.as_str()), (leader, "leader"));
    assert_eq!(last.leader_id, leader);
    assert!(last.commit_index >= 2, "{last:?}");
    assert_eq!(
        last.tail_terms.len() as u64,
        last.last_log_index - last.tail_start + 1
    );
    let followers: Vec<u64> = last.followers.iter().map(|f| f.peer).collect();
    assert_eq!(followers.len(), 2, "{last:?}");
    assert!(last.followers.iter().all(|f| f.match_index <= f.next_index));
    // Heartbeats every 50 ms, over 6 states 50 ms apart.
    let heartbeats: u64 = states
        .iter()
        .flat_map(|s| &s.sent)
        .filter(|m| m.kind == "AppendEntries")
        .map(|m| m.count)
        .sum();
    assert!(heartbeats >= 2, "{states:?}");

    let follower = cluster.follower_of(leader);
    let state = &watch(&rt, cluster.addr(follower), 1)[0];
    assert_eq!((state.role.as_str(), state.leader_id), ("follower", leader));
    assert!(state.election_timeout_ticks > 0 && state.followers.is_empty());

    let mut client = WatchClient::new(channel(&rt, cluster.addr(leader)));
    let refused = rt
        .block_on(client.watch(WatchRequest { interval_ms: 1 }))
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}

#[test]
fn fault_injection_is_refused_without_its_flag() {
    let mut cluster = Cluster::start(&[]);
    cluster.wait_for_leader();
    let rt = runtime();
    let refused = set_partition(&rt, cluster.addr(1), vec![2]).unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("--allow-fault-injection"),
        "{refused:?}"
    );
    assert!(watch(&rt, cluster.addr(1), 1)[0]
        .partitioned_from
        .is_empty());
}

#[test]
fn a_partitioned_leader_is_replaced_and_rejoins_when_healed() {
    let mut cluster = Cluster::start(&["--allow-fault-injection"]);
    let old = cluster.wait_for_leader();
    let rt = runtime();
    let bad = set_partition(&rt, cluster.addr(old), vec![old]).unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let term = cluster.status(old).unwrap().term;
    let others: Vec<u64> = cluster.ids().filter(|&id| id != old).collect();
    assert_eq!(
        set_partition(&rt, cluster.addr(old), others.clone()).unwrap(),
        others
    );
    for &id in &others {
        set_partition(&rt, cluster.addr(id), vec![old]).unwrap();
    }
    let new = eventually("a leader among the others", || {
        others.iter().copied().find(|&id| {
            cluster
                .status(id)
                .is_some_and(|s| s.role == "leader" && s.term > term)
        })
    });
    // Writes commit on the majority's side, and never reach the old leader.
    let mut client = cluster.client_of(new);
    client.set("after", "partition").unwrap();
    let cut_off = cluster.status(old).unwrap();
    assert!(
        cut_off.term == term || cut_off.role != "leader",
        "{cut_off:?}"
    );
    for id in cluster.ids() {
        set_partition(&rt, cluster.addr(id), vec![]).unwrap();
    }
    eventually("the old leader to follow the new one", || {
        let s = cluster.status(old)?;
        (s.role == "follower" && s.leader_id != 0 && s.leader_id != old).then_some(())
    });
    let mut read = cluster.client_of(old);
    eventually("the write on the old leader", || {
        (read.get("after", true).ok()?.as_deref() == Some("partition")).then_some(())
    });
}

/// One HTTP/1.1 request to the page's server; returns (status line, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

#[test]
fn the_cluster_serves_its_page_and_its_state() {
    let ports = free_ports(4);
    assert!(ports.iter().all(|p| !(7000..=7003).contains(p)));
    let dir = tempfile::tempdir().unwrap();
    let peers: Vec<String> = (1..=3)
        .map(|i| format!("{i}=127.0.0.1:{}", ports[i]))
        .collect();
    let web = format!("127.0.0.1:{}", ports[0]);
    let mut child = Command::new(BIN)
        .args(["cluster", "--peers", &peers.join(","), "--web-addr", &web])
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    let checked = std::panic::catch_unwind(|| check_page(&web));
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
}

fn check_page(web: &str) {
    eventually("the page", || std::net::TcpStream::connect(web).ok());
    let (status, page) = http(web, "GET", "/", "");
    assert!(
        status.contains("200") && page.contains("<svg id=\"graph\""),
        "{status}"
    );
    eventually("a leader in /api/state", || {
        let (_, body) = http(web, "GET", "/api/state?since=0", "");
        let state: serde_json::Value = serde_json::from_str(&body).ok()?;
        let nodes = state["nodes"].as_array()?;
        nodes
            .iter()
            .any(|n| n["state"]["role"] == "leader" && n["process"] == "running")
            .then_some(())
    });
    let (status, body) = http(web, "POST", "/api/write", r#"{"key":"k","value":"v"}"#);
    assert!(status.contains("200"), "{status} {body}");
    let (status, body) = http(web, "POST", "/api/write", "not json");
    assert!(status.contains("400"), "{status} {body}");
    let (status, body) = http(web, "POST", "/api/node/9/kill", "");
    assert!(
        status.contains("404") && body.contains("no node 9"),
        "{status} {body}"
    );
    let (status, body) = http(web, "POST", "/api/node/1/explode", "");
    assert!(
        status.contains("404") && body.contains("unknown action"),
        "{status} {body}"
    );
    let (status, body) = http(web, "POST", "/api/node/2/partition", "");
    assert!(
        status.contains("200") && body.contains("partitioned node 2"),
        "{status} {body}"
    );
    let (_, body) = http(web, "POST", "/api/heal", "");
    assert!(body.contains("healed"), "{body}");
}
