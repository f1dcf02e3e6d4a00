//! Trust no byte from outside: what `step` checks before a message touches
//! any state. No correct server sends what is refused here, so a refused
//! message is logged and treated as lost — Raft already tolerates lost
//! messages (§5.1) — and the node keeps serving. The assertions elsewhere in
//! the core are for bugs in our own code only.

use super::log::Entry;
use super::message::{AppendEntries, InstallSnapshot, Message, NodeId, Term};
use super::state::{RaftNode, Role};
use super::state_machine::StateMachine;

/// How far beyond our own term a message's term may be. Terms grow by one
/// per election: 2^32 elections, one every 150 ms, take twenty years. A larger
/// jump can only be damage or malice, and adopting it would persist a term
/// close to overflow, where the next election cannot count up (§5.1).
pub const MAX_TERM_JUMP: Term = 1 << 32;

impl<S: StateMachine> RaftNode<S> {
    /// Any other server may write to us: a leader that is adding this server
    /// is not in its configuration yet (§6). Replies count only from the
    /// servers a leader sends to.
    fn sender_refusal(&self, from: NodeId, message: &Message) -> Option<String> {
        if from == self.config.id || from == 0 {
            return Some(format!("{from} is not another server"));
        }
        let Role::Leader(leader) = &self.role else {
            return None;
        };
        let reply = matches!(
            message,
            Message::AppendEntriesReply(_) | Message::InstallSnapshotReply(_)
        );
        (reply && !leader.next_index.contains_key(&from))
            .then(|| format!("{from} is not a server this leader sends its log to"))
    }

    /// Why `message` from `from` must be refused, or None if it may be handled.
    pub(super) fn refusal(&self, from: NodeId, message: &Message) -> Option<String> {
        if let Some(refusal) = self.sender_refusal(from, message) {
            return Some(refusal);
        }
        let term = message.term();
        if term > self.current_term().saturating_add(MAX_TERM_JUMP) {
            return Some(format!(
                "term {term} is more than {MAX_TERM_JUMP} ahead of ours ({})",
                self.current_term()
            ));
        }
        let sender_named = match message {
            Message::RequestVote(m) => m.candidate_id,
            Message::AppendEntries(m) => m.leader_id,
            Message::InstallSnapshot(m) => m.leader_id,
            Message::PreVote(m) => m.candidate_id,
            Message::TimeoutNow(m) => m.leader_id,
            _ => from,
        };
        if sender_named != from {
            return Some(format!("it names {sender_named} as its sender"));
        }
        match message {
            Message::RequestVote(m) if m.last_log_term > m.term => Some(format!(
                "the candidate's last log term {} is newer than its term {}",
                m.last_log_term, m.term
            )),
            Message::AppendEntries(m) => self.append_entries_refusal(m),
            Message::InstallSnapshot(m) => self.install_snapshot_refusal(m),
            Message::AppendEntriesReply(m) if m.request_term > m.term => Some(format!(
                "it answers a request of term {}, newer than its own term {}",
                m.request_term, m.term
            )),
            Message::InstallSnapshotReply(m) if m.request_term > m.term => Some(format!(
                "it answers a request of term {}, newer than its own term {}",
                m.request_term, m.term
            )),
            // Within our term our log only grows, and we sent nothing past
            // its end: no follower holds more of it than that.
            Message::AppendEntriesReply(m)
                if m.request_term == self.current_term()
                    && m.success
                    && m.match_index > self.persistent.log().last_index() =>
            {
                Some(format!(
                    "it matches entry {}, past our last entry {}",
                    m.match_index,
                    self.persistent.log().last_index()
                ))
            }
            Message::InstallSnapshotReply(m)
                if m.request_term == self.current_term()
                    && m.last_included_index > self.persistent.log().last_index() =>
            {
                Some(format!(
                    "it answers a snapshot through {}, past our last entry {}",
                    m.last_included_index,
                    self.persistent.log().last_index()
                ))
            }
            _ => pre_vote_refusal(message),
        }
    }

    /// The entries of an AppendEntries follow prev_log_index one by one, with
    /// terms that never decrease and never exceed the leader's term (a leader
    /// appends entries only in its own term, §5.3). And a leader of our term
    /// or a newer one holds every entry we know committed (Leader
    /// Completeness, §5.4): an AppendEntries that would overwrite one of them
    /// did not come from a correct leader.
    fn append_entries_refusal(&self, m: &AppendEntries) -> Option<String> {
        if m.prev_log_term > m.term {
            return Some(format!(
                "prev_log_term {} is newer than the leader's term {}",
                m.prev_log_term, m.term
            ));
        }
        let mut previous = (m.prev_log_index, m.prev_log_term);
        for &Entry { index, term, .. } in &m.entries {
            let (previous_index, previous_term) = previous;
            if Some(index) != previous_index.checked_add(1) {
                return Some(format!(
                    "entry {index} does not follow entry {previous_index}"
                ));
            }
            if term == 0 || term < previous_term || term > m.term {
                return Some(format!(
                    "entry {index} has term {term}, after term {previous_term}, in a message of term {}",
                    m.term
                ));
            }
            previous = (index, term);
        }
        if m.term < self.current_term() {
            return None; // refused by the receiver's rule 1, quietly
        }
        let committed = m
            .entries
            .iter()
            .filter(|e| e.index > self.persistent.log().snapshot_index())
            .take_while(|e| e.index <= self.commit_index);
        for entry in committed {
            let ours = self.persistent.log().term_at(entry.index);
            if ours != Some(entry.term) {
                return Some(format!(
                    "entry {}@{} would overwrite committed entry {}@{}",
                    entry.index,
                    entry.term,
                    entry.index,
                    ours.unwrap_or(0)
                ));
            }
        }
        None
    }

    /// A snapshot covers at least entry 1, of a term no newer than the
    /// leader's, and fits within `max_snapshot_bytes`: a follower gathers
    /// the chunks in memory, so an endless stream of chunks must not grow it
    /// without bound.
    fn install_snapshot_refusal(&self, m: &InstallSnapshot) -> Option<String> {
        if m.last_included_index == 0 || m.last_included_term == 0 || m.last_included_term > m.term
        {
            return Some(format!(
                "a snapshot through {}@{} in a message of term {}",
                m.last_included_index, m.last_included_term, m.term
            ));
        }
        let max = self.config.max_snapshot_bytes;
        match m.offset.checked_add(m.data.len() as u64) {
            Some(end) if end <= max => None,
            _ => Some(format!(
                "a chunk at offset {} of {} bytes runs past the {max}-byte limit on snapshots",
                m.offset,
                m.data.len()
            )),
        }
    }
}

/// A pre-vote asks about a term after the candidate's own, so after its
/// last entry's; a grant comes from a server whose term is older than the
/// one asked about (§9.6).
fn pre_vote_refusal(message: &Message) -> Option<String> {
    match message {
        Message::PreVote(m) if m.last_log_term >= m.term => Some(format!(
            "the pre-vote's last log term {} is not older than the term {} it asks about",
            m.last_log_term, m.term
        )),
        Message::PreVoteReply(m) if m.vote_granted && m.term >= m.request_term => Some(format!(
            "it grants a pre-vote for term {} from term {}",
            m.request_term, m.term
        )),
        _ => None,
    }
}
