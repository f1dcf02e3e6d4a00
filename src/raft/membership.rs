//! §6 "Cluster membership changes" (Figure 11): a configuration is a log
//! entry, and "a server always uses the latest configuration in its log,
//! regardless of whether the entry is committed". A change goes through the
//! joint configuration C_old,new, in which "agreement (for elections and
//! entry commitment) requires separate majorities from both the old and new
//! configurations", and then to C_new. New servers first join "as
//! non-voting members" (learners) and are caught up before they count.
//!
//! This file holds the configuration itself and its encoding; the leader's
//! side of a change is in `membership_change.rs`.

use std::collections::{BTreeMap, BTreeSet};

use super::message::NodeId;

/// The most members a configuration may hold (a bound on what a peer or a
/// file can make us allocate).
pub const MAX_MEMBERS: usize = 256;
/// The longest address a member may have, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 255;

/// One cluster configuration: who votes, who only listens, and where each
/// one is served.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Configuration {
    /// the voting members of C_new (or of the only configuration)
    pub voters: BTreeSet<NodeId>,
    /// the voting members of C_old while this is the joint configuration
    /// C_old,new (§6); empty otherwise
    pub outgoing: BTreeSet<NodeId>,
    /// non-voting members (§6): they receive the log, but count in no
    /// majority and never start an election
    pub learners: BTreeSet<NodeId>,
    /// where each member is served, as `HOST:PORT`. Opaque to the core; it
    /// travels with the configuration so that every server learns where a
    /// new member is. Empty in the simulated cluster.
    pub addresses: BTreeMap<NodeId, String>,
}

impl Configuration {
    /// A configuration of `voters` alone, as a cluster starts.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Configuration {
            voters: voters.into_iter().collect(),
            ..Configuration::default()
        }
    }

    /// Whether this is the joint configuration C_old,new.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether `id` votes (in C_old or C_new).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    /// Whether `id` is a member in any role.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every member: voters of both configurations and learners, in id order.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let voters = self.voters.iter().chain(&self.outgoing);
        voters.chain(&self.learners).copied().collect()
    }

    /// Every voter of either configuration, in id order.
    pub fn all_voters(&self) -> BTreeSet<NodeId> {
        self.voters.union(&self.outgoing).copied().collect()
    }

    /// Whether `granted` holds a majority of the voters — of both C_old and
    /// C_new in a joint configuration (§6). Servers that are not voters
    /// count for nothing.
    pub fn has_quorum(&self, granted: &BTreeSet<NodeId>) -> bool {
        let majority_of = |voters: &BTreeSet<NodeId>| {
            voters.is_empty() || voters.intersection(granted).count() > voters.len() / 2
        };
        // BEGIN SOLUTION membership
        !self.voters.is_empty() && majority_of(&self.voters) && majority_of(&self.outgoing)
        // SKELETON
        // // C_new alone: as if no configuration were ever joint.
        // !self.voters.is_empty() && majority_of(&self.voters)
        // END SOLUTION
    }

    /// The highest value a majority has reached: for the commit rule,
    /// `value` is each voter's match index, and the result the highest
    /// index stored on a majority (of both configurations when joint, §6).
    pub fn quorum_value(&self, value: impl Fn(NodeId) -> u64) -> u64 {
        let of = |voters: &BTreeSet<NodeId>| {
            let mut values: Vec<u64> = voters.iter().map(|&id| value(id)).collect();
            values.sort_unstable_by(|a, b| b.cmp(a));
            values.get(voters.len() / 2).copied().unwrap_or(u64::MAX)
        };
        if self.voters.is_empty() {
            return 0;
        }
        // BEGIN SOLUTION membership
        of(&self.voters).min(of(&self.outgoing))
        // SKELETON
        // // C_new alone: as if no configuration were ever joint.
        // of(&self.voters)
        // END SOLUTION
    }

    /// What is wrong with this configuration, if anything: every entry a
    /// leader appends passes, so a failure is damage or a bug.
    pub fn invalid(&self) -> Option<String> {
        let members = self.members();
        if self.voters.is_empty() {
            return Some("it has no voters".into());
        }
        if members.len() > MAX_MEMBERS {
            return Some(format!(
                "it has {} members, over {MAX_MEMBERS}",
                members.len()
            ));
        }
        if members.contains(&0) {
            return Some("it names node 0".into());
        }
        if let Some(id) = self.learners.iter().find(|&&id| self.is_voter(id)) {
            return Some(format!("node {id} is both a voter and a learner"));
        }
        if let Some(id) = self.addresses.keys().find(|&&id| !members.contains(&id)) {
            return Some(format!("it gives an address for node {id}, not a member"));
        }
        None
    }

    /// The encoding shared by the log file and the wire: a version byte,
    /// then voters, outgoing and learners as a count and ids, then the
    /// addresses, all little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![ENCODING_VERSION];
        for set in [&self.voters, &self.outgoing, &self.learners] {
            bytes.extend_from_slice(&(set.len() as u16).to_le_bytes());
            for id in set {
                bytes.extend_from_slice(&id.to_le_bytes());
            }
        }
        bytes.extend_from_slice(&(self.addresses.len() as u16).to_le_bytes());
        for (id, address) in &self.addresses {
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.push(address.len() as u8);
            bytes.extend_from_slice(address.as_bytes());
        }
        bytes
    }

    /// Decode what [`Configuration::encode`] made, refusing anything else
    /// (these bytes come from a peer or a file).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut reader = Reader { bytes, at: 0 };
        let version = reader.take(1)?[0];
        if version != ENCODING_VERSION {
            return Err(format!(
                "configuration encoding {version}, but this build reads {ENCODING_VERSION}"
            ));
        }
        let mut sets = Vec::new();
        for _ in 0..3 {
            let count = reader.count()?;
            let mut set = BTreeSet::new();
            for _ in 0..count {
                set.insert(reader.u64()?);
            }
            sets.push(set);
        }
        let mut addresses = BTreeMap::new();
        for _ in 0..reader.count()? {
            let id = reader.u64()?;
            let len = reader.take(1)?[0] as usize;
            let address = std::str::from_utf8(reader.take(len)?)
                .map_err(|_| format!("the address of node {id} is not UTF-8"))?;
            addresses.insert(id, address.to_string());
        }
        if reader.at != bytes.len() {
            return Err(format!("{} bytes follow it", bytes.len() - reader.at));
        }
        let learners = sets.pop().unwrap_or_default();
        let outgoing = sets.pop().unwrap_or_default();
        let voters = sets.pop().unwrap_or_default();
        let configuration = Configuration {
            voters,
            outgoing,
            learners,
            addresses,
        };
        match configuration.invalid() {
            Some(why) => Err(why),
            None => Ok(configuration),
        }
    }
}

