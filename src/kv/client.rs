//! The key-value store's requests and answers, and how they become the
//! bytes the Raft core carries ([`raft::Request`], [`raft::Response`]).

use super::{encode_command, validate, validate_session, Command};
use crate::raft::{self, LogIndex, NodeId};

/// A client request, as the gRPC bridge decoded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientRequest {
    Set {
        key: String,
        value: String,
        client_id: u64,
        sequence: u64,
    },
    Delete {
        key: String,
        client_id: u64,
        sequence: u64,
    },
    Get {
        key: String,
        /// true: ReadIndex on the leader (dissertation §6.4); false: any node's own state
        linearizable: bool,
    },
}

/// A successful answer to a client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientResponse {
    Set,
    Deleted { existed: bool },
    Value(Option<String>),
}

/// Why a client request failed. Nothing was applied for any of these, except
/// `LeadershipLost`, where the write may still commit later: the client must
/// retry with the same (client_id, sequence) to learn the outcome exactly once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// This node is not the leader; `leader` is the one it knows of, if any.
    NotLeader { leader: Option<NodeId> },
    /// This node stopped being leader before the request completed.
    LeadershipLost,
    /// The request is malformed (empty key, too large, …).
    InvalidArgument(String),
    /// The request's sequence is older than its client's latest (§6.3).
    StaleSequence,
    /// The client's latest sequence was applied for another command (§6.3).
    SequenceReused { client_id: u64, sequence: u64 },
    /// A sequence after 1 from a client without a session: it expired or
    /// was evicted (§6.3). The client must start a new session, with a new
    /// client_id and sequence 1.
    SessionExpired { client_id: u64 },
    /// A stale read on a node whose state machine may lack writes it already
    /// holds in its log: answering could call a key that exists absent.
    /// Another node, or this one a little later, can answer.
    Behind {
        node: NodeId,
        last_applied: LogIndex,
        commit_index: LogIndex,
    },
    /// The leader is handing its leadership to `target` (dissertation
    /// §3.10) and takes no writes meanwhile: retry, as after NotLeader.
    TransferInProgress { target: NodeId },
    /// A configuration removed this node from the cluster (§6): ask another.
    Removed { node: NodeId },
}

pub type ClientResult = Result<ClientResponse, ClientError>;

impl From<raft::RequestError> for ClientError {
    fn from(error: raft::RequestError) -> Self {
        match error {
            raft::RequestError::NotLeader { leader } => ClientError::NotLeader { leader },
            raft::RequestError::LeadershipLost => ClientError::LeadershipLost,
            raft::RequestError::Behind {
                node,
                last_applied,
                commit_index,
            } => ClientError::Behind {
                node,
                last_applied,
                commit_index,
            },
            raft::RequestError::TransferInProgress { target } => {
                ClientError::TransferInProgress { target }
            }
            raft::RequestError::Removed { node } => ClientError::Removed { node },
            // Only transfer and membership requests are answered so, and kv
            // sends none.
            raft::RequestError::TransferFailed(reason)
            | raft::RequestError::ChangeInProgress(reason)
            | raft::RequestError::MembershipRefused(reason) => ClientError::InvalidArgument(reason),
        }
    }
}

/// What applying a command or answering a query produced: the bytes the
/// state machine hands Raft for the client ([`Answer::encode`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Set,
    Deleted {
        existed: bool,
    },
    /// The command's (client_id, sequence) is older than the latest one this
    /// client had applied: it was neither applied now nor is its answer kept.
    StaleSequence,
    Value(Option<String>),
    /// The command's bytes did not decode, or its fields are out of range
    /// (a peer's bug or a forgery).
    Malformed(String),
    /// The command has the sequence of its client's latest, but is another
    /// command: not applied.
    SequenceReused {
        client_id: u64,
        sequence: u64,
    },
    /// The command's client has no session and the sequence is after 1: not
    /// applied.
    SessionExpired {
        client_id: u64,
    },
}

