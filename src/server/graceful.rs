//! A node asked to stop with SIGTERM (a planned restart: `kill PID`,
//! systemd, Kubernetes) hands its leadership to the most up-to-date
//! follower first (dissertation §3.10), so that clients wait about one
//! round trip for a new leader instead of an election timeout. The wait is
//! bounded; then the node exits. SIGKILL stays a crash, and SIGINT (Ctrl-C)
//! still stops a node at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{info, warn};
use tokio::sync::oneshot;

use crate::raft::{NodeId, NodeStatus, Request, RequestId};
use crate::server::event_loop::ClientCall;

static TERMINATED: AtomicBool = AtomicBool::new(false);

/// The id of the transfer a stopping leader asks for: its answer is not
/// waited on (the bridge's ids count up from 1 and never get here).
const STOP_TRANSFER: RequestId = RequestId::MAX;

// Runs inside a signal handler: one atomic store is all that is safe here.
extern "C" fn on_sigterm(_signum: libc::c_int) {
    TERMINATED.store(true, Ordering::SeqCst);
}

/// Catch SIGTERM; when it comes, hand leadership over (waiting at most
/// `wait`) and exit with code 0.
pub fn stop_gracefully_on_sigterm(
    id: NodeId,
    client_calls: Sender<ClientCall>,
    wait: Duration,
) -> std::io::Result<()> {
    let handler: extern "C" fn(libc::c_int) = on_sigterm;
    // SAFETY: `on_sigterm` only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
    thread::Builder::new()
        .name("sigterm".into())
        .spawn(move || {
            while !TERMINATED.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(5));
            }
            info!("node {id}: SIGTERM: stopping");
            hand_over(id, &client_calls, wait);
            info!("node {id}: stopped on SIGTERM");
            std::process::exit(0);
        })?;
    Ok(())
}

/// If this node leads, transfer its leadership and wait until another
/// node is known to lead, or `wait` has passed.
fn hand_over(id: NodeId, client_calls: &Sender<ClientCall>, wait: Duration) {
    let deadline = Instant::now() + wait;
    if status(client_calls).is_none_or(|s| s.role != "leader") {
        return;
    }
    let transfer = Request::TransferLeadership { to: 0 };
    if client_calls
        .send(ClientCall::Request(STOP_TRANSFER, transfer))
        .is_err()
    {
        return;
    }
    while Instant::now() < deadline {
        if let Some(s) = status(client_calls) {
            if s.leader_id.is_some_and(|leader| leader != id) {
                info!(
                    "node {id}: handed leadership to node {}",
                    s.leader_id.unwrap_or(0)
                );
                return;
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    warn!("node {id}: no other leader within {wait:?}; stopping anyway");
}

/// The node's status, from its event loop.
fn status(client_calls: &Sender<ClientCall>) -> Option<NodeStatus> {
    let (answer_to, answer) = oneshot::channel();
    client_calls.send(ClientCall::Status(answer_to)).ok()?;
    answer.blocking_recv().ok()
}
