//! Scripted scenarios to step through in a debugger (docs/debugging.md),
//! one per course milestone, each needing only the milestones up to its own:
//!
//! 1. `walkthrough_1_election`: a leader is elected (§5.2);
//! 2. `walkthrough_2_replication`: then one `Set` is committed (§5.3);
//! 3. `walkthrough_3_persistence`: then the leader crashes, another is
//!    elected, and the old one recovers from its disk (Figure 2).
//!
//! Each is deterministic — the same seed, the same messages, in the same
//! order — so a breakpoint in `handle_request_vote` or `advance_commit_index`
//! is reached the same way every run. Each writes its trace and HTML
//! timeline to `target/sim-traces/walkthrough_N_NAME-seed1.*`.
//!
//!     cargo test --test walkthrough -- --nocapture
//!     rust-gdb --args target/debug/deps/walkthrough-<hash> walkthrough_1_election --nocapture

use raft_kv::kv::{ClientRequest, ClientResponse};
use raft_kv::raft::NodeId;
use raft_kv::sim::{Cluster, SimConfig};

/// Step 1: elect a leader, and let its first heartbeat tell the others.
fn election(c: &mut Cluster) -> NodeId {
    c.note("1. election (§5.2): wait for a follower's timeout to elapse");
    let leader = c.elect(100);
    let term = c.node(leader).current_term();
    println!("n{leader} is leader of term {term}");
    c.ticks(10);
    for id in c.ids() {
        assert_eq!(c.node(id).current_term(), term);
        assert_eq!(c.node(id).leader_id(), Some(leader));
    }
    leader
}

/// Step 2: one Set through the leader, committed and applied everywhere.
fn replication(c: &mut Cluster, leader: NodeId) {
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
}

/// Step 3: crash the leader; a new one is elected; the old one restarts
/// from its disk and follows.
fn persistence(c: &mut Cluster, leader: NodeId) {
    let term = c.node(leader).current_term();
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
}

/// Print the run and where its trace and timeline are.
fn show(c: &Cluster, name: &str) {
    let path = c.write_trace(name);
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

#[test]
fn walkthrough_1_election() {
    let mut c = Cluster::new(SimConfig::new(3, 1));
    election(&mut c);
    show(&c, "walkthrough_1_election");
}

#[test]
fn walkthrough_2_replication() {
    let mut c = Cluster::new(SimConfig::new(3, 1));
    let leader = election(&mut c);
    replication(&mut c, leader);
    show(&c, "walkthrough_2_replication");
}

#[test]
fn walkthrough_3_persistence() {
    let mut c = Cluster::new(SimConfig::new(3, 1));
    let leader = election(&mut c);
    replication(&mut c, leader);
    persistence(&mut c, leader);
    show(&c, "walkthrough_3_persistence");
}
