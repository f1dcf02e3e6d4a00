//! End-to-end tests of the client API (docs/api.md) against three real
//! `raft-kv node` processes: the `Client`, the CLI's output and exit codes,
//! follower redirects (dissertation §6.2), input validation, exactly-once
//! retries and session refusals (dissertation §6.3), and a leader crash during writes (§5.4: a
//! committed entry survives in every future leader's log).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{cli, eventually, free_ports, runtime, stderr, stdout, Cluster, PATIENCE};
use raft_kv::cli::{Client, Error};
use raft_kv::proto::kv::key_value_client::KeyValueClient;
use raft_kv::proto::kv::{Consistency, DeleteRequest, GetRequest, SetRequest, SetResponse};
use raft_kv::proto::{LEADER_ADDR_METADATA, SESSION_ERROR_METADATA};
use raft_kv::proto::{SEQUENCE_REUSED, SESSION_EXPIRED};
use tonic::transport::Channel;
use tonic::Code;

fn connect(rt: &tokio::runtime::Runtime, addr: &str) -> KeyValueClient<Channel> {
    rt.block_on(KeyValueClient::connect(format!("http://{addr}")))
        .expect("connect to a node")
}

fn set_request(key: &str, value: &str, client_id: u64, sequence: u64) -> SetRequest {
    SetRequest {
        key: key.into(),
        value: value.into(),
        client_id,
        sequence,
    }
}

#[test]
fn client_sets_gets_and_deletes() {
    let cluster = Cluster::start(&[]);
    let mut client = cluster.client();

    client.set("greeting", "hello").unwrap();
    assert_eq!(
        client.get("greeting", false).unwrap().as_deref(),
        Some("hello")
    );
    client.set("greeting", "hi").unwrap();
    assert_eq!(
        client.get("greeting", false).unwrap().as_deref(),
        Some("hi")
    );
    assert_eq!(client.get("absent", false).unwrap(), None);
    assert!(client.leader().is_some());

    // Every node applies the same log, so a stale read on each one
    // eventually sees the write.
    for id in cluster.ids() {
        let mut local = cluster.client_of(id);
        eventually(&format!("node {id} to apply the write"), || {
            (local.get("greeting", true).unwrap().as_deref() == Some("hi")).then_some(())
        });
    }

    assert!(client.delete("greeting").unwrap());
    assert!(!client.delete("greeting").unwrap());
    assert_eq!(client.get("greeting", false).unwrap(), None);

    let statuses = client.status_all();
    assert_eq!(statuses.len(), 3);
    let leaders = statuses
        .iter()
        .filter(|(_, s)| s.as_ref().is_ok_and(|s| s.role == "leader"))
        .count();
    assert!(leaders <= 1, "two leaders answered: {statuses:?}");
}

