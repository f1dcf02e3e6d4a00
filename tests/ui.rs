//! `make test-ui`: the page `raft-kv cluster` serves, in a real browser.
//! A cluster starts on free loopback ports; headless Chromium opens its
//! page and presses its buttons as a person would: it waits for a leader,
//! kills it and sees a new leader of a higher term, restarts it, writes
//! from the page and sees the value on every node, pauses and resumes a
//! node, partitions the leader away and heals. Screenshots go to
//! `target/ui-screenshots/`.
//!
//! The browser is driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: JSON messages ended by a NUL byte on fds 3
//! and 4), so no driver crate or websocket is needed. The test is ignored
//! by `make test` (which must not need a browser); `make test-ui` runs it.
//! Without Chromium it says so and passes.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, free_ports, BIN};
use serde_json::{json, Value};

/// Where Chromium is looked for (`CHROMIUM` names another).
const CHROMIUM: [&str; 2] = ["/usr/bin/chromium", "/usr/bin/chromium-browser"];

fn chromium() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    CHROMIUM.iter().map(PathBuf::from).find(|p| p.exists())
}

/// `raft-kv cluster` with its page, stopped with `quit` when dropped.
struct LiveCluster {
    child: Child,
    stdin: Option<ChildStdin>,
    url: String,
    output: PathBuf,
}

