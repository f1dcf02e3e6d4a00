//! What the bench prints: a table per system, a side-by-side table with
//! ratios when both ran, or one JSON object per workload.

use std::fmt::Write;

use serde::Serialize;

use super::client::System;
use super::floor::Floor;
use super::grow::{Growth, Interval, SnapshotEvent};
use super::stats::{median, Footprint, Percentiles};
use super::workload::{Measured, Workload};

/// The settings every JSON object repeats, so that one file can collect the
/// objects of many runs (src/bin/raft-kv-bench/scaling.sh) and still tell them apart.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// Members of the cluster.
    pub nodes: usize,
    /// Whether the bench started them (--local).
    pub local: bool,
    pub key_size: usize,
    pub value_size: usize,
    pub keyspace: usize,
    pub stale: bool,
    /// Whether the system's nodes and clients used mutual TLS.
    pub tls: bool,
    pub snapshot_log_bytes: Option<usize>,
}

/// Every run of one workload against one system.
pub struct Summary {
    pub system: System,
    pub workload: Workload,
    pub runs: Vec<Measured>,
}

impl Summary {
    /// The median over the runs of `value`.
    fn median(&self, value: impl Fn(&Measured) -> Option<f64>) -> Option<f64> {
        median(&self.runs.iter().filter_map(value).collect::<Vec<_>>())
    }

    fn percentile(&self, pick: impl Fn(&Percentiles) -> f64) -> Option<f64> {
        self.median(|m| m.latency.as_ref().map(&pick))
    }

    fn ops_per_sec(&self) -> Option<f64> {
        self.median(|m| Some(m.ops_per_sec()))
    }

    fn errors(&self) -> u64 {
        self.runs.iter().map(|m| m.errors).sum()
    }

    /// Terms the cluster went through while the workload ran, over all
    /// runs (0: no election), when every run measured it.
    fn new_terms(&self) -> Option<u64> {
        self.runs.iter().map(|m| m.new_terms).sum()
    }

    /// Failover pauses of every kill of every run, pooled.
    fn gaps(&self) -> Vec<f64> {
        self.runs.iter().flat_map(|m| m.gaps_ms.clone()).collect()
    }

    fn gap_max(&self) -> Option<f64> {
        self.gaps().into_iter().reduce(f64::max)
    }

    fn clients(&self) -> usize {
        self.runs.first().map_or(0, |m| m.clients)
    }

    fn first_error(&self) -> Option<&str> {
        self.runs.iter().find_map(|m| m.first_error.as_deref())
    }

    /// The largest member's resident memory, median over the runs, bytes.
    fn max_rss(&self) -> Option<f64> {
        self.median(|m| m.max_rss().map(|b| b as f64))
    }

    /// The largest member's data dir, median over the runs, bytes.
    fn max_data(&self) -> Option<f64> {
        self.median(|m| m.max_data().map(|b| b as f64))
    }

    /// Member `j`'s `pick`, median over the runs.
    fn member_median(&self, j: usize, pick: impl Fn(&Footprint) -> Option<u64>) -> Option<f64> {
        self.median(|m| m.members.get(j).and_then(&pick).map(|b| b as f64))
    }

    /// The last run: the one whose timeline and snapshots are shown.
    fn last(&self) -> Option<&Measured> {
        self.runs.last()
    }
}

/// One system's results as an aligned table, failover on lines of its own.
/// The least a request of `workload` can take on this machine, ms: a
/// Status is one round trip; a write two and an fsync; a linearizable read
/// two (the client's and the leader's heartbeat round, no fsync); a stale
/// one. None where latency is not the point (failover, grow, …).
fn latency_floor_ms(workload: Workload, floor: &Floor, stale: bool) -> Option<f64> {
    match workload {
        Workload::Rtt => Some(floor.rtt_ms),
        Workload::WriteLatency | Workload::WriteThroughput => Some(floor.write_ms()),
        Workload::ReadThroughput if stale => Some(floor.rtt_ms),
        Workload::ReadThroughput => Some(2.0 * floor.rtt_ms),
        _ => None,
    }
}

/// p50 as a multiple of its floor (1.0 would be the machine's best).
fn p50_x_floor(s: &Summary, floor: Option<&Floor>, stale: bool) -> Option<f64> {
    let least = latency_floor_ms(s.workload, floor?, stale)?;
    Some(s.percentile(|p| p.p50)? / least)
}

/// ops/s as a share of the empty gRPC calls/s that as many callers reach:
/// only for the workloads that run the floor's number of clients.
fn ops_of_grpc(s: &Summary, floor: Option<&Floor>) -> Option<f64> {
    let floor = floor?;
    let loaded = matches!(
        s.workload,
        Workload::WriteThroughput | Workload::ReadThroughput
    );
    (loaded && s.clients() == floor.clients).then_some(s.ops_per_sec()? / floor.calls_per_sec)
}

