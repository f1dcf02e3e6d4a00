//! End to end: real `raft-kv` processes on free loopback ports.
//!
//! - Three `raft-kv node` processes elect one leader; killing it (SIGKILL)
//!   leads to a new one within a few seconds (§5.2).
//! - A stopped follower (SIGSTOP) does not slow the leader's writes, and
//!   catches up once resumed.
//! - Bad flags stop a node at once with exit code 2 and a one-line message.
//! - `raft-kv cluster` prefixes its nodes' lines, survives the death of one
//!   and, on SIGINT, stops its nodes and exits 0; killed outright, it takes
//!   its nodes with it (Linux). Commands typed on its stdin kill, restart,
//!   pause and resume its nodes; with stdin closed it runs on.
//!
//! Every process started here is killed by a Drop guard, even when a test
//! fails (`common::Cluster` for nodes, `Processes` for a cluster).
#![cfg(unix)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{eventually, free_ports, Cluster, BIN, PATIENCE};
use raft_kv::cli::Client;
use raft_kv::proto::kv::StatusResponse;

fn peers_flag(ports: &[u16]) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("{}=127.0.0.1:{port}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// The pid node `id` logged when it started (`node 2: pid 1234, serving …`).
fn logged_pid(cluster: &Cluster, id: u64) -> u32 {
    let log = cluster.log(id);
    log.lines()
        .find_map(node_pid)
        .map(|(_, pid)| pid)
        .unwrap_or_else(|| panic!("node {id} logged no pid:\n{log}"))
}

#[test]
fn a_new_leader_is_elected_after_the_leader_is_killed() {
    let mut cluster = Cluster::start(&[]);
    let first = cluster.wait_for_leader();
    let first_term = cluster.status(first).unwrap().term;

    cluster.kill(first);
    let killed_at = Instant::now();
    let second = cluster.wait_for_leader();
    let took = killed_at.elapsed();
    assert_ne!(second, first);
    assert!(cluster.status(second).unwrap().term > first_term);
    // An election timeout is at most 300 ms and the vote takes a round trip;
    // the bound leaves room for a loaded machine.
    assert!(
        took < Duration::from_secs(5),
        "the new leader took {took:?}"
    );
}

#[test]
fn a_stopped_follower_does_not_stall_the_leader() {
    let mut cluster = Cluster::start(&[]);
    let leader = cluster.wait_for_leader();
    let follower = cluster.follower_of(leader);
    let follower_pid = logged_pid(&cluster, follower);
    // SIGSTOP: its connections stay open but nothing answers, the hardest
    // kind of peer for a sender that waits.
    assert!(signal("-STOP", follower_pid));

    let mut client = cluster.client_of(leader);
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let start = Instant::now();
        client.set(&format!("key{i}"), "value").unwrap();
        slowest = slowest.max(start.elapsed());
    }
    // A set takes about a millisecond; waiting on the stopped follower would
    // take forever.
    assert!(
        slowest < Duration::from_secs(2),
        "slowest set took {slowest:?}"
    );

    assert!(signal("-CONT", follower_pid));
    let leader_commit = cluster.status(leader).unwrap().commit_index;
    eventually("the resumed follower to catch up", || {
        let status = cluster.status(follower)?;
        (status.commit_index >= leader_commit).then_some(())
    });
}

/// Run `raft-kv node` with `args` and return its exit status and stderr.
fn run_node(args: &[&str], data_dir: &std::path::Path) -> (std::process::ExitStatus, String) {
    let output = Command::new(BIN)
        .arg("node")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (output.status, String::from_utf8(output.stderr).unwrap())
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let ports = free_ports(3);
    let peers = peers_flag(&ports);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let peers_with_taken = format!("1=127.0.0.1:{taken_port},2=127.0.0.1:{}", ports[1]);

    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--id", "4", "--peers", &peers],
            "raft-kv: error: --id 4 is not in the member list (1, 2, 3)".to_string(),
        ),
        (
            vec!["--id", "1", "--peers", &peers, "--heartbeat-ms", "150"],
            "raft-kv: error: --heartbeat-ms 150 must be less than the minimum election timeout (150 ms)"
                .to_string(),
        ),
        (
            vec![
                "--id",
                "1",
                "--peers",
                &peers,
                "--election-timeout-ms",
                "300-150",
            ],
            "raft-kv: error: --election-timeout-ms 300-150: MIN must be less than MAX".to_string(),
        ),
        (
            vec!["--id", "1", "--peers", &peers_with_taken],
            format!("raft-kv: error: address 127.0.0.1:{taken_port} is already in use"),
        ),
    ];
    for (args, expected) in cases {
        let (status, stderr) = run_node(&args, &data_dir);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr, format!("{expected}\n"), "{args:?}");
    }
    // Nothing was started, so nothing was written.
    assert!(!data_dir.exists());
}

