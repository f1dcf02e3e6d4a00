//! One-line descriptions of messages for the trace, e.g.
//! `AppendEntries term=3 prev=4@2 [5@3..7@3] commit=4`.

use crate::raft::{Entry, Message};

pub fn describe(message: &Message) -> String {
    match message {
        Message::RequestVote(m) => format!(
            "RequestVote term={} last={}@{}",
            m.term, m.last_log_index, m.last_log_term
        ),
        Message::RequestVoteReply(m) => format!(
            "RequestVoteReply term={} {}",
            m.term,
            if m.vote_granted { "granted" } else { "refused" }
        ),
        Message::PreVote(m) => format!(
            "PreVote term={} last={}@{}",
            m.term, m.last_log_index, m.last_log_term
        ),
        Message::PreVoteReply(m) => format!(
            "PreVoteReply term={} for={} {}",
            m.term,
            m.request_term,
            if m.vote_granted { "granted" } else { "refused" }
        ),
        Message::TimeoutNow(m) => format!("TimeoutNow term={}", m.term),
        Message::AppendEntries(m) => {
            let mut s = format!(
                "AppendEntries term={} prev={}@{} {} commit={}",
                m.term,
                m.prev_log_index,
                m.prev_log_term,
                entries(&m.entries),
                m.leader_commit
            );
            if m.read_round > 0 {
                s += &format!(" read={}", m.read_round);
            }
            s
        }
        Message::AppendEntriesReply(m) => {
            let mut s = if m.success {
                format!(
                    "AppendEntriesReply term={} ok match={}",
                    m.term, m.match_index
                )
            } else {
                format!(
                    "AppendEntriesReply term={} reject conflict={}@{}",
                    m.term, m.conflict_index, m.conflict_term
                )
            };
            // The echo the leader counts as confirming a ReadIndex round (§6.4).
            if m.read_round > 0 {
                s += &format!(" read={}", m.read_round);
            }
            s
        }
        Message::InstallSnapshot(m) => format!(
            "InstallSnapshot term={} last={}@{} offset={} len={}{}",
            m.term,
            m.last_included_index,
            m.last_included_term,
            m.offset,
            m.data.len(),
            if m.done { " done" } else { "" }
        ),
        Message::InstallSnapshotReply(m) => format!(
            "InstallSnapshotReply term={} last={} next_offset={}{}",
            m.term,
            m.last_included_index,
            m.next_offset,
            if m.done { " done" } else { "" }
        ),
        Message::ReadIndex(m) => format!("ReadIndex term={} batch={}", m.term, m.batch),
        Message::ReadIndexReply(m) => match m.read_index {
            Some(index) => format!(
                "ReadIndexReply term={} batch={} index={index}",
                m.term, m.batch
            ),
            None => format!("ReadIndexReply term={} batch={} refused", m.term, m.batch),
        },
    }
}

fn entries(entries: &[Entry]) -> String {
    match entries {
        [] => "[]".to_string(),
        [e] => format!("[{}@{}]", e.index, e.term),
        [first, .., last] => format!(
            "[{}@{}..{}@{}]",
            first.index, first.term, last.index, last.term
        ),
    }
}

/// Bytes of entries or snapshot data a message carries (for the bytes-bound tests).
pub fn payload_bytes(message: &Message) -> u64 {
    match message {
        Message::AppendEntries(m) => m.entries.iter().map(|e| e.command.size() as u64).sum(),
        Message::InstallSnapshot(m) => m.data.len() as u64,
        _ => 0,
    }
}