pub fn table(summaries: &[&Summary], floor: Option<&Floor>, stale: bool) -> String {
    let header = [
        "workload",
        "clients",
        "ops",
        "errors",
        "new terms",
        "ops/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "p50 × floor",
        "of gRPC calls/s",
        "bench CPU",
        "server CPU",
        "server RSS",
        "data dir",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    let mut notes = String::new();
    for s in summaries {
        if matches!(s.workload, Workload::Failover | Workload::Handover) {
            let gaps = s.gaps();
            let each: Vec<String> = gaps.iter().map(|g| format!("{g:.0}")).collect();
            let how = match s.workload {
                Workload::Handover => "SIGTERM stop",
                _ => "kill",
            };
            let _ = writeln!(
                notes,
                "{}: {} {how}{} of the leader, 1 writer ({} writes, {} errors): longest pause in writes per kill, median {} ms, max {} ms [{}]",
                s.workload.name(),
                gaps.len(),
                if gaps.len() == 1 { "" } else { "s" },
                number(s.median(|m| Some(m.ops as f64)), 0),
                s.errors(),
                number(median(&gaps), 0),
                number(s.gap_max(), 0),
                each.join(" ")
            );
        } else {
            rows.push(vec![
                s.workload.name().to_string(),
                s.clients().to_string(),
                number(s.median(|m| Some(m.ops as f64)), 0),
                s.errors().to_string(),
                s.new_terms().map_or("-".into(), |n| n.to_string()),
                number(s.ops_per_sec(), 0),
                number(s.percentile(|p| p.p50), 2),
                number(s.percentile(|p| p.p90), 2),
                number(s.percentile(|p| p.p99), 2),
                number(s.percentile(|p| p.max), 2),
                number(p50_x_floor(s, floor, stale), 2),
                percent(ops_of_grpc(s, floor).map(|share| share * 100.0)),
                percent(s.median(|m| m.client_cpu)),
                percent(s.median(|m| m.server_cpu)),
                mib(s.max_rss()),
                mib(s.max_data()),
            ]);
        }
        if let Some(error) = s.first_error() {
            let _ = writeln!(notes, "{}: first error: {error}", s.workload.name());
        }
    }
    let mut out = align(&rows);
    out.push_str(&notes);
    for s in summaries {
        if let Some(last) = s.last().filter(|m| m.growth.is_some()) {
            out.push('\n');
            out.push_str(&growth_table(last, s.runs.len(), s.system, s.workload));
        }
    }
    out
}

/// The grow or sessions workload's timeline, one row per second or per few
/// seconds, then its snapshots and the memory and disk at the end. Sessions
/// adds the largest member's snapshot file, which holds the session table.
fn growth_table(m: &Measured, runs: usize, system: System, workload: Workload) -> String {
    let Some(growth) = &m.growth else {
        return String::new();
    };
    let per_row = match (
        growth.rows.first(),
        growth.timeline.len() > growth.rows.len(),
    ) {
        (Some(row), true) => format!("{:.0} s", row.seconds),
        _ => "1 s".to_string(),
    };
    let sessions = workload == Workload::Sessions;
    let (what, largest) = match sessions {
        true => (
            "writes, each in a new client session,",
            "data dir, log and snapshot",
        ),
        false => ("keys", "data dir and log"),
    };
    let mut out = format!(
        "{}: {} {what} written by {} clients{}, one row per {per_row}; server RSS, {largest}: the largest member's at the row's end\n",
        workload.name(),
        m.ops,
        m.clients,
        if runs > 1 { " (the last run)" } else { "" },
    );
    let mut header = vec![
        "t s",
        if sessions { "writes" } else { "keys" },
        "ops/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "snapshots",
        "server RSS",
        "data dir",
        "log",
    ];
    if sessions {
        header.push("snapshot");
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    // Only raft-kv's snapshots are read from the members' logs.
    let reads_snapshots = system == System::RaftKv;
    let mut previous_end = f64::NEG_INFINITY;
    for (i, row) in growth.rows.iter().enumerate() {
        let last = i + 1 == growth.rows.len();
        let taken = m
            .snapshots
            .iter()
            .filter(|e| e.at > previous_end && (e.at <= row.end || last))
            .count();
        previous_end = row.end;
        rows.push(vec![
            format!("{:.1}", row.end),
            row.keys.to_string(),
            format!("{:.0}", row.ops_per_sec()),
            number(row.latency.map(|p| p.p50), 2),
            number(row.latency.map(|p| p.p99), 2),
            number(row.latency.map(|p| p.max), 2),
            if reads_snapshots {
                taken.to_string()
            } else {
                "-".into()
            },
            mib(row.max_rss().map(|b| b as f64)),
            mib(row.max_data().map(|b| b as f64)),
            mib(row.max_log().map(|b| b as f64)),
        ]);
        if sessions {
            let snapshot = row.members.iter().filter_map(|f| f.snapshot_bytes).max();
            rows.last_mut()
                .expect("just pushed")
                .push(mib(snapshot.map(|b| b as f64)));
        }
    }
    out.push_str(&align(&rows));
    if reads_snapshots {
        out.push_str(&snapshot_summary(&m.snapshots, &m.member_names));
    }
    out.push_str(&growth_summary(growth, &m.member_names));
    out
}

/// One line on the snapshots: how many each member took, and what writing
/// them cost.
fn snapshot_summary(events: &[SnapshotEvent], names: &[String]) -> String {
    if names.is_empty() {
        return String::new();
    }
    let per_member: Vec<String> = names
        .iter()
        .map(|name| {
            let of = |installed: bool| {
                events
                    .iter()
                    .filter(|e| &e.member == name && e.installed == installed)
                    .count()
            };
            match of(true) {
                0 => format!("{name}: {}", of(false)),
                n => format!("{name}: {} (+{n} installed)", of(false)),
            }
        })
        .collect();
    let encodes: Vec<f64> = events.iter().filter_map(|e| e.encode_ms).collect();
    let writes: Vec<f64> = events.iter().filter_map(|e| e.write_ms).collect();
    let rewrites: Vec<f64> = events.iter().filter_map(|e| e.rewrite_ms).collect();
    let largest = events.iter().filter_map(|e| e.file_bytes).max();
    let mut out = format!("snapshots: {} ({})", events.len(), per_member.join(", "));
    if !encodes.is_empty() {
        let _ = write!(
            out,
            "; encoding (writer thread) median {} ms, max {} ms",
            number(median(&encodes), 1),
            number(encodes.iter().copied().reduce(f64::max), 1),
        );
    }
    if !writes.is_empty() {
        let _ = write!(
            out,
            "; file write median {} ms, max {} ms; log compaction median {} ms, max {} ms; largest file {}",
            number(median(&writes), 1),
            number(writes.iter().copied().reduce(f64::max), 1),
            number(median(&rewrites), 1),
            number(rewrites.iter().copied().reduce(f64::max), 1),
            mib(largest.map(|b| b as f64)),
        );
    }
    out.push('\n');
    out
}

/// The members' memory and disk at the end against the most seen, and the
/// bench's own memory.
fn growth_summary(growth: &Growth, names: &[String]) -> String {
    let mut out = String::new();
    if let Some(end) = growth.timeline.last().filter(|_| !names.is_empty()) {
        let most =
            |pick: fn(&Interval) -> Option<u64>| growth.timeline.iter().filter_map(pick).max();
        let _ = writeln!(
            out,
            "at the end: server RSS {} (max seen {}), data dir {} (max seen {}), log {} (max seen {})",
            mib(end.max_rss().map(|b| b as f64)),
            mib(most(Interval::max_rss).map(|b| b as f64)),
            mib(end.max_data().map(|b| b as f64)),
            mib(most(Interval::max_data).map(|b| b as f64)),
            mib(end.max_log().map(|b| b as f64)),
            mib(most(Interval::max_log).map(|b| b as f64)),
        );
    }
    let _ = writeln!(
        out,
        "bench RSS: max {}",
        mib(growth.bench_rss_max_bytes.map(|b| b as f64))
    );
    out
}

/// Columns padded to their widest cell; numbers right-aligned.
fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                // in characters, as format! pads ("×" is two bytes)
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let width = widths[c];
                if c == 0 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The side-by-side table (Markdown, so it can go into docs/performance.md
/// as printed): one row per headline number, the ratio raft-kv / etcd last.
pub fn comparison(
    raft_kv: &[&Summary],
    etcd: &[&Summary],
    clients: usize,
    stale: bool,
    floor: Option<&Floor>,
) -> String {
    fn find<'a>(set: &[&'a Summary], w: Workload) -> Option<&'a Summary> {
        set.iter().find(|s| s.workload == w).copied()
    }
    type Metric = fn(&Summary) -> Option<f64>;
    let reads = if stale { "stale" } else { "linearizable" };
    let rows: Vec<(Workload, String, Metric)> = vec![
        (
            Workload::Rtt,
            "rtt: Status round trip p50 (ms)".into(),
            |s| s.percentile(|p| p.p50),
        ),
        (
            Workload::WriteLatency,
            "write-latency: 1 client, p50 (ms)".into(),
            |s| s.percentile(|p| p.p50),
        ),
        (
            Workload::WriteLatency,
            "write-latency: 1 client, p99 (ms)".into(),
            |s| s.percentile(|p| p.p99),
        ),
        (
            Workload::WriteLatency,
            "write-latency: 1 client (writes/s)".into(),
            Summary::ops_per_sec,
        ),
        (
            Workload::WriteThroughput,
            format!("write-throughput: {clients} clients (writes/s)"),
            Summary::ops_per_sec,
        ),
        (
            Workload::WriteThroughput,
            "write-throughput: p50 (ms)".into(),
            |s| s.percentile(|p| p.p50),
        ),
        (
            Workload::WriteThroughput,
            "write-throughput: p99 (ms)".into(),
            |s| s.percentile(|p| p.p99),
        ),
        (
            Workload::WriteThroughput,
            "write-throughput: server CPU (% of one core)".into(),
            |s| s.median(|m| m.server_cpu),
        ),
        (
            Workload::ReadThroughput,
            format!("read-throughput: {clients} clients, {reads} (reads/s)"),
            Summary::ops_per_sec,
        ),
        (
            Workload::ReadThroughput,
            "read-throughput: p99 (ms)".into(),
            |s| s.percentile(|p| p.p99),
        ),
        (
            Workload::ReadThroughput,
            "read-throughput: server CPU (% of one core)".into(),
            |s| s.median(|m| m.server_cpu),
        ),
        (
            Workload::Failover,
            "failover: longest write pause per kill, median (ms)".into(),
            |s| median(&s.gaps()),
        ),
        (
            Workload::Failover,
            "failover: longest write pause, max (ms)".into(),
            Summary::gap_max,
        ),
        (
            Workload::Handover,
            "handover (SIGTERM): longest write pause per stop, median (ms)".into(),
            |s| median(&s.gaps()),
        ),
    ];
    let mut out = String::from("| | raft-kv | etcd | raft-kv / etcd |\n|---|---:|---:|---:|\n");
    // The same machine's floor for both: how far each is from it.
    let against_floor = [
        (
            Workload::WriteLatency,
            "write-latency: p50 × the write floor",
        ),
        (
            Workload::WriteThroughput,
            "write-throughput: p50 × the write floor",
        ),
        (
            Workload::ReadThroughput,
            "read-throughput: p50 × the read floor",
        ),
    ];
    for (workload, label) in against_floor {
        let (Some(ours), Some(theirs)) = (find(raft_kv, workload), find(etcd, workload)) else {
            continue;
        };
        let (a, b) = (
            p50_x_floor(ours, floor, stale),
            p50_x_floor(theirs, floor, stale),
        );
        if let (Some(a), Some(b)) = (a, b) {
            let _ = writeln!(out, "| {label} | {a:.2} | {b:.2} | {:.2} |", a / b);
        }
    }
    for (workload, label, metric) in rows {
        let (Some(ours), Some(theirs)) = (find(raft_kv, workload), find(etcd, workload)) else {
            continue;
        };
        let (a, b) = (metric(ours), metric(theirs));
        let decimals = if label.ends_with("(ms)") { 2 } else { 0 };
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {ratio} |",
            number(a, decimals),
            number(b, decimals)
        );
    }
    out
}