/// Lines `raft-kv cluster` prints, read on a thread of their own.
struct ClusterOutput {
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl ClusterOutput {
    /// Wait for a line for which `pick` gives an answer.
    fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let answer = pick(&line);
                    self.seen.push(line);
                    if let Some(answer) = answer {
                        return answer;
                    }
                }
                Err(_) => panic!(
                    "no {what} within {PATIENCE:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// `… node 2: pid 1234, serving …`, with or without the `[node2] ` prefix → (2, 1234)
fn node_pid(line: &str) -> Option<(u64, u32)> {
    let rest = &line[line.find("node ")?..];
    let (id, rest) = rest.strip_prefix("node ")?.split_once(": pid ")?;
    let pid = rest.split_once(',')?.0;
    Some((id.parse().ok()?, pid.parse().ok()?))
}

/// `[node2] … node 2 term 3: candidate -> leader` → (2, 3)
fn new_leader(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_suffix(": candidate -> leader")?;
    let rest = &rest[rest.rfind("node ")?..];
    let (id, term) = rest.strip_prefix("node ")?.split_once(" term ")?;
    Some((id.parse().ok()?, term.parse().ok()?))
}

fn signal(signal: &str, pid: u32) -> bool {
    Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Kills every process it holds when dropped.
struct Processes(Vec<Option<Child>>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.0.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running `raft-kv cluster` of three nodes, its output, and its nodes' pids.
struct RunningCluster {
    process: Processes,
    pid: u32,
    /// Where commands are typed, when started with `start_cluster_with_commands`.
    commands: Option<ChildStdin>,
    /// `addrs[id - 1]` is node `id`'s address.
    addrs: Vec<String>,
    output: ClusterOutput,
    node_pids: BTreeMap<u64, u32>,
    /// (id, term) of the latest leader announced
    leader: (u64, u64),
    _dir: tempfile::TempDir,
}

/// Start `raft-kv cluster` with stdin closed and wait until every node has
/// announced its pid and a leader is elected.
fn start_cluster() -> RunningCluster {
    start_cluster_with(Stdio::null(), &[])
}

/// The same, with a pipe to type commands into.
fn start_cluster_with_commands() -> RunningCluster {
    start_cluster_with(Stdio::piped(), &[])
}

fn start_cluster_with(stdin: Stdio, flags: &[&str]) -> RunningCluster {
    let ports = free_ports(3);
    let dir = tempfile::tempdir().unwrap();
    let mut process = Processes(vec![Some(
        Command::new(BIN)
            .arg("cluster")
            .args(["--peers", &peers_flag(&ports)])
            .arg("--data-dir")
            .arg(dir.path())
            // The page's default port is `make cluster`'s; e2e_watch and
            // ui test the page on free ports.
            .arg("--no-web")
            .args(flags)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )]);
    let child = process.0[0].as_mut().unwrap();
    let pid = child.id();
    let commands = child.stdin.take();
    let stdout = child.stdout.take().unwrap();
    let (line_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut output = ClusterOutput {
        lines,
        seen: Vec::new(),
    };

    let mut node_pids = BTreeMap::new();
    let mut latest_leader = None;
    output.wait_for("a leader and every node's pid", |line| {
        if let Some((id, pid)) = node_pid(line) {
            assert!(line.starts_with(&format!("[node{id}] ")), "{line}");
            node_pids.insert(id, pid);
        }
        if let Some(elected) = new_leader(line) {
            latest_leader = Some(elected);
        }
        (node_pids.len() == 3 && latest_leader.is_some()).then_some(())
    });
    RunningCluster {
        process,
        pid,
        commands,
        addrs: ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
        output,
        node_pids,
        leader: latest_leader.unwrap(),
        _dir: dir,
    }
}

#[test]
fn cluster_prefixes_lines_outlives_a_killed_leader_and_stops_on_sigint() {
    let RunningCluster {
        process: mut cluster,
        pid: cluster_pid,
        mut output,
        node_pids: pids,
        leader: (leader, term),
        _dir,
        ..
    } = start_cluster();

    assert!(signal("-KILL", pids[&leader]));
    output.wait_for("the killed leader's exit", |line| {
        (line == format!("[node{leader}] exited: signal 9")).then_some(())
    });
    let (second, second_term) = output.wait_for("a new leader", new_leader);
    assert_ne!(second, leader);
    assert!(second_term > term);

    assert!(signal("-INT", cluster_pid));
    let child = cluster.0[0].as_mut().unwrap();
    let status = eventually("exit of the cluster after SIGINT", || {
        child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0), "{}", output.seen.join("\n"));
    for (id, pid) in pids {
        assert!(
            !signal("-0", pid),
            "node {id} (pid {pid}) outlived the cluster"
        );
    }
}

/// Whether process `pid` has finished: gone, or a zombie nobody has reaped.
#[cfg(target_os = "linux")]
fn finished(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => status
            .lines()
            .any(|line| line.starts_with("State:") && line.contains("zombie")),
        Err(_) => true,
    }
}

#[cfg(target_os = "linux")]
#[test]
fn nodes_do_not_outlive_a_killed_cluster() {
    let mut cluster = start_cluster();
    // SIGKILL: the cluster gets no chance to stop its nodes; the kernel must.
    let mut process = cluster.process.0[0].take().unwrap();
    process.kill().unwrap();
    process.wait().unwrap();
    for (&id, &pid) in &cluster.node_pids {
        eventually(&format!("node {id} (pid {pid}) to stop"), || {
            finished(pid).then_some(())
        });
    }
}

impl RunningCluster {
    /// Type `command` and Enter in the cluster's terminal.
    fn type_command(&mut self, command: &str) {
        let stdin = self.commands.as_mut().expect("started with commands");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
    }

    /// Wait for the `[cluster] ` line that starts with `start`.
    fn wait_for_answer(&mut self, start: &str) -> String {
        let start = format!("[cluster] {start}");
        self.output.wait_for(&format!("'{start}'"), |line| {
            line.starts_with(&start).then(|| line.to_string())
        })
    }

    /// Node `id`'s own status, or None if it does not answer within a second.
    fn status(&self, id: u64) -> Option<StatusResponse> {
        Client::new(&[&self.addrs[id as usize - 1]])
            .unwrap()
            .with_rpc_timeout(Duration::from_secs(1))
            .status_all()
            .pop()
            .and_then(|(_, answer)| answer.ok())
    }

    /// Node `id`'s own copy of `key`, once it has one.
    fn stale_read(&self, id: u64, key: &str) -> Option<String> {
        let mut client = Client::new(&[&self.addrs[id as usize - 1]])
            .unwrap()
            .with_timeout(Duration::from_secs(1));
        client.get(key, true).ok().flatten()
    }
}

#[test]
fn cluster_tls_makes_certificates_once_and_serves_only_clients_that_have_them() {
    let mut cluster = start_cluster_with(Stdio::piped(), &["--tls"]);
    let tls_dir = cluster._dir.path().join("tls");
    let addrs = cluster.addrs.join(",");
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--cluster", &addrs, "--timeout", "10s"])
            .output()
            .unwrap()
    };
    let tls_flag = tls_dir.to_str().unwrap();
    let stored = cli(&["set", "k", "over TLS", "--tls-dir", tls_flag]);
    assert!(stored.status.success(), "{stored:?}");
    let read = cli(&["get", "k", "--tls-dir", tls_flag]);
    assert_eq!(String::from_utf8_lossy(&read.stdout), "over TLS\n");
    let plain = Command::new(BIN)
        .args(["get", "k", "--cluster", &addrs, "--timeout", "1s"])
        .output()
        .unwrap();
    assert_eq!(plain.status.code(), Some(2), "{plain:?}");

    // The cluster's own `status` asks its nodes over TLS too.
    let mut rows = Vec::new();
    cluster.type_command("status");
    cluster.output.wait_for("the status of every node", |line| {
        if line.starts_with("[cluster] node ") {
            rows.push(line.to_string());
        }
        (rows.len() == 3).then_some(())
    });
    let leaders = rows
        .iter()
        .filter(|r| r.contains(": leader, term "))
        .count();
    assert_eq!(leaders, 1, "{rows:?}");

    // A restart keeps the certificates it made.
    let ca = std::fs::read(tls_dir.join("ca.pem")).unwrap();
    cluster.type_command("restart 1");
    cluster.output.wait_for("node 1's new pid", |line| {
        node_pid(line).and_then(|(id, pid)| (id == 1).then_some(pid))
    });
    assert_eq!(std::fs::read(tls_dir.join("ca.pem")).unwrap(), ca);
}

#[test]
fn cluster_commands_kill_restart_pause_and_resume_its_own_nodes() {
    let mut cluster = start_cluster_with_commands();
    let mut client = Client::new(&cluster.addrs).unwrap().with_timeout(PATIENCE);
    client.set("before", "the crash").unwrap();

    // Mistakes change nothing and are answered in one line.
    cluster.type_command("frobnicate 2");
    cluster.wait_for_answer("unknown command 'frobnicate 2'; commands: kill N, restart N");
    cluster.type_command("kill 9");
    cluster.wait_for_answer("'9' is not a node of this cluster (1, 2, 3)");
    cluster.type_command("pause");
    cluster.wait_for_answer("'pause' takes one node id, like: pause 2");

    // kill: the leader crashes, the others elect a new one.
    let old_leader = eventually("a leader", || {
        cluster
            .addrs
            .iter()
            .enumerate()
            .map(|(i, _)| i as u64 + 1)
            .find(|&id| cluster.status(id).is_some_and(|s| s.role == "leader"))
    });
    cluster.type_command("kill leader");
    let answer = cluster.wait_for_answer("node ");
    let killed: u64 = answer["[cluster] node ".len()..]
        .split_once(' ')
        .and_then(|(id, _)| id.parse().ok())
        .unwrap_or_else(|| panic!("{answer}"));
    assert!(answer.ends_with("killed with SIGKILL"), "{answer}");
    assert_eq!(killed, old_leader, "{answer}");
    cluster.output.wait_for("the killed leader's exit", |line| {
        (line == format!("[node{killed}] exited: signal 9")).then_some(())
    });
    let (new_leader, _) = cluster.output.wait_for("a new leader", new_leader);
    assert_ne!(new_leader, killed);
    client.set("after", "the crash").unwrap();
    cluster.type_command(&format!("pause {killed}"));
    cluster.wait_for_answer(&format!(
        "node {killed} is not running (it exited: signal 9); 'restart {killed}' starts it"
    ));

    // restart: the same node, on its data dir, rejoins and catches up.
    cluster.type_command(&format!("restart {killed}"));
    let old_pid = cluster.node_pids[&killed];
    let new_pid = cluster.output.wait_for("the restarted node's pid", |line| {
        node_pid(line).and_then(|(id, pid)| (id == killed).then_some(pid))
    });
    assert_ne!(new_pid, old_pid);
    cluster.node_pids.insert(killed, new_pid);
    eventually(
        "the restarted node to apply the write made without it",
        || (cluster.stale_read(killed, "after").as_deref() == Some("the crash")).then_some(()),
    );
    assert_eq!(
        cluster.stale_read(killed, "before").as_deref(),
        Some("the crash")
    );

    // pause: a follower stops answering; the others carry on without it.
    let paused = eventually("a follower", || {
        (1..=3).find(|&id| cluster.status(id).is_some_and(|s| s.role == "follower"))
    });
    cluster.type_command(&format!("pause {paused}"));
    cluster.wait_for_answer(&format!("node {paused} (pid "));
    assert!(cluster.status(paused).is_none(), "a paused node answered");
    client.set("while", "paused").unwrap();
    cluster.type_command("status");
    cluster.wait_for_answer(&format!(
        "node {paused} at {}: paused, pid ",
        cluster.addrs[paused as usize - 1]
    ));
    cluster.type_command(&format!("resume {paused}"));
    cluster.wait_for_answer(&format!("node {paused} (pid "));
    eventually("the resumed node to catch up", || {
        (cluster.stale_read(paused, "while").as_deref() == Some("paused")).then_some(())
    });

    // With its stdin closed, the cluster runs on as before.
    drop(cluster.commands.take());
    client.set("stdin", "closed").unwrap();
    let process = cluster.process.0[0].as_mut().unwrap();
    assert!(process.try_wait().unwrap().is_none(), "the cluster exited");

    assert!(signal("-INT", cluster.pid));
    let status = eventually("exit of the cluster after SIGINT", || {
        process.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0), "{}", cluster.output.seen.join("\n"));
    for (id, pid) in &cluster.node_pids {
        assert!(
            !signal("-0", *pid),
            "node {id} (pid {pid}) outlived the cluster"
        );
    }
}
