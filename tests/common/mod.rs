//! Shared by the end-to-end tests: a cluster of real `raft-kv node`
//! processes on free loopback ports with temporary data directories. Every
//! process is killed when the `Cluster` is dropped, even when a test panics,
//! and a failing test prints the tail of each node's log.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use raft_kv::cli::Client;
use raft_kv::proto::kv::StatusResponse;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_raft-kv");

/// Long enough for an election on a loaded 2-core machine; tests only wait
/// this long when something is wrong.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Poll `check` until it returns `Some`, panicking with `what` after `PATIENCE`.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` distinct loopback ports that were free a moment ago. All are held at
/// once so the OS cannot hand out the same one twice.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    // The ports `make cluster` uses must stay free for people running it.
    assert!(ports.iter().all(|p| !(7001..=7003).contains(p)));
    ports
}

/// Three `raft-kv node` processes, ids 1..=3, and any added later
/// ([`Cluster::add_slot`], [`Cluster::spawn_joining`]).
pub struct Cluster {
    /// `addrs[id - 1]` is node `id`'s address.
    pub addrs: Vec<String>,
    /// the members the cluster was created with: ids 1..=initial
    initial: usize,
    extra_flags: Vec<String>,
    /// `--election-timeout-ms` and `--heartbeat-ms`
    timing: (String, String),
    /// the certificates the nodes and the CLI use, when they run with TLS
    tls_dir: Option<PathBuf>,
    dir: TempDir,
    nodes: Vec<Option<Child>>,
}

/// How `Cluster::start_with` starts its nodes.
pub struct Setup<'a> {
    pub extra_flags: &'a [&'a str],
    /// `--election-timeout-ms`
    pub election_timeout_ms: &'a str,
    /// `--heartbeat-ms`
    pub heartbeat_ms: &'a str,
    /// mutual TLS, with certificates `raft-kv certs` writes for this cluster
    pub tls: bool,
}

impl Default for Setup<'_> {
    /// Fast elections, no TLS.
    fn default() -> Self {
        Setup {
            extra_flags: &[],
            election_timeout_ms: "150-300",
            heartbeat_ms: "50",
            tls: false,
        }
    }
}

impl Cluster {
    /// Start three nodes with fast elections, plus `extra_flags` for each.
    pub fn start(extra_flags: &[&str]) -> Cluster {
        Cluster::start_with(Setup {
            extra_flags,
            ..Setup::default()
        })
    }

    /// The same, with no node started yet.
    pub fn prepare(extra_flags: &[&str]) -> Cluster {
        Cluster::prepare_with(Setup {
            extra_flags,
            ..Setup::default()
        })
    }

    /// Start three nodes as `setup` says.
    pub fn start_with(setup: Setup) -> Cluster {
        let mut cluster = Cluster::prepare_with(setup);
        for id in 1..=3 {
            cluster.spawn(id);
        }
        cluster
    }

    /// The same, with no node started yet (with TLS, the certificates are
    /// written).
    pub fn prepare_with(setup: Setup) -> Cluster {
        let addrs = free_ports(3)
            .into_iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let mut cluster = Cluster {
            addrs,
            initial: 3,
            extra_flags: setup.extra_flags.iter().map(|s| s.to_string()).collect(),
            timing: (
                setup.election_timeout_ms.to_string(),
                setup.heartbeat_ms.to_string(),
            ),
            tls_dir: None,
            dir: tempfile::tempdir().expect("temporary directory"),
            nodes: vec![None, None, None],
        };
        if setup.tls {
            let dir = cluster.dir.path().join("tls");
            write_certs(&dir, "1,2,3");
            cluster.tls_dir = Some(dir);
        }
        cluster
    }

    /// The certificates of a cluster started with TLS.
    pub fn tls_dir(&self) -> Option<&Path> {
        self.tls_dir.as_deref()
    }

    /// The cluster id node `id` recorded in its data dir at its first start
    /// (the `cluster-id` line of DATA_DIR/cluster).
    pub fn cluster_id(&self, id: u64) -> String {
        let path = self.data_dir(id).join("cluster");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        text.lines()
            .find_map(|line| line.strip_prefix("cluster-id "))
            .unwrap_or_else(|| panic!("no cluster-id line in {}:\n{text}", path.display()))
            .to_string()
    }

