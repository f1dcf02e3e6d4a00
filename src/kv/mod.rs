//! The key-value state machine that Raft replicates (§2 "replicated state
//! machines"), with the client session table of dissertation §6.3: its
//! commands, their validation and encoding, and the client's requests and
//! answers. Raft sees only bytes ([`crate::raft::StateMachine`]).

mod client;
mod command_codec;

pub use client::{
    from_raft, to_raft, Answer, ClientError, ClientRequest, ClientResponse, ClientResult,
};
pub use command_codec::{decode_command, encode_command};

use std::collections::BTreeMap;

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
    },
    /// Remove `key`.
    Delete {
        key: String,
        client_id: u64,
        sequence: u64,
    },
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

/// The latest request applied for one client (dissertation §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Session {
    sequence: u64,
    existed: bool,
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
    sessions: BTreeMap<u64, Session>,
}

impl raft::StateMachine for KvStore {
    fn apply(&mut self, _index: LogIndex, command: &[u8]) -> Vec<u8> {
        let answer = match decode_command(command) {
            Ok(command) => self.apply_command(&command),
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
        *self = KvStore::restore(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl KvStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Apply one committed command.
    pub fn apply_command(&mut self, command: &Command) -> Answer {
        match command {
            Command::Set {
                key,
                value,
                client_id,
                sequence,
            } => {
                let outcome = self.once(*client_id, *sequence, |data| {
                    data.insert(key.clone(), value.clone());
                    false
                });
                outcome.map_or(Answer::StaleSequence, |_| Answer::Set)
            }
            Command::Delete {
                key,
                client_id,
                sequence,
            } => {
                let outcome = self.once(*client_id, *sequence, |data| data.remove(key).is_some());
                outcome.map_or(Answer::StaleSequence, |existed| Answer::Deleted { existed })
            }
        }
    }

    /// Run `op` unless this (client_id, sequence) was already applied; a
    /// retry gets the recorded answer instead (exactly-once, §6.3). None when
    /// the sequence is older than the client's latest.
    fn once(
        &mut self,
        client_id: u64,
        sequence: u64,
        op: impl FnOnce(&mut OrdMap<String, String>) -> bool,
    ) -> Option<bool> {
        // BEGIN SOLUTION kv
        if client_id != 0 {
            if let Some(session) = self.sessions.get(&client_id) {
                if sequence == session.sequence {
                    return Some(session.existed);
                }
                if sequence < session.sequence {
                    return None;
                }
            }
        }
        let existed = op(&mut self.data);
        if client_id != 0 {
            self.sessions
                .insert(client_id, Session { sequence, existed });
        }
        Some(existed)
        // SKELETON
        // // No sessions yet: a retried write applies again. Yours: one
        // // session per client_id, remembering its last sequence (§6.3).
        // let _ = (client_id, sequence);
        // Some(op(&mut self.data))
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
    /// (it holds one small record per client).
    pub fn freeze(&self) -> impl FnOnce() -> Vec<u8> + Send + 'static {
        let data = self.data.clone();
        let sessions = self.session_messages();
        move || encode_snapshot(&data, &sessions)
    }

    fn session_messages(&self) -> Vec<pb::Session> {
        self.sessions
            .iter()
            .map(|(&client_id, s)| pb::Session {
                client_id,
                sequence: s.sequence,
                existed: s.existed,
            })
            .collect()
    }

    /// Rebuild the state machine from a snapshot (Figure 13 step 8).
    pub fn restore(data: &[u8]) -> Result<KvStore, prost::DecodeError> {
        let snapshot = pb::StateMachineSnapshot::decode(data)?;
        Ok(KvStore {
            data: snapshot
                .pairs
                .into_iter()
                .map(|p| (p.key, p.value))
                .collect(),
            sessions: snapshot
                .sessions
                .into_iter()
                .map(|s| {
                    let session = Session {
                        sequence: s.sequence,
                        existed: s.existed,
                    };
                    (s.client_id, session)
                })
                .collect(),
        })
    }
}

/// The bytes of a `pb::StateMachineSnapshot` holding `data` and `sessions`,
/// written straight from the map into a buffer of the right size. Building
/// that message first would copy every key and value: with a million keys, a
/// quarter more memory and a slower snapshot (docs/performance.md, "As the
/// data grows").
fn encode_snapshot(data: &OrdMap<String, String>, sessions: &[pb::Session]) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len};
    use prost::encoding::{message, string, WireType};
    // proto3 leaves out a field that holds its default, here "".
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
            .sum::<usize>();
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
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str, client_id: u64, sequence: u64) -> Command {
        Command::Set {
            key: key.into(),
            value: value.into(),
            client_id,
            sequence,
        }
    }

    /// The hand-written snapshot encoding is byte for byte what prost makes of
    /// the same `pb::StateMachineSnapshot`, and restores to the same state.
    #[test]
    fn snapshot_is_the_protobuf_message_and_restores() {
        let mut state = KvStore::new();
        state.apply_command(&set("a", "1", 7, 1));
        state.apply_command(&set("empty", "", 0, 0));
        state.apply_command(&set(&"k".repeat(300), &"v".repeat(70_000), 9, 4));
        state.apply_command(&Command::Delete {
            key: "gone".into(),
            client_id: 8,
            sequence: 2,
        });
        let expected = pb::StateMachineSnapshot {
            pairs: state
                .data
                .iter()
                .map(|(key, value)| pb::Pair {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            sessions: state.session_messages(),
        }
        .encode_to_vec();
        let bytes = state.snapshot();
        assert_eq!(bytes, expected);
        assert_eq!(
            bytes.capacity(),
            bytes.len(),
            "the buffer was sized exactly"
        );
        assert_eq!(KvStore::restore(&bytes).unwrap(), state);
        assert_eq!(KvStore::new().snapshot(), Vec::<u8>::new());
    }

    /// §7 copy-on-write: a frozen state encodes what the store held when it
    /// was frozen, whatever is applied after, and on another thread.
    #[test]
    fn frozen_state_ignores_later_writes() {
        let mut state = KvStore::new();
        state.apply_command(&set("a", "1", 7, 1));
        let before = state.clone();
        let frozen = state.freeze();
        state.apply_command(&set("a", "2", 7, 2));
        state.apply_command(&set("b", "3", 8, 1));
        let bytes = std::thread::spawn(frozen).join().unwrap();
        assert_eq!(bytes, before.snapshot());
        assert_eq!(KvStore::restore(&bytes).unwrap(), before);
        assert_eq!(state.get("a"), Some("2"));
    }
}