/// One JSON object (one line) per summary: src/bin/raft-kv-bench/plot.py,
/// scaling.sh and fastpath.sh read these keys.
#[derive(Serialize)]
struct Object<'a> {
    target: &'a str,
    workload: &'a str,
    nodes: usize,
    local: bool,
    key_size: usize,
    value_size: usize,
    keyspace: usize,
    stale: bool,
    tls: bool,
    snapshot_log_bytes: Option<usize>,
    runs: usize,
    clients: usize,
    ops: Option<u64>,
    errors: u64,
    new_terms: Option<u64>,
    seconds: Option<f64>,
    #[serde(flatten)]
    failover: Option<FailoverFields>,
    #[serde(flatten)]
    load: Option<LoadFields>,
    #[serde(flatten)]
    floor: Option<FloorFields>,
    server_rss_max_bytes: Option<u64>,
    data_max_bytes: Option<u64>,
    members: Vec<MemberFields<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshots_taken: Option<usize>,
    #[serde(flatten)]
    growth: Option<GrowthFields<'a>>,
    first_error: Option<&'a str>,
}

/// The failover workload's pauses, in milliseconds.
#[derive(Serialize)]
struct FailoverFields {
    kills: usize,
    gap_median_ms: Option<f64>,
    gap_max_ms: Option<f64>,
    gaps_ms: Vec<Option<f64>>,
}

