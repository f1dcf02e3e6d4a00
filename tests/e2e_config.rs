//! `raft-kv node --config FILE` (docs/api.md, "Running a node"): a node
//! started from a TOML file alone serves clients; a flag wins over the
//! file; an unknown key, a bad value and the old member-list format are
//! refused with one line that names the file's line, and exit 2.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{cli, eventually, free_ports, stderr, stdout};

/// A node process, killed when dropped, even when the test panics.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str]) -> Node {
    Node(
        Command::new(common::BIN)
            .arg("node")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run raft-kv node"),
    )
}

/// A one-member cluster on `port`, its data in `data_dir`.
fn one_node_file(port: u16, data_dir: &Path) -> String {
    format!(
        "# a cluster of one\nid = 1\ndata-dir = \"{}\"\nheartbeat-ms = 20\nelection-timeout-ms = \"100-200\"\nlog-level = \"warn\"\n\n[members]\n1 = \"127.0.0.1:{port}\"\n",
        data_dir.display()
    )
}

/// `raft-kv set` then `get` through the node at `addr`.
fn set_and_get(addr: &str) {
    let out = cli(&[
        "set",
        "k",
        "from a file",
        "--cluster",
        addr,
        "--timeout",
        "30s",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = cli(&["get", "k", "--cluster", addr, "--timeout", "30s"]);
    assert_eq!(stdout(&out), "from a file\n", "{}", stderr(&out));
}

#[test]
fn a_node_runs_from_a_config_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let data_dir = dir.path().join("node1");
    let file = dir.path().join("node1.toml");
    std::fs::write(&file, one_node_file(port, &data_dir)).unwrap();
    let _node = start(&["--config", file.to_str().unwrap()]);
    set_and_get(&format!("127.0.0.1:{port}"));
    assert!(data_dir.join("cluster").exists());
}

#[test]
fn a_flag_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let in_file = dir.path().join("in-file");
    let flag = dir.path().join("flag");
    let file = dir.path().join("node1.toml");
    std::fs::write(&file, one_node_file(port, &in_file)).unwrap();
    let config = file.to_str().unwrap();
    let _node = start(&["--config", config, "--data-dir", flag.to_str().unwrap()]);
    set_and_get(&format!("127.0.0.1:{port}"));
    eventually("the flag's data dir", || {
        flag.join("cluster").exists().then_some(())
    });
    assert!(!in_file.exists());
}

#[test]
fn bad_files_are_refused_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let port = free_ports(1)[0];
    let good = one_node_file(port, &data_dir);
    let cases = [
        (
            format!("heartbeat = 20\n{good}"),
            " line 1: unknown field `heartbeat`, expected one of `id`, ",
        ),
        (
            good.replace("heartbeat-ms = 20", "heartbeat-ms = \"20\""),
            " line 4: invalid type: string \"20\", expected u64",
        ),
        (
            good.replace("heartbeat-ms = 20", "heartbeat-ms = 150"),
            " line 4: --heartbeat-ms 150 must be less than the minimum election timeout (100 ms)",
        ),
        (
            format!("1 127.0.0.1:{port}\n"),
            " is a member list in the old format (one 'ID HOST:PORT' per line); --config now takes TOML, with any flag of raft-kv node as a key: write the members as members = { 1 = \"127.0.0.1:",
        ),
    ];
    let file = dir.path().join("node.toml");
    let path = file.to_str().unwrap();
    for (text, expected) in cases {
        std::fs::write(&file, &text).unwrap();
        let out = Command::new(common::BIN)
            .args(["node", "--config", path, "--id", "1", "--data-dir"])
            .arg(&data_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let message = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{text}: {message}");
        assert!(
            message.starts_with(&format!("raft-kv: error: {path}{expected}")),
            "{text}: {message}"
        );
        assert_eq!(message.lines().count(), 1, "{message}");
    }
    // Nothing was started, so nothing was written.
    assert!(!data_dir.exists());
}
