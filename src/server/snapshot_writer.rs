//! The snapshot writer thread: it encodes the state the event loop froze
//! and writes it durably, so that the loop goes on serving while it does
//! (§7: "copy-on-write ... so that new updates can be accepted without
//! impacting the snapshot being written"). The durable snapshot goes back
//! to the loop, which only then compacts the log (`RaftNode::snapshot_saved`).

use std::thread::{self, JoinHandle};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use log::info;

use crate::raft::{NodeId, Snapshot, SnapshotToSave, SnapshotWriter};
use crate::server::metrics::Metrics;

/// Start the writer thread. It stops once the event loop has dropped the
/// sending end of `to_write` (after finishing the snapshot it is writing).
pub fn spawn(
    id: NodeId,
    mut writer: Box<dyn SnapshotWriter>,
    to_write: Receiver<SnapshotToSave>,
    saved: Sender<Snapshot>,
    metrics: Metrics,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("snapshot-writer".into())
        .spawn(move || {
            for started in to_write {
                let begun = Instant::now();
                let snapshot = started.encode();
                info!(
                    "node {id}: snapshot through index {} encoded: {} bytes in {:.1} ms",
                    snapshot.last_included_index,
                    snapshot.data.len(),
                    begun.elapsed().as_secs_f64() * 1e3
                );
                // Like the log's writes, a failed one stops the node: it
                // could not keep what it promised (src/raft/log.rs).
                if let Err(error) = writer.write_snapshot(&snapshot) {
                    panic!("stable storage failed while writing a snapshot: {error}; stopping this node");
                }
                metrics.snapshot_written(snapshot.data.len(), begun.elapsed().as_secs_f64());
                if saved.send(snapshot).is_err() {
                    return; // the event loop has stopped
                }
            }
        })
}
