//! The grow workload: `--clients` writers write each of `--keyspace` keys
//! once, so the state grows to `--keyspace` keys, and the bench looks at the
//! cluster once a second. This module turns what it saw into a timeline —
//! per second the keys written so far, ops/s, latency percentiles, and each
//! member's resident memory and data dir — and reads the snapshots the
//! members took from their logs, so the effect of a snapshot on latency can
//! be seen beside it (docs/performance.md).

use std::sync::Arc;

use super::client::Pool;
use super::local::Probe;
use super::stats::{self, Footprint, Percentiles};
use super::workload::{sampled_loop, Data, Measured, Op, Progress};

/// The table shows at most this many rows; a longer run is shown in rows
/// of several seconds each (the JSON keeps every second).
pub const TABLE_ROWS: usize = 40;

/// What the sampler saw at one moment while the writers ran.
#[derive(Clone, Debug, Default)]
pub struct RawSample {
    /// Since the start of the clock.
    pub seconds: f64,
    /// Each probed member's footprint, in the members' order.
    pub members: Vec<Footprint>,
    /// The bench's own resident memory.
    pub bench_rss_bytes: Option<u64>,
}

/// The grow workload's timeline.
#[derive(Clone, Debug, Default)]
pub struct Growth {
    /// One interval per second (the last one shorter).
    pub timeline: Vec<Interval>,
    /// The same intervals merged into at most [`TABLE_ROWS`].
    pub rows: Vec<Interval>,
    /// The most the bench itself held in memory at any sample.
    pub bench_rss_max_bytes: Option<u64>,
}

/// The writes that completed in one interval of the run, and the members
/// at its end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Interval {
    /// The end of the interval, in seconds since the start.
    pub end: f64,
    /// Its length.
    pub seconds: f64,
    /// Writes that succeeded from the start to the end of the interval:
    /// each writes a new key, so this is the number of keys stored.
    pub keys: u64,
    /// Writes that succeeded in the interval.
    pub ops: u64,
    pub latency: Option<Percentiles>,
    pub members: Vec<Footprint>,
}

impl Interval {
    pub fn ops_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub fn max_rss(&self) -> Option<u64> {
        self.members.iter().filter_map(|f| f.rss_bytes).max()
    }

    pub fn max_data(&self) -> Option<u64> {
        self.members.iter().map(|f| f.data_bytes).max()
    }

    pub fn max_log(&self) -> Option<u64> {
        self.members.iter().filter_map(|f| f.log_bytes).max()
    }
}

/// Run the grow workload — `keyspace` writes, key `n` for each `n`, `op`
/// [`Op::Put`] — or the sessions workload (`total` writes over the keys,
/// [`Op::PutFresh`]), sampled once a second (the members through `probes`,
/// none without --local).
pub async fn grow(
    pool: &Pool,
    clients: usize,
    (total, op): (u64, Op),
    data: &Arc<Data>,
    progress: &Arc<Progress>,
    probes: &[Probe],
) -> Result<Measured, String> {
    let (mut measured, sampled) =
        sampled_loop(pool, clients, total, op, data, progress, Some(probes)).await?;
    let mut sampled = sampled.expect("sampled_loop samples when given probes");
    let bench_rss_max_bytes = sampled
        .samples
        .iter()
        .filter_map(|s| s.bench_rss_bytes)
        .max();
    let timeline = intervals(&mut sampled.completions, &sampled.samples, 1);
    let step = sampled.samples.len().div_ceil(TABLE_ROWS).max(1);
    let rows = intervals(&mut sampled.completions, &sampled.samples, step);
    measured.growth = Some(Growth {
        timeline,
        rows,
        bench_rss_max_bytes,
    });
    Ok(measured)
}

