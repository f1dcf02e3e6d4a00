//! `raft-kv cluster`: every member of a cluster as a child `raft-kv node`
//! process on this machine, with every line they print prefixed `[nodeN] `.
//!
//! Killing a node (`kill -9 PID`) is the demonstration: the cluster keeps
//! running, prints `[node2] exited: signal 9`, and the others elect a new
//! leader. Ctrl-C reaches every process of the terminal's process group: the
//! nodes stop at once (as in a crash; what they acknowledged is on disk), and
//! the cluster waits for them and exits 0. `kill PID` of the cluster does the
//! same, killing the nodes itself.
//!
//! If the cluster process dies without the chance to stop its nodes (even
//! `kill -9`), Linux kills them too (`PR_SET_PDEATHSIG`). Elsewhere that last
//! case is not covered, and the nodes must be stopped by hand.

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};

use crate::config::{ConfigError, Members, Tuning, EXIT_BAD_CONFIG};
use crate::raft::NodeId;

/// How long the nodes get to exit after an interrupt before they are killed.
const GRACE: Duration = Duration::from_secs(2);
/// How often the supervisor looks for an interrupt while the nodes are quiet.
const POLL: Duration = Duration::from_millis(100);

/// `raft-kv cluster`: run every member as a local child process.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Every member of the cluster, as ID=HOST:PORT,ID=HOST:PORT,…
    #[arg(
        long,
        value_name = "LIST",
        default_value = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
    )]
    pub peers: String,
    /// Base data directory: node N keeps its data in BASE/nodeN.
    #[arg(long, value_name = "BASE", default_value = "data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// Run the cluster until interrupted; returns the process exit code.
pub fn run_cluster(args: ClusterArgs) -> i32 {
    let members = match check(&args) {
        Ok(members) => members,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_BAD_CONFIG;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: cannot find the raft-kv executable: {e}");
            return 1;
        }
    };
    interrupt::catch();
    let (events_tx, events) = unbounded();
    let mut nodes = Nodes(Vec::new());
    for (id, _) in members.iter() {
        let data_dir = args.data_dir.join(format!("node{id}"));
        match spawn_node(&exe, id, &members, &data_dir, &args.tuning, &events_tx) {
            Ok(child) => nodes.0.push((id, child)),
            Err(e) => {
                eprintln!("error: cannot start node {id}: {e}");
                return 1;
            }
        }
    }
    drop(events_tx);
    supervise(nodes, events)
}

/// Check the flags here, so a mistake is reported once rather than by every node.
fn check(args: &ClusterArgs) -> Result<Members, ConfigError> {
    let members = Members::parse_peers(&args.peers)?;
    args.tuning.check()?;
    Ok(members)
}

/// What the output threads tell the supervisor.
enum Event {
    Line(NodeId, String),
    /// The node's output has ended: it has exited, or is about to.
    Closed(NodeId),
}

fn spawn_node(
    exe: &Path,
    id: NodeId,
    members: &Members,
    data_dir: &Path,
    tuning: &Tuning,
    events: &Sender<Event>,
) -> io::Result<Child> {
    // One pipe for stdout and stderr keeps each node's lines in order.
    let (output, output_writer) = io::pipe()?;
    let mut command = Command::new(exe);
    command
        .arg("node")
        .args(["--id", &id.to_string()])
        .args(["--peers", &members.to_peers_flag()])
        .arg("--data-dir")
        .arg(data_dir)
        .args(tuning.to_flags())
        .stdin(Stdio::null())
        .stdout(output_writer.try_clone()?)
        .stderr(output_writer);
    die_with_parent(&mut command);
    let child = command.spawn()?;
    // Close our copies of the pipe's write end, so the output ends when the node does.
    drop(command);
    let events = events.clone();
    thread::Builder::new()
        .name(format!("node{id}-output"))
        .spawn(move || forward_output(id, output, events))?;
    Ok(child)
}

