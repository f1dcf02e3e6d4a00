//! `raft-kv-bench` (run as `raft-kv bench`): a load generator for raft-kv,
//! and for etcd with the same client settings, so the two can be compared
//! side by side (docs/performance.md). It is a binary of its own, a client
//! of the `raft_kv` library, so that the library and the `raft-kv` binary
//! hold only the product; `raft-kv bench ARGS` runs this binary, which
//! `cargo build --release` puts beside it.
//!
//! The bench is a gRPC client, so unlike the nodes it is async: a tokio
//! multi-thread runtime runs one task per simulated client (`client.rs`).
//! Requests and keys are made before the clock starts, and connections are
//! shared, so that on a small machine the bench takes as little CPU from the
//! cluster as it can; it reports what it took.
//!
//! - `workload.rs`: rtt, write-latency, write-throughput, read-throughput, failover.
//! - `grow.rs`: grow, the state growing to --keyspace keys, sampled each second.
//! - `local.rs`: `--local`, a fresh cluster of --nodes members the bench
//!   starts (the `raft-kv` binary beside this one, or etcd), measures
//!   (memory, data dir, logs) and kills.
//! - `floor.rs`: the machine's floor (a loopback round trip, an fsync, empty
//!   gRPC calls/s), measured in every run; each workload is also reported as
//!   a multiple of it.
//! - `report.rs`: the tables and the JSON.
//! - `etcd.proto`: the few etcd messages the bench sends (compiled by
//!   build.rs, included only here); `etcd.sh` installs etcd and runs the
//!   comparison (`make bench-etcd`, `make bench-compare`).
//! - `fastpath.sh`: `make bench-fastpath`, each part of the fast path off in turn.
//! - `scaling.sh` and `plot.py`: `make bench-scaling`, the bench over node
//!   counts, client counts and value sizes, plotted as SVG.

// Memory allocated on one thread and freed on another is glibc malloc's
// slow path, and the bridge's normal case (Cargo.toml, docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod client;
mod floor;
mod grow;
mod local;
mod report;
mod stats;
mod workload;

/// The etcd messages of `etcd.proto`.
mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use raft_kv::cli::parse_duration;
use raft_kv::config::{Tuning, EXIT_BAD_CONFIG};
use raft_kv::server::interrupt;
use raft_kv::tls::{Holder, TlsArgs};

use client::{Pool, System};
use floor::Floor;
use local::{LocalCluster, Spec, DEFAULT_MEMBERS, MAX_MEMBERS};
use report::{Setup, Summary};
use workload::{CpuMeter, Data, Measured, Op, Progress, Workload};

/// Load a cluster (raft-kv or etcd) and report latency and throughput.
#[derive(Parser)]
#[command(name = "raft-kv-bench", after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  a cluster failed
  2  bad flags: one line on stderr";

fn main() {
    let cli: Cli = raft_kv::cli::parse_or_exit();
    std::process::exit(run_bench(cli.bench));
}

/// raft-kv's addresses under `make cluster`.
const RAFT_KV_CLUSTER: &str = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003";
/// etcd's own default client address.
const ETCD_CLUSTER: &str = "127.0.0.1:2379";
/// raft-kv refuses larger keys and values (docs/api.md).
const MAX_KEY_SIZE: usize = 4096;
const MAX_VALUE_SIZE: usize = 1 << 20;

