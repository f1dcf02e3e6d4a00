//! The workloads. Each is closed-loop: a fixed number of simulated clients,
//! each sending its next request as soon as the previous one is answered,
//! so latency and throughput are measured together, as by etcd's
//! `benchmark` tool.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::distributions::Alphanumeric;
use rand::{Rng, SeedableRng};
use tokio::sync::Barrier;

use super::client::{BenchClient, NoLeader, Pool};
use super::grow::{Growth, RawSample, SnapshotEvent};
use super::local::{LocalCluster, Probe};
use super::stats::{self, Footprint, Percentiles};
use raft_kv::server::interrupt;

/// How long a cluster may take to elect a leader, start a member, or let a
/// member catch up, before the bench gives up on it.
const PATIENCE: Duration = Duration::from_secs(60);
/// How long the bench waits for the first answer from any member.
const NO_ANSWER_PATIENCE: Duration = Duration::from_secs(10);
/// How often the bench looks at the cluster while it waits.
const POLL: Duration = Duration::from_millis(5);
/// Failover: how long writes run undisturbed before each kill, and after
/// the killed member has caught up.
const SETTLE: Duration = Duration::from_secs(1);

/// One of the workloads, in the order `--workload all` runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// 1 client, sequential Status calls: the gRPC round trip, no consensus.
    Rtt,
    /// 1 client, sequential writes.
    WriteLatency,
    /// --clients concurrent writers.
    WriteThroughput,
    /// --clients concurrent readers (linearizable, or --stale).
    ReadThroughput,
    /// 1 writer while the leader is killed --kills times.
    Failover,
    /// failover's planned twin: the leader is stopped with SIGTERM --kills
    /// times, so it hands its leadership over first (dissertation §3.10;
    /// etcd does the same). Not part of `all`.
    Handover,
    /// --clients writers write each of --keyspace keys once, so the state
    /// grows to --keyspace keys, sampled once a second. Not part of `all`.
    Grow,
    /// --clients writers write --count times over --keyspace keys, each
    /// write in a new client session (a fresh client_id), sampled once a
    /// second like grow: the session table (dissertation §6.3) grows until
    /// its bound. Not part of `all`.
    Sessions,
    /// 8 writers, 40 values of 1 MiB (the largest): does the leader keep
    /// its office? Not part of `all`.
    LargeValues,
    /// 256 writers, 20 000 values of 16 KiB: does throughput level off
    /// rather than fall, with no election? Not part of `all`.
    ManyWriters,
    /// 6 writers, 60 values of 63 MiB, far over the request limit: each
    /// must be refused before it is read, with no election and the
    /// members' memory flat (issue 15 saw 143 MB and three elections).
    /// An operation counts when it is refused. Not part of `all`.
    Oversize,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::Rtt,
        Workload::WriteLatency,
        Workload::WriteThroughput,
        Workload::ReadThroughput,
        Workload::Failover,
    ];

    /// Every workload, in the order they run: `all`'s, then the others.
    pub const ORDER: [Workload; 11] = [
        Workload::Rtt,
        Workload::WriteLatency,
        Workload::WriteThroughput,
        Workload::ReadThroughput,
        Workload::Failover,
        Workload::Handover,
        Workload::Grow,
        Workload::Sessions,
        Workload::LargeValues,
        Workload::ManyWriters,
        Workload::Oversize,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Rtt => "rtt",
            Workload::WriteLatency => "write-latency",
            Workload::WriteThroughput => "write-throughput",
            Workload::ReadThroughput => "read-throughput",
            Workload::Failover => "failover",
            Workload::Handover => "handover",
            Workload::Grow => "grow",
            Workload::Sessions => "sessions",
            Workload::LargeValues => "large-values",
            Workload::ManyWriters => "many-writers",
            Workload::Oversize => "oversize",
        }
    }

    /// The clients and value size of a workload that fixes its own (the
    /// loads issue 15 names), rather than taking --clients and --value-size.
    pub fn fixed_shape(self) -> Option<(usize, usize)> {
        match self {
            Workload::LargeValues => Some((8, 1 << 20)),
            Workload::ManyWriters => Some((256, 16 << 10)),
            Workload::Oversize => Some((6, 63 << 20)),
            _ => None,
        }
    }

    /// Operations when `--count` is not given: enough for a stable p99 and a
    /// few seconds of load at etcd's rates on a 2-core machine.
    pub fn default_count(self) -> u64 {
        match self {
            Workload::Rtt | Workload::WriteLatency => 5_000,
            Workload::WriteThroughput => 50_000,
            Workload::LargeValues => 40,
            Workload::ManyWriters => 20_000,
            Workload::Oversize => 60,
            Workload::ReadThroughput => 100_000,
            // Twice raft-kv's bound on sessions (kv::MAX_SESSIONS).
            Workload::Sessions => 200_000,
            // Grow writes --keyspace keys; failover runs until its kills are done.
            Workload::Failover | Workload::Handover | Workload::Grow => 0,
        }
    }
}

