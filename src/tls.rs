//! Mutual TLS: between nodes, and between clients and nodes (docs/api.md,
//! "TLS"; docs/deploy.md).
//!
//! One certificate authority (CA) signs every certificate of a cluster
//! (`raft-kv certs` writes them). A node's certificate names it
//! `node-N.raft-kv` (and the host it serves on); a client's names
//! `client.raft-kv`. Both ends of every connection show a certificate signed
//! by the cluster's CA, and rustls refuses the connection otherwise. On top
//! of that, a node accepts a peer message only from the node its certificate
//! names ([`names_node`]), and a node connecting to peer N accepts only N's
//! certificate — so an outsider, or a client, or node 3 claiming to be
//! node 1, cannot speak for a member.
//!
//! Without TLS, nothing here is used; the cluster id (src/server/identity.rs)
//! still keeps apart the messages of different clusters, but anyone who can
//! reach the peer port can speak for a member.

pub mod certs;

use std::fmt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::raft::NodeId;

/// The files `raft-kv certs` writes, and `--tls-dir` reads.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const CLIENT_CERT_FILE: &str = "client.pem";
pub const CLIENT_KEY_FILE: &str = "client.key";

/// Node `id`'s certificate and key files in a `--tls-dir`.
pub fn node_cert_file(id: NodeId) -> String {
    format!("node-{id}.pem")
}
pub fn node_key_file(id: NodeId) -> String {
    format!("node-{id}.key")
}

/// The name a node's certificate carries (a DNS subject alternative name):
/// what a peer's certificate is checked against.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}.raft-kv")
}

/// The name a client certificate carries.
pub const CLIENT_NAME: &str = "client.raft-kv";

/// The TLS flags of `raft-kv node`, `cluster`, the client commands and
/// `bench`: a directory written by `raft-kv certs`, or the three files.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// Turn on mutual TLS with the files `raft-kv certs` wrote to DIR: its
    /// ca.pem, and node-N.pem/.key for node N (client.pem/.key for a client).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["tls_cert", "tls_key", "tls_ca"])]
    pub tls_dir: Option<PathBuf>,
    // The ids are not the field names: a command's own KEY argument must
    // not be taken for --key.
    /// Turn on mutual TLS with this certificate (PEM); needs --key and --ca.
    #[arg(long, id = "tls_cert", value_name = "FILE", requires_all = ["tls_key", "tls_ca"])]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, id = "tls_key", value_name = "FILE", requires_all = ["tls_cert", "tls_ca"])]
    pub key: Option<PathBuf>,
    /// The certificate authority every certificate of the cluster is signed by (PEM).
    #[arg(long, id = "tls_ca", value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub ca: Option<PathBuf>,
}

/// Who holds the certificate `--tls-dir` should pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    Node(NodeId),
    Client,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Node(id) => write!(f, "node {id}"),
            Holder::Client => write!(f, "the client"),
        }
    }
}

impl TlsArgs {
    pub fn enabled(&self) -> bool {
        self.tls_dir.is_some() || self.cert.is_some()
    }

    /// The files to use for `holder`, if TLS is on.
    pub fn files(&self, holder: Holder) -> Option<TlsFiles> {
        if let Some(dir) = &self.tls_dir {
            let (cert, key) = match holder {
                Holder::Node(id) => (node_cert_file(id), node_key_file(id)),
                Holder::Client => (CLIENT_CERT_FILE.into(), CLIENT_KEY_FILE.into()),
            };
            return Some(TlsFiles {
                ca: dir.join(CA_CERT_FILE),
                cert: dir.join(cert),
                key: dir.join(key),
            });
        }
        match (&self.cert, &self.key, &self.ca) {
            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }

    /// Read and check the files for `holder`: `None` when TLS is off, an
    /// error naming the file when one is missing or not what it should be.
    pub fn load(&self, holder: Holder) -> Result<Option<Tls>, String> {
        if self.enabled() && self.files(holder).is_none() {
            return Err("--cert, --key and --ca go together".into());
        }
        self.files(holder).map(|f| f.load(holder)).transpose()
    }

    /// The same flags, for a child process.
    pub fn to_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        let mut add = |flag: &str, path: &Option<PathBuf>| {
            if let Some(path) = path {
                flags.push(flag.to_string());
                flags.push(path.display().to_string());
            }
        };
        add("--tls-dir", &self.tls_dir);
        add("--cert", &self.cert);
        add("--key", &self.key);
        add("--ca", &self.ca);
        flags
    }
}

/// Where a holder's CA, certificate and key are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    fn load(&self, holder: Holder) -> Result<Tls, String> {
        let ca = read(&self.ca)?;
        let cert = read(&self.cert)?;
        let key = read(&self.key)?;
        if CertificateDer::pem_slice_iter(&ca).next().is_none() {
            return Err(format!("{}: no PEM certificate in it", self.ca.display()));
        }
        let chain = certificates(&cert).map_err(|e| format!("{}: {e}", self.cert.display()))?;
        PrivateKeyDer::from_pem_slice(&key)
            .map_err(|e| format!("{}: not a PEM private key ({e})", self.key.display()))?;
        if let Holder::Node(id) = holder {
            if !names_node(&chain, id) {
                return Err(format!(
                    "{}: this certificate is not node {id}'s (it does not name {}); \
                     `raft-kv certs` writes one per node",
                    self.cert.display(),
                    node_name(id)
                ));
            }
        }
        let tls = Tls { ca, cert, key };
        tls.server_config().map_err(|e| {
            format!(
                "{}, {} and {}: {e}",
                self.cert.display(),
                self.key.display(),
                self.ca.display()
            )
        })?;
        Ok(tls)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate ({e})"))?;
    if chain.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(chain)
}

/// One holder's TLS material, read and checked: the CA, and its own
/// certificate and key (PEM).
#[derive(Clone)]
pub struct Tls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl fmt::Debug for Tls {
    // Never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls { .. }")
    }
}

impl Tls {
    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert, &self.key)
    }

    fn ca(&self) -> Certificate {
        Certificate::from_pem(&self.ca)
    }

    /// A node's listeners: its own certificate, and a certificate signed by
    /// the CA required of every connection (HTTP/2 only, as gRPC is).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        // ring, as tonic's `tls-ring` uses: aws-lc-rs (rustls' choice since
        // 0.23.48, for post-quantum key exchange) is a much heavier build.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in certificates(&self.ca)? {
            roots
                .add(ca)
                .map_err(|e| format!("the CA certificate cannot be used: {e}"))?;
        }
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("the CA certificate cannot be used: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| e.to_string())?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(clients)
            .with_single_cert(certificates(&self.cert)?, key)
            .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// The same for tonic's own TLS: in-process test servers use it.
    #[cfg(test)]
    pub fn tonic_server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(self.ca())
    }

    /// A node's connection to peer `peer`: the server must show `peer`'s
    /// certificate, whatever address it was reached at.
    pub fn peer_config(&self, peer: NodeId) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca())
            .identity(self.identity())
            .domain_name(node_name(peer))
    }

    /// A client's connection to a node: the node's certificate must name
    /// the host in the address the client dialled.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca())
            .identity(self.identity())
    }
}

/// The URL scheme of a node's address.
pub fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// Whether `chain`, a certificate chain a connection presented (its own
/// certificate first, already verified against the CA by rustls), is node
/// `id`'s.
pub fn names_node(chain: &[CertificateDer<'_>], id: NodeId) -> bool {
    let Some(own) = chain.first() else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node_name(id)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(own)
        .and_then(|cert| cert.verify_is_valid_for_subject_name(&name))
        .is_ok()
}