/// Every other workload's throughput, latency and CPU.
#[derive(Serialize)]
struct LoadFields {
    ops_per_sec: Option<f64>,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    client_cpu_pct: Option<f64>,
    server_cpu_pct: Option<f64>,
    ops_per_sec_runs: Vec<Option<f64>>,
}

/// The machine's floor of the run (src/bin/raft-kv-bench/floor.rs), and
/// where this workload stands against it.
#[derive(Serialize)]
struct FloorFields {
    floor_rtt_ms: Option<f64>,
    floor_fsync_ms: Option<f64>,
    floor_write_ms: Option<f64>,
    floor_grpc_calls_per_sec: Option<f64>,
    p50_x_floor: Option<f64>,
    ops_of_grpc_calls: Option<f64>,
}

#[derive(Serialize)]
struct MemberFields<'a> {
    name: &'a str,
    rss_bytes: Option<u64>,
    data_bytes: Option<u64>,
    log_bytes: Option<u64>,
    snapshot_bytes: Option<u64>,
}

/// A grow run's timeline and snapshots.
#[derive(Serialize)]
struct GrowthFields<'a> {
    timeline: Vec<TimelineFields>,
    snapshots: Vec<SnapshotFields<'a>>,
    bench_rss_max_bytes: Option<u64>,
}