/// `raft-kv bench` flags: load a cluster and report latency percentiles and ops/s.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The system to load. `both` runs raft-kv and then etcd, each on a fresh
    /// local cluster, and prints one table with ratios (needs --local).
    #[arg(long, value_enum, default_value_t = TargetArg::RaftKv)]
    pub target: TargetArg,
    /// Start a fresh cluster (--nodes members) on free loopback ports, with
    /// its data in a temporary directory, and stop it at the end. Failover
    /// needs it: the bench must own the processes to kill the leader. So do
    /// the members' resident memory and data dirs, which it reports.
    #[arg(long)]
    pub local: bool,
    /// Members of the --local cluster: an odd number from 1 to 7 [default: 3].
    #[arg(long, value_name = "N")]
    pub nodes: Option<usize>,
    /// Client addresses of every member of a running cluster, comma-separated
    /// (without --local). Default: raft-kv's 127.0.0.1:7001-7003 (`make
    /// cluster`), etcd's 127.0.0.1:2379.
    #[arg(long, value_name = "ADDR,ADDR,...", value_delimiter = ',')]
    pub cluster: Vec<String>,
    /// With --local: raft-kv's nodes, and the bench's clients of them, use
    /// mutual TLS, with a CA and certificates made for each run in its
    /// temporary directory (as `raft-kv certs` makes them). etcd stays
    /// plaintext.
    #[arg(long)]
    pub tls: bool,
    // A running raft-kv cluster that uses TLS (without --local): the
    // client's files (--tls-dir, or --cert/--key/--ca).
    #[command(flatten)]
    pub tls_files: TlsArgs,
    /// What to run, comma-separated: all, or any of rtt, write-latency,
    /// write-throughput, read-throughput, failover, handover, grow,
    /// sessions, large-values, many-writers, oversize (run in that order).
    /// `all` is the first five; handover is failover with SIGTERM, which
    /// hands the leadership over first. large-values (8 clients, 40 values of 1 MiB),
    /// many-writers (256 clients, 20 000 values of 16 KiB) and oversize (6
    /// clients, 60 values of 63 MiB, which count when refused) fix their
    /// own clients and values; the "new terms" column says how many
    /// elections a workload caused.
    #[arg(
        long,
        value_enum,
        value_name = "WORKLOAD,...",
        value_delimiter = ',',
        default_value = "all"
    )]
    pub workload: Vec<WorkloadArg>,
    /// Concurrent clients of write-throughput, read-throughput, grow and
    /// sessions.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub clients: usize,
    /// Operations per workload [default: 5000 for rtt and write-latency,
    /// 50000 for write-throughput, 100000 for read-throughput, 200000 for
    /// sessions]. Grow writes --keyspace keys instead.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Bytes per key.
    #[arg(long, value_name = "BYTES", default_value_t = 16)]
    pub key_size: usize,
    /// Bytes per value.
    #[arg(long, value_name = "BYTES", default_value_t = 128)]
    pub value_size: usize,
    /// Distinct keys: writes cycle through them, reads find them all, grow
    /// writes each once.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub keyspace: usize,
    /// read-throughput reads any member's own state (raft-kv STALE, etcd
    /// serializable) instead of linearizable reads.
    #[arg(long)]
    pub stale: bool,
    /// How many times failover kills the leader.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub kills: usize,
    /// Repeat everything N times, each on a fresh cluster with --local, and
    /// report the medians (the order of the systems alternates with `both`).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub runs: usize,
    /// Start every client on the member that leads when the workload starts,
    /// rather than spreading them over the members. raft-kv's clients end up
    /// there anyway; etcd's then skip the follower's hop to its leader.
    #[arg(long)]
    pub at_leader: bool,
    /// Print one JSON object per workload instead of tables.
    #[arg(long)]
    pub json: bool,
    /// How long one RPC to one member may take before the client tries the
    /// next one: 500ms, 1s, or plain seconds.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub rpc_timeout: Duration,
    /// The same for the failover writer. A write sent to a member that has
    /// not yet noticed the leader's death may never be answered (etcd holds
    /// it until its own request timeout, about 7 s), so this bounds what the
    /// client adds to the measured pause.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_duration)]
    pub failover_rpc_timeout: Duration,
    /// The etcd executable, for --local with --target etcd or both.
    #[arg(long, value_name = "PATH", default_value = "etcd")]
    pub etcd: PathBuf,
    /// Extra flags for every local etcd member, in one string, e.g.
    /// "--heartbeat-interval 50 --election-timeout 150". Default: etcd's defaults.
    #[arg(
        long,
        value_name = "FLAGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub etcd_flags: String,
    /// The raft-kv nodes' flags, for --local.
    #[command(flatten)]
    pub tuning: Tuning,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetArg {
    #[value(name = "raft-kv")]
    RaftKv,
    Etcd,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadArg {
    All,
    Rtt,
    WriteLatency,
    WriteThroughput,
    ReadThroughput,
    Failover,
    Handover,
    Grow,
    Sessions,
    LargeValues,
    ManyWriters,
    Oversize,
}

/// The checked flags: what to run, against what.
#[derive(Debug)]
struct Plan {
    systems: Vec<System>,
    local: bool,
    /// Members of each local cluster.
    nodes: usize,
    /// Without --local: the addresses of each system's cluster.
    cluster: Vec<String>,
    /// With --local: raft-kv's nodes and clients use TLS (--tls).
    local_tls: bool,
    /// Without --local: the client's TLS files for raft-kv, checked.
    tls_files: TlsArgs,
    workloads: Vec<Workload>,
    /// A workload of `all` that cannot run, and why.
    skipped: Option<String>,
    /// The keys and the value of every request.
    data: Arc<Data>,
    clients: usize,
    count: Option<u64>,
    keyspace: usize,
    key_size: usize,
    value_size: usize,
    stale: bool,
    kills: usize,
    runs: usize,
    at_leader: bool,
    json: bool,
    rpc_timeout: Duration,
    failover_rpc_timeout: Duration,
    etcd: PathBuf,
    etcd_flags: Vec<String>,
    tuning: Tuning,
}

impl Plan {
    fn from_args(args: &BenchArgs) -> Result<Plan, String> {
        let systems = match args.target {
            TargetArg::RaftKv => vec![System::RaftKv],
            TargetArg::Etcd => vec![System::Etcd],
            TargetArg::Both => vec![System::RaftKv, System::Etcd],
        };
        if args.local && !args.cluster.is_empty() {
            return Err("give either --local or --cluster, not both".into());
        }
        if args.target == TargetArg::Both && !args.local {
            return Err(
                "--target both needs --local: each system runs on a fresh local cluster".into(),
            );
        }
        check_tls(args)?;
        let named = |w: Workload| {
            args.workload.iter().any(|&arg| match arg {
                WorkloadArg::All => false,
                WorkloadArg::Rtt => w == Workload::Rtt,
                WorkloadArg::WriteLatency => w == Workload::WriteLatency,
                WorkloadArg::WriteThroughput => w == Workload::WriteThroughput,
                WorkloadArg::ReadThroughput => w == Workload::ReadThroughput,
                WorkloadArg::Failover => w == Workload::Failover,
                WorkloadArg::Handover => w == Workload::Handover,
                WorkloadArg::Grow => w == Workload::Grow,
                WorkloadArg::Sessions => w == Workload::Sessions,
                WorkloadArg::LargeValues => w == Workload::LargeValues,
                WorkloadArg::ManyWriters => w == Workload::ManyWriters,
                WorkloadArg::Oversize => w == Workload::Oversize,
            })
        };
        let nodes = match args.nodes {
            None => DEFAULT_MEMBERS,
            Some(_) if !args.local => {
                return Err(
                    "--nodes needs --local: a running cluster has the members it has".into(),
                )
            }
            Some(n) => check_nodes(n)?,
        };
        let all = args.workload.contains(&WorkloadArg::All);
        let mut workloads: Vec<Workload> = Workload::ORDER
            .into_iter()
            .filter(|&w| (all && Workload::ALL.contains(&w)) || named(w))
            .collect();
        let mut skipped = None;
        let failover_impossible = if !args.local {
            Some("failover needs --local: the bench must own the processes to kill the leader")
        } else if nodes == 1 {
            Some("failover needs --nodes 3 or more: a single member has no one to take over")
        } else {
            None
        };
        if let Some(why) = failover_impossible.filter(|_| workloads.contains(&Workload::Failover)) {
            if named(Workload::Failover) {
                return Err(why.into());
            }
            workloads.retain(|&w| w != Workload::Failover);
            skipped = Some(format!("failover skipped: {why}"));
        }
        if let Some(why) = failover_impossible.filter(|_| named(Workload::Handover)) {
            return Err(why.replace("failover", "handover"));
        }
        let cluster = match (&args.cluster[..], args.target) {
            ([], TargetArg::Etcd) => split(ETCD_CLUSTER),
            ([], _) => split(RAFT_KV_CLUSTER),
            (addrs, _) => addrs.iter().map(|a| a.trim().to_string()).collect(),
        };
        if let Some(bad) = cluster.iter().find(|a| !is_host_port(a)) {
            return Err(format!(
                "--cluster: bad address {bad:?}: expected host:port"
            ));
        }
        positive("--clients", args.clients)?;
        positive("--keyspace", args.keyspace)?;
        positive("--kills", args.kills)?;
        positive("--runs", args.runs)?;
        if args.count == Some(0) {
            return Err("--count must be at least 1".into());
        }
        if !(1..=MAX_KEY_SIZE).contains(&args.key_size) {
            return Err(format!(
                "--key-size must be 1 to {MAX_KEY_SIZE} bytes (raft-kv's limit)"
            ));
        }
        if args.value_size > MAX_VALUE_SIZE {
            return Err(format!(
                "--value-size must be at most {MAX_VALUE_SIZE} bytes (raft-kv's limit)"
            ));
        }
        // Made here, so that a key size too small for the keyspace is bad input.
        let data = Data::new(args.keyspace, args.key_size, args.value_size, args.stale)?;
        if args.local && systems.contains(&System::RaftKv) {
            args.tuning.check().map_err(|e| e.to_string())?;
        }
        Ok(Plan {
            systems,
            local: args.local,
            nodes,
            cluster,
            local_tls: args.tls,
            tls_files: args.tls_files.clone(),
            workloads,
            skipped,
            data: Arc::new(data),
            clients: args.clients,
            count: args.count,
            keyspace: args.keyspace,
            key_size: args.key_size,
            value_size: args.value_size,
            stale: args.stale,
            kills: args.kills,
            runs: args.runs,
            at_leader: args.at_leader,
            json: args.json,
            rpc_timeout: args.rpc_timeout,
            failover_rpc_timeout: args.failover_rpc_timeout,
            etcd: args.etcd.clone(),
            etcd_flags: args
                .etcd_flags
                .split_whitespace()
                .map(String::from)
                .collect(),
            tuning: args.tuning.clone(),
        })
    }

    fn count(&self, workload: Workload) -> u64 {
        match workload {
            Workload::Grow => self.keyspace as u64,
            _ => self.count.unwrap_or(workload.default_count()),
        }
    }

    fn clients(&self, workload: Workload) -> usize {
        match workload {
            Workload::WriteThroughput
            | Workload::ReadThroughput
            | Workload::Grow
            | Workload::Sessions => self.clients,
            Workload::Rtt | Workload::WriteLatency | Workload::Failover | Workload::Handover => 1,
            Workload::LargeValues | Workload::ManyWriters | Workload::Oversize => {
                workload.fixed_shape().map_or(1, |(clients, _)| clients)
            }
        }
    }

    fn spec(&self, system: System) -> Result<Spec, String> {
        Ok(match system {
            System::RaftKv => Spec::RaftKv {
                exe: raft_kv_beside_me()?,
                tuning: self.tuning.clone(),
                tls: self.local_tls,
            },
            System::Etcd => Spec::Etcd {
                exe: self.etcd.clone(),
                extra_flags: self.etcd_flags.clone(),
            },
        })
    }

    /// Whether the raft-kv clusters use TLS (--tls, or the TLS files).
    fn tls(&self) -> bool {
        self.local_tls || self.tls_files.enabled()
    }

    /// What every JSON object repeats about the run.
    fn setup(&self, system: System) -> Setup {
        Setup {
            nodes: if self.local {
                self.nodes
            } else {
                self.cluster.len()
            },
            local: self.local,
            key_size: self.key_size,
            value_size: self.value_size,
            keyspace: self.keyspace,
            stale: self.stale,
            tls: self.tls() && system == System::RaftKv,
            snapshot_log_bytes: (self.local && system == System::RaftKv)
                .then_some(self.tuning.snapshot_log_bytes),
        }
    }

    /// The settings, printed above the tables.
    fn describe(&self) -> String {
        let mut lines = vec![if self.local {
            format!(
                "cluster: a fresh local {}-member cluster per system and run, on loopback",
                self.nodes
            )
        } else {
            format!("cluster: {}", self.cluster.join(","))
        }];
        if self.local && self.systems.contains(&System::RaftKv) {
            lines.push(format!(
                "raft-kv: --election-timeout-ms {} --heartbeat-ms {} --tick-ms {} --snapshot-log-bytes {}",
                self.tuning.election_timeout_ms,
                self.tuning.heartbeat_ms,
                self.tuning.tick_ms,
                self.tuning.snapshot_log_bytes
            ));
        }
        if self.tls() {
            lines.push(
                if self.systems.contains(&System::Etcd) {
                    "tls: mutual TLS between raft-kv's nodes and with its clients; etcd in plaintext"
                } else {
                    "tls: mutual TLS between raft-kv's nodes and with its clients"
                }
                .into(),
            );
        }
        if self.local && self.systems.contains(&System::Etcd) {
            lines.push(format!(
                "etcd: {} ({})",
                self.etcd.display(),
                if self.etcd_flags.is_empty() {
                    "its defaults".to_string()
                } else {
                    self.etcd_flags.join(" ")
                }
            ));
        }
        lines.push(format!(
            "requests: keys {} B, values {} B, keyspace {}, {} reads, {} clients for the throughput workloads{}, RPC timeout {:?} ({:?} in failover)",
            self.key_size,
            self.value_size,
            self.keyspace,
            if self.stale { "stale" } else { "linearizable" },
            self.clients,
            if self.at_leader { " starting on the leader" } else { " spread over the members" },
            self.rpc_timeout,
            self.failover_rpc_timeout,
        ));
        lines.push(format!(
            "{} run{}{}, on {} cores",
            self.runs,
            if self.runs == 1 {
                ""
            } else {
                "s, medians shown"
            },
            if self.systems.len() == 2 && self.runs > 1 {
                " (the systems' order alternates)"
            } else {
                ""
            },
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        ));
        lines.join("\n")
    }
}

/// The `raft-kv` binary the local nodes run: the one beside this binary,
/// where `cargo build` puts both.
fn raft_kv_beside_me() -> Result<PathBuf, String> {
    let me = std::env::current_exe()
        .map_err(|e| format!("cannot find the raft-kv-bench executable: {e}"))?;
    let raft_kv = me.with_file_name(format!("raft-kv{}", std::env::consts::EXE_SUFFIX));
    if !raft_kv.is_file() {
        return Err(format!(
            "the raft-kv binary is not beside {}; `cargo build --release` builds both",
            me.display()
        ));
    }
    Ok(raft_kv)
}

/// --tls is for the nodes the bench starts, the TLS files for a running
/// cluster's; both for raft-kv only. The files are read here, so that a
/// missing one is a bad flag.
fn check_tls(args: &BenchArgs) -> Result<(), String> {
    let files = args.tls_files.enabled();
    if args.tls && !args.local {
        return Err(
            "--tls needs --local: it makes certificates for the nodes the bench starts; \
             for a running cluster give --tls-dir DIR (or --cert, --key and --ca)"
                .into(),
        );
    }
    if files && args.local {
        return Err(
            "--tls-dir, --cert, --key and --ca are for a running cluster; \
             with --local give --tls, and the bench makes its own certificates"
                .into(),
        );
    }
    if (args.tls || files) && args.target == TargetArg::Etcd {
        return Err("TLS is for raft-kv: the bench speaks to etcd in plaintext".into());
    }
    args.tls_files.load(Holder::Client).map(|_| ())
}

fn split(list: &str) -> Vec<String> {
    list.split(',').map(String::from).collect()
}

fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// `--nodes`: an odd number of members, 1 to [`MAX_MEMBERS`].
fn check_nodes(n: usize) -> Result<usize, String> {
    if !(1..=MAX_MEMBERS).contains(&n) || n.is_multiple_of(2) {
        let why = if n.is_multiple_of(2) && (1..=MAX_MEMBERS).contains(&n) {
            format!(
                ": {n} members tolerate no more failures than {} (a majority of {n} is {})",
                n - 1,
                n / 2 + 1
            )
        } else {
            String::new()
        };
        return Err(format!(
            "--nodes must be an odd number from 1 to {MAX_MEMBERS}, not {n}{why}"
        ));
    }
    Ok(n)
}

fn positive(flag: &str, value: usize) -> Result<(), String> {
    if value == 0 {
        return Err(format!("{flag} must be at least 1"));
    }
    Ok(())
}

/// Run the bench; returns the process exit code (2 for bad flags, 1 when a
/// cluster fails).
pub fn run_bench(args: BenchArgs) -> i32 {
    let plan = match Plan::from_args(&args) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("raft-kv bench: error: {error}");
            return EXIT_BAD_CONFIG;
        }
    };
    let data = Arc::clone(&plan.data);
    let load_before = std::fs::read_to_string("/proc/loadavg").ok().map(|text| {
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    });
    // Ctrl-C stops the clients, so the members are killed and the scratch
    // directories removed on the way out.
    interrupt::catch();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raft-kv bench: error: cannot start the tokio runtime: {e}");
            return 1;
        }
    };
    let mut summaries: Vec<Summary> = Vec::new();
    let mut floors = Vec::new();
    for run in 0..plan.runs {
        // Before any cluster runs, on the file system the local clusters use.
        match measure_floor(&runtime, &plan) {
            Ok(floor) => floors.push(floor),
            Err(error) => eprintln!("raft-kv bench: the machine's floor is not measured: {error}"),
        }
        let mut order = plan.systems.clone();
        // Alternating the order spreads slow drift of the machine over both.
        if run % 2 == 1 {
            order.reverse();
        }
        for system in order {
            let measured = match run_once(&runtime, &plan, system, &data, run) {
                Ok(measured) => measured,
                Err(error) => {
                    eprintln!(
                        "raft-kv bench: error: {} run {}: {error}",
                        system.name(),
                        run + 1
                    );
                    return 1;
                }
            };
            for (workload, m) in measured {
                match summaries
                    .iter_mut()
                    .find(|s| s.system == system && s.workload == workload)
                {
                    Some(summary) => summary.runs.push(m),
                    None => summaries.push(Summary {
                        system,
                        workload,
                        runs: vec![m],
                    }),
                }
            }
        }
    }
    let floor = Floor::median_of(&floors);
    print!(
        "{}",
        render(&plan, &summaries, floor.as_ref(), load_before.as_deref())
    );
    0
}

