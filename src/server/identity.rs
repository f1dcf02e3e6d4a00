//! Which cluster a node belongs to (docs/deploy.md, "Cluster identity").
//!
//! A cluster gets its id when it first starts: a hash of its member list and
//! of a token the operator picks (`--cluster-token`; `raft-kv cluster` draws
//! a random one), as etcd derives its cluster ID from `--initial-cluster`
//! and `--initial-cluster-token`. Every node records the id and the member
//! list in its data dir (the file `cluster`) at its first start, and from
//! then on:
//!
//! - every peer stream it opens carries the id, and it refuses any stream
//!   that carries another (a node of another cluster, or a stray process
//!   pointed at the wrong port, cannot mix its log into this one);
//! - it refuses to start with a member list other than the one recorded.
//!
//! A node started with `--join CLUSTER_ID` to be added to a running cluster
//! (§6, `raft-kv member add`) records that id, and the member list
//! [`JOINED`]: it takes streams of that cluster only, and its members come
//! from the configurations in its log, not from any flag. A restart takes
//! the same `--join`.
//!
//! The id keeps clusters apart; it is no secret and no authentication —
//! that is what TLS is for (src/tls.rs).

use std::fmt;

use crate::config::Members;

/// `--cluster-token` when none is given. Two clusters started by hand with
/// the same member list and no token share an id; give each a token of its
/// own (docs/deploy.md).
pub const DEFAULT_TOKEN: &str = "raft-kv";

/// The member list a node that joined a running cluster records: it had
/// none of its own.
pub const JOINED: &str = "(joined)";

/// A cluster's id: 64 bits, written as 16 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterId(pub u64);

impl ClusterId {
    /// The id of a cluster first started with `members` and `token`.
    pub fn derive(members: &Members, token: &str) -> ClusterId {
        // FNV-1a: a stable hash in five lines. It needs no strength: the id
        // only has to differ between clusters, not resist forgery.
        let text = format!("raft-kv cluster\0{token}\0{}", members.to_peers_flag());
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in text.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        ClusterId(hash)
    }

    pub fn parse(text: &str) -> Option<ClusterId> {
        if text.len() != 16 {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(ClusterId)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What a data dir records about its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRecord {
    pub id: ClusterId,
    /// the member list the cluster was created with, as `--peers` writes it
    pub members: String,
}

impl ClusterRecord {
    /// The file's text: two lines a person can read, and a CRC-32 of them
    /// so that a damaged file is refused rather than believed.
    pub fn encode(&self) -> String {
        let body = format!("cluster-id {}\nmembers {}\n", self.id, self.members);
        format!(
            "# raft-kv: the cluster this data dir belongs to (docs/deploy.md)\n{body}crc32 {:08x}\n",
            crc32fast::hash(body.as_bytes())
        )
    }

    pub fn decode(bytes: &[u8]) -> Result<ClusterRecord, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let [id, members, crc] = lines[..] else {
            return Err(format!(
                "expected the lines cluster-id, members and crc32; found {} lines",
                lines.len()
            ));
        };
        fn field<'a>(line: &'a str, name: &str) -> Result<&'a str, String> {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .ok_or(format!("expected a line '{name} …'"))
        }
        let (id, members, crc) = (
            field(id, "cluster-id")?,
            field(members, "members")?,
            field(crc, "crc32")?,
        );
        let body = format!("cluster-id {id}\nmembers {members}\n");
        if u32::from_str_radix(crc, 16).ok() != Some(crc32fast::hash(body.as_bytes())) {
            return Err("its CRC-32 does not match its text: the file is damaged".into());
        }
        let id = ClusterId::parse(id).ok_or(format!("'{id}' is not a cluster id"))?;
        Ok(ClusterRecord {
            id,
            members: members.to_string(),
        })
    }
}

/// The cluster a node starting with `members` (and `token`, if given)
/// belongs to, given what its data dir recorded (`stored`, the `cluster`
/// file, if any). Returns the id, and the record to save when the data dir
/// has none yet; an error, one line, when the node must not start.
pub fn establish(
    stored: Option<&[u8]>,
    members: &Members,
    token: Option<&str>,
) -> Result<(ClusterId, Option<ClusterRecord>), String> {
    let Some(bytes) = stored else {
        // First start (or a data dir from before cluster ids existed).
        let record = ClusterRecord {
            id: ClusterId::derive(members, token.unwrap_or(DEFAULT_TOKEN)),
            members: members.to_peers_flag(),
        };
        return Ok((record.id, Some(record)));
    };
    let record = ClusterRecord::decode(bytes).map_err(|e| format!("the file 'cluster': {e}"))?;
    if record.members == JOINED {
        return Err(format!(
            "this node joined cluster {} (raft-kv member add): its members are in its log; \
             restart it with --join {} instead of --peers",
            record.id, record.id
        ));
    }
    let given = members.to_peers_flag();
    if record.members != given {
        return Err(format!(
            "this data dir belongs to cluster {} of members {}, not {given}: start the node \
             with the member list the cluster was created with, or with an empty data dir \
             to create a new cluster",
            record.id, record.members
        ));
    }
    if let Some(token) = token {
        if ClusterId::derive(members, token) != record.id {
            return Err(format!(
                "this data dir belongs to cluster {}, created with another --cluster-token \
                 (the token names a cluster at its first start only; leave it out to restart \
                 a node)",
                record.id
            ));
        }
    }
    Ok((record.id, None))
}

