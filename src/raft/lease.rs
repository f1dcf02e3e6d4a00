//! Lease-based reads (dissertation §6.4.1), an option, off by default.
//!
//! ReadIndex (`client.rs`) confirms leadership with a heartbeat round per
//! batch of reads. With a lease the leader skips the round: "once the
//! leader's heartbeats were acknowledged by a majority of the cluster, it
//! can assume that no other server will become leader for about an
//! election timeout". That holds because a follower that heard from the
//! leader ignores RequestVote for the minimum election timeout (§6,
//! `ignores_request_vote`) and does not time out itself before then — as
//! measured by *its* clock. So the lease is only as safe as the clocks:
//! it assumes that while the leader counts `lease_ticks`, no follower
//! counts the minimum election timeout. A follower whose clock runs too
//! fast elects a new leader while the old one still serves reads from its
//! lease, and those reads can be stale (`tests/lease.rs` shows it).
//!
//! The lease starts when the heartbeat round that a majority acknowledged
//! was *sent*, never when the acknowledgements arrived: with a lease on,
//! every heartbeat starts a new read round, and the leader remembers when.

use super::message::LogIndex;
use super::state::{RaftNode, Role};
use super::state_machine::StateMachine;

impl<S: StateMachine> RaftNode<S> {
    /// Whether reads may be served from the lease now: a round sent less
    /// than `lease_ticks` ago (by the leader's clock) has been acknowledged
    /// by a majority, and no leadership transfer is under way (its target
    /// is told to stand at once, §3.10, lease or not).
    pub fn lease_holds(&self) -> bool {
        let Role::Leader(leader) = &self.role else {
            return false;
        };
        if self.config.lease_ticks == 0 || leader.transfer.is_some() {
            return false;
        }
        let confirmed = self.confirmed_read_round();
        let sent_at = leader
            .lease
            .rounds_sent_at
            .iter()
            .rev()
            .find(|&&(round, _)| round <= confirmed);
        sent_at.is_some_and(|&(_, at)| leader.lease.ticks < at + self.config.lease_ticks)
    }

    /// With a lease on, a heartbeat starts a new read round, so that each
    /// one can renew the lease; the leader notes when each round left.
    pub(super) fn note_round_sent(&mut self, new_round: bool) {
        if self.config.lease_ticks == 0 {
            return;
        }
        let confirmed = self.confirmed_read_round();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        if new_round {
            leader.read_round += 1;
        }
        let noted = leader.lease.rounds_sent_at.back().map(|&(round, _)| round);
        if noted != Some(leader.read_round) {
            let sent = (leader.read_round, leader.lease.ticks);
            leader.lease.rounds_sent_at.push_back(sent);
        }
        // Only the newest confirmed round's time matters from now on.
        while leader
            .lease
            .rounds_sent_at
            .get(1)
            .is_some_and(|&(round, _)| round <= confirmed)
        {
            leader.lease.rounds_sent_at.pop_front();
        }
    }

    /// The round a read served from the lease waits for: one confirmed
    /// already, so it waits only for the state machine to reach its read
    /// index. None if the lease does not hold (the read takes a round).
    pub(super) fn lease_read_round(&self, read_index: LogIndex) -> Option<u64> {
        let Role::Leader(leader) = &self.role else {
            return None;
        };
        // §8: before its no-op commits, a leader does not know the commit
        // index, lease or not.
        let knows_commit_index = self.commit_index >= leader.noop_index;
        (knows_commit_index && read_index <= self.commit_index && self.lease_holds())
            .then(|| self.confirmed_read_round())
    }
}
