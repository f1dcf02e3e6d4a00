//! The safety properties of the paper's Figure 3, checked after every step
//! of a simulated run:
//!
//! - Election Safety: at most one leader can be elected in a given term.
//! - Log Matching: if two logs contain an entry with the same index and term,
//!   the logs are identical in all entries up through the given index.
//! - Leader Completeness: if a log entry is committed in a given term, that
//!   entry will be present in the logs of the leaders for all higher terms.
//! - State Machine Safety: if a server has applied a log entry at a given
//!   index, no other server will ever apply a different log entry for it.
//!
//! plus: committed entries never change, and `last_applied` never goes
//! backwards while a node runs. Each check is incremental, so a long run
//! stays fast.

use std::collections::{BTreeMap, HashMap};

use crate::kv::KvStore;
use crate::raft::{Command, LogIndex, NodeId, RaftNode, Role, Term};

#[derive(Default)]
pub struct Invariants {
    /// term → the node that was leader in it
    leaders: BTreeMap<Term, NodeId>,
    /// (index, term) → (term of the previous entry, command), from every log seen
    entries: HashMap<(LogIndex, Term), (Term, Command)>,
    /// per node, the (index → term) pairs of its log already checked
    verified: BTreeMap<NodeId, BTreeMap<LogIndex, Term>>,
    /// index → (term, command) of every entry some node has seen committed
    committed: BTreeMap<LogIndex, (Term, Command)>,
    /// index → the lowest current_term of a node that saw it committed
    committed_seen_in_term: BTreeMap<LogIndex, Term>,
    /// per node, the commit index up to which its entries were recorded
    recorded_commit: BTreeMap<NodeId, LogIndex>,
    /// per node, its last_applied at the last check (reset on restart)
    last_applied: BTreeMap<NodeId, LogIndex>,
    /// (leader, term) pairs whose log was checked for Leader Completeness
    complete_leaders: BTreeMap<(NodeId, Term), ()>,
}

impl Invariants {
    /// A node (re)started: its volatile state begins again.
    pub fn node_started(&mut self, id: NodeId) {
        self.recorded_commit.remove(&id);
        self.last_applied.remove(&id);
        self.verified.remove(&id);
    }

    pub fn committed(&self) -> &BTreeMap<LogIndex, (Term, Command)> {
        &self.committed
    }

    /// Check every property over the running nodes.
    pub fn check(&mut self, nodes: &[(NodeId, &RaftNode<KvStore>)]) -> Result<(), String> {
        for &(id, node) in nodes {
            self.election_safety(id, node)?;
            self.log_matching(id, node)?;
            self.state_machine_safety(id, node)?;
        }
        for &(id, node) in nodes {
            if node.is_leader() {
                self.leader_completeness(id, node)?;
                flow_control(id, node)?;
            }
        }
        Ok(())
    }

    fn election_safety(&mut self, id: NodeId, node: &RaftNode<KvStore>) -> Result<(), String> {
        if !node.is_leader() {
            return Ok(());
        }
        let term = node.current_term();
        match self.leaders.insert(term, id) {
            Some(other) if other != id => Err(format!(
                "Election Safety (Figure 3, §5.2): n{other} and n{id} are both leader in term \
                 {term} — a server voted twice in one term (Figure 2: grant only if votedFor \
                 is null or candidateId), or a candidate counted a vote granted in another term"
            )),
            _ => Ok(()),
        }
    }

    fn log_matching(&mut self, id: NodeId, node: &RaftNode<KvStore>) -> Result<(), String> {
        let log = node.log();
        let verified = self.verified.entry(id).or_default();
        let mut index = log.last_index();
        while index > log.snapshot_index() {
            let entry = log.get(index).expect("index within the log");
            if verified.get(&index) == Some(&entry.term) {
                break;
            }
            let prev_term = log.term_at(index - 1).unwrap_or(0);
            let seen = self
                .entries
                .entry((index, entry.term))
                .or_insert_with(|| (prev_term, entry.command.clone()));
            // Same index and term must mean the same command and the same
            // predecessor; by induction the logs are then identical up to here.
            if seen.1 != entry.command || (index - 1 > log.snapshot_index() && seen.0 != prev_term)
            {
                return Err(format!(
                    "Log Matching (Figure 3, §5.3): n{id} has entry {index}@{} = {:?} after \
                     term {prev_term}, another log has {:?} after term {} — a follower appended \
                     without matching prevLogIndex and prevLogTerm (AppendEntries step 2), or \
                     kept an entry that conflicts with the leader's (step 3)",
                    entry.term, entry.command, seen.1, seen.0
                ));
            }
            verified.insert(index, entry.term);
            index -= 1;
        }
        Ok(())
    }

