//! The machine's floor, measured in the same run as the workloads: what
//! one replicated write cannot beat on this machine, whatever the code.
//!
//! A write goes client → leader → followers → fsync → leader → client: at
//! least two loopback round trips and one fsync (the followers' fsyncs run
//! beside the leader's, dissertation §10.2.1). So the write floor is
//! `2 × rtt + fsync`, and a workload reported as a multiple of it travels
//! between machines better than milliseconds do. Throughput is set against
//! the empty gRPC calls per second that the same number of concurrent
//! callers reach on this machine, bench and server sharing its cores as
//! they do in a workload.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::stats::median;

/// Round trips and fsyncs timed, after a few to warm up.
const SAMPLES: usize = 300;
const WARM_UP: usize = 20;
/// How long the concurrent callers run.
const CALLS_FOR: Duration = Duration::from_secs(1);
/// The bytes of one write before its fdatasync: a batch of a few small entries.
const WRITE_BYTES: usize = 4096;

/// One measurement of the floor.
#[derive(Clone, Copy, Debug)]
pub struct Floor {
    /// p50 of an empty gRPC call (the health check) on loopback, ms
    pub rtt_ms: f64,
    /// p50 of a 4 KiB append and fdatasync in the data's file system, ms
    pub fsync_ms: f64,
    /// empty gRPC calls per second, from `clients` concurrent callers
    pub calls_per_sec: f64,
    pub clients: usize,
}

impl Floor {
    /// The least one replicated write can take: 2 round trips and an fsync.
    pub fn write_ms(&self) -> f64 {
        2.0 * self.rtt_ms + self.fsync_ms
    }

    /// The median of each number over `floors` (one per run).
    pub fn median_of(floors: &[Floor]) -> Option<Floor> {
        let of = |pick: fn(&Floor) -> f64| median(&floors.iter().map(pick).collect::<Vec<_>>());
        Some(Floor {
            rtt_ms: of(|f| f.rtt_ms)?,
            fsync_ms: of(|f| f.fsync_ms)?,
            calls_per_sec: of(|f| f.calls_per_sec)?,
            clients: floors.first()?.clients,
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "machine floor: empty gRPC round trip p50 {:.3} ms, 4 KiB write + fdatasync p50 {:.3} ms \
             → one replicated write ≥ {:.3} ms (2 round trips + fsync); {} concurrent callers \
             reach {:.0} empty gRPC calls/s",
            self.rtt_ms,
            self.fsync_ms,
            self.write_ms(),
            self.clients,
            self.calls_per_sec
        )
    }
}

/// Measure the floor: the disk in `dir`; the network with empty calls (the
/// gRPC health check) to the server at `addr`, one at a time for the round
/// trip and from `clients` callers for throughput.
pub fn measure(runtime: &Runtime, dir: &Path, addr: &str, clients: usize) -> Result<Floor, String> {
    let fsync_ms =
        fsync_p50(dir).map_err(|e| format!("timing fdatasync in {}: {e}", dir.display()))?;
    let (rtt_ms, calls_per_sec) = runtime.block_on(async {
        let channel = connect(addr).await?;
        let rtt = rtt_p50(channel.clone()).await?;
        let calls = calls_per_sec(channel, clients.max(1)).await;
        Ok::<_, String>((rtt, calls))
    })?;
    Ok(Floor {
        rtt_ms,
        fsync_ms,
        calls_per_sec,
        clients: clients.max(1),
    })
}

/// As the log appends: into space the file already has (set_len ahead, as
/// `FileStorage` grows its segment), so an fdatasync need not write the
/// file's length too.
fn fsync_p50(dir: &Path) -> std::io::Result<f64> {
    let file = tempfile::NamedTempFile::new_in(dir)?;
    let f: &File = file.as_file();
    let block = vec![0x5a_u8; WRITE_BYTES];
    f.set_len(((WARM_UP + SAMPLES) * WRITE_BYTES) as u64)?;
    f.sync_all()?;
    let mut took = Vec::with_capacity(SAMPLES);
    for i in 0..WARM_UP + SAMPLES {
        let started = Instant::now();
        f.write_all_at(&block, (i * WRITE_BYTES) as u64)?;
        f.sync_data()?;
        if i >= WARM_UP {
            took.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(median(&took).unwrap_or(0.0))
}

/// A channel to `addr`, once it answers (the server has just started).
async fn connect(addr: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let channel = endpoint.connect().await;
        match channel {
            Ok(channel) => {
                let mut client = HealthClient::new(channel.clone());
                if check(&mut client).await.is_ok() {
                    return Ok(channel);
                }
            }
            Err(e) if Instant::now() > deadline => {
                return Err(format!("connecting to {addr}: {e}"))
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            return Err(format!("{addr} does not answer health checks"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn check(client: &mut HealthClient<Channel>) -> Result<(), String> {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    client
        .check(request)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn rtt_p50(channel: Channel) -> Result<f64, String> {
    let mut client = HealthClient::new(channel);
    let mut took = Vec::with_capacity(SAMPLES);
    for i in 0..WARM_UP + SAMPLES {
        let started = Instant::now();
        check(&mut client).await?;
        if i >= WARM_UP {
            took.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(median(&took).unwrap_or(0.0))
}

/// `clients` tasks calling in a loop for [`CALLS_FOR`], sharing one
/// connection as the bench's clients do.
async fn calls_per_sec(channel: Channel, clients: usize) -> f64 {
    let deadline = Instant::now() + CALLS_FOR;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let mut client = HealthClient::new(channel.clone());
            tokio::spawn(async move {
                let mut calls = 0u64;
                while Instant::now() < deadline && check(&mut client).await.is_ok() {
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let mut calls = 0;
    for task in tasks {
        calls += task.await.unwrap_or(0);
    }
    calls as f64 / started.elapsed().as_secs_f64()
}