#[test]
fn cli_prints_values_and_exits_0_1_or_2() {
    let cluster = Cluster::start(&[]);

    let out = cluster.cli(&["set", "colour", "blue"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "OK\n");

    let out = cluster.cli(&["get", "colour"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "blue\n");

    // The addresses from RAFT_KV_CLUSTER, for scripts; a flag would win.
    let out = std::process::Command::new(common::BIN)
        .args(["get", "colour", "--timeout", "30s"])
        .env("RAFT_KV_CLUSTER", cluster.addrs.join(","))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "blue\n");
    let nowhere = format!("127.0.0.1:{}", free_ports(1)[0]);
    let out = std::process::Command::new(common::BIN)
        .args(["get", "colour", "--timeout", "30s", "--cluster"])
        .arg(cluster.addrs.join(","))
        .env("RAFT_KV_CLUSTER", &nowhere)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the flag wins: {}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "blue\n");

    let out = cluster.cli(&["get", "colour", "--stale"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = cluster.cli(&["get", "missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert!(!stderr(&out).is_empty());

    let out = cluster.cli(&["delete", "colour"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "deleted\n");
    let out = cluster.cli(&["delete", "colour"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "not found\n");
    assert_eq!(cluster.cli(&["get", "colour"]).status.code(), Some(1));

    let out = cluster.cli(&["set", "", "value"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout(&out), "");
    let message = stderr(&out);
    assert!(
        message.starts_with("raft-kv: error: invalid argument:") && message.lines().count() == 1,
        "{message:?}"
    );

    let out = cluster.cli(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = stdout(&out);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{table}");
    for (row, addr) in rows.iter().zip(&cluster.addrs) {
        assert!(row.contains(addr.as_str()), "{table}");
    }
    assert_eq!(
        rows.iter().filter(|r| r.contains(" leader ")).count(),
        1,
        "{table}"
    );

    // Nothing listens on a port that was just free: every command fails
    // with exit 2 and one line on stderr once its timeout passes.
    let nowhere = format!("127.0.0.1:{}", free_ports(1)[0]);
    let flags = ["--cluster", &nowhere, "--timeout", "300ms"];
    for command in [
        &["get", "k"][..],
        &["set", "k", "v"],
        &["delete", "k"],
        &["status"],
    ] {
        let out = cli(&[command, &flags].concat());
        assert_eq!(out.status.code(), Some(2), "{command:?}");
        let message = stderr(&out);
        assert!(
            message.starts_with("raft-kv: error: ") && message.lines().count() == 1,
            "{command:?}: {message:?}"
        );
    }
}

/// Exactly `len` bytes of UTF-8 with newlines, two-byte characters and a
/// trailing newline, different for each `seed`.
/// `-w json` (docs/api.md): one JSON document on stdout, the same exit codes.
#[test]
fn cli_writes_json_for_scripts() {
    use serde_json::Value;
    let mut cluster = Cluster::start(&[]);
    let json = |out: &std::process::Output| -> Value {
        serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    };
    let out = cluster.cli(&["set", "colour", "blue green"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = cluster.cli(&["get", "colour", "-w", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        json(&out),
        serde_json::json!({"key": "colour", "found": true, "value": "blue green"})
    );
    let out = cluster.cli(&["get", "missing", "--write-out", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        json(&out),
        serde_json::json!({"key": "missing", "found": false, "value": null})
    );
    let out = cluster.cli(&["get", "colour", "-w", "json", "--raw"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with("raft-kv: error: --raw"), "{out:?}");

    let leader = cluster.wait_for_leader();
    let follower = cluster.follower_of(leader);
    cluster.kill(follower);
    let out = cluster.cli(&["status", "-w", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let nodes = json(&out);
    let nodes = nodes.as_array().expect("an array");
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for (node, (id, addr)) in nodes.iter().zip(cluster.ids().zip(&cluster.addrs)) {
        assert_eq!(node["address"], addr.as_str(), "{nodes:?}");
        if id == follower {
            assert!(
                node["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{node}"
            );
            continue;
        }
        assert_eq!(node["id"], id, "{node}");
        for field in ["term", "commit", "applied", "last_log"] {
            assert!(node[field].is_u64(), "{field}: {node}");
        }
        assert!(["leader", "follower", "candidate"].contains(&node["role"].as_str().unwrap()));
    }
    assert!(
        nodes
            .iter()
            .any(|n| n["role"] == "leader" && n["leader"] == n["id"]),
        "{nodes:?}"
    );

    let nowhere = format!("127.0.0.1:{}", free_ports(1)[0]);
    let out = common::cli(&[
        "status",
        "-w",
        "json",
        "--cluster",
        &nowhere,
        "--timeout",
        "300ms",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(json(&out)[0]["address"], nowhere.as_str());
    assert_eq!(stderr(&out), "raft-kv: error: no node answered\n");
}

fn big_value(len: usize, seed: u32) -> String {
    let mut value = String::new();
    let mut line = 0;
    while value.len() < len {
        line += 1;
        value.push_str(&format!("{seed} line {line} héhé\n"));
    }
    value.truncate(len - 2);
    while !value.is_char_boundary(value.len()) {
        value.pop();
    }
    while value.len() < len - 1 {
        value.push('x');
    }
    value.push('\n');
    assert_eq!(value.len(), len);
    value
}

#[test]
fn cli_stores_values_from_stdin_and_files_byte_for_byte() {
    let cluster = Cluster::start(&[]);
    let limit = 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let read_back = |key: &str| {
        let out = cluster.cli(&["get", key, "--raw"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        out.stdout
    };

    // 1 MiB, the documented limit, through stdin (`-`) and through a file.
    let piped = big_value(limit, 1);
    let out = cluster.cli_with_input(&["set", "piped", "-"], piped.as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "OK\n");
    assert!(
        read_back("piped") == piped.as_bytes(),
        "stdin value changed"
    );

    let from_file = big_value(limit, 2);
    let path = dir.path().join("value.txt");
    std::fs::write(&path, &from_file).unwrap();
    let path_arg = path.to_str().unwrap();
    let out = cluster.cli(&["set", "from-file", "--value-file", path_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        read_back("from-file") == from_file.as_bytes(),
        "file value changed"
    );
    // Without --raw, get adds one newline for the terminal.
    let out = cluster.cli(&["get", "from-file"]);
    assert_eq!(out.stdout.len(), limit + 1);

    // A literal `-` goes through stdin; the argument `-` never is the value.
    let out = cluster.cli_with_input(&["set", "dash", "-"], b"-");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(read_back("dash"), b"-");
    let out = cluster.cli_with_input(&["set", "empty", "-"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(read_back("empty"), b"");

    // Over the limit: refused with the node's own message, nothing stored.
    let too_big = big_value(limit + 1, 3);
    let out = cluster.cli_with_input(&["set", "too-big", "-"], too_big.as_bytes());
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "raft-kv: error: invalid argument: value is {} bytes; the limit is {limit}\n",
            limit + 1
        )
    );
    let huge = dir.path().join("huge.txt");
    std::fs::write(&huge, big_value(5 * limit, 4)).unwrap();
    let out = cluster.cli(&["set", "too-big", "--value-file", huge.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "raft-kv: error: invalid argument: value is {} bytes; the limit is {limit}\n",
            5 * limit
        )
    );
    let out = cluster.cli(&["set", "too-big", "--value-file", "/nonexistent/value"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "raft-kv: error: cannot read /nonexistent/value: No such file or directory (os error 2)\n"
    );
    let not_utf8 = dir.path().join("latin1.txt");
    std::fs::write(&not_utf8, b"caf\xe9").unwrap();
    let out = cluster.cli(&["set", "too-big", "--value-file", not_utf8.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        format!(
            "raft-kv: error: the value in {} is not UTF-8 (byte 3 is not)\n",
            not_utf8.display()
        )
    );
    assert_eq!(cluster.cli(&["get", "too-big"]).status.code(), Some(1));
}

#[test]
fn bad_subcommands_and_flags_get_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().unwrap();
    let ports = free_ports(2);
    let semicolons = format!("1=127.0.0.1:{};2=127.0.0.1:{}", ports[0], ports[1]);
    let cases: [(&[&str], &str); 8] = [
        (&["bogus"], "unrecognized subcommand 'bogus'"),
        (
            &["get"],
            "the following required arguments were not provided: <KEY>",
        ),
        (
            &["get", "k", "--stal"],
            "unexpected argument '--stal' found (tip: a similar argument exists: '--stale')",
        ),
        (&["get", "k", "--timeout", "0"], "invalid value '0' for '--timeout <DURATION>'"),
        (
            &["set", "k", "v", "--value-file", "f"],
            "the argument '[VALUE]' cannot be used with '--value-file <FILE>'",
        ),
        (
            &["node", "--id", "x", "--peers", "1=127.0.0.1:1", "--data-dir", data_dir],
            "invalid value 'x' for '--id <N>'",
        ),
        (
            &["cluster", "--log-level", "loud"],
            "invalid value 'loud' for '--log-level <LEVEL>' [possible values: error, warn, info, debug, trace]",
        ),
        (
            &["node", "--id", "1", "--peers", &semicolons, "--data-dir", data_dir],
            "--peers entry 1 (",
        ),
    ];
    for (args, expected) in cases {
        let out = cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(stdout(&out), "", "{args:?}");
        let message = stderr(&out);
        assert!(
            message.starts_with(&format!("raft-kv: error: {expected}"))
                && message.lines().count() == 1,
            "{args:?}: {message:?}"
        );
    }
    let out = cli(&["get", "k", "--stal"]);
    assert!(stderr(&out).ends_with("; see 'raft-kv get --help'\n"));
    // bench and skeleton are binaries of their own that raft-kv runs; their
    // flags are refused in the same words, naming the command typed.
    for command in ["bench", "skeleton"] {
        let out = cli(&[command, "--bogus"]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        assert_eq!(
            stderr(&out),
            format!(
                "raft-kv: error: unexpected argument '--bogus' found; see 'raft-kv {command} --help'\n"
            )
        );
    }
    assert!(stderr(&cli(&[
        "node",
        "--id",
        "1",
        "--peers",
        &semicolons,
        "--data-dir",
        data_dir
    ]))
    .contains("separate members with commas"));
    assert!(
        !dir.path().join("data").exists(),
        "a refused node wrote its data dir"
    );

    // Help and the version still print in full, with exit 0; every
    // command's help ends with its exit codes.
    for args in [
        &["--help"][..],
        &["get", "--help"],
        &["help", "set"],
        &["help", "bench"],
        &["--version"],
    ] {
        let out = cli(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            !stdout(&out).is_empty() && stderr(&out).is_empty(),
            "{args:?}"
        );
    }
    for command in [
        "node", "cluster", "set", "get", "delete", "status", "certs", "bench", "skeleton",
    ] {
        let help = stdout(&cli(&[command, "--help"]));
        assert!(help.contains("\nExit codes"), "{command} --help:\n{help}");
    }
}

#[test]
fn a_follower_redirects_to_the_leader() {
    let mut cluster = Cluster::start(&[]);
    let rt = runtime();

    // Retried only in case leadership moves between the two calls.
    let follower = eventually("a follower to name the leader in leader-addr", || {
        let leader = cluster.wait_for_leader();
        let follower = cluster.follower_of(leader);
        let mut kv = connect(&rt, cluster.addr(follower));
        let refused = rt
            .block_on(kv.set(set_request("redirected", "no", 0, 0)))
            .expect_err("a follower must not accept a write");
        let named = refused
            .metadata()
            .get(LEADER_ADDR_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (refused.code() == Code::Unavailable && named.as_deref() == Some(cluster.addr(leader)))
            .then_some(follower)
    });

    // A linearizable read is the follower's to serve, once it has the
    // leader's read index (dissertation §6.4).
    let mut kv = connect(&rt, cluster.addr(follower));
    let read = rt
        .block_on(kv.get(GetRequest {
            key: "redirected".into(),
            consistency: Consistency::Linearizable as i32,
        }))
        .expect("a follower serves a linearizable read");
    assert!(!read.into_inner().found);
    assert_eq!(cluster.client().get("redirected", false).unwrap(), None);

    // The CLI told only of the follower still reaches the leader.
    let only_follower = cluster.addr(follower);
    let flags = ["--cluster", only_follower, "--timeout", "30s"];
    let out = cli(&[&["set", "redirected", "yes"][..], &flags].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = cli(&[&["get", "redirected"][..], &flags].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "yes\n");
}

#[test]
fn clients_get_a_port_of_their_own_and_are_redirected_to_the_leaders() {
    let mut cluster = Cluster::prepare(&[]);
    let client_ports = free_ports(3);
    let client_addr = |id: u64| format!("127.0.0.1:{}", client_ports[id as usize - 1]);
    for id in cluster.ids() {
        cluster.spawn_with(id, &["--listen-clients".into(), client_addr(id)]);
    }
    let rt = runtime();
    let clients: Vec<String> = cluster.ids().map(client_addr).collect();
    let mut client = Client::new(&clients).unwrap().with_timeout(PATIENCE);
    client.set("k", "v").unwrap();

    // Each port serves its own service only.
    let on_peer_port = rt
        .block_on(connect(&rt, cluster.addr(1)).get(GetRequest {
            key: "k".into(),
            consistency: Consistency::Stale as i32,
        }))
        .unwrap_err();
    assert_eq!(on_peer_port.code(), Code::Unimplemented);
    let channel = rt
        .block_on(
            Channel::from_shared(format!("http://{}", client_addr(1)))
                .unwrap()
                .connect(),
        )
        .unwrap();
    let mut peer = raft_kv::proto::peer::raft_client::RaftClient::new(channel);
    let no_messages = tonic::codegen::tokio_stream::iter(Vec::new());
    let on_client_port = rt.block_on(peer.send(no_messages)).unwrap_err();
    assert_eq!(on_client_port.code(), Code::Unimplemented);

    // A follower names the leader's client port, which it learnt from the
    // leader's own stream.
    eventually("a follower to name the leader's client address", || {
        let statuses = Client::new(&clients).unwrap().status_all();
        let leader = statuses
            .iter()
            .filter_map(|(_, answer)| answer.as_ref().ok())
            .find(|status| status.role == "leader")?
            .id;
        let follower = cluster.follower_of(leader);
        let mut kv = connect(&rt, &client_addr(follower));
        let refused = rt
            .block_on(kv.set(set_request("redirected", "no", 0, 0)))
            .expect_err("a follower must not accept a write");
        let named = refused
            .metadata()
            .get(LEADER_ADDR_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (named == Some(client_addr(leader))).then_some(())
    });
}

/// A request whose key and value are bytes, to send a key that is not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawSetRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[test]
fn invalid_input_is_rejected_and_changes_nothing() {
    let mut cluster = Cluster::start(&[]);
    let mut client = cluster.client();
    client.set("before", "1").unwrap();
    let leader = cluster.wait_for_leader();
    let before = cluster.status(leader).unwrap();

    let rt = runtime();
    let mut kv = connect(&rt, cluster.addr(leader));
    let long_key = "k".repeat(4 * 1024 + 1);
    let big_value = "v".repeat(1024 * 1024 + 1);
    let rejected = [
        rt.block_on(kv.set(set_request("", "v", 0, 0))).map(drop),
        rt.block_on(kv.set(set_request(&long_key, "v", 0, 0)))
            .map(drop),
        rt.block_on(kv.set(set_request("big", &big_value, 0, 0)))
            .map(drop),
        rt.block_on(kv.delete(DeleteRequest {
            key: String::new(),
            client_id: 0,
            sequence: 0,
        }))
        .map(drop),
        rt.block_on(kv.get(GetRequest {
            key: long_key.clone(),
            consistency: Consistency::Stale as i32,
        }))
        .map(drop),
        rt.block_on(kv.get(GetRequest {
            key: "before".into(),
            consistency: 7,
        }))
        .map(drop),
    ];
    for (i, answer) in rejected.into_iter().enumerate() {
        let status = answer.expect_err("invalid input accepted");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "request {i}: {status:?}"
        );
    }

    let not_utf8 = rt.block_on(async {
        let channel = Channel::from_shared(format!("http://{}", cluster.addr(leader)))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let request = RawSetRequest {
            key: vec![0xff, 0xfe],
            value: b"v".to_vec(),
        };
        grpc.unary(
            tonic::Request::new(request),
            tonic::codegen::http::uri::PathAndQuery::from_static("/raftkv.KeyValue/Set"),
            tonic_prost::ProstCodec::<RawSetRequest, SetResponse>::default(),
        )
        .await
    });
    assert_eq!(not_utf8.unwrap_err().code(), Code::InvalidArgument);

    // The client reports the same refusal as a final error.
    match client.set("", "v") {
        Err(error @ Error::InvalidArgument(_)) => {
            assert_eq!(error.to_string().lines().count(), 1)
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }

    // Nothing reached the log (unless a new term added its no-op, §8).
    let after = cluster.status(leader).unwrap();
    if after.term == before.term {
        assert_eq!(after.last_log_index, before.last_log_index);
    }
    assert_eq!(client.get("big", false).unwrap(), None);

    // The limits are inclusive.
    let longest_key = "k".repeat(4 * 1024);
    let biggest_value = "v".repeat(1024 * 1024);
    client.set(&longest_key, "v").unwrap();
    client.set("big", &biggest_value).unwrap();
    assert_eq!(
        client.get("big", false).unwrap().map(|v| v.len()),
        Some(1024 * 1024)
    );
}

#[test]
fn retried_writes_apply_exactly_once() {
    let mut cluster = Cluster::start(&[]);
    let leader = cluster.wait_for_leader();
    let rt = runtime();
    let mut kv = connect(&rt, cluster.addr(leader));
    let client_id = 77;
    let delete = DeleteRequest {
        key: "once".into(),
        client_id,
        sequence: 2,
    };

    // Leadership could move between calls; an UNAVAILABLE answer would make
    // this test fail rather than pass, so plain unwraps are right here.
    rt.block_on(kv.set(set_request("once", "1", client_id, 1)))
        .unwrap();
    let first = rt.block_on(kv.delete(delete.clone())).unwrap().into_inner();
    assert!(first.existed);
    // The retry (same client_id and sequence) is answered from the session
    // table (dissertation §6.3): it reports the first answer, and does not
    // delete again.
    let retry = rt.block_on(kv.delete(delete)).unwrap().into_inner();
    assert!(retry.existed);

    // An older sequence arriving late is refused and not applied.
    let late = rt
        .block_on(kv.set(set_request("once", "late", client_id, 1)))
        .expect_err("an older sequence must not apply");
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(cluster.client().get("once", false).unwrap(), None);
}

/// Dissertation §6.3 over the gRPC API (issue 15): the same
/// (client_id, sequence) for another command is refused with
/// FAILED_PRECONDITION and `session-error: sequence-reused`, and not
/// applied; a later sequence from a client without a session is told
/// `session-expired`; sequences out of range are INVALID_ARGUMENT.
#[test]
fn sessions_refuse_reused_and_out_of_range_sequences() {
    let mut cluster = Cluster::start(&[]);
    let leader = cluster.wait_for_leader();
    let rt = runtime();
    let mut kv = connect(&rt, cluster.addr(leader));
    let session_error = |status: &tonic::Status| {
        let kind = status.metadata().get(SESSION_ERROR_METADATA);
        kind.and_then(|kind| kind.to_str().ok()).map(str::to_owned)
    };

    rt.block_on(kv.set(set_request("k", "A", 7, 3)))
        .expect_err("no session");
    rt.block_on(kv.set(set_request("k", "A", 7, 1))).unwrap();
    let reused = rt
        .block_on(kv.set(set_request("other", "E", 7, 1)))
        .expect_err("another command with a used sequence must not apply");
    assert_eq!(reused.code(), Code::FailedPrecondition);
    assert_eq!(session_error(&reused).as_deref(), Some(SEQUENCE_REUSED));
    assert!(
        reused
            .message()
            .contains("client 7 already used sequence 1 for another command"),
        "{}",
        reused.message()
    );
    assert_eq!(cluster.client().get("other", false).unwrap(), None);
    // The same command again is a retry: answered OK, applied once.
    rt.block_on(kv.set(set_request("k", "A", 7, 1))).unwrap();

    let expired = rt
        .block_on(kv.set(set_request("k", "B", 8, 2)))
        .expect_err("a later sequence without a session");
    assert_eq!(expired.code(), Code::FailedPrecondition);
    assert_eq!(session_error(&expired).as_deref(), Some(SESSION_EXPIRED));
    assert!(
        expired.message().contains("new client_id"),
        "{}",
        expired.message()
    );

    for (client_id, sequence) in [(7, 0), (7, u64::MAX), (7, 1 << 63), (0, 5)] {
        let refused = rt
            .block_on(kv.set(set_request("k", "C", client_id, sequence)))
            .expect_err("out of range");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(&sequence.to_string()));
    }
    rt.block_on(kv.set(set_request("k", "D", 7, (1 << 63) - 1)))
        .unwrap();
    assert_eq!(
        cluster.client().get("k", false).unwrap().as_deref(),
        Some("D")
    );
}

#[test]
fn killing_the_leader_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(&[]);
    let leader = cluster.wait_for_leader();

    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let acknowledged = Arc::clone(&acknowledged);
        let stop = Arc::clone(&stop);
        let mut client = Client::new(&cluster.addrs).unwrap().with_timeout(PATIENCE);
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (key, value) = (format!("key-{i}"), format!("value-{i}"));
                match client.set(&key, &value) {
                    Ok(()) => acknowledged.lock().unwrap().push((key, value)),
                    Err(error) => failures.push(error),
                }
            }
            failures
        })
    };
    let count = || acknowledged.lock().unwrap().len();

    eventually("writes before the crash", || (count() >= 20).then_some(()));
    cluster.kill(leader);
    let at_crash = count();
    eventually("writes acknowledged by a new leader", || {
        (count() >= at_crash + 20).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let failures = writer.join().unwrap();
    // Errors are allowed (an answer can be lost in the crash); they are
    // reported for diagnosis only. Acknowledged writes are what must hold.
    eprintln!("writes that failed: {failures:?}");

    let new_leader = cluster.wait_for_leader();
    assert_ne!(new_leader, leader);
    let mut client = cluster.client();
    for (key, value) in acknowledged.lock().unwrap().iter() {
        assert_eq!(
            client.get(key, false).unwrap().as_deref(),
            Some(value.as_str()),
            "acknowledged write {key} lost"
        );
    }
}