    fn state_machine_safety(&mut self, id: NodeId, node: &RaftNode<KvStore>) -> Result<(), String> {
        let log = node.log();
        let commit_index = node.commit_index();
        if node.last_applied() > commit_index {
            return Err(format!(
                "n{id} applied {} beyond its commit index {commit_index} (Figure 2, All \
                 Servers: apply log[lastApplied] only while commitIndex > lastApplied)",
                node.last_applied()
            ));
        }
        if commit_index > log.last_index() {
            return Err(format!(
                "n{id} commit index {commit_index} is beyond its log ({}) (Figure 2, \
                 AppendEntries step 5: commitIndex = min(leaderCommit, index of last new entry))",
                log.last_index()
            ));
        }
        let previous = self.last_applied.insert(id, node.last_applied());
        if previous.is_some_and(|p| p > node.last_applied()) {
            return Err(format!(
                "n{id} last_applied went back from {} to {} (Figure 2: each committed entry \
                 is applied once, in index order)",
                previous.unwrap(),
                node.last_applied()
            ));
        }
        let from = self.recorded_commit.get(&id).copied().unwrap_or(0);
        if from < log.snapshot_index() {
            self.record_compacted(id, node)?;
        }
        for index in (from + 1)..=commit_index {
            let Some(entry) = log.get(index) else {
                continue; // compacted into the snapshot
            };
            let seen_term = self
                .committed_seen_in_term
                .entry(index)
                .or_insert(node.current_term());
            *seen_term = (*seen_term).min(node.current_term());
            match self.committed.get(&index) {
                Some((term, command)) if *term != entry.term || *command != entry.command => {
                    return Err(format!(
                        "State Machine Safety (Figure 3, §5.4.3): n{id} committed {index}@{} = \
                         {:?}, but {index}@{term} = {command:?} was committed before — a leader \
                         was elected without a committed entry (the up-to-date check, §5.4.1), \
                         or an entry of an earlier term was committed by counting replicas \
                         (Figure 8, §5.4.2)",
                        entry.term, entry.command
                    ));
                }
                Some(_) => {}
                None => {
                    self.configuration_step(index, &entry.command)?;
                    self.committed
                        .insert(index, (entry.term, entry.command.clone()));
                }
            }
        }
        self.recorded_commit.insert(id, commit_index.max(from));
        Ok(())
    }

    /// §6: a committed configuration follows the committed one before it by
    /// one step of joint consensus — into C_old,new from C_old, out of it to
    /// C_new, or a change of learners only. A direct switch between two sets
    /// of voters could let disjoint majorities elect two leaders (Figure 10).
    fn configuration_step(&self, index: LogIndex, command: &Command) -> Result<(), String> {
        let Command::Config(new) = command else {
            return Ok(());
        };
        let previous = self
            .committed
            .range(..index)
            .rev()
            .find_map(|(at, (_, c))| match c {
                Command::Config(c) => Some((*at, c)),
                _ => None,
            });
        let Some((at, old)) = previous else {
            return Ok(());
        };
        let entering = !old.is_joint() && new.is_joint() && new.outgoing == old.voters;
        let leaving = old.is_joint() && !new.is_joint() && new.voters == old.voters;
        let learners_only = new.voters == old.voters && new.outgoing == old.outgoing;
        if entering || leaving || learners_only {
            return Ok(());
        }
        Err(format!(
            "§6: the configuration committed at {index} ({new}) does not follow the one at {at}              ({old}) through the joint configuration C_old,new: a direct switch lets disjoint              majorities of C_old and C_new elect two leaders in one term (Figure 10)"
        ))
    }

