//! `raft-kv snapshot restore FILE --data-dir DIR --id N --peers …`: the data
//! dir of node N of a new cluster, seeded from a backup (etcd's `etcdutl
//! snapshot restore`). The file is checked as `snapshot status` checks it
//! (src/cli/snapshot.rs); the dir is written by the storage
//! (src/storage/backup.rs), with the `cluster` file of the new members.

use std::path::PathBuf;

use crate::cli::snapshot::checked;
use crate::config::Members;
use crate::raft::Configuration;
use crate::server::identity;
use crate::storage::{self, StorageError};

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// A snapshot written by `raft-kv snapshot save`.
    pub file: PathBuf,
    /// The new node's data dir: must not exist yet, or be empty.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The new node's id, one of --peers.
    #[arg(long)]
    pub id: u64,
    /// The new cluster's members, as every node of it will be started with.
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    pub peers: String,
    /// The new cluster's token, if its nodes will be started with one.
    #[arg(long, value_name = "TOKEN")]
    pub cluster_token: Option<String>,
}

/// `snapshot restore FILE --data-dir DIR --id N --peers …`: DIR becomes the
/// data dir of node N of a new cluster whose state is the snapshot's. Run
/// it for each member with the same FILE and --peers.
pub fn run(a: RestoreArgs) -> i32 {
    match restore(a) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("raft-kv: error: {message}");
            2
        }
    }
}

fn restore(a: RestoreArgs) -> Result<(), String> {
    let members = Members::parse_peers(&a.peers).map_err(|e| e.to_string())?;
    if !members.contains(a.id) {
        return Err(format!(
            "--id {} is not one of --peers {}",
            a.id,
            members.to_peers_flag()
        ));
    }
    if let Some(token) = &a.cluster_token {
        crate::config::check_cluster_token(token).map_err(|e| format!("--cluster-token: {e}"))?;
    }
    let (mut snapshot, summary) = checked(&a.file)?;
    // The new cluster's members are --peers, not those of the cluster the
    // snapshot was taken from (whose configuration it carries, §7).
    snapshot.configuration = Some(Configuration {
        voters: members.ids().into_iter().collect(),
        addresses: members
            .iter()
            .map(|(id, address)| (id, address.to_string()))
            .collect(),
        ..Configuration::default()
    });
    let (_, record) = identity::establish(None, &members, a.cluster_token.as_deref())?;
    let record = record.expect("a data dir without a cluster file gets a new record");
    storage::seed_data_dir(&a.data_dir, &snapshot, record.encode().as_bytes()).map_err(
        |e| match e {
            StorageError::Inconsistent { file, reason } => {
                format!("cannot restore into {}: it {reason}", file.display())
            }
            other => format!("cannot restore into {}: {other}", a.data_dir.display()),
        },
    )?;
    let token = a
        .cluster_token
        .as_ref()
        .map_or(String::new(), |t| format!(" --cluster-token {t}"));
    println!(
        "restored {} into {} for node {} of cluster {}; start it with:\n  \
         raft-kv node --id {} --peers {}{token} --data-dir {}",
        summary.line(),
        a.data_dir.display(),
        a.id,
        record.id,
        a.id,
        members.to_peers_flag(),
        a.data_dir.display()
    );
    Ok(())
}
