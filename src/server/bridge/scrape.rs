//! `--metrics-addr`: Prometheus scrapes `GET /metrics` here, over HTTP/1.1,
//! on the bridge's runtime. A scrape reads the metrics' atomics; it never
//! asks the event loop anything.

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use log::{info, warn};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::raft::NodeId;

/// What the text is: OpenMetrics, which Prometheus reads (and asks for).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serve `registry` at `/metrics` on `listener` until `stopping` turns true.
pub async fn serve(
    id: NodeId,
    listener: std::net::TcpListener,
    registry: Registry,
    mut stopping: watch::Receiver<bool>,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(listener) => listener,
        Err(e) => {
            warn!("node {id}: no metrics: cannot use the listening socket: {e}");
            return;
        }
    };
    if let Ok(address) = listener.local_addr() {
        info!("node {id}: metrics at http://{address}/metrics");
    }
    let registry = Arc::new(registry);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move { ([(CONTENT_TYPE, OPENMETRICS)], encode(&registry)) }
        }),
    );
    let stop = async move {
        let _ = stopping.wait_for(|&stop| stop).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        warn!("node {id}: the metrics endpoint stopped: {e}");
    }
}

fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}
