//! `raft-kv node --config FILE`: any flag of `raft-kv node` in a TOML file,
//! each key named as its flag (docs/api.md, "Running a node"):
//!
//! ```toml
//! id = 1
//! data-dir = "data/node1"
//! heartbeat-ms = 50
//!
//! [members]
//! 1 = "127.0.0.1:7001"
//! 2 = "127.0.0.1:7002"
//! 3 = "127.0.0.1:7003"
//! ```
//!
//! The members may also be `peers = "1=127.0.0.1:7001,…"`, as the flag
//! takes them. A flag on the command line wins over the file, and the file
//! over the flag's default. An unknown key, a value of the wrong type, or a
//! value the flag would refuse is an error naming the file and the line.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{error, ConfigError, LogLevel, Members};
use crate::raft::NodeId;
use crate::server::NodeArgs;

/// The flags given on the command line, by clap id (the field's name, or
/// `tls_cert`, `tls_key`, `tls_ca`): [`flags_given`] collects them.
pub type Given = BTreeSet<String>;

/// The flags of `matches` (those of `raft-kv node`) that the command line
/// gave, as opposed to their defaults.
pub fn flags_given(matches: &clap::ArgMatches) -> Given {
    matches
        .ids()
        .filter(|id| {
            matches.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
        })
        .map(|id| id.as_str().to_owned())
        .collect()
}

/// The file as written; every key is optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    id: Option<Spanned<NodeId>>,
    /// `ID = "HOST:PORT"`; an id is a TOML key, so a string.
    members: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    peers: Option<Spanned<String>>,
    data_dir: Option<Spanned<PathBuf>>,
    listen_peers: Option<Spanned<String>>,
    listen_clients: Option<Spanned<String>>,
    cluster_token: Option<Spanned<String>>,
    join: Option<Spanned<String>>,
    tls_dir: Option<Spanned<PathBuf>>,
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    ca: Option<Spanned<PathBuf>>,
    election_timeout_ms: Option<Spanned<String>>,
    heartbeat_ms: Option<Spanned<u64>>,
    tick_ms: Option<Spanned<u64>>,
    snapshot_log_bytes: Option<Spanned<usize>>,
    log_level: Option<Spanned<LogLevel>>,
    poll_us: Option<Spanned<u64>>,
    fast_path_off: Option<Spanned<String>>,
    max_request_bytes: Option<Spanned<usize>>,
    pre_vote: Option<Spanned<bool>>,
    lease_reads: Option<Spanned<bool>>,
}

/// Where each value taken from the file was, to put its line into a
/// later error about it.
#[derive(Debug, Default)]
pub struct Origins {
    path: PathBuf,
    /// flag name (`heartbeat-ms`) → line
    lines: BTreeMap<&'static str, usize>,
}

impl Origins {
    /// `error` with the file and line of the first flag it names that the
    /// file gave, e.g. `node.toml line 4: --heartbeat-ms 150 must be …`.
    pub fn locate(&self, error: ConfigError) -> ConfigError {
        let named = error
            .0
            .split(|c: char| c.is_whitespace() || c == ':')
            .filter_map(|word| word.strip_prefix("--"))
            .find_map(|flag| self.lines.get(flag));
        match named {
            Some(line) => ConfigError(format!("{} line {line}: {}", self.path.display(), error.0)),
            None => error,
        }
    }
}

