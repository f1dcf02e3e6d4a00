//! `--local`: a fresh cluster of `--nodes` raft-kv nodes or etcd members
//! (3 by default), as child processes on free loopback ports with their data
//! in a scratch directory. The bench owns the processes, so the failover
//! workload can `kill -9` the leader and start it again on the same data, and
//! it can read each member's resident memory, data dir and log
//! ([`LocalCluster::footprint`], [`LocalCluster::log_since`]).
//!
//! Every process is killed and reaped when the [`LocalCluster`] is dropped,
//! and on Linux the kernel kills them if the bench itself dies
//! (`PR_SET_PDEATHSIG`, as `raft-kv cluster` does).
//!
//! With `--tls`, raft-kv's nodes use mutual TLS: `raft-kv certs` makes a CA
//! and certificates for the run in the scratch directory (`tls/`), each node
//! gets `--tls-dir` to it, and the bench's clients its client certificate.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use super::stats::{self, Footprint};
use raft_kv::config::Tuning;
use raft_kv::raft::NodeId;
use raft_kv::server::die_with_parent;
use raft_kv::tls::{certs, Holder, Tls, TlsArgs};
use tempfile::TempDir;

/// Members of a local cluster by default: the smallest that survives a
/// crash (§5).
pub const DEFAULT_MEMBERS: usize = 3;
/// The most `--nodes` accepts: more members than that only add CPU load on
/// a small machine.
pub const MAX_MEMBERS: usize = 7;
/// The ports `make cluster` uses stay free for people running it.
const RESERVED_PORTS: std::ops::RangeInclusive<u16> = 7001..=7003;

/// How to start the members.
pub enum Spec {
    RaftKv {
        exe: PathBuf,
        tuning: Tuning,
        /// Mutual TLS between the nodes, and with the bench's clients.
        tls: bool,
    },
    Etcd {
        exe: PathBuf,
        extra_flags: Vec<String>,
    },
}

pub struct LocalCluster {
    /// Removed when dropped, unless `keep_files` says otherwise.
    dir: TempDir,
    members: Vec<Member>,
    /// The clients' TLS, when the members use it.
    client_tls: Option<Tls>,
}

struct Member {
    name: String,
    client_addr: String,
    data_dir: PathBuf,
    program: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
}

impl LocalCluster {
    /// Start `n` members; they elect a leader on their own.
    pub fn start(spec: &Spec, n: usize) -> Result<LocalCluster, String> {
        let dir = scratch_dir().map_err(|e| format!("cannot make a scratch directory: {e}"))?;
        let mut client_tls = None;
        let members = match spec {
            Spec::RaftKv { exe, tuning, tls } => {
                let tls_dir = if *tls {
                    let (tls_dir, tls) = make_certificates(dir.path(), n)?;
                    client_tls = Some(tls);
                    Some(tls_dir)
                } else {
                    None
                };
                raft_kv_members(exe, tuning, dir.path(), n, tls_dir.as_deref())?
            }
            Spec::Etcd { exe, extra_flags } => etcd_members(exe, extra_flags, dir.path(), n)?,
        };
        let mut cluster = LocalCluster {
            dir,
            members,
            client_tls,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    /// The TLS the bench's clients need, if the members use it.
    pub fn client_tls(&self) -> Option<&Tls> {
        self.client_tls.as_ref()
    }

    pub fn client_addrs(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_addr.clone()).collect()
    }

    /// The process ids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    /// `kill -9` member `i` and reap it: no shutdown code runs, as in a crash.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -TERM` member `i` and reap it: a planned stop, in which a
    /// leader hands its leadership over first.
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            // SAFETY: a plain kill(2) of our own child.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// Start member `i` again on its data.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.kill(i);
        self.spawn(i)
    }