    pub fn ids(&self) -> std::ops::RangeInclusive<u64> {
        1..=self.addrs.len() as u64
    }

    pub fn addr(&self, id: u64) -> &str {
        &self.addrs[id as usize - 1]
    }

    /// The `--peers` value: `1=127.0.0.1:P1,2=…,3=…` (the members the
    /// cluster was created with).
    pub fn peers(&self) -> String {
        (1..=self.initial as u64)
            .map(|id| format!("{id}={}", self.addr(id)))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    /// The command that runs node `id` with `peers`; its output is appended
    /// to the node's log file.
    pub fn node_command(&self, id: u64, peers: &str) -> Command {
        self.node_command_with(id, &["--peers", peers])
    }

    /// The same, with `members` (`--peers LIST`, or `--join ID …`).
    pub fn node_command_with(&self, id: u64, members: &[&str]) -> Command {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("node log file");
        let mut command = Command::new(BIN);
        command
            .args(["node", "--id", &id.to_string()])
            .args(members)
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(["--election-timeout-ms", &self.timing.0])
            .args(["--heartbeat-ms", &self.timing.1])
            .args(&self.extra_flags);
        if let Some(dir) = &self.tls_dir {
            command.arg("--tls-dir").arg(dir);
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        command
    }

    /// Start node `id` (again) on its data directory.
    pub fn spawn(&mut self, id: u64) {
        self.spawn_with(id, &[]);
    }

    /// The same, with `flags` added for this node alone.
    pub fn spawn_with(&mut self, id: u64, flags: &[String]) {
        assert!(
            self.nodes[id as usize - 1].is_none(),
            "node {id} is running"
        );
        let child = self
            .node_command(id, &self.peers())
            .args(flags)
            .spawn()
            .expect("start raft-kv node");
        self.nodes[id as usize - 1] = Some(child);
    }

    /// A free port for a node the cluster was not created with; its id.
    pub fn add_slot(&mut self) -> u64 {
        let port = free_ports(1)[0];
        self.addrs.push(format!("127.0.0.1:{port}"));
        self.nodes.push(None);
        self.addrs.len() as u64
    }

    /// Start node `id` (again), empty at first, to join cluster
    /// `cluster_id` (`--join`), served at its slot's address.
    pub fn spawn_joining(&mut self, id: u64, cluster_id: &str) {
        assert!(
            self.nodes[id as usize - 1].is_none(),
            "node {id} is running"
        );
        let address = self.addr(id).to_string();
        let child = self
            .node_command_with(id, &["--join", cluster_id, "--listen-peers", &address])
            .spawn()
            .expect("start raft-kv node");
        self.nodes[id as usize - 1] = Some(child);
    }

    /// `kill -9` node `id`: no shutdown code runs, as in a crash.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -TERM` node `id` and wait for it to exit: a planned stop.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        let mut child = self.nodes[id as usize - 1].take().expect("node running");
        // SAFETY: a plain kill(2) of our own child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        child.wait().expect("wait for the node")
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes[id as usize - 1].is_some()
    }

    /// A client of every node, patient enough to outlast an election.
    pub fn client(&self) -> Client {
        Client::new(&self.addrs).unwrap().with_timeout(PATIENCE)
    }

    /// A client that talks to node `id` only.
    pub fn client_of(&self, id: u64) -> Client {
        Client::new(&[self.addr(id)])
            .unwrap()
            .with_timeout(PATIENCE)
    }

    /// Node `id`'s status, or None if it does not answer.
    pub fn status(&self, id: u64) -> Option<StatusResponse> {
        if let Some(dir) = &self.tls_dir {
            return tls_status(self.addr(id), dir);
        }
        let mut client = Client::new(&[self.addr(id)]).unwrap();
        client
            .status_all()
            .pop()
            .and_then(|(_, answer)| answer.ok())
    }

    /// Panic, with its log, if a node this test started has exited: waiting
    /// for it would only time out.
    pub fn check_running(&mut self) {
        for id in self.ids() {
            let Some(child) = &mut self.nodes[id as usize - 1] else {
                continue;
            };
            if let Some(exit) = child.try_wait().expect("poll a node process") {
                panic!("node {id} exited ({exit}):\n{}", self.log_tail(id));
            }
        }
    }

    /// Wait until one running node is leader and every running node knows it
    /// in the same term; returns its id.
    pub fn wait_for_leader(&mut self) -> u64 {
        eventually("a leader known to every running node", || {
            self.check_running();
            let statuses: Vec<StatusResponse> = self
                .ids()
                .filter(|&id| self.is_running(id))
                .map(|id| self.status(id))
                .collect::<Option<_>>()?;
            let leader = statuses.iter().find(|s| s.role == "leader")?;
            statuses
                .iter()
                .all(|s| s.term == leader.term && s.leader_id == leader.id)
                .then_some(leader.id)
        })
    }

    /// A running node other than `leader`.
    pub fn follower_of(&self, leader: u64) -> u64 {
        self.ids()
            .find(|&id| id != leader && self.is_running(id))
            .expect("a running follower")
    }

    /// Run the CLI against this cluster, patiently (with the client's
    /// certificate when the cluster runs with TLS).
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_to(&self.addrs.join(","), args)
    }

