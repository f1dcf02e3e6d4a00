//! docs/debugging.md's rust-gdb session, run in batch mode on the debug
//! build of the walkthrough, so that what the page tells a student to type
//! keeps doing what the page says. Skipped, saying so, where rust-gdb or
//! gdb is missing.

use std::process::Command;

/// The debug build of tests/walkthrough.rs, built as docs/debugging.md does.
fn walkthrough_binary() -> String {
    let output = Command::new(env!("CARGO"))
        .args(["test", "--test", "walkthrough", "--no-run"])
        .args(["--message-format", "json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo");
    assert!(output.status.success(), "building the walkthrough failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains(r#""name":"walkthrough""#) && l.contains(r#""executable":"/"#))
        .expect("cargo names the walkthrough's test binary");
    let start = line.find(r#""executable":""#).unwrap() + r#""executable":""#.len();
    line[start..].split('"').next().unwrap().to_string()
}

/// Run rust-gdb in batch mode with `commands` on the walkthrough; None if
/// there is no rust-gdb or gdb.
fn gdb(commands: &[&str]) -> Option<String> {
    let found = |program: &str| Command::new(program).arg("--version").output().is_ok();
    if !found("rust-gdb") || !found("gdb") {
        return None;
    }
    let binary = walkthrough_binary();
    let mut gdb = Command::new("rust-gdb");
    gdb.args(["-batch", "-nx"]);
    for command in commands {
        gdb.args(["-ex", command]);
    }
    gdb.arg(binary);
    let output = gdb.output().expect("run rust-gdb");
    Some(
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// The line of `file` (from the repository root) holding `marker`, after
/// the line holding `after`: where docs/debugging.md says to break.
fn line_of(file: &str, after: &str, marker: &str) -> usize {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join(file)).unwrap();
    let start = source
        .lines()
        .position(|l| l.contains(after))
        .unwrap_or_else(|| panic!("{file} has no {after:?}"));
    let offset = source
        .lines()
        .skip(start)
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("{file} has no {marker:?} after {after:?}"));
    start + offset + 1
}

#[test]
fn the_documented_gdb_session_stops_where_the_page_says() {
    let vote = line_of(
        "src/raft/request_vote.rs",
        "pub fn handle_request_vote(",
        "pub fn handle_request_vote(",
    );
    let commit = line_of(
        "src/raft/append_entries.rs",
        "fn handle_append_entries_reply(",
        "self.advance_commit_index();",
    );
    let break_vote = format!("break src/raft/request_vote.rs:{vote}");
    let break_commit = format!("break src/raft/append_entries.rs:{commit}");
    let Some(out) = gdb(&[
        &break_vote,
        "run walkthrough_1_election --nocapture --test-threads 1",
        "bt 3",
        "print request",
        "print self.persistent.current_term",
        "print self.persistent.voted_for",
        "delete",
        &break_commit,
        "run walkthrough_2_replication --nocapture --test-threads 1",
        "bt 2",
        "step",
        "next 5",
        "print leader.match_index",
        "print n",
        "kill",
    ]) else {
        eprintln!("skipped: rust-gdb or gdb is not installed, so docs/debugging.md's session is not checked here");
        return;
    };
    let expect = |text: &str| {
        assert!(
            out.contains(text),
            "docs/debugging.md promises {text:?}; rust-gdb printed:\n{out}"
        );
    };
    expect("hit Breakpoint 1, raft_kv::raft::state::RaftNode<raft_kv::kv::KvStore>::handle_request_vote");
    expect("src/raft/request_vote.rs");
    expect("raft_kv::raft::state::RaftNode<raft_kv::kv::KvStore>::step");
    expect("RequestVote {term: 1, candidate_id: 2, last_log_index: 0, last_log_term: 0, leadership_transfer: false}");
    expect("$2 = 1");
    expect("$3 = core::option::Option<u64>::None");
    expect("hit Breakpoint 2, raft_kv::raft::state::RaftNode<raft_kv::kv::KvStore>::handle_append_entries_reply");
    expect("raft_kv::raft::state::RaftNode<raft_kv::kv::KvStore>::advance_commit_index");
    expect("$4 = BTreeMap(size=2) = {[1] = 1, [3] = 0}");
    expect("$5 = 1");
}
