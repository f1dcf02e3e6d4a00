//! Conversions between the core's [`Message`] and the prost types of
//! proto/raft.proto. This is the only place the two meet.
//!
//! Messages arriving from the network are checked here, so that nothing a
//! peer sends can make the core trip over its own assertions: entries that
//! do not follow `prev_log_index` one by one, or of an unknown kind, are
//! refused with a one-line reason. (Commands are the state machine's bytes:
//! it answers one that does not decode with an error.)

use crate::proto::peer as pb;
use crate::raft::{
    AppendEntries, AppendEntriesReply, Command, Configuration, Entry, InstallSnapshot,
    InstallSnapshotReply, Message, NodeId, PreVote, PreVoteReply, ReadIndex, ReadIndexReply,
    RequestVote, RequestVoteReply, TimeoutNow,
};

/// A message for the wire, from `from`.
pub fn envelope(from: NodeId, message: Message) -> pb::Envelope {
    use pb::envelope::Message as M;
    let message = match message {
        Message::RequestVote(m) => M::RequestVote(request_vote_to_proto(m)),
        Message::RequestVoteReply(m) => M::RequestVoteReply(request_vote_reply_to_proto(m)),
        Message::AppendEntries(m) => M::AppendEntries(append_entries_to_proto(m)),
        Message::AppendEntriesReply(m) => M::AppendEntriesReply(append_entries_reply_to_proto(m)),
        Message::InstallSnapshot(m) => M::InstallSnapshot(install_snapshot_to_proto(m)),
        Message::InstallSnapshotReply(m) => {
            M::InstallSnapshotReply(install_snapshot_reply_to_proto(m))
        }
        Message::ReadIndex(m) => M::ReadIndex(pb::ReadIndexRequest {
            term: m.term,
            batch: m.batch,
        }),
        Message::ReadIndexReply(m) => M::ReadIndexReply(pb::ReadIndexReply {
            term: m.term,
            batch: m.batch,
            ok: m.read_index.is_some(),
            read_index: m.read_index.unwrap_or(0),
        }),
        Message::PreVote(m) => M::PreVote(pb::PreVoteRequest {
            term: m.term,
            candidate_id: m.candidate_id,
            last_log_index: m.last_log_index,
            last_log_term: m.last_log_term,
        }),
        Message::PreVoteReply(m) => M::PreVoteReply(pb::PreVoteReply {
            term: m.term,
            request_term: m.request_term,
            vote_granted: m.vote_granted,
        }),
        Message::TimeoutNow(m) => M::TimeoutNow(pb::TimeoutNowRequest {
            term: m.term,
            leader_id: m.leader_id,
        }),
    };
    pb::Envelope {
        from,
        message: Some(message),
    }
}

/// The sender and the message of an envelope; the error says what is wrong.
pub fn open_envelope(envelope: pb::Envelope) -> Result<(NodeId, Message), String> {
    use pb::envelope::Message as M;
    let message = match envelope.message {
        Some(M::RequestVote(m)) => Message::RequestVote(request_vote_from_proto(m)),
        Some(M::RequestVoteReply(m)) => Message::RequestVoteReply(request_vote_reply_from_proto(m)),
        Some(M::AppendEntries(m)) => Message::AppendEntries(append_entries_from_proto(m)?),
        Some(M::AppendEntriesReply(m)) => {
            Message::AppendEntriesReply(append_entries_reply_from_proto(m))
        }
        Some(M::InstallSnapshot(m)) => Message::InstallSnapshot(install_snapshot_from_proto(m)?),
        Some(M::InstallSnapshotReply(m)) => {
            Message::InstallSnapshotReply(install_snapshot_reply_from_proto(m))
        }
        Some(M::ReadIndex(m)) => Message::ReadIndex(ReadIndex {
            term: m.term,
            batch: m.batch,
        }),
        Some(M::ReadIndexReply(m)) => Message::ReadIndexReply(ReadIndexReply {
            term: m.term,
            batch: m.batch,
            read_index: m.ok.then_some(m.read_index),
        }),
        Some(M::PreVote(m)) => Message::PreVote(PreVote {
            term: m.term,
            candidate_id: m.candidate_id,
            last_log_index: m.last_log_index,
            last_log_term: m.last_log_term,
        }),
        Some(M::PreVoteReply(m)) => Message::PreVoteReply(PreVoteReply {
            term: m.term,
            request_term: m.request_term,
            vote_granted: m.vote_granted,
        }),
        Some(M::TimeoutNow(m)) => Message::TimeoutNow(TimeoutNow {
            term: m.term,
            leader_id: m.leader_id,
        }),
        None => return Err("the envelope holds no message".to_string()),
    };
    Ok((envelope.from, message))
}

