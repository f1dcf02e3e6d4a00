//! A scripted scenario to step through in a debugger (docs/debugging.md):
//! elect a leader, replicate one entry, crash the leader and recover. It is
//! deterministic — the same seed, the same messages, in the same order —
//! so a breakpoint in `handle_request_vote` or `advance_commit_index` is
//! reached the same way every run. It also writes the run's trace and HTML
//! timeline to `target/sim-traces/walkthrough-seed1.*`.
//!
//!     cargo test --test walkthrough -- --nocapture
//!     rust-gdb --args target/debug/deps/walkthrough-<hash> --nocapture

use raft_kv::raft::{ClientRequest, ClientResponse};
use raft_kv::sim::{Cluster, SimConfig};

#[test]
fn walkthrough_election_commit_crash_recover() {
    let mut c = Cluster::new(SimConfig::new(3, 1));

    c.note("1. election (§5.2): wait for a follower's timeout to elapse");
    let leader = c.elect(100);
    let term = c.node(leader).current_term();
    println!("n{leader} is leader of term {term}");

    c.note("2. replication and commit (§5.3): one Set through the leader");
    let request = c.request(
        leader,
        ClientRequest::Set {
            key: "greeting".into(),
            value: "hello".into(),
            client_id: 0,
            sequence: 0,
        },
    );
    assert_eq!(c.wait_response(request, 20), Some(Ok(ClientResponse::Set)));
    c.ticks(10); // a heartbeat carries the new commit index to the followers
    for id in c.ids() {
        assert_eq!(c.node(id).state_machine().get("greeting"), Some("hello"));
    }

    c.note("3. crash the leader; the others elect a new one (§5.2)");
    c.crash(leader);
    let new_leader = c.elect(200);
    assert_ne!(new_leader, leader);

    c.note("4. the old leader recovers from its disk (Figure 2) and follows");
    c.restart(leader);
    assert_eq!(
        c.node(leader).current_term(),
        term,
        "term restored from disk"
    );
    c.ticks(30);
    assert_eq!(c.node(leader).leader_id(), Some(new_leader));
    assert_eq!(
        c.node(leader).state_machine().get("greeting"),
        Some("hello")
    );

    let path = c.write_trace("walkthrough");
    println!("trace: {}", path.display());
    println!(
        "timeline: {}",
        path.with_extension("")
            .with_extension("timeline.html")
            .display()
    );
    for line in c.trace() {
        println!("{line}");
    }
}
