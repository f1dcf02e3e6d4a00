//! Cluster membership and node settings, checked before anything starts.
//!
//! The members of a cluster are every member, this node included, as
//! `--peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003`, or in a
//! `--config` file, which may hold any flag of `raft-kv node`
//! ([`file`]).
//!
//! Ids are positive integers (0 means "none" on the wire). Every member must
//! have a distinct id and a distinct address. A member's address is where
//! its peers reach it; by default it serves its clients there too, and
//! `--listen-clients` gives them a port of their own (`--listen-peers` binds
//! the peer port elsewhere, e.g. on 0.0.0.0).
//!
//! Times are given in milliseconds and converted to the core's logical ticks
//! (`--tick-ms` each), rounding up: the core counts election timeouts and
//! heartbeats in ticks so that tests can drive it without a clock.
//!
//! Every check returns a [`ConfigError`] whose message is one line; the
//! binary prints it and exits with code 2, having changed nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use crate::raft::{NodeId, RaftConfig};
use crate::server::identity::ClusterId;
use crate::server::NodeArgs;
use crate::tls::{Holder, Tls};

pub mod file;

/// Exit code for bad flags, a bad member list, a busy port or unusable data directory.
pub const EXIT_BAD_CONFIG: i32 = 2;
/// The longest `--poll-us`: polling longer than a tick would only burn CPU.
pub const MAX_POLL_US: u64 = 10_000;

/// A setting that cannot be used; the message is one line and names the culprit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn error<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