/// The same for a node started with `--join cluster`: at its first start it
/// records `cluster`; later, its data dir must be of that cluster, and one
/// that joined it (a node created with --peers restarts with them).
pub fn establish_joined(
    stored: Option<&[u8]>,
    cluster: ClusterId,
) -> Result<(ClusterId, Option<ClusterRecord>), String> {
    let Some(bytes) = stored else {
        let record = ClusterRecord {
            id: cluster,
            members: JOINED.to_string(),
        };
        return Ok((cluster, Some(record)));
    };
    let record = ClusterRecord::decode(bytes).map_err(|e| format!("the file 'cluster': {e}"))?;
    if record.id != cluster {
        return Err(format!(
            "this data dir belongs to cluster {}, not {cluster}: join with the id of the \
             cluster it belongs to, or start with an empty data dir",
            record.id
        ));
    }
    if record.members != JOINED {
        return Err(format!(
            "this data dir belongs to cluster {} as one of the members it was created with \
             ({}): restart it with --peers {}, not --join",
            record.id, record.members, record.members
        ));
    }
    Ok((record.id, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &str) -> Members {
        Members::parse_peers(list).unwrap()
    }

    const THREE: &str = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003";

    #[test]
    fn the_id_depends_on_members_and_token_only() {
        let a = ClusterId::derive(&members(THREE), "t");
        let shuffled = "3=127.0.0.1:7003,1=127.0.0.1:7001,2=127.0.0.1:7002";
        assert_eq!(a, ClusterId::derive(&members(shuffled), "t"));
        assert_ne!(a, ClusterId::derive(&members(THREE), "u"));
        assert_ne!(a, ClusterId::derive(&members("1=127.0.0.1:7001"), "t"));
        assert_eq!(ClusterId::parse(&a.to_string()), Some(a));
        assert_eq!(ClusterId::parse("xyz"), None);
    }

    #[test]
    fn a_first_start_records_the_cluster_and_a_restart_reads_it() {
        let (id, record) = establish(None, &members(THREE), Some("secret")).unwrap();
        let record = record.expect("a first start records its cluster");
        let text = record.encode();
        assert_eq!(ClusterRecord::decode(text.as_bytes()), Ok(record));
        let again = establish(Some(text.as_bytes()), &members(THREE), None).unwrap();
        assert_eq!(again, (id, None));
        let same_token = establish(Some(text.as_bytes()), &members(THREE), Some("secret"));
        assert_eq!(same_token.unwrap(), (id, None));
    }

    #[test]
    fn another_member_list_or_token_is_refused() {
        let (_, record) = establish(None, &members(THREE), None).unwrap();
        let text = record.unwrap().encode();
        let four = format!("{THREE},4=127.0.0.1:7004");
        let error = establish(Some(text.as_bytes()), &members(&four), None).unwrap_err();
        assert!(error.contains("belongs to cluster") && error.contains("4=127.0.0.1:7004"));
        let error = establish(Some(text.as_bytes()), &members(THREE), Some("x")).unwrap_err();
        assert!(error.contains("another --cluster-token"), "{error}");
    }

    #[test]
    fn a_joining_node_records_its_cluster_and_restarts_in_it_only() {
        let cluster = ClusterId(0x1234);
        let (id, record) = establish_joined(None, cluster).unwrap();
        assert_eq!(id, cluster);
        let text = record.unwrap().encode();
        assert_eq!(
            establish_joined(Some(text.as_bytes()), cluster),
            Ok((cluster, None))
        );
        let other = establish_joined(Some(text.as_bytes()), ClusterId(0x99)).unwrap_err();
        assert!(
            other.contains("belongs to cluster 0000000000001234"),
            "{other}"
        );
        let with_peers = establish(Some(text.as_bytes()), &members(THREE), None).unwrap_err();
        assert!(
            with_peers.contains("--join 0000000000001234"),
            "{with_peers}"
        );
        let (created, record) = establish(None, &members(THREE), None).unwrap();
        let text = record.unwrap().encode();
        let error = establish_joined(Some(text.as_bytes()), created).unwrap_err();
        assert!(error.contains("restart it with --peers"), "{error}");
    }

    #[test]
    fn a_damaged_record_is_refused() {
        let (_, record) = establish(None, &members(THREE), None).unwrap();
        let text = record.unwrap().encode();
        let flipped = text.replacen("7002", "7012", 1);
        let error = establish(Some(flipped.as_bytes()), &members(THREE), None).unwrap_err();
        assert!(error.contains("damaged"), "{error}");
        assert!(establish(Some(b"\xff"), &members(THREE), None).is_err());
        assert!(establish(Some(b""), &members(THREE), None).is_err());
    }
}
