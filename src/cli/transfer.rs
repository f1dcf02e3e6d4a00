//! `raft-kv transfer-leader --to ID`: hand the leadership to another member
//! (dissertation §3.10; proto/leadership.proto), then wait until the target
//! reports itself leader.

use std::time::{Duration, Instant};

use tonic::{Code, Status};

use super::client::{describe, Client, Error};
use super::{run, ClusterFlags};
use crate::proto::leadership::leadership_client::LeadershipClient;
use crate::proto::leadership::TransferLeaderRequest;

#[derive(clap::Args, Debug)]
pub struct TransferLeaderArgs {
    /// The member to make leader (its id, as in --peers).
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub to: u64,
    #[command(flatten)]
    pub flags: ClusterFlags,
}

/// Ask the leader (found as for a write) to hand over to `--to`, and print
/// who leads afterwards.
pub fn transfer_leader(a: TransferLeaderArgs) -> i32 {
    let to = a.to;
    run(&a.flags, |client| {
        let started = Instant::now();
        let previous = ask_leader(client, to)?;
        if previous == to {
            println!("node {to} is already the leader");
            return Ok(0);
        }
        match wait_for_leader(client, to, a.flags.timeout) {
            Some(term) => println!(
                "leadership transferred from node {previous} to node {to} (term {term}) in {} ms",
                started.elapsed().as_millis()
            ),
            None => println!(
                "node {previous} handed over to node {to}, which has not reported itself \
                 leader yet; see raft-kv status"
            ),
        }
        Ok(0)
    })
}

/// The TransferLeader RPC, sent to the leader; returns the node that led.
/// A refusal that retrying cannot change ends the call at once.
fn ask_leader(client: &mut Client, to: u64) -> Result<u64, Error> {
    let answer = client.call_on(true, async |channel| {
        let request = TransferLeaderRequest { to };
        match LeadershipClient::new(channel)
            .transfer_leader(request)
            .await
        {
            Ok(response) => Ok(Ok(response.into_inner().previous_leader)),
            Err(status) if final_refusal(&status) => Ok(Err(status)),
            Err(status) => Err(status),
        }
    })?;
    answer.map_err(|status| Error::Server {
        addr: client.leader().unwrap_or("the leader").to_owned(),
        status: describe(&status),
    })
}

/// Another transfer running, or this one abandoned: say so, do not retry.
fn final_refusal(status: &Status) -> bool {
    matches!(status.code(), Code::FailedPrecondition | Code::Aborted)
}

/// Poll every node until `to` says it leads; its term.
fn wait_for_leader(client: &mut Client, to: u64, timeout: Duration) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let rows = client.status_all();
        let leading = rows
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .find(|s| s.id == to && s.role == "leader");
        if let Some(status) = leading {
            return Some(status.term);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
