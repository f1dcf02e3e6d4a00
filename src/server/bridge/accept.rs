//! The TLS side of a node's listeners: each connection's handshake, done
//! here rather than inside tonic so that a refused one is logged with the
//! address it came from (no certificate, or one the cluster's CA did not
//! sign). Handshakes run side by side, a bounded number at a time, each with
//! a deadline: a client that connects and says nothing holds one slot for
//! [`HANDSHAKE_TIMEOUT`], never the listener.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use log::debug;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{rustls, TlsAcceptor};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

use super::refusals::Refusals;
use crate::raft::NodeId;

/// Handshakes in progress at once; connections beyond are closed.
const MAX_HANDSHAKES: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed accept (out of file descriptors, say), wait before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// The connections of `listener` that completed a TLS handshake with
/// `config`, as tonic's server takes them.
pub fn tls_incoming(
    id: NodeId,
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    refusals: Refusals,
) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let (connections, incoming) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        while !connections.is_closed() {
            let (stream, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!("node {id}: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let Ok(slot) = handshakes.clone().try_acquire_owned() else {
                refusals.warn(format!("busy {}", remote.ip()), || {
                    format!(
                        "node {id}: closed a connection from {remote}: \
                         {MAX_HANDSHAKES} TLS handshakes are in progress already"
                    )
                });
                continue;
            };
            let (acceptor, connections, refusals) =
                (acceptor.clone(), connections.clone(), refusals.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let refused = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(tls)) => {
                        let _ = connections.send(Ok(tls)).await;
                        return;
                    }
                    Ok(Err(e)) => format!("the TLS handshake failed: {}", explain(&e)),
                    Err(_) => format!("no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()),
                };
                refusals.warn(format!("tls {} {refused}", remote.ip()), || {
                    format!("node {id}: refused a connection from {remote}: {refused}")
                });
            });
        }
    });
    ReceiverStream::new(incoming)
}

/// A failed handshake in the words of the usual causes.
fn explain(error: &io::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error, InvalidMessage};
    let why = match error.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::InvalidMessage(InvalidMessage::InvalidContentType)) => {
            "it does not speak TLS (a client or node without --tls-dir?)"
        }
        Some(Error::NoCertificatesPresented) => "it showed no certificate",
        Some(Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => "its certificate is not signed by this cluster's CA",
        Some(Error::InvalidCertificate(CertificateError::Expired)) => "its certificate has expired",
        Some(Error::AlertReceived(
            AlertDescription::UnknownCA | AlertDescription::BadCertificate,
        )) => "it does not trust this node's certificate (it has another CA?)",
        _ => return error.to_string(),
    };
    format!("{why} ({error})")
}
