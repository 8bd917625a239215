//! Serving: the caller binds the listener and owns shutdown; this assembles
//! health, reflection and the three registry services, serves until
//! shutdown, then flips health to NOT_SERVING and drains within a deadline.

use std::future::Future;
use std::sync::Arc;

use proto::v1::agent_service_server::AgentServiceServer;
use proto::v1::provider_service_server::ProviderServiceServer;
use proto::v1::runtime_service_server::RuntimeServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::Registry;
use crate::auth::{AuthLayer, Authenticator};
use crate::config::Settings;
use crate::error::Error;

/// The service names health checks and reflection know.
pub const SERVICE_NAMES: [&str; 3] = [
    "agentregistry.v1.AgentService",
    "agentregistry.v1.ProviderService",
    "agentregistry.v1.RuntimeService",
];

/// Serves until `shutdown` completes, then drains within `settings.drain`.
pub async fn serve(
    listener: TcpListener,
    settings: &Settings,
    registry: Registry,
    authenticator: Arc<Authenticator>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
    let limit = settings.max_message_bytes;
    let router = Server::builder()
        // Outermost: no call reaches a handler without a verified caller
        // whose roles allow the method (health and reflection excepted).
        .layer(AuthLayer::new(authenticator))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AgentServiceServer::new(registry.clone()).max_decoding_message_size(limit))
        .add_service(ProviderServiceServer::new(registry.clone()).max_decoding_message_size(limit))
        .add_service(RuntimeServiceServer::new(registry).max_decoding_message_size(limit));

    set_health(&health, ServingStatus::Serving).await;
    let listen = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_else(|e| format!("(unknown: {})", e.kind()));
    tracing::info!(%listen, "registry-service serving");

    let (stop_accepting, accepting_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
        let _ = accepting_stopped.await;
    });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(|e| Error::Internal(format!("server: {e}"))),
        () = shutdown => {}
    }
    tracing::info!(drain = ?settings.drain, "shutting down: draining in-flight calls");
    set_health(&health, ServingStatus::NotServing).await;
    let _ = stop_accepting.send(());
    match tokio::time::timeout(settings.drain, server).await {
        Ok(result) => result.map_err(|e| Error::Internal(format!("server: {e}")))?,
        Err(_) => tracing::warn!("drain deadline passed; dropping the calls still running"),
    }
    tracing::info!("registry-service stopped");
    Ok(())
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

fn reflection_error(error: tonic_reflection::server::Error) -> Error {
    Error::Internal(format!("reflection: {error}"))
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in SERVICE_NAMES {
        health.set_service_status(name, status).await;
    }
}
