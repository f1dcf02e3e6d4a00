//! `raft-kv member list | add | promote | remove`: membership changes (Raft
//! paper §6; proto/membership.proto), sent to the leader as a write is.

use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::client::{describe, Client, Error};
use super::{run_patiently, to_json, ClusterFlags, WriteOut, WriteOutFlag};
use crate::config::Address;
use crate::proto::membership::membership_client::MembershipClient;
use crate::proto::membership::{self as pb, MemberListResponse, MemberRole};

#[derive(clap::Args, Debug)]
pub struct MemberArgs {
    #[command(subcommand)]
    pub command: MemberCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum MemberCommand {
    /// List the members: id, address, voter or learner, and how far each
    /// one's log matches the leader's.
    List(ListArgs),
    /// Add a server, started empty with `raft-kv node --join CLUSTER_ID`:
    /// raft-kv member add ID=HOST:PORT [--learner]
    Add(AddArgs),
    /// Make a learner a voter once it has caught up: raft-kv member promote ID
    Promote(IdArgs),
    /// Remove a voter or a learner (the leader too): raft-kv member remove ID
    Remove(IdArgs),
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub output: WriteOutFlag,
    #[command(flatten)]
    pub flags: ClusterFlags,
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// The new server's id and the address its peers reach it at (its
    /// --listen-peers), e.g. 4=127.0.0.1:7004.
    #[arg(value_name = "ID=HOST:PORT", value_parser = parse_member)]
    pub member: (u64, String),
    /// Add it as a learner: it receives the log but does not vote (promote
    /// it later). Without it, the server becomes a voter once caught up.
    #[arg(long)]
    pub learner: bool,
    #[command(flatten)]
    pub output: WriteOutFlag,
    #[command(flatten)]
    pub flags: ClusterFlags,
}

#[derive(clap::Args, Debug)]
pub struct IdArgs {
    /// The member's id.
    #[arg(value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
    #[command(flatten)]
    pub output: WriteOutFlag,
    #[command(flatten)]
    pub flags: ClusterFlags,
}

/// `ID=HOST:PORT`, checked as `--peers` entries are.
fn parse_member(text: &str) -> Result<(u64, String), String> {
    let (id, address) = text
        .split_once('=')
        .ok_or(format!("'{text}' is not ID=HOST:PORT"))?;
    let id = match id.trim().parse::<u64>() {
        Ok(0) | Err(_) => return Err(format!("'{id}' is not a node id (1, 2, …)")),
        Ok(id) => id,
    };
    Ok((id, Address::parse(address.trim())?.to_string()))
}

/// Run a `raft-kv member` command.
pub fn member(a: MemberArgs) -> i32 {
    match a.command {
        MemberCommand::List(a) => run_patiently(&a.flags, |client| {
            let list = ask(client, async |mut m| {
                m.member_list(pb::MemberListRequest {}).await
            })?;
            print_list(a.output.write_out, None, &list);
            Ok(0)
        }),
        MemberCommand::Add(a) => run_patiently(&a.flags, |client| {
            let (id, address) = a.member.clone();
            let learner = a.learner;
            let list = ask(client, async |mut m| {
                let request = pb::MemberAddRequest {
                    id,
                    address: address.clone(),
                    learner,
                };
                m.member_add(request).await
            })?;
            let role = if learner { "learner" } else { "voter" };
            let done = format!("added node {id} at {address} as a {role}");
            print_list(a.output.write_out, Some(&done), &list);
            Ok(0)
        }),
        MemberCommand::Promote(a) => change(a, "promoted", async |mut m, id| {
            m.member_promote(pb::MemberPromoteRequest { id }).await
        }),
        MemberCommand::Remove(a) => change(a, "removed", async |mut m, id| {
            m.member_remove(pb::MemberRemoveRequest { id }).await
        }),
    }
}

/// `promote` or `remove` of member `a.id`.
fn change(
    a: IdArgs,
    done: &str,
    mut rpc: impl AsyncFnMut(
        MembershipClient<Channel>,
        u64,
    ) -> Result<tonic::Response<MemberListResponse>, Status>,
) -> i32 {
    let id = a.id;
    run_patiently(&a.flags, |client| {
        let list = ask(client, async |m| rpc(m, id).await)?;
        let line = format!("{done} node {id}");
        print_list(a.output.write_out, Some(&line), &list);
        Ok(0)
    })
}

/// Send `rpc` to the leader (found as for a write). A refusal that
/// retrying cannot change (another change in progress, a change that
/// cannot be made) ends the call at once.
fn ask(
    client: &mut Client,
    mut rpc: impl AsyncFnMut(
        MembershipClient<Channel>,
    ) -> Result<tonic::Response<MemberListResponse>, Status>,
) -> Result<MemberListResponse, Error> {
    let answer = client.call_on(true, async |channel| {
        match rpc(MembershipClient::new(channel)).await {
            Ok(response) => Ok(Ok(response.into_inner())),
            Err(status) if final_refusal(&status) => Ok(Err(status)),
            Err(status) => Err(status),
        }
    })?;
    answer.map_err(|status| Error::Server {
        addr: client.leader().unwrap_or("the leader").to_owned(),
        status: describe(&status),
    })
}

fn final_refusal(status: &Status) -> bool {
    matches!(status.code(), Code::FailedPrecondition | Code::Aborted)
}

/// The members as a table (after `done`, a line saying what was done), or
/// as one JSON document.
fn print_list(write_out: WriteOut, done: Option<&str>, list: &MemberListResponse) {
    match write_out {
        WriteOut::Json => println!("{}", to_json(&MemberListJson::new(list))),
        WriteOut::Table => {
            if let Some(done) = done {
                println!("{done}");
            }
            print!("{}", member_table(list));
        }
    }
}

/// `raft-kv member list`: a line about the configuration, then a row per
/// member.
pub fn member_table(list: &MemberListResponse) -> String {
    let state = match (list.joint, list.committed) {
        (true, true) => "joint C_old,new, committed",
        (true, false) => "joint C_old,new, not committed yet",
        (false, true) => "committed",
        (false, false) => "not committed yet",
    };
    // A leader that removed itself answers after stepping down: it knows
    // no leader yet, nor how far the others' logs match.
    let leader = match list.leader_id {
        0 => "no leader known yet".to_string(),
        id => format!("leader {id}"),
    };
    let mut out = format!(
        "cluster {}, {leader}, configuration at index {} ({state})\n",
        list.cluster_id, list.configuration_index
    );
    let rows: Vec<[String; 4]> = list
        .members
        .iter()
        .map(|m| {
            [
                m.id.to_string(),
                m.address.clone(),
                role_of(m).to_string(),
                match list.leader_id {
                    0 => "-".to_string(),
                    _ => m.match_index.to_string(),
                },
            ]
        })
        .collect();
    let header = ["ID", "ADDRESS", "ROLE", "MATCH"].map(String::from);
    let mut widths = [0; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// `voter`, `learner`, or in a joint configuration `voter (leaving)` /
/// `voter (joining)`.
fn role_of(member: &pb::Member) -> &'static str {
    match (member.role(), member.leaving, member.joining) {
        (MemberRole::Learner, _, _) => "learner",
        (MemberRole::Voter, true, _) => "voter (leaving)",
        (MemberRole::Voter, _, true) => "voter (joining)",
        (MemberRole::Voter, false, false) => "voter",
    }
}

/// What `member ... -w json` prints.
#[derive(Serialize, Debug)]
pub struct MemberListJson<'a> {
    cluster_id: &'a str,
    leader: u64,
    configuration_index: u64,
    committed: bool,
    joint: bool,
    members: Vec<MemberJson<'a>>,
}

#[derive(Serialize, Debug)]
struct MemberJson<'a> {
    id: u64,
    address: &'a str,
    role: &'static str,
    match_index: u64,
}