    /// Run the CLI against the nodes at `cluster` (`--cluster`), patiently.
    pub fn cli_to(&self, cluster: &str, args: &[&str]) -> Output {
        let tls_dir = self.tls_dir.as_ref().map(|d| d.display().to_string());
        let mut args = args.to_vec();
        args.extend(["--cluster", cluster, "--timeout", "30s"]);
        if let Some(dir) = &tls_dir {
            args.extend(["--tls-dir", dir]);
        }
        cli(&args)
    }

    /// The same, with `input` on the CLI's stdin.
    pub fn cli_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        let cluster = self.addrs.join(",");
        let mut args = args.to_vec();
        args.extend(["--cluster", &cluster, "--timeout", "30s"]);
        cli_with_input(&args, input)
    }

    /// Everything node `id` has printed, across restarts.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// The tail of node `id`'s log, for failure messages.
    pub fn log_tail(&self, id: u64) -> String {
        let text = self.log(id);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in self.ids() {
            self.kill(id);
        }
        if std::thread::panicking() {
            for id in self.ids() {
                eprintln!("--- node {id} log (tail) ---\n{}", self.log_tail(id));
            }
        }
    }
}

/// `raft-kv certs --out DIR --nodes NODES`, which must succeed.
pub fn write_certs(dir: &Path, nodes: &str) {
    let out = dir.display().to_string();
    let output = cli(&["certs", "--out", &out, "--nodes", nodes]);
    assert!(
        output.status.success(),
        "raft-kv certs --out {out} --nodes {nodes}: {}",
        stderr(&output)
    );
}

/// Node `addr`'s status over TLS, as the client whose certificate is in
/// `tls_dir`; None if it does not answer.
pub fn tls_status(addr: &str, tls_dir: &Path) -> Option<StatusResponse> {
    use raft_kv::proto::kv::key_value_client::KeyValueClient;
    use raft_kv::proto::kv::StatusRequest;
    use raft_kv::tls::{Holder, TlsArgs};
    let tls = TlsArgs {
        tls_dir: Some(tls_dir.to_path_buf()),
        ..TlsArgs::default()
    };
    let config = tls.load(Holder::Client).ok()??.client_config();
    runtime().block_on(async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .ok()?
            .tls_config(config)
            .ok()?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2));
        let channel = endpoint.connect().await.ok()?;
        let response = KeyValueClient::new(channel)
            .status(StatusRequest {})
            .await
            .ok()?;
        Some(response.into_inner())
    })
}

/// Run `raft-kv ARGS`.
pub fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run raft-kv")
}

/// Run `raft-kv ARGS` with `input` on its stdin.
pub fn cli_with_input(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run raft-kv");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // Written on a thread of its own: the CLI may answer before reading it all.
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().expect("wait for raft-kv");
    writer.join().unwrap();
    output
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A tokio runtime for tests that make raw gRPC calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
