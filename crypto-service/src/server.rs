//! Serving: binds nothing itself. The caller hands in a bound listener and a
//! shutdown future; this assembles health, reflection, the caller gate and
//! the crypto handlers, serves until shutdown, then drains within a deadline.

use std::future::Future;

use ops::health::ServingStatus;
use proto::crypto::crypto_service_server::CryptoServiceServer;
use tokio::net::{TcpListener, UnixListener};
use tonic::transport::server::Router;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::batch_limit::BatchLimitLayer;
use crate::config::Settings;
use crate::error::Error;
use crate::identity::GateLayer;
use crate::keyring::SharedKeyring;
use crate::service::Crypto;

/// The gRPC service name, as health checks and reflection know it.
pub const SERVICE_NAME: &str = "agentregistry.crypto.v1.CryptoService";

/// An already-bound listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A unix domain socket.
    Unix(UnixListener),
}

impl Listener {
    /// The bound address (`127.0.0.1:50061`, `unix:/run/crypto.sock`); with
    /// port 0 this is the port the system chose.
    pub fn local_description(&self) -> String {
        let described = match self {
            Self::Tcp(listener) => listener.local_addr().map(|addr| addr.to_string()),
            Self::Unix(listener) => listener.local_addr().map(|addr| match addr.as_pathname() {
                Some(path) => format!("unix:{}", path.display()),
                None => "unix:(unnamed)".to_owned(),
            }),
        };
        described.unwrap_or_else(|error| format!("(unknown: {})", error.kind()))
    }
}

/// Serves until `shutdown` completes, then flips health to NOT_SERVING,
/// stops accepting, and gives in-flight calls `settings.drain` to finish.
pub async fn serve(
    listener: Listener,
    settings: Settings,
    keyring: SharedKeyring,
    metrics: &ops::metrics::Metrics,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let (health, health_service) = ops::health::Reporter::new();
    let router = router(&settings, keyring, metrics, health_service)?;
    if settings.callers.insecure_dev() {
        tracing::warn!(
            "INSECURE DEVELOPMENT MODE (--insecure-dev-callers): every local caller may \
             encrypt, decrypt, import and retire keys; never run like this in production"
        );
    }
    health.set(ops::LIVENESS, ServingStatus::Serving);
    ops::shutdown::set_readiness(&health, &[SERVICE_NAME], ServingStatus::Serving);
    tracing::info!(
        listen = %listener.local_description(),
        tls = settings.tls.is_some(),
        "crypto-service serving"
    );

    let (stop_accepting, accepting_stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = accepting_stopped.await;
    };
    let server = async move {
        match listener {
            Listener::Tcp(listener) => {
                router
                    .serve_with_incoming_shutdown(ops::connection::tcp_incoming(listener), stopped)
                    .await
            }
            Listener::Unix(listener) => {
                router
                    .serve_with_incoming_shutdown(ops::connection::unix_incoming(listener), stopped)
                    .await
            }
        }
    };
    ops::shutdown::serve_and_drain(
        server,
        shutdown,
        &health,
        &[SERVICE_NAME],
        stop_accepting,
        settings.drain,
    )
    .await
    .map_err(Error::Serve)?;
    tracing::info!("crypto-service stopped");
    Ok(())
}

/// The tower layers around every service.
type Layers = tower::layer::util::Stack<ops::rpc::RpcLayer, tower::layer::util::Identity>;

/// The layers and services, outermost first.
fn router(
    settings: &Settings,
    keyring: SharedKeyring,
    metrics: &ops::metrics::Metrics,
    health_service: tonic_health::pb::health_server::HealthServer<ops::health::Service>,
) -> Result<Router<Layers>, Error> {
    let reflection =
        ops::reflection::Reflection::new(&[proto::FILE_DESCRIPTOR_SET], &[SERVICE_NAME])
            .map_err(|e| Error::Serve(format!("reflection: {e}")))?;

    // Size limits sit on the crypto service itself: its messages carry the
    // only large payloads. The gate (who may call which method) wraps only
    // this service, outside it, so a refused call costs no decoding, and
    // probes and reflection stay open to anyone who can connect.
    let handlers =
        Crypto::new(keyring, settings.limits).with_legacy_key(settings.legacy_key.clone());
    let crypto = CryptoServiceServer::new(handlers)
        .max_decoding_message_size(settings.limits.max_message_bytes);
    // A batch's items are counted as they arrive, before prost decodes them.
    let crypto = tower::Layer::layer(
        &BatchLimitLayer::new(settings.limits.max_batch_items),
        crypto,
    );
    let crypto = tower::Layer::layer(&GateLayer::new(settings.callers.clone()), crypto);

    // Outermost: a span, metrics and an access log line for every call,
    // refused ones included; a path this server does not serve is answered
    // UNIMPLEMENTED here and recorded as `unknown`.
    let methods = ops::rpc::Methods::served(proto::FILE_DESCRIPTOR_SET, &[SERVICE_NAME])
        .map_err(|e| Error::Serve(format!("descriptor set: {e}")))?;
    let mut builder = settings
        .grpc
        .server()
        .layer(ops::rpc::RpcLayer::new(metrics.rpc.clone(), methods));
    if let Some(tls) = &settings.tls {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&tls.cert_pem, tls.key_pem.as_slice()))
            .client_ca_root(Certificate::from_pem(&tls.client_ca_pem));
        builder = builder
            .tls_config(config)
            .map_err(|e| Error::config("CRYPTO_TLS_CERT_FILE", e.to_string()))?;
    }
    Ok(builder
        .add_service(health_service)
        .add_service(reflection.v1())
        .add_service(reflection.v1alpha())
        .add_service(crypto))
}