    pub fn member_name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// An error naming the first member that exited without being killed,
    /// with the end of its log.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for member in &mut self.members {
            let Some(child) = &mut member.child else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                member.child = None;
                return Err(format!(
                    "{} exited unexpectedly ({status}); the end of its log {}:\n{}",
                    member.name,
                    member.log.display(),
                    tail(&member.log)
                ));
            }
        }
        Ok(())
    }

    /// What to look at to measure each member while a workload runs; plain
    /// data, so a sampler can use it without the cluster.
    pub fn probes(&self) -> Vec<Probe> {
        self.members
            .iter()
            .map(|m| Probe {
                pid: m.child.as_ref().map(Child::id),
                data_dir: m.data_dir.clone(),
            })
            .collect()
    }

    /// Each member's resident memory and data dir, now.
    pub fn footprint(&self) -> Vec<Footprint> {
        self.probes().iter().map(Probe::measure).collect()
    }

    /// The length of each member's log file now, to read what it logs from
    /// here on with [`LocalCluster::logs_since`].
    pub fn log_lengths(&self) -> Vec<u64> {
        self.members
            .iter()
            .map(|m| stats::file_bytes(&m.log).unwrap_or(0))
            .collect()
    }

    /// Each member's name and what it logged after `lengths` (from
    /// [`LocalCluster::log_lengths`]).
    pub fn logs_since(&self, lengths: &[u64]) -> Vec<(String, String)> {
        self.members
            .iter()
            .zip(lengths)
            .map(|(m, &from)| {
                let text = read_from(&m.log, from).unwrap_or_default();
                (m.name.clone(), text)
            })
            .collect()
    }

    /// Leave the scratch directory (data and logs) in place when dropped.
    pub fn keep_files(&mut self) -> &Path {
        self.dir.disable_cleanup(true);
        self.dir.path()
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let member = &mut self.members[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .map_err(|e| format!("cannot open {}: {e}", member.log.display()))?;
        let mut command = Command::new(&member.program);
        command
            .args(&member.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", member.program.display()))?;
        member.child = Some(child);
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// What `raft-kv certs --out DIR/tls --nodes 1,...,n` writes: a CA and
/// certificates for nodes 1 to `n` on loopback, and a client's; returns the
/// directory and the client's TLS.
fn make_certificates(dir: &Path, n: usize) -> Result<(PathBuf, Tls), String> {
    let tls_dir = dir.join("tls");
    let ids: Vec<NodeId> = (1..=n as NodeId).collect();
    certs::write(&tls_dir, &certs::local_nodes(&ids), false)?;
    let files = TlsArgs {
        tls_dir: Some(tls_dir.clone()),
        ..TlsArgs::default()
    };
    let tls = files
        .load(Holder::Client)?
        .ok_or("no client certificate was written")?;
    Ok((tls_dir, tls))
}

/// raft-kv nodes 1 to `n`, with `--tls-dir tls_dir` if given.
fn raft_kv_members(
    exe: &Path,
    tuning: &Tuning,
    dir: &Path,
    n: usize,
    tls_dir: Option<&Path>,
) -> Result<Vec<Member>, String> {
    tuning.check().map_err(|e| e.to_string())?;
    let addrs: Vec<String> = free_ports(n)?
        .into_iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| format!("{}={addr}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    Ok(addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let id = i + 1;
            let data_dir = dir.join(format!("node{id}"));
            let mut args: Vec<OsString> = vec![
                "node".into(),
                "--id".into(),
                id.to_string().into(),
                "--peers".into(),
                peers.clone().into(),
                "--data-dir".into(),
                data_dir.clone().into(),
            ];
            args.extend(tuning.to_flags().into_iter().map(OsString::from));
            if let Some(tls_dir) = tls_dir {
                args.push("--tls-dir".into());
                args.push(tls_dir.into());
            }
            Member {
                name: format!("node {id}"),
                client_addr: addr.clone(),
                data_dir,
                program: exe.to_path_buf(),
                args,
                log: dir.join(format!("node{id}.log")),
                child: None,
            }
        })
        .collect())
}

/// etcd members with etcd's defaults (fsync on, heartbeat 100 ms, election
/// 1000 ms) except the addresses, plus `extra_flags`.
fn etcd_members(
    exe: &Path,
    extra_flags: &[String],
    dir: &Path,
    n: usize,
) -> Result<Vec<Member>, String> {
    let ports = free_ports(2 * n)?;
    let (client_ports, peer_ports) = ports.split_at(n);
    let peer_url = |i: usize| format!("http://127.0.0.1:{}", peer_ports[i]);
    let initial_cluster = (0..n)
        .map(|i| format!("m{}={}", i + 1, peer_url(i)))
        .collect::<Vec<_>>()
        .join(",");
    // A token of its own keeps members of an earlier run from joining.
    let token = format!("raft-kv-bench-{}-{}", std::process::id(), nanos_now());
    Ok((0..n)
        .map(|i| {
            let name = format!("m{}", i + 1);
            let data_dir = dir.join(&name);
            let client_url = format!("http://127.0.0.1:{}", client_ports[i]);
            let mut args: Vec<OsString> = [
                "--name",
                &name,
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url(i),
                "--initial-advertise-peer-urls",
                &peer_url(i),
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-token",
                &token,
                "--initial-cluster-state",
                "new",
            ]
            .into_iter()
            .map(OsString::from)
            .collect();
            args.push("--data-dir".into());
            args.push(data_dir.clone().into());
            args.extend(extra_flags.iter().map(OsString::from));
            Member {
                name: format!("etcd {name}"),
                client_addr: format!("127.0.0.1:{}", client_ports[i]),
                data_dir,
                program: exe.to_path_buf(),
                args,
                log: dir.join(format!("{name}.log")),
                child: None,
            }
        })
        .collect())
}

/// `n` distinct loopback ports that were free a moment ago, none of 7001-7003.
/// All are held at once so the OS cannot hand out the same one twice.
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| format!("cannot find a free loopback port: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        if !RESERVED_PORTS.contains(&port) {
            ports.push(port);
        }
        held.push(listener);
    }
    Ok(ports)
}