/// The keys and the value every request uses. The value is made before the
/// clock starts and shared by every request; a key is written into a buffer
/// its client reuses, so a keyspace of millions costs no memory.
#[derive(Debug)]
pub struct Data {
    pub keyspace: u64,
    /// Digits after the `b` of every key.
    key_digits: usize,
    pub value: String,
    pub stale: bool,
}

impl Data {
    /// `keyspace` keys of exactly `key_size` bytes (`b` and a zero-padded
    /// number) and one random alphanumeric value of `value_size` bytes.
    pub fn new(
        keyspace: usize,
        key_size: usize,
        value_size: usize,
        stale: bool,
    ) -> Result<Data, String> {
        let digits = (keyspace.max(1) - 1).to_string().len();
        if key_size < digits + 1 {
            return Err(format!(
                "--key-size {key_size} is too small for --keyspace {keyspace}: \
                 distinct keys need at least {} bytes",
                digits + 1
            ));
        }
        Ok(Data {
            keyspace: keyspace as u64,
            key_digits: key_size - 1,
            value: value_of(value_size),
            stale,
        })
    }

    /// The same keys with a value of `value_size` bytes.
    pub fn with_value_size(&self, value_size: usize) -> Data {
        Data {
            keyspace: self.keyspace,
            key_digits: self.key_digits,
            value: value_of(value_size),
            stale: self.stale,
        }
    }

    /// Key number `n` modulo the keyspace, written into `buffer`.
    pub fn key<'a>(&self, n: u64, buffer: &'a mut String) -> &'a str {
        buffer.clear();
        let _ = write!(
            buffer,
            "b{:0width$}",
            n % self.keyspace,
            width = self.key_digits
        );
        buffer
    }
}

/// What one workload measured against one cluster.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub clients: usize,
    /// Operations that succeeded.
    pub ops: u64,
    /// Operations that failed even after retrying.
    pub errors: u64,
    pub first_error: Option<String>,
    /// From the moment every client was ready to the last answer.
    pub seconds: f64,
    pub latency: Option<Percentiles>,
    /// CPU time used per second of wall time, in percent of one core: the
    /// bench itself, and the members together (`None` when not known).
    pub client_cpu: Option<f64>,
    pub server_cpu: Option<f64>,
    /// Failover: for each kill, the longest time between two successful
    /// writes, from the last one before the kill until the killed member
    /// has restarted and caught up (milliseconds).
    pub gaps_ms: Vec<f64>,
    /// When the clock started, in seconds since the Unix epoch (to place
    /// the lines of the members' logs).
    pub started_unix: f64,
    /// With --local: each member's name, and its resident memory and data
    /// dir at the end of the workload.
    pub member_names: Vec<String>,
    pub members: Vec<Footprint>,
    /// With --local: the snapshots the members took (or installed) while it ran.
    pub snapshots: Vec<SnapshotEvent>,
    /// Grow: the timeline.
    pub growth: Option<Growth>,
    /// How many terms the cluster went through while the workload ran (the
    /// highest term any member reports, after minus before): 0 means no
    /// election. None when not measured (failover, which causes them).
    pub new_terms: Option<u64>,
}

