//! The messages Raft servers exchange (Figure 2 "RequestVote RPC" and
//! "AppendEntries RPC", Figure 13 "InstallSnapshot RPC"), and two of the
//! dissertation's: PreVote (§9.6) and TimeoutNow (§3.10).
//!
//! Every RPC is two one-way messages: the request and its reply are separate
//! variants of [`Message`], so the single event-loop thread never waits for an
//! answer. The gRPC bridge (src/server/bridge.rs) turns these into the proto
//! types of proto/raft.proto and back; nothing else sees prost.

use super::log::Entry;
use super::membership::Configuration;

/// A server's id, as in `--peers 1=…,2=…`. Never 0 (0 means "none" on the wire).
pub type NodeId = u64;
/// A Raft term (§5.1). Terms start at 0 on a new server and only grow.
pub type Term = u64;
/// A position in the log. The first entry has index 1; 0 means "before the log".
pub type LogIndex = u64;

/// One message from one server to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    RequestVote(RequestVote),
    RequestVoteReply(RequestVoteReply),
    AppendEntries(AppendEntries),
    AppendEntriesReply(AppendEntriesReply),
    InstallSnapshot(InstallSnapshot),
    InstallSnapshotReply(InstallSnapshotReply),
    ReadIndex(ReadIndex),
    ReadIndexReply(ReadIndexReply),
    PreVote(PreVote),
    PreVoteReply(PreVoteReply),
    TimeoutNow(TimeoutNow),
}

/// One line for the debug log, without the payload: a 1 MiB value printed as
/// a list of numbers would cost the event loop more than writing it to disk.
impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::RequestVote(m) => write!(
                f,
                "RequestVote term {} last log {}/{}",
                m.term, m.last_log_index, m.last_log_term
            ),
            Message::RequestVoteReply(m) => {
                write!(
                    f,
                    "RequestVoteReply term {} granted {}",
                    m.term, m.vote_granted
                )
            }
            Message::AppendEntries(m) => write!(
                f,
                "AppendEntries term {} prev {}/{} entries {} commit {} read round {}",
                m.term,
                m.prev_log_index,
                m.prev_log_term,
                m.entries.len(),
                m.leader_commit,
                m.read_round
            ),
            Message::AppendEntriesReply(m) => write!(
                f,
                "AppendEntriesReply term {} success {} match {} conflict {}/{}",
                m.term, m.success, m.match_index, m.conflict_term, m.conflict_index
            ),
            Message::InstallSnapshot(m) => write!(
                f,
                "InstallSnapshot term {} through {}/{} offset {} bytes {} done {}",
                m.term,
                m.last_included_index,
                m.last_included_term,
                m.offset,
                m.data.len(),
                m.done
            ),
            Message::InstallSnapshotReply(m) => write!(
                f,
                "InstallSnapshotReply term {} through {} next offset {} done {}",
                m.term, m.last_included_index, m.next_offset, m.done
            ),
            Message::ReadIndex(m) => write!(f, "ReadIndex term {} batch {}", m.term, m.batch),
            Message::ReadIndexReply(m) => write!(
                f,
                "ReadIndexReply term {} batch {} read index {:?}",
                m.term, m.batch, m.read_index
            ),
            Message::PreVote(m) => write!(
                f,
                "PreVote term {} last log {}/{}",
                m.term, m.last_log_index, m.last_log_term
            ),
            Message::PreVoteReply(m) => write!(
                f,
                "PreVoteReply term {} for term {} granted {}",
                m.term, m.request_term, m.vote_granted
            ),
            Message::TimeoutNow(m) => write!(f, "TimeoutNow term {}", m.term),
        }
    }
}

impl Message {
    /// The sender's term: every message carries one, and Figure 2 "Rules for
    /// Servers / All Servers" compares it with our own before anything else.
    pub fn term(&self) -> Term {
        match self {
            Message::RequestVote(m) => m.term,
            Message::RequestVoteReply(m) => m.term,
            Message::AppendEntries(m) => m.term,
            Message::AppendEntriesReply(m) => m.term,
            Message::InstallSnapshot(m) => m.term,
            Message::InstallSnapshotReply(m) => m.term,
            Message::ReadIndex(m) => m.term,
            Message::ReadIndexReply(m) => m.term,
            Message::PreVote(m) => m.term,
            Message::PreVoteReply(m) => m.term,
            Message::TimeoutNow(m) => m.term,
        }
    }

