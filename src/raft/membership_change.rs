//! §6 at the leader: how a membership change moves through the log.
//!
//! A new server first joins as a learner (§6: "the new servers join the
//! cluster as non-voting members") and is caught up. A voter joins or
//! leaves through the joint configuration C_old,new: once C_old,new is
//! committed the leader appends C_new, and once C_new is committed a leader
//! that is not in it steps down. One change at a time: a change starts only
//! when the configuration in force is committed.
//!
//! The leader does not keep the plan in a list of steps: each time an entry
//! commits, it looks at the committed configuration and appends the one
//! entry that brings it closer to the goal (`advance_change`). A new leader
//! that finds a joint configuration finishes it the same way
//! (`leave_joint`), so a crash in any phase of a change leaves a cluster
//! that completes it or never started it.

use log::info;

use super::client::{RequestError, RequestId};
use super::log::{Command, Entry};
use super::membership::{Configuration, MAX_ADDRESS_BYTES, MAX_MEMBERS};
use super::message::{LogIndex, NodeId};
use super::state::{RaftNode, Role};
use super::state_machine::StateMachine;

/// A change a client asks the leader for (`Request::ChangeMembership`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add `id`, served at `address`, as a learner (§6: non-voting).
    AddLearner { id: NodeId, address: String },
    /// Add `id` as a voter: as a learner first, caught up, then through
    /// C_old,new.
    AddVoter { id: NodeId, address: String },
    /// Make learner `id` a voter, once it has caught up.
    Promote { id: NodeId },
    /// Remove `id`, voter or learner (the leader itself included).
    Remove { id: NodeId },
}

impl MembershipChange {
    /// The server the change is about.
    pub fn id(&self) -> NodeId {
        match self {
            MembershipChange::AddLearner { id, .. }
            | MembershipChange::AddVoter { id, .. }
            | MembershipChange::Promote { id }
            | MembershipChange::Remove { id } => *id,
        }
    }
}

/// How logs and errors name a change: `adding node 7 (127.0.0.1:7007) as a voter`.
impl std::fmt::Display for MembershipChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MembershipChange::AddLearner { id, address } => {
                write!(f, "adding node {id} ({address}) as a learner")
            }
            MembershipChange::AddVoter { id, address } => {
                write!(f, "adding node {id} ({address}) as a voter")
            }
            MembershipChange::Promote { id } => write!(f, "promoting learner {id} to voter"),
            MembershipChange::Remove { id } => write!(f, "removing node {id}"),
        }
    }
}

/// The change a leader is carrying out.
#[derive(Clone, Debug)]
pub struct ChangeInProgress {
    pub change: MembershipChange,
    /// the client request, answered when the change is done or fails
    pub request: RequestId,
    /// while a learner catches up before it may vote
    pub catch_up: Option<CatchUp>,
}

/// A learner catching up with the leader's log (§6: "the leader should
/// abort the change if the new server is unavailable or is so slow that
/// it will never catch up").
#[derive(Clone, Copy, Debug)]
pub struct CatchUp {
    /// the leader's last index when the catch-up began: the learner is
    /// caught up once it holds that entry
    pub target: LogIndex,
    /// the learner's progress when last seen to move: its match_index and
    /// the offset of the snapshot it is being sent
    pub progress: (LogIndex, u64),
    /// ticks since it last moved; after `CATCH_UP_IDLE_TIMEOUTS` election
    /// timeouts the change is abandoned
    pub idle: u64,
}

/// How many (maximum) election timeouts a learner may make no progress at
/// all before a change that waits on it fails.
const CATCH_UP_IDLE_TIMEOUTS: u64 = 3;

impl<S: StateMachine> RaftNode<S> {
    /// Start `change` for client `request`, or refuse it.
    pub(super) fn change_membership(&mut self, request: RequestId, change: MembershipChange) {
        match self.change_refusal(&change) {
            Some(error) => self.outbox.respond(request, Err(error)),
            None => {
                info!(
                    "node {} term {}: membership change started, {change}, from {}",
                    self.config.id,
                    self.current_term(),
                    self.configuration()
                );
                if let Role::Leader(leader) = &mut self.role {
                    leader.change = Some(Box::new(ChangeInProgress {
                        change,
                        request,
                        catch_up: None,
                    }));
                }
                self.advance_change();
            }
        }
    }

    /// Why `change` cannot start now, if it cannot.
    fn change_refusal(&self, change: &MembershipChange) -> Option<RequestError> {
        let Role::Leader(leader) = &self.role else {
            return Some(RequestError::NotLeader {
                leader: self.leader_id,
            });
        };
        let configuration = self.configuration();
        let index = self.configuration_index();
        if let Some(change) = &leader.change {
            return Some(RequestError::ChangeInProgress(format!(
                "{} is in progress",
                change.change
            )));
        }
        if let Some(transfer) = &leader.transfer {
            return Some(RequestError::TransferInProgress {
                target: transfer.target,
            });
        }
        // A new leader learns what is committed from its no-op (§8).
        if index > self.commit_index || leader.noop_index > self.commit_index {
            return Some(RequestError::ChangeInProgress(format!(
                "the configuration at index {index} ({configuration}) is not committed yet"
            )));
        }
        self.target_refusal(change)
            .map(RequestError::MembershipRefused)
    }

