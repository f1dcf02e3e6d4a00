//! What the bench prints: a table per system, a side-by-side table with
//! ratios when both ran, or one JSON object per workload.

use std::fmt::Write;

use super::client::System;
use super::stats::{median, Percentiles};
use super::workload::{Measured, Workload};

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
}

/// One system's results as an aligned table, failover on lines of its own.
pub fn table(summaries: &[&Summary]) -> String {
    let header = [
        "workload",
        "clients",
        "ops",
        "errors",
        "ops/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "bench CPU",
        "server CPU",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    let mut notes = String::new();
    for s in summaries {
        if s.workload == Workload::Failover {
            let gaps = s.gaps();
            let each: Vec<String> = gaps.iter().map(|g| format!("{g:.0}")).collect();
            let _ = writeln!(
                notes,
                "failover: {} kill{} of the leader, 1 writer ({} writes, {} errors): longest pause in writes per kill, median {} ms, max {} ms [{}]",
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
                number(s.ops_per_sec(), 0),
                number(s.percentile(|p| p.p50), 2),
                number(s.percentile(|p| p.p90), 2),
                number(s.percentile(|p| p.p99), 2),
                number(s.percentile(|p| p.max), 2),
                percent(s.median(|m| m.client_cpu)),
                percent(s.median(|m| m.server_cpu)),
            ]);
        }
        if let Some(error) = s.first_error() {
            let _ = writeln!(notes, "{}: first error: {error}", s.workload.name());
        }
    }
    let mut out = align(&rows);
    out.push_str(&notes);
    out
}

/// Columns padded to their widest cell; numbers right-aligned.
fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
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
pub fn comparison(raft_kv: &[&Summary], etcd: &[&Summary], clients: usize, stale: bool) -> String {
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
    ];
    let mut out = String::from("| | raft-kv | etcd | raft-kv / etcd |\n|---|---:|---:|---:|\n");
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

/// One JSON object (one line) per summary.
pub fn json(summary: &Summary) -> String {
    let s = summary;
    let mut fields = vec![
        ("target", string(s.system.name())),
        ("workload", string(s.workload.name())),
        ("runs", s.runs.len().to_string()),
        ("clients", s.clients().to_string()),
        ("ops", number(s.median(|m| Some(m.ops as f64)), 0)),
        ("errors", s.errors().to_string()),
        ("seconds", json_number(s.median(|m| Some(m.seconds)))),
    ];
    if s.workload == Workload::Failover {
        let gaps = s.gaps();
        fields.push(("kills", gaps.len().to_string()));
        fields.push(("gap_median_ms", json_number(median(&gaps))));
        fields.push(("gap_max_ms", json_number(s.gap_max())));
        fields.push(("gaps_ms", json_array(gaps.into_iter().map(Some))));
    } else {
        fields.push(("ops_per_sec", json_number(s.ops_per_sec())));
        fields.push(("p50_ms", json_number(s.percentile(|p| p.p50))));
        fields.push(("p90_ms", json_number(s.percentile(|p| p.p90))));
        fields.push(("p99_ms", json_number(s.percentile(|p| p.p99))));
        fields.push(("max_ms", json_number(s.percentile(|p| p.max))));
        fields.push(("client_cpu_pct", json_number(s.median(|m| m.client_cpu))));
        fields.push(("server_cpu_pct", json_number(s.median(|m| m.server_cpu))));
        let per_run = s.runs.iter().map(|m| Some(m.ops_per_sec()));
        fields.push(("ops_per_sec_runs", json_array(per_run)));
    }
    fields.push(("first_error", s.first_error().map_or("null".into(), string)));
    let body: Vec<String> = fields
        .into_iter()
        .map(|(key, value)| format!("{}:{value}", string(key)))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn percent(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.0}%"))
}

fn json_number(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        _ => "null".into(),
    }
}

fn json_array(values: impl Iterator<Item = Option<f64>>) -> String {
    let items: Vec<String> = values.map(json_number).collect();
    format!("[{}]", items.join(","))
}

/// A JSON string literal (RFC 8259 escapes).
fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let text = table(&[&write, &failover]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "workload          clients    ops  errors  ops/s  p50 ms  p90 ms  p99 ms  max ms  bench CPU  server CPU"
        );
        assert_eq!(
            lines[1],
            "write-throughput       64  20000       0   5000    1.50    3.00    6.00   15.00          -        150%"
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
        let text = comparison(&[&ours, &only_ours], &[&theirs], 64, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "| | raft-kv | etcd | raft-kv / etcd |",
                "|---|---:|---:|---:|",
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
        assert_eq!(
            json(&s),
            "{\"target\":\"etcd\",\"workload\":\"read-throughput\",\"runs\":1,\"clients\":64,\
             \"ops\":100,\"errors\":0,\"seconds\":2.000,\"ops_per_sec\":50.000,\
             \"p50_ms\":0.500,\"p90_ms\":1.000,\"p99_ms\":2.000,\"max_ms\":5.000,\
             \"client_cpu_pct\":null,\"server_cpu_pct\":150.000,\"ops_per_sec_runs\":[50.000],\
             \"first_error\":null}"
        );
        let failover = Measured {
            gaps_ms: vec![1.0, 3.0],
            first_error: Some("a \"quoted\"\nline\u{1}".into()),
            ..Measured::default()
        };
        let f = json(&summary(System::RaftKv, Workload::Failover, vec![failover]));
        assert!(f.contains("\"kills\":2,\"gap_median_ms\":2.000,\"gap_max_ms\":3.000,\"gaps_ms\":[1.000,3.000]"), "{f}");
        assert!(
            f.ends_with("\"first_error\":\"a \\\"quoted\\\"\\nline\\u0001\"}"),
            "{f}"
        );
    }
}
