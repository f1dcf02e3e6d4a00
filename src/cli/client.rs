//! A blocking client for the `raftkv.KeyValue` service (docs/api.md).
//!
//! It owns a private single-threaded tokio runtime and one lazily connected
//! gRPC channel per address, so a call costs one RPC (two when redirected)
//! and nothing is rebuilt between calls.
//!
//! Finding the leader follows dissertation §6.2: try the last known leader,
//! follow a `leader-addr` redirect at once, and otherwise try the next
//! address, backing off while no node knows a leader (an election is running).
//! Writes carry this client's `client_id` and a fresh `sequence`; every retry
//! of one write repeats the same pair, so the cluster applies it exactly once
//! even if an earlier attempt was committed and only its answer was lost
//! (dissertation §6.3).

use std::fmt;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::proto::kv::key_value_client::KeyValueClient;
use crate::proto::kv::{
    Consistency, DeleteRequest, GetRequest, SetRequest, StatusRequest, StatusResponse,
};
use crate::proto::LEADER_ADDR_METADATA;

/// How long one operation may keep retrying before giving up.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one RPC to one node may take; a node that does not answer in time
/// is treated like an unreachable one (the next node is tried).
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An address that is not `host:port`.
    BadAddress(String),
    /// The cluster rejected the request itself (INVALID_ARGUMENT); retrying
    /// cannot help.
    InvalidArgument(String),
    /// The write's sequence is older than one this client already had
    /// applied (FAILED_PRECONDITION, dissertation §6.3).
    StaleSequence(String),
    /// No node could serve the call before the deadline: no leader, or for
    /// a stale read no node that is caught up (`leader_only` says which);
    /// `last` is the last failure seen.
    Unavailable {
        waited: Duration,
        last: String,
        leader_only: bool,
    },
    /// A node answered with a status this client does not expect.
    Server { addr: String, status: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadAddress(addr) if addr.is_empty() => write!(f, "no node address given"),
            Error::BadAddress(addr) => write!(f, "bad address {addr:?}: expected host:port"),
            Error::InvalidArgument(message) => write!(f, "invalid argument: {message}"),
            Error::StaleSequence(message) => write!(f, "stale request: {message}"),
            Error::Unavailable {
                waited,
                last,
                leader_only,
            } => {
                let who = if *leader_only { "leader" } else { "node" };
                write!(
                    f,
                    "no {who} answered within {} (last: {last})",
                    human(*waited)
                )
            }
            Error::Server { addr, status } => write!(f, "{addr}: {status}"),
        }
    }
}

impl std::error::Error for Error {}

/// A blocking, reusable client of one cluster. Not shared between threads:
/// give each thread its own (each has its own `client_id`).
pub struct Client {
    runtime: Runtime,
    addrs: Vec<String>,
    /// One per entry of `addrs`, created on first use.
    channels: Vec<Option<KeyValueClient<Channel>>>,
    /// Index into `addrs` of the node that last answered a leader-only call.
    leader: Option<usize>,
    client_id: u64,
    /// The sequence of the latest write started (dissertation §6.3).
    sequence: u64,
    timeout: Duration,
    rpc_timeout: Duration,
}