/// The machine's floor (src/bin/raft-kv-bench/floor.rs). The round trips go
/// to a one-member raft-kv node, which answers the gRPC health check from
/// its bridge, without its event loop: an empty call to another process,
/// as a client's is. The fsyncs go to the file system of the scratch dirs.
fn measure_floor(runtime: &tokio::runtime::Runtime, plan: &Plan) -> Result<Floor, String> {
    let spec = Spec::RaftKv {
        exe: raft_kv_beside_me()?,
        tuning: plan.tuning.clone(),
        tls: false,
    };
    let server = LocalCluster::start(&spec, 1)?;
    let addr = server.client_addrs().remove(0);
    floor::measure(runtime, &std::env::temp_dir(), &addr, plan.clients)
}

fn render(
    plan: &Plan,
    summaries: &[Summary],
    floor: Option<&Floor>,
    load_before: Option<&str>,
) -> String {
    if plan.json {
        return summaries
            .iter()
            .map(|s| report::json(s, &plan.setup(s.system), floor) + "\n")
            .collect();
    }
    let of = |system: System| -> Vec<&Summary> {
        let mut mine: Vec<&Summary> = summaries.iter().filter(|s| s.system == system).collect();
        mine.sort_by_key(|s| Workload::ORDER.iter().position(|&w| w == s.workload));
        mine
    };
    let mut out = format!("{}\n", plan.describe());
    if let Some(load) = load_before {
        // Other work on the machine skews every number; this shows if there was some.
        out.push_str(&format!(
            "load average before the run (1, 5, 15 min): {load}\n"
        ));
    }
    if let Some(floor) = floor {
        out.push_str(&format!("{}\n", floor.describe()));
    }
    if let Some(skipped) = &plan.skipped {
        out.push_str(&format!("{skipped}\n"));
    }
    for &system in &plan.systems {
        out.push_str(&format!(
            "\n{}\n{}",
            system.name(),
            report::table(&of(system), floor, plan.stale)
        ));
    }
    if plan.systems.len() == 2 {
        out.push('\n');
        out.push_str(&report::comparison(
            &of(System::RaftKv),
            &of(System::Etcd),
            plan.clients,
            plan.stale,
            floor,
        ));
    }
    out
}