impl std::fmt::Display for Configuration {
    /// `voters 1,2,3 learners 4`, or, joint, `voters 1,2,4 (joint with 1,2,3)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |set: &BTreeSet<NodeId>| {
            let ids: Vec<String> = set.iter().map(|id| id.to_string()).collect();
            ids.join(",")
        };
        write!(f, "voters {}", list(&self.voters))?;
        if self.is_joint() {
            write!(f, " (joint with {})", list(&self.outgoing))?;
        }
        if !self.learners.is_empty() {
            write!(f, " learners {}", list(&self.learners))?;
        }
        Ok(())
    }
}

const ENCODING_VERSION: u8 = 1;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, len: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| format!("it ends at byte {}", self.bytes.len()))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn count(&mut self) -> Result<usize, String> {
        let count = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        if count > MAX_MEMBERS {
            return Err(format!("it lists {count} members, over {MAX_MEMBERS}"));
        }
        Ok(count)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joint() -> Configuration {
        Configuration {
            voters: BTreeSet::from([1, 2, 4]),
            outgoing: BTreeSet::from([1, 2, 3]),
            learners: BTreeSet::from([5]),
            addresses: BTreeMap::from([(1, "127.0.0.1:7001".into()), (5, "h:1".into())]),
        }
    }

    #[test]
    fn encoding_round_trips_and_refuses_damage() {
        let c = joint();
        let bytes = c.encode();
        assert_eq!(Configuration::decode(&bytes), Ok(c));
        for len in 0..bytes.len() {
            assert!(
                Configuration::decode(&bytes[..len]).is_err(),
                "cut at {len}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Configuration::decode(&longer).is_err());
        let mut both = joint();
        both.learners.insert(4);
        assert!(Configuration::decode(&both.encode()).is_err());
        assert!(Configuration::decode(&Configuration::default().encode()).is_err());
    }

    #[test]
    fn a_joint_configuration_needs_both_majorities() {
        let c = joint();
        // 1 and 2 are a majority of both {1,2,3} and {1,2,4}.
        assert!(c.has_quorum(&BTreeSet::from([1, 2])));
        // 3 and 4 are a majority of neither; 1, 4 only of the new one.
        assert!(!c.has_quorum(&BTreeSet::from([3, 4])));
        assert!(!c.has_quorum(&BTreeSet::from([1, 4])));
        assert!(c.has_quorum(&BTreeSet::from([1, 3, 4])));
        // A learner counts for nothing.
        assert!(!c.has_quorum(&BTreeSet::from([1, 5])));
        // Matches: 1:9 2:5 3:7 4:8 → new {9,5,8} → 8; old {9,5,7} → 7.
        let matches = BTreeMap::from([(1, 9), (2, 5), (3, 7), (4, 8), (5, 100)]);
        assert_eq!(c.quorum_value(|id| matches[&id]), 7);
        let single = Configuration::new([1, 2, 3]);
        assert_eq!(single.quorum_value(|id| matches[&id]), 7);
        assert_eq!(Configuration::new([1]).quorum_value(|id| matches[&id]), 9);
    }
}