/// A member's network address, `HOST:PORT`, as written by the operator.
/// The host may be a name or an IP address (`[::1]` for IPv6).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl Address {
    /// Parse `HOST:PORT`.
    pub fn parse(text: &str) -> Result<Address, String> {
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("address '{text}' is not HOST:PORT"));
        };
        let bracketed = host.starts_with('[') && host.ends_with(']');
        let looks_like_ipv6 = host.contains(':')
            && host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        if looks_like_ipv6 {
            return Err(format!(
                "address '{text}': write an IPv6 host in brackets, like [::1]:7001"
            ));
        }
        // A name or an IPv4 address; anything else (`;`, spaces, …) is a typo.
        let name_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
        if host.is_empty() || !(bracketed || host.chars().all(name_chars)) {
            return Err(format!("address '{text}' has no valid host"));
        }
        match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok(Address {
                host: host.to_string(),
                port,
            }),
            _ => Err(format!(
                "address '{text}' has no valid port (1-65535 expected)"
            )),
        }
    }

    /// The URL a gRPC client connects to, in plain text or with TLS.
    pub fn url(&self, tls: bool) -> String {
        format!("{}://{self}", crate::tls::scheme(tls))
    }

    /// Whether the host is 0.0.0.0 or [::]: every interface.
    pub fn is_unspecified(&self) -> bool {
        self.host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Every member of the cluster by id, this node included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members(BTreeMap<NodeId, Address>);

impl Members {
    /// Parse `--peers`: `ID=HOST:PORT` entries separated by commas.
    pub fn parse_peers(list: &str) -> Result<Members, ConfigError> {
        let mut entries = Vec::new();
        for (position, entry) in list.split(',').enumerate() {
            let entry = entry.trim();
            let Some((id, address)) = entry.split_once('=') else {
                return error(format!(
                    "--peers entry {} ('{entry}') is not ID=HOST:PORT",
                    position + 1
                ));
            };
            if address.contains('=') {
                return error(format!(
                    "--peers entry {} ('{entry}') holds more than one member: separate members with commas, like 1=127.0.0.1:7001,2=127.0.0.1:7002",
                    position + 1
                ));
            }
            let member = parse_member(id.trim(), address.trim())
                .map_err(|why| ConfigError(format!("--peers entry '{entry}': {why}")))?;
            entries.push(member);
        }
        Members::from_entries(entries)
    }

    fn from_entries(entries: Vec<(NodeId, Address)>) -> Result<Members, ConfigError> {
        let mut members = BTreeMap::new();
        let mut addresses = BTreeSet::new();
        for (id, address) in entries {
            if !addresses.insert(address.clone()) {
                return error(format!("address {address} is listed twice"));
            }
            if members.insert(id, address).is_some() {
                return error(format!("node id {id} is listed twice"));
            }
        }
        Ok(Members(members))
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.0.keys().copied().collect()
    }

    pub fn address(&self, id: NodeId) -> Option<&Address> {
        self.0.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &Address)> {
        self.0.iter().map(|(&id, address)| (id, address))
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.0.contains_key(&id)
    }

    /// No members: what a node started with `--join` knows of its cluster.
    pub fn none() -> Members {
        Members(BTreeMap::new())
    }

    /// The `--peers` form of this list, to hand to a child process.
    pub fn to_peers_flag(&self) -> String {
        self.iter()
            .map(|(id, address)| format!("{id}={address}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn parse_member(id: &str, address: &str) -> Result<(NodeId, Address), String> {
    let id = parse_id(id)?;
    Ok((id, Address::parse(address)?))
}

fn parse_id(text: &str) -> Result<NodeId, String> {
    match text.parse::<NodeId>() {
        Ok(0) => Err("node id 0 is reserved (it means 'none'); ids start at 1".to_string()),
        Ok(id) => Ok(id),
        Err(_) => Err(format!("node id '{text}' is not a positive integer")),
    }
}

/// The logical clock of the core: how long a tick is, and the election
/// timeout range and heartbeat interval in ticks (§5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub tick: Duration,
    pub election_timeout_ticks: (u64, u64),
    pub heartbeat_ticks: u64,
}

impl Timing {
    /// Check `--election-timeout-ms MIN-MAX`, `--heartbeat-ms` and `--tick-ms`
    /// and convert them to ticks.
    pub fn new(
        election_timeout_ms: &str,
        heartbeat_ms: u64,
        tick_ms: u64,
    ) -> Result<Timing, ConfigError> {
        let (min_ms, max_ms) = parse_election_timeout(election_timeout_ms)?;
        if heartbeat_ms == 0 {
            return error("--heartbeat-ms must be at least 1");
        }
        // §5.2: followers must hear a heartbeat before any of them times out.
        if heartbeat_ms >= min_ms {
            return error(format!(
                "--heartbeat-ms {heartbeat_ms} must be less than the minimum election timeout ({min_ms} ms)"
            ));
        }
        if tick_ms == 0 {
            return error("--tick-ms must be at least 1");
        }
        let timing = Timing {
            tick: Duration::from_millis(tick_ms),
            election_timeout_ticks: (ticks(min_ms, tick_ms), ticks(max_ms, tick_ms)),
            heartbeat_ticks: ticks(heartbeat_ms, tick_ms),
        };
        let (min_ticks, max_ticks) = timing.election_timeout_ticks;
        if timing.heartbeat_ticks >= min_ticks || min_ticks >= max_ticks {
            // Rounding to whole ticks would erase the randomization (§5.2) or
            // let the heartbeat reach the election timeout.
            return error(format!(
                "--tick-ms {tick_ms} is too coarse for --election-timeout-ms {election_timeout_ms} and --heartbeat-ms {heartbeat_ms}"
            ));
        }
        Ok(timing)
    }
}

/// Milliseconds to ticks, rounding up, at least one.
fn ticks(ms: u64, tick_ms: u64) -> u64 {
    ms.div_ceil(tick_ms).max(1)
}

fn parse_election_timeout(text: &str) -> Result<(u64, u64), ConfigError> {
    let bad = || {
        ConfigError(format!(
            "--election-timeout-ms '{text}' is not MIN-MAX in milliseconds, like 150-300"
        ))
    };
    let (min, max) = text.split_once('-').ok_or_else(bad)?;
    let min: u64 = min.trim().parse().map_err(|_| bad())?;
    let max: u64 = max.trim().parse().map_err(|_| bad())?;
    if min == 0 {
        return error("--election-timeout-ms: the minimum must be at least 1");
    }
    // §5.2: the timeout is drawn at random from the range; an empty range
    // brings back the split votes randomization is there to prevent.
    if min >= max {
        return error(format!(
            "--election-timeout-ms {text}: MIN must be less than MAX"
        ));
    }
    Ok((min, max))
}

/// How much a node logs (`--log-level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }

    /// The flag value, to hand to a child process.
    pub fn as_flag(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The timing, snapshot and logging flags shared by `raft-kv node` and
/// `raft-kv cluster` (which passes them on to every node).
#[derive(clap::Args, Clone, Debug)]
pub struct Tuning {
    /// Election timeout range in milliseconds; each election draws a random
    /// timeout from it (§5.2). Long timeouts, e.g. `--election-timeout-ms
    /// 600000-1200000 --heartbeat-ms 100000`, let you pause a node in a
    /// debugger without triggering elections.
    #[arg(long, value_name = "MIN-MAX", default_value = "150-300")]
    pub election_timeout_ms: String,
    /// How often a leader sends heartbeats, in milliseconds; must be less
    /// than the minimum election timeout (§5.2).
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// Length of one logical tick in milliseconds. The core counts timeouts
    /// in ticks; the times above are rounded up to whole ticks.
    #[arg(long, value_name = "MS", default_value_t = 10)]
    pub tick_ms: u64,
    /// Take a snapshot (§7) once the log's entries since the last one hold
    /// more than this many bytes and more than that snapshot's size (so the
    /// bytes written for snapshots stay proportional to the log's).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_SNAPSHOT_LOG_BYTES)]
    pub snapshot_log_bytes: usize,
    /// How much to log: `info` shows every role change, `debug` every RPC.
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// After handling a message, the event loop keeps polling for the next
    /// one this many microseconds before it sleeps: waking a sleeping thread
    /// costs about as much as a loopback round trip. 0 sleeps at once (the
    /// least CPU); at most 10000.
    #[arg(long, value_name = "US", default_value_t = 500)]
    pub poll_us: u64,
    /// Turn off parts of the fast path, to measure what each is worth
    /// (docs/performance.md): a comma-separated list of group-commit,
    /// batching, pipelining. Raft stays correct without them, only slower.
    #[arg(long, value_name = "PART,...", default_value = "")]
    pub fast_path_off: String,
    /// The largest client request a node decodes, in bytes (etcd's
    /// --max-request-bytes); a larger one is refused with INVALID_ARGUMENT
    /// before it is read. The default holds the largest key and value.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Ask the others before an election whether it could be won
    /// (dissertation §9.6), so that a node returning from a partition does
    /// not depose a healthy leader. `--pre-vote=false` shows the paper's
    /// plain elections, disruption included.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub pre_vote: bool,
    /// Serve linearizable reads at the leader from a lease (dissertation
    /// §6.4.1), without a heartbeat round, for two thirds of the minimum
    /// election timeout after a heartbeat a majority acknowledged. Safe
    /// only if no member's clock runs more than 1.5 times as fast as
    /// another's (docs/api.md). Off: every read takes a ReadIndex round.
    #[arg(long, value_name = "BOOL", default_value_t = false, action = clap::ArgAction::Set)]
    pub lease_reads: bool,
}

impl Tuning {
    /// Check the flags; returns the timing in ticks.
    pub fn check(&self) -> Result<Timing, ConfigError> {
        check_snapshot_log_bytes(self.snapshot_log_bytes)?;
        check_max_request_bytes(self.max_request_bytes)?;
        check_poll_us(self.poll_us)?;
        parse_fast_path_off(&self.fast_path_off)?;
        Timing::new(&self.election_timeout_ms, self.heartbeat_ms, self.tick_ms)
    }

    /// The same flags, for a child `raft-kv node`.
    pub fn to_flags(&self) -> Vec<String> {
        vec![
            "--election-timeout-ms".into(),
            self.election_timeout_ms.clone(),
            "--heartbeat-ms".into(),
            self.heartbeat_ms.to_string(),
            "--tick-ms".into(),
            self.tick_ms.to_string(),
            "--snapshot-log-bytes".into(),
            self.snapshot_log_bytes.to_string(),
            "--log-level".into(),
            self.log_level.as_flag().into(),
            "--poll-us".into(),
            self.poll_us.to_string(),
            "--fast-path-off".into(),
            self.fast_path_off.clone(),
            "--max-request-bytes".into(),
            self.max_request_bytes.to_string(),
            format!("--pre-vote={}", self.pre_vote),
            format!("--lease-reads={}", self.lease_reads),
        ]
    }
}

/// Everything a node needs to start, checked.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub members: Members,
    pub data_dir: PathBuf,
    pub timing: Timing,
    pub snapshot_log_bytes: usize,
    pub log_level: LogLevel,
    /// how long the event loop polls before it sleeps (`--poll-us`)
    pub poll: Duration,
    /// what `--fast-path-off` left on
    pub fast_path: FastPath,
    /// the largest client request decoded (`--max-request-bytes`)
    pub max_request_bytes: usize,
    /// pre-vote before elections (`--pre-vote`, dissertation §9.6)
    pub pre_vote: bool,
    /// lease-based reads (`--lease-reads`, dissertation §6.4.1)
    pub lease_reads: bool,
    /// where this node serves its peers (`--listen-peers`; by default its
    /// address in the member list)
    pub listen_peers: Address,
    /// where it serves its clients when not on the peers' port (`--listen-clients`)
    pub listen_clients: Option<Address>,
    /// the address clients are sent to when this node leads
    pub client_address: Address,
    /// where it serves `/metrics` (`--metrics-addr`), if anywhere
    pub metrics_addr: Option<Address>,
    /// names a new cluster (`--cluster-token`; src/server/identity.rs)
    pub cluster_token: Option<String>,
    /// the cluster this node joins, empty, to be added by `raft-kv member
    /// add` (`--join CLUSTER_ID`); `members` is then empty
    pub join: Option<ClusterId>,
    /// where peers reach this node: its address in the member list, or
    /// with `--join` its `--listen-peers`
    pub own_address: Address,
    /// obeys the FaultInjection RPC (`--allow-fault-injection`)
    pub allow_fault_injection: bool,
    /// mutual TLS, if on (src/tls.rs)
    pub tls: Option<Tls>,
}

impl NodeConfig {
    /// Read the `--config` file, if any, into the flags the command line
    /// did not give (`given`, from [`file::flags_given`]), and check them
    /// all: an error about a value from the file names its line.
    pub fn load(mut args: NodeArgs, given: &file::Given) -> Result<NodeConfig, ConfigError> {
        let Some(path) = args.config.clone() else {
            return NodeConfig::from_args(&args);
        };
        let (config, text) = file::ConfigFile::read(&path)?;
        let origins = config.apply(&path, &text, &mut args, given)?;
        NodeConfig::from_args(&args).map_err(|e| origins.locate(e))
    }

    /// Check every flag of `raft-kv node`.
    pub fn from_args(args: &NodeArgs) -> Result<NodeConfig, ConfigError> {
        let Some(id) = args.id else {
            return error("give this node's id: --id N, or id = N in the --config file");
        };
        let Some(data_dir) = args.data_dir.clone() else {
            return error(
                "give a data dir: --data-dir DIR, or data-dir = \"DIR\" in the --config file",
            );
        };
        let (members, join) = NodeConfig::members_or_join(id, args)?;
        let timing = args.tuning.check()?;
        let fast_path = parse_fast_path_off(&args.tuning.fast_path_off)?;
        let listen = |flag: &str, given: &Option<String>| -> Result<Option<Address>, ConfigError> {
            given
                .as_deref()
                .map(|text| Address::parse(text).map_err(|e| ConfigError(format!("{flag}: {e}"))))
                .transpose()
        };
        let listen_peers = listen("--listen-peers", &args.listen_peers)?;
        let own = match (members.address(id), &listen_peers) {
            (Some(own), _) => own.clone(),
            (None, Some(listen)) if !listen.is_unspecified() => listen.clone(),
            // A joining node has no entry in a member list to be reached at.
            _ => {
                return error(
                    "--join needs --listen-peers HOST:PORT: where the cluster reaches this \
                     node (the address to give `raft-kv member add`), not 0.0.0.0",
                )
            }
        };
        let listen_peers = listen_peers.unwrap_or(own.clone());
        let listen_clients = listen("--listen-clients", &args.listen_clients)?
            .filter(|clients| *clients != listen_peers);
        let client_address = match &listen_clients {
            None => own.clone(),
            // Listening on every interface: clients reach the node at the
            // host its peers know it by.
            Some(clients) if clients.is_unspecified() => Address {
                host: own.host.clone(),
                port: clients.port,
            },
            Some(clients) => clients.clone(),
        };
        let metrics_addr = listen("--metrics-addr", &args.metrics_addr)?;
        check_metrics_addr(
            metrics_addr.as_ref(),
            &listen_peers,
            listen_clients.as_ref(),
        )?;
        if let Some(token) = &args.cluster_token {
            check_cluster_token(token)?;
        }
        let tls = args
            .tls
            .load(Holder::Node(id))
            .map_err(|e| ConfigError(format!("TLS: {e}")))?;
        Ok(NodeConfig {
            id,
            members,
            data_dir,
            timing,
            snapshot_log_bytes: args.tuning.snapshot_log_bytes,
            log_level: args.tuning.log_level,
            poll: Duration::from_micros(args.tuning.poll_us),
            fast_path,
            max_request_bytes: args.tuning.max_request_bytes,
            pre_vote: args.tuning.pre_vote,
            lease_reads: args.tuning.lease_reads,
            listen_peers,
            listen_clients,
            client_address,
            metrics_addr,
            cluster_token: args.cluster_token.clone(),
            join,
            own_address: own,
            allow_fault_injection: args.allow_fault_injection,
            tls,
        })
    }

    /// This node's own address, where its peers reach it.
    pub fn address(&self) -> &Address {
        &self.own_address
    }

    /// The members `--peers` (or the file) gives, or with `--join` none
    /// and the cluster to join.
    fn members_or_join(
        id: NodeId,
        args: &NodeArgs,
    ) -> Result<(Members, Option<ClusterId>), ConfigError> {
        let Some(join) = &args.join else {
            let Some(peers) = &args.peers else {
                return error(
                    "give the members: --peers ID=HOST:PORT,..., or [members] in the --config \
                     file (or --join CLUSTER_ID to join a running cluster)",
                );
            };
            let members = Members::parse_peers(peers)?;
            NodeConfig::check_membership(id, &members)?;
            return Ok((members, None));
        };
        if id == 0 {
            return error("--id 0 is reserved (it means 'none'); ids start at 1");
        }
        if args.peers.is_some() {
            return error(
                "--join and --peers do not go together: a joining node learns its members \
                 from the cluster that adds it",
            );
        }
        if args.cluster_token.is_some() {
            return error(
                "--join and --cluster-token do not go together: the token names a new \
                 cluster; --join names the running one by its id",
            );
        }
        let cluster = ClusterId::parse(join).ok_or_else(|| {
            ConfigError(format!(
                "--join '{join}' is not a cluster id (16 hex digits, as `raft-kv member list` \
                 prints it)"
            ))
        })?;
        Ok((Members::none(), Some(cluster)))
    }

    /// Check that `id` may run as a member of `members`.
    pub fn check_membership(id: NodeId, members: &Members) -> Result<(), ConfigError> {
        if id == 0 {
            return error("--id 0 is reserved (it means 'none'); ids start at 1");
        }
        if !members.contains(id) {
            let ids: Vec<String> = members.ids().iter().map(u64::to_string).collect();
            return error(format!(
                "--id {id} is not in the member list ({})",
                ids.join(", ")
            ));
        }
        Ok(())
    }

    /// The settings of the Raft core for this node.
    pub fn raft_config(&self) -> RaftConfig {
        // Empty with --join: the node waits for a leader to send it the log.
        let mut config = RaftConfig::new(self.id, self.members.ids());
        // The initial configuration's addresses travel in every later one.
        config.addresses = self
            .members
            .iter()
            .map(|(id, address)| (id, address.to_string()))
            .collect();
        config.election_timeout_ticks = self.timing.election_timeout_ticks;
        config.heartbeat_ticks = self.timing.heartbeat_ticks;
        config.snapshot_log_bytes = self.snapshot_log_bytes;
        config.pre_vote = self.pre_vote;
        // Members change online (§6): a removed server must not disrupt.
        config.ignore_votes_while_led = true;
        if self.lease_reads {
            // Two thirds of the minimum election timeout: safe while no
            // clock runs 1.5 times as fast as another (§6.4.1).
            config.lease_ticks = (self.timing.election_timeout_ticks.0 * 2 / 3).max(1);
        }
        if !self.fast_path.pipelining {
            // One AppendEntries with entries in flight per follower: send,
            // wait for the reply, send the next.
            config.max_in_flight = 1;
        }
        // A restarted node must not replay the timeouts of its last run, or
        // two nodes restarted together could keep splitting the vote (§5.2).
        config.seed = rand::random();
        config
    }
}

/// The parts of the fast path that the event loop switches from outside the
/// core (docs/performance.md). Each is on by default and none is needed for
/// correctness: `--fast-path-off` turns them off, to measure what each is
/// worth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastPath {
    /// step every peer message waiting in one turn, for one fsync
    /// (off: one message per turn)
    pub group_commit: bool,
    /// give the core every client request waiting in one turn: one append
    /// and one AppendEntries per follower (off: one request per turn)
    pub batching: bool,
    /// more than one AppendEntries with entries in flight per follower
    /// (off: `RaftConfig::max_in_flight` = 1)
    pub pipelining: bool,
}

impl Default for FastPath {
    fn default() -> Self {
        FastPath {
            group_commit: true,
            batching: true,
            pipelining: true,
        }
    }
}

/// Parse `--fast-path-off`: what stays on.
pub fn parse_fast_path_off(list: &str) -> Result<FastPath, ConfigError> {
    let mut fast_path = FastPath::default();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "group-commit" => fast_path.group_commit = false,
            "batching" => fast_path.batching = false,
            "pipelining" => fast_path.pipelining = false,
            "parallel-write" | "read-rounds" => {
                return error(format!(
                    "--fast-path-off: '{part}' is part of the core's one path now and cannot be turned off (docs/performance.md has what it was measured to be worth)"
                ))
            }
            other => {
                return error(format!(
                    "--fast-path-off: unknown part '{other}' (known: group-commit, batching, pipelining)"
                ))
            }
        }
    }
    Ok(fast_path)
}

