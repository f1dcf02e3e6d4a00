//! Commands travel in log entries as prost-encoded `raftkv.Command` messages
//! (proto/kv.proto); Raft carries the bytes without looking inside.

use prost::Message as _;

use super::Command;
use crate::proto::kv as pb;

pub fn encode_command(command: &Command) -> Vec<u8> {
    use pb::command::Kind;
    let kind = match command.clone() {
        Command::Set {
            key,
            value,
            client_id,
            sequence,
            timestamp_ms,
        } => Kind::Set(pb::SetCommand {
            key,
            value,
            client_id,
            sequence,
            timestamp_ms,
        }),
        Command::Delete {
            key,
            client_id,
            sequence,
            timestamp_ms,
        } => Kind::Delete(pb::DeleteCommand {
            key,
            client_id,
            sequence,
            timestamp_ms,
        }),
    };
    pb::Command { kind: Some(kind) }.encode_to_vec()
}

/// Decode a command; the error says what is wrong with the bytes.
pub fn decode_command(bytes: &[u8]) -> Result<Command, String> {
    use pb::command::Kind;
    let decoded = pb::Command::decode(bytes).map_err(|e| e.to_string())?;
    match decoded.kind {
        Some(Kind::Set(c)) => Ok(Command::Set {
            key: c.key,
            value: c.value,
            client_id: c.client_id,
            sequence: c.sequence,
            timestamp_ms: c.timestamp_ms,
        }),
        Some(Kind::Delete(c)) => Ok(Command::Delete {
            key: c.key,
            client_id: c.client_id,
            sequence: c.sequence,
            timestamp_ms: c.timestamp_ms,
        }),
        // Written by versions whose log carried the KV's encoding of the
        // no-op; Raft now marks its no-op itself (raft::Command::Noop).
        Some(Kind::Noop(_)) => Err("a no-op is not a key-value command".to_string()),
        None => Err("command has no kind".to_string()),
    }
}