/// The line (from 1) of byte `at` of `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl ConfigFile {
    /// Read and parse `path`; syntax, unknown keys and wrong types are
    /// refused here, with the line.
    pub fn read(path: &Path) -> Result<(ConfigFile, String), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let file = ConfigFile::parse(path, &text)?;
        Ok((file, text))
    }

    /// Parse the text of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
        toml::from_str(text).map_err(|e| {
            if let Some(members) = old_format(text) {
                return ConfigError(format!(
                    "{} is a member list in the old format (one 'ID HOST:PORT' per line); --config now takes TOML, with any flag of raft-kv node as a key: write the members as {members}",
                    path.display()
                ));
            }
            let at = match e.span() {
                Some(span) => format!(" line {}", line_of(text, span.start)),
                None => String::new(),
            };
            ConfigError(format!("{}{at}: {}", path.display(), e.message().trim()))
        })
    }

    /// Fill in every flag of `args` that the command line did not give
    /// (`given`) from the file; returns where the values taken came from.
    pub fn apply(
        self,
        path: &Path,
        text: &str,
        args: &mut NodeArgs,
        given: &Given,
    ) -> Result<Origins, ConfigError> {
        let mut merge = Merge {
            text,
            given,
            origins: Origins {
                path: path.to_owned(),
                lines: BTreeMap::new(),
            },
        };
        let at =
            |span: Range<usize>| format!("{} line {}", path.display(), line_of(text, span.start));
        let peers = self.peers_flag(&at)?;
        self.apply_tls(&mut merge, &at, args)?;
        merge.option("peers", &mut args.peers, peers);
        merge.option("id", &mut args.id, self.id);
        merge.option("data-dir", &mut args.data_dir, self.data_dir);
        merge.option("listen-peers", &mut args.listen_peers, self.listen_peers);
        merge.option(
            "listen-clients",
            &mut args.listen_clients,
            self.listen_clients,
        );
        merge.option("cluster-token", &mut args.cluster_token, self.cluster_token);
        merge.option("join", &mut args.join, self.join);
        let t = &mut args.tuning;
        merge.value(
            "election-timeout-ms",
            &mut t.election_timeout_ms,
            self.election_timeout_ms,
        );
        merge.value("heartbeat-ms", &mut t.heartbeat_ms, self.heartbeat_ms);
        merge.value("tick-ms", &mut t.tick_ms, self.tick_ms);
        merge.value(
            "snapshot-log-bytes",
            &mut t.snapshot_log_bytes,
            self.snapshot_log_bytes,
        );
        merge.value("log-level", &mut t.log_level, self.log_level);
        merge.value("poll-us", &mut t.poll_us, self.poll_us);
        merge.value("fast-path-off", &mut t.fast_path_off, self.fast_path_off);
        merge.value(
            "max-request-bytes",
            &mut t.max_request_bytes,
            self.max_request_bytes,
        );
        merge.value("pre-vote", &mut t.pre_vote, self.pre_vote);
        merge.value("lease-reads", &mut t.lease_reads, self.lease_reads);
        Ok(merge.origins)
    }

    /// The members as `--peers` takes them, from `[members]` or `peers`;
    /// each `[members]` entry is checked here, for its line.
    fn peers_flag(
        &self,
        at: &impl Fn(Range<usize>) -> String,
    ) -> Result<Option<Spanned<String>>, ConfigError> {
        let Some(members) = &self.members else {
            return Ok(self.peers.clone());
        };
        if let Some(peers) = &self.peers {
            return error(format!(
                "{}: give the members once, as [members] or as peers, not both",
                at(peers.span())
            ));
        }
        let mut entries = Vec::new();
        for (id, address) in members.get_ref() {
            let member = super::parse_member(id, address.get_ref())
                .map_err(|why| ConfigError(format!("{}: members: {why}", at(address.span()))))?;
            entries.push(member);
        }
        if entries.is_empty() {
            return error(format!(
                "{}: [members] lists no members",
                at(members.span())
            ));
        }
        let list = Members::from_entries(entries)
            .map_err(|e| ConfigError(format!("{}: {e}", at(members.span()))))?;
        Ok(Some(Spanned::new(members.span(), list.to_peers_flag())))
    }

    /// The TLS keys, taken as a group: none of them when the command line
    /// gives any TLS flag, so that the two never mix.
    fn apply_tls(
        &self,
        merge: &mut Merge,
        at: &impl Fn(Range<usize>) -> String,
        args: &mut NodeArgs,
    ) -> Result<(), ConfigError> {
        let files = [&self.cert, &self.key, &self.ca];
        if let (Some(_), Some(file)) = (&self.tls_dir, files.iter().find_map(|f| f.as_ref())) {
            return error(format!(
                "{}: tls-dir, or cert, key and ca: not both",
                at(file.span())
            ));
        }
        if ["tls-dir", "cert", "key", "ca"]
            .iter()
            .any(|f| merge.given.contains(&clap_id(f)))
        {
            return Ok(());
        }
        let tls = &mut args.tls;
        merge.option("tls-dir", &mut tls.tls_dir, self.tls_dir.clone());
        merge.option("cert", &mut tls.cert, self.cert.clone());
        merge.option("key", &mut tls.key, self.key.clone());
        merge.option("ca", &mut tls.ca, self.ca.clone());
        Ok(())
    }
}

