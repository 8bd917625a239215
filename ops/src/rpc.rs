//! The outermost tower layer of both servers: one `tracing` span per RPC
//! (a child of the caller's W3C trace context), the per-method metrics, and
//! one log line per finished call with its status code and latency.
//!
//! Everything this layer records is bounded before any other layer runs:
//! metric labels and span names come only from [`Methods`], the paths the
//! server really serves. A call to any other path is answered UNIMPLEMENTED
//! here, recorded under the one method name [`UNKNOWN_METHOD`], and never
//! reaches authentication or a handler. Refused calls (UNIMPLEMENTED,
//! UNAUTHENTICATED, PERMISSION_DENIED) are counted like every call but
//! logged at INFO at most once a second ([`RefusalLog`]), so a flood of
//! them costs neither memory nor log volume.
//!
//! All agentregistry RPCs are unary, and tonic sends a failed unary call as
//! a trailers-only response, so the status code is read from the response
//! headers; a response without `grpc-status` there is OK.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use prost::Message;
use tonic::codegen::http;
use tracing::Instrument;

use crate::metrics::{MethodLabels, OutcomeLabels, RpcMetrics};
use crate::telemetry::adopt_remote_parent;

/// The method label and span name of every call to a path the server does
/// not serve.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The paths both servers serve besides their own services: gRPC health
/// and server reflection (v1 and v1alpha).
const STANDARD_METHODS: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The method paths (`/package.Service/Method`) one server serves: the only
/// values its metric labels and span names take.
#[derive(Debug, Clone)]
pub struct Methods {
    paths: Arc<HashSet<&'static str>>,
}

impl Methods {
    /// Health, reflection, and every method of `services` found in the
    /// encoded `FileDescriptorSet` `descriptors`. Built once at start-up,
    /// so the few strings are kept for the life of the process.
    pub fn served(descriptors: &[u8], services: &[&str]) -> Result<Self, prost::DecodeError> {
        let set = prost_types::FileDescriptorSet::decode(descriptors)?;
        let mut paths: HashSet<&'static str> = STANDARD_METHODS.into_iter().collect();
        for file in &set.file {
            for service in &file.service {
                let full_name = match &file.package {
                    Some(package) if !package.is_empty() => {
                        format!("{package}.{}", service.name())
                    }
                    _ => service.name().to_owned(),
                };
                if !services.contains(&full_name.as_str()) {
                    continue;
                }
                for method in &service.method {
                    let path = format!("/{full_name}/{}", method.name());
                    paths.insert(Box::leak(path.into_boxed_str()));
                }
            }
        }
        Ok(Self {
            paths: Arc::new(paths),
        })
    }

    /// The label for `path`: the served path itself, or [`UNKNOWN_METHOD`].
    pub fn label(&self, path: &str) -> Option<&'static str> {
        self.paths.get(path).copied()
    }

    /// Every served path, sorted.
    pub fn paths(&self) -> Vec<&'static str> {
        let mut paths: Vec<&'static str> = self.paths.iter().copied().collect();
        paths.sort_unstable();
        paths
    }
}

/// Adds spans, metrics and access logs to every call, and answers calls to
/// unknown paths.
#[derive(Debug, Clone)]
pub struct RpcLayer {
    metrics: RpcMetrics,
    methods: Methods,
    refusals: Arc<RefusalLog>,
}

impl RpcLayer {
    /// A layer for a server serving `methods`, recording into `metrics`.
    pub fn new(metrics: RpcMetrics, methods: Methods) -> Self {
        Self {
            metrics,
            methods,
            refusals: Arc::new(RefusalLog::default()),
        }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = Rpc<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Rpc {
            inner,
            metrics: self.metrics.clone(),
            methods: self.methods.clone(),
            refusals: Arc::clone(&self.refusals),
        }
    }
}

