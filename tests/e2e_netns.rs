//! A cluster on a network of its own: three nodes in three network
//! namespaces, a client in a fourth and an outsider in a fifth, joined by a
//! Linux bridge in a hub namespace of their own (the host's network is not
//! touched), with addresses in 10.213.0.0/24 and, where the kernel has
//! netem, 5 ms of delay each way on every link. The nodes run as in
//! docs/deploy.md: `--listen-peers 0.0.0.0:7001`, `--listen-clients
//! 0.0.0.0:7002`, mutual TLS with certificates from `raft-kv certs --nodes
//! 1=10.213.0.1:7001,…`, a `--cluster-token`, and timings for the round trip.
//!
//! It checks that the cluster elects a leader, replicates (the CLI runs in
//! the client's namespace), survives the loss of its leader, and refuses the
//! outsider: the CLI with another CA's certificates, a node of another
//! cluster whose member list names a real node, and a peer stream with a
//! (stolen) client certificate claiming to be node 1.
//!
//! It needs root (network namespaces); without, or when `ip netns add`
//! fails, it prints why and passes. Every namespace and process it made is
//! removed when it ends, also on a panic; namespaces an earlier run left
//! behind (named `rkv-e2e-PID-…`, PID no longer running) are removed first.

mod common;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{eventually, stderr, stdout, BIN};
use raft_kv::cli::Client;
use raft_kv::proto::kv::key_value_client::KeyValueClient;
use raft_kv::proto::kv::{StatusRequest, StatusResponse};
use raft_kv::proto::peer::envelope::Message as PeerMessage;
use raft_kv::proto::peer::raft_client::RaftClient;
use raft_kv::proto::peer::{AppendEntriesRequest, Envelope};
use raft_kv::proto::{CLUSTER_ID_METADATA, FROM_METADATA};
use raft_kv::tls::{Holder, Tls, TlsArgs};
use tonic::codegen::tokio_stream;
use tonic::transport::Endpoint;
use tonic::Code;

/// Namespaces of this test are named `PREFIX-PID-ROLE`.
const PREFIX: &str = "rkv-e2e";
const SUBNET: &str = "10.213.0";
const PEER_PORT: u16 = 7001;
const CLIENT_PORT: u16 = 7002;
/// Added to every packet leaving a namespace, when netem is there: 5 ms each
/// way on each veth, so a round trip between two nodes takes 20 ms.
const DELAY: &str = "5ms";
/// docs/deploy.md: an election timeout of at least ten round trips plus an
/// fsync, a heartbeat of a third to a fifth of its minimum.
const ELECTION_TIMEOUT_MS: &str = "400-800";
const HEARTBEAT_MS: &str = "100";
const TOKEN: &str = "e2e-netns-4b2f";

/// The address of host `n` (nodes 1-3; the client 10, the outsider 9).
fn ip(n: u8) -> String {
    format!("{SUBNET}.{n}")
}

fn peers() -> String {
    (1..=3)
        .map(|id| format!("{id}={}:{PEER_PORT}", ip(id)))
        .collect::<Vec<_>>()
        .join(",")
}

fn client_addrs() -> String {
    (1..=3)
        .map(|id| format!("{}:{CLIENT_PORT}", ip(id)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Run `ip ARGS`; Err(stderr) if it fails.
fn ip_cmd(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), stderr(&output).trim()))
    }
}

/// SIGKILL one process by id.
fn kill_pid(pid: i32) {
    // SAFETY: kill(2) has no memory effects.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// The processes inside namespace `ns` (all started by this test or an
/// earlier run of it).
fn pids_in(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            stdout(&o)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kill what is left in namespace `ns` and remove it.
fn remove_namespace(ns: &str) {
    for pid in pids_in(ns) {
        kill_pid(pid);
    }
    if let Err(e) = ip_cmd(&["netns", "del", ns]) {
        eprintln!("cleanup: {e}");
    }
}

/// Remove namespaces earlier runs of this test left behind: named
/// `PREFIX-PID-…` with PID no longer running.
fn remove_stale_namespaces() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in stdout(&output).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing {name}, left behind by an earlier run (pid {pid})");
            remove_namespace(name);
        }
    }
}

/// The namespaces and links of one run; removed on drop.
struct Net {
    /// every namespace made so far, the hub first
    namespaces: Vec<String>,
    hub: String,
    netem: bool,
}

