//! The key-value state machine that Raft replicates (§2 "replicated state
//! machines"), with the client session table of dissertation §6.3: its
//! commands, their validation and encoding, and the client's requests and
//! answers. Raft sees only bytes ([`crate::raft::StateMachine`]).

mod client;
mod command_codec;
mod sessions;

pub use client::{
    from_raft, to_raft, Answer, ClientError, ClientRequest, ClientResponse, ClientResult,
};
pub use command_codec::{decode_command, encode_command};
pub use sessions::{validate_session, MAX_SEQUENCE, MAX_SESSIONS, SESSION_TTL_MS};

use sessions::{fingerprint, Sessions};

use imbl::OrdMap;
use prost::Message as _;

use crate::proto::kv as pb;
use crate::raft::{self, LogIndex};

/// A command of the key-value store: what a log entry carries for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Set `key` to `value`.
    Set {
        key: String,
        value: String,
        /// Exactly-once session (dissertation §6.3); 0 = none.
        client_id: u64,
        sequence: u64,
        /// When the leader received the request (ms since the Unix epoch):
        /// the clock that expires sessions (§6.3); 0 = none.
        timestamp_ms: u64,
    },
    /// Remove `key`.
    Delete {
        key: String,
        client_id: u64,
        sequence: u64,
        timestamp_ms: u64,
    },
}

impl Command {
    /// (client_id, sequence, timestamp_ms)
    fn session(&self) -> (u64, u64, u64) {
        match *self {
            Command::Set {
                client_id,
                sequence,
                timestamp_ms,
                ..
            }
            | Command::Delete {
                client_id,
                sequence,
                timestamp_ms,
                ..
            } => (client_id, sequence, timestamp_ms),
        }
    }
}

