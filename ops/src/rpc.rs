//! The outermost tower layer of both servers: one `tracing` span per RPC
//! (a child of the caller's W3C trace context), the per-method metrics, and
//! one log line per finished call with its status code and latency.
//!
//! All agentregistry RPCs are unary, and tonic sends a failed unary call as
//! a trailers-only response, so the status code is read from the response
//! headers; a response without `grpc-status` there is OK.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tracing::Instrument;

use crate::metrics::{MethodLabels, OutcomeLabels, RpcMetrics};
use crate::telemetry::adopt_remote_parent;

/// Adds spans, metrics and access logs to every call.
#[derive(Debug, Clone)]
pub struct RpcLayer {
    metrics: RpcMetrics,
}

impl RpcLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: RpcMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rpc {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// A service behind [`RpcLayer`].
#[derive(Debug, Clone)]
pub struct Rpc<S> {
    inner: S,
    metrics: RpcMetrics,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Rpc<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = request.uri().path().to_owned();
        let quiet = is_probe(&method);
        let span = tracing::info_span!(
            "rpc",
            otel.name = %method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %method,
            tenant = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        adopt_remote_parent(&span, request.headers());
        let labels = MethodLabels {
            method: method.clone(),
        };
        self.metrics.started.get_or_create(&labels).inc();
        let in_flight = InFlight::enter(&self.metrics, &labels);
        let metrics = self.metrics.clone();
        let started = Instant::now();
        // Entered while the inner layers take the request, so they can
        // record fields (the tenant) on this span.
        let response = {
            let _entered = span.enter();
            inner.call(request)
        };
        Box::pin(
            async move {
                let result = response.await;
                let elapsed = started.elapsed();
                let code = match &result {
                    Ok(response) => status_code(response.headers()),
                    Err(_) => tonic::Code::Unavailable,
                };
                drop(in_flight);
                metrics
                    .latency
                    .get_or_create(&labels)
                    .observe(elapsed.as_secs_f64());
                metrics
                    .handled
                    .get_or_create(&OutcomeLabels {
                        method: labels.method.clone(),
                        code: code_name(code),
                    })
                    .inc();
                let span = tracing::Span::current();
                span.record("rpc.grpc.status_code", code as i32);
                let latency_ms = elapsed.as_secs_f64() * 1e3;
                if quiet {
                    tracing::debug!(code = ?code, latency_ms, "rpc finished");
                } else {
                    tracing::info!(code = ?code, latency_ms, "rpc finished");
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Health checks and reflection are logged at debug only.
fn is_probe(method: &str) -> bool {
    method.starts_with("/grpc.health.") || method.starts_with("/grpc.reflection.")
}

fn status_code(headers: &http::HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

/// Status code names as gRPC's own metrics spell them.
pub fn code_name(code: tonic::Code) -> String {
    match code {
        tonic::Code::Ok => "OK".to_owned(),
        other => format!("{other:?}"),
    }
}

/// Counts a call as in flight until dropped (also when cancelled).
struct InFlight {
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl InFlight {
    fn enter(metrics: &RpcMetrics, labels: &MethodLabels) -> Self {
        let gauge = metrics.in_flight.get_or_create(labels).clone();
        gauge.inc();
        Self { gauge }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