    /// Entries can be committed and compacted into a snapshot within one
    /// step, before any check sees them committed. Every entry was in some
    /// log at an earlier check, so they are recovered by walking back from
    /// the snapshot's last entry through the (index, term) → previous term
    /// links that Log Matching has verified; a link never seen leaves a hole.
    fn record_compacted(&mut self, id: NodeId, node: &RaftNode<KvStore>) -> Result<(), String> {
        let log = node.log();
        let (mut index, mut term) = (log.snapshot_index(), log.snapshot_term());
        while index > 0 {
            if let Some((committed_term, command)) = self.committed.get(&index) {
                if *committed_term != term {
                    return Err(format!(
                        "State Machine Safety: n{id}'s snapshot holds {index}@{term}, \
                         but {index}@{committed_term} = {command:?} was committed"
                    ));
                }
                break;
            }
            let Some((prev_term, command)) = self.entries.get(&(index, term)) else {
                break;
            };
            self.committed.insert(index, (term, command.clone()));
            let seen_term = self
                .committed_seen_in_term
                .entry(index)
                .or_insert(node.current_term());
            *seen_term = (*seen_term).min(node.current_term());
            term = *prev_term;
            index -= 1;
        }
        Ok(())
    }

    /// Checked once per leader and term: everything committed in an earlier
    /// term must be in the new leader's log (§5.4). What it commits later
    /// comes from its own log.
    fn leader_completeness(&mut self, id: NodeId, node: &RaftNode<KvStore>) -> Result<(), String> {
        let term = node.current_term();
        if self.complete_leaders.insert((id, term), ()).is_some() {
            return Ok(());
        }
        let log = node.log();
        for (&index, (committed_term, command)) in &self.committed {
            if self.committed_seen_in_term[&index] >= term || index <= log.snapshot_index() {
                continue;
            }
            match log.get(index) {
                Some(e) if e.term == *committed_term && e.command == *command => {}
                other => {
                    return Err(format!(
                        "Leader Completeness (Figure 3, §5.4): n{id}, leader of term {term}, \
                         lacks committed entry {index}@{committed_term} (has {other:?}) — a voter \
                         granted its vote to a candidate whose log is behind its own (§5.4.1), \
                         or an entry was counted committed before a majority stored it (§5.3)"
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Not in Figure 3, but what keeps a leader's memory and a slow follower's
/// queue bounded: per follower, at most `max_in_flight` AppendEntries with
/// entries unanswered, holding at most `max_bytes_in_flight` bytes (the
/// message that crosses it included), each at most `max_bytes_per_message`
/// unless it carries a single larger entry.
fn flow_control(id: NodeId, node: &RaftNode<KvStore>) -> Result<(), String> {
    let Role::Leader(leader) = node.role() else {
        return Ok(());
    };
    let config = node.config();
    for (peer, flow) in &leader.flow {
        let bytes = flow.bytes_in_flight();
        let too_large = flow.in_flight.iter().find(|m| {
            m.bytes > config.max_bytes_per_message
                && node
                    .log()
                    .get(m.last_index)
                    .is_some_and(|e| e.command.size() < m.bytes)
        });
        // The message that crosses the window may be a single entry larger
        // than a message's bytes.
        let largest = flow.in_flight.iter().map(|m| m.bytes).max().unwrap_or(0);
        let crossing = largest.max(config.max_bytes_per_message);
        if flow.in_flight.len() > config.max_in_flight
            || bytes > config.max_bytes_in_flight + crossing
            || too_large.is_some()
        {
            return Err(format!(
                "flow control: n{id} has {} AppendEntries ({bytes} bytes) unanswered to n{peer} \
                 (window {} messages, {} bytes; {} per message): {:?}",
                flow.in_flight.len(),
                config.max_in_flight,
                config.max_bytes_in_flight,
                config.max_bytes_per_message,
                flow.in_flight
            ));
        }
    }
    Ok(())
}
