//! What an operator points at a running node (docs/api.md, "Operating a
//! cluster"): the gRPC health service and `raft-kv health`, server
//! reflection, and the Prometheus endpoint of `--metrics-addr`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{cli, eventually, free_ports, runtime, stderr, stdout, Cluster};
use tonic::codegen::tokio_stream;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

fn channel(rt: &tokio::runtime::Runtime, addr: &str) -> Channel {
    rt.block_on(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// What the node at `addr` answers a health check of `service`, or None
/// while it does not answer.
fn health(addr: &str, service: &str) -> Option<ServingStatus> {
    let rt = runtime();
    rt.block_on(async {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .ok()?;
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let answer = HealthClient::new(channel).check(request).await.ok()?;
        Some(answer.into_inner().status())
    })
}

#[test]
fn health_is_serving_only_with_a_leader_and_the_cli_wants_a_majority() {
    let mut cluster = Cluster::prepare(&[]);
    cluster.spawn(1);
    let addr1 = cluster.addr(1).to_string();
    // Alone of three, node 1 elects no one: it answers, and is not serving,
    // for the server as a whole and for the client service alike.
    eventually("node 1 to answer", || health(&addr1, ""));
    std::thread::sleep(Duration::from_millis(600));
    for service in ["", "raftkv.KeyValue"] {
        assert_eq!(health(&addr1, service), Some(ServingStatus::NotServing));
    }
    let output = cluster.cli(&["health"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let out = stdout(&output);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let not_serving = format!("{addr1} is unhealthy: not serving (no leader known), term ");
    assert!(lines[0].starts_with(&not_serving), "{out}");
    assert!(lines[0].contains(", took "), "{out}");
    for (line, id) in lines[1..].iter().zip([2, 3]) {
        let down = format!("{} is unhealthy: ", cluster.addr(id));
        assert!(line.starts_with(&down), "{out}");
    }
    assert_eq!(
        stderr(&output),
        "raft-kv: unhealthy: 0 of 3 nodes healthy, fewer than a majority (2)\n"
    );

    cluster.spawn(2);
    cluster.spawn(3);
    let leader = cluster.wait_for_leader();
    let output = cluster.cli(&["health"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    for (line, id) in stdout(&output).lines().zip(cluster.ids()) {
        let healthy = format!(
            "{} is healthy: serving, leader {leader}, term ",
            cluster.addr(id)
        );
        assert!(line.starts_with(&healthy), "{line}");
    }
    let output = cluster.cli(&["health", "-w", "json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    for (row, id) in rows.as_array().unwrap().iter().zip(cluster.ids()) {
        assert_eq!(row["address"], cluster.addr(id).to_string(), "{row}");
        assert_eq!(row["healthy"], true, "{row}");
        assert_eq!(row["leader"], leader, "{row}");
    }
    assert_eq!(health(&addr1, "no.such.Service"), None);

    // Two of three gone: the last one stops serving within an election
    // timeout (a leader steps down, a follower starts an election).
    let survivor = cluster.follower_of(leader);
    for id in cluster.ids().filter(|&id| id != survivor) {
        cluster.kill(id);
    }
    let addr = cluster.addr(survivor).to_string();
    eventually("the survivor to stop serving", || {
        (health(&addr, "")? == ServingStatus::NotServing).then_some(())
    });
    let output = cluster.cli(&["health"]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let output = cluster.cli(&["health", "-w", "json"]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let healthy = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["healthy"] == true);
    assert_eq!(healthy.count(), 0, "{rows}");
}

#[test]
fn reflection_lists_and_describes_the_client_api_on_the_client_port() {
    let mut cluster = Cluster::prepare(&[]);
    let clients = format!("127.0.0.1:{}", free_ports(1)[0]);
    cluster.spawn_with(1, &["--listen-clients".into(), clients.clone()]);
    let rt = runtime();
    eventually("node 1 to serve clients", || {
        TcpStream::connect(&clients).ok()
    });
    let mut reflection = ServerReflectionClient::new(channel(&rt, &clients));
    let ask = |reflection: &mut ServerReflectionClient<Channel>, request: MessageRequest| {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        rt.block_on(async {
            let stream = tokio_stream::iter(vec![request]);
            let mut answers = reflection
                .server_reflection_info(stream)
                .await?
                .into_inner();
            Ok::<_, tonic::Status>(answers.message().await?.unwrap().message_response)
        })
    };

    let answer = ask(&mut reflection, MessageRequest::ListServices(String::new())).unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer else {
        panic!("not a list of services: {answer:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    println!("{}", names.join("\n"));
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "raftkv.KeyValue",
            "raftleadership.Leadership",
            "raftmembership.Membership"
        ]
    );

    let symbol = MessageRequest::FileContainingSymbol("raftkv.KeyValue".into());
    let answer = ask(&mut reflection, symbol).unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = answer else {
        panic!("not a file descriptor: {answer:?}");
    };
    use prost::Message;
    let file = prost_types::FileDescriptorProto::decode(&files.file_descriptor_proto[0][..])
        .expect("a file descriptor");
    assert_eq!(file.package(), "raftkv");
    let service = &file.service[0];
    assert_eq!(service.name(), "KeyValue");
    let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
    assert_eq!(methods, ["Set", "Get", "Delete", "Status", "Snapshot"]);

    // The peer port is for members: no reflection there.
    let mut on_peer_port = ServerReflectionClient::new(channel(&rt, cluster.addr(1)));
    let refused = ask(
        &mut on_peer_port,
        MessageRequest::ListServices(String::new()),
    );
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unimplemented);
}

/// `GET /metrics` from `addr`, over a plain socket: the body of a 200 answer.
fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_string()
}

/// The value of the sample named exactly `name` (labels included).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_are_scraped_from_running_nodes() {
    let mut cluster = Cluster::prepare(&[]);
    let metrics: Vec<String> = free_ports(3)
        .into_iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    for id in cluster.ids() {
        let metrics = metrics[id as usize - 1].clone();
        // A snapshot every few writes, to be counted.
        let flags = ["--metrics-addr", &metrics, "--snapshot-log-bytes", "2048"];
        cluster.spawn_with(id, &flags.map(String::from));
    }
    let leader = cluster.wait_for_leader();
    let mut client = cluster.client();
    let writes = 20;
    let value = "v".repeat(500);
    for i in 0..writes {
        client.set(&format!("key{i}"), &value).unwrap();
    }

    let text = scrape(&metrics[leader as usize - 1]);
    assert!(sample(&text, "raftkv_current_term") >= 1.0);
    assert_eq!(sample(&text, "raftkv_role{role=\"leader\"}"), 1.0);
    assert_eq!(sample(&text, "raftkv_has_leader"), 1.0);
    assert!(sample(&text, "raftkv_leader_changes_total") >= 1.0);
    assert!(sample(&text, "raftkv_proposals_committed_total") >= writes as f64);
    assert!(sample(&text, "raftkv_commit_index") >= writes as f64);
    assert!(sample(&text, "raftkv_fsync_duration_seconds_count") > 0.0);
    assert!(sample(&text, "raftkv_apply_duration_seconds_count") >= writes as f64);
    // The leader's loop synced each write: its turns' ends took time, and
    // it waited for work between them.
    assert!(sample(&text, "raftkv_event_loop_seconds_total{part=\"end_turn\"}") > 0.0);
    assert!(sample(&text, "raftkv_event_loop_seconds_total{part=\"handling\"}") > 0.0);
    assert!(sample(&text, "raftkv_event_loop_seconds_total{part=\"waiting\"}") > 0.0);
    assert!(
        sample(
            &text,
            "raftkv_peer_messages_sent_total{type=\"AppendEntries\"}"
        ) > 0.0
    );
    assert_eq!(sample(&text, "raftkv_sessions"), 1.0);
    assert_eq!(sample(&text, "raftkv_keys"), writes as f64);
    assert!(text.ends_with("# EOF\n"), "{text}");
    // The snapshot writer counts once a snapshot is durable.
    let text = eventually("a snapshot to be counted", || {
        let text = scrape(&metrics[leader as usize - 1]);
        (sample(&text, "raftkv_snapshots_total") >= 1.0).then_some(text)
    });
    assert!(sample(&text, "raftkv_snapshot_size_bytes") > 0.0);
    assert!(sample(&text, "raftkv_snapshot_duration_seconds_count") >= 1.0);

    let follower = cluster.follower_of(leader);
    let text = scrape(&metrics[follower as usize - 1]);
    assert_eq!(sample(&text, "raftkv_role{role=\"follower\"}"), 1.0);
    assert!(
        sample(
            &text,
            "raftkv_peer_messages_received_total{type=\"AppendEntries\"}"
        ) > 0.0
    );
    // A follower applies what the leader commits, a heartbeat later.
    eventually("the follower to apply every write", || {
        let text = scrape(&metrics[follower as usize - 1]);
        (sample(&text, "raftkv_keys") == writes as f64).then_some(())
    });
}

#[test]
fn a_bad_metrics_address_is_refused_before_the_node_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node1").display().to_string();
    let peer = format!("127.0.0.1:{}", free_ports(1)[0]);
    let peers = format!("1={peer}");
    let node = |metrics: &str| {
        cli(&[
            "node",
            "--id",
            "1",
            "--peers",
            &peers,
            "--data-dir",
            &data,
            "--metrics-addr",
            metrics,
        ])
    };
    for (metrics, error) in [
        (
            "localhost".to_string(),
            "raft-kv: error: --metrics-addr: address 'localhost' is not HOST:PORT\n".to_string(),
        ),
        (
            peer.clone(),
            format!(
                "raft-kv: error: --metrics-addr {peer}: this node serves gRPC on that port; \
                 give the metrics a port of their own\n"
            ),
        ),
    ] {
        let output = node(&metrics);
        assert_eq!(output.status.code(), Some(2));
        assert_eq!(stderr(&output), error);
    }
    assert!(!dir.path().join("node1").exists(), "nothing was created");
}
