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
//! (dissertation §6.3). A session the cluster expired or evicted is
//! replaced by a new one (a new `client_id`, sequence 1) when the write was
//! refused for it before any attempt could have been applied; otherwise
//! the error is the caller's ([`Error::SessionExpired`]).
//!
//! With TLS ([`Client::with_tls`]) every node, redirects included, is
//! dialled at `https://HOST:PORT`, showing the client certificate, and must
//! show a certificate of the same CA that names HOST.

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::proto::kv::key_value_client::KeyValueClient;
use crate::proto::kv::{
    Consistency, DeleteRequest, GetRequest, SetRequest, SnapshotChunk, SnapshotRequest,
    StatusRequest, StatusResponse,
};
use crate::proto::{LEADER_ADDR_METADATA, SESSION_ERROR_METADATA};
use crate::proto::{SEQUENCE_REUSED, SESSION_EXPIRED};
use crate::tls::{self, Tls};

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
    /// The write's (client_id, sequence) was already applied for another
    /// command (FAILED_PRECONDITION, §6.3); this one was not applied.
    SequenceReused(String),
    /// The cluster no longer has this client's session (§6.3), and an
    /// earlier attempt of the write may have been applied: it is unknown
    /// whether it was. Read the key to find out.
    SessionExpired(String),
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
    /// TLS cannot be set up for an address, or one side of a connection
    /// uses TLS and the other does not.
    Tls(String),
    /// A snapshot's stream broke off, or its bytes could not be written.
    Snapshot(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadAddress(addr) if addr.is_empty() => write!(f, "no node address given"),
            Error::BadAddress(addr) => write!(f, "bad address {addr:?}: expected host:port"),
            Error::InvalidArgument(message) => write!(f, "invalid argument: {message}"),
            Error::StaleSequence(message) => write!(f, "stale request: {message}"),
            Error::SequenceReused(message) => write!(f, "refused: {message}"),
            Error::SessionExpired(message) => write!(
                f,
                "{message} (an earlier attempt of this write may have been applied)"
            ),
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
            Error::Tls(message) | Error::Snapshot(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for Error {}

/// One node's answer to `raft-kv health`.
#[derive(Debug, Clone)]
pub struct NodeHealth {
    pub address: String,
    /// its answer, or why there is none (one line)
    pub answer: Result<Health, String>,
}

impl NodeHealth {
    /// Whether the node said SERVING: it knows a leader of its current term.
    pub fn healthy(&self) -> bool {
        self.answer.as_ref().is_ok_and(|health| health.serving)
    }
}

/// A node's answer to a health check.
#[derive(Debug, Clone)]
pub struct Health {
    /// SERVING rather than NOT_SERVING
    pub serving: bool,
    /// how long the check took
    pub took: Duration,
    /// its status (leader, term) if it answered that too
    pub status: Option<StatusResponse>,
}

/// A blocking, reusable client of one cluster. Not shared between threads:
/// give each thread its own (each has its own `client_id`).
pub struct Client {
    runtime: Runtime,
    addrs: Vec<String>,
    /// With TLS: what every connection shows and checks.
    tls: Option<ClientTlsConfig>,
    /// One per entry of `addrs`: where and how to connect (its URL, TLS).
    endpoints: Vec<Endpoint>,
    /// One per entry of `addrs`, created on first use.
    channels: Vec<Option<Channel>>,
    /// One per entry of `addrs`: whether it answered a probe for a TLS
    /// mismatch ([`speaks`]), which it then needs no more.
    probed: Vec<bool>,
    /// Index into `addrs` of the node that last answered a leader-only call.
    leader: Option<usize>,
    client_id: u64,
    /// The sequence of the latest write started (dissertation §6.3).
    sequence: u64,
    /// Whether an attempt of the latest call may have reached the log: any
    /// failure but a refusal that names the leader or a full queue.
    maybe_proposed: bool,
    timeout: Duration,
    rpc_timeout: Duration,
}

impl Client {
    /// A client of the nodes at `addrs` (`host:port` each), without TLS
    /// (see [`Client::with_tls`]). Nothing is contacted until the first call.
    pub fn new<S: AsRef<str>>(addrs: &[S]) -> Result<Client, Error> {
        if addrs.is_empty() {
            return Err(Error::BadAddress(String::new()));
        }
        let addrs = addrs
            .iter()
            .map(|addr| check_address(addr.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let endpoints = addrs
            .iter()
            .map(|addr| endpoint(addr, None))
            .collect::<Result<Vec<_>, _>>()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot start the client's tokio runtime");
        Ok(Client {
            runtime,
            channels: vec![None; addrs.len()],
            probed: vec![false; addrs.len()],
            addrs,
            tls: None,
            endpoints,
            leader: None,
            client_id: new_client_id(),
            sequence: 0,
            maybe_proposed: false,
            timeout: DEFAULT_TIMEOUT,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
        })
    }

    /// Speak TLS to every node with `tls` (a client's certificate, from
    /// [`crate::tls::TlsArgs::load`] with [`crate::tls::Holder::Client`]);
    /// `None` keeps plain HTTP/2. Each node's certificate must name the host
    /// the client dials it at. An error names an address whose host cannot
    /// be checked that way.
    pub fn with_tls(mut self, tls: Option<&Tls>) -> Result<Client, Error> {
        let Some(tls) = tls else {
            return Ok(self);
        };
        let config = tls.client_config();
        self.endpoints = self
            .addrs
            .iter()
            .map(|addr| endpoint(addr, Some(&config)))
            .collect::<Result<_, _>>()?;
        self.channels = vec![None; self.addrs.len()];
        self.tls = Some(config);
        Ok(self)
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
        loop {
            let request = SetRequest {
                key: key.to_owned(),
                value: value.to_owned(),
                client_id: self.client_id,
                sequence: self.sequence,
            };
            let result = self.call(true, async |mut kv| {
                kv.set(request.clone()).await.map(|_| ())
            });
            if !self.renewed_after(&result) {
                return result;
            }
        }
    }

    /// After a write's call: if the cluster refused it because this
    /// client's session expired (§6.3) and no attempt can have been
    /// applied, start a new session for it and say so (the caller sends it
    /// again). The cluster starts a session only at sequence 1, so this
    /// happens at most once per write.
    fn renewed_after<T>(&mut self, result: &Result<T, Error>) -> bool {
        let renew = matches!(result, Err(Error::SessionExpired(_)))
            && !self.maybe_proposed
            && self.sequence > 1;
        if renew {
            self.client_id = new_client_id();
            self.sequence = 1;
        }
        renew
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
        loop {
            let request = DeleteRequest {
                key: key.to_owned(),
                client_id: self.client_id,
                sequence: self.sequence,
            };
            let result = self.call(true, async |mut kv| {
                Ok(kv.delete(request.clone()).await?.into_inner().existed)
            });
            if !self.renewed_after(&result) {
                return result;
            }
        }
    }

    /// Ask every node for its status at once, without retrying; one entry
    /// per address, in order.
    pub fn status_all(&mut self) -> Vec<(String, Result<StatusResponse, String>)> {
        self.ask_all(|channel| async move {
            let mut kv = KeyValueClient::new(channel);
            Ok(kv.status(StatusRequest {}).await?.into_inner())
        })
    }

    /// Ask every node at once whether it is healthy (the gRPC health
    /// checking protocol's Check, for the whole server) and, for the line
    /// `raft-kv health` prints, its status; one entry per address, in order.
    pub fn health_all(&mut self) -> Vec<NodeHealth> {
        let answers = self.ask_all(|channel| async move {
            let started = Instant::now();
            let check = async {
                let request = HealthCheckRequest {
                    service: String::new(),
                };
                let answer = HealthClient::new(channel.clone()).check(request).await;
                (answer, started.elapsed())
            };
            let mut kv = KeyValueClient::new(channel.clone());
            let ((check, took), status) = tokio::join!(check, kv.status(StatusRequest {}));
            Ok(Health {
                serving: check?.into_inner().status() == ServingStatus::Serving,
                took,
                status: status.ok().map(|s| s.into_inner()),
            })
        });
        answers
            .into_iter()
            .map(|(address, answer)| NodeHealth { address, answer })
            .collect()
    }

    /// Copy a consistent snapshot of the leader's state machine into `out`
    /// (the `Snapshot` RPC): the bytes of one snapshot file. Reaching the
    /// leader and its first message retry as any leader-only call does;
    /// after that, each message must come within the RPC timeout. Returns
    /// the first message, which says what the file holds.
    pub fn snapshot(&mut self, out: &mut dyn Write) -> Result<SnapshotChunk, Error> {
        let (mut first, mut stream) = self.call(true, async |mut kv| {
            let mut stream = kv.snapshot(SnapshotRequest {}).await?.into_inner();
            match stream.message().await? {
                Some(first) => Ok((first, stream)),
                None => Err(Status::unavailable("the snapshot stream ended at once")),
            }
        })?;
        let addr = self.leader().unwrap_or("the leader").to_string();
        let broke =
            |why: String| Error::Snapshot(format!("{addr}: the snapshot stream broke off: {why}"));
        let cannot_write =
            |e: std::io::Error| Error::Snapshot(format!("cannot write the snapshot: {e}"));
        let mut received = first.data.len() as u64;
        out.write_all(&std::mem::take(&mut first.data))
            .map_err(cannot_write)?;
        while received < first.file_bytes {
            let next = self
                .runtime
                .block_on(async { tokio::time::timeout(self.rpc_timeout, stream.message()).await });
            let chunk = match next {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => break,
                Ok(Err(status)) => return Err(broke(describe(&status))),
                Err(_) => return Err(broke(format!("nothing within {}", human(self.rpc_timeout)))),
            };
            received += chunk.data.len() as u64;
            out.write_all(&chunk.data).map_err(cannot_write)?;
        }
        if received != first.file_bytes {
            return Err(broke(format!(
                "{received} bytes came of the {} announced",
                first.file_bytes
            )));
        }
        Ok(first)
    }

    /// Make one call to every node at once, each within the RPC timeout;
    /// a failure is explained ([`describe`], or what TLS mismatch it is).
    fn ask_all<T, Call>(
        &mut self,
        ask: impl Fn(Channel) -> Call,
    ) -> Vec<(String, Result<T, String>)>
    where
        T: Send + 'static,
        Call: std::future::Future<Output = Result<T, Status>> + Send + 'static,
    {
        let channels: Vec<_> = (0..self.addrs.len()).map(|i| self.channel(i)).collect();
        let rpc_timeout = self.rpc_timeout;
        let answers = self.runtime.block_on(async {
            let mut calls = tokio::task::JoinSet::new();
            for (i, channel) in channels.into_iter().enumerate() {
                let call = ask(channel);
                calls.spawn(async move {
                    let answer = match tokio::time::timeout(rpc_timeout, call).await {
                        Ok(answer) => answer,
                        Err(_) => Err(Status::deadline_exceeded(format!(
                            "no answer within {}",
                            human(rpc_timeout)
                        ))),
                    };
                    (i, answer)
                });
            }
            let mut answers: Vec<_> = (0..calls.len()).map(|_| None).collect();
            while let Some(joined) = calls.join_next().await {
                let (i, answer) = joined.expect("a call to a node panicked");
                answers[i] = Some(answer);
            }
            answers
        });
        self.explained(answers.into_iter().map(|a| a.expect("every node answered")))
    }

    /// Each failure of `answers` (one per address) as one line, explained
    /// at once, since a probe for a TLS mismatch may wait a little.
    fn explained<T: Send>(
        &self,
        answers: impl Iterator<Item = Result<T, Status>>,
    ) -> Vec<(String, Result<T, String>)> {
        let (tls, wait) = (self.tls.is_some(), probe_wait(self.rpc_timeout));
        std::thread::scope(|scope| {
            let rows: Vec<_> = self
                .addrs
                .iter()
                .zip(answers)
                .map(|(addr, answer)| {
                    scope.spawn(move || {
                        let answer = answer.map_err(|status| {
                            let mismatch = connection_failed(&status)
                                .then(|| speaks(addr, wait))
                                .flatten()
                                .and_then(|speaks| tls_mismatch(speaks, tls));
                            mismatch.map_or_else(|| describe(&status), String::from)
                        });
                        (addr.clone(), answer)
                    })
                })
                .collect();
            rows.into_iter()
                .map(|row| row.join().expect("explaining a failure panicked"))
                .collect()
        })
    }

    /// Run `rpc` against the leader, finding it as described in the module
    /// comment, until it succeeds, fails for good, or the deadline passes.
    /// A node that answers a `leader_only` call is remembered as the leader.
    fn call<T>(
        &mut self,
        leader_only: bool,
        mut rpc: impl AsyncFnMut(KeyValueClient<Channel>) -> Result<T, Status>,
    ) -> Result<T, Error> {
        self.call_on(leader_only, async |channel| rpc(kv_client(channel)).await)
    }

    /// As [`Client::call`], for an RPC of any service on the client port.
    pub(crate) fn call_on<T>(
        &mut self,
        leader_only: bool,
        mut rpc: impl AsyncFnMut(Channel) -> Result<T, Status>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut target = self.leader.unwrap_or(0);
        let mut backoff = FIRST_BACKOFF;
        let mut misses = 0;
        let mut last = String::from("no node tried");
        self.maybe_proposed = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Unavailable {
                    waited: started.elapsed(),
                    last,
                    leader_only,
                });
            }
            let channel = self.channel(target);
            let rpc_timeout = remaining.min(self.rpc_timeout);
            let answer = self
                .runtime
                .block_on(async { tokio::time::timeout(rpc_timeout, rpc(channel)).await });
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
            let addr = &self.addrs[target];
            // One side using TLS and the other not fails every time: say so
            // at once. A node is asked until it answers once.
            if !self.probed[target] && connection_failed(&status) {
                if let Some(speaks) = speaks(addr, probe_wait(self.rpc_timeout)) {
                    self.probed[target] = true;
                    if let Some(why) = tls_mismatch(speaks, self.tls.is_some()) {
                        return Err(Error::Tls(format!("{addr}: {why}")));
                    }
                }
            }
            match status.code() {
                Code::InvalidArgument => {
                    return Err(Error::InvalidArgument(status.message().to_owned()))
                }
                Code::FailedPrecondition => {
                    let message = status.message().to_owned();
                    let kind = status.metadata().get(SESSION_ERROR_METADATA);
                    return Err(match kind.and_then(|kind| kind.to_str().ok()) {
                        Some(SESSION_EXPIRED) => Error::SessionExpired(message),
                        Some(SEQUENCE_REUSED) => Error::SequenceReused(message),
                        _ => Error::StaleSequence(message),
                    });
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
            // A follower's redirect and a full queue refuse before
            // proposing; after anything else the write may be in the log.
            let refused = status.metadata().get(LEADER_ADDR_METADATA).is_some()
                || status.code() == Code::ResourceExhausted;
            self.maybe_proposed |= !refused;
            let redirect = status
                .metadata()
                .get(LEADER_ADDR_METADATA)
                .and_then(|value| value.to_str().ok())
                .and_then(|leader| check_address(leader).ok());
            match redirect.and_then(|leader| self.index_of(leader)) {
                Some(leader) => {
                    target = leader;
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

    /// The (cheaply cloned) gRPC channel to `addrs[i]`, connecting lazily
    /// so an unreachable node costs nothing until it is called.
    fn channel(&mut self, i: usize) -> Channel {
        if let Some(channel) = &self.channels[i] {
            return channel.clone();
        }
        let endpoint = self.endpoints[i]
            .clone()
            .connect_timeout(self.rpc_timeout)
            .tcp_nodelay(true);
        // connect_lazy spawns the channel's worker, so it needs the runtime.
        let channel = {
            let _inside = self.runtime.enter();
            endpoint.connect_lazy()
        };
        self.channels[i] = Some(channel.clone());
        channel
    }

    /// The index of `addr`, adding it when a redirect names a node the
    /// client was not told about (`None` if TLS cannot be set up for it,
    /// and the redirect is not followed).
    fn index_of(&mut self, addr: String) -> Option<usize> {
        if let Some(i) = self.addrs.iter().position(|known| *known == addr) {
            return Some(i);
        }
        self.endpoints
            .push(endpoint(&addr, self.tls.as_ref()).ok()?);
        self.addrs.push(addr);
        self.channels.push(None);
        self.probed.push(false);
        Some(self.addrs.len() - 1)
    }
}

/// The key-value client on `channel`.
fn kv_client(channel: Channel) -> KeyValueClient<Channel> {
    // A 1 MiB value plus the rest of the request must fit (tonic's default is 4 MiB,
    // kept explicit here because the limit matters to docs/api.md).
    KeyValueClient::new(channel).max_decoding_message_size(4 * 1024 * 1024)
}

/// Codes that may go away on another node or a little later: not the leader,
/// leadership lost, node unreachable or overloaded, or a connection cut
/// mid-call (which tonic reports as UNKNOWN or INTERNAL). The benchmark's
/// client uses the same rule.
/// A new random session id: 0 means "no session" on the wire.
fn new_client_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            break id;
        }
    }
}

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

/// What a node speaks on its port, as [`speaks`] finds out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Speaks {
    Tls,
    PlainHttp2,
}

/// The bytes an HTTP/2 client starts every connection with (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `status` is a failure of the connection rather than a node's
/// answer: tonic gives those a cause (a node's own statuses have none).
///
/// One side using TLS and the other not is such a failure, and a cryptic
/// one: a client without TLS sees the connection cut short ("broken pipe",
/// "frame with invalid size"), a TLS client "received corrupt message". So
/// after such a failure the node is asked what it speaks ([`speaks`]), and
/// [`tls_mismatch`] says what is wrong.
fn connection_failed(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// What is wrong when a client with `tls` or without meets a node that
/// speaks `speaks`; `None` when they agree.
fn tls_mismatch(speaks: Speaks, tls: bool) -> Option<&'static str> {
    match (speaks, tls) {
        (Speaks::Tls, false) => Some(
            "the node requires TLS: give --tls-dir DIR (the files `raft-kv certs` wrote), \
             or --cert, --key and --ca",
        ),
        (Speaks::PlainHttp2, true) => Some(
            "the node does not use TLS (it was started without --tls-dir): \
             leave out the TLS flags",
        ),
        _ => None,
    }
}

/// What the node at `addr` speaks, from the first bytes it answers the
/// HTTP/2 preface with: a TLS server answers with an alert record (content
/// type 21, version 3.x), since the preface is no TLS handshake; an HTTP/2
/// server with its SETTINGS frame (type 4, the 4th byte). `None` when it
/// cannot be reached within `wait`, or answers anything else.
fn speaks(addr: &str, wait: Duration) -> Option<Speaks> {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    let socket = addr.to_socket_addrs().ok()?.next()?;
    let mut tcp = TcpStream::connect_timeout(&socket, wait).ok()?;
    tcp.set_read_timeout(Some(wait)).ok()?;
    tcp.set_write_timeout(Some(wait)).ok()?;
    tcp.write_all(HTTP2_PREFACE).ok()?;
    let mut reply = [0u8; 4];
    tcp.read_exact(&mut reply).ok()?;
    match reply {
        [21, 3, _, _] => Some(Speaks::Tls),
        [_, _, _, 4] => Some(Speaks::PlainHttp2),
        _ => None,
    }
}

/// How long [`speaks`] waits for a node: a node that answers at all
/// answers the preface at once.
fn probe_wait(rpc_timeout: Duration) -> Duration {
    rpc_timeout.min(Duration::from_millis(500))
}

/// A duration for people: `300ms`, `5.0s`.
fn human(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

/// Where and how to reach `addr` (checked by [`check_address`]): plain
/// HTTP/2, or with `tls` HTTPS whose server must show a certificate naming
/// the host of `addr`.
/// The endpoint of the node at `addr`, over TLS with `tls`.
pub fn endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, Error> {
    let url = format!("{}://{addr}", tls::scheme(tls.is_some()));
    let endpoint = Endpoint::from_shared(url).map_err(|_| Error::BadAddress(addr.to_owned()))?;
    match tls {
        None => Ok(endpoint),
        Some(config) => endpoint.tls_config(config.clone()).map_err(|e| {
            let why = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
            Error::Tls(format!("{addr}: cannot set up TLS: {why}"))
        }),
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
    use std::sync::{Arc, Mutex};

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

    /// A node on a loopback port, with TLS if `tls` is given, that answers
    /// How a fake node answers a Set.
    type OnSet = Box<dyn Fn(SetRequest) -> Result<(), Status> + Send + Sync>;

    /// A client API on a loopback port (with `tls`, if given) whose Set
    /// answers `on_set` and whose Status says node 1; runs until `runtime`
    /// stops. Returns its address.
    fn fake_node(runtime: &Runtime, tls: Option<&Tls>, on_set: OnSet) -> String {
        use crate::proto::kv::key_value_server::{KeyValue, KeyValueServer};
        use crate::proto::kv::{DeleteResponse, GetResponse, SetResponse};
        use tonic::{Request, Response};

        struct Node(OnSet);
        #[tonic::async_trait]
        impl KeyValue for Node {
            async fn set(&self, r: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
                (self.0)(r.into_inner()).map(|()| Response::new(SetResponse {}))
            }
            async fn get(&self, _: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
                Err(Status::unimplemented("fake"))
            }
            async fn delete(
                &self,
                _: Request<DeleteRequest>,
            ) -> Result<Response<DeleteResponse>, Status> {
                Err(Status::unimplemented("fake"))
            }
            async fn status(
                &self,
                _: Request<StatusRequest>,
            ) -> Result<Response<StatusResponse>, Status> {
                Ok(Response::new(StatusResponse {
                    id: 1,
                    ..StatusResponse::default()
                }))
            }
            type SnapshotStream = tonic::codegen::tokio_stream::Iter<
                std::vec::IntoIter<Result<SnapshotChunk, Status>>,
            >;
            /// A stream that ends before the bytes it announced.
            async fn snapshot(
                &self,
                _: Request<SnapshotRequest>,
            ) -> Result<Response<Self::SnapshotStream>, Status> {
                let first = SnapshotChunk {
                    last_included_index: 7,
                    last_included_term: 2,
                    file_bytes: 10,
                    data: b"RKVS".to_vec(),
                };
                Ok(Response::new(tonic::codegen::tokio_stream::iter(vec![Ok(
                    first,
                )])))
            }
        }

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls.tonic_server_config()).unwrap();
        }
        let _inside = runtime.enter();
        let incoming = tokio::net::TcpListener::from_std(listener).unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(incoming);
        let router = server.add_service(KeyValueServer::new(Node(on_set)));
        runtime.spawn(router.serve_with_incoming(incoming));
        addr
    }

    /// Set as the leader or, with `leader`, as a follower redirecting to
    /// that address.
    fn leader_or_follower_of(leader: Option<String>) -> OnSet {
        Box::new(move |_| {
            let Some(leader) = &leader else {
                return Ok(());
            };
            let mut status = Status::unavailable("not leader");
            let value = leader.parse().unwrap();
            status.metadata_mut().insert(LEADER_ADDR_METADATA, value);
            Err(status)
        })
    }

    /// Every (client_id, sequence) a fake node was sent.
    type Seen = Arc<Mutex<Vec<(u64, u64)>>>;

    /// A leader on a loopback port that keeps no sessions, as if every one
    /// had expired (§6.3): a Set with sequence 1 is OK, a later one is
    /// refused `session-expired`. With `lose_first`, the first Set with a
    /// later sequence fails as if the leader was lost after proposing it.
    /// Returns its address and every (client_id, sequence) it was sent.
    fn forgetful_leader(runtime: &Runtime, lose_first: bool) -> (String, Seen) {
        let seen = Seen::default();
        let sent = Arc::clone(&seen);
        let lose_first = Mutex::new(lose_first);
        let on_set: OnSet = Box::new(move |r| {
            sent.lock().unwrap().push((r.client_id, r.sequence));
            if r.sequence == 1 {
                return Ok(());
            }
            if std::mem::take(&mut *lose_first.lock().unwrap()) {
                return Err(Status::unavailable("not leader: leadership was lost"));
            }
            let mut status = Status::failed_precondition("session expired");
            let kind = tonic::metadata::MetadataValue::from_static(SESSION_EXPIRED);
            status.metadata_mut().insert(SESSION_ERROR_METADATA, kind);
            Err(status)
        });
        (fake_node(runtime, None, on_set), seen)
    }

    /// §6.3: a write refused because the session expired, before any
    /// attempt of it could have been applied, is sent again in a new
    /// session; after an attempt that may have been applied, the error is
    /// the caller's.
    #[test]
    fn an_expired_session_is_renewed_only_when_nothing_can_have_applied_6_3() {
        let runtime = Runtime::new().unwrap();
        let (addr, seen) = forgetful_leader(&runtime, false);
        let mut client = Client::new(&[&addr]).unwrap();
        let first = client.client_id();
        client.set("k", "1").unwrap();
        client.set("k", "2").unwrap();
        let renewed = client.client_id();
        assert_ne!(renewed, first);
        assert_eq!(
            *seen.lock().unwrap(),
            [(first, 1), (first, 2), (renewed, 1)]
        );

        let (addr, seen) = forgetful_leader(&runtime, true);
        let mut client = Client::new(&[&addr]).unwrap();
        let id = client.client_id();
        client.set("k", "1").unwrap();
        let error = client.set("k", "2").unwrap_err();
        assert!(matches!(error, Error::SessionExpired(_)), "{error:?}");
        assert_eq!(client.client_id(), id);
        assert_eq!(*seen.lock().unwrap(), [(id, 1), (id, 2), (id, 2)]);
    }

    /// Certificates written by `raft-kv certs --nodes NODES`, and the
    /// client's and node 1's TLS material from them.
    fn certificates(nodes: &str) -> (tempfile::TempDir, Tls, Tls) {
        use crate::tls::{certs, Holder, TlsArgs};
        let dir = tempfile::tempdir().unwrap();
        certs::write(dir.path(), &certs::nodes(nodes, &[]).unwrap(), false).unwrap();
        let args = TlsArgs {
            tls_dir: Some(dir.path().to_path_buf()),
            ..TlsArgs::default()
        };
        let client = args.load(Holder::Client).unwrap().unwrap();
        let node = args.load(Holder::Node(1)).unwrap().unwrap();
        (dir, client, node)
    }

    fn status_of(addr: &str, tls: Option<&Tls>) -> Result<StatusResponse, String> {
        let mut client = Client::new(&[addr]).unwrap().with_tls(tls).unwrap();
        client.status_all().remove(0).1
    }

    #[test]
    fn a_tls_client_reaches_tls_nodes_and_follows_redirects_over_tls() {
        let runtime = Runtime::new().unwrap();
        let (_dir, client_tls, node_tls) = certificates("1");
        let leader = fake_node(&runtime, Some(&node_tls), leader_or_follower_of(None));
        // The certificate names 127.0.0.1 and localhost.
        assert_eq!(status_of(&leader, Some(&client_tls)).unwrap().id, 1);
        let by_name = leader.replace("127.0.0.1", "localhost");
        assert_eq!(status_of(&by_name, Some(&client_tls)).unwrap().id, 1);

        let follower = fake_node(
            &runtime,
            Some(&node_tls),
            leader_or_follower_of(Some(leader.clone())),
        );
        let mut client = Client::new(&[&follower])
            .unwrap()
            .with_tls(Some(&client_tls))
            .unwrap();
        client.set("k", "v").unwrap();
        assert_eq!(client.leader(), Some(leader.as_str()));
    }

    #[test]
    fn a_node_that_does_not_name_the_dialled_host_is_refused() {
        let runtime = Runtime::new().unwrap();
        let (_dir, client_tls, node_tls) = certificates("1=10.0.0.1:7001");
        let node = fake_node(&runtime, Some(&node_tls), leader_or_follower_of(None));
        let why = status_of(&node, Some(&client_tls)).unwrap_err();
        assert!(why.contains("not valid for name \"127.0.0.1\""), "{why}");
        // Nor does a node that shows the client's certificate.
        let (_dir, client_tls, _) = certificates("1");
        let impostor = fake_node(&runtime, Some(&client_tls), leader_or_follower_of(None));
        let why = status_of(&impostor, Some(&client_tls)).unwrap_err();
        assert!(why.contains("extended key usage"), "{why}");
    }

    #[test]
    fn tls_on_one_side_only_is_named_at_once() {
        let runtime = Runtime::new().unwrap();
        let (_dir, client_tls, node_tls) = certificates("1");
        let tls_node = fake_node(&runtime, Some(&node_tls), leader_or_follower_of(None));
        let plain_node = fake_node(&runtime, None, leader_or_follower_of(None));

        let started = Instant::now();
        let mut plain = Client::new(&[&tls_node]).unwrap();
        let error = plain.set("k", "v").unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "{tls_node}: the node requires TLS: give --tls-dir DIR (the files `raft-kv certs` wrote), \
                 or --cert, --key and --ca"
            )
        );
        assert!(started.elapsed() < DEFAULT_TIMEOUT / 2, "it retried");
        let why = status_of(&tls_node, None).unwrap_err();
        assert!(
            why.starts_with("the node requires TLS: give --tls-dir DIR"),
            "{why}"
        );

        let mut tls = Client::new(&[&plain_node])
            .unwrap()
            .with_tls(Some(&client_tls))
            .unwrap();
        let error = tls.set("k", "v").unwrap_err();
        assert!(
            matches!(&error, Error::Tls(m) if m.contains("does not use TLS")),
            "{error}"
        );
        let why = status_of(&plain_node, Some(&client_tls)).unwrap_err();
        assert!(why.contains("does not use TLS"), "{why}");

        // Both sides alike: no probe finds anything to say.
        assert_eq!(
            speaks(&plain_node, Duration::from_secs(1)),
            Some(Speaks::PlainHttp2)
        );
        assert_eq!(speaks(&tls_node, Duration::from_secs(1)), Some(Speaks::Tls));
        assert_eq!(speaks("127.0.0.1:1", Duration::from_secs(1)), None);
    }

    #[test]
    fn a_snapshot_stream_that_ends_early_is_an_error() {
        let runtime = Runtime::new().unwrap();
        let addr = fake_node(&runtime, None, leader_or_follower_of(None));
        let mut client = Client::new(&[addr]).unwrap();
        let mut file = Vec::new();
        let error = client.snapshot(&mut file).unwrap_err();
        assert!(
            matches!(&error, Error::Snapshot(m) if m.contains("4 bytes came of the 10 announced")),
            "{error}"
        );
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
