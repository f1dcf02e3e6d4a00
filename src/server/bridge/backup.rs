//! The `Snapshot` RPC of `raftkv.KeyValue`: a consistent copy of the
//! leader's state machine, streamed to `raft-kv snapshot save`.
//!
//! Three steps, none of them on the event loop beyond a freeze: a ReadIndex
//! round (dissertation §6.4) proves this node leads and has applied every
//! write acknowledged before the call; the loop then freezes its state
//! machine at `last_applied` (O(1)); and the encoding, the one costly step,
//! runs on a blocking thread of the bridge's runtime.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tonic::codegen::tokio_stream::{self, Stream};
use tonic::Status;

use super::services::{event_loop_gone, ClientService};
use crate::kv::ClientRequest;
use crate::proto::kv as kv_pb;
use crate::server::event_loop::ClientCall;
use crate::storage;

/// Bytes of the file per message: well under the 4 MiB a client decodes.
const CHUNK_BYTES: usize = 1 << 20;

pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<kv_pb::SnapshotChunk, Status>> + Send>>;

/// One backup at a time: each holds the whole encoded state in memory
/// until its client has read it.
#[derive(Clone)]
pub struct Backups(Arc<Semaphore>);

impl Default for Backups {
    fn default() -> Self {
        Backups(Arc::new(Semaphore::new(1)))
    }
}

impl ClientService {
    /// The stream of one snapshot file (see the module docs).
    pub(super) async fn backup(&self) -> Result<SnapshotStream, Status> {
        let permit = self.backups.0.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted("another snapshot is being sent; retry when it is done")
        })?;
        // Any linearizable read is a ReadIndex round; its key does not matter.
        let read_index_round = ClientRequest::Get {
            key: "snapshot".into(),
            linearizable: true,
        };
        self.call(read_index_round).await?;
        let (answer_to, answer) = oneshot::channel();
        self.submit(ClientCall::Backup(answer_to))?;
        let frozen = answer
            .await
            .map_err(|_| event_loop_gone())?
            .map_err(|error| self.status_of(error.into()))?;
        let snapshot = tokio::task::spawn_blocking(move || frozen.encode())
            .await
            .map_err(|e| Status::internal(format!("encoding the snapshot failed: {e}")))?;
        log::info!(
            "sending a snapshot for a backup: index {}, term {}, {} bytes",
            snapshot.last_included_index,
            snapshot.last_included_term,
            snapshot.data.len()
        );
        Ok(chunks(snapshot, permit))
    }
}

/// The file of `snapshot` in messages of [`CHUNK_BYTES`], the first also
/// saying what it holds. `permit` goes when the stream does.
fn chunks(snapshot: crate::raft::Snapshot, permit: OwnedSemaphorePermit) -> SnapshotStream {
    let file = storage::snapshot_file_bytes(&snapshot);
    let count = file.len().div_ceil(CHUNK_BYTES);
    let (index, term, file_bytes) = (
        snapshot.last_included_index,
        snapshot.last_included_term,
        file.len() as u64,
    );
    drop(snapshot);
    let messages = (0..count).map(move |i| {
        let _held = &permit;
        let data = file[i * CHUNK_BYTES..file.len().min((i + 1) * CHUNK_BYTES)].to_vec();
        let first = i == 0;
        Ok(kv_pb::SnapshotChunk {
            last_included_index: if first { index } else { 0 },
            last_included_term: if first { term } else { 0 },
            file_bytes: if first { file_bytes } else { 0 },
            data,
        })
    });
    Box::pin(tokio_stream::iter(messages))
}