/// Takes a file's value for each flag the command line did not give.
struct Merge<'a> {
    text: &'a str,
    given: &'a Given,
    origins: Origins,
}

impl Merge<'_> {
    /// The file's value for `flag`, unless the command line gave it.
    fn take<T>(&mut self, flag: &'static str, from_file: Option<Spanned<T>>) -> Option<T> {
        let value = from_file.filter(|_| !self.given.contains(&clap_id(flag)))?;
        let line = line_of(self.text, value.span().start);
        self.origins.lines.insert(flag, line);
        Some(value.into_inner())
    }

    fn value<T>(&mut self, flag: &'static str, slot: &mut T, from_file: Option<Spanned<T>>) {
        if let Some(value) = self.take(flag, from_file) {
            *slot = value;
        }
    }

    fn option<T>(
        &mut self,
        flag: &'static str,
        slot: &mut Option<T>,
        from_file: Option<Spanned<T>>,
    ) {
        if let Some(value) = self.take(flag, from_file) {
            *slot = Some(value);
        }
    }
}

/// The clap id of `--flag`: its field's name, but `tls_cert`, `tls_key`
/// and `tls_ca` for the TLS files (src/tls.rs says why).
fn clap_id(flag: &str) -> String {
    match flag {
        "cert" | "key" | "ca" => format!("tls_{flag}"),
        _ => flag.replace('-', "_"),
    }
}