impl LiveCluster {
    fn start(dir: &Path) -> LiveCluster {
        let ports = free_ports(4);
        assert!(ports.iter().all(|p| !(7000..=7003).contains(p)));
        let peers: Vec<String> = (1..=3)
            .map(|i| format!("{i}=127.0.0.1:{}", ports[i]))
            .collect();
        let output = dir.join("cluster.out");
        let log = File::create(&output).unwrap();
        let mut child = Command::new(BIN)
            .args(["cluster", "--peers", &peers.join(",")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--web-addr", &format!("127.0.0.1:{}", ports[0])])
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start raft-kv cluster");
        let stdin = child.stdin.take();
        LiveCluster {
            child,
            stdin,
            url: format!("http://127.0.0.1:{}/", ports[0]),
            output,
        }
    }
}

impl Drop for LiveCluster {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"quit\n");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let out = std::fs::read_to_string(&self.output).unwrap_or_default();
            let tail: Vec<&str> = out.lines().rev().take(40).collect();
            eprintln!("---- the cluster's last lines ----");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Headless Chromium on a DevTools pipe, with one page attached.
struct Browser {
    child: Child,
    commands: std::io::PipeWriter,
    answers: BufReader<std::io::PipeReader>,
    next_id: u64,
    session: String,
}

impl Browser {
    fn launch(chromium: &Path, profile: &Path) -> Browser {
        let (commands_in, commands) = std::io::pipe().unwrap();
        let (answers, answers_out) = std::io::pipe().unwrap();
        let (read_fd, write_fd) = (commands_in.as_raw_fd(), answers_out.as_raw_fd());
        let mut command = Command::new(chromium);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1400,950",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so its helpers go when it is killed.
            .process_group(0);
        // SAFETY: between fork and exec, only fcntl and dup2.
        unsafe {
            command.pre_exec(move || {
                // Out of the way of 3 and 4 first: either may be one of them.
                let (r, w) = (
                    libc::fcntl(read_fd, libc::F_DUPFD, 10),
                    libc::fcntl(write_fd, libc::F_DUPFD, 10),
                );
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium");
        drop((commands_in, answers_out));
        Browser {
            child,
            commands,
            answers: BufReader::new(answers),
            next_id: 0,
            session: String::new(),
        }
    }

    /// Send one command and wait for its answer, skipping events.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.commands.write_all(&bytes).expect("write to chromium");
        loop {
            let mut answer = Vec::new();
            let n = self
                .answers
                .read_until(0, &mut answer)
                .expect("read chromium");
            assert!(n > 0, "chromium closed its DevTools pipe");
            answer.pop();
            let answer: Value = serde_json::from_slice(&answer).expect("DevTools JSON");
            if answer["id"] == json!(id) {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({"url": url}));
        let attached = self.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        self.session = attached["sessionId"].as_str().unwrap().to_string();
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    fn screenshot(&mut self, name: &str) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = base64(shot["data"].as_str().unwrap());
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its helper processes share its process group, which we made.
        if let Ok(pgid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) of our own child's group; no memory effects.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// Standard base64, as Page.captureScreenshot returns a PNG.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut bytes = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &d)| n | u32::from(d) << (18 - 6 * i));
        bytes.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    bytes
}

/// What the page shows of one node.
#[derive(Debug, Clone)]
struct Panel {
    id: u64,
    role: String,
    term: u64,
    process: String,
    read: String,
}

fn panels(browser: &mut Browser) -> Vec<Panel> {
    let shown = browser.eval(
        "JSON.stringify([...document.querySelectorAll('section.node')].map(s => \
         [+s.dataset.id, s.dataset.role, +s.dataset.term, s.dataset.process, s.dataset.read]))",
    );
    let rows: Vec<(u64, String, u64, String, String)> =
        serde_json::from_str(shown.as_str().unwrap_or("[]")).unwrap_or_default();
    rows.into_iter()
        .map(|(id, role, term, process, read)| Panel {
            id,
            role,
            term,
            process,
            read,
        })
        .collect()
}

/// The one node the page shows leading, in the newest term shown.
fn leader(panels: &[Panel]) -> Option<&Panel> {
    let newest = panels.iter().map(|p| p.term).max()?;
    let leaders: Vec<&Panel> = panels
        .iter()
        .filter(|p| p.role == "leader" && p.term == newest && p.process == "running")
        .collect();
    (leaders.len() == 1).then(|| leaders[0])
}

fn click(browser: &mut Browser, node: u64, act: &str) {
    browser.eval(&format!(
        "document.querySelector('#node-{node} button[data-act={act}]').click()"
    ));
}

fn process_of(browser: &mut Browser, node: u64, process: &str) {
    eventually(&format!("node {node} to show as {process}"), || {
        panels(browser)
            .iter()
            .any(|p| p.id == node && p.process == process)
            .then_some(())
    });
}

#[test]
#[ignore = "needs Chromium: run by make test-ui"]
fn the_page_shows_an_election_a_write_and_a_partition() {
    let Some(chromium) = chromium() else {
        println!(
            "skipping: no Chromium at {CHROMIUM:?} (apt-get install chromium, or set CHROMIUM)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cluster = LiveCluster::start(dir.path());
    let mut browser = Browser::launch(&chromium, &dir.path().join("profile"));
    // The page is served once the cluster has bound its port.
    eventually("the page to be served", || {
        std::net::TcpStream::connect(
            cluster
                .url
                .trim_start_matches("http://")
                .trim_end_matches('/'),
        )
        .ok()
    });
    browser.open(&cluster.url);
    let first = eventually("a leader on the page", || {
        leader(&panels(&mut browser)).cloned()
    });
    browser.screenshot("1-leader");

    click(&mut browser, first.id, "kill");
    process_of(&mut browser, first.id, "exited");
    let second = eventually("a new leader of a higher term", || {
        leader(&panels(&mut browser))
            .filter(|p| p.id != first.id && p.term > first.term)
            .cloned()
    });
    browser.screenshot("2-new-leader");

    click(&mut browser, first.id, "restart");
    process_of(&mut browser, first.id, "running");
    browser.eval(
        "document.getElementById('write-key').value = 'ui-test'; \
         document.getElementById('write-value').value = 'seen-everywhere'; \
         document.querySelector('button[data-act=write]').click()",
    );
    eventually("the write on every node", || {
        let shown = panels(&mut browser);
        (shown.len() == 3 && shown.iter().all(|p| p.read == "seen-everywhere")).then_some(())
    });
    browser.screenshot("3-written");

    pause_and_resume(&mut browser, second.id);
    partition_and_heal(&mut browser);
}

/// Pause a follower with SIGSTOP from the page, and resume it.
fn pause_and_resume(browser: &mut Browser, leader: u64) {
    let follower = if leader == 1 { 2 } else { 1 };
    click(browser, follower, "pause");
    process_of(browser, follower, "paused");
    click(browser, follower, "resume");
    process_of(browser, follower, "running");
}

/// Cut the leader off: the others elect a new one; heal: one leader again.
fn partition_and_heal(browser: &mut Browser) {
    let cut = eventually("a leader", || leader(&panels(browser)).cloned());
    click(browser, cut.id, "partition");
    let other = eventually("a leader on the other side of the partition", || {
        panels(browser)
            .into_iter()
            .find(|p| p.id != cut.id && p.role == "leader" && p.term > cut.term)
    });
    browser.screenshot("4-partitioned");
    browser.eval("document.querySelector('button[data-act=heal]').click()");
    eventually("the old leader to step down after the heal", || {
        let shown = panels(browser);
        let old = shown.iter().find(|p| p.id == cut.id)?;
        (old.role == "follower" && old.term >= other.term).then_some(())
    });
    browser.screenshot("5-healed");
}