/// Check `--poll-us`.
pub fn check_poll_us(poll_us: u64) -> Result<Duration, ConfigError> {
    if poll_us > MAX_POLL_US {
        return error(format!(
            "--poll-us {poll_us} is too long: at most {MAX_POLL_US}"
        ));
    }
    Ok(Duration::from_micros(poll_us))
}

/// Check `--cluster-token`: it goes into gRPC metadata and a file, so a
/// short run of visible characters.
pub fn check_cluster_token(token: &str) -> Result<(), ConfigError> {
    let visible = token.chars().all(|c| c.is_ascii_graphic());
    if token.is_empty() || token.len() > 256 || !visible {
        return error("--cluster-token must be 1 to 256 visible ASCII characters (no spaces)");
    }
    Ok(())
}

pub use crate::raft::state::DEFAULT_SNAPSHOT_LOG_BYTES;

/// `--max-request-bytes` by default: 1.5 MiB, as etcd's, room for the
/// largest key and value (`kv::MAX_KEY_BYTES`, `kv::MAX_VALUE_BYTES`) and
/// the rest of a request.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 3 << 19;
/// The range `--max-request-bytes` may take: below 1 KiB no useful request
/// fits; above 64 MiB, the bridge's own message limit.
const MAX_REQUEST_BYTES_RANGE: (usize, usize) = (1 << 10, 64 << 20);