/// Every workload of the plan against one system, on a fresh cluster with
/// --local; the cluster is stopped before returning.
fn run_once(
    runtime: &tokio::runtime::Runtime,
    plan: &Plan,
    system: System,
    data: &Arc<Data>,
    run: usize,
) -> Result<Vec<(Workload, Measured)>, String> {
    let mut cluster = if plan.local {
        Some(LocalCluster::start(&plan.spec(system)?, plan.nodes)?)
    } else {
        None
    };
    let addrs = cluster
        .as_ref()
        .map_or_else(|| plan.cluster.clone(), LocalCluster::client_addrs);
    let tls = match &cluster {
        Some(cluster) => cluster.client_tls().cloned(),
        None => plan.tls_files.load(Holder::Client)?,
    };
    let result = runtime.block_on(async {
        let pool = Pool::new(system, &addrs, plan.rpc_timeout, tls.as_ref())?;
        workload::wait_for_leader(&pool, || {
            cluster.as_mut().map_or(Ok(()), LocalCluster::check_alive)
        })
        .await?;
        let mut results = Vec::new();
        for &w in &plan.workloads {
            let label = format!(
                "{} {} (run {}/{})",
                system.name(),
                w.name(),
                run + 1,
                plan.runs
            );
            let measured = run_workload(plan, w, &pool, cluster.as_mut(), data, label).await?;
            results.push((w, measured));
        }
        Ok::<_, String>(results)
    });
    match (result, cluster.as_mut()) {
        (Err(error), Some(cluster)) if error != "interrupted" => {
            let dir = cluster.keep_files();
            Err(format!(
                "{error}\n(data and logs kept in {})",
                dir.display()
            ))
        }
        (result, _) => result,
    }
}

