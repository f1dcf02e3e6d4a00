//! The client session table of dissertation §6.3, kept honest and bounded.
//!
//! - Honest: a session remembers a fingerprint of the command it applied,
//!   so a request that reuses its (client_id, sequence) for another command
//!   is refused instead of answered as a retry.
//! - Bounded: "servers must eventually discard" sessions, and "they must
//!   agree on when" (§6.3). The agreement comes from the log: every command
//!   carries the time its leader received it, the state machine's clock is
//!   the largest such time applied so far, and a session is expired when
//!   its last use is older than [`SESSION_TTL_MS`] by that clock, or evicted
//!   (least recently used, by log index) to keep at most [`MAX_SESSIONS`].
//!   Every server applies the same log, so every server discards the same
//!   sessions at the same index.

use std::collections::{BTreeMap, BTreeSet};

use super::Command;
use crate::proto::kv as pb;
use crate::raft::LogIndex;

/// How long a session lives unused, by the state machine's clock. A client
/// idle for longer must start a new session (a new client_id).
pub const SESSION_TTL_MS: u64 = 60 * 60 * 1000;
/// The most sessions kept; beyond it the least recently used is evicted.
/// A constant, not a flag: every server must discard the same sessions.
pub const MAX_SESSIONS: usize = 100_000;
/// The highest sequence accepted: 2^63 - 1, so that it survives JSON and
/// languages without unsigned integers.
pub const MAX_SEQUENCE: u64 = i64::MAX as u64;
/// Sessions discarded by one apply at most, so that one command never
/// stalls the state machine: the table still shrinks, since an apply adds
/// at most one.
const DISCARD_PER_APPLY: usize = 16;

/// Check a request's session fields: client_id 0 means no session and then
/// sequence 0; with a session, sequence is 1 ..= [`MAX_SEQUENCE`].
pub fn validate_session(client_id: u64, sequence: u64) -> Result<(), String> {
    if client_id == 0 && sequence != 0 {
        return Err(format!(
            "sequence {sequence} without a session: with client_id 0 the sequence must be 0"
        ));
    }
    if client_id != 0 && !(1..=MAX_SEQUENCE).contains(&sequence) {
        return Err(format!(
            "sequence {sequence} is out of range: client {client_id}'s sequence must be \
             1 to {MAX_SEQUENCE} (2^63 - 1)"
        ));
    }
    Ok(())
}

/// What identifies a command within a session: a CRC-32 of its kind, key and
/// value, never 0 (0 marks a session from before fingerprints).
pub fn fingerprint(command: &Command) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    let (kind, key, value) = match command {
        Command::Set { key, value, .. } => (0u8, key, Some(value)),
        Command::Delete { key, .. } => (1u8, key, None),
    };
    crc.update(&[kind]);
    // The key's length first, so that ("ab", "c") and ("a", "bc") differ.
    crc.update(&(key.len() as u64).to_le_bytes());
    crc.update(key.as_bytes());
    if let Some(value) = value {
        crc.update(value.as_bytes());
    }
    crc.finalize().max(1)
}

/// The latest request applied for one client (dissertation §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub sequence: u64,
    /// [`fingerprint`] of that command; 0 = unknown (an older snapshot's)
    pub fingerprint: u32,
    /// its answer: for a Delete, whether the key existed
    pub existed: bool,
    /// the log index of the session's last use: the eviction order
    last_used: LogIndex,
    /// the state machine's clock then, in ms since the Unix epoch; 0 = unknown
    last_used_ms: u64,
}

/// Every client's session, with the order in which they were last used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sessions {
    by_client: BTreeMap<u64, Session>,
    /// (last_used, client_id) of every session, least recently used first.
    /// The clock never goes back, so this is also oldest first by time.
    by_last_use: BTreeSet<(LogIndex, u64)>,
    /// The largest command timestamp applied (ms since the Unix epoch); 0
    /// until a command carries one.
    clock_ms: u64,
    /// [`MAX_SESSIONS`], but for tests.
    max_sessions: usize,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::with_max_sessions(MAX_SESSIONS)
    }
}