/// The run's data and logs, under the system's temporary directory.
fn scratch_dir() -> io::Result<TempDir> {
    TempDir::with_prefix("raft-kv-bench-")
}

fn nanos_now() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A member's process and data dir, to measure it.
#[derive(Clone, Debug)]
pub struct Probe {
    /// `None` while the member is not running.
    pub pid: Option<u32>,
    pub data_dir: PathBuf,
}

impl Probe {
    pub fn measure(&self) -> Footprint {
        Footprint {
            rss_bytes: self.pid.and_then(|pid| stats::rss_bytes(Some(pid))),
            data_bytes: stats::dir_disk_bytes(&self.data_dir),
            // raft-kv's files (docs/storage.md); etcd has neither.
            log_bytes: stats::log_disk_bytes(&self.data_dir),
            snapshot_bytes: stats::disk_bytes(&self.data_dir.join("snapshot")),
        }
    }
}

/// A file's contents from byte `from` on.
fn read_from(path: &Path, from: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The last 2 KiB of a log file, for an error message.
fn tail(path: &Path) -> String {
    const TAIL: u64 = 2048;
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let length = file.metadata()?.len();
        file.seek(SeekFrom::Start(length.saturating_sub(TAIL)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|e| format!("(cannot read it: {e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_not_reserved() {
        let ports = free_ports(6).unwrap();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 6);
        assert!(ports.iter().all(|p| !RESERVED_PORTS.contains(p)));
    }

    #[test]
    fn tls_nodes_get_the_certificates_of_the_run() {
        let dir = scratch_dir().unwrap();
        let (tls_dir, _client) = make_certificates(dir.path(), 3).unwrap();
        assert_eq!(tls_dir, dir.path().join("tls"));
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            tuning: Tuning,
        }
        let tuning = <Flags as clap::Parser>::parse_from(["bench"]).tuning;
        let members = raft_kv_members(Path::new("raft-kv"), &tuning, dir.path(), 3, Some(&tls_dir));
        for (i, member) in members.unwrap().iter().enumerate() {
            let at = member.args.iter().position(|a| a == "--tls-dir").unwrap();
            assert_eq!(member.args[at + 1], tls_dir.as_os_str());
            // Each node finds its own certificate there.
            let files = TlsArgs {
                tls_dir: Some(tls_dir.clone()),
                ..TlsArgs::default()
            };
            assert!(files.load(Holder::Node(i as NodeId + 1)).is_ok());
        }
        let plain = raft_kv_members(Path::new("raft-kv"), &tuning, dir.path(), 1, None).unwrap();
        assert!(!plain[0].args.iter().any(|a| a == "--tls-dir"));
    }

    #[test]
    fn etcd_members_share_one_initial_cluster_and_own_their_ports() {
        let dir = Path::new("/nonexistent");
        let members = etcd_members(Path::new("etcd"), &["--x".into()], dir, 5).unwrap();
        assert_eq!(members.len(), 5);
        let flag = |m: &Member, name: &str| {
            let at = m.args.iter().position(|a| a == name).unwrap();
            m.args[at + 1].to_string_lossy().into_owned()
        };
        let cluster = flag(&members[0], "--initial-cluster");
        for (i, m) in members.iter().enumerate() {
            assert_eq!(flag(m, "--initial-cluster"), cluster);
            assert_eq!(flag(m, "--name"), format!("m{}", i + 1));
            let peer = flag(m, "--listen-peer-urls");
            assert!(cluster.contains(&format!("m{}={peer}", i + 1)));
            assert_eq!(
                flag(m, "--advertise-client-urls"),
                format!("http://{}", m.client_addr)
            );
            assert_eq!(m.args.last().unwrap(), "--x");
        }
    }
}