pub fn request_vote_from_proto(m: pb::RequestVoteRequest) -> RequestVote {
    RequestVote {
        term: m.term,
        candidate_id: m.candidate_id,
        last_log_index: m.last_log_index,
        last_log_term: m.last_log_term,
        leadership_transfer: m.leadership_transfer,
    }
}

pub fn request_vote_to_proto(m: RequestVote) -> pb::RequestVoteRequest {
    pb::RequestVoteRequest {
        term: m.term,
        candidate_id: m.candidate_id,
        last_log_index: m.last_log_index,
        last_log_term: m.last_log_term,
        leadership_transfer: m.leadership_transfer,
    }
}

pub fn request_vote_reply_from_proto(m: pb::RequestVoteReply) -> RequestVoteReply {
    RequestVoteReply {
        term: m.term,
        vote_granted: m.vote_granted,
    }
}

pub fn request_vote_reply_to_proto(m: RequestVoteReply) -> pb::RequestVoteReply {
    pb::RequestVoteReply {
        term: m.term,
        vote_granted: m.vote_granted,
    }
}

/// Decode an AppendEntries; the error says what is wrong with it.
pub fn append_entries_from_proto(m: pb::AppendEntriesRequest) -> Result<AppendEntries, String> {
    let mut entries = Vec::with_capacity(m.entries.len());
    for (position, entry) in m.entries.into_iter().enumerate() {
        // §5.3: the entries follow prev_log_index without gaps.
        let expected = m.prev_log_index + 1 + position as u64;
        if entry.index != expected {
            return Err(format!(
                "entry {} of AppendEntries has index {}, expected {expected}",
                position + 1,
                entry.index
            ));
        }
        let command = match pb::EntryKind::try_from(entry.kind) {
            Ok(pb::EntryKind::Command) => Command::Client(entry.command),
            Ok(pb::EntryKind::Noop) if entry.command.is_empty() => Command::Noop,
            Ok(pb::EntryKind::Noop) => {
                return Err(format!("entry {}: a no-op with a command", entry.index))
            }
            Ok(pb::EntryKind::Config) => Command::Config(
                Configuration::decode(&entry.command)
                    .map_err(|why| format!("entry {}: not a configuration: {why}", entry.index))?,
            ),
            Err(_) => {
                return Err(format!(
                    "entry {}: unknown kind {}",
                    entry.index, entry.kind
                ))
            }
        };
        entries.push(Entry {
            index: entry.index,
            term: entry.term,
            command,
        });
    }
    Ok(AppendEntries {
        term: m.term,
        leader_id: m.leader_id,
        prev_log_index: m.prev_log_index,
        prev_log_term: m.prev_log_term,
        entries,
        leader_commit: m.leader_commit,
        read_round: m.read_round,
    })
}

pub fn append_entries_to_proto(m: AppendEntries) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        term: m.term,
        leader_id: m.leader_id,
        prev_log_index: m.prev_log_index,
        prev_log_term: m.prev_log_term,
        entries: m
            .entries
            .into_iter()
            .map(|entry| {
                let (kind, command) = match entry.command {
                    Command::Client(bytes) => (pb::EntryKind::Command, bytes),
                    Command::Noop => (pb::EntryKind::Noop, Vec::new()),
                    Command::Config(c) => (pb::EntryKind::Config, c.encode()),
                };
                pb::LogEntry {
                    index: entry.index,
                    term: entry.term,
                    command,
                    kind: kind.into(),
                }
            })
            .collect(),
        leader_commit: m.leader_commit,
        read_round: m.read_round,
    }
}

pub fn append_entries_reply_from_proto(m: pb::AppendEntriesReply) -> AppendEntriesReply {
    AppendEntriesReply {
        term: m.term,
        request_term: m.request_term,
        success: m.success,
        match_index: m.match_index,
        conflict_term: m.conflict_term,
        conflict_index: m.conflict_index,
        prev_log_index: m.prev_log_index,
        read_round: m.read_round,
    }
}

pub fn append_entries_reply_to_proto(m: AppendEntriesReply) -> pb::AppendEntriesReply {
    pb::AppendEntriesReply {
        term: m.term,
        request_term: m.request_term,
        success: m.success,
        match_index: m.match_index,
        conflict_term: m.conflict_term,
        conflict_index: m.conflict_index,
        prev_log_index: m.prev_log_index,
        read_round: m.read_round,
    }
}

pub fn install_snapshot_from_proto(
    m: pb::InstallSnapshotRequest,
) -> Result<InstallSnapshot, String> {
    let configuration = match m.configuration.is_empty() {
        true => None,
        false => Some(
            Configuration::decode(&m.configuration)
                .map_err(|why| format!("InstallSnapshot: not a configuration: {why}"))?,
        ),
    };
    Ok(InstallSnapshot {
        term: m.term,
        leader_id: m.leader_id,
        last_included_index: m.last_included_index,
        last_included_term: m.last_included_term,
        offset: m.offset,
        data: m.data,
        done: m.done,
        configuration,
    })
}

