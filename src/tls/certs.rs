//! `raft-kv certs`: a certificate authority (CA) for one cluster, and the
//! certificates it signs — one per node, one for the clients — written as
//! the PEM files `--tls-dir` reads (src/tls.rs).
//!
//! - `ca.pem`, `ca.key`: the CA, `CN=raft-kv CA <random>`, allowed to sign
//!   certificates and nothing else. Every node and client trusts `ca.pem`.
//!   raft-kv never reads `ca.key`: it is there to sign more certificates for
//!   this CA with other tools (this command always makes a new CA), and
//!   belongs on no node. The random part keeps two clusters' CAs apart by
//!   name, so a certificate of the other one is refused as "not signed by
//!   this cluster's CA" rather than as a bad signature.
//! - `node-N.pem`, `node-N.key`: node N, named `node-N.raft-kv` (what its
//!   peers check, [`super::names_node`]) and the hosts it is reached at
//!   (what a client checks against the address it dialled); good both as a
//!   server and as a client, since a node is each to its peers.
//! - `client.pem`, `client.key`: the clients (`raft-kv get`, the bench),
//!   named `client.raft-kv`, good only as a client: a node refuses it as a
//!   peer, since it names no node.
//!
//! Keys are ECDSA P-256 (rcgen's default, which rustls accepts), written
//! readable by their owner only. Every certificate is valid for 10 years
//! from a day before it was made (a little clock skew between machines does
//! not make it "not yet valid"); that is long because this is a learning
//! tool with no way to renew or revoke a certificate, not a recommendation.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::{
    node_cert_file, node_key_file, node_name, CA_CERT_FILE, CA_KEY_FILE, CLIENT_CERT_FILE,
    CLIENT_KEY_FILE, CLIENT_NAME,
};
use crate::config::{Members, EXIT_BAD_CONFIG};
use crate::raft::NodeId;

/// How long every certificate is valid.
const VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// How long before its making a certificate is already valid.
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);
/// The hosts a node certificate names when `--nodes` gives only ids: a
/// cluster on one machine, as `raft-kv cluster` and the bench start.
const LOCAL_HOSTS: [&str; 2] = ["127.0.0.1", "localhost"];

/// `raft-kv certs` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct CertsArgs {
    /// The directory to write ca.pem, ca.key, node-N.pem/.key and
    /// client.pem/.key to; created if missing.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The nodes: their ids (1,2,3), each certificate naming node-N.raft-kv,
    /// 127.0.0.1 and localhost; or a --peers list (1=10.0.0.1:7001,2=host2:7002),
    /// each naming node-N.raft-kv and its host.
    #[arg(long, value_name = "LIST")]
    pub nodes: String,
    /// More hosts (names or IP addresses) every node certificate names, for
    /// clients that reach the nodes by another address.
    #[arg(long, value_name = "HOST,HOST,...", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Overwrite the files of an earlier run in DIR (a new CA: every node
    /// and client then needs the new files).
    #[arg(long)]
    pub force: bool,
}

/// One node's certificate to write: its id, and the hosts (names or IP
/// addresses) it names besides `node-N.raft-kv`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHosts {
    pub id: NodeId,
    pub hosts: Vec<String>,
}

/// `raft-kv certs`: returns the exit code (0 written, 2 any error, one
/// line on stderr).
pub fn run(args: CertsArgs) -> i32 {
    let written = nodes(&args.nodes, &args.hosts).and_then(|nodes| {
        write(&args.out, &nodes, args.force)?;
        Ok(nodes)
    });
    match written {
        Ok(nodes) => {
            print!("{}", summary(&args.out, &nodes));
            0
        }
        Err(message) => {
            eprintln!("raft-kv: error: {message}");
            EXIT_BAD_CONFIG
        }
    }
}

