//! `raft-kv snapshot save | status`: backups, as etcd's `etcdctl snapshot
//! save` and `etcdutl snapshot status` (`restore`, which makes a data dir,
//! is the server's: src/server/restore.rs).
//!
//! A backup is one snapshot file in the storage's own format (a data dir's
//! `snapshot` file, src/storage/backup.rs): its CRC-32 covers the header
//! and the data, and every command here checks it before trusting a byte.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{run, to_json, usage, ClusterFlags, WriteOut, WriteOutFlag};
use crate::kv::KvStore;
use crate::raft::Snapshot;
use crate::storage::{self, StorageError};

#[derive(clap::Args, Debug)]
pub struct SaveArgs {
    /// Where to write the snapshot; an existing file is replaced only once
    /// the new one is complete and checked.
    pub file: PathBuf,
    #[command(flatten)]
    pub output: WriteOutFlag,
    #[command(flatten)]
    pub flags: ClusterFlags,
}

#[derive(clap::Args, Debug)]
pub struct FileStatusArgs {
    /// A snapshot written by `raft-kv snapshot save`.
    pub file: PathBuf,
    #[command(flatten)]
    pub output: WriteOutFlag,
}

/// What a snapshot file holds: what `save` and `status` print.
#[derive(Serialize, Debug)]
pub struct SnapshotSummary {
    pub file: String,
    /// the snapshot's last included index and its term
    pub index: u64,
    pub term: u64,
    pub keys: usize,
    /// client sessions (dissertation §6.3), kept so retries stay exactly-once
    pub sessions: usize,
    pub bytes: u64,
    /// the file's CRC-32, over its header and data, in hex
    pub crc32: String,
}

impl SnapshotSummary {
    pub fn line(&self) -> String {
        format!(
            "{}: index {}, term {}, {} keys, {} sessions, {} bytes, crc32 {}",
            self.file, self.index, self.term, self.keys, self.sessions, self.bytes, self.crc32
        )
    }

    fn print(&self, output: WriteOutFlag, verb: &str) {
        match output.write_out {
            WriteOut::Json => println!("{}", to_json(self)),
            WriteOut::Table => println!("{verb} {}", self.line()),
        }
    }
}

/// `snapshot status FILE`: what a backup holds, once its checksum is checked.
pub fn status(a: FileStatusArgs) -> i32 {
    match checked(&a.file) {
        Ok((_, summary)) => {
            summary.print(a.output, "snapshot");
            0
        }
        Err(message) => usage(&message),
    }
}

/// `snapshot save FILE`: stream into `FILE.part`, check it as `status`
/// would, then rename it over FILE, so FILE is never half written.
pub fn save(a: SaveArgs) -> i32 {
    let part = part_path(&a.file);
    let code = run(&a.flags, |client| {
        let mut out = File::create(&part).map_err(|e| {
            super::Error::Snapshot(format!("cannot create {}: {e}", part.display()))
        })?;
        client.snapshot(&mut out)?;
        out.sync_all()
            .map_err(|e| super::Error::Snapshot(format!("cannot write {}: {e}", part.display())))?;
        Ok(0)
    });
    if code != 0 {
        let _ = fs::remove_file(&part);
        return code;
    }
    let saved = checked(&part).and_then(|(_, mut summary)| {
        fs::rename(&part, &a.file).map_err(|e| {
            format!(
                "cannot rename {} to {}: {e}",
                part.display(),
                a.file.display()
            )
        })?;
        summary.file = a.file.display().to_string();
        Ok(summary)
    });
    match saved {
        Ok(summary) => {
            summary.print(a.output, "saved");
            0
        }
        Err(message) => {
            let _ = fs::remove_file(&part);
            usage(&message)
        }
    }
}

fn part_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Read `file`, check its CRC and that its data is a key-value state
/// machine, and say what it holds.
pub fn checked(file: &Path) -> Result<(Snapshot, SnapshotSummary), String> {
    let bytes = fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let size = bytes.len() as u64;
    let crc = crc32fast::hash(&bytes);
    let snapshot = storage::decode_snapshot_file(file, bytes).map_err(|e| match e {
        StorageError::Corrupt { offset, reason, .. } => format!(
            "{} is not a good raft-kv snapshot (at byte offset {offset}: {reason})",
            file.display()
        ),
        other => other.to_string(),
    })?;
    let store = KvStore::restore(&snapshot.data).map_err(|e| {
        format!(
            "{}: its checksum is right, but its data is not a key-value store: {e}",
            file.display()
        )
    })?;
    let summary = SnapshotSummary {
        file: file.display().to_string(),
        index: snapshot.last_included_index,
        term: snapshot.last_included_term,
        keys: store.len(),
        sessions: store.sessions(),
        bytes: size,
        crc32: format!("{crc:08x}"),
    };
    Ok((snapshot, summary))
}
