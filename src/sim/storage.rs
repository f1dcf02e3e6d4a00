//! Where the nodes of a simulated cluster keep their state.
//!
//! A [`Cluster`](super::Cluster) asks its [`Disks`] for a node's storage
//! each time the node starts, and tells them when the node crashes or is
//! wiped. Two kinds fit:
//!
//! - [`MemDisks`], the default: one [`MemStorage`] per node. A crash is a
//!   power cut: whatever was written but not synced is lost.
//! - [`FileDisks`]: the real [`FileStorage`], one data dir per node under a
//!   directory the test owns (a temp dir). A crash drops the node, and with
//!   it the open files and the dir's lock; the restarted node reopens the dir
//!   and recovers from what is in the files, as a node process killed and
//!   started again does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::raft::{MemStorage, NodeId, Storage};
use crate::storage::FileStorage;

/// The disks of a simulated cluster.
pub trait Disks {
    /// The storage node `id` starts on: empty on first boot, afterwards what
    /// its last crash left.
    fn open(&mut self, id: NodeId) -> Box<dyn Storage>;
    /// Node `id` crashed: the cluster has dropped the node and the storage
    /// it held. Lose what a crash loses.
    fn crash(&mut self, id: NodeId);
    /// Erase node `id`'s disk (the node is down), as an operator does with a
    /// damaged data dir: its next start is a first boot.
    fn wipe(&mut self, id: NodeId);
    /// Node `id`'s in-memory disk, if these disks are [`MemDisks`] (for tests
    /// that count fsyncs or read the durable log).
    fn memory(&self, _id: NodeId) -> Option<&MemStorage> {
        None
    }
}

/// One [`MemStorage`] per node; a crash loses every unsynced write.
#[derive(Default)]
pub struct MemDisks {
    disks: BTreeMap<NodeId, MemStorage>,
}

impl Disks for MemDisks {
    fn open(&mut self, id: NodeId) -> Box<dyn Storage> {
        // A clone is another handle on the same disk: the cluster keeps
        // this one, the node owns the other.
        Box::new(self.disks.entry(id).or_default().clone())
    }

    fn crash(&mut self, id: NodeId) {
        if let Some(disk) = self.disks.get(&id) {
            disk.crash();
        }
    }

    fn wipe(&mut self, id: NodeId) {
        self.disks.insert(id, MemStorage::new());
    }

    fn memory(&self, id: NodeId) -> Option<&MemStorage> {
        self.disks.get(&id)
    }
}

/// A [`FileStorage`] per node, in `ROOT/node<id>` (created on first boot).
/// The caller owns `ROOT` and removes it (a `tempfile::TempDir` in tests).
pub struct FileDisks {
    root: PathBuf,
}

impl FileDisks {
    pub fn new(root: &Path) -> FileDisks {
        FileDisks {
            root: root.to_path_buf(),
        }
    }

    /// Node `id`'s data dir.
    pub fn dir(&self, id: NodeId) -> PathBuf {
        self.root.join(format!("node{id}"))
    }
}

impl Disks for FileDisks {
    fn open(&mut self, id: NodeId) -> Box<dyn Storage> {
        let dir = self.dir(id);
        let storage = FileStorage::open(&dir)
            .unwrap_or_else(|e| panic!("n{id}: opening {}: {e}", dir.display()));
        Box::new(storage)
    }

    /// The node's files stay as they are: what it wrote is in them (the
    /// operating system keeps unsynced writes of a killed process), and
    /// dropping the node closed them and released the dir's lock.
    fn crash(&mut self, _id: NodeId) {}

    fn wipe(&mut self, id: NodeId) {
        let dir = self.dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .unwrap_or_else(|e| panic!("n{id}: removing {}: {e}", dir.display()));
        }
    }
}