/// Check `--max-request-bytes`.
pub fn check_max_request_bytes(bytes: usize) -> Result<usize, ConfigError> {
    let (least, most) = MAX_REQUEST_BYTES_RANGE;
    if !(least..=most).contains(&bytes) {
        return error(format!(
            "--max-request-bytes {bytes} is outside {least}..={most}"
        ));
    }
    Ok(bytes)
}

/// Check `--snapshot-log-bytes`.
pub fn check_snapshot_log_bytes(bytes: usize) -> Result<usize, ConfigError> {
    if bytes == 0 {
        return error("--snapshot-log-bytes must be at least 1");
    }
    Ok(bytes)
}

/// The metrics endpoint speaks HTTP/1.1, not gRPC: it needs a port of its own.
pub fn check_metrics_addr(
    metrics: Option<&Address>,
    peers: &Address,
    clients: Option<&Address>,
) -> Result<(), ConfigError> {
    let Some(metrics) = metrics else {
        return Ok(());
    };
    let taken = |other: &Address| {
        other.port == metrics.port
            && (other.host == metrics.host || other.is_unspecified() || metrics.is_unspecified())
    };
    if taken(peers) || clients.is_some_and(taken) {
        return error(format!(
            "--metrics-addr {metrics}: this node serves gRPC on that port; give the \
             metrics a port of their own"
        ));
    }
    Ok(())
}

