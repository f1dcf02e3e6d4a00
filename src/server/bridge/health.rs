//! The standard gRPC services beside `raftkv.KeyValue` on the client
//! listener: health checking (`grpc.health.v1.Health`), answered from what
//! the event loop last published, and server reflection, which describes
//! the client API to tools such as grpcurl (docs/api.md).

use log::debug;
use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::proto::kv::key_value_server::SERVICE_NAME;
use crate::raft::NodeId;
use crate::server::metrics::Leadership;

/// The names a client may ask about: the whole server ("") and the client
/// service. Both follow the same rule.
const SERVICES: [&str; 2] = ["", SERVICE_NAME];

/// Mirror `leadership` into the health service until the event loop stops:
/// SERVING while the node knows a leader of its current term, NOT_SERVING
/// otherwise ([`Leadership::serving`]). The first status is set before this
/// returns, so no check is answered before it.
pub async fn report(
    id: NodeId,
    reporter: HealthReporter,
    mut leadership: watch::Receiver<Leadership>,
) {
    let mut serving = leadership.borrow_and_update().serving();
    set(&reporter, serving).await;
    tokio::spawn(async move {
        while leadership.changed().await.is_ok() {
            let now = leadership.borrow_and_update().serving();
            if now != serving {
                serving = now;
                debug!(
                    "node {id}: health: {}",
                    if now { "serving" } else { "not serving" }
                );
                set(&reporter, now).await;
            }
        }
    });
}

async fn set(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for service in SERVICES {
        reporter.set_service_status(service, status).await;
    }
}

/// Server reflection of the client API, the health service and reflection
/// itself, in both versions of the protocol (grpcurl asks for v1 first;
/// older tools only know v1alpha). The peer protocol is not described: it
/// is for members only, and not served at all on a port of clients' own.
pub fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    String,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::kv::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = builder().build_v1().map_err(|e| e.to_string())?;
    let v1alpha = builder().build_v1alpha().map_err(|e| e.to_string())?;
    Ok((v1, v1alpha))
}
