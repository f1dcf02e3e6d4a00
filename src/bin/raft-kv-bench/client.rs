//! The bench's clients: async gRPC clients of raft-kv (`raftkv.KeyValue`)
//! and of etcd (`etcdserverpb.KV`), behind one interface so every workload
//! runs the same code against both.
//!
//! Connections: one HTTP/2 connection per member, shared by every simulated
//! client, and client `i` starts on member `i mod members`, as etcd's own
//! `benchmark` tool and its clientv3 spread requests over the endpoints
//! (`--at-leader` starts them all on the leader instead).
//! From there each system is used as its clients would use it:
//!
//! - raft-kv: a follower answers UNAVAILABLE with `leader-addr` (dissertation
//!   §6.2), and the client moves to the leader's connection, like
//!   `raft_kv::cli::Client`. Writes carry a `client_id` and `sequence`, and
//!   every retry of one write repeats them, so it applies once (§6.3). A
//!   write refused because the session expired, before any attempt of it
//!   could have been applied, is sent again in a new session.
//! - etcd: any member accepts any request and forwards proposals and
//!   ReadIndex requests to its leader itself, so a client stays where it is
//!   until its member fails.
//!
//! Both move to the next member on a failure, and back off (1 ms doubling to
//! 10 ms) once every member has failed in a row. The short backoff keeps
//! what the client adds to a measured failover pause to about 10 ms.
//!
//! raft-kv's connections may use mutual TLS (`--tls-dir`, or `--tls` with
//! `--local`), with the client certificate, as `raft-kv get` does; etcd's
//! are always plaintext.

use std::time::{Duration, Instant};

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::Status;

use super::etcdpb;
use super::etcdpb::kv_client::KvClient;
use super::etcdpb::maintenance_client::MaintenanceClient;
use raft_kv::cli::client::{describe, retryable};
use raft_kv::proto::kv as kv_pb;
use raft_kv::proto::kv::key_value_client::KeyValueClient;
use raft_kv::proto::{LEADER_ADDR_METADATA, SESSION_ERROR_METADATA, SESSION_EXPIRED};
use raft_kv::server::interrupt;
use raft_kv::tls::{self, Tls};

/// How long one operation keeps retrying before it counts as an error.
const OPERATION_DEADLINE: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_millis(10);

/// The system under load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    #[value(name = "raft-kv")]
    RaftKv,
    Etcd,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::RaftKv => "raft-kv",
            System::Etcd => "etcd",
        }
    }
}

/// A member's view of the cluster, from raft-kv's `Status` or etcd's
/// `Maintenance.Status`.
#[derive(Clone, Debug)]
pub struct MemberStatus {
    pub is_leader: bool,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
}

/// Why [`Pool::leader`] found no leader.
#[derive(Debug)]
pub enum NoLeader {
    /// Some member answered, and none of them leads (an election is running).
    NotYet,
    /// No member answered; why, for each.
    NoAnswer(String),
}

/// The connections to one cluster, shared by all its simulated clients.
#[derive(Clone)]
pub struct Pool {
    system: System,
    addrs: Vec<String>,
    channels: Vec<Channel>,
    rpc_timeout: Duration,
    /// raft-kv's client TLS, when its nodes use it.
    tls: Option<Tls>,
    /// `--at-leader`: the member every client starts on, instead of its own.
    first_member: Option<usize>,
}

impl Pool {
    /// Connections to `addrs` (`host:port` each), opened lazily, with
    /// `tls` (raft-kv only) if given. Must be called inside the tokio
    /// runtime.
    pub fn new(
        system: System,
        addrs: &[String],
        rpc_timeout: Duration,
        tls: Option<&Tls>,
    ) -> Result<Pool, String> {
        if addrs.is_empty() {
            return Err("no member address given".into());
        }
        if tls.is_some() && system == System::Etcd {
            return Err("TLS is for raft-kv: the bench speaks to etcd in plaintext".into());
        }
        let config = tls.map(Tls::client_config);
        let channels = addrs
            .iter()
            .map(|addr| connect(addr, rpc_timeout, config.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Pool {
            system,
            addrs: addrs.to_vec(),
            channels,
            rpc_timeout,
            tls: tls.cloned(),
            first_member: None,
        })
    }

    /// The same members and TLS, on new connections with another RPC timeout.
    pub fn with_rpc_timeout(&self, rpc_timeout: Duration) -> Result<Pool, String> {
        Pool::new(self.system, &self.addrs, rpc_timeout, self.tls.as_ref())
    }

    /// The same connections, with every new client starting on `member`.
    pub fn starting_at(&self, member: usize) -> Pool {
        Pool {
            first_member: Some(member),
            ..self.clone()
        }
    }

    pub fn system(&self) -> System {
        self.system
    }

    /// Simulated client number `i`.
    pub fn client(&self, i: usize) -> BenchClient {
        BenchClient {
            pool: self.clone(),
            target: self.first_member.unwrap_or(i % self.addrs.len()),
            client_id: new_client_id(),
            sequence: 0,
        }
    }

    /// Member `i`'s status, asked once with the RPC timeout.
    pub async fn status(&self, i: usize) -> Result<MemberStatus, String> {
        let channel = self.channels[i].clone();
        let answer = tokio::time::timeout(self.rpc_timeout, async {
            match self.system {
                System::RaftKv => {
                    let s = KeyValueClient::new(channel)
                        .status(kv_pb::StatusRequest {})
                        .await?
                        .into_inner();
                    Ok(MemberStatus {
                        is_leader: s.role == "leader",
                        term: s.term,
                        commit_index: s.commit_index,
                        applied_index: s.last_applied,
                    })
                }
                System::Etcd => {
                    let s = MaintenanceClient::new(channel)
                        .status(etcdpb::StatusRequest {})
                        .await?
                        .into_inner();
                    let member_id = s.header.map_or(0, |h| h.member_id);
                    Ok(MemberStatus {
                        is_leader: s.leader != 0 && s.leader == member_id,
                        term: s.raft_term,
                        commit_index: s.raft_index,
                        applied_index: s.raft_applied_index,
                    })
                }
            }
        })
        .await;
        match answer {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(status)) => Err(describe(&status)),
            Err(_) => Err(format!("{}: no answer in time", self.addrs[i])),
        }
    }