/// A key-value command as a log entry carries it: bytes to Raft.
impl From<Command> for raft::Command {
    fn from(command: Command) -> raft::Command {
        raft::Command::Client(encode_command(&command))
    }
}

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Longest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Check a key (and value) before anything is proposed: bad input changes nothing.
pub fn validate(key: &str, value: Option<&str>) -> Result<(), String> {
    if key.is_empty() {
        return Err("key must not be empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "key is {} bytes; the limit is {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    if let Some(value) = value {
        if value.len() > MAX_VALUE_BYTES {
            return Err(value_too_long(value.len() as u64));
        }
    }
    Ok(())
}

/// The refusal of a value of `len` bytes, over the limit; the CLI gives the
/// same one for a value it reads from a file.
pub fn value_too_long(len: u64) -> String {
    format!("value is {len} bytes; the limit is {MAX_VALUE_BYTES}")
}

/// An ordered map of strings plus the client sessions. `apply` is
/// deterministic, so every server that applies the same log holds the same map.
///
/// The map is persistent (copy-on-write): [`KvStore::freeze`] keeps the state
/// of one moment in O(1), for a snapshot to be encoded on another thread
/// while this one goes on applying (§7).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    data: OrdMap<String, String>,
    sessions: Sessions,
}

impl raft::StateMachine for KvStore {
    fn apply(&mut self, index: LogIndex, command: &[u8]) -> Vec<u8> {
        let answer = match decode_command(command) {
            Ok(command) => self.apply_command(index, &command),
            Err(reason) => Answer::Malformed(format!("the command does not decode: {reason}")),
        };
        answer.encode()
    }

    /// The query is a key; the answer its value.
    fn query(&self, query: &[u8]) -> Vec<u8> {
        let value = std::str::from_utf8(query)
            .ok()
            .and_then(|key| self.get(key))
            .map(str::to_owned);
        Answer::Value(value).encode()
    }

    fn freeze(&self) -> raft::FrozenState {
        Box::new(self.freeze())
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let max_sessions = self.sessions.max_sessions();
        *self = KvStore::restore_bounded(snapshot, max_sessions).map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl KvStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that keeps at most `max_sessions` sessions instead of
    /// [`MAX_SESSIONS`]: for tests. Every server of a cluster must use the same.
    pub fn with_max_sessions(max_sessions: usize) -> Self {
        KvStore {
            data: OrdMap::new(),
            sessions: Sessions::with_max_sessions(max_sessions),
        }
    }

    /// Apply the committed command at `index`.
    pub fn apply_command(&mut self, index: LogIndex, command: &Command) -> Answer {
        let (client_id, sequence, timestamp_ms) = command.session();
        // Validated before it was proposed, but the log's bytes are input
        // too: every server refuses such a command alike.
        if let Err(reason) = validate_session(client_id, sequence) {
            return Answer::Malformed(reason);
        }
        self.sessions.advance_clock(timestamp_ms);
        self.sessions.expire();
        let fingerprint = fingerprint(command);
        let answer = match command {
            Command::Set { key, value, .. } => self
                .once(index, client_id, sequence, fingerprint, |data| {
                    data.insert(key.clone(), value.clone());
                    false
                })
                .map(|_| Answer::Set),
            Command::Delete { key, .. } => self
                .once(index, client_id, sequence, fingerprint, |data| {
                    data.remove(key).is_some()
                })
                .map(|existed| Answer::Deleted { existed }),
        };
        self.sessions.expire();
        answer.unwrap_or_else(|refused| refused)
    }

    /// Run `op` unless this (client_id, sequence) was already applied; a
    /// retry gets the recorded answer instead (exactly-once, §6.3). Refused,
    /// with nothing applied: a sequence older than the client's latest, the
    /// latest one for another command (another `fingerprint`), or a sequence
    /// after 1 from a client without a session (it expired, §6.3).
    fn once(
        &mut self,
        index: LogIndex,
        client_id: u64,
        sequence: u64,
        fingerprint: u32,
        op: impl FnOnce(&mut OrdMap<String, String>) -> bool,
    ) -> Result<bool, Answer> {
        // BEGIN SOLUTION kv
        if client_id != 0 {
            match self.sessions.get(client_id) {
                None if sequence > 1 => return Err(Answer::SessionExpired { client_id }),
                Some(session) if sequence == session.sequence => {
                    // 0: recorded before fingerprints; trusted, as then.
                    if session.fingerprint != fingerprint && session.fingerprint != 0 {
                        return Err(Answer::SequenceReused {
                            client_id,
                            sequence,
                        });
                    }
                    let (fingerprint, existed) = (session.fingerprint, session.existed);
                    self.sessions
                        .record(index, client_id, sequence, fingerprint, existed);
                    return Ok(existed);
                }
                Some(session) if sequence < session.sequence => return Err(Answer::StaleSequence),
                _ => {}
            }
        }
        let existed = op(&mut self.data);
        if client_id != 0 {
            self.sessions
                .record(index, client_id, sequence, fingerprint, existed);
        }
        Ok(existed)
        // SKELETON
        // // No sessions yet: a retried write applies again. Yours: one
        // // session per client_id, remembering its last sequence and
        // // command (§6.3), with self.sessions.get and .record.
        // let _ = (index, client_id, sequence, fingerprint);
        // let _ = (Sessions::get, Sessions::record);
        // Ok(op(&mut self.data))
        // END SOLUTION
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.data.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Encode every key and session, for a snapshot (§7): the bytes of a
    /// `pb::StateMachineSnapshot`.
    pub fn snapshot(&self) -> Vec<u8> {
        self.freeze()()
    }

    /// The state as it is now, to be encoded later, on any thread: §7's
    /// copy-on-write. Cloning the map is O(1) — it shares every node with
    /// ours until `apply` changes one — and the session table is copied
    /// (it is bounded, `MAX_SESSIONS` small records).
    pub fn freeze(&self) -> impl FnOnce() -> Vec<u8> + Send + 'static {
        let data = self.data.clone();
        let sessions = self.sessions.to_messages();
        let clock_ms = self.sessions.clock_ms();
        move || encode_snapshot(&data, &sessions, clock_ms)
    }

    /// How many client sessions the store holds (§6.3).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The most it keeps: [`MAX_SESSIONS`] unless built for a test.
    pub fn max_sessions(&self) -> usize {
        self.sessions.max_sessions()
    }

    /// Rebuild the state machine from a snapshot (Figure 13 step 8).
    pub fn restore(data: &[u8]) -> Result<KvStore, prost::DecodeError> {
        KvStore::restore_bounded(data, MAX_SESSIONS)
    }

    /// The same, keeping at most `max_sessions` sessions from now on.
    pub fn restore_bounded(
        data: &[u8],
        max_sessions: usize,
    ) -> Result<KvStore, prost::DecodeError> {
        let snapshot = pb::StateMachineSnapshot::decode(data)?;
        Ok(KvStore {
            data: snapshot
                .pairs
                .into_iter()
                .map(|p| (p.key, p.value))
                .collect(),
            sessions: Sessions::from_messages(snapshot.sessions, snapshot.clock_ms, max_sessions),
        })
    }
}

/// The bytes of a `pb::StateMachineSnapshot` holding `data` and `sessions`,
/// written straight from the map into a buffer of the right size. Building
/// that message first would copy every key and value: with a million keys, a
/// quarter more memory and a slower snapshot (docs/performance.md, "As the
/// data grows").
fn encode_snapshot(
    data: &OrdMap<String, String>,
    sessions: &[pb::Session],
    clock_ms: u64,
) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len};
    use prost::encoding::{message, string, uint64, WireType};
    // proto3 leaves out a field that holds its default, here "" and 0.
    fn field_len(tag: u32, text: &String) -> usize {
        if text.is_empty() {
            0
        } else {
            string::encoded_len(tag, text)
        }
    }
    let pair_len = |key, value| field_len(1, key) + field_len(2, value);
    let size = data
        .iter()
        .map(|(key, value)| {
            let len = pair_len(key, value);
            key_len(1) + encoded_len_varint(len as u64) + len
        })
        .sum::<usize>()
        + sessions
            .iter()
            .map(|session| message::encoded_len(2, session))
            .sum::<usize>()
        + if clock_ms == 0 {
            0
        } else {
            uint64::encoded_len(3, &clock_ms)
        };
    let mut buf = Vec::with_capacity(size);
    for (key, value) in data {
        encode_key(1, WireType::LengthDelimited, &mut buf);
        encode_varint(pair_len(key, value) as u64, &mut buf);
        for (tag, text) in [(1, key), (2, value)] {
            if !text.is_empty() {
                string::encode(tag, text, &mut buf);
            }
        }
    }
    for session in sessions {
        message::encode(2, session, &mut buf);
    }
    if clock_ms != 0 {
        uint64::encode(3, &clock_ms, &mut buf);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node clocks in these tests: an hour is far from the start.
    const T0: u64 = 1_700_000_000_000;

    fn set(key: &str, value: &str, client_id: u64, sequence: u64) -> Command {
        set_at(key, value, client_id, sequence, T0)
    }

    fn set_at(key: &str, value: &str, client_id: u64, sequence: u64, at: u64) -> Command {
        Command::Set {
            key: key.into(),
            value: value.into(),
            client_id,
            sequence,
            timestamp_ms: at,
        }
    }

    fn delete(key: &str, client_id: u64, sequence: u64) -> Command {
        Command::Delete {
            key: key.into(),
            client_id,
            sequence,
            timestamp_ms: T0,
        }
    }

    /// Apply `commands` at log index 1, 2, …
    fn applied(state: &mut KvStore, commands: &[Command]) -> Vec<Answer> {
        (1..)
            .zip(commands)
            .map(|(index, command)| state.apply_command(index, command))
            .collect()
    }

    /// The hand-written snapshot encoding is byte for byte what prost makes of
    /// the same `pb::StateMachineSnapshot`, and restores to the same state.
    #[test]
    fn snapshot_is_the_protobuf_message_and_restores() {
        let mut state = KvStore::new();
        state.apply_command(1, &set("a", "1", 7, 1));
        state.apply_command(2, &set("empty", "", 0, 0));
        state.apply_command(3, &set(&"k".repeat(300), &"v".repeat(70_000), 9, 4));
        state.apply_command(4, &delete("gone", 8, 1));
        let expected = pb::StateMachineSnapshot {
            pairs: state
                .data
                .iter()
                .map(|(key, value)| pb::Pair {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            sessions: state.sessions.to_messages(),
            clock_ms: T0,
        }
        .encode_to_vec();
        assert_eq!(state.sessions(), 2, "client 9 started after 1: refused");
        let bytes = state.snapshot();
        assert_eq!(bytes, expected);
        assert_eq!(
            bytes.capacity(),
            bytes.len(),
            "the buffer was sized exactly"
        );
        let restored = KvStore::restore(&bytes).unwrap();
        assert_eq!(restored, state);
        assert_eq!(restored.snapshot(), bytes);
        assert_eq!(KvStore::new().snapshot(), Vec::<u8>::new());
    }

    /// §6.3: a retry (same sequence, same command) gets the recorded answer;
    /// the same sequence for another command is refused and changes nothing.
    #[test]
    fn a_reused_sequence_is_refused_and_not_applied_6_3() {
        let mut state = KvStore::new();
        let answers = applied(
            &mut state,
            &[
                set("k", "A", 7, 1),
                set("k", "A", 7, 1),
                set("other", "E", 7, 1),
                delete("k", 7, 1),
            ],
        );
        let reused = Answer::SequenceReused {
            client_id: 7,
            sequence: 1,
        };
        assert_eq!(
            answers,
            [Answer::Set, Answer::Set, reused.clone(), reused.clone()]
        );
        assert_eq!(state.get("other"), None);
        assert_eq!(state.get("k"), Some("A"));
        let before = state.clone();
        assert_eq!(state.apply_command(9, &set("other", "E", 7, 1)), reused);
        assert_eq!(state, before, "a refusal changed the state");
    }

    /// The valid ranges: client 0 needs sequence 0, a session 1 ..= 2^63-1.
    /// Commands out of range in the log are answered as malformed, by every
    /// server alike, and change nothing.
    #[test]
    fn sequences_out_of_range_are_malformed_at_apply() {
        let mut state = KvStore::new();
        for (client_id, sequence) in [(7, 0), (7, MAX_SEQUENCE + 1), (7, u64::MAX), (0, 3)] {
            let answer = state.apply_command(1, &set("k", "v", client_id, sequence));
            assert!(matches!(answer, Answer::Malformed(_)), "{answer:?}");
        }
        assert_eq!(state, KvStore::new());
        let answer = state.apply_command(1, &set("k", "v", 7, MAX_SEQUENCE));
        assert_eq!(answer, Answer::SessionExpired { client_id: 7 });
        assert_eq!(state.apply_command(2, &set("k", "v", 7, 1)), Answer::Set);
        assert_eq!(
            state.apply_command(3, &set("k", "w", 7, MAX_SEQUENCE)),
            Answer::Set
        );
        assert_eq!(
            state.apply_command(4, &set("k", "x", 7, 2)),
            Answer::StaleSequence
        );
        assert_eq!(state.get("k"), Some("w"));
    }

    /// §6.3: a client without a session may only start one, at sequence 1.
    #[test]
    fn an_unknown_client_after_sequence_1_is_told_its_session_expired_6_3() {
        let mut state = KvStore::new();
        let answers = applied(&mut state, &[set("k", "v", 5, 2), delete("k", 5, 9)]);
        let expired = Answer::SessionExpired { client_id: 5 };
        assert_eq!(answers, [expired.clone(), expired]);
        assert!(state.is_empty() && state.sessions() == 0, "nothing applied");
    }

    /// §6.3: a session unused for longer than the TTL, by the clock the
    /// commands carry, is expired; one used within it is kept. The clock
    /// never goes back when a command carries an earlier time.
    #[test]
    fn sessions_expire_after_the_ttl_by_the_log_clock_6_3() {
        let mut state = KvStore::new();
        state.apply_command(1, &set_at("a", "1", 1, 1, T0));
        state.apply_command(2, &set_at("b", "1", 2, 1, T0 + 1_000));
        // A later write stamped by a node whose clock is behind: it counts
        // as used at the log's clock, not its own.
        state.apply_command(3, &set_at("c", "1", 3, 1, T0 - 60_000));
        assert_eq!(state.sessions.clock_ms(), T0 + 1_000);
        let later = T0 + SESSION_TTL_MS + 500;
        state.apply_command(4, &set_at("b", "2", 2, 2, later));
        assert_eq!(state.sessions(), 2, "client 1 is expired, 3 is not");
        assert!(state.sessions.get(1).is_none());
        assert_eq!(
            state.apply_command(5, &set_at("a", "2", 1, 2, later)),
            Answer::SessionExpired { client_id: 1 }
        );
        assert_eq!(state.get("a"), Some("1"));
        // Within the TTL of its last use, client 2 still retries safely.
        assert_eq!(
            state.apply_command(6, &set_at("b", "2", 2, 2, later + 1_000)),
            Answer::Set
        );
        assert_eq!(state.sessions(), 1, "client 3 is expired now");
        // Exactly the TTL is not older than the TTL.
        let mut kept = KvStore::new();
        kept.apply_command(1, &set_at("a", "1", 1, 1, T0));
        kept.apply_command(2, &set_at("b", "1", 2, 1, T0 + SESSION_TTL_MS));
        assert_eq!(kept.sessions(), 2);
    }

    /// §6.3: beyond the bound, the least recently used session (by log
    /// index of its last use, retries included) is evicted.
    #[test]
    fn the_least_recently_used_session_is_evicted_at_the_bound_6_3() {
        let mut state = KvStore::with_max_sessions(3);
        for client in 1..=3 {
            state.apply_command(client, &set("k", "v", client, 1));
        }
        // A retry is a use: client 1 is now the most recent.
        state.apply_command(4, &set("k", "v", 1, 1));
        state.apply_command(5, &set("k", "w", 4, 1));
        assert_eq!(state.sessions(), 3);
        assert!(state.sessions.get(2).is_none(), "2 was least recently used");
        for client in [1, 3, 4] {
            assert!(state.sessions.get(client).is_some(), "{client} evicted");
        }
        assert_eq!(
            state.apply_command(6, &set("k", "x", 2, 2)),
            Answer::SessionExpired { client_id: 2 }
        );
        // Restored from a snapshot, the bound and the order hold.
        let mut restored = KvStore::with_max_sessions(3);
        raft::StateMachine::restore(&mut restored, &state.snapshot()).unwrap();
        assert_eq!(restored, state);
        for state in [&mut state, &mut restored] {
            state.apply_command(7, &set("k", "y", 5, 1));
            assert!(state.sessions.get(3).is_none(), "3 was least recently used");
        }
        assert_eq!(restored, state);
    }

    /// A snapshot from before sessions expired has no times, fingerprints or
    /// last uses: it restores, its sessions still deduplicate retries, they
    /// count as used when the clock first moves, and they go first when the
    /// table is full.
    #[test]
    fn a_snapshot_without_the_new_fields_restores_sensibly() {
        let old = pb::StateMachineSnapshot {
            pairs: vec![pb::Pair {
                key: "k".into(),
                value: "1".into(),
            }],
            sessions: (1..=3)
                .map(|client_id| pb::Session {
                    client_id,
                    sequence: 4,
                    existed: true,
                    ..Default::default()
                })
                .collect(),
            clock_ms: 0,
        }
        .encode_to_vec();
        let mut state = KvStore::restore_bounded(&old, 3).unwrap();
        assert_eq!(
            state.apply_command(10, &delete("k", 1, 4)),
            Answer::Deleted { existed: true },
            "a retry gets the recorded answer"
        );
        assert_eq!(state.get("k"), Some("1"));
        assert_eq!(state.sessions(), 3, "not expired by the first time seen");
        state.apply_command(11, &set("k", "2", 9, 1));
        assert!(state.sessions.get(2).is_none(), "an old session went first");
        assert!(state.sessions.get(1).is_some(), "1 was used at index 10");
        state.apply_command(12, &set_at("k", "3", 10, 1, T0 + SESSION_TTL_MS + 1));
        assert_eq!(state.sessions(), 1, "the old sessions aged from T0");
    }

    /// A table larger than the bound (from a version without one) shrinks
    /// to it, a bounded number of sessions per apply.
    #[test]
    fn an_oversized_table_shrinks_to_the_bound() {
        let mut big = KvStore::new();
        for client in 1..=100 {
            big.apply_command(client, &set("k", "v", client, 1));
        }
        let mut state = KvStore::restore_bounded(&big.snapshot(), 10).unwrap();
        for index in 101..111 {
            state.apply_command(index, &set("k", "v", 0, 0));
        }
        assert_eq!(state.sessions(), 10);
        assert!(state.sessions.get(100).is_some(), "the most recent stays");
    }

    /// §7 copy-on-write: a frozen state encodes what the store held when it
    /// was frozen, whatever is applied after, and on another thread.
    #[test]
    fn frozen_state_ignores_later_writes() {
        let mut state = KvStore::new();
        state.apply_command(1, &set("a", "1", 7, 1));
        let before = state.clone();
        let frozen = state.freeze();
        state.apply_command(2, &set("a", "2", 7, 2));
        state.apply_command(3, &set("b", "3", 8, 1));
        let bytes = std::thread::spawn(frozen).join().unwrap();
        assert_eq!(bytes, before.snapshot());
        assert_eq!(KvStore::restore(&bytes).unwrap(), before);
        assert_eq!(state.get("a"), Some("2"));
    }
}