    /// Why `change` makes no sense for the configuration in force, if it does not.
    fn target_refusal(&self, change: &MembershipChange) -> Option<String> {
        let configuration = self.configuration();
        let refused = Some;
        let id = change.id();
        let role = if configuration.is_voter(id) {
            "a voter"
        } else {
            "a learner"
        };
        match change {
            _ if id == 0 => refused("0 is not a node id".into()),
            MembershipChange::AddLearner { .. } | MembershipChange::AddVoter { .. }
                if configuration.is_voter(id) =>
            {
                refused(format!("node {id} is already {role}"))
            }
            MembershipChange::AddLearner { .. } if configuration.contains(id) => {
                refused(format!("node {id} is already {role}"))
            }
            MembershipChange::AddLearner { address, .. }
            | MembershipChange::AddVoter { address, .. } => self.address_refusal(id, address),
            MembershipChange::Promote { .. } if !configuration.learners.contains(&id) => {
                refused(match configuration.contains(id) {
                    true => format!("node {id} is already a voter"),
                    false => format!("node {id} is not a member; add it first"),
                })
            }
            MembershipChange::Promote { .. } => None,
            MembershipChange::Remove { .. } if !configuration.contains(id) => {
                refused(format!("node {id} is not a member"))
            }
            MembershipChange::Remove { .. }
                if configuration.voters.len() == 1 && configuration.voters.contains(&id) =>
            {
                refused(format!(
                    "node {id} is the only voter: the cluster would have none"
                ))
            }
            MembershipChange::Remove { .. } => None,
        }
    }

    /// Why `address` cannot serve new member `id`, if it cannot.
    fn address_refusal(&self, id: NodeId, address: &str) -> Option<String> {
        let configuration = self.configuration();
        if let Some(known) = configuration.addresses.get(&id) {
            // AddVoter of a learner: it is promoted, where it already is.
            return (known != address)
                .then(|| format!("node {id} is a learner at {known}, not at {address}"));
        }
        if configuration.members().len() >= MAX_MEMBERS {
            return Some(format!("the cluster has {MAX_MEMBERS} members already"));
        }
        if address.is_empty() || address.len() > MAX_ADDRESS_BYTES {
            return Some(format!(
                "an address is 1 to {MAX_ADDRESS_BYTES} bytes, HOST:PORT"
            ));
        }
        let taken = configuration.addresses.iter().find(|(_, a)| *a == address);
        taken.map(|(other, _)| format!("{address} is node {other}'s address"))
    }

    /// What the leader does each time its log or commit index moves (§6):
    /// leave a committed joint configuration, take the change in progress
    /// one step further, and step down once a committed configuration no
    /// longer counts it as a voter.
    pub(super) fn advance_membership(&mut self) {
        if !self.is_leader() {
            return;
        }
        self.leave_joint();
        self.advance_change();
        let committed = self.configuration_index() <= self.commit_index;
        let voter = self.configuration().is_voter(self.config.id);
        if committed && !voter {
            info!(
                "node {} term {}: the committed configuration ({}) does not count this server as a voter; stepping down (§6)",
                self.config.id,
                self.current_term(),
                self.configuration()
            );
            self.become_follower(self.current_term(), None);
        }
    }

    /// §6: "Once C_old,new has been committed ... it is now safe for the
    /// leader to create a log entry describing C_new".
    fn leave_joint(&mut self) {
        // BEGIN SOLUTION membership
        let configuration = self.configuration();
        if !configuration.is_joint() || self.configuration_index() > self.commit_index {
            return;
        }
        let mut new = configuration.clone();
        new.outgoing.clear();
        // The addresses of the servers that left are not needed any more.
        let members = new.members();
        new.addresses.retain(|id, _| members.contains(id));
        self.append_configuration(new);
        // SKELETON
        // // Given: self.configuration(), self.configuration_index(),
        // // self.commit_index, self.append_configuration(configuration).
        // END SOLUTION
    }

