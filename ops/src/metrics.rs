//! Prometheus metrics: the per-RPC series every gRPC server records (named
//! and labelled as go-grpc-prometheus names them, so existing gRPC
//! dashboards and alerts work unchanged; recorded by [`crate::rpc`]), the
//! process's own series ([`crate::process`]), a build-info gauge, any
//! service-specific series registered at construction, and an HTTP endpoint
//! serving them at `/metrics`.
//!
//! The endpoint negotiates the format: the classic Prometheus text format
//! (`text/plain; version=0.0.4`) unless the `Accept` header asks for
//! OpenMetrics (`application/openmetrics-text`), which is what Prometheus
//! itself asks for first.

use std::future::Future;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Labels of per-method series: go-grpc-prometheus's `grpc_type`,
/// `grpc_service` and `grpc_method`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`
    /// (`unknown` for a path the server does not serve).
    pub grpc_type: &'static str,
    /// The full service name (`agentregistry.v1.AgentService`), or `unknown`.
    pub grpc_service: &'static str,
    /// The method name (`CreateAgent`), or `unknown`.
    pub grpc_method: &'static str,
}

/// Labels of per-method, per-outcome series: [`MethodLabels`] and the
/// status code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// As in [`MethodLabels`].
    pub grpc_type: &'static str,
    /// As in [`MethodLabels`].
    pub grpc_service: &'static str,
    /// As in [`MethodLabels`].
    pub grpc_method: &'static str,
    /// The status code as grpc-go spells it (`OK`, `NotFound` …:
    /// [`crate::rpc::code_name`]).
    pub grpc_code: &'static str,
}

impl MethodLabels {
    /// These labels with the status code `code`.
    pub fn with_code(&self, code: tonic::Code) -> OutcomeLabels {
        OutcomeLabels {
            grpc_type: self.grpc_type,
            grpc_service: self.grpc_service,
            grpc_method: self.grpc_method,
            grpc_code: crate::rpc::code_name(code),
        }
    }
}

/// A latency histogram family ([`latency_histogram`] buckets).
pub type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets in seconds: 0.5 ms to 60 s, so a call that runs to the
/// server's deadline (30 s by default) still falls in a bucket of its own
/// rather than only in `+Inf`.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    30.0, 60.0,
];

/// A histogram with [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The series every gRPC server records.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    pub(crate) started: Family<MethodLabels, Counter>,
    pub(crate) handled: Family<OutcomeLabels, Counter>,
    pub(crate) latency: LatencyFamily<MethodLabels>,
    pub(crate) in_flight: Family<MethodLabels, Gauge>,
}

/// What `agentregistry_build_info` says about the running binary.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    service: &'static str,
    version: &'static str,
    /// The commit, when the build had `GIT_COMMIT` set (the Dockerfile
    /// passes it); `unknown` otherwise.
    commit: &'static str,
}

/// Labels of scrapes.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScrapeLabels {
    /// `classic` or `openmetrics`.
    format: &'static str,
}

/// A service's metrics registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// The per-RPC series, for [`crate::rpc::RpcLayer`].
    pub rpc: RpcMetrics,
    scrapes: Family<ScrapeLabels, Counter>,
}

impl Metrics {
    /// The standard gRPC, process and build series of `service` (the
    /// binary's name), plus whatever `extra` registers.
    pub fn new(service: &'static str, extra: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::default();
        let rpc = RpcMetrics {
            started: Family::default(),
            handled: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
        };
        registry.register(
            "grpc_server_started",
            "Total number of RPCs started on the server",
            rpc.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            rpc.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            rpc.latency.clone(),
        );
        registry.register(
            "grpc_server_in_flight",
            "RPCs being handled by the server now",
            rpc.in_flight.clone(),
        );
        registry.register(
            "agentregistry_build",
            "The running binary: service, version and commit (always 1)",
            Info::new(BuildLabels {
                service,
                version: env!("CARGO_PKG_VERSION"),
                commit: option_env!("GIT_COMMIT")
                    .filter(|c| !c.is_empty())
                    .unwrap_or("unknown"),
            }),
        );
        let scrapes = Family::default();
        registry.register(
            "agentregistry_metrics_scrapes",
            "Scrapes of /metrics, by format (scrapes are not logged above DEBUG)",
            scrapes.clone(),
        );
        registry.register_collector(Box::new(crate::process::Collector::new()));
        extra(&mut registry);
        Self {
            registry: Arc::new(registry),
            rpc,
            scrapes,
        }
    }

    /// Every series in `format`, counting the scrape first (so it counts
    /// itself) and logging it at DEBUG.
    pub fn scrape(&self, format: Format) -> String {
        let name = match format {
            Format::Classic => "classic",
            Format::OpenMetrics => "openmetrics",
        };
        self.scrapes
            .get_or_create(&ScrapeLabels { format: name })
            .inc();
        tracing::debug!(format = name, "metrics scraped");
        self.render(format)
    }

    /// Every series in `format`.
    pub fn render(&self, format: Format) -> String {
        let mut text = String::new();
        let encoded = match format {
            Format::Classic => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut text, &self.registry)
            }
        };
        if encoded.is_err() {
            text.clear();
        }
        text
    }
}

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4: what every scraper reads.
    Classic,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` with a quality above 0, the classic
    /// text otherwise (also without a header, as `curl` sends).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let wants_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or_default();
                let refused = parts.any(|parameter| {
                    parameter
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f64>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if wants_openmetrics {
            Self::OpenMetrics
        } else {
            Self::Classic
        }
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Classic => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes. Scrapes
/// are counted but logged at DEBUG only: they come every few seconds and
/// say nothing new.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::{HeaderMap, header};
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: HeaderMap| {
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|value| value.to_str().ok());
            let format = Format::negotiate(accept);
            let body = metrics.scrape(format);
            async move { ([(header::CONTENT_TYPE, format.content_type())], body) }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_is_the_default_and_openmetrics_is_asked_for() {
        assert_eq!(Format::negotiate(None), Format::Classic);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Classic);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4;q=1,*/*;q=0.1")),
            Format::Classic
        );
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0")),
            Format::Classic
        );
    }

    #[test]
    fn both_formats_name_the_standard_series() {
        let metrics = Metrics::new("test-service", |_| {});
        let labels = MethodLabels {
            grpc_type: "unary",
            grpc_service: "pkg.Svc",
            grpc_method: "M",
        };
        metrics.rpc.started.get_or_create(&labels).inc();
        metrics
            .rpc
            .handled
            .get_or_create(&labels.with_code(tonic::Code::Ok))
            .inc();
        let classic = metrics.render(Format::Classic);
        assert!(classic.contains(
            r#"grpc_server_handled_total{grpc_type="unary",grpc_service="pkg.Svc",grpc_method="M",grpc_code="OK"} 1"#
        ), "{classic}");
        assert!(
            classic.contains("# TYPE process_cpu_seconds_total counter"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
        let open = metrics.render(Format::OpenMetrics);
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(
            open.contains("agentregistry_build_info{service=\"test-service\""),
            "{open}"
        );
    }
}