impl Answer {
    /// One tag byte, then the value or message for the two that carry one.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Answer::Set => vec![0],
            Answer::Deleted { existed } => vec![1, u8::from(*existed)],
            Answer::StaleSequence => vec![2],
            Answer::Value(None) => vec![3],
            Answer::Value(Some(value)) => [&[4], value.as_bytes()].concat(),
            Answer::Malformed(reason) => [&[5], reason.as_bytes()].concat(),
            Answer::SequenceReused {
                client_id,
                sequence,
            } => [&[6][..], &client_id.to_le_bytes(), &sequence.to_le_bytes()].concat(),
            Answer::SessionExpired { client_id } => [&[7][..], &client_id.to_le_bytes()].concat(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Answer, String> {
        let text = |rest: &[u8]| String::from_utf8(rest.to_vec()).map_err(|e| e.to_string());
        match bytes {
            [0] => Ok(Answer::Set),
            [1, existed @ (0 | 1)] => Ok(Answer::Deleted {
                existed: *existed == 1,
            }),
            [2] => Ok(Answer::StaleSequence),
            [3] => Ok(Answer::Value(None)),
            [4, rest @ ..] => Ok(Answer::Value(Some(text(rest)?))),
            [5, rest @ ..] => Ok(Answer::Malformed(text(rest)?)),
            [6, rest @ ..] if rest.len() == 16 => Ok(Answer::SequenceReused {
                client_id: u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")),
                sequence: u64::from_le_bytes(rest[8..].try_into().expect("8 bytes")),
            }),
            [7, rest @ ..] if rest.len() == 8 => Ok(Answer::SessionExpired {
                client_id: u64::from_le_bytes(rest.try_into().expect("8 bytes")),
            }),
            _ => Err(format!(
                "an answer of {} bytes does not decode",
                bytes.len()
            )),
        }
    }
}

/// Check a request and encode it for the core: bad input changes nothing.
/// A write becomes a command stamped with `timestamp_ms`, the time this node
/// received it (ms since the Unix epoch), which expires sessions (§6.3).
pub fn to_raft(request: ClientRequest, timestamp_ms: u64) -> Result<raft::Request, ClientError> {
    let checked = match &request {
        ClientRequest::Set {
            key,
            value,
            client_id,
            sequence,
        } => validate(key, Some(value)).and(validate_session(*client_id, *sequence)),
        ClientRequest::Delete {
            key,
            client_id,
            sequence,
        } => validate(key, None).and(validate_session(*client_id, *sequence)),
        ClientRequest::Get { key, .. } => validate(key, None),
    };
    checked.map_err(ClientError::InvalidArgument)?;
    Ok(match request {
        ClientRequest::Set {
            key,
            value,
            client_id,
            sequence,
        } => raft::Request::Write(encode_command(&Command::Set {
            key,
            value,
            client_id,
            sequence,
            timestamp_ms,
        })),
        ClientRequest::Delete {
            key,
            client_id,
            sequence,
        } => raft::Request::Write(encode_command(&Command::Delete {
            key,
            client_id,
            sequence,
            timestamp_ms,
        })),
        ClientRequest::Get { key, linearizable } => raft::Request::Read {
            query: key.into_bytes(),
            linearizable,
        },
    })
}

/// The client's answer from what the core returned.
pub fn from_raft(response: raft::Response) -> ClientResult {
    let bytes = response?;
    match Answer::decode(&bytes) {
        Ok(Answer::Set) => Ok(ClientResponse::Set),
        Ok(Answer::Deleted { existed }) => Ok(ClientResponse::Deleted { existed }),
        Ok(Answer::Value(value)) => Ok(ClientResponse::Value(value)),
        Ok(Answer::StaleSequence) => Err(ClientError::StaleSequence),
        Ok(Answer::Malformed(reason)) => Err(ClientError::InvalidArgument(reason)),
        Ok(Answer::SequenceReused {
            client_id,
            sequence,
        }) => Err(ClientError::SequenceReused {
            client_id,
            sequence,
        }),
        Ok(Answer::SessionExpired { client_id }) => Err(ClientError::SessionExpired { client_id }),
        Err(reason) => Err(ClientError::InvalidArgument(reason)),
    }
}