/// A service behind [`RpcLayer`].
#[derive(Debug, Clone)]
pub struct Rpc<S> {
    inner: S,
    metrics: RpcMetrics,
    methods: Methods,
    refusals: Arc<RefusalLog>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Rpc<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
    R: Default + Send + 'static,
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
        let known = self.methods.label(request.uri().path());
        let method = known.unwrap_or(UNKNOWN_METHOD);
        let span = tracing::info_span!(
            "rpc",
            otel.name = method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = method,
            tenant = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        adopt_remote_parent(&span, request.headers());
        let labels = MethodLabels { method };
        self.metrics.started.get_or_create(&labels).inc();
        let in_flight = InFlight::enter(&self.metrics, &labels);
        let metrics = self.metrics.clone();
        let refusals = Arc::clone(&self.refusals);
        let started = Instant::now();
        // Entered while the inner layers take the request, so they can
        // record fields (the tenant) on this span. An unknown path goes no
        // further than this layer.
        let response = {
            let _entered = span.enter();
            match known {
                Some(_) => Box::pin(inner.call(request)) as BoxFuture<_, _>,
                None => Box::pin(async move {
                    read_off(request.into_body()).await;
                    Ok(tonic::Status::unimplemented(
                        "unknown method: this server does not serve that path",
                    )
                    .into_http())
                }),
            }
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
                        method,
                        code: code_name(code),
                    })
                    .inc();
                let span = tracing::Span::current();
                span.record("rpc.grpc.status_code", code as i32);
                let latency_ms = elapsed.as_secs_f64() * 1e3;
                if is_refusal(code) {
                    refusals.record(method, code, latency_ms);
                } else if is_probe(method) {
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

/// The most of an unknown call's body read before it is answered, and how
/// long that may take.
const READ_OFF_BYTES: usize = 64 * 1024;
const READ_OFF_TIME: std::time::Duration = std::time::Duration::from_millis(500);

/// Reads a request body that no handler will read (an unknown method, a
/// refused caller), up to [`READ_OFF_BYTES`]
/// or [`READ_OFF_TIME`], and drops it. Answering before the client's DATA
/// frames are read leaves them counted against the connection by HTTP/2's
/// flood guard (h2 answers a flood of such calls with GOAWAY
/// ENHANCE_YOUR_CALM, ending the honest calls on the same connection too),
/// and races the client's own send of the body.
pub async fn read_off<B>(mut body: B)
where
    B: http_body::Body + Unpin,
{
    use http_body_util::BodyExt;
    let reading = async {
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                read = read.saturating_add(bytes_in(data));
            }
            if read > READ_OFF_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(READ_OFF_TIME, reading).await;
}

fn bytes_in(data: &impl prost::bytes::Buf) -> usize {
    data.remaining()
}

/// Logs refused calls at INFO at most once a second, each line with the
/// number of refusals since the previous one; the rest at DEBUG.
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// Milliseconds since `epoch` after which the next INFO line may go.
    next_line_at_ms: AtomicU64,
    /// Refusals not logged at INFO since the last line.
    unlogged: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl RefusalLog {
    /// The shortest time between two INFO lines.
    const INTERVAL_MS: u64 = 1_000;

    fn record(&self, method: &str, code: tonic::Code, latency_ms: f64) {
        let epoch = *self.epoch.get_or_init(Instant::now);
        let now_ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = self.next_line_at_ms.load(Ordering::Relaxed);
        let mine = now_ms >= due
            && self
                .next_line_at_ms
                .compare_exchange(
                    due,
                    now_ms.saturating_add(Self::INTERVAL_MS),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if mine {
            let also_refused = self.unlogged.swap(0, Ordering::Relaxed);
            tracing::info!(
                code = ?code,
                method,
                latency_ms,
                also_refused,
                "rpc refused (one line a second at most; also_refused counts the calls refused since the last line, grpc_server_handled counts them all)"
            );
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(code = ?code, method, latency_ms, "rpc refused");
        }
    }
}

/// Codes that refuse a caller before any work: logged by [`RefusalLog`].
fn is_refusal(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unimplemented | tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    )
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
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "Cancelled",
        tonic::Code::Unknown => "Unknown",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::DeadlineExceeded => "DeadlineExceeded",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::AlreadyExists => "AlreadyExists",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Aborted => "Aborted",
        tonic::Code::OutOfRange => "OutOfRange",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::DataLoss => "DataLoss",
        tonic::Code::Unauthenticated => "Unauthenticated",
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