/// One second of a grow run: the members' values are arrays in the
/// members' order (`members` of the object names them).
#[derive(Serialize)]
struct TimelineFields {
    t: Option<f64>,
    seconds: Option<f64>,
    keys: u64,
    ops: u64,
    ops_per_sec: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    rss_bytes: Vec<Option<u64>>,
    data_bytes: Vec<Option<u64>>,
    log_bytes: Vec<Option<u64>>,
    snapshot_bytes: Vec<Option<u64>>,
}

#[derive(Serialize)]
struct SnapshotFields<'a> {
    member: &'a str,
    t: Option<f64>,
    index: u64,
    installed: bool,
    state_bytes: Option<u64>,
    encode_ms: Option<f64>,
    file_bytes: Option<u64>,
    write_ms: Option<f64>,
    rewrite_ms: Option<f64>,
}

/// One JSON object (one line) per summary.
pub fn json(summary: &Summary, setup: &Setup, floor: Option<&Floor>) -> String {
    let s = summary;
    let is_failover = matches!(s.workload, Workload::Failover | Workload::Handover);
    let names = s.runs.first().map_or(&[][..], |m| &m.member_names[..]);
    let object = Object {
        target: s.system.name(),
        workload: s.workload.name(),
        nodes: setup.nodes,
        local: setup.local,
        key_size: setup.key_size,
        value_size: s
            .workload
            .fixed_shape()
            .map_or(setup.value_size, |(_, size)| size),
        keyspace: setup.keyspace,
        stale: setup.stale,
        tls: setup.tls,
        snapshot_log_bytes: setup.snapshot_log_bytes,
        runs: s.runs.len(),
        clients: s.clients(),
        ops: whole(s.median(|m| Some(m.ops as f64))),
        errors: s.errors(),
        new_terms: s.new_terms(),
        seconds: round3(s.median(|m| Some(m.seconds))),
        failover: is_failover.then(|| failover_fields(s)),
        load: (!is_failover).then(|| load_fields(s)),
        floor: floor.map(|f| FloorFields {
            floor_rtt_ms: round3(Some(f.rtt_ms)),
            floor_fsync_ms: round3(Some(f.fsync_ms)),
            floor_write_ms: round3(Some(f.write_ms())),
            floor_grpc_calls_per_sec: round3(Some(f.calls_per_sec)),
            p50_x_floor: round3(p50_x_floor(s, Some(f), setup.stale)),
            ops_of_grpc_calls: round3(ops_of_grpc(s, Some(f))),
        }),
        server_rss_max_bytes: whole(s.max_rss()),
        data_max_bytes: whole(s.max_data()),
        members: member_fields(s, names),
        snapshots_taken: s
            .last()
            .filter(|_| !names.is_empty() && s.system == System::RaftKv)
            .map(|last| last.snapshots.iter().filter(|e| !e.installed).count()),
        growth: s.last().and_then(growth_fields),
        first_error: s.first_error(),
    };
    serde_json::to_string(&object).expect("plain structs serialize")
}

fn failover_fields(s: &Summary) -> FailoverFields {
    let gaps = s.gaps();
    FailoverFields {
        kills: gaps.len(),
        gap_median_ms: round3(median(&gaps)),
        gap_max_ms: round3(s.gap_max()),
        gaps_ms: gaps.into_iter().map(|g| round3(Some(g))).collect(),
    }
}

fn load_fields(s: &Summary) -> LoadFields {
    LoadFields {
        ops_per_sec: round3(s.ops_per_sec()),
        p50_ms: round3(s.percentile(|p| p.p50)),
        p90_ms: round3(s.percentile(|p| p.p90)),
        p99_ms: round3(s.percentile(|p| p.p99)),
        max_ms: round3(s.percentile(|p| p.max)),
        client_cpu_pct: round3(s.median(|m| m.client_cpu)),
        server_cpu_pct: round3(s.median(|m| m.server_cpu)),
        ops_per_sec_runs: s
            .runs
            .iter()
            .map(|m| round3(Some(m.ops_per_sec())))
            .collect(),
    }
}

fn member_fields<'a>(s: &Summary, names: &'a [String]) -> Vec<MemberFields<'a>> {
    let pick = |j: usize, pick: fn(&Footprint) -> Option<u64>| whole(s.member_median(j, pick));
    names
        .iter()
        .enumerate()
        .map(|(j, name)| MemberFields {
            name,
            rss_bytes: pick(j, |f| f.rss_bytes),
            data_bytes: pick(j, |f| Some(f.data_bytes)),
            log_bytes: pick(j, |f| f.log_bytes),
            snapshot_bytes: pick(j, |f| f.snapshot_bytes),
        })
        .collect()
}

fn growth_fields(last: &Measured) -> Option<GrowthFields<'_>> {
    let growth = last.growth.as_ref()?;
    Some(GrowthFields {
        timeline: growth.timeline.iter().map(timeline_fields).collect(),
        snapshots: last.snapshots.iter().map(snapshot_fields).collect(),
        bench_rss_max_bytes: growth.bench_rss_max_bytes,
    })
}

