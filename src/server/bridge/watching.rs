//! `raftwatch.Watch` and `raftwatch.FaultInjection` (proto/watch.proto):
//! a viewer's stream of the node's state, read from what the event loop
//! published (src/server/watch.rs), and the partition that drops peer
//! messages here, at the bridge.

use std::collections::BTreeSet;
use std::time::Duration;

use log::info;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::proto::watch as pb;
use crate::proto::watch::fault_injection_server::{FaultInjection, FaultInjectionServer};
use crate::proto::watch::watch_server::{Watch, WatchServer};
use crate::raft::NodeId;
use crate::server::watch::{since, Total, View, Watching};

/// States a watcher has not read yet; more are dropped, not queued.
const STREAM_LEN: usize = 4;
const DEFAULT_INTERVAL_MS: u32 = 100;
const INTERVAL_MS: std::ops::RangeInclusive<u32> = 20..=5000;

pub fn watch_server(id: NodeId, watching: Watching) -> WatchServer<Service> {
    WatchServer::new(Service { id, watching })
}

pub fn fault_server(id: NodeId, watching: Watching) -> FaultInjectionServer<Service> {
    FaultInjectionServer::new(Service { id, watching })
}

pub struct Service {
    id: NodeId,
    watching: Watching,
}

#[tonic::async_trait]
impl Watch for Service {
    type WatchStream = ReceiverStream<Result<pb::NodeState, Status>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let interval = match request.into_inner().interval_ms {
            0 => DEFAULT_INTERVAL_MS,
            ms if INTERVAL_MS.contains(&ms) => ms,
            ms => {
                return Err(Status::invalid_argument(format!(
                    "interval_ms {ms} is out of range: 20 to 5000, or 0 for 100"
                )))
            }
        };
        let (states, stream) = mpsc::channel(STREAM_LEN);
        tokio::spawn(stream_states(
            self.watching.clone(),
            Duration::from_millis(interval.into()),
            states,
        ));
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// Send a state every `interval` until the watcher hangs up. One the
/// watcher has no room for is skipped: its message counts go into the next.
async fn stream_states(
    watching: Watching,
    interval: Duration,
    states: mpsc::Sender<Result<pb::NodeState, Status>>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let (mut sent_before, mut received_before) = watching.traffic.totals();
    loop {
        ticks.tick().await;
        let (sent, received) = watching.traffic.totals();
        let view = watching.view.borrow().clone();
        let mut state = node_state(&view, watching.tick_ms);
        state.sent = counts(since(&sent_before, &sent));
        state.received = counts(since(&received_before, &received));
        state.partitioned_from = watching.faults.blocked();
        match states.try_send(Ok(state)) {
            Ok(()) => (sent_before, received_before) = (sent, received),
            Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

fn node_state(view: &View, tick_ms: u64) -> pb::NodeState {
    pb::NodeState {
        id: view.id,
        role: view.role.to_string(),
        current_term: view.term,
        voted_for: view.voted_for.unwrap_or(0),
        leader_id: view.leader_id.unwrap_or(0),
        commit_index: view.commit_index,
        last_applied: view.last_applied,
        last_log_index: view.last_log_index,
        snapshot_index: view.snapshot_index,
        tail_start: view.tail_start,
        tail_terms: view.tail_terms.clone(),
        followers: view
            .followers
            .iter()
            .map(|&(peer, next_index, match_index)| pb::FollowerProgress {
                peer,
                next_index,
                match_index,
            })
            .collect(),
        election_elapsed_ticks: view.election_timer.0,
        election_timeout_ticks: view.election_timer.1,
        tick_ms,
        ..Default::default()
    }
}

fn counts(rows: Vec<Total>) -> Vec<pb::MessageCount> {
    rows.into_iter()
        .map(|(peer, kind, count, entries, dropped)| pb::MessageCount {
            peer,
            kind: kind.to_string(),
            count,
            entries,
            dropped,
        })
        .collect()
}

#[tonic::async_trait]
impl FaultInjection for Service {
    async fn set_partition(
        &self,
        request: Request<pb::PartitionRequest>,
    ) -> Result<Response<pb::PartitionReply>, Status> {
        let faults = &self.watching.faults;
        if !faults.allowed {
            return Err(Status::failed_precondition(
                "fault injection is off: start the node with --allow-fault-injection",
            ));
        }
        let peers: BTreeSet<NodeId> = request.into_inner().drop_peers.into_iter().collect();
        let traffic = &self.watching.traffic;
        if let Some(bad) = peers.iter().find(|&&p| !traffic.knows(p)) {
            return Err(Status::invalid_argument(format!(
                "drop_peers names {bad}, which is not a peer of node {}",
                self.id
            )));
        }
        match peers.is_empty() {
            true => info!("node {}: fault injection: partition healed", self.id),
            false => info!(
                "node {}: fault injection: dropping every message to and from {peers:?}",
                self.id
            ),
        }
        faults.set(peers);
        Ok(Response::new(pb::PartitionReply {
            partitioned_from: faults.blocked(),
        }))
    }
}
