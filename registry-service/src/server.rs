//! Serving: the caller binds the listeners and owns shutdown; this
//! assembles health, reflection and the registry services, serves them (in
//! TLS when configured) until shutdown, then flips health to NOT_SERVING
//! and drains within a deadline. A second, plaintext listener may serve
//! grpc.health.v1 alone with the same statuses, for probes that cannot
//! speak TLS; it answers until the drain is over.

use std::future::Future;
use std::sync::Arc;

use ops::tls::ReloadingTls;

use ops::health::ServingStatus;
use proto::v1::agent_service_server::AgentServiceServer;
use proto::v1::audit_service_server::AuditServiceServer;
use proto::v1::key_service_server::KeyServiceServer;
use proto::v1::label_policy_service_server::LabelPolicyServiceServer;
use proto::v1::provider_service_server::ProviderServiceServer;
use proto::v1::runtime_service_server::RuntimeServiceServer;
use proto::v1::watch_service_server::WatchServiceServer;
use tokio::net::TcpListener;

use crate::api::Registry;
use crate::auth::{AuthLayer, Authenticator};
use crate::config::Settings;
use crate::error::Error;
use crate::readiness;
use crate::telemetry::RegistryMetrics;
use ops::metrics::Metrics;

/// The service names health checks and reflection know.
pub const SERVICE_NAMES: [&str; 7] = [
    "agentregistry.v1.AgentService",
    "agentregistry.v1.ProviderService",
    "agentregistry.v1.RuntimeService",
    "agentregistry.v1.KeyService",
    "agentregistry.v1.WatchService",
    "agentregistry.v1.LabelPolicyService",
    "agentregistry.v1.AuditService",
];

/// Where the registry serves.
#[derive(Debug)]
pub struct Listeners {
    /// Every service; TLS when `tls` is set.
    pub grpc: TcpListener,
    /// The TLS configuration each new connection to `grpc` takes.
    pub tls: Option<Arc<ReloadingTls>>,
    /// grpc.health.v1 only, plaintext.
    pub health: Option<TcpListener>,
}