impl Net {
    fn name(role: &str) -> String {
        format!("{PREFIX}-{}-{role}", std::process::id())
    }

    /// The hub namespace with its bridge. Err when namespaces or bridges
    /// cannot be made here (the test is then skipped).
    fn new() -> Result<Net, String> {
        remove_stale_namespaces();
        let hub = Net::name("hub");
        ip_cmd(&["netns", "add", &hub])?;
        let mut net = Net {
            namespaces: vec![hub.clone()],
            hub,
            netem: false,
        };
        ip_cmd(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"])?;
        ip_cmd(&["-n", &net.hub, "link", "set", "br0", "up"])?;
        // netem, if the kernel has it: try it on the bridge first.
        net.netem = Command::new("ip")
            .args([
                "netns", "exec", &net.hub, "tc", "qdisc", "add", "dev", "br0",
            ])
            .args(["root", "netem", "delay", DELAY])
            .output()
            .is_ok_and(|o| o.status.success());
        if net.netem {
            ip_cmd(&[
                "netns", "exec", &net.hub, "tc", "qdisc", "del", "dev", "br0", "root",
            ])
            .map_err(|e| format!("tc: {e}"))?;
        }
        Ok(net)
    }

    /// A namespace for `role` with address `SUBNET.n`, linked to the bridge
    /// by a veth pair (eth0 inside, `role` on the hub), `DELAY` each way
    /// when netem is there.
    fn add_host(&mut self, role: &str, n: u8) -> Result<String, String> {
        let ns = Net::name(role);
        ip_cmd(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        let hub_side = format!("v{n}");
        ip_cmd(&[
            "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &hub_side,
            "netns", &self.hub,
        ])?;
        ip_cmd(&["-n", &self.hub, "link", "set", &hub_side, "master", "br0"])?;
        ip_cmd(&["-n", &self.hub, "link", "set", &hub_side, "up"])?;
        ip_cmd(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", ip(n)),
            "dev",
            "eth0",
        ])?;
        ip_cmd(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip_cmd(&["-n", &ns, "link", "set", "lo", "up"])?;
        if self.netem {
            for (namespace, dev) in [(&ns, "eth0"), (&self.hub, hub_side.as_str())] {
                ip_cmd(&[
                    "netns", "exec", namespace, "tc", "qdisc", "add", "dev", dev, "root", "netem",
                    "delay", DELAY,
                ])?;
            }
        }
        Ok(ns)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // The hosts first: their veths go with them; then the hub.
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
    }
}

/// A command run inside namespace `ns`, killed if this process dies.
fn in_namespace(ns: &str, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns, program]);
    // SAFETY: prctl(2) is async-signal-safe. `ip netns exec` execs the
    // program in the same process, which keeps the parent-death signal.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    command
}

/// Run `f` on a thread inside namespace `ns` (setns(2) moves one thread
/// only): its sockets are that namespace's.
fn on_thread_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    let thread = std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns(2) on a namespace file we hold open.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    });
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Everything one run made: the network, the nodes, their files.
struct Lab {
    /// held for its drop, which removes the namespaces after the processes
    _net: Net,
    /// node `id`'s namespace is `node_ns[id - 1]`
    node_ns: Vec<String>,
    client_ns: String,
    outsider_ns: String,
    dir: tempfile::TempDir,
    tls_dir: PathBuf,
    /// another CA's certificates, for the outsider
    other_tls_dir: PathBuf,
    nodes: Vec<Option<Child>>,
    /// what else this test started (the foreign node)
    others: Vec<Child>,
}