impl Client {
    /// A client of the nodes at `addrs` (`host:port` each). Nothing is
    /// contacted until the first call.
    pub fn new<S: AsRef<str>>(addrs: &[S]) -> Result<Client, Error> {
        if addrs.is_empty() {
            return Err(Error::BadAddress(String::new()));
        }
        let addrs = addrs
            .iter()
            .map(|addr| check_address(addr.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot start the client's tokio runtime");
        // 0 means "no session" on the wire, so a real session needs another id.
        let client_id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        Ok(Client {
            runtime,
            channels: vec![None; addrs.len()],
            addrs,
            leader: None,
            client_id,
            sequence: 0,
            timeout: DEFAULT_TIMEOUT,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
        })
    }

    /// How long one operation keeps retrying (default 5 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// How long one RPC to one node may take (default 2 s).
    pub fn with_rpc_timeout(mut self, rpc_timeout: Duration) -> Client {
        self.rpc_timeout = rpc_timeout;
        self
    }

    /// This client's session id (dissertation §6.3).
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The address of the node that last served a leader-only call.
    pub fn leader(&self) -> Option<&str> {
        self.leader.map(|i| self.addrs[i].as_str())
    }

    /// Store `value` under `key`; returns once committed and applied.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), Error> {
        self.sequence += 1;
        let request = SetRequest {
            key: key.to_owned(),
            value: value.to_owned(),
            client_id: self.client_id,
            sequence: self.sequence,
        };
        self.call(true, async |mut kv| {
            kv.set(request.clone()).await.map(|_| ())
        })
    }

    /// Read `key`: from the leader after it confirms its leadership
    /// (linearizable), or with `stale`, from whichever node answers first.
    /// A node that may be behind (just restarted) refuses a stale read;
    /// the next one is tried, as after any UNAVAILABLE.
    pub fn get(&mut self, key: &str, stale: bool) -> Result<Option<String>, Error> {
        let consistency = if stale {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        };
        let request = GetRequest {
            key: key.to_owned(),
            consistency: consistency as i32,
        };
        self.call(!stale, async |mut kv| {
            let answer = kv.get(request.clone()).await?.into_inner();
            Ok(answer.found.then_some(answer.value))
        })
    }

    /// Remove `key`; returns whether it existed.
    pub fn delete(&mut self, key: &str) -> Result<bool, Error> {
        self.sequence += 1;
        let request = DeleteRequest {
            key: key.to_owned(),
            client_id: self.client_id,
            sequence: self.sequence,
        };
        self.call(true, async |mut kv| {
            Ok(kv.delete(request.clone()).await?.into_inner().existed)
        })
    }

    /// Ask every node for its status at once, without retrying; one entry
    /// per address, in order.
    pub fn status_all(&mut self) -> Vec<(String, Result<StatusResponse, String>)> {
        let kvs: Vec<_> = (0..self.addrs.len()).map(|i| self.channel(i)).collect();
        let rpc_timeout = self.rpc_timeout;
        let answers = self.runtime.block_on(async {
            let mut calls = tokio::task::JoinSet::new();
            for (i, mut kv) in kvs.into_iter().enumerate() {
                calls.spawn(async move {
                    let answer =
                        tokio::time::timeout(rpc_timeout, kv.status(StatusRequest {})).await;
                    let answer = match answer {
                        Ok(Ok(response)) => Ok(response.into_inner()),
                        Ok(Err(status)) => Err(describe(&status)),
                        Err(_) => Err(format!("no answer within {}", human(rpc_timeout))),
                    };
                    (i, answer)
                });
            }
            let mut answers = vec![Err(String::new()); calls.len()];
            while let Some(joined) = calls.join_next().await {
                let (i, answer) = joined.expect("a status call panicked");
                answers[i] = answer;
            }
            answers
        });
        self.addrs.iter().cloned().zip(answers).collect()
    }

    /// Run `rpc` against the leader, finding it as described in the module
    /// comment, until it succeeds, fails for good, or the deadline passes.
    /// A node that answers a `leader_only` call is remembered as the leader.
    fn call<T>(
        &mut self,
        leader_only: bool,
        mut rpc: impl AsyncFnMut(KeyValueClient<Channel>) -> Result<T, Status>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut target = self.leader.unwrap_or(0);
        let mut backoff = FIRST_BACKOFF;
        let mut misses = 0;
        let mut last = String::from("no node tried");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Unavailable {
                    waited: started.elapsed(),
                    last,
                    leader_only,
                });
            }
            let kv = self.channel(target);
            let rpc_timeout = remaining.min(self.rpc_timeout);
            let answer = self
                .runtime
                .block_on(async { tokio::time::timeout(rpc_timeout, rpc(kv)).await });
            let addr = &self.addrs[target];
            let status = match answer {
                Ok(Ok(value)) => {
                    if leader_only {
                        self.leader = Some(target);
                    }
                    return Ok(value);
                }
                Ok(Err(status)) => status,
                Err(_) => {
                    Status::deadline_exceeded(format!("no answer within {}", human(rpc_timeout)))
                }
            };
            match status.code() {
                Code::InvalidArgument => {
                    return Err(Error::InvalidArgument(status.message().to_owned()))
                }
                Code::FailedPrecondition => {
                    return Err(Error::StaleSequence(status.message().to_owned()))
                }
                code if !retryable(code) => {
                    return Err(Error::Server {
                        addr: addr.clone(),
                        status: describe(&status),
                    })
                }
                _ => {}
            }
            last = format!("{addr}: {}", describe(&status));
            let redirect = status
                .metadata()
                .get(LEADER_ADDR_METADATA)
                .and_then(|value| value.to_str().ok())
                .and_then(|leader| check_address(leader).ok());
            match redirect {
                Some(leader) => {
                    target = self.index_of(leader);
                    self.leader = Some(target);
                }
                None => {
                    self.leader = None;
                    target = (target + 1) % self.addrs.len();
                }
            }
            // Back off once every address has failed in a row (redirects
            // count too, so a stale redirect loop cannot spin).
            misses += 1;
            if misses >= self.addrs.len() {
                misses = 0;
                let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                std::thread::sleep(pause);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// The (cheaply cloned) gRPC client for `addrs[i]`, connecting lazily so
    /// an unreachable node costs nothing until it is called.
    fn channel(&mut self, i: usize) -> KeyValueClient<Channel> {
        if let Some(kv) = &self.channels[i] {
            return kv.clone();
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addrs[i]))
            .expect("address checked in Client::new")
            .connect_timeout(self.rpc_timeout)
            .tcp_nodelay(true);
        // connect_lazy spawns the channel's worker, so it needs the runtime.
        let channel = {
            let _inside = self.runtime.enter();
            endpoint.connect_lazy()
        };
        // A 1 MiB value plus the rest of the request must fit (tonic's default is 4 MiB,
        // kept explicit here because the limit matters to docs/api.md).
        let kv = KeyValueClient::new(channel).max_decoding_message_size(4 * 1024 * 1024);
        self.channels[i] = Some(kv.clone());
        kv
    }