pub fn install_snapshot_to_proto(m: InstallSnapshot) -> pb::InstallSnapshotRequest {
    pb::InstallSnapshotRequest {
        term: m.term,
        leader_id: m.leader_id,
        last_included_index: m.last_included_index,
        last_included_term: m.last_included_term,
        offset: m.offset,
        data: m.data,
        done: m.done,
        configuration: m
            .configuration
            .as_ref()
            .map(Configuration::encode)
            .unwrap_or_default(),
    }
}

pub fn install_snapshot_reply_from_proto(m: pb::InstallSnapshotReply) -> InstallSnapshotReply {
    InstallSnapshotReply {
        term: m.term,
        request_term: m.request_term,
        last_included_index: m.last_included_index,
        offset: m.offset,
        next_offset: m.next_offset,
        done: m.done,
    }
}

pub fn install_snapshot_reply_to_proto(m: InstallSnapshotReply) -> pb::InstallSnapshotReply {
    pb::InstallSnapshotReply {
        term: m.term,
        request_term: m.request_term,
        last_included_index: m.last_included_index,
        offset: m.offset,
        next_offset: m.next_offset,
        done: m.done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<Entry> {
        vec![
            Entry {
                index: 8,
                term: 3,
                command: Command::Noop,
            },
            Entry {
                index: 9,
                term: 3,
                command: Command::Client(b"set k v".to_vec()),
            },
            Entry {
                index: 10,
                term: 4,
                command: Command::Client(Vec::new()),
            },
        ]
    }

    fn append_entries() -> AppendEntries {
        AppendEntries {
            term: 4,
            leader_id: 2,
            prev_log_index: 7,
            prev_log_term: 3,
            entries: entries(),
            leader_commit: 9,
            read_round: 5,
        }
    }

    #[test]
    fn every_message_survives_the_round_trip() {
        let vote = RequestVote {
            term: 5,
            candidate_id: 3,
            last_log_index: 10,
            last_log_term: 4,
            leadership_transfer: false,
        };
        assert_eq!(
            request_vote_from_proto(request_vote_to_proto(vote.clone())),
            vote
        );
        let vote_reply = RequestVoteReply {
            term: 5,
            vote_granted: true,
        };
        assert_eq!(
            request_vote_reply_from_proto(request_vote_reply_to_proto(vote_reply.clone())),
            vote_reply
        );
        let append = append_entries();
        assert_eq!(
            append_entries_from_proto(append_entries_to_proto(append.clone())),
            Ok(append)
        );
        let append_reply = AppendEntriesReply {
            term: 4,
            request_term: 3,
            success: false,
            match_index: 0,
            conflict_term: 2,
            conflict_index: 6,
            prev_log_index: 9,
            read_round: 5,
        };
        assert_eq!(
            append_entries_reply_from_proto(append_entries_reply_to_proto(append_reply.clone())),
            append_reply
        );
        let snapshot = InstallSnapshot {
            term: 4,
            leader_id: 2,
            last_included_index: 100,
            last_included_term: 3,
            offset: 4096,
            data: vec![1, 2, 3],
            done: true,
            configuration: Some(Configuration::new([1, 2, 3])),
        };
        assert_eq!(
            install_snapshot_from_proto(install_snapshot_to_proto(snapshot.clone())),
            Ok(snapshot)
        );
        let snapshot_reply = InstallSnapshotReply {
            term: 4,
            request_term: 3,
            last_included_index: 100,
            offset: 4096,
            next_offset: 4099,
            done: true,
        };
        assert_eq!(
            install_snapshot_reply_from_proto(install_snapshot_reply_to_proto(
                snapshot_reply.clone()
            )),
            snapshot_reply
        );
    }

    #[test]
    fn refuses_entries_that_do_not_follow_prev_log_index() {
        let mut request = append_entries_to_proto(append_entries());
        request.entries[1].index = 10;
        assert_eq!(
            append_entries_from_proto(request),
            Err("entry 2 of AppendEntries has index 10, expected 9".to_string())
        );
        let mut request = append_entries_to_proto(append_entries());
        request.prev_log_index = 6;
        assert_eq!(
            append_entries_from_proto(request),
            Err("entry 1 of AppendEntries has index 8, expected 7".to_string())
        );
    }

    #[test]
    fn refuses_an_entry_of_unknown_kind() {
        let mut request = append_entries_to_proto(append_entries());
        request.entries[2].kind = 7;
        assert_eq!(
            append_entries_from_proto(request),
            Err("entry 10: unknown kind 7".to_string())
        );
        let mut request = append_entries_to_proto(append_entries());
        request.entries[0].command = vec![1];
        assert_eq!(
            append_entries_from_proto(request),
            Err("entry 8: a no-op with a command".to_string())
        );
    }
}