impl Lab {
    /// The network and the certificates; no node started. None (with the
    /// reason printed) when this machine cannot make namespaces.
    fn new() -> Option<Lab> {
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: network namespaces need root");
            return None;
        }
        let mut net = match Net::new() {
            Ok(net) => net,
            Err(e) => {
                eprintln!("skipping: cannot make a network namespace with a bridge: {e}");
                return None;
            }
        };
        let mut hosts = || -> Result<_, String> {
            let nodes = (1..=3)
                .map(|id| net.add_host(&format!("n{id}"), id))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((nodes, net.add_host("client", 10)?, net.add_host("out", 9)?))
        };
        let (node_ns, client_ns, outsider_ns) = match hosts() {
            Ok(hosts) => hosts,
            Err(e) => {
                eprintln!("skipping: cannot link namespaces through a bridge: {e}");
                return None;
            }
        };
        if net.netem {
            eprintln!("netem: {DELAY} each way on every veth");
        } else {
            eprintln!("netem is not available in this kernel: running without added delay");
        }
        let dir = tempfile::tempdir().unwrap();
        let tls_dir = dir.path().join("tls");
        common::write_certs(&tls_dir, &peers());
        // Another CA, for a cluster of the outsider's own: its node 2 is
        // the outsider, its node 1 names a real node's address.
        let other_tls_dir = dir.path().join("other-tls");
        let foreign = format!("1={}:{PEER_PORT},2={}:{PEER_PORT}", ip(1), ip(9));
        common::write_certs(&other_tls_dir, &foreign);
        Some(Lab {
            _net: net,
            node_ns,
            client_ns,
            outsider_ns,
            tls_dir,
            other_tls_dir,
            dir,
            nodes: vec![None, None, None],
            others: Vec::new(),
        })
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(&format!("node{id}"))).unwrap_or_default()
    }

    fn log_file(&self, name: &str) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .unwrap()
    }

    /// Start (or restart) node `id` in its namespace, as docs/deploy.md says.
    fn start(&mut self, id: u64) {
        let log = self.log_file(&format!("node{id}"));
        let child = in_namespace(&self.node_ns[id as usize - 1], BIN)
            .args(["node", "--id", &id.to_string(), "--peers", &peers()])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node{id}")))
            .args(["--listen-peers", &format!("0.0.0.0:{PEER_PORT}")])
            .args(["--listen-clients", &format!("0.0.0.0:{CLIENT_PORT}")])
            .arg("--tls-dir")
            .arg(&self.tls_dir)
            .args(["--cluster-token", TOKEN])
            .args(["--election-timeout-ms", ELECTION_TIMEOUT_MS])
            .args(["--heartbeat-ms", HEARTBEAT_MS])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start raft-kv node in its namespace");
        self.nodes[id as usize - 1] = Some(child);
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn running(&self) -> Vec<u64> {
        (1..=3)
            .filter(|&id| self.nodes[id as usize - 1].is_some())
            .collect()
    }

    fn check_running(&mut self) {
        for id in 1..=3 {
            if let Some(child) = &mut self.nodes[id as usize - 1] {
                if let Some(exit) = child.try_wait().unwrap() {
                    panic!("node {id} exited ({exit}):\n{}", self.log(id));
                }
            }
        }
    }

    fn client_tls(&self) -> Tls {
        TlsArgs {
            tls_dir: Some(self.tls_dir.clone()),
            ..TlsArgs::default()
        }
        .load(Holder::Client)
        .unwrap()
        .unwrap()
    }

    /// Node `id`'s status, asked from the client's namespace over TLS.
    fn status(&self, id: u64) -> Option<StatusResponse> {
        let tls = self.client_tls();
        let addr = format!("{}:{CLIENT_PORT}", ip(id as u8));
        on_thread_in(&self.client_ns, move || {
            let mut client = Client::new(&[addr]).ok()?.with_tls(Some(&tls)).ok()?;
            client.status_all().pop()?.1.ok()
        })
    }

    /// Wait until one running node leads and every running node follows it
    /// in the same term; its status.
    fn wait_for_leader(&mut self) -> StatusResponse {
        eventually("a leader known to every running node", || {
            self.check_running();
            let statuses: Vec<StatusResponse> = self
                .running()
                .into_iter()
                .map(|id| self.status(id))
                .collect::<Option<_>>()?;
            let leader = statuses.iter().find(|s| s.role == "leader")?;
            statuses
                .iter()
                .all(|s| s.term == leader.term && s.leader_id == leader.id)
                .then(|| leader.clone())
        })
    }

    /// `raft-kv ARGS --cluster CLUSTER --tls-dir TLS_DIR` in namespace `ns`.
    fn cli_in(&self, ns: &str, tls_dir: &Path, cluster: &str, args: &[&str]) -> Output {
        in_namespace(ns, BIN)
            .args(args)
            .args(["--cluster", cluster])
            .arg("--tls-dir")
            .arg(tls_dir)
            .stdin(Stdio::null())
            .output()
            .expect("run the CLI in a namespace")
    }

    /// The CLI in the client's namespace, patiently.
    fn cli(&self, cluster: &str, args: &[&str]) -> Output {
        let mut args = args.to_vec();
        args.extend(["--timeout", "20s"]);
        self.cli_in(&self.client_ns, &self.tls_dir, cluster, &args)
    }

    fn set(&self, key: &str, value: &str) {
        let output = self.cli(&client_addrs(), &["set", key, value]);
        assert!(output.status.success(), "set {key}: {}", stderr(&output));
    }

    /// `get KEY` (with `--stale`, from the nodes at `cluster` only).
    fn get(&self, cluster: &str, key: &str, stale: bool) -> Option<String> {
        let mut args = vec!["get", key];
        if stale {
            args.push("--stale");
        }
        let output = self.cli(cluster, &args);
        match output.status.code() {
            Some(0) => Some(stdout(&output).trim_end_matches('\n').to_string()),
            Some(1) => None,
            _ => panic!("get {key} from {cluster}: {}", stderr(&output)),
        }
    }

    /// Wait for node `id` to log a line containing every one of `parts`
    /// after its log was `since` bytes long.
    fn wait_for_log(&self, id: u64, since: usize, parts: &[&str]) -> String {
        eventually(&format!("node {id} to log {parts:?}"), || {
            self.log(id)
                .get(since..)?
                .lines()
                .find(|line| parts.iter().all(|part| line.contains(part)))
                .map(str::to_string)
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for id in 1..=3 {
            self.kill(id);
        }
        for mut child in self.others.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for id in 1..=3 {
                eprintln!("--- node {id} log ---\n{}", self.log(id));
            }
        }
        // Then `net` drops: the namespaces go, with anything left in them.
    }
}

#[test]
fn a_cluster_on_its_own_network_elects_replicates_fails_over_and_refuses_an_outsider() {
    let Some(mut lab) = Lab::new() else {
        return;
    };
    for id in 1..=3 {
        lab.start(id);
    }
    let first = lab.wait_for_leader();
    eprintln!("node {} leads in term {}", first.id, first.term);

    // Replication: a write through the CLI, read back linearizably and from
    // every node's own state machine.
    let mut writes = vec![("k1".to_string(), "one".to_string())];
    lab.set("k1", "one");
    for id in 1..=3u8 {
        let at = format!("{}:{CLIENT_PORT}", ip(id));
        eventually(&format!("node {id} to apply k1"), || {
            (lab.get(&at, "k1", true).as_deref() == Some("one")).then_some(())
        });
    }

    // The leader dies: another takes over in a later term, the old write is
    // there, a new one goes through; the old leader comes back and catches up.
    lab.kill(first.id);
    let second = lab.wait_for_leader();
    assert_ne!(second.id, first.id);
    assert!(second.term > first.term, "{second:?} after {first:?}");
    eprintln!("node {} leads in term {}", second.id, second.term);
    assert_eq!(
        lab.get(&client_addrs(), "k1", false).as_deref(),
        Some("one")
    );
    lab.set("k2", "two");
    writes.push(("k2".into(), "two".into()));
    lab.start(first.id);
    let at = format!("{}:{CLIENT_PORT}", ip(first.id as u8));
    eventually(&format!("node {} to catch up", first.id), || {
        (lab.get(&at, "k2", true).as_deref() == Some("two")).then_some(())
    });
    let before = lab.wait_for_leader();
    let logs: Vec<usize> = (1..=3).map(|id| lab.log(id).len()).collect();

    // The outsider's CLI, with another CA's certificates: the handshake
    // fails; node 2 logs where it came from.
    let other = lab.other_tls_dir.clone();
    let node2 = format!("{}:{CLIENT_PORT}", ip(2));
    let output = lab.cli_in(
        &lab.outsider_ns,
        &other,
        &node2,
        &["get", "k1", "--timeout", "2s"],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert_eq!(stdout(&output), "");
    eprintln!("the outsider's CLI: {}", stderr(&output).trim());
    let outsider = format!("refused a connection from {}:", ip(9));
    let line = lab.wait_for_log(2, logs[1], &[&outsider, "the TLS handshake failed"]);
    eprintln!("node 2: {line}");

    // A node of another cluster (another CA, another token) whose member
    // list names node 1: node 1 refuses its connections.
    let log = lab.log_file("foreign");
    let foreign = in_namespace(&lab.outsider_ns, BIN)
        .args(["node", "--id", "2"])
        .args([
            "--peers",
            &format!("1={}:{PEER_PORT},2={}:{PEER_PORT}", ip(1), ip(9)),
        ])
        .arg("--data-dir")
        .arg(lab.dir.path().join("foreign"))
        .arg("--tls-dir")
        .arg(&other)
        .args(["--cluster-token", "another"])
        .args(["--election-timeout-ms", "150-300", "--heartbeat-ms", "50"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the foreign node");
    lab.others.push(foreign);
    let line = lab.wait_for_log(1, logs[0], &[&outsider, "the TLS handshake failed"]);
    eprintln!("node 1: {line}");
    for mut child in lab.others.drain(..) {
        let _ = child.kill();
        let _ = child.wait();
    }

    // A peer stream from the outsider's namespace with a stolen client
    // certificate, claiming to be node 1 and carrying a heartbeat of a later
    // term: PERMISSION_DENIED, and node 3 logs it.
    let tls = lab.client_tls();
    let node3 = format!("https://{}:{PEER_PORT}", ip(3));
    let cluster_id = std::fs::read_to_string(lab.dir.path().join("node3/cluster"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("cluster-id ").map(str::to_string))
        .unwrap();
    let term = before.term;
    let refusal = on_thread_in(&lab.outsider_ns, move || {
        common::runtime().block_on(async move {
            let channel = Endpoint::from_shared(node3)
                .unwrap()
                .tls_config(tls.client_config())
                .unwrap()
                .connect()
                .await
                .expect("the client certificate is good for a TLS connection");
            let heartbeat = AppendEntriesRequest {
                term: term + 1,
                leader_id: 1,
                ..AppendEntriesRequest::default()
            };
            let envelope = Envelope {
                from: 1,
                message: Some(PeerMessage::AppendEntries(heartbeat)),
            };
            let mut request = tonic::Request::new(tokio_stream::iter(vec![envelope]));
            request
                .metadata_mut()
                .insert(CLUSTER_ID_METADATA, cluster_id.parse().unwrap());
            request
                .metadata_mut()
                .insert(FROM_METADATA, "1".parse().unwrap());
            RaftClient::new(channel).send(request).await
        })
    })
    .expect_err("a client certificate speaking for node 1");
    assert_eq!(refusal.code(), Code::PermissionDenied, "{refusal:?}");
    assert_eq!(
        refusal.message(),
        "node 3 refuses this stream: it claims to be node 1, but its TLS certificate does not \
         name node-1.raft-kv"
    );
    let stream_refused = format!("node 3: refused a peer stream from {}:", ip(9));
    let line = lab.wait_for_log(
        3,
        logs[2],
        &[&stream_refused, "does not name node-1.raft-kv"],
    );
    eprintln!("node 3: {line}");

    // With --listen-clients, each port serves its own service only: the
    // client port has no peer service, the peer port no client service (so
    // a firewall that keeps the peer port to the members keeps everyone
    // else to the client API).
    let tls = lab.client_tls();
    let node1 = ip(1);
    let (peer_on_client_port, client_on_peer_port) = on_thread_in(&lab.outsider_ns, move || {
        common::runtime().block_on(async move {
            let endpoint = |port: u16| {
                Endpoint::from_shared(format!("https://{node1}:{port}"))
                    .unwrap()
                    .tls_config(tls.client_config())
                    .unwrap()
            };
            let mut peer = RaftClient::new(endpoint(CLIENT_PORT).connect().await.unwrap());
            let empty = tonic::Request::new(tokio_stream::iter(Vec::<Envelope>::new()));
            let peer_on_client_port = peer.send(empty).await;
            let mut kv = KeyValueClient::new(endpoint(PEER_PORT).connect().await.unwrap());
            let client_on_peer_port = kv.status(StatusRequest {}).await;
            (peer_on_client_port, client_on_peer_port)
        })
    });
    assert_eq!(
        peer_on_client_port.unwrap_err().code(),
        Code::Unimplemented,
        "the peer service on the client port"
    );
    assert_eq!(
        client_on_peer_port.unwrap_err().code(),
        Code::Unimplemented,
        "the client service on the peer port"
    );

    // Nothing came of it: the same leader in the same term, every write
    // readable, a new one goes through, no node exited.
    std::thread::sleep(Duration::from_millis(300));
    lab.check_running();
    let after = lab.wait_for_leader();
    assert_eq!((after.id, after.term), (before.id, before.term));
    lab.set("k3", "three");
    writes.push(("k3".into(), "three".into()));
    for (key, value) in &writes {
        assert_eq!(
            lab.get(&client_addrs(), key, false).as_deref(),
            Some(value.as_str())
        );
    }
}