fn timeline_fields(i: &Interval) -> TimelineFields {
    let each = |pick: fn(&Footprint) -> Option<u64>| i.members.iter().map(pick).collect();
    TimelineFields {
        t: round3(Some(i.end)),
        seconds: round3(Some(i.seconds)),
        keys: i.keys,
        ops: i.ops,
        ops_per_sec: round3(Some(i.ops_per_sec())),
        p50_ms: round3(i.latency.map(|p| p.p50)),
        p99_ms: round3(i.latency.map(|p| p.p99)),
        max_ms: round3(i.latency.map(|p| p.max)),
        rss_bytes: each(|f| f.rss_bytes),
        data_bytes: each(|f| Some(f.data_bytes)),
        log_bytes: each(|f| f.log_bytes),
        snapshot_bytes: each(|f| f.snapshot_bytes),
    }
}

fn snapshot_fields(e: &SnapshotEvent) -> SnapshotFields<'_> {
    SnapshotFields {
        member: &e.member,
        t: round3(Some(e.at)),
        index: e.index,
        installed: e.installed,
        state_bytes: e.state_bytes,
        encode_ms: round3(e.encode_ms),
        file_bytes: e.file_bytes,
        write_ms: round3(e.write_ms),
        rewrite_ms: round3(e.rewrite_ms),
    }
}

/// Rounded to a thousandth, which is below the noise of every number here
/// and keeps the lines short; `None` (null) when not finite.
fn round3(value: Option<f64>) -> Option<f64> {
    value
        .filter(|v| v.is_finite())
        .map(|v| (v * 1000.0).round() / 1000.0)
}

/// A median of byte or operation counts, as a whole number.
fn whole(value: Option<f64>) -> Option<u64> {
    value.filter(|v| v.is_finite()).map(|v| v.round() as u64)
}