    /// Take the change in progress one step: once the configuration in
    /// force is committed, append the next one, or answer the client.
    fn advance_change(&mut self) {
        let Role::Leader(leader) = &self.role else {
            return;
        };
        let Some(progress) = leader.change.as_deref() else {
            return;
        };
        if self.configuration_index() > self.commit_index {
            return; // the last step is not committed yet
        }
        let change = progress.change.clone();
        // BEGIN SOLUTION membership
        let current = self.configuration().clone();
        let mut next = current.clone();
        let id = change.id();
        match &change {
            MembershipChange::AddLearner { address: at, .. }
            | MembershipChange::AddVoter { address: at, .. }
                if !current.contains(id) =>
            {
                next.learners.insert(id);
                next.addresses.insert(id, at.clone());
            }
            MembershipChange::AddVoter { .. } | MembershipChange::Promote { .. }
                if current.learners.contains(&id) =>
            {
                if !self.caught_up(id) {
                    return;
                }
                // C_old,new: the new server votes in C_new only.
                next.learners.remove(&id);
                next.outgoing = current.voters.clone();
                next.voters.insert(id);
            }
            MembershipChange::Remove { .. } if current.learners.contains(&id) => {
                next.learners.remove(&id);
                next.addresses.remove(&id);
            }
            MembershipChange::Remove { .. } if current.voters.contains(&id) => {
                next.outgoing = current.voters.clone();
                next.voters.remove(&id);
            }
            // The configuration in force, committed, is the goal.
            _ => return self.end_change(Ok(())),
        }
        self.append_configuration(next);
        // SKELETON
        // // Given: self.configuration(), self.append_configuration(next),
        // // self.end_change(result), and, for a learner that must catch up
        // // first, leader.match_index and Leader::change's catch_up.
        // let _ = (change, Self::end_change, Self::append_configuration);
        // todo!("milestone 6 (membership): take the change one step")
        // END SOLUTION
    }

    // BEGIN SOLUTION membership
    /// Whether learner `id` has caught up, starting the watch if not.
    fn caught_up(&mut self, id: NodeId) -> bool {
        let last_index = self.log().last_index();
        let Role::Leader(leader) = &mut self.role else {
            return false;
        };
        let matched = leader.match_index.get(&id).copied().unwrap_or(0);
        let Some(change) = leader.change.as_deref_mut() else {
            return false;
        };
        let catch_up = change.catch_up.get_or_insert(CatchUp {
            target: last_index,
            progress: (matched, 0),
            idle: 0,
        });
        matched >= catch_up.target
    }
    // SKELETON
    // END SOLUTION

    /// A leader's tick: a learner the change waits on that has made no
    /// progress for a few election timeouts fails the change. The learner
    /// stays a learner; a later promote tries again.
    pub(super) fn membership_tick(&mut self) {
        let timeout = CATCH_UP_IDLE_TIMEOUTS * self.config.election_timeout_ticks.1;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let Some(change) = leader.change.as_deref_mut() else {
            return;
        };
        let id = change.change.id();
        let Some(catch_up) = &mut change.catch_up else {
            return;
        };
        let snapshot_offset = leader
            .flow
            .get(&id)
            .and_then(|flow| flow.snapshot.as_ref())
            .map_or(0, |transfer| transfer.offset);
        let matched = leader.match_index.get(&id).copied().unwrap_or(0);
        if (matched, snapshot_offset) != catch_up.progress {
            catch_up.progress = (matched, snapshot_offset);
            catch_up.idle = 0;
        } else {
            catch_up.idle += 1;
        }
        if catch_up.idle >= timeout {
            let why = format!(
                "node {id} made no progress catching up for {timeout} ticks (it holds entries through {matched} of {}); it stays a learner",
                catch_up.target
            );
            self.end_change(Err(RequestError::MembershipRefused(why)));
        } else {
            self.advance_change();
        }
    }

    /// Answer the change in progress and forget it.
    fn end_change(&mut self, result: Result<(), RequestError>) {
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let Some(change) = leader.change.take() else {
            return;
        };
        info!(
            "node {} term {}: membership change ({}) {}: {}",
            self.config.id,
            self.current_term(),
            change.change,
            if result.is_ok() { "done" } else { "failed" },
            self.configuration()
        );
        self.outbox
            .respond(change.request, result.map(|()| Vec::new()));
    }

    /// Append `configuration` as the leader, skipping every rule above: one
    /// change at a time, learners first, C_old,new between. Only tests call
    /// it, to show what those rules prevent (Figure 10). False if not leader.
    #[doc(hidden)]
    pub fn append_configuration_unchecked(&mut self, configuration: Configuration) -> bool {
        if !self.is_leader() {
            return false;
        }
        self.append_configuration(configuration);
        true
    }

    /// Append `configuration` as the leader: in force from now on (§6).
    fn append_configuration(&mut self, configuration: Configuration) {
        debug_assert!(configuration.invalid().is_none(), "{configuration:?}");
        info!(
            "node {} term {}: appending configuration {configuration}",
            self.config.id,
            self.current_term()
        );
        let entry = Entry {
            index: self.log().last_index() + 1,
            term: self.current_term(),
            command: Command::Config(configuration),
        };
        self.append_as_leader(vec![entry]);
    }

    /// Notice whether the configuration in force removed this server (§6),
    /// and say so once: it no longer votes, stands for election or serves
    /// clients. Called whenever the log may have changed.
    pub(super) fn notice_removal(&mut self) {
        let me = self.config.id;
        if self.configuration().contains(me) {
            self.was_member = true;
            self.removed_at = None;
            return;
        }
        if !self.was_member || self.removed_at.is_some() {
            return;
        }
        let index = self.configuration_index();
        self.removed_at = Some(index);
        log::warn!(
            "node {me} term {}: removed from the cluster by the configuration at index {index} ({}); no longer voting or serving",
            self.current_term(),
            self.configuration()
        );
    }
}