/// The nodes of `--nodes LIST`, with `--hosts` added to each.
pub fn nodes(list: &str, extra_hosts: &[String]) -> Result<Vec<NodeHosts>, String> {
    let extra = extra_hosts
        .iter()
        .map(|host| check_host(host).map_err(|why| format!("--hosts: {why}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut nodes = if list.contains('=') {
        let members = Members::parse_peers(list).map_err(|e| format!("--nodes: {e}"))?;
        members
            .iter()
            .map(|(id, address)| {
                let host = check_host(&address.host).map_err(|why| format!("--nodes: {why}"))?;
                Ok(NodeHosts {
                    id,
                    hosts: vec![host],
                })
            })
            .collect::<Result<Vec<_>, String>>()?
    } else {
        local_nodes(&parse_ids(list)?)
    };
    for node in &mut nodes {
        for host in &extra {
            if !node.hosts.contains(host) {
                node.hosts.push(host.clone());
            }
        }
    }
    Ok(nodes)
}

/// Nodes `ids` of a cluster on this machine: each certificate names
/// 127.0.0.1 and localhost.
pub fn local_nodes(ids: &[NodeId]) -> Vec<NodeHosts> {
    ids.iter()
        .map(|&id| NodeHosts {
            id,
            hosts: LOCAL_HOSTS.iter().map(|h| h.to_string()).collect(),
        })
        .collect()
}

/// `1,2,3`: positive, distinct ids.
fn parse_ids(list: &str) -> Result<Vec<NodeId>, String> {
    let mut ids = Vec::new();
    let mut seen = BTreeSet::new();
    for word in list.split(',').map(str::trim) {
        let id = match word.parse::<NodeId>() {
            Ok(0) => return Err("--nodes: node id 0 is reserved; ids start at 1".into()),
            Ok(id) => id,
            Err(_) => {
                return Err(format!(
                    "--nodes: '{word}' is not a node id; give ids (1,2,3) or a --peers list (1=HOST:PORT,2=HOST:PORT)"
                ))
            }
        };
        if !seen.insert(id) {
            return Err(format!("--nodes: node id {id} is listed twice"));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// A host as a certificate names it: an IP address (IPv6 with or without
/// its brackets) or a DNS name.
fn check_host(host: &str) -> Result<String, String> {
    let host = host.trim();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let name_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if bare.is_empty() || !bare.chars().all(name_chars) {
        return Err(format!("'{host}' is neither a host name nor an IP address"));
    }
    Ok(bare.to_ascii_lowercase())
}

/// Make a new CA and the certificates of `nodes` and of the clients, and
/// write them to `dir` (created if missing). Refuses to overwrite the files
/// of an earlier run unless `force`. Everything is made before the first
/// file is written, so an error in the making writes nothing.
pub fn write(dir: &Path, nodes: &[NodeHosts], force: bool) -> Result<(), String> {
    if nodes.is_empty() {
        return Err("--nodes: no node given".into());
    }
    let files = make(nodes).map_err(|e| format!("cannot make the certificates: {e}"))?;
    if !force {
        if let Some((name, _, _)) = files.iter().find(|(name, _, _)| dir.join(name).exists()) {
            return Err(format!(
                "{} already exists: it holds the certificates of a cluster; \
                 give --force to replace them all (with a new CA), or another --out",
                dir.join(name).display()
            ));
        }
    }
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for (name, pem, secret) in &files {
        write_file(&dir.join(name), pem, *secret)?;
    }
    Ok(())
}

/// What `raft-kv certs` printed: the files, and what to do with them.
fn summary(dir: &Path, nodes: &[NodeHosts]) -> String {
    let mut out = String::new();
    let path = |name: &str| dir.join(name).display().to_string();
    let _ = writeln!(
        out,
        "wrote {} and {} (the CA; keep ca.key to yourself)",
        path(CA_CERT_FILE),
        path(CA_KEY_FILE)
    );
    for node in nodes {
        let _ = writeln!(
            out,
            "wrote {} and {} ({}, {})",
            path(&node_cert_file(node.id)),
            path(&node_key_file(node.id)),
            node_name(node.id),
            node.hosts.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "wrote {} and {} ({CLIENT_NAME})",
        path(CLIENT_CERT_FILE),
        path(CLIENT_KEY_FILE)
    );
    let _ = writeln!(
        out,
        "next: give every node and client --tls-dir {} (node N needs ca.pem and node-N.pem/.key; a client ca.pem and client.pem/.key)",
        dir.display()
    );
    out
}

/// Every file to write: its name, its PEM text and whether it is a secret.
fn make(nodes: &[NodeHosts]) -> Result<Vec<(String, String, bool)>, rcgen::Error> {
    let now = SystemTime::now();
    let not_before = time::OffsetDateTime::from(now - BACKDATE);
    let not_after = time::OffsetDateTime::from(now + VALIDITY);
    let params = |common_name: &str, sans: Vec<SanType>| {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.not_before = not_before;
        params.not_after = not_after;
        params
    };
    let dns = |name: &str| -> Result<SanType, rcgen::Error> {
        Ok(SanType::DnsName(name.to_string().try_into()?))
    };

    let ca_name = format!("raft-kv CA {:08x}", rand::random::<u32>());
    let mut ca = params(&ca_name, Vec::new());
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_key = KeyPair::generate()?;
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let mut files = vec![
        (CA_CERT_FILE.to_string(), ca_pem, false),
        (CA_KEY_FILE.to_string(), ca_key.serialize_pem(), true),
    ];
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = |params: CertificateParams, cert: String, key: String| {
        let mut params = params;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let key_pair = KeyPair::generate()?;
        let pem = params.signed_by(&key_pair, &issuer)?.pem();
        files.push((cert, pem, false));
        files.push((key, key_pair.serialize_pem(), true));
        Ok::<_, rcgen::Error>(())
    };
    for node in nodes {
        let name = node_name(node.id);
        let mut sans = vec![dns(&name)?];
        for host in &node.hosts {
            sans.push(match host.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => dns(host)?,
            });
        }
        let mut params = params(&name, sans);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        leaf(params, node_cert_file(node.id), node_key_file(node.id))?;
    }
    let mut client = params("raft-kv client", vec![dns(CLIENT_NAME)?]);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf(client, CLIENT_CERT_FILE.into(), CLIENT_KEY_FILE.into())?;
    Ok(files)
}

/// Write `text` to `path`, readable by its owner only if `secret` (also
/// when the file was there before).
fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    let cannot = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        // `mode` applies only to a file it creates.
        if path.exists() {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(cannot)?;
        }
    }
    let mut file = options.open(path).map_err(cannot)?;
    file.write_all(text.as_bytes()).map_err(cannot)?;
    file.sync_all().map_err(cannot)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;
    use crate::tls::{names_node, Holder, TlsArgs};

    fn written(nodes: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &super::nodes(nodes, &[]).unwrap(), false).unwrap();
        dir
    }

    fn cert(dir: &Path, name: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(dir.join(name))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_node_certificate_names_its_node_and_no_other() {
        let dir = written("1,2,3");
        for id in 1..=3 {
            let chain = cert(dir.path(), &node_cert_file(id));
            for other in 1..=5 {
                assert_eq!(
                    names_node(&chain, other),
                    other == id,
                    "node-{id}.pem, {other}"
                );
            }
        }
        let client = cert(dir.path(), CLIENT_CERT_FILE);
        assert!((1..=100).all(|id| !names_node(&client, id)));
    }

    #[test]
    fn tls_dir_loads_the_written_files_of_each_holder() {
        let dir = written("1,2,3");
        let args = TlsArgs {
            tls_dir: Some(dir.path().to_path_buf()),
            ..TlsArgs::default()
        };
        assert!(args.load(Holder::Node(2)).unwrap().is_some());
        assert!(args.load(Holder::Client).unwrap().is_some());
        let error = args.load(Holder::Node(4)).err().unwrap();
        assert!(error.contains("node-4.pem"), "{error}");
        // Node 1's certificate given as node 2's.
        let swapped = TlsArgs {
            cert: Some(dir.path().join("node-1.pem")),
            key: Some(dir.path().join("node-1.key")),
            ca: Some(dir.path().join(CA_CERT_FILE)),
            ..TlsArgs::default()
        };
        let error = swapped.load(Holder::Node(2)).err().unwrap();
        assert!(error.contains("not node 2's"), "{error}");
    }

    /// What rustls checks during a handshake: signed by the CA, the name,
    /// and each certificate's use (a node both serves and connects, a
    /// client only connects).
    #[test]
    fn rustls_accepts_nodes_as_servers_and_clients_and_the_client_only_as_a_client() {
        let dir = written("1=10.0.0.1:7001,2=host2.example:7002");
        // The provider tonic's `tls-ring` uses (deprecated by rustls for its
        // key exchange, which plays no part here: only its signature checks).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(cert(dir.path(), CA_CERT_FILE).remove(0)).unwrap();
        let roots = Arc::new(roots);
        let servers = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .unwrap();
        let clients = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .unwrap();
        let now = UnixTime::now();
        let as_server = |file: &str, name: &str| {
            let chain = cert(dir.path(), file);
            let name = ServerName::try_from(name.to_string()).unwrap();
            servers
                .verify_server_cert(&chain[0], &[], &name, &[], now)
                .is_ok()
        };
        let as_client = |file: &str| {
            let chain = cert(dir.path(), file);
            clients.verify_client_cert(&chain[0], &[], now).is_ok()
        };
        assert!(as_server("node-1.pem", "node-1.raft-kv"));
        assert!(as_server("node-1.pem", "10.0.0.1"));
        assert!(as_server("node-2.pem", "host2.example"));
        // A --peers list names each node's own host only.
        assert!(!as_server("node-1.pem", "127.0.0.1"));
        assert!(!as_server("node-1.pem", "localhost"));
        assert!(!as_server("node-2.pem", "10.0.0.1"));
        assert!(as_client("node-1.pem") && as_client("node-2.pem"));
        assert!(as_client(CLIENT_CERT_FILE));
        assert!(!as_server(CLIENT_CERT_FILE, CLIENT_NAME));
        // The CA itself is no leaf.
        assert!(!as_client(CA_CERT_FILE));
    }

    #[test]
    fn ids_name_the_loopback_and_hosts_add_to_every_node() {
        assert_eq!(
            nodes(
                "1, 2",
                &["10.0.0.9".into(), "[::1]".into(), "Kv.Example".into()]
            )
            .unwrap(),
            [1, 2].map(|id| NodeHosts {
                id,
                hosts: ["127.0.0.1", "localhost", "10.0.0.9", "::1", "kv.example"]
                    .map(String::from)
                    .to_vec(),
            })
        );
        assert_eq!(
            nodes("1=[::1]:7001,2=db-2:7002", &["127.0.0.1".into()]).unwrap(),
            [
                NodeHosts {
                    id: 1,
                    hosts: vec!["::1".into(), "127.0.0.1".into()],
                },
                NodeHosts {
                    id: 2,
                    hosts: vec!["db-2".into(), "127.0.0.1".into()],
                },
            ]
        );
        // Given twice, named once.
        assert_eq!(
            nodes("3", &["localhost".into()]).unwrap()[0].hosts,
            ["127.0.0.1", "localhost"]
        );
    }

    #[test]
    fn bad_lists_are_refused() {
        for (list, hosts, expected) in [
            ("", "", "'' is not a node id"),
            ("1,x", "", "'x' is not a node id"),
            ("0", "", "node id 0 is reserved"),
            ("1,2,1", "", "node id 1 is listed twice"),
            ("1=h:1,1=g:2", "", "node id 1 is listed twice"),
            ("1=h", "", "--nodes: --peers entry"),
            ("1", "a b", "--hosts: 'a b' is neither"),
            ("1", "", ""),
        ] {
            let hosts: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(String::from)
                .collect();
            match nodes(list, &hosts) {
                Ok(_) => assert!(expected.is_empty(), "{list:?} accepted"),
                Err(error) => assert!(
                    !expected.is_empty() && error.contains(expected),
                    "{list:?}: {error}"
                ),
            }
        }
    }

    #[test]
    fn an_earlier_run_is_overwritten_only_with_force() {
        let dir = written("1,2,3");
        let ca = fs::read(dir.path().join(CA_CERT_FILE)).unwrap();
        let error = write(dir.path(), &local_nodes(&[1]), false).unwrap_err();
        assert!(error.contains("ca.pem already exists"), "{error}");
        assert!(error.contains("--force"), "{error}");
        assert_eq!(fs::read(dir.path().join(CA_CERT_FILE)).unwrap(), ca);
        write(dir.path(), &local_nodes(&[1]), true).unwrap();
        assert_ne!(fs::read(dir.path().join(CA_CERT_FILE)).unwrap(), ca);
    }

    #[test]
    fn the_directory_is_made_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a/b");
        write(&out, &local_nodes(&[7]), false).unwrap();
        let names: BTreeSet<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.key",
                "ca.pem",
                "client.key",
                "client.pem",
                "node-7.key",
                "node-7.pem"
            ]
            .map(String::from)
            .into()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for name in ["ca.key", "client.key", "node-7.key"] {
                let mode = fs::metadata(out.join(name)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{name}");
            }
        }
        let summary = summary(&out, &local_nodes(&[7]));
        assert!(
            summary.contains("node-7.raft-kv, 127.0.0.1, localhost"),
            "{summary}"
        );
        assert!(
            summary.lines().last().unwrap().starts_with("next: "),
            "{summary}"
        );
    }
}