/// Bytes as MiB, or KiB below 1 MiB: one decimal below 10 of either.
fn mib(bytes: Option<f64>) -> String {
    match bytes {
        Some(b) if b < 10.0 * 1024.0 => format!("{:.1} KiB", b / 1024.0),
        Some(b) if b < MIB => format!("{:.0} KiB", b / 1024.0),
        Some(b) if b / MIB < 10.0 => format!("{:.1} MiB", b / MIB),
        Some(b) => format!("{:.0} MiB", b / MIB),
        None => "-".into(),
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn percent(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.0}%"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn measured(ops: u64, seconds: f64, p50: f64) -> Measured {
        Measured {
            clients: 64,
            ops,
            seconds,
            latency: Some(Percentiles {
                p50,
                p90: p50 * 2.0,
                p99: p50 * 4.0,
                max: p50 * 10.0,
            }),
            server_cpu: Some(150.0),
            ..Measured::default()
        }
    }

    fn summary(system: System, workload: Workload, runs: Vec<Measured>) -> Summary {
        Summary {
            system,
            workload,
            runs,
        }
    }

    #[test]
    fn medians_over_runs() {
        let s = summary(
            System::RaftKv,
            Workload::WriteThroughput,
            vec![
                measured(1000, 1.0, 1.0),
                measured(1000, 4.0, 3.0),
                measured(1000, 2.0, 2.0),
            ],
        );
        assert_eq!(s.ops_per_sec(), Some(500.0));
        assert_eq!(s.percentile(|p| p.p99), Some(8.0));
    }

    #[test]
    fn table_aligns_columns_and_reports_failover_on_its_own_line() {
        let write = summary(
            System::RaftKv,
            Workload::WriteThroughput,
            vec![measured(20000, 4.0, 1.5)],
        );
        let mut killed = Measured {
            clients: 1,
            ops: 900,
            gaps_ms: vec![400.0, 250.0, 300.0],
            ..Measured::default()
        };
        killed.errors = 2;
        killed.first_error = Some("127.0.0.1:1: refused".into());
        let failover = summary(System::RaftKv, Workload::Failover, vec![killed]);
        let text = table(&[&write, &failover], Some(&FLOOR), false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "workload          clients    ops  errors  new terms  ops/s  p50 ms  p90 ms  p99 ms  max ms  p50 × floor  of gRPC calls/s  bench CPU  server CPU  server RSS  data dir"
        );
        // The write floor is 2 × 0.2 + 0.3 ms; 5000 of 10 000 calls/s.
        assert_eq!(
            lines[1],
            "write-throughput       64  20000       0          -   5000    1.50    3.00    6.00   15.00         2.14              50%          -        150%           -         -"
        );
        assert_eq!(
            lines[2],
            "failover: 3 kills of the leader, 1 writer (900 writes, 2 errors): longest pause in writes per kill, median 300 ms, max 400 ms [400 250 300]"
        );
        assert_eq!(lines[3], "failover: first error: 127.0.0.1:1: refused");
    }

    #[test]
    fn comparison_divides_raft_kv_by_etcd_and_skips_missing_workloads() {
        let ours = summary(
            System::RaftKv,
            Workload::WriteLatency,
            vec![measured(2000, 2.0, 1.2)],
        );
        let theirs = summary(
            System::Etcd,
            Workload::WriteLatency,
            vec![measured(2000, 1.0, 0.6)],
        );
        let only_ours = summary(System::RaftKv, Workload::Rtt, vec![measured(10, 1.0, 0.1)]);
        let text = comparison(&[&ours, &only_ours], &[&theirs], 64, false, Some(&FLOOR));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "| | raft-kv | etcd | raft-kv / etcd |",
                "|---|---:|---:|---:|",
                "| write-latency: p50 × the write floor | 1.71 | 0.86 | 2.00 |",
                "| write-latency: 1 client, p50 (ms) | 1.20 | 0.60 | 2.00 |",
                "| write-latency: 1 client, p99 (ms) | 4.80 | 2.40 | 2.00 |",
                "| write-latency: 1 client (writes/s) | 1000 | 2000 | 0.50 |",
            ]
        );
    }

    #[test]
    fn json_objects() {
        let s = summary(
            System::Etcd,
            Workload::ReadThroughput,
            vec![measured(100, 2.0, 0.5)],
        );
        let setup = Setup {
            nodes: 3,
            local: false,
            key_size: 16,
            value_size: 128,
            keyspace: 1000,
            stale: false,
            tls: false,
            snapshot_log_bytes: None,
        };
        let text = json(&s, &setup, None);
        assert!(!text.contains('\n'), "{text}");
        let object: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            object,
            json!({
                "target": "etcd", "workload": "read-throughput", "nodes": 3, "local": false,
                "key_size": 16, "value_size": 128, "keyspace": 1000, "stale": false, "tls": false,
                "snapshot_log_bytes": null, "runs": 1, "clients": 64,
                "ops": 100, "errors": 0, "new_terms": null, "seconds": 2.0, "ops_per_sec": 50.0,
                "p50_ms": 0.5, "p90_ms": 1.0, "p99_ms": 2.0, "max_ms": 5.0,
                "client_cpu_pct": null, "server_cpu_pct": 150.0, "ops_per_sec_runs": [50.0],
                "server_rss_max_bytes": null, "data_max_bytes": null, "members": [],
                "first_error": null
            })
        );
        // The keys in the order they always came, the settings first.
        assert!(
            text.starts_with("{\"target\":\"etcd\",\"workload\":\"read-throughput\",\"nodes\":3,"),
            "{text}"
        );
        assert!(text.ends_with(",\"first_error\":null}"), "{text}");
        let failover = Measured {
            gaps_ms: vec![1.0, 3.0004],
            first_error: Some("a \"quoted\"\nline\u{1}".into()),
            ..Measured::default()
        };
        let f: Value = serde_json::from_str(&json(
            &summary(System::RaftKv, Workload::Failover, vec![failover]),
            &setup,
            None,
        ))
        .unwrap();
        assert_eq!(f["kills"], 2);
        assert_eq!(f["gap_median_ms"], 2.0);
        assert_eq!(f["gap_max_ms"], 3.0);
        assert_eq!(f["gaps_ms"], json!([1.0, 3.0]));
        assert_eq!(f["first_error"], "a \"quoted\"\nline\u{1}");
        assert!(f.get("ops_per_sec").is_none(), "{f}");
        let with_floor: Value = serde_json::from_str(&json(&s, &setup, Some(&FLOOR))).unwrap();
        assert_eq!(with_floor["floor_write_ms"], 0.7);
        assert_eq!(with_floor["floor_grpc_calls_per_sec"], 10000.0);
        // A linearizable read's floor is two round trips: 0.5 / 0.4 ms.
        assert_eq!(with_floor["p50_x_floor"], 1.25);
        assert_eq!(with_floor["ops_of_grpc_calls"], 0.005);
    }

    const FLOOR: Floor = Floor {
        rtt_ms: 0.2,
        fsync_ms: 0.3,
        calls_per_sec: 10_000.0,
        clients: 64,
    };

    fn footprint(rss_mib: u64, data_kib: u64) -> Footprint {
        Footprint {
            rss_bytes: Some(rss_mib << 20),
            data_bytes: data_kib << 10,
            log_bytes: Some(data_kib << 9),
            snapshot_bytes: Some(data_kib << 9),
        }
    }

    #[test]
    fn members_memory_and_disk_the_largest_in_the_table_each_in_json() {
        let mut runs = Vec::new();
        for rss in [100, 300, 200] {
            let mut m = measured(1000, 1.0, 1.0);
            m.member_names = vec!["node 1".into(), "node 2".into()];
            m.members = vec![footprint(rss, 2048), footprint(rss / 2, 20)];
            runs.push(m);
        }
        let s = summary(System::RaftKv, Workload::WriteThroughput, runs);
        assert_eq!(s.max_rss(), Some(200.0 * MIB));
        let line = table(&[&s], None, false)
            .lines()
            .nth(1)
            .unwrap()
            .to_string();
        assert!(line.ends_with("150%     200 MiB   2.0 MiB"), "{line}");
        let setup = Setup {
            nodes: 2,
            ..Setup::default()
        };
        let j: Value = serde_json::from_str(&json(&s, &setup, None)).unwrap();
        assert_eq!(j["server_rss_max_bytes"], 200 << 20);
        assert_eq!(j["data_max_bytes"], 2097152);
        assert_eq!(
            j["members"],
            json!([
                {"name": "node 1", "rss_bytes": 200 << 20, "data_bytes": 2097152,
                 "log_bytes": 1048576, "snapshot_bytes": 1048576},
                {"name": "node 2", "rss_bytes": 100 << 20, "data_bytes": 20480,
                 "log_bytes": 10240, "snapshot_bytes": 10240}
            ])
        );
        assert_eq!(j["snapshots_taken"], 0);
        assert_eq!(mib(Some(1.25 * MIB)), "1.2 MiB");
        assert_eq!(mib(Some(123.6 * MIB)), "124 MiB");
        assert_eq!(mib(Some(2560.0)), "2.5 KiB");
        assert_eq!(mib(None), "-");
    }

    fn grown() -> Measured {
        let interval = |end: f64, keys: u64, ops: u64, rss: u64| Interval {
            end,
            seconds: 1.0,
            keys,
            ops,
            latency: Some(Percentiles {
                p50: 1.0,
                p90: 2.0,
                p99: 3.0,
                max: 40.0,
            }),
            members: vec![footprint(rss, 1024)],
        };
        let event = |at: f64, index: u64, write_ms: f64| SnapshotEvent {
            member: "node 1".into(),
            at,
            index,
            state_bytes: Some(5000),
            file_bytes: Some(5040),
            write_ms: Some(write_ms),
            rewrite_ms: Some(0.5),
            ..SnapshotEvent::default()
        };
        let mut timeline = vec![
            interval(1.0, 900, 900, 50),
            interval(2.0, 1900, 1000, 80),
            interval(2.5, 2000, 100, 70),
        ];
        timeline[2].seconds = 0.5;
        Measured {
            clients: 8,
            ops: 2000,
            seconds: 2.5,
            member_names: vec!["node 1".into()],
            members: vec![footprint(70, 1024)],
            snapshots: vec![event(0.5, 1000, 4.0), event(1.7, 2000, 6.0)],
            growth: Some(Growth {
                rows: timeline.clone(),
                timeline,
                bench_rss_max_bytes: Some(30 << 20),
            }),
            ..Measured::default()
        }
    }

    #[test]
    fn growth_timeline_table() {
        let s = summary(System::RaftKv, Workload::Grow, vec![grown()]);
        let text = table(&[&s], None, false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("grow     "), "{text}");
        assert_eq!(
            lines[3],
            "grow: 2000 keys written by 8 clients, one row per 1 s; server RSS, data dir and log: the largest member's at the row's end"
        );
        assert_eq!(
            &lines[4..],
            [
                "t s  keys  ops/s  p50 ms  p99 ms  max ms  snapshots  server RSS  data dir      log",
                "1.0   900    900    1.00    3.00   40.00          1      50 MiB   1.0 MiB  512 KiB",
                "2.0  1900   1000    1.00    3.00   40.00          1      80 MiB   1.0 MiB  512 KiB",
                "2.5  2000    200    1.00    3.00   40.00          0      70 MiB   1.0 MiB  512 KiB",
                "snapshots: 2 (node 1: 2); file write median 5.0 ms, max 6.0 ms; log compaction median 0.5 ms, max 0.5 ms; largest file 4.9 KiB",
                "at the end: server RSS 70 MiB (max seen 80 MiB), data dir 1.0 MiB (max seen 1.0 MiB), log 512 KiB (max seen 512 KiB)",
                "bench RSS: max 30 MiB",
            ]
        );
    }

    #[test]
    fn growth_json_has_the_timeline_and_the_snapshots() {
        let s = summary(System::RaftKv, Workload::Grow, vec![grown()]);
        let j: Value = serde_json::from_str(&json(&s, &Setup::default(), None)).unwrap();
        assert_eq!(
            j["timeline"][0],
            json!({"t": 1.0, "seconds": 1.0, "keys": 900, "ops": 900, "ops_per_sec": 900.0,
                   "p50_ms": 1.0, "p99_ms": 3.0, "max_ms": 40.0, "rss_bytes": [52428800],
                   "data_bytes": [1048576], "log_bytes": [524288], "snapshot_bytes": [524288]})
        );
        assert_eq!(
            j["snapshots"][0],
            json!({"member": "node 1", "t": 0.5, "index": 1000, "installed": false,
                   "state_bytes": 5000, "encode_ms": null, "file_bytes": 5040,
                   "write_ms": 4.0, "rewrite_ms": 0.5})
        );
        assert_eq!(j["snapshots_taken"], 2);
        assert_eq!(j["bench_rss_max_bytes"], 31457280);
    }
}
