//! Prometheus metrics: per-method request, outcome and latency series for
//! every gRPC call (recorded by [`crate::rpc`]), any service-specific
//! series registered at construction, and an HTTP endpoint serving them as
//! Prometheus text at `/metrics`.

use std::future::Future;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-method series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `/package.Service/Method`, or `unknown` ([`crate::rpc::UNKNOWN_METHOD`]).
    pub method: &'static str,
}

/// Labels of per-method, per-outcome series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `/package.Service/Method`, or `unknown` ([`crate::rpc::UNKNOWN_METHOD`]).
    pub method: &'static str,
    /// The gRPC status code name (`OK`, `NotFound` …).
    pub code: &'static str,
}

/// A histogram family with latency buckets from 0.1 ms to about 3 s.
pub type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets in seconds: 0.1 ms doubling to about 3.3 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The series every gRPC server records.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    pub(crate) started: Family<MethodLabels, Counter>,
    pub(crate) handled: Family<OutcomeLabels, Counter>,
    pub(crate) latency: LatencyFamily<MethodLabels>,
    pub(crate) in_flight: Family<MethodLabels, Gauge>,
}

/// A service's metrics registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// The per-RPC series, for [`crate::rpc::RpcLayer`].
    pub rpc: RpcMetrics,
}

impl Metrics {
    /// The standard gRPC series, plus whatever `extra` registers.
    pub fn new(extra: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::default();
        let rpc = RpcMetrics {
            started: Family::default(),
            handled: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
        };
        registry.register(
            "grpc_server_started",
            "gRPC calls started, by method",
            rpc.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "gRPC calls completed, by method and status code (errors are every code but OK)",
            rpc.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "gRPC call latency until the response, by method",
            rpc.latency.clone(),
        );
        registry.register(
            "grpc_server_in_flight",
            "gRPC calls being handled now, by method",
            rpc.in_flight.clone(),
        );
        extra(&mut registry);
        Self {
            registry: Arc::new(registry),
            rpc,
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let body = metrics.render();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `address` and serves `/metrics` there in the background for the
/// life of the process, logging the bound address ("metrics serving",
/// field `listen`). The error is the bind failure.
pub async fn spawn(address: std::net::SocketAddr, metrics: Metrics) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tracing::info!(listen = %bound, "metrics serving");
    tokio::spawn(async move {
        if let Err(error) = serve(listener, metrics, std::future::pending()).await {
            tracing::error!(%error, "metrics endpoint failed");
        }
    });
    Ok(())
}