/// The intervals between every `step`-th sample (and the last one), with
/// the completions `(seconds since the start, latency ns)` that fall in each:
/// interval `k` holds those after the end of interval `k - 1` and at or
/// before its own end. Completions after the last sample count in the last
/// interval. Sorts `completions` by time.
pub fn intervals(
    completions: &mut [(f64, u64)],
    samples: &[RawSample],
    step: usize,
) -> Vec<Interval> {
    completions.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let step = step.max(1);
    let mut ends: Vec<usize> = (step - 1..samples.len()).step_by(step).collect();
    if ends.last() != samples.len().checked_sub(1).as_ref() {
        ends.extend(samples.len().checked_sub(1));
    }
    let mut out: Vec<Interval> = Vec::with_capacity(ends.len());
    let (mut from, mut previous_end) = (0, 0.0);
    for (n, &i) in ends.iter().enumerate() {
        let sample = &samples[i];
        let to = if n + 1 == ends.len() {
            completions.len()
        } else {
            from + completions[from..].partition_point(|c| c.0 <= sample.seconds)
        };
        if to == from && sample.seconds <= previous_end && !out.is_empty() {
            // Nothing happened in no time (a last sample moved back onto
            // the one before it): no interval, but the later reading.
            if let Some(previous) = out.last_mut() {
                previous.members = sample.members.clone();
            }
            continue;
        }
        let mut latencies: Vec<u64> = completions[from..to].iter().map(|c| c.1).collect();
        out.push(Interval {
            end: sample.seconds,
            seconds: sample.seconds - previous_end,
            keys: to as u64,
            ops: (to - from) as u64,
            latency: Percentiles::of(&mut latencies),
            members: sample.members.clone(),
        });
        from = to;
        previous_end = sample.seconds;
    }
    out
}

/// A snapshot one member took (§7), or installed from its leader, as its
/// log tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotEvent {
    pub member: String,
    /// Seconds since the start of the workload, from the log line's time:
    /// when the member started it (or installed it).
    pub at: f64,
    /// The last log index it covers.
    pub index: u64,
    /// Sent by the leader (InstallSnapshot) rather than taken by the member.
    pub installed: bool,
    /// The state machine's bytes (the writer thread logs them for a
    /// snapshot the member takes), and how long encoding them took.
    pub state_bytes: Option<u64>,
    pub encode_ms: Option<f64>,
    /// From the storage's lines: the snapshot file's bytes, and how long
    /// writing it (with its fsyncs) and then rewriting the log took.
    pub file_bytes: Option<u64>,
    pub write_ms: Option<f64>,
    pub rewrite_ms: Option<f64>,
}

/// The core's line when it starts a snapshot (`src/raft/install_snapshot.rs`).
const STARTED: &str = "snapshot through index ";
const STARTED_END: &str = " started (";
/// The writer thread's line once it has encoded one (`src/server/snapshot_writer.rs`).
const ENCODED: &str = " encoded: ";
/// The core's line once it has installed one from the leader.
const INSTALLED: &str = "installed snapshot through index ";
/// The storage's line when a snapshot file is written: by the writer thread
/// ("B bytes in X ms"), or, for an installed one, before the core's line
/// ("B bytes in X ms, log compacted in Y ms").
const WRITTEN: &str = "snapshot file written: ";
/// The storage's line when the log is compacted after a taken snapshot.
const COMPACTED: &str = "log compacted through ";

/// The snapshot events in `log`, the text one member logged, that happened
/// at or after `started_unix` (seconds since the Unix epoch). A member
/// writes one snapshot of its own at a time.
pub fn snapshot_events(member: &str, log: &str, started_unix: f64) -> Vec<SnapshotEvent> {
    let mut events: Vec<SnapshotEvent> = Vec::new();
    // The snapshot of its own the member is writing, if it started after
    // the start.
    let mut taken: Option<usize> = None;
    let mut written_waiting: Option<(f64, u64, f64, f64)> = None;
    for line in log.lines() {
        let Some(time) = stats::parse_rfc3339(line) else {
            continue;
        };
        let at = time - started_unix;
        if let Some(rest) = after(line, INSTALLED) {
            let Some(index) = leading_number(rest) else {
                continue;
            };
            let written = written_waiting.take();
            if at >= 0.0 {
                events.push(SnapshotEvent {
                    member: member.to_string(),
                    at: written.map_or(at, |w| w.0),
                    index,
                    installed: true,
                    file_bytes: written.map(|w| w.1),
                    write_ms: written.map(|w| w.2),
                    rewrite_ms: written.map(|w| w.3),
                    ..SnapshotEvent::default()
                });
            }
        } else if let Some(rest) = after(line, STARTED).filter(|rest| {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            rest[digits..].starts_with(STARTED_END)
        }) {
            // "I started (B bytes of log)"
            let Some(index) = leading_number(rest) else {
                continue;
            };
            taken = None;
            if at >= 0.0 {
                taken = Some(events.len());
                events.push(SnapshotEvent {
                    member: member.to_string(),
                    at,
                    index,
                    ..SnapshotEvent::default()
                });
            }
        } else if let Some(rest) = after(line, ENCODED) {
            // "B bytes in E ms"
            if let (Some(i), Some((bytes, ms))) = (taken, parse_bytes_in_ms(rest)) {
                events[i].state_bytes = Some(bytes);
                events[i].encode_ms = Some(ms);
            }
        } else if let Some(rest) = after(line, WRITTEN) {
            if let Some(written) = parse_written(rest) {
                written_waiting = Some((at, written.0, written.1, written.2));
            } else if let (Some(i), Some((bytes, ms))) = (taken, parse_bytes_in_ms(rest)) {
                events[i].file_bytes = Some(bytes);
                events[i].write_ms = Some(ms);
            }
        } else if let Some(rest) = after(line, COMPACTED) {
            // "I in R ms (N segments left)"
            let Some(i) = taken.take() else {
                continue;
            };
            let rewrite = rest
                .split_once(" in ")
                .and_then(|(_, ms)| ms.split_once(" ms"))
                .and_then(|(ms, _)| ms.parse().ok());
            if leading_number(rest) == Some(events[i].index) {
                events[i].rewrite_ms = rewrite;
            }
        }
    }
    events
}