async fn run_workload(
    plan: &Plan,
    workload: Workload,
    pool: &Pool,
    mut cluster: Option<&mut LocalCluster>,
    data: &Arc<Data>,
    label: String,
) -> Result<Measured, String> {
    let clients = plan.clients(workload);
    let pool = &if plan.at_leader {
        let alive = || {
            cluster
                .as_deref_mut()
                .map_or(Ok(()), LocalCluster::check_alive)
        };
        pool.starting_at(workload::wait_for_leader(pool, alive).await?)
    } else {
        pool.clone()
    };
    if workload == Workload::ReadThroughput {
        workload::preload(pool, plan.clients, data).await?;
    }
    let pids = cluster.as_ref().map_or_else(Vec::new, |c| c.pids());
    let log_lengths = cluster.as_ref().map(|c| c.log_lengths());
    let kills_leaders = matches!(workload, Workload::Failover | Workload::Handover);
    let term_before = if kills_leaders {
        None
    } else {
        pool.highest_term().await
    };
    let cpu = CpuMeter::start(pids);
    let (mut measured, pids_after) = if kills_leaders {
        let Some(cluster) = cluster.as_deref_mut() else {
            return Err("failover needs --local".into());
        };
        let pool = pool.with_rpc_timeout(plan.failover_rpc_timeout)?;
        let progress = Progress::new(label, None);
        let _shown = progress.show();
        let planned = workload == Workload::Handover;
        let kills = (plan.kills, planned);
        let measured = workload::failover(cluster, &pool, kills, data, &progress).await?;
        // The killed members were restarted: their CPU is not comparable.
        (measured, Vec::new())
    } else if matches!(workload, Workload::Grow | Workload::Sessions) {
        let probes = cluster.as_ref().map_or_else(Vec::new, |c| c.probes());
        let count = plan.count(workload);
        let progress = Progress::new(label, Some(count));
        let _shown = progress.show();
        let op = match workload {
            Workload::Sessions => Op::PutFresh,
            _ => Op::Put,
        };
        let measured = grow::grow(pool, clients, (count, op), data, &progress, &probes).await?;
        (
            measured,
            cluster.as_ref().map_or_else(Vec::new, |c| c.pids()),
        )
    } else {
        let op = match workload {
            Workload::Rtt => Op::Status,
            Workload::ReadThroughput => Op::Get,
            Workload::Oversize => Op::PutTooLarge,
            _ => Op::Put,
        };
        let count = plan.count(workload);
        let progress = Progress::new(label, Some(count));
        let _shown = progress.show();
        let shaped;
        let data = match workload.fixed_shape() {
            Some((_, value_size)) => {
                shaped = Arc::new(data.with_value_size(value_size));
                &shaped
            }
            None => data,
        };
        let measured = workload::closed_loop(pool, clients, count, op, data, &progress).await?;
        (
            measured,
            cluster.as_ref().map_or_else(Vec::new, |c| c.pids()),
        )
    };
    cpu.finish(&pids_after, &mut measured);
    if let Some(before) = term_before {
        measured.new_terms = pool
            .highest_term()
            .await
            .map(|after| after.saturating_sub(before));
    }
    if let (Some(cluster), Some(lengths)) = (cluster, log_lengths) {
        measured.member_names = (0..cluster.client_addrs().len())
            .map(|i| cluster.member_name(i).to_string())
            .collect();
        measured.members = cluster.footprint();
        measured.snapshots = cluster
            .logs_since(&lengths)
            .iter()
            .flat_map(|(name, log)| grow::snapshot_events(name, log, measured.started_unix))
            .collect();
        measured.snapshots.sort_by(|a, b| a.at.total_cmp(&b.at));
    }
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn plan(flags: &[&str]) -> Result<Plan, String> {
        let args = Cli::try_parse_from(std::iter::once("bench").chain(flags.iter().copied()))
            .map_err(|e| e.to_string())?;
        Plan::from_args(&args.bench)
    }

    #[test]
    fn defaults_load_make_cluster_with_every_workload_but_failover() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.systems, [System::RaftKv]);
        assert_eq!(p.cluster, split(RAFT_KV_CLUSTER));
        assert_eq!(
            p.workloads,
            [
                Workload::Rtt,
                Workload::WriteLatency,
                Workload::WriteThroughput,
                Workload::ReadThroughput
            ]
        );
        assert!(p
            .skipped
            .as_deref()
            .unwrap()
            .contains("failover needs --local"));
        assert_eq!(
            (p.clients, p.key_size, p.value_size, p.kills, p.runs),
            (64, 16, 128, 10, 1)
        );
        assert_eq!(p.count(Workload::WriteThroughput), 50_000);
        assert_eq!(p.clients(Workload::WriteLatency), 1);
        assert_eq!(p.clients(Workload::ReadThroughput), 64);
        assert_eq!(p.rpc_timeout, Duration::from_secs(1));
        assert_eq!(p.failover_rpc_timeout, Duration::from_millis(100));
        assert!(!p.at_leader);
    }

    #[test]
    fn local_both_runs_everything_against_both_systems() {
        let p = plan(&[
            "--local", "--target", "both", "--count", "500", "--runs", "3",
        ])
        .unwrap();
        assert_eq!(p.systems, [System::RaftKv, System::Etcd]);
        assert_eq!(p.workloads, Workload::ALL);
        assert_eq!(p.skipped, None);
        assert_eq!(p.count(Workload::ReadThroughput), 500);
        assert_eq!(p.runs, 3);
    }

    #[test]
    fn etcd_defaults_and_flags() {
        let p = plan(&["--target", "etcd", "--workload", "write-latency"]).unwrap();
        assert_eq!(p.cluster, ["127.0.0.1:2379"]);
        assert_eq!(p.workloads, [Workload::WriteLatency]);
        // Listed in any order, run in the usual one.
        let p = plan(&["--local", "--workload", "failover,rtt,failover"]).unwrap();
        assert_eq!(p.workloads, [Workload::Rtt, Workload::Failover]);
        let p = plan(&[
            "--local",
            "--target",
            "etcd",
            "--etcd-flags",
            "--heartbeat-interval 30  --election-timeout 150",
        ])
        .unwrap();
        assert_eq!(
            p.etcd_flags,
            ["--heartbeat-interval", "30", "--election-timeout", "150"]
        );
        let p = plan(&[
            "--cluster",
            "127.0.0.1:1, 127.0.0.1:2",
            "--stale",
            "--at-leader",
        ])
        .unwrap();
        assert_eq!(p.cluster, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert!(p.stale && p.at_leader);
    }

    #[test]
    fn nodes_and_the_grow_workload() {
        assert_eq!(plan(&["--local"]).unwrap().nodes, 3);
        let p = plan(&["--local", "--nodes", "5", "--workload", "all"]).unwrap();
        assert_eq!(p.nodes, 5);
        assert_eq!(p.workloads, Workload::ALL);
        assert!(p.describe().contains("a fresh local 5-member cluster"));
        assert_eq!(p.setup(System::RaftKv).nodes, 5);
        assert_eq!(p.setup(System::RaftKv).snapshot_log_bytes, Some(64 << 20));
        assert_eq!(p.setup(System::Etcd).snapshot_log_bytes, None);
        // Without --local the cluster has the members --cluster names.
        let p = plan(&[
            "--cluster",
            "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4,127.0.0.1:5",
        ]);
        assert_eq!(p.unwrap().setup(System::RaftKv).nodes, 5);
        // One node: everything but failover, which needs a member to take over.
        let p = plan(&["--local", "--nodes", "1"]).unwrap();
        assert_eq!(p.nodes, 1);
        assert!(!p.workloads.contains(&Workload::Failover));
        assert!(p
            .skipped
            .unwrap()
            .contains("failover needs --nodes 3 or more"));
        let p = plan(&["--local", "--nodes", "7", "--target", "etcd"]).unwrap();
        assert_eq!((p.nodes, p.systems.as_slice()), (7, &[System::Etcd][..]));
        // Grow is never part of all, writes --keyspace keys with --clients.
        let p = plan(&[
            "--workload",
            "grow",
            "--keyspace",
            "1000000",
            "--count",
            "5",
        ])
        .unwrap();
        assert_eq!(p.workloads, [Workload::Grow]);
        assert_eq!(p.count(Workload::Grow), 1_000_000);
        assert_eq!(p.clients(Workload::Grow), 64);
        let p = plan(&[
            "--local",
            "--workload",
            "grow,all,handover,sessions,large-values,many-writers,oversize",
        ])
        .unwrap();
        assert_eq!(p.workloads, Workload::ORDER);
        // Sessions is not part of all either; --count writes, 200000 by default.
        let p = plan(&["--local", "--workload", "all"]).unwrap();
        assert!(!p.workloads.contains(&Workload::Sessions));
        let p = plan(&["--workload", "sessions"]).unwrap();
        assert_eq!(p.count(Workload::Sessions), 200_000);
        assert_eq!(p.clients(Workload::Sessions), 64);
        // Issue 15's loads fix their own clients and values.
        let p = plan(&["--local", "--workload", "many-writers,large-values"]).unwrap();
        assert_eq!(p.workloads, [Workload::LargeValues, Workload::ManyWriters]);
        assert_eq!(p.clients(Workload::LargeValues), 8);
        assert_eq!(p.count(Workload::LargeValues), 40);
        assert_eq!(p.clients(Workload::ManyWriters), 256);
        assert_eq!(p.count(Workload::ManyWriters), 20_000);
        let p = plan(&["--local", "--workload", "oversize"]).unwrap();
        assert_eq!(
            (p.clients(Workload::Oversize), p.count(Workload::Oversize)),
            (6, 60)
        );
    }

    #[test]
    fn tls_for_a_local_or_a_running_cluster() {
        let p = plan(&["--local", "--target", "both", "--tls"]).unwrap();
        assert!(p.local_tls && p.tls());
        assert!(p.setup(System::RaftKv).tls);
        assert!(!p.setup(System::Etcd).tls);
        assert!(
            p.describe().contains("etcd in plaintext"),
            "{}",
            p.describe()
        );
        assert!(!plan(&["--local"]).unwrap().tls());

        let dir = tempfile::tempdir().unwrap();
        let nodes = raft_kv::tls::certs::local_nodes(&[1]);
        raft_kv::tls::certs::write(dir.path(), &nodes, false).unwrap();
        let p = plan(&["--tls-dir", dir.path().to_str().unwrap()]).unwrap();
        assert!(p.tls() && !p.local_tls);
        assert!(p.setup(System::RaftKv).tls);
        assert!(p.describe().contains("tls: mutual TLS"), "{}", p.describe());
    }

    #[test]
    fn bad_flags_are_one_line_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["--target", "both"], "--target both needs --local"),
            (&["--workload", "failover"], "failover needs --local"),
            (&["--workload", "rtt,failover"], "failover needs --local"),
            (
                &["--local", "--cluster", "127.0.0.1:1"],
                "either --local or --cluster",
            ),
            (&["--cluster", "nohost"], "bad address \"nohost\""),
            (&["--cluster", "h:0"], "bad address \"h:0\""),
            (&["--clients", "0"], "--clients must be at least 1"),
            (&["--count", "0"], "--count must be at least 1"),
            (&["--kills", "0"], "--kills must be at least 1"),
            (&["--runs", "0"], "--runs must be at least 1"),
            (&["--keyspace", "0"], "--keyspace must be at least 1"),
            (&["--key-size", "0"], "--key-size must be 1 to 4096"),
            (&["--key-size", "4097"], "--key-size must be 1 to 4096"),
            (
                &["--value-size", "1048577"],
                "--value-size must be at most 1048576",
            ),
            (
                &["--key-size", "3"],
                "--key-size 3 is too small for --keyspace 1000",
            ),
            (
                &["--local", "--heartbeat-ms", "500"],
                "--heartbeat-ms 500 must be less than",
            ),
            (&["--rpc-timeout", "0"], "not a positive duration"),
            (&["--workload", "sideways"], "invalid value 'sideways'"),
            (&["--nodes", "5"], "--nodes needs --local"),
            (
                &["--local", "--nodes", "4"],
                "--nodes must be an odd number from 1 to 7, not 4: 4 members tolerate no more failures than 3 (a majority of 4 is 3)",
            ),
            (
                &["--local", "--nodes", "9"],
                "--nodes must be an odd number from 1 to 7, not 9",
            ),
            (
                &["--local", "--nodes", "0"],
                "--nodes must be an odd number from 1 to 7, not 0",
            ),
            (
                &["--local", "--nodes", "1", "--workload", "failover"],
                "failover needs --nodes 3 or more",
            ),
            (&["--tls"], "--tls needs --local"),
            (
                &["--local", "--tls-dir", "certs"],
                "with --local give --tls",
            ),
            (
                &["--local", "--target", "etcd", "--tls"],
                "TLS is for raft-kv",
            ),
            (
                &["--target", "etcd", "--tls-dir", "certs"],
                "TLS is for raft-kv",
            ),
            (
                &["--tls-dir", "/nonexistent"],
                "cannot read /nonexistent/ca.pem",
            ),
        ];
        for (flags, expected) in cases {
            let error = plan(flags)
                .err()
                .unwrap_or_else(|| panic!("{flags:?} accepted"));
            assert!(error.contains(expected), "{flags:?}: {error}");
            if !error.starts_with("error:") {
                assert!(!error.contains('\n'), "{flags:?}: {error}");
            }
        }
    }
}