    /// The index of `addr`, adding it when a redirect names a node the
    /// client was not told about.
    fn index_of(&mut self, addr: String) -> usize {
        if let Some(i) = self.addrs.iter().position(|known| *known == addr) {
            return i;
        }
        self.addrs.push(addr);
        self.channels.push(None);
        self.addrs.len() - 1
    }
}

/// Codes that may go away on another node or a little later: not the leader,
/// leadership lost, node unreachable or overloaded, or a connection cut
/// mid-call (which tonic reports as UNKNOWN or INTERNAL). The benchmark's
/// client uses the same rule.
pub fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::Unknown
            | Code::Internal
            | Code::ResourceExhausted
    )
}

/// A status as one line: its message (or its code when the message is
/// empty), followed by its causes — for a transport failure tonic's message
/// alone is just "tcp connect error", the cause says "Connection refused".
pub fn describe(status: &Status) -> String {
    let mut line = status.message().trim().to_owned();
    if line.is_empty() {
        line = format!("{:?}", status.code());
    }
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        let text = error.to_string();
        // tonic wraps every cause in a bare "transport error", which says nothing.
        if !text.is_empty() && text != "transport error" && !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        cause = error.source();
    }
    line.replace('\n', " ")
}

/// A duration for people: `300ms`, `5.0s`.
fn human(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

/// Accept `host:port` with a numeric port; the host is left to the resolver.
fn check_address(addr: &str) -> Result<String, Error> {
    let addr = addr.trim();
    let bad = || Error::BadAddress(addr.to_owned());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Endpoint::from_shared(format!("http://{addr}")).map_err(|_| bad())?;
    Ok(addr.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_host_and_numeric_port() {
        assert_eq!(
            check_address(" 127.0.0.1:7001 "),
            Ok("127.0.0.1:7001".into())
        );
        assert_eq!(check_address("localhost:1"), Ok("localhost:1".into()));
        for bad in ["", "127.0.0.1", ":7001", "host:port", "host:70000", "a/b:1"] {
            assert_eq!(check_address(bad), Err(Error::BadAddress(bad.into())));
        }
        assert!(Client::new::<&str>(&[]).is_err());
    }

    #[test]
    fn unreachable_cluster_times_out_with_the_last_error() {
        // Port 1 on loopback refuses connections, so this exercises the
        // retry loop and the deadline without any server.
        let mut client = Client::new(&["127.0.0.1:1"])
            .unwrap()
            .with_timeout(Duration::from_millis(300));
        let sequence_before = client.sequence;
        match client.set("k", "v") {
            Err(Error::Unavailable { last, .. }) => assert!(last.starts_with("127.0.0.1:1: ")),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert_eq!(client.sequence, sequence_before + 1);
        let statuses = client.status_all();
        assert_eq!(statuses.len(), 1);
        assert!(statuses[0].1.is_err());
    }
}