    /// The message's kind, for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Message::RequestVote(_) => "RequestVote",
            Message::RequestVoteReply(_) => "RequestVoteReply",
            Message::AppendEntries(_) => "AppendEntries",
            Message::AppendEntriesReply(_) => "AppendEntriesReply",
            Message::InstallSnapshot(_) => "InstallSnapshot",
            Message::InstallSnapshotReply(_) => "InstallSnapshotReply",
            Message::ReadIndex(_) => "ReadIndex",
            Message::ReadIndexReply(_) => "ReadIndexReply",
            Message::PreVote(_) => "PreVote",
            Message::PreVoteReply(_) => "PreVoteReply",
            Message::TimeoutNow(_) => "TimeoutNow",
        }
    }

    /// Bytes of log entries or snapshot it carries: what it costs to write.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Message::AppendEntries(m) => m.entries.iter().map(|e| e.command.size()).sum(),
            Message::InstallSnapshot(m) => m.data.len(),
            _ => 0,
        }
    }

    /// True for the requests, false for the replies. (TimeoutNow has no
    /// reply: the target's RequestVote is its answer.)
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Message::RequestVote(_)
                | Message::AppendEntries(_)
                | Message::InstallSnapshot(_)
                | Message::ReadIndex(_)
                | Message::PreVote(_)
                | Message::TimeoutNow(_)
        )
    }
}

/// RequestVote RPC arguments: invoked by candidates to gather votes (§5.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVote {
    /// candidate's term
    pub term: Term,
    /// candidate requesting vote
    pub candidate_id: NodeId,
    /// index of candidate's last log entry (§5.4)
    pub last_log_index: LogIndex,
    /// term of candidate's last log entry (§5.4)
    pub last_log_term: Term,
    /// Not in Figure 2: the candidate stands because the leader handed
    /// over (TimeoutNow, dissertation §3.10), so the §6 rule that ignores
    /// RequestVote while a leader is heard from does not apply.
    pub leadership_transfer: bool,
}

/// RequestVote RPC results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestVoteReply {
    /// currentTerm, for candidate to update itself
    pub term: Term,
    /// true means candidate received vote
    pub vote_granted: bool,
}

/// AppendEntries RPC arguments: invoked by the leader to replicate log entries
/// (§5.3); also used as heartbeat (§5.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntries {
    /// leader's term
    pub term: Term,
    /// so follower can redirect clients
    pub leader_id: NodeId,
    /// index of log entry immediately preceding new ones
    pub prev_log_index: LogIndex,
    /// term of prev_log_index entry
    pub prev_log_term: Term,
    /// log entries to store (empty for heartbeat)
    pub entries: Vec<Entry>,
    /// leader's commit_index
    pub leader_commit: LogIndex,
    /// Not in Figure 2: the ReadIndex round this message confirms leadership
    /// for (dissertation §6.4); echoed in the reply. 0 = none.
    pub read_round: u64,
}

/// AppendEntries RPC results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntriesReply {
    /// currentTerm, for leader to update itself
    pub term: Term,
    /// Not in Figure 2: the term of the request this answers. A leader counts
    /// a reply (its match_index, its read_round) only when it answers a
    /// request of the leader's current term: a late reply to an older term's
    /// request carries the follower's newer term, which may be the leader's
    /// own again, but confirms nothing about it.
    pub request_term: Term,
    /// true if follower contained entry matching prev_log_index and prev_log_term
    pub success: bool,
    /// On success, the index of the last entry known to match the leader's
    /// (prev_log_index + entries.len()). A reply to an old, reordered request
    /// then cannot move match_index backwards.
    pub match_index: LogIndex,
    /// On failure, the conflict hint of §5.3 ("the follower can include the term
    /// of the conflicting entry and the first index it stores for that term"):
    /// the term at prev_log_index, or 0 when the follower's log is too short.
    pub conflict_term: Term,
    /// The first index of conflict_term, or last log index + 1 when conflict_term is 0.
    pub conflict_index: LogIndex,
    /// Echo of the request's prev_log_index: on failure, the entry the
    /// follower could not match.
    pub prev_log_index: LogIndex,
    /// Echo of the request's read_round (dissertation §6.4); 0 when the
    /// request was refused for its stale term.
    pub read_round: u64,
}

