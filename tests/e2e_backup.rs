//! Backup and restore against real nodes (docs/api.md, "Backup and
//! restore"): `raft-kv snapshot save` from a running cluster, `snapshot
//! restore` into the data dirs of a new one, and every key read back there.

mod common;

use std::collections::BTreeMap;

use common::{cli, stderr, stdout, Cluster};

/// 300 small keys, and 30 values of 100 KiB so that the snapshot spans
/// several of the stream's 1 MiB messages; one key deleted again.
fn fill(cluster: &Cluster) -> BTreeMap<String, String> {
    let mut client = cluster.client();
    let mut written = BTreeMap::new();
    for i in 0..330 {
        let key = format!("key-{i:03}");
        let value = if i < 300 {
            format!("value {i}")
        } else {
            format!("{i:03}").repeat(100 * 1024 / 3)
        };
        client.set(&key, &value).unwrap();
        written.insert(key, value);
    }
    assert!(client.delete("key-007").unwrap());
    written.remove("key-007");
    written
}

#[test]
fn a_saved_snapshot_restores_into_a_new_cluster_with_every_key() {
    let old = Cluster::start(&[]);
    let written = fill(&old);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.snap");
    let file_arg = file.to_str().unwrap();

    let saved = old.cli(&["snapshot", "save", file_arg]);
    assert!(saved.status.success(), "save: {}", stderr(&saved));
    assert!(stdout(&saved).starts_with("saved "), "{}", stdout(&saved));
    assert!(!dir.path().join("backup.snap.part").exists());
    let status = cli(&["snapshot", "status", file_arg, "-w", "json"]);
    assert!(status.status.success(), "status: {}", stderr(&status));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(summary["keys"], written.len());
    assert!(summary["bytes"].as_u64().unwrap() > 2 << 20, "{summary}");
    drop(old);

    let mut new = Cluster::prepare(&[]);
    for id in new.ids() {
        let data_dir = new.data_dir(id);
        let restored = cli(&[
            "snapshot",
            "restore",
            file_arg,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--id",
            &id.to_string(),
            "--peers",
            &new.peers(),
        ]);
        assert!(restored.status.success(), "restore: {}", stderr(&restored));
    }
    for id in new.ids() {
        new.spawn(id);
    }
    new.wait_for_leader();
    // The new cluster's members are its --peers, at its own addresses: the
    // configuration the snapshot carried (§7) was the old cluster's.
    for id in new.ids() {
        assert_eq!(new.status(id).unwrap().voters, [1, 2, 3]);
    }
    let mut client = new.client();
    for (key, value) in &written {
        assert_eq!(
            client.get(key, false).unwrap().as_ref(),
            Some(value),
            "{key}"
        );
    }
    assert_eq!(client.get("key-007", false).unwrap(), None);
    client.set("after-restore", "yes").unwrap();
    assert_eq!(
        client.get("after-restore", false).unwrap().as_deref(),
        Some("yes")
    );
    // The restored state is on every member, not only the leader.
    for id in new.ids() {
        let mut one = new.client_of(id);
        let found = common::eventually("a stale read of key-329 on every node", || {
            one.get("key-329", true).ok().flatten()
        });
        assert_eq!(Some(&found), written.get("key-329"));
    }
}

#[test]
fn restore_refuses_a_damaged_file_and_a_used_data_dir_and_changes_nothing() {
    let cluster = Cluster::start(&[]);
    cluster.client().set("k", "v").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.snap");
    let file_arg = file.to_str().unwrap();
    let saved = cluster.cli(&["snapshot", "save", file_arg]);
    assert!(saved.status.success(), "save: {}", stderr(&saved));

    let peers = "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3";
    let restore = |data_dir: &std::path::Path, file: &str| {
        cli(&[
            "snapshot",
            "restore",
            file,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--id",
            "1",
            "--peers",
            peers,
        ])
    };
    // A running node's data dir is not a restore's to replace.
    let used = restore(&cluster.data_dir(1), file_arg);
    assert_eq!(used.status.code(), Some(2));
    assert!(stderr(&used).contains("is not empty"), "{}", stderr(&used));
    assert!(cluster.data_dir(1).join("cluster").exists());

    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    let damaged = dir.path().join("damaged.snap");
    std::fs::write(&damaged, bytes).unwrap();
    let new_dir = dir.path().join("node1");
    let refused = restore(&new_dir, damaged.to_str().unwrap());
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("crc32 mismatch"),
        "{}",
        stderr(&refused)
    );
    assert!(!new_dir.exists());
    let status = cli(&["snapshot", "status", damaged.to_str().unwrap()]);
    assert_eq!(status.status.code(), Some(2));

    let not_member = cli(&[
        "snapshot",
        "restore",
        file_arg,
        "--data-dir",
        new_dir.to_str().unwrap(),
        "--id",
        "4",
        "--peers",
        peers,
    ]);
    assert_eq!(not_member.status.code(), Some(2));
    assert!(stderr(&not_member).contains("--id 4 is not one of --peers"));
    assert!(!new_dir.exists());
}