    /// The highest term any member reports, if any answers.
    pub async fn highest_term(&self) -> Option<u64> {
        let mut highest = None;
        for i in 0..self.addrs.len() {
            if let Ok(status) = self.status(i).await {
                highest = highest.max(Some(status.term));
            }
        }
        highest
    }

    /// The member that leads in the highest term any member reports. When
    /// none does, the error says whether any member answered at all.
    pub async fn leader(&self) -> Result<usize, NoLeader> {
        let mut best: Option<(u64, usize)> = None;
        let mut unreachable = Vec::new();
        for i in 0..self.addrs.len() {
            match self.status(i).await {
                Ok(status) => {
                    if status.is_leader && best.is_none_or(|(term, _)| status.term > term) {
                        best = Some((status.term, i));
                    }
                }
                Err(error) => unreachable.push(format!("{}: {error}", self.addrs[i])),
            }
        }
        match best {
            Some((_, i)) => Ok(i),
            None if unreachable.len() == self.addrs.len() => {
                Err(NoLeader::NoAnswer(unreachable.join("; ")))
            }
            None => Err(NoLeader::NotYet),
        }
    }
}

fn connect(
    addr: &str,
    rpc_timeout: Duration,
    tls: Option<&ClientTlsConfig>,
) -> Result<Channel, String> {
    let url = format!("{}://{addr}", tls::scheme(tls.is_some()));
    let mut endpoint = Endpoint::from_shared(url)
        .map_err(|_| format!("bad address {addr:?}: expected host:port"))?
        .connect_timeout(rpc_timeout)
        .tcp_nodelay(true);
    if let Some(config) = tls {
        endpoint = endpoint.tls_config(config.clone()).map_err(|e| {
            let why = std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string());
            format!("{addr}: cannot set up TLS: {why}")
        })?;
    }
    Ok(endpoint.connect_lazy())
}

/// One simulated client: sequential operations, retried as described in the
/// module comment.
pub struct BenchClient {
    pool: Pool,
    /// Index into the pool of the member this client sends to.
    target: usize,
    client_id: u64,
    sequence: u64,
}

/// One operation, as both systems understand it.
enum Operation<'a> {
    Put {
        key: &'a str,
        value: &'a str,
    },
    Get {
        key: &'a str,
        stale: bool,
    },
    /// A call that neither touches the log nor the store: the floor under
    /// every other operation's latency.
    Status,
}

impl BenchClient {
    /// Store `value` under `key`; returns once the system acknowledged it.
    pub async fn put(&mut self, key: &str, value: &str) -> Result<(), String> {
        self.sequence += 1;
        self.run(Operation::Put { key, value }).await.map(|_| ())
    }