/// The text after the first `marker` in `line`.
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| &line[at + marker.len()..])
}

fn leading_number(text: &str) -> Option<u64> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text[..end].parse().ok()
}

/// "B bytes in X ms" -> (B, X).
fn parse_bytes_in_ms(text: &str) -> Option<(u64, f64)> {
    let (bytes, rest) = text.split_once(" bytes in ")?;
    let ms = rest.strip_suffix(" ms")?;
    Some((bytes.parse().ok()?, ms.trim().parse().ok()?))
}

/// "B bytes in X ms, log compacted in Y ms" -> (B, X, Y).
fn parse_written(text: &str) -> Option<(u64, f64, f64)> {
    let (bytes, rest) = text.split_once(" bytes in ")?;
    let (write, rest) = rest.split_once(" ms, log compacted in ")?;
    let rewrite = rest.strip_suffix(" ms")?;
    Some((
        bytes.parse().ok()?,
        write.parse().ok()?,
        rewrite.trim().parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seconds: f64, rss: u64) -> RawSample {
        RawSample {
            seconds,
            members: vec![Footprint {
                rss_bytes: Some(rss),
                data_bytes: rss * 2,
                log_bytes: Some(rss / 2),
                snapshot_bytes: None,
            }],
            bench_rss_bytes: Some(1),
        }
    }

    fn ms(latency: u64) -> u64 {
        latency * 1_000_000
    }

    #[test]
    fn completions_fall_in_the_interval_they_end_in() {
        let samples = [
            sample(1.0, 10),
            sample(2.0, 20),
            sample(3.0, 30),
            sample(3.5, 40),
        ];
        // Out of order, as the clients return them; one exactly on a boundary
        // (it belongs to the interval that ends there), one after the last
        // sample (counted in the last interval).
        let mut completions = vec![
            (2.5, ms(9)),
            (0.1, ms(1)),
            (1.0, ms(3)),
            (0.5, ms(2)),
            (1.5, ms(5)),
            (3.6, ms(7)),
        ];
        let every = intervals(&mut completions, &samples, 1);
        assert_eq!(every.len(), 4);
        let ops: Vec<u64> = every.iter().map(|i| i.ops).collect();
        assert_eq!(ops, [3, 1, 1, 1]);
        let keys: Vec<u64> = every.iter().map(|i| i.keys).collect();
        assert_eq!(keys, [3, 4, 5, 6]);
        assert_eq!(every[0].latency.unwrap().p50, 2.0);
        assert_eq!(every[0].latency.unwrap().max, 3.0);
        assert_eq!(every[2].latency.unwrap().max, 9.0);
        assert_eq!(every[3].latency.unwrap().max, 7.0);
        assert_eq!((every[3].end, every[3].seconds), (3.5, 0.5));
        assert_eq!(every[3].ops_per_sec(), 2.0);
        assert_eq!(every[1].max_rss(), Some(20));
        assert_eq!(every[1].max_data(), Some(40));
        assert_eq!(every[1].max_log(), Some(10));
        // Two seconds a row: the last row is what is left, and each row's
        // percentiles are over all of its writes.
        let rows = intervals(&mut completions, &samples, 2);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].end, rows[0].seconds, rows[0].ops), (2.0, 2.0, 4));
        assert_eq!(rows[0].latency.unwrap().max, 5.0);
        assert_eq!(rows[0].members, samples[1].members);
        assert_eq!((rows[1].end, rows[1].seconds, rows[1].keys), (3.5, 1.5, 6));
        let rows = intervals(&mut completions, &samples, 3);
        let ends: Vec<f64> = rows.iter().map(|r| r.end).collect();
        assert_eq!(ends, [3.0, 3.5]);
        // An interval without writes has no percentiles.
        let mut none: Vec<(f64, u64)> = Vec::new();
        let empty = intervals(&mut none, &samples[..1], 1);
        assert_eq!((empty[0].ops, empty[0].latency), (0, None));
        assert!(intervals(&mut none, &[], 1).is_empty());
        // A last sample moved back onto the one before it adds no interval.
        let twice = [sample(1.0, 10), sample(1.0, 12)];
        let mut one = vec![(0.5, ms(1))];
        let merged = intervals(&mut one, &twice, 1);
        assert_eq!((merged.len(), merged[0].ops), (1, 1));
        assert_eq!(merged[0].max_rss(), Some(12));
    }

    const LOG: &str = "\
2026-11-26T23:47:00.000000000Z [INFO] node 1 term 2: snapshot through index 100 started (9999 bytes of log)
2026-11-26T23:47:00.005000000Z [INFO] node 1: snapshot through index 100 encoded: 999 bytes in 0.5 ms
2026-11-26T23:47:01.010000000Z [INFO] snapshot file written: 1040 bytes in 1.5 ms
2026-11-26T23:47:01.011000000Z [INFO] node 1 term 2: snapshot through index 100 (999 bytes), log compacted
2026-11-26T23:47:01.012000000Z [INFO] log compacted through 100 in 0.2 ms (1 segments left)
2026-11-26T23:47:01.500000000Z [INFO] node 1 term 2: follower -> candidate
2026-11-26T23:47:02.250000000Z [INFO] node 1 term 3: snapshot through index 20100 started (200000 bytes of log)
2026-11-26T23:47:02.260000000Z [INFO] node 1: snapshot through index 20100 encoded: 123456 bytes in 10.0 ms
2026-11-26T23:47:02.300000000Z [INFO] snapshot file written: 123500 bytes in 40.0 ms
2026-11-26T23:47:02.301000000Z [INFO] node 1 term 3: snapshot through index 20100 (123456 bytes), log compacted
2026-11-26T23:47:02.305000000Z [INFO] log compacted through 20100 in 3.5 ms (2 segments left)
a line without a time: snapshot through index 5 started (1 bytes of log)
2026-11-26T23:47:03.000000000Z [INFO] snapshot file written: 5000 bytes in 2.0 ms, log compacted in 0.0 ms
2026-11-26T23:47:03.001000000Z [INFO] node 1 term 3: installed snapshot through index 30000 from leader 2
2026-11-26T23:47:04.000000000Z [INFO] node 1 term 3: snapshot through index 40000 started (8000 bytes of log)
";

    #[test]
    fn snapshot_events_from_a_members_log() {
        let start = stats::parse_rfc3339("2026-11-26T23:47:01Z").unwrap();
        let events = snapshot_events("node 1", LOG, start);
        assert_eq!(
            events,
            [
                SnapshotEvent {
                    member: "node 1".into(),
                    at: 1.25,
                    index: 20100,
                    installed: false,
                    state_bytes: Some(123456),
                    encode_ms: Some(10.0),
                    file_bytes: Some(123500),
                    write_ms: Some(40.0),
                    rewrite_ms: Some(3.5),
                },
                SnapshotEvent {
                    member: "node 1".into(),
                    at: 2.0,
                    index: 30000,
                    installed: true,
                    state_bytes: None,
                    encode_ms: None,
                    file_bytes: Some(5000),
                    write_ms: Some(2.0),
                    rewrite_ms: Some(0.0),
                },
                // Still being written: no sizes or times yet.
                SnapshotEvent {
                    member: "node 1".into(),
                    at: 3.0,
                    index: 40000,
                    ..SnapshotEvent::default()
                },
            ]
        );
        // Everything, counted from before the first line; the one that
        // started before the start of the workload is left out whole.
        assert_eq!(snapshot_events("n", LOG, start - 10.0).len(), 4);
        assert_eq!(
            snapshot_events("n", LOG, start - 10.0)[0].rewrite_ms,
            Some(0.2)
        );
        assert_eq!(snapshot_events("n", "", start), []);
    }

    #[test]
    fn storage_lines() {
        assert_eq!(
            parse_written("123 bytes in 4.5 ms, log compacted in 0.1 ms"),
            Some((123, 4.5, 0.1))
        );
        assert_eq!(parse_written("123 bytes in 4.5 ms"), None);
        assert_eq!(
            parse_written("x bytes in 4.5 ms, log rewritten in 0.1 ms"),
            None
        );
        assert_eq!(leading_number("20100 (5 bytes)"), Some(20100));
        assert_eq!(leading_number("(5"), None);
    }
}
