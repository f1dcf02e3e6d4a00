//! Latency percentiles, medians across runs, CPU time and resident memory
//! from /proc, the size of a data dir, and the timestamps of the nodes' logs.

use std::path::Path;
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
// Two fields of one /proc file: the procfs crate would be a larger
// dependency than this parser, and libc does not read /proc.
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

/// One member's memory and disk at one moment. Disk is what the files
/// take on disk (allocated blocks, as `du` counts), not their lengths: the
/// space raft-kv's `log` is grown ahead into is a hole until written.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Footprint {
    /// VmRSS, bytes; `None` when the member is not running.
    pub rss_bytes: Option<u64>,
    /// Every file in its data dir.
    pub data_bytes: u64,
    /// raft-kv's `log` and `snapshot` files; `None` when not there (etcd).
    pub log_bytes: Option<u64>,
    pub snapshot_bytes: Option<u64>,
}

/// Resident memory (VmRSS) of process `pid`, or of this process when `pid` is
/// `None`, in bytes; `None` where /proc is not there or the process is gone.
pub fn rss_bytes(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    parse_vm_rss(&std::fs::read_to_string(path).ok()?)
}

/// The `VmRSS:` line of proc(5)'s status file, which the kernel gives in
/// kibibytes ("kB"), in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => Some(kib * 1024),
        _ => None,
    }
}

/// The bytes a data dir takes on disk: every file's allocated blocks, in
/// every subdirectory (etcd keeps its WAL and snapshots in some), as `du`
/// counts them. Files that vanish while it looks (a snapshot being
/// replaced) count as empty; a missing dir is 0.
pub fn dir_disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_disk_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| allocated(&m)),
            Err(_) => 0,
        })
        .sum()
}

/// What a file takes on disk (its allocated blocks), `None` if it is not there.
pub fn disk_bytes(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| allocated(&m))
}

/// What the log's segments (`log-<first index>`, docs/storage.md) take on
/// disk together; `None` if there are none.
pub fn log_disk_bytes(data_dir: &Path) -> Option<u64> {
    let segments: Vec<u64> = std::fs::read_dir(data_dir)
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("log-"))
        .filter_map(|entry| entry.metadata().ok())
        .map(|metadata| allocated(&metadata))
        .collect();
    (!segments.is_empty()).then(|| segments.iter().sum())
}

#[cfg(unix)]
fn allocated(metadata: &std::fs::Metadata) -> u64 {
    // st_blocks counts 512-byte units whatever the file system's block size.
    std::os::unix::fs::MetadataExt::blocks(metadata) * 512
}

#[cfg(not(unix))]
fn allocated(metadata: &std::fs::Metadata) -> u64 {
    metadata.len()
}

/// The length of a file, `None` if it is not there.
pub fn file_bytes(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp as the nodes' logs
/// start their lines (`2024-05-01T12:00:00.123456789Z`, or with an offset
/// such as `+02:00` instead of `Z`); `None` if `text` does not start with one.
pub fn parse_rfc3339(text: &str) -> Option<f64> {
    use time::format_description::well_known::Rfc3339;
    let stamp = text.split_whitespace().next()?;
    let at = time::OffsetDateTime::parse(stamp, &Rfc3339).ok()?;
    Some(at.unix_timestamp() as f64 + f64::from(at.nanosecond()) / 1e9)
}

#[cfg(target_os = "linux")]
fn clock_ticks_per_second() -> Option<f64> {
    // SAFETY: sysconf only reads a constant of the C library.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
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
    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\traft-kv\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t7\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("VmRSS:\t0 kB"), Some(0));
        // A kernel thread has no VmRSS line; an unknown unit is not guessed.
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tmany kB\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_resident_size() {
        assert!(rss_bytes(None).is_some_and(|b| b > 0));
        assert_eq!(rss_bytes(Some(u32::MAX)), None);
    }

    #[test]
    fn disk_bytes_count_what_is_written_in_every_file_below() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(dir_disk_bytes(dir.path()), 0);
        // Written data takes its blocks; a file grown with set_len is a hole
        // beyond them, as raft-kv's log grown ahead is.
        let log = dir.path().join("log");
        std::fs::write(&log, [1u8; 64 << 10]).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        assert_eq!(file_bytes(&log), Some(16 << 20));
        let on_disk = disk_bytes(&log).unwrap();
        assert!((64 << 10..1 << 20).contains(&on_disk), "{on_disk}");
        std::fs::create_dir_all(dir.path().join("member/wal")).unwrap();
        std::fs::write(dir.path().join("member/wal/0.wal"), [1u8; 256 << 10]).unwrap();
        let wal = disk_bytes(&dir.path().join("member/wal/0.wal")).unwrap();
        assert!(wal >= 256 << 10, "{wal}");
        assert_eq!(dir_disk_bytes(dir.path()), on_disk + wal);
        assert_eq!(disk_bytes(&dir.path().join("snapshot")), None);
        assert_eq!(file_bytes(&dir.path().join("snapshot")), None);
        assert_eq!(dir_disk_bytes(&dir.path().join("nonexistent")), 0);
    }

    #[test]
    fn rfc3339_timestamps_of_the_log_lines() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800.0));
        // Leap day, and the line's text after the stamp is ignored.
        assert_eq!(
            parse_rfc3339("2024-02-29T23:59:59.5Z [INFO] node 1 term 2: ..."),
            Some(1_709_251_199.5)
        );
        let t = parse_rfc3339("2026-11-26T23:47:01.215831506Z").unwrap();
        assert!((t - 1_795_736_821.215_831_5).abs() < 1e-5, "{t}");
        assert_eq!(
            parse_rfc3339("1970-01-01T02:00:00+02:00"),
            parse_rfc3339("1970-01-01T00:00:00Z")
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-1.0));
        for bad in [
            "",
            "[INFO] 2024-02-29T23:59:59Z",
            "2024-02-29 23:59",
            "2024-13-01T00:00:00Z",
            "2024-02-29T24:00:00Z",
            "2024-02-29T23:59:59",
            "2024-02-29T23:59:59.Z",
            "2024-02-29T23:59:59+0200",
            "2024-0a-29T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }
}