impl Sessions {
    pub fn with_max_sessions(max_sessions: usize) -> Sessions {
        Sessions {
            by_client: BTreeMap::new(),
            by_last_use: BTreeSet::new(),
            clock_ms: 0,
            max_sessions: max_sessions.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// The session of `client_id`, if it has one that was not discarded.
    pub fn get(&self, client_id: u64) -> Option<Session> {
        self.by_client.get(&client_id).copied()
    }

    /// Record that the command at `index` was applied (or answered again)
    /// for `client_id`: it becomes the client's latest and most recent use.
    pub fn record(
        &mut self,
        index: LogIndex,
        client_id: u64,
        sequence: u64,
        fingerprint: u32,
        existed: bool,
    ) {
        let session = Session {
            sequence,
            fingerprint,
            existed,
            last_used: index,
            last_used_ms: self.clock_ms,
        };
        self.put(client_id, session);
    }

    fn put(&mut self, client_id: u64, session: Session) {
        if let Some(old) = self.by_client.insert(client_id, session) {
            self.by_last_use.remove(&(old.last_used, client_id));
        }
        self.by_last_use.insert((session.last_used, client_id));
    }

    /// Move the clock to a command's timestamp, if later: leaders' clocks
    /// may differ, but this one never goes back.
    pub fn advance_clock(&mut self, timestamp_ms: u64) {
        if timestamp_ms <= self.clock_ms {
            return;
        }
        if self.clock_ms == 0 {
            // Sessions used while no command carried a time (an older
            // version's log or snapshot) count as used now.
            for session in self.by_client.values_mut() {
                session.last_used_ms = timestamp_ms;
            }
        }
        self.clock_ms = timestamp_ms;
    }

    /// Discard, least recently used first, sessions unused for longer than
    /// [`SESSION_TTL_MS`] and those beyond [`MAX_SESSIONS`]; at most
    /// [`DISCARD_PER_APPLY`]. Returns how many.
    pub fn expire(&mut self) -> usize {
        let mut discarded = 0;
        while discarded < DISCARD_PER_APPLY {
            let Some(&(_, client_id)) = self.by_last_use.first() else {
                break;
            };
            let oldest = self.by_client[&client_id];
            let too_many = self.by_client.len() > self.max_sessions;
            let too_old = oldest.last_used_ms.saturating_add(SESSION_TTL_MS) < self.clock_ms;
            if !(too_many || too_old) {
                break;
            }
            self.by_last_use.pop_first();
            self.by_client.remove(&client_id);
            discarded += 1;
        }
        discarded
    }

    /// The sessions for a snapshot, by client_id.
    pub fn to_messages(&self) -> Vec<pb::Session> {
        self.by_client
            .iter()
            .map(|(&client_id, s)| pb::Session {
                client_id,
                sequence: s.sequence,
                existed: s.existed,
                fingerprint: s.fingerprint,
                last_used: s.last_used,
                last_used_ms: s.last_used_ms,
            })
            .collect()
    }

    /// The sessions of a snapshot, exactly as they were: restoring must not
    /// discard any, or this server would differ from those that did not
    /// restore. Fields an older snapshot lacks are 0, which sorts its
    /// sessions first for eviction and counts their time as unknown.
    pub fn from_messages(
        messages: Vec<pb::Session>,
        clock_ms: u64,
        max_sessions: usize,
    ) -> Sessions {
        let mut sessions = Sessions::with_max_sessions(max_sessions);
        sessions.clock_ms = clock_ms;
        for s in messages {
            let session = Session {
                sequence: s.sequence,
                fingerprint: s.fingerprint,
                existed: s.existed,
                last_used: s.last_used,
                last_used_ms: s.last_used_ms,
            };
            sessions.put(s.client_id, session);
        }
        sessions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_range_of_sequences_6_3() {
        assert!(validate_session(0, 0).is_ok());
        assert!(validate_session(7, 1).is_ok());
        assert!(validate_session(7, MAX_SEQUENCE).is_ok());
        assert!(validate_session(u64::MAX, 1).is_ok());
        for (client_id, sequence) in [(7, 0), (7, MAX_SEQUENCE + 1), (7, u64::MAX), (0, 1)] {
            let reason = validate_session(client_id, sequence).unwrap_err();
            assert!(reason.contains(&sequence.to_string()), "{reason}");
        }
    }

    #[test]
    fn fingerprint_tells_commands_apart() {
        let set = |key: &str, value: &str| Command::Set {
            key: key.into(),
            value: value.into(),
            client_id: 1,
            sequence: 1,
            timestamp_ms: 0,
        };
        let delete = |key: &str| Command::Delete {
            key: key.into(),
            client_id: 2,
            sequence: 9,
            timestamp_ms: 5,
        };
        assert_ne!(fingerprint(&set("ab", "c")), fingerprint(&set("a", "bc")));
        assert_ne!(fingerprint(&set("k", "")), fingerprint(&delete("k")));
        assert_ne!(fingerprint(&set("k", "1")), fingerprint(&set("k", "2")));
        // Not the session fields or the time: a retry has the same one.
        let mut retry = set("k", "1");
        if let Command::Set {
            client_id,
            sequence,
            timestamp_ms,
            ..
        } = &mut retry
        {
            (*client_id, *sequence, *timestamp_ms) = (3, 4, 5);
        }
        assert_eq!(fingerprint(&retry), fingerprint(&set("k", "1")));
        assert_ne!(fingerprint(&delete("k")), 0);
    }

    /// The clock moves only forward; sessions from before it had a time
    /// count from its first one.
    #[test]
    fn clock_is_monotonic_and_unknown_times_start_at_the_first_6_3() {
        let mut s = Sessions::default();
        s.record(1, 7, 1, 11, false);
        s.advance_clock(5_000);
        assert_eq!(s.get(7).unwrap().last_used_ms, 5_000);
        s.advance_clock(4_000);
        assert_eq!(s.clock_ms(), 5_000);
        s.advance_clock(5_000 + SESSION_TTL_MS);
        assert_eq!(s.expire(), 0, "not older than the TTL yet");
        s.advance_clock(5_001 + SESSION_TTL_MS);
        assert_eq!(s.expire(), 1);
        assert_eq!(s.get(7), None);
    }

    #[test]
    fn expiry_discards_a_bounded_number_per_apply() {
        let mut s = Sessions::with_max_sessions(1_000);
        s.advance_clock(1);
        for id in 1..=100 {
            s.record(id, id, 1, 1, false);
        }
        s.advance_clock(2 + SESSION_TTL_MS);
        assert_eq!(s.expire(), DISCARD_PER_APPLY);
        assert_eq!(s.len(), 100 - DISCARD_PER_APPLY);
        // The least recently used went first.
        assert_eq!(s.get(DISCARD_PER_APPLY as u64), None);
        assert!(s.get(DISCARD_PER_APPLY as u64 + 1).is_some());
    }
}