impl<'a> MemberListJson<'a> {
    pub fn new(list: &'a MemberListResponse) -> MemberListJson<'a> {
        let members = list.members.iter().map(|m| MemberJson {
            id: m.id,
            address: &m.address,
            role: role_of(m),
            match_index: m.match_index,
        });
        MemberListJson {
            cluster_id: &list.cluster_id,
            leader: list.leader_id,
            configuration_index: list.configuration_index,
            committed: list.committed,
            joint: list.joint,
            members: members.collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_id_equals_address() {
        assert_eq!(
            parse_member("4=127.0.0.1:7004"),
            Ok((4, "127.0.0.1:7004".into()))
        );
        assert!(parse_member("4:127.0.0.1:7004").is_err());
        assert!(parse_member("0=127.0.0.1:7004").is_err());
        assert!(parse_member("4=127.0.0.1").is_err());
    }

    #[test]
    fn the_table_marks_a_joint_configuration() {
        let member = |id, role: MemberRole, leaving, joining| pb::Member {
            id,
            address: format!("127.0.0.1:700{id}"),
            role: role as i32,
            match_index: 9,
            leaving,
            joining,
        };
        let list = MemberListResponse {
            members: vec![
                member(1, MemberRole::Voter, false, false),
                member(3, MemberRole::Voter, true, false),
                member(4, MemberRole::Voter, false, true),
                member(5, MemberRole::Learner, false, false),
            ],
            joint: true,
            configuration_index: 12,
            committed: false,
            leader_id: 1,
            cluster_id: "00000000000000ab".into(),
        };
        assert_eq!(
            member_table(&list),
            "cluster 00000000000000ab, leader 1, configuration at index 12 (joint C_old,new, not committed yet)\n\
             ID  ADDRESS         ROLE             MATCH\n\
             1   127.0.0.1:7001  voter            9\n\
             3   127.0.0.1:7003  voter (leaving)  9\n\
             4   127.0.0.1:7004  voter (joining)  9\n\
             5   127.0.0.1:7005  learner          9\n"
        );
    }
}