/// Bind this node's listening socket now, so a busy port is reported before
/// anything else starts.
pub fn bind_listener(address: &Address) -> Result<TcpListener, ConfigError> {
    TcpListener::bind((address.host.trim_matches(['[', ']']), address.port)).map_err(|e| {
        ConfigError(match e.kind() {
            io::ErrorKind::AddrInUse => format!("address {address} is already in use"),
            io::ErrorKind::AddrNotAvailable => {
                format!("address {address} is not an address of this machine")
            }
            _ => format!("cannot listen on {address}: {e}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers_error(list: &str) -> String {
        Members::parse_peers(list).unwrap_err().0
    }

    fn timing_error(election: &str, heartbeat: u64, tick: u64) -> String {
        Timing::new(election, heartbeat, tick).unwrap_err().0
    }

    #[test]
    fn parses_a_peers_list() {
        let members =
            Members::parse_peers("2=127.0.0.1:7002, 1=localhost:7001,3=[::1]:7003").unwrap();
        assert_eq!(members.ids(), vec![1, 2, 3]);
        assert_eq!(members.address(1).unwrap().to_string(), "localhost:7001");
        assert_eq!(members.address(3).unwrap().url(false), "http://[::1]:7003");
        assert_eq!(
            members.to_peers_flag(),
            "1=localhost:7001,2=127.0.0.1:7002,3=[::1]:7003"
        );
    }

    #[test]
    fn rejects_bad_peers_entries_and_names_them() {
        assert_eq!(
            peers_error("1=127.0.0.1:7001,2:127.0.0.1:7002"),
            "--peers entry 2 ('2:127.0.0.1:7002') is not ID=HOST:PORT"
        );
        assert_eq!(
            peers_error("1=127.0.0.1:7001,"),
            "--peers entry 2 ('') is not ID=HOST:PORT"
        );
        assert_eq!(
            peers_error("x=127.0.0.1:7001"),
            "--peers entry 'x=127.0.0.1:7001': node id 'x' is not a positive integer"
        );
        assert_eq!(
            peers_error("1=127.0.0.1"),
            "--peers entry '1=127.0.0.1': address '127.0.0.1' is not HOST:PORT"
        );
        assert_eq!(
            peers_error("1=127.0.0.1:70000"),
            "--peers entry '1=127.0.0.1:70000': address '127.0.0.1:70000' has no valid port (1-65535 expected)"
        );
        assert_eq!(
            peers_error("1=127.0.0.1:0"),
            "--peers entry '1=127.0.0.1:0': address '127.0.0.1:0' has no valid port (1-65535 expected)"
        );
        assert_eq!(
            peers_error("1=:7001"),
            "--peers entry '1=:7001': address ':7001' has no valid host"
        );
        assert!(peers_error("1=::1:7001").contains("write an IPv6 host in brackets"));
        // Another separator than a comma is not an IPv6 problem.
        assert_eq!(
            peers_error("1=127.0.0.1:7001;2=127.0.0.1:7002"),
            "--peers entry 1 ('1=127.0.0.1:7001;2=127.0.0.1:7002') holds more than one member: separate members with commas, like 1=127.0.0.1:7001,2=127.0.0.1:7002"
        );
        assert_eq!(
            peers_error("1=127.0.0.1:7001 2=127.0.0.1:7002"),
            "--peers entry 1 ('1=127.0.0.1:7001 2=127.0.0.1:7002') holds more than one member: separate members with commas, like 1=127.0.0.1:7001,2=127.0.0.1:7002"
        );
        assert_eq!(
            peers_error("1=127.0.0.1;x:7001"),
            "--peers entry '1=127.0.0.1;x:7001': address '127.0.0.1;x:7001' has no valid host"
        );
        assert_eq!(
            peers_error("1=my host:7001"),
            "--peers entry '1=my host:7001': address 'my host:7001' has no valid host"
        );
    }

    #[test]
    fn rejects_id_zero() {
        assert_eq!(
            peers_error("0=127.0.0.1:7001"),
            "--peers entry '0=127.0.0.1:7001': node id 0 is reserved (it means 'none'); ids start at 1"
        );
        let members = Members::parse_peers("1=127.0.0.1:7001").unwrap();
        assert_eq!(
            NodeConfig::check_membership(0, &members).unwrap_err().0,
            "--id 0 is reserved (it means 'none'); ids start at 1"
        );
    }

    #[test]
    fn rejects_duplicate_ids_and_addresses() {
        assert_eq!(
            peers_error("1=127.0.0.1:7001,1=127.0.0.1:7002"),
            "node id 1 is listed twice"
        );
        assert_eq!(
            peers_error("1=127.0.0.1:7001,2=127.0.0.1:7001"),
            "address 127.0.0.1:7001 is listed twice"
        );
    }

    #[test]
    fn rejects_own_id_not_in_the_list() {
        let members = Members::parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7002").unwrap();
        assert_eq!(
            NodeConfig::check_membership(4, &members).unwrap_err().0,
            "--id 4 is not in the member list (1, 2)"
        );
        assert!(NodeConfig::check_membership(2, &members).is_ok());
    }

    #[test]
    fn converts_milliseconds_to_ticks_rounding_up() {
        let timing = Timing::new("150-300", 50, 10).unwrap();
        assert_eq!(timing.election_timeout_ticks, (15, 30));
        assert_eq!(timing.heartbeat_ticks, 5);
        assert_eq!(timing.tick, Duration::from_millis(10));
        let timing = Timing::new("155-301", 1, 10).unwrap();
        assert_eq!(timing.election_timeout_ticks, (16, 31));
        assert_eq!(timing.heartbeat_ticks, 1);
    }

    #[test]
    fn rejects_bad_election_timeouts() {
        for text in ["150", "150-", "-300", "a-b", "150..300", "300-150-1"] {
            assert_eq!(
                timing_error(text, 50, 10),
                format!(
                    "--election-timeout-ms '{text}' is not MIN-MAX in milliseconds, like 150-300"
                )
            );
        }
        assert_eq!(
            timing_error("300-150", 50, 10),
            "--election-timeout-ms 300-150: MIN must be less than MAX"
        );
        assert_eq!(
            timing_error("150-150", 50, 10),
            "--election-timeout-ms 150-150: MIN must be less than MAX"
        );
        assert_eq!(
            timing_error("0-300", 50, 10),
            "--election-timeout-ms: the minimum must be at least 1"
        );
    }

    #[test]
    fn rejects_bad_heartbeats_and_ticks() {
        assert_eq!(
            timing_error("150-300", 150, 10),
            "--heartbeat-ms 150 must be less than the minimum election timeout (150 ms)"
        );
        assert_eq!(
            timing_error("150-300", 0, 10),
            "--heartbeat-ms must be at least 1"
        );
        assert_eq!(
            timing_error("150-300", 50, 0),
            "--tick-ms must be at least 1"
        );
        assert_eq!(
            timing_error("150-300", 50, 150),
            "--tick-ms 150 is too coarse for --election-timeout-ms 150-300 and --heartbeat-ms 50"
        );
        assert_eq!(
            timing_error("141-150", 50, 10),
            "--tick-ms 10 is too coarse for --election-timeout-ms 141-150 and --heartbeat-ms 50"
        );
    }

    #[test]
    fn rejects_a_zero_snapshot_log_bytes() {
        assert_eq!(
            check_snapshot_log_bytes(0).unwrap_err().0,
            "--snapshot-log-bytes must be at least 1"
        );
        assert_eq!(check_snapshot_log_bytes(10_000), Ok(10_000));
    }

    #[test]
    fn fast_path_off_names_known_parts() {
        assert_eq!(parse_fast_path_off("").unwrap(), FastPath::default());
        let fast_path = parse_fast_path_off("pipelining, group-commit").unwrap();
        assert!(!fast_path.pipelining && !fast_path.group_commit && fast_path.batching);
        assert_eq!(
            parse_fast_path_off("batching,turbo").unwrap_err().0,
            "--fast-path-off: unknown part 'turbo' (known: group-commit, batching, pipelining)"
        );
        assert!(parse_fast_path_off("parallel-write").is_err());
    }

    #[test]
    fn rejects_a_poll_longer_than_10_ms() {
        assert_eq!(
            check_poll_us(10_001).unwrap_err().0,
            "--poll-us 10001 is too long: at most 10000"
        );
        assert_eq!(check_poll_us(0), Ok(Duration::ZERO));
    }

    #[test]
    fn reports_a_port_already_in_use() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let address = Address::parse(&format!("127.0.0.1:{port}")).unwrap();
        assert_eq!(
            bind_listener(&address).unwrap_err().0,
            format!("address 127.0.0.1:{port} is already in use")
        );
        drop(taken);
        assert!(bind_listener(&address).is_ok());
    }

    #[test]
    fn the_metrics_need_a_port_of_their_own() {
        let a = |text: &str| Address::parse(text).unwrap();
        let (peers, clients) = (a("10.0.0.1:7001"), a("0.0.0.0:7101"));
        let check = |metrics: &str| check_metrics_addr(Some(&a(metrics)), &peers, Some(&clients));
        assert_eq!(check("10.0.0.1:9101"), Ok(()));
        assert_eq!(check("127.0.0.1:7001"), Ok(()), "another host");
        assert_eq!(check_metrics_addr(None, &peers, None), Ok(()));
        for taken in ["10.0.0.1:7001", "0.0.0.0:7001", "127.0.0.1:7101"] {
            assert_eq!(
                check(taken).unwrap_err().0,
                format!(
                    "--metrics-addr {taken}: this node serves gRPC on that port; give the \
                     metrics a port of their own"
                )
            );
        }
    }
}
