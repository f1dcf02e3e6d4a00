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

#[test]
fn the_documented_gdb_session_stops_where_the_page_says() {
    let Some(out) = gdb(&[
        "break raft_kv::raft::state::RaftNode::handle_request_vote",
        "run walkthrough_1_election --nocapture --test-threads 1",
        "bt 3",
        "print request",
        "print self.current_term",
        "print self.voted_for",
        "delete",
        "break raft_kv::raft::state::RaftNode::advance_commit_index",
        "run walkthrough_2_replication --nocapture --test-threads 1",
        "continue",
        "bt 2",
        "next 6",
        "print matched",
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
    expect("hit Breakpoint 1, raft_kv::raft::state::RaftNode::handle_request_vote");
    expect("src/raft/request_vote.rs");
    expect("raft_kv::raft::state::RaftNode::step");
    expect("step_batch");
    expect("RequestVote {term: 1, candidate_id: 2, last_log_index: 0, last_log_term: 0}");
    expect("$2 = 1");
    expect("$3 = core::option::Option<u64>::None");
    expect("hit Breakpoint 2, raft_kv::raft::state::RaftNode::advance_commit_index");
    expect("raft_kv::raft::state::RaftNode::handle_append_entries_reply");
    expect("$4 = Vec(size=3) = {1, 1, 0}");
    expect("$5 = 1");
}
