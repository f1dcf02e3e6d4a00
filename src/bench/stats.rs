//! Latency percentiles, medians across runs, and CPU time from /proc.

use std::time::Duration;

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// The percentiles of `samples` (nanoseconds), which are sorted in place;
    /// `None` when there are none.
    pub fn of(samples: &mut [u64]) -> Option<Percentiles> {
        samples.sort_unstable();
        Some(Percentiles {
            p50: millis(percentile(samples, 50.0)?),
            p90: millis(percentile(samples, 90.0)?),
            p99: millis(percentile(samples, 99.0)?),
            max: millis(*samples.last()?),
        })
    }
}

/// The nearest-rank percentile of sorted `samples`: the smallest sample
/// with at least `p` percent of the samples at or below it. Unlike an
/// interpolated one it is always a latency that was actually observed.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn millis(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

/// The median of `values` (the mean of the middle two for an even count);
/// `None` when empty. Runs of a benchmark on a noisy machine are summarized
/// by it, since one disturbed run moves a mean but not a median.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    })
}

/// CPU time (user + system, every thread) used so far by process `pid`, or
/// by this process when `pid` is `None`; `None` where /proc is not there.
pub fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    let ticks = parse_stat_cpu_ticks(&stat)?;
    Some(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second()?,
    ))
}

/// utime + stime (fields 14 and 15 of proc(5)'s stat) in clock ticks. The
/// command name (field 2) is in parentheses and may itself contain spaces
/// or parentheses, so the fields are counted from the last `)`.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(target_os = "linux")]
fn clock_ticks_per_second() -> Option<f64> {
    const SC_CLK_TCK: i32 = 2;
    extern "C" {
        fn sysconf(name: i32) -> i64;
    }
    // SAFETY: sysconf only reads a constant of the C library.
    let ticks = unsafe { sysconf(SC_CLK_TCK) };
    (ticks > 0).then_some(ticks as f64)
}

#[cfg(not(target_os = "linux"))]
fn clock_ticks_per_second() -> Option<f64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(50));
        assert_eq!(percentile(&sorted, 90.0), Some(90));
        assert_eq!(percentile(&sorted, 99.0), Some(99));
        assert_eq!(percentile(&sorted, 99.5), Some(100));
        assert_eq!(percentile(&sorted, 100.0), Some(100));
        assert_eq!(percentile(&sorted, 0.1), Some(1));
        // With 10 samples p99 is the largest: 9 samples are only 90 %.
        let ten: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&ten, 90.0), Some(9));
        assert_eq!(percentile(&ten, 99.0), Some(10));
        assert_eq!(percentile(&[7], 50.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&sorted, 0.0), None);
        assert_eq!(percentile(&sorted, 101.0), None);
        assert_eq!(percentile(&sorted, f64::NAN), None);
    }

    #[test]
    fn percentiles_sort_their_samples_and_report_milliseconds() {
        // 1..=1000 microseconds, shuffled by a fixed stride.
        let mut samples: Vec<u64> = (0..1000).map(|i| (i * 379 % 1000 + 1) * 1000).collect();
        let p = Percentiles::of(&mut samples).unwrap();
        assert_eq!(
            p,
            Percentiles {
                p50: 0.5,
                p90: 0.9,
                p99: 0.99,
                max: 1.0
            }
        );
        assert!(samples.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(Percentiles::of(&mut []), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[5.0]), Some(5.0));
        assert_eq!(median(&[100.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // proc(5): pid (comm) state ppid pgrp session tty_nr tpgid flags
        // minflt cminflt majflt cmajflt utime stime ...
        let stat = "42 (raft-kv (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 8";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("42 (short) S 1"), None);
        assert_eq!(parse_stat_cpu_ticks("no parentheses"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(cpu_time(None).is_some());
        assert!(cpu_time(Some(std::process::id())).is_some());
    }
}