impl Measured {
    /// The largest resident memory of any member, bytes.
    pub fn max_rss(&self) -> Option<u64> {
        self.members.iter().filter_map(|f| f.rss_bytes).max()
    }

    /// The largest data dir of any member, bytes.
    pub fn max_data(&self) -> Option<u64> {
        self.members.iter().map(|f| f.data_bytes).max()
    }

    pub fn ops_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// The progress line on stderr, redrawn every second while a workload runs.
pub struct Progress {
    label: Mutex<String>,
    total: Option<u64>,
    done: AtomicU64,
}

impl Progress {
    pub fn new(label: String, total: Option<u64>) -> Arc<Progress> {
        Arc::new(Progress {
            label: Mutex::new(label),
            total,
            done: AtomicU64::new(0),
        })
    }

    fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    fn set_label(&self, label: String) {
        *self.label.lock().unwrap() = label;
    }

    /// Print the progress line once a second until the returned guard is dropped.
    pub fn show(self: &Arc<Self>) -> ProgressShown {
        let terminal = std::io::stderr().is_terminal();
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let progress = Arc::clone(self);
        let printer = std::thread::spawn(move || {
            let started = Instant::now();
            let mut last = (started, 0);
            let mut printed = false;
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(Duration::from_secs(1))
            {
                let now = Instant::now();
                let done = progress.done.load(Ordering::Relaxed);
                let rate = (done - last.1) as f64 / (now - last.0).as_secs_f64();
                last = (now, done);
                let of = progress.total.map_or(String::new(), |t| format!("/{t}"));
                let line = format!(
                    "{}: {done}{of} ops, {rate:.0} ops/s, {:.0} s",
                    progress.label.lock().unwrap(),
                    (now - started).as_secs_f64()
                );
                let mut stderr = std::io::stderr().lock();
                // On a terminal the line is redrawn in place; in a log, one per second.
                let _ = if terminal {
                    write!(stderr, "\r\x1b[K{line}")
                } else {
                    writeln!(stderr, "{line}")
                };
                let _ = stderr.flush();
                printed = true;
            }
            if terminal && printed {
                let _ = write!(std::io::stderr(), "\r\x1b[K");
            }
        });
        ProgressShown {
            stop: Some(stop),
            printer: Some(printer),
        }
    }
}

/// While alive, the progress line is printed; dropping it clears the line.
pub struct ProgressShown {
    stop: Option<crossbeam_channel::Sender<()>>,
    printer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ProgressShown {
    fn drop(&mut self) {
        // Disconnecting wakes the printer at once.
        drop(self.stop.take());
        if let Some(printer) = self.printer.take() {
            let _ = printer.join();
        }
    }
}

/// What the simulated clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Status,
    Put,
    /// A put in a new client session, as from a new client each time.
    PutFresh,
    /// A put the cluster must refuse as too large: done when refused.
    PutTooLarge,
    Get,
}

impl Op {
    async fn run(
        self,
        client: &mut BenchClient,
        data: &Data,
        n: u64,
        key: &mut String,
    ) -> Result<(), String> {
        match self {
            Op::Status => client.status().await,
            Op::Put => client.put(data.key(n, key), &data.value).await,
            Op::PutFresh => {
                client.new_session();
                client.put(data.key(n, key), &data.value).await
            }
            Op::PutTooLarge => client.put_too_large(data.key(n, key), &data.value).await,
            Op::Get => client.get(data.key(n, key), data.stale).await.map(|_| ()),
        }
    }
}

/// A random alphanumeric value of `size` bytes, from a fixed seed: the
/// same bytes in every run and for every system.
fn value_of(size: usize) -> String {
    rand::rngs::SmallRng::seed_from_u64(7)
        .sample_iter(&Alphanumeric)
        .take(size)
        .map(char::from)
        .collect()
}

/// Wait until some member is leader, as the members themselves report;
/// `alive` fails at once if a member has exited (a bad flag, say).
pub async fn wait_for_leader(
    pool: &Pool,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<usize, String> {
    let started = Instant::now();
    let deadline = started + PATIENCE;
    loop {
        match pool.leader().await {
            Ok(leader) => return Ok(leader),
            // A cluster that is not running at all should not cost a minute.
            Err(NoLeader::NoAnswer(why)) if started.elapsed() >= NO_ANSWER_PATIENCE => {
                return Err(format!(
                    "no {} member answers (is the cluster running?): {why}",
                    pool.system().name()
                ));
            }
            Err(_) => {}
        }
        alive()?;
        if interrupt::happened() {
            return Err("interrupted".into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no {} member became leader within {} s",
                pool.system().name(),
                PATIENCE.as_secs()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Write every key once, so reads find them; not measured.
pub async fn preload(pool: &Pool, clients: usize, data: &Arc<Data>) -> Result<(), String> {
    let progress = Progress::new(String::new(), None);
    let loaded = closed_loop(pool, clients, data.keyspace, Op::Put, data, &progress).await?;
    match loaded.first_error {
        None => Ok(()),
        Some(error) => Err(format!("cannot preload the keys: {error}")),
    }
}

/// `clients` clients share `total` operations `op`, each client sending its
/// next request when the previous one is answered.
pub async fn closed_loop(
    pool: &Pool,
    clients: usize,
    total: u64,
    op: Op,
    data: &Arc<Data>,
    progress: &Arc<Progress>,
) -> Result<Measured, String> {
    let (measured, _) = sampled_loop(pool, clients, total, op, data, progress, None).await?;
    Ok(measured)
}

/// What [`sampled_loop`] saw besides the totals: every operation's
/// completion time (seconds since the start) and latency (ns), and a
/// sample of the members once a second.
pub struct Sampled {
    pub completions: Vec<(f64, u64)>,
    pub samples: Vec<RawSample>,
}

/// [`closed_loop`], and with `probes`, once a second (and at the end) each
/// probed member's footprint, and when each operation completed.
pub async fn sampled_loop(
    pool: &Pool,
    clients: usize,
    total: u64,
    op: Op,
    data: &Arc<Data>,
    progress: &Arc<Progress>,
    probes: Option<&[Probe]>,
) -> Result<(Measured, Option<Sampled>), String> {
    let sampling = probes.is_some();
    // Every client connects (and finds the leader) before the clock starts.
    let ready = Arc::new(Barrier::new(clients + 1));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let mut client = pool.client(i);
        let (ready, next, data, progress) = (
            Arc::clone(&ready),
            Arc::clone(&next),
            Arc::clone(data),
            Arc::clone(progress),
        );
        tasks.spawn(async move {
            let mut key = String::new();
            let warm_up = op.run(&mut client, &data, i as u64, &mut key).await;
            ready.wait().await;
            warm_up?;
            let share = (total / clients as u64 + 1) as usize;
            let mut latencies = Vec::with_capacity(share);
            let mut completed = Vec::with_capacity(if sampling { share } else { 0 });
            let (mut errors, mut first_error) = (0, None);
            while !interrupt::happened() {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let sent = Instant::now();
                match op.run(&mut client, &data, n, &mut key).await {
                    Ok(()) => {
                        let done = Instant::now();
                        latencies.push((done - sent).as_nanos() as u64);
                        if sampling {
                            completed.push(done);
                        }
                    }
                    Err(error) => {
                        errors += 1;
                        first_error.get_or_insert(error);
                    }
                }
                progress.add(1);
            }
            Ok::<_, String>((latencies, completed, errors, first_error, Instant::now()))
        });
    }
    ready.wait().await;
    let started = Instant::now();
    let started_unix = unix_now();
    let mut measured = Measured {
        clients,
        started_unix,
        ..Measured::default()
    };
    let mut latencies = Vec::with_capacity(total as usize);
    let mut completions = Vec::new();
    let mut samples = Vec::new();
    let sample = |samples: &mut Vec<RawSample>| {
        samples.push(RawSample {
            seconds: started.elapsed().as_secs_f64(),
            members: probes.unwrap_or(&[]).iter().map(Probe::measure).collect(),
            bench_rss_bytes: stats::rss_bytes(None),
        })
    };
    let second = Duration::from_secs(1);
    let mut ticker = tokio::time::interval_at((started + second).into(), second);
    // A late tick (a busy machine) is taken late, not twice.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut finished = started;
    loop {
        let joined = tokio::select! {
            joined = tasks.join_next() => joined,
            _ = ticker.tick(), if sampling => {
                sample(&mut samples);
                continue;
            }
        };
        let Some(joined) = joined else { break };
        let (mine, completed, errors, first_error, done) =
            joined.map_err(|e| format!("a client task failed: {e}"))??;
        if sampling {
            completions.extend(
                completed
                    .iter()
                    .zip(&mine)
                    .map(|(at, &latency)| ((*at - started).as_secs_f64(), latency)),
            );
        }
        latencies.extend(mine);
        measured.errors += errors;
        measured.first_error = measured.first_error.or(first_error);
        finished = finished.max(done);
    }
    if interrupt::happened() {
        return Err("interrupted".into());
    }
    measured.ops = latencies.len() as u64;
    measured.seconds = (finished - started).as_secs_f64();
    measured.latency = Percentiles::of(&mut latencies);
    if !sampling {
        return Ok((measured, None));
    }
    sample(&mut samples);
    end_at_last_answer(&mut samples, measured.seconds);
    Ok((
        measured,
        Some(Sampled {
            completions,
            samples,
        }),
    ))
}

/// The last sample, taken once every client has been joined, is moved back
/// to the last answer, so the last interval's rate is not diluted by the
/// joining; never before the sample ahead of it.
fn end_at_last_answer(samples: &mut [RawSample], last_answer: f64) {
    match samples {
        [.., before, last] => last.seconds = last_answer.max(before.seconds),
        [only] => only.seconds = last_answer,
        [] => {}
    }
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Successful writes of the failover writer, by completion time.
#[derive(Default)]
struct Successes(Mutex<Vec<Instant>>);

impl Successes {
    fn push(&self, at: Instant) {
        self.0.lock().unwrap().push(at);
    }

    fn last(&self) -> Option<Instant> {
        self.0.lock().unwrap().last().copied()
    }

    /// The longest time between two successive successes, counting from the
    /// last success at or before `since` (or `since` itself, if none).
    fn longest_gap_since(&self, since: Instant) -> Duration {
        longest_gap(&self.0.lock().unwrap(), since)
    }
}

fn longest_gap(successes: &[Instant], since: Instant) -> Duration {
    let first_after = successes.partition_point(|&at| at <= since);
    let start = first_after
        .checked_sub(1)
        .map_or(since, |last_before| successes[last_before]);
    let mut previous = start;
    let mut longest = Duration::ZERO;
    for &at in &successes[first_after..] {
        longest = longest.max(at - previous);
        previous = at;
    }
    longest
}

/// One client writes without pause while the leader is killed `kills` times;
/// after each kill the member is restarted and allowed to catch up.
/// The failover and handover workloads; `planned`: SIGTERM, not SIGKILL.
pub async fn failover(
    cluster: &mut LocalCluster,
    pool: &Pool,
    (kills, planned): (usize, bool),
    data: &Arc<Data>,
    progress: &Arc<Progress>,
) -> Result<Measured, String> {
    let successes = Arc::new(Successes::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut client = pool.client(0);
        let (successes, stop, data, progress) = (
            Arc::clone(&successes),
            Arc::clone(&stop),
            Arc::clone(data),
            Arc::clone(progress),
        );
        tokio::spawn(async move {
            let (mut errors, mut first_error, mut n) = (0u64, None, 0);
            let mut key = String::new();
            while !stop.load(Ordering::Relaxed) && !interrupt::happened() {
                match client.put(data.key(n, &mut key), &data.value).await {
                    Ok(()) => successes.push(Instant::now()),
                    Err(error) => {
                        errors += 1;
                        first_error.get_or_insert(error);
                    }
                }
                n += 1;
                progress.add(1);
            }
            (errors, first_error)
        })
    };
    let started = Instant::now();
    let started_unix = unix_now();
    let result = kill_leaders(cluster, pool, (kills, planned), &successes, progress).await;
    stop.store(true, Ordering::Relaxed);
    let (errors, first_error) = writer
        .await
        .map_err(|e| format!("the writer task failed: {e}"))?;
    let gaps = result?;
    let ops = successes.0.lock().unwrap().len() as u64;
    Ok(Measured {
        clients: 1,
        ops,
        errors,
        first_error,
        seconds: started.elapsed().as_secs_f64(),
        gaps_ms: gaps.iter().map(|gap| gap.as_secs_f64() * 1e3).collect(),
        started_unix,
        ..Measured::default()
    })
}

async fn kill_leaders(
    cluster: &mut LocalCluster,
    pool: &Pool,
    (kills, planned): (usize, bool),
    successes: &Successes,
    progress: &Progress,
) -> Result<Vec<Duration>, String> {
    let system = pool.system().name();
    let mut gaps = Vec::with_capacity(kills);
    settle(successes).await?;
    for kill in 1..=kills {
        let leader = wait_for_leader(pool, || cluster.check_alive()).await?;
        progress.set_label(format!(
            "{system} {}: {kill}/{kills} ({} was leader)",
            if planned {
                "handover: SIGTERM"
            } else {
                "failover: kill"
            },
            cluster.member_name(leader)
        ));
        if planned {
            cluster.terminate(leader);
        } else {
            cluster.kill(leader);
        }
        // Taken once the process is gone: a write answered before this
        // instant may have been answered by the old leader.
        let killed_at = Instant::now();
        wait_for_write_after(successes, killed_at).await?;
        cluster.restart(leader)?;
        wait_for_catch_up(cluster, pool, leader).await?;
        // The window goes on past the rejoin, so a pause the restarted
        // member causes (say, by starting an election) counts too.
        settle(successes).await?;
        gaps.push(successes.longest_gap_since(killed_at));
    }
    Ok(gaps)
}

/// Let writes run undisturbed for `SETTLE`, and see that they do.
async fn settle(successes: &Successes) -> Result<(), String> {
    let started = Instant::now();
    tokio::time::sleep(SETTLE).await;
    wait_for_write_after(successes, started).await
}

async fn wait_for_write_after(successes: &Successes, after: Instant) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    while successes.last().is_none_or(|last| last <= after) {
        if interrupt::happened() {
            return Err("interrupted".into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no write succeeded within {} s",
                PATIENCE.as_secs()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Wait until restarted member `i` has applied everything the leader had
/// committed when it came back.
async fn wait_for_catch_up(
    cluster: &mut LocalCluster,
    pool: &Pool,
    i: usize,
) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    let mut target = None;
    loop {
        cluster.check_alive()?;
        if target.is_none() {
            if let Ok(leader) = pool.leader().await {
                target = pool.status(leader).await.ok().map(|s| s.commit_index);
            }
        }
        if let (Some(target), Ok(status)) = (target, pool.status(i).await) {
            if status.applied_index >= target {
                return Ok(());
            }
        }
        if interrupt::happened() {
            return Err("interrupted".into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not catch up within {} s after its restart",
                cluster.member_name(i),
                PATIENCE.as_secs()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// CPU used by this process and by `pids` together, read before and after a
/// workload, as percent of one core over `seconds`.
pub struct CpuMeter {
    client: Option<Duration>,
    server: Option<Duration>,
    pids: Vec<u32>,
    started: Instant,
}

impl CpuMeter {
    pub fn start(pids: Vec<u32>) -> CpuMeter {
        CpuMeter {
            client: stats::cpu_time(None),
            server: servers_cpu(&pids),
            pids,
            started: Instant::now(),
        }
    }

    /// Fill in `measured`'s CPU figures; the members' only if they are the
    /// same processes as at the start.
    pub fn finish(self, pids: &[u32], measured: &mut Measured) {
        let wall = self.started.elapsed().as_secs_f64();
        let percent = |before: Option<Duration>, after: Option<Duration>| {
            Some((after?.saturating_sub(before?)).as_secs_f64() / wall * 100.0)
        };
        measured.client_cpu = percent(self.client, stats::cpu_time(None));
        if !self.pids.is_empty() && self.pids == pids {
            measured.server_cpu = percent(self.server, servers_cpu(pids));
        }
    }
}

fn servers_cpu(pids: &[u32]) -> Option<Duration> {
    pids.iter().map(|&pid| stats::cpu_time(Some(pid))).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size_and_are_distinct() {
        let data = Data::new(1000, 16, 128, false).unwrap();
        let mut buffer = String::new();
        let keys: Vec<String> = (0..1000)
            .map(|n| data.key(n, &mut buffer).to_string())
            .collect();
        assert!(keys.iter().all(|k| k.len() == 16));
        assert_eq!(keys[42], "b000000000000042");
        let mut unique = keys.clone();
        unique.dedup();
        assert_eq!(unique.len(), 1000);
        assert_eq!(data.value.len(), 128);
        assert!(data.value.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(data.key(1042, &mut buffer), "b000000000000042");
        // A million keys, made one at a time: the last fits the key size.
        let big = Data::new(1_000_000, 16, 128, false).unwrap();
        assert_eq!(big.key(999_999, &mut buffer), "b000000000999999");
        assert_eq!(big.key(1_000_000, &mut buffer), "b000000000000000");
        // The value is the same in every run, so both systems get the same bytes.
        assert_eq!(data.value, Data::new(1, 2, 128, false).unwrap().value);
    }

    #[test]
    fn key_size_must_fit_the_keyspace() {
        assert!(Data::new(10, 2, 0, false).is_ok());
        let error = Data::new(11, 2, 0, false).err().unwrap();
        assert_eq!(
            error,
            "--key-size 2 is too small for --keyspace 11: distinct keys need at least 3 bytes"
        );
        assert_eq!(
            Data::new(1, 2, 0, false)
                .unwrap()
                .key(5, &mut String::new()),
            "b0"
        );
        assert!(Data::new(1, 1, 0, false).is_err());
        assert_eq!(Data::new(5, 4, 0, false).unwrap().value, "");
    }

    #[test]
    fn the_last_sample_ends_with_the_last_answer() {
        let at = |seconds: f64| RawSample {
            seconds,
            ..RawSample::default()
        };
        let ends = |samples: &[RawSample]| samples.iter().map(|s| s.seconds).collect::<Vec<_>>();
        let mut samples = [at(1.0), at(2.0), at(2.4)];
        end_at_last_answer(&mut samples, 2.1);
        assert_eq!(ends(&samples), [1.0, 2.0, 2.1]);
        // A tick that came after the last answer: the interval is empty, not negative.
        let mut samples = [at(1.0), at(2.0), at(2.01)];
        end_at_last_answer(&mut samples, 1.99);
        assert_eq!(ends(&samples), [1.0, 2.0, 2.0]);
        let mut samples = [at(0.6)];
        end_at_last_answer(&mut samples, 0.5);
        assert_eq!(ends(&samples), [0.5]);
        end_at_last_answer(&mut [], 1.0);
    }

    #[test]
    fn longest_gap_counts_from_the_last_success_before() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let successes = [at(0), at(10), at(20), at(500), at(510), at(900)];
        // Killed at 25 ms: 20 -> 500 is the outage, 510 -> 900 a later stall.
        assert_eq!(longest_gap(&successes, at(25)), Duration::from_millis(480));
        // From 505 on only the later stall counts.
        assert_eq!(longest_gap(&successes, at(505)), Duration::from_millis(390));
        // A success at exactly `since` is the one before.
        assert_eq!(longest_gap(&successes, at(900)), Duration::ZERO);
        // No success before: count from `since`.
        assert_eq!(
            longest_gap(&successes[3..], at(100)),
            Duration::from_millis(400)
        );
        assert_eq!(longest_gap(&[], at(0)), Duration::ZERO);
    }
}