fn forward_output(id: NodeId, output: io::PipeReader, events: Sender<Event>) {
    let mut output = BufReader::new(output);
    let mut line = Vec::new();
    loop {
        line.clear();
        match output.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if events.send(Event::Line(id, text)).is_err() {
                    return;
                }
            }
        }
    }
    let _ = events.send(Event::Closed(id));
}

/// Print the nodes' lines and exits until every node has exited, or until
/// an interrupt and the grace period after it.
fn supervise(mut nodes: Nodes, events: Receiver<Event>) -> i32 {
    let mut interrupted_at: Option<Instant> = None;
    loop {
        match events.recv_timeout(POLL) {
            Ok(Event::Line(id, line)) => say(id, &line),
            Ok(Event::Closed(id)) => nodes.reap(id),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => nodes.reap_all(),
        }
        if interrupted_at.is_none() && interrupt::happened() {
            interrupted_at = Some(Instant::now());
        }
        if nodes.0.is_empty() {
            if interrupted_at.is_some() {
                return 0;
            }
            eprintln!("error: every node has exited");
            return 1;
        }
        if interrupted_at.is_some_and(|at| at.elapsed() >= GRACE) {
            nodes.kill_all();
            return 0;
        }
    }
}

fn say(id: NodeId, line: &str) {
    // A closed stdout must not take the cluster down with it.
    let _ = writeln!(io::stdout(), "[node{id}] {line}");
}

/// The running nodes. Dropping it kills and reaps them, so no path out of
/// the cluster leaves a node behind.
struct Nodes(Vec<(NodeId, Child)>);

impl Nodes {
    /// Wait for node `id`, whose output has ended, and report how it exited.
    fn reap(&mut self, id: NodeId) {
        if let Some(position) = self.0.iter().position(|(node, _)| *node == id) {
            let (_, mut child) = self.0.remove(position);
            match child.wait() {
                Ok(status) => say(id, &format!("exited: {}", describe(status))),
                Err(e) => say(id, &format!("exited; its status is unknown: {e}")),
            }
        }
    }

    fn reap_all(&mut self) {
        let ids: Vec<NodeId> = self.0.iter().map(|(id, _)| *id).collect();
        for id in ids {
            self.reap(id);
        }
    }

    fn kill_all(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
        }
        self.reap_all();
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// "code 2" or "signal 9".
fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("code {code}"),
        None => status.to_string(),
    }
}

/// Have the kernel kill the node when the cluster process dies, however it
/// dies. `raft-kv bench --local` uses it for its nodes too.
#[cfg(target_os = "linux")]
pub(crate) fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    const PR_SET_PDEATHSIG: i32 = 1;
    const SIGKILL: std::ffi::c_ulong = 9;
    const ESRCH: i32 = 3;
    extern "C" {
        fn prctl(option: i32, ...) -> i32;
    }
    let parent = std::process::id();
    // SAFETY: between fork and exec, the closure makes only two system calls
    // and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The cluster may have died before prctl took effect.
            if std::os::unix::process::parent_id() != parent {
                return Err(io::Error::from_raw_os_error(ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn die_with_parent(_command: &mut Command) {}

/// Ctrl-C (SIGINT) and `kill` (SIGTERM) set a flag instead of ending the
/// cluster at once, so it can wait for its nodes. The handler is reset to
/// the default in the children when they exec, so the nodes still stop at
/// once on Ctrl-C. `raft-kv bench` uses it to stop and clean up too.
#[cfg(unix)]
pub(crate) mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};

    static INTERRUPTED: AtomicBool = AtomicBool::new(false);
    const SIGINT: i32 = 2;
    const SIGTERM: i32 = 15;

    extern "C" {
        fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    }

    // Runs inside a signal handler: one atomic store is all that is safe here.
    extern "C" fn on_signal(_signum: i32) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }

    pub fn catch() {
        for signum in [SIGINT, SIGTERM] {
            // SAFETY: `on_signal` only stores to an atomic.
            unsafe {
                signal(signum, on_signal);
            }
        }
    }

    pub fn happened() -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }
}

#[cfg(not(unix))]
pub(crate) mod interrupt {
    pub fn catch() {}

    pub fn happened() -> bool {
        false
    }
}