/// The members of a file in the format `--config` took before it took TOML
/// (one `ID HOST:PORT` per line, `#` comments), as the TOML line to write
/// instead; `None` when it is not one.
fn old_format(text: &str) -> Option<String> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            [] => continue,
            [id, address] => entries.push(super::parse_member(id, address).ok()?),
            _ => return None,
        }
    }
    let members = Members::from_entries(entries).ok()?;
    let entries: Vec<String> = members
        .iter()
        .map(|(id, address)| format!("{id} = \"{address}\""))
        .collect();
    (!entries.is_empty()).then(|| format!("members = {{ {} }}", entries.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use clap::{CommandFactory, FromArgMatches};

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    /// `raft-kv node --config FILE FLAGS…` with `text` in FILE.
    fn load(text: &str, flags: &[&str]) -> Result<NodeConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();
        let args = [&["node", "--config", path], flags].concat();
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        NodeConfig::load(cli.node, &flags_given(&matches))
            .map_err(|e| e.0.replace(path, "node.toml"))
    }

    /// The same node from flags alone.
    fn from_flags(flags: &[&str]) -> NodeConfig {
        let cli = <Cli as clap::Parser>::try_parse_from([&["node"], flags].concat()).unwrap();
        NodeConfig::load(cli.node, &Given::new()).unwrap()
    }

    const MINIMAL: &str = "id = 2\ndata-dir = \"d\"\n\n[members]\n1 = \"127.0.0.1:7001\"\n2 = \"127.0.0.1:7002\"\n3 = \"127.0.0.1:7003\"\n";
    const PEERS: &str = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003";

    #[test]
    fn a_file_alone_starts_a_node_with_the_defaults_of_the_flags() {
        let config = load(MINIMAL, &[]).unwrap();
        let flags = from_flags(&["--id", "2", "--data-dir", "d", "--peers", PEERS]);
        // NodeConfig holds TLS keys and has no PartialEq; its Debug says all.
        assert_eq!(format!("{config:?}"), format!("{flags:?}"));
        let peers = load("id = 2\ndata-dir = \"d\"\npeers = \"1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003\"\n", &[]).unwrap();
        assert_eq!(peers.members, flags.members);
    }

    #[test]
    fn every_flag_is_a_key() {
        let text = r#"
            id = 3
            data-dir = "/var/lib/raft-kv"
            listen-peers = "0.0.0.0:7003"
            listen-clients = "0.0.0.0:8003"
            cluster-token = "t0k3n"
            election-timeout-ms = "300-600"
            heartbeat-ms = 100
            tick-ms = 5
            snapshot-log-bytes = 1000000
            log-level = "debug"
            poll-us = 0
            fast-path-off = "batching"
            max-request-bytes = 4096
            pre-vote = false
            members = { 1 = "10.0.0.1:7001", 2 = "10.0.0.2:7002", 3 = "10.0.0.3:7003" }
        "#;
        let c = load(text, &[]).unwrap();
        assert_eq!((c.id, c.data_dir.to_str()), (3, Some("/var/lib/raft-kv")));
        assert_eq!(c.listen_peers.to_string(), "0.0.0.0:7003");
        assert_eq!(c.client_address.to_string(), "10.0.0.3:8003");
        assert_eq!(c.cluster_token.as_deref(), Some("t0k3n"));
        assert_eq!(
            c.timing,
            super::super::Timing::new("300-600", 100, 5).unwrap()
        );
        assert_eq!(c.snapshot_log_bytes, 1_000_000);
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.poll, std::time::Duration::ZERO);
        assert!(!c.fast_path.batching && c.fast_path.pipelining);
        assert_eq!(c.max_request_bytes, 4096);
        assert!(!c.pre_vote && !c.raft_config().pre_vote);
        assert!(
            load(MINIMAL, &[]).unwrap().raft_config().pre_vote,
            "on by default"
        );
        // TLS keys reach the TLS flags: the files they name are read.
        let tls = load(&format!("{MINIMAL}\n"), &["--tls-dir", "/nonexistent-tls"]).unwrap_err();
        let in_file = load(&format!("tls-dir = \"/nonexistent-tls\"\n{MINIMAL}"), &[]).unwrap_err();
        assert!(
            tls.starts_with("TLS: ") && tls == in_file,
            "{tls} / {in_file}"
        );
    }

    #[test]
    fn a_joining_node_has_no_members_and_is_reached_at_its_listen_peers() {
        let text = "id = 4\ndata-dir = \"d\"\njoin = \"00000000000000ab\"\nlisten-peers = \"127.0.0.1:7004\"\n";
        let c = load(text, &[]).unwrap();
        assert_eq!(c.join.map(|id| id.0), Some(0xab));
        assert!(c.members.ids().is_empty() && c.raft_config().members.is_empty());
        assert_eq!(c.address().to_string(), "127.0.0.1:7004");
        let peers = load(&format!("{text}peers = \"{PEERS}\"\n"), &[]).unwrap_err();
        assert!(peers.contains("--join and --peers"), "{peers}");
        let text = "id = 4\ndata-dir = \"d\"\njoin = \"00000000000000ab\"\n";
        let nowhere = load(text, &[]).unwrap_err();
        assert!(nowhere.contains("--join needs --listen-peers"), "{nowhere}");
    }

    #[test]
    fn a_flag_wins_over_the_file_even_at_its_default() {
        let text = format!("heartbeat-ms = 40\nlog-level = \"warn\"\n{MINIMAL}");
        let c = load(&text, &["--heartbeat-ms", "50", "--id", "1"]).unwrap();
        assert_eq!(c.timing.heartbeat_ticks, 5);
        assert_eq!(c.id, 1);
        assert_eq!(c.log_level, LogLevel::Warn);
        let c = load(&text, &["--peers", "1=127.0.0.1:9001,2=127.0.0.1:9002"]).unwrap();
        assert_eq!(c.address().to_string(), "127.0.0.1:9002");
        assert_eq!(c.timing.heartbeat_ticks, 4);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_line() {
        let err = load(&format!("# node 2\nheartbeat = 5\n{MINIMAL}"), &[]).unwrap_err();
        assert!(
            err.starts_with("node.toml line 2: unknown field `heartbeat`, expected one of `id`"),
            "{err}"
        );
        let members = "[members]\n1 = \"127.0.0.1:7001\"\n";
        let top = |line: &str| {
            let flags = ["--id", "1", "--data-dir", "d"];
            let flags = &flags[if line.starts_with("id") { 2 } else { 0 }..];
            load(&format!("{line}\n{members}"), flags).unwrap_err()
        };
        assert_eq!(
            top("heartbeat-ms = \"fast\""),
            "node.toml line 1: invalid type: string \"fast\", expected u64"
        );
        assert_eq!(
            top("tick-ms = -1"),
            "node.toml line 1: invalid value: integer `-1`, expected u64"
        );
        assert!(top("log-level = \"loud\"").starts_with("node.toml line 1: unknown variant `loud`"));
        assert_eq!(
            top("poll-us = 20000"),
            "node.toml line 1: --poll-us 20000 is too long: at most 10000"
        );
        assert_eq!(
            top("# timing\n\nelection-timeout-ms = \"300-150\""),
            "node.toml line 3: --election-timeout-ms 300-150: MIN must be less than MAX"
        );
        assert_eq!(top("id = 0").split(": ").next(), Some("node.toml line 1"));
        assert_eq!(
            top("data-dir = [1]").split(": ").next(),
            Some("node.toml line 1")
        );
        assert_eq!(
            top("id = 1\nid = 2").split(": ").next(),
            Some("node.toml line 2")
        );
        // Given as a flag, a bad value is the flag's, without a line.
        let flag = load(MINIMAL, &["--poll-us", "20000"]).unwrap_err();
        assert_eq!(flag, "--poll-us 20000 is too long: at most 10000");
    }

    #[test]
    fn bad_members_name_the_line() {
        let members = "id = 1\ndata-dir = \"d\"\n[members]\n1 = \"127.0.0.1:7001\"\n";
        let err = |more: &str| load(&format!("{members}{more}"), &[]).unwrap_err();
        assert_eq!(
            err("x = \"127.0.0.1:7002\""),
            "node.toml line 5: members: node id 'x' is not a positive integer"
        );
        assert_eq!(
            err("2 = \"127.0.0.1\""),
            "node.toml line 5: members: address '127.0.0.1' is not HOST:PORT"
        );
        assert!(err("2 = \"127.0.0.1:7001\"").ends_with(": address 127.0.0.1:7001 is listed twice"));
        assert_eq!(
            load("id = 1\ndata-dir = \"d\"\n[members]\n", &[]).unwrap_err(),
            "node.toml line 3: [members] lists no members"
        );
        assert_eq!(
            err("[x]\n"),
            "node.toml line 5: unknown field `x`, expected one of `id`, `members`, `peers`, `data-dir`, `listen-peers`, `listen-clients`, `cluster-token`, `join`, `tls-dir`, `cert`, `key`, `ca`, `election-timeout-ms`, `heartbeat-ms`, `tick-ms`, `snapshot-log-bytes`, `log-level`, `poll-us`, `fast-path-off`, `max-request-bytes`, `pre-vote`, `lease-reads`"
        );
        let both = format!("peers = \"{PEERS}\"\n{MINIMAL}");
        assert_eq!(
            load(&both, &[]).unwrap_err(),
            "node.toml line 1: give the members once, as [members] or as peers, not both"
        );
        let tls = format!("tls-dir = \"t\"\nca = \"c\"\n{MINIMAL}");
        assert_eq!(
            load(&tls, &[]).unwrap_err(),
            "node.toml line 2: tls-dir, or cert, key and ca: not both"
        );
    }

    #[test]
    fn the_old_format_is_refused_with_the_toml_to_write() {
        let old =
            "# three nodes\n\n1 127.0.0.1:7001\n  2\t127.0.0.1:7002  # second\n3 [::1]:7003\n";
        let err = load(old, &["--id", "1", "--data-dir", "d"]).unwrap_err();
        let (_, toml_line) = err.split_once("write the members as ").unwrap();
        assert!(
            err.starts_with(
                "node.toml is a member list in the old format (one 'ID HOST:PORT' per line)"
            ),
            "{err}"
        );
        assert_eq!(
            toml_line,
            "members = { 1 = \"127.0.0.1:7001\", 2 = \"127.0.0.1:7002\", 3 = \"[::1]:7003\" }"
        );
        // What it says to write works.
        let c = load(toml_line, &["--id", "1", "--data-dir", "d"]).unwrap();
        assert_eq!(
            c.members.to_peers_flag(),
            "1=127.0.0.1:7001,2=127.0.0.1:7002,3=[::1]:7003"
        );
        // A file that is neither is a TOML error.
        assert!(load("1 127.0.0.1:7001 extra\n", &[])
            .unwrap_err()
            .starts_with("node.toml line 1: "));
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let err = ConfigFile::read(Path::new("/nonexistent/node.toml"))
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("cannot read /nonexistent/node.toml: "),
            "{err}"
        );
    }
}