/// Serves until `shutdown` completes, then drains within `settings.drain`.
/// Readiness follows the background dependency check; liveness is SERVING
/// for as long as the process runs.
pub async fn serve(
    listeners: Listeners,
    settings: &Settings,
    registry: Registry,
    authenticator: Arc<Authenticator>,
    metrics: &Metrics,
    registry_metrics: RegistryMetrics,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let (health, health_service) = ops::health::Reporter::new();
    let reflection =
        ops::reflection::Reflection::new(&[proto::FILE_DESCRIPTOR_SET], &SERVICE_NAMES)
            .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    let limit = settings.max_message_bytes;
    let methods = ops::rpc::Methods::served(proto::FILE_DESCRIPTOR_SET, &SERVICE_NAMES)
        .map_err(|e| Error::Internal(format!("descriptor set: {e}")))?;
    let router = settings
        .grpc
        .server()
        // grpc-web also over HTTP/1.1: a browser speaks HTTP/2 only over TLS.
        .accept_http1(true)
        // Outermost: browsers' CORS preflights carry no token and are no
        // calls, so they are answered here, before auth and uncounted.
        .layer(crate::cors::CorsLayer::new(
            settings.grpc_web_allowed_origins.clone(),
        ))
        // grpc-web becomes gRPC here, so every layer below (metrics, auth,
        // message limits) sees one protocol, trailers included.
        .layer(tonic_web::GrpcWebLayer::new())
        // Then: a span (child of the caller's trace), metrics and an
        // access log line for every call, refused ones included; a path
        // this server does not serve is answered UNIMPLEMENTED here, before
        // authentication, and recorded as `unknown`.
        .layer(ops::rpc::RpcLayer::new(metrics.rpc.clone(), methods))
        // Then: no call reaches a handler without a verified caller whose
        // roles allow the method (health and reflection excepted).
        // An admitted call over its tenant's rate (when one is set) is
        // refused there too, before its body is decoded: no tenant's flood
        // reaches the handlers and the database every tenant shares.
        .layer(AuthLayer::new(authenticator, settings.tenant_rate))
        .add_service(health_service.clone())
        .add_service(reflection.v1())
        .add_service(reflection.v1alpha())
        .add_service(AgentServiceServer::new(registry.clone()).max_decoding_message_size(limit))
        .add_service(ProviderServiceServer::new(registry.clone()).max_decoding_message_size(limit))
        .add_service(RuntimeServiceServer::new(registry.clone()).max_decoding_message_size(limit))
        .add_service(KeyServiceServer::new(registry.clone()).max_decoding_message_size(limit))
        .add_service(WatchServiceServer::new(registry.clone()).max_decoding_message_size(limit))
        .add_service(
            LabelPolicyServiceServer::new(registry.clone()).max_decoding_message_size(limit),
        )
        .add_service(AuditServiceServer::new(registry.clone()).max_decoding_message_size(limit));

    health.set(ops::LIVENESS, ServingStatus::Serving);
    // Not ready until the first dependency check has passed.
    ops::shutdown::set_readiness(&health, &SERVICE_NAMES, ServingStatus::NotServing);
    let watcher = tokio::spawn(readiness::watch(
        registry.db.clone(),
        registry.crypto.clone(),
        health.clone(),
        registry_metrics,
        settings.health_interval,
    ));
    // Health alone, no auth (it has no token to check), the same statuses.
    let health_only = listeners
        .health
        .map(|listener| {
            let listen = address(&listener);
            let server = settings
                .grpc
                .server()
                .add_service(health_service)
                .serve_with_incoming(ops::connection::tcp_incoming(listener));
            tracing::info!(%listen, "registry-service health serving");
            tokio::spawn(server)
        })
        .map(AbortOnDrop);

    let listen = address(&listeners.grpc);
    let (stop_accepting, accepting_stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = accepting_stopped.await;
    };
    let server: ServerFuture = match listeners.tls {
        Some(tls) => {
            tracing::info!(
                %listen,
                client_certificates = tls.requires_client_certificates(),
                "registry-service serving"
            );
            Box::pin(router.serve_with_incoming_shutdown(
                ops::connection::tls_incoming(listeners.grpc, move || tls.config()),
                stopped,
            ))
        }
        None => {
            tracing::info!(%listen, "registry-service serving");
            Box::pin(router.serve_with_incoming_shutdown(
                ops::connection::tcp_incoming(listeners.grpc),
                stopped,
            ))
        }
    };
    let feed = tokio::spawn(registry.feed.clone().run());
    // Purges what was deleted longer ago than the retention period.
    let retention = tokio::spawn(crate::retention::run(
        registry.db.clone(),
        settings.retention,
    ));
    // Chains new audit events and deletes expired ones.
    let audit_upkeep = tokio::spawn(crate::store::audit::upkeep(
        registry.db.clone(),
        settings.audit.retention,
        settings.audit.seal_interval,
    ));
    // Request ids past their retention go in the background (AIP-155).
    let prune_request_ids = tokio::spawn(crate::api::retries::prune_expired(
        registry.db.clone(),
        registry.retries.retention(),
    ));
    // SQLite's planner statistics follow the tables' growth (a List filter
    // that ORs two fields needs them); PostgreSQL gathers its own.
    let statistics = tokio::spawn(crate::store::statistics::keep_fresh(
        registry.db.clone(),
        settings.sqlite_statistics_interval,
    ));
    // The dependency check stops before readiness flips for the drain, so
    // it cannot flip it back. Watch streams end at once (UNAVAILABLE: the
    // caller resumes elsewhere): they would otherwise hold the drain to its
    // deadline.
    let shutdown = async {
        shutdown.await;
        watcher.abort();
        registry.feed.shut_down();
    };
    ops::shutdown::serve_and_drain(
        server,
        shutdown,
        &health,
        &SERVICE_NAMES,
        stop_accepting,
        settings.drain,
    )
    .await
    .map_err(|e| Error::Internal(format!("server: {e}")))?;
    // Probes see NOT_SERVING until here; then the health port closes too.
    drop(health_only);
    prune_request_ids.abort();
    statistics.abort();
    feed.abort();
    retention.abort();
    audit_upkeep.abort();
    tracing::info!("registry-service stopped");
    Ok(())
}

/// The gRPC server, over plaintext or TLS connections.
type ServerFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>>>>;

/// Aborts the task when dropped, so the health server ends with `serve`
/// whichever way it returns.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), tonic::transport::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn address(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_else(|e| format!("(unknown: {})", e.kind()))
}