/// InstallSnapshot RPC arguments: invoked by the leader to send chunks of a
/// snapshot to a follower (§7, Figure 13).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSnapshot {
    /// leader's term
    pub term: Term,
    /// so follower can redirect clients
    pub leader_id: NodeId,
    /// the snapshot replaces all entries up through and including this index
    pub last_included_index: LogIndex,
    /// term of last_included_index
    pub last_included_term: Term,
    /// byte offset where chunk is positioned in the snapshot file
    pub offset: u64,
    /// raw bytes of the snapshot chunk, starting at offset
    pub data: Vec<u8>,
    /// true if this is the last chunk
    pub done: bool,
    /// Not in Figure 13: the configuration as of last_included_index
    /// (dissertation Figure 5.3 "lastConfig"), so that a server that
    /// installs the snapshot knows the cluster (§6). Sent with every chunk.
    pub configuration: Option<Configuration>,
}

/// InstallSnapshot RPC results. Figure 13 has only `term`; the other fields
/// tell the leader which chunk to send next without remembering requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSnapshotReply {
    /// currentTerm, for leader to update itself
    pub term: Term,
    /// the term of the request this answers (see AppendEntriesReply)
    pub request_term: Term,
    /// echo of the request's last_included_index
    pub last_included_index: LogIndex,
    /// echo of the request's offset: the leader moves its transfer on only
    /// with the answer to the chunk it has in flight
    pub offset: u64,
    /// bytes of the snapshot the follower holds so far: where the next chunk starts
    pub next_offset: u64,
    /// true once the follower has installed the whole snapshot
    pub done: bool,
}

/// Not in the paper's figures: a follower asks the leader for a read index
/// for the linearizable reads its clients sent it (dissertation §6.4: "the
/// follower could issue a request to the leader just to learn the current
/// commit index"). One message per batch of reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadIndex {
    /// follower's currentTerm: only the leader of that term may answer
    pub term: Term,
    /// the follower's number for this batch of reads, echoed in the reply
    pub batch: u64,
}

/// The leader's answer to [`ReadIndex`], once a heartbeat round has
/// confirmed it still leads (§6.4 steps 1–3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadIndexReply {
    /// currentTerm of the leader
    pub term: Term,
    /// echo of the request's batch
    pub batch: u64,
    /// the follower answers the batch once it has applied this far; None if
    /// this server cannot give one (it does not lead the request's term)
    pub read_index: Option<LogIndex>,
}

/// PreVote RPC arguments (dissertation §9.6): "a candidate would first ask
/// other servers whether its log was up-to-date enough to get their vote".
/// Sent before an election; neither side changes its term or its vote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreVote {
    /// the term the candidate would stand in: its currentTerm + 1, which it
    /// has not adopted
    pub term: Term,
    /// candidate asking
    pub candidate_id: NodeId,
    /// index of candidate's last log entry (§5.4)
    pub last_log_index: LogIndex,
    /// term of candidate's last log entry (§5.4)
    pub last_log_term: Term,
}

/// PreVote RPC results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreVoteReply {
    /// currentTerm of the server answering (not the term asked about), so a
    /// candidate that is behind in terms catches up
    pub term: Term,
    /// echo of the request's term: which pre-vote round this answers
    pub request_term: Term,
    /// true means the server would grant its vote in an election at request_term
    pub vote_granted: bool,
}

/// TimeoutNow (dissertation §3.10): sent by a leader transferring its
/// leadership, once the target's log matches its own; the target starts
/// an election at once, without waiting for its timer or a pre-vote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeoutNow {
    /// leader's term
    pub term: Term,
    /// the leader handing over
    pub leader_id: NodeId,
}