    /// Write a value over the cluster's request limit, once: Ok when the
    /// member refuses it as too large (raft-kv: INVALID_ARGUMENT before it
    /// is read; etcd: RESOURCE_EXHAUSTED), an error when it is stored or
    /// fails any other way.
    pub async fn put_too_large(&mut self, key: &str, value: &str) -> Result<(), String> {
        let operation = Operation::Put { key, value };
        let answer = tokio::time::timeout(self.pool.rpc_timeout, self.attempt(&operation)).await;
        let at = &self.pool.addrs[self.target];
        match answer {
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument
                        | tonic::Code::ResourceExhausted
                        | tonic::Code::OutOfRange
                ) =>
            {
                Ok(())
            }
            Ok(Err(status)) => Err(format!("{at}: {}", describe(&status))),
            Ok(Ok(_)) => Err(format!(
                "{at}: a write of {} bytes was accepted",
                value.len()
            )),
            Err(_) => Err(format!("{at}: no answer within the RPC timeout")),
        }
    }

    /// Start a new session (§6.3): the next write is its sequence 1.
    pub fn new_session(&mut self) {
        self.client_id = new_client_id();
        self.sequence = 0;
    }

    /// Read `key`: linearizable, or with `stale` from the member's own state.
    /// Returns whether the key exists.
    pub async fn get(&mut self, key: &str, stale: bool) -> Result<bool, String> {
        self.run(Operation::Get { key, stale }).await
    }

    /// Ask the member for its status: one round trip through gRPC and the
    /// server's request handling, without consensus or storage.
    pub async fn status(&mut self) -> Result<(), String> {
        self.run(Operation::Status).await.map(|_| ())
    }

    async fn run(&mut self, operation: Operation<'_>) -> Result<bool, String> {
        let deadline = Instant::now() + OPERATION_DEADLINE;
        let mut backoff = FIRST_BACKOFF;
        let mut misses = 0;
        // Whether an attempt may have reached the log: any failure but a
        // redirect or a full queue, which refuse before proposing.
        let mut maybe_proposed = false;
        loop {
            let answer =
                tokio::time::timeout(self.pool.rpc_timeout, self.attempt(&operation)).await;
            let status = match answer {
                Ok(Ok(found)) => return Ok(found),
                Ok(Err(status)) => status,
                Err(_) => Status::deadline_exceeded("no answer within the RPC timeout"),
            };
            if session_expired(&status) && !maybe_proposed && self.sequence > 1 {
                self.new_session();
                self.sequence = 1;
                continue;
            }
            maybe_proposed |= status.metadata().get(LEADER_ADDR_METADATA).is_none()
                && status.code() != tonic::Code::ResourceExhausted;
            let failed_at = &self.pool.addrs[self.target];
            if !retryable(status.code()) || Instant::now() >= deadline {
                return Err(format!("{failed_at}: {}", describe(&status)));
            }
            if interrupt::happened() {
                return Err("interrupted".into());
            }
            match self.redirect(&status) {
                Some(leader) => self.target = leader,
                None => self.target = (self.target + 1) % self.pool.addrs.len(),
            }
            // Redirects count as misses too, so a stale redirect loop cannot spin.
            misses += 1;
            if misses >= self.pool.addrs.len() {
                misses = 0;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// One RPC to the current member. Creating the typed client is a clone
    /// of the shared connection's handle, not a new connection.
    async fn attempt(&self, operation: &Operation<'_>) -> Result<bool, Status> {
        let channel = self.pool.channels[self.target].clone();
        match (self.pool.system, operation) {
            (System::RaftKv, Operation::Put { key, value }) => {
                let request = kv_pb::SetRequest {
                    key: key.to_string(),
                    value: value.to_string(),
                    client_id: self.client_id,
                    sequence: self.sequence,
                };
                KeyValueClient::new(channel).set(request).await?;
                Ok(true)
            }
            (System::RaftKv, Operation::Get { key, stale }) => {
                let consistency = if *stale {
                    kv_pb::Consistency::Stale
                } else {
                    kv_pb::Consistency::Linearizable
                };
                let request = kv_pb::GetRequest {
                    key: key.to_string(),
                    consistency: consistency as i32,
                };
                Ok(KeyValueClient::new(channel)
                    .get(request)
                    .await?
                    .into_inner()
                    .found)
            }
            (System::Etcd, Operation::Put { key, value }) => {
                let request = etcdpb::PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                };
                KvClient::new(channel).put(request).await?;
                Ok(true)
            }
            (System::Etcd, Operation::Get { key, stale }) => {
                let request = etcdpb::RangeRequest {
                    key: key.as_bytes().to_vec(),
                    serializable: *stale,
                    ..Default::default()
                };
                Ok(!KvClient::new(channel)
                    .range(request)
                    .await?
                    .into_inner()
                    .kvs
                    .is_empty())
            }
            (System::RaftKv, Operation::Status) => {
                KeyValueClient::new(channel)
                    .status(kv_pb::StatusRequest {})
                    .await?;
                Ok(true)
            }
            (System::Etcd, Operation::Status) => {
                MaintenanceClient::new(channel)
                    .status(etcdpb::StatusRequest {})
                    .await?;
                Ok(true)
            }
        }
    }

    /// The member a raft-kv follower named as leader, if it is one of ours.
    fn redirect(&self, status: &Status) -> Option<usize> {
        let leader = status.metadata().get(LEADER_ADDR_METADATA)?.to_str().ok()?;
        self.pool.addrs.iter().position(|addr| addr == leader)
    }
}

/// raft-kv's answer to a write whose session it no longer has (§6.3).
fn session_expired(status: &Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && status
            .metadata()
            .get(SESSION_ERROR_METADATA)
            .is_some_and(|kind| kind == SESSION_EXPIRED)
}

/// A new random session id: 0 means "no session" on raft-kv's wire.
fn new_client_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            break id;
        }
    }
}
