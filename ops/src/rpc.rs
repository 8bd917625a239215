//! The outermost tower layer of both servers: one `tracing` span per RPC
//! (a child of the caller's W3C trace context), the per-method metrics
//! (go-grpc-prometheus's names and labels: [`crate::metrics`]), and one
//! log line per finished call with its status code and latency.
//!
//! Everything this layer records is bounded before any other layer runs:
//! metric labels and span names come only from [`Methods`], the methods the
//! server really serves. A call to any other path is answered UNIMPLEMENTED
//! here, recorded under the one method [`UNKNOWN`] (service, method and
//! type all `unknown`), and never reaches authentication or a handler.
//! Refused calls (UNIMPLEMENTED, UNAUTHENTICATED, PERMISSION_DENIED) are
//! counted like every call but logged at INFO at most once a second
//! ([`RefusalLog`]), so a flood of them costs neither memory nor log
//! volume. Probes (health, reflection) and calls a handler marks [`Quiet`]
//! (the registry's key canary) are counted and logged at DEBUG only.
//!
//! A call is finished when its status is known: from the response headers
//! for a trailers-only response (how tonic sends a failed unary call), else
//! from the trailers at the end of the response body, so a stream (health
//! Watch, reflection) is counted, timed and logged when it ends, with the
//! code it ended with. A body dropped before its trailers is `Canceled`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use prost::Message;
use tonic::codegen::http;
use tracing::Instrument;

use crate::metrics::{MethodLabels, RpcMetrics};
use crate::telemetry::adopt_remote_parent;

/// One method a server serves, as its metrics and spans name it.
#[derive(Debug)]
pub struct Method {
    /// `/package.Service/Method`: the span name and the log field.
    pub path: &'static str,
    /// Its metric labels.
    pub labels: MethodLabels,
}

/// Every call to a path the server does not serve.
pub static UNKNOWN: Method = Method {
    path: "unknown",
    labels: MethodLabels {
        grpc_type: "unknown",
        grpc_service: "unknown",
        grpc_method: "unknown",
    },
};

/// A response extension by which a handler asks for its call to be logged
/// at DEBUG (it is still counted): for calls that repeat every few seconds
/// and say nothing new, such as the registry's key canary.
#[derive(Debug, Clone, Copy)]
pub struct Quiet;

/// The methods both servers serve besides their own services: gRPC health
/// and server reflection (v1 and v1alpha), with their types.
const STANDARD_METHODS: [(&str, &str, &str); 4] = [
    ("grpc.health.v1.Health", "Check", UNARY),
    ("grpc.health.v1.Health", "Watch", SERVER_STREAM),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
        BIDI_STREAM,
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
        BIDI_STREAM,
    ),
];

const UNARY: &str = "unary";
const CLIENT_STREAM: &str = "client_stream";
const SERVER_STREAM: &str = "server_stream";
const BIDI_STREAM: &str = "bidi_stream";

/// The methods (`/package.Service/Method`) one server serves: the only
/// values its metric labels and span names take.
#[derive(Debug, Clone)]
pub struct Methods {
    by_path: Arc<HashMap<&'static str, &'static Method>>,
}

impl Methods {
    /// Health, reflection, and every method of `services` found in the
    /// encoded `FileDescriptorSet` `descriptors`. Built once at start-up,
    /// so the few strings are kept for the life of the process.
    pub fn served(descriptors: &[u8], services: &[&str]) -> Result<Self, prost::DecodeError> {
        let set = prost_types::FileDescriptorSet::decode(descriptors)?;
        let mut methods: Vec<(String, String, &'static str)> = STANDARD_METHODS
            .iter()
            .map(|(service, method, kind)| ((*service).to_owned(), (*method).to_owned(), *kind))
            .collect();
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
                    let kind = match (method.client_streaming(), method.server_streaming()) {
                        (false, false) => UNARY,
                        (true, false) => CLIENT_STREAM,
                        (false, true) => SERVER_STREAM,
                        (true, true) => BIDI_STREAM,
                    };
                    methods.push((full_name.clone(), method.name().to_owned(), kind));
                }
            }
        }
        let by_path = methods
            .into_iter()
            .map(|(service, method, kind)| {
                let path = leak(format!("/{service}/{method}"));
                let method: &'static Method = Box::leak(Box::new(Method {
                    path,
                    labels: MethodLabels {
                        grpc_type: kind,
                        grpc_service: leak(service),
                        grpc_method: leak(method),
                    },
                }));
                (path, method)
            })
            .collect();
        Ok(Self {
            by_path: Arc::new(by_path),
        })
    }

    /// The served method at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&'static Method> {
        self.by_path.get(path).copied()
    }

    /// Every served path, sorted.
    pub fn paths(&self) -> Vec<&'static str> {
        let mut paths: Vec<&'static str> = self.by_path.keys().copied().collect();
        paths.sort_unstable();
        paths
    }
}

/// Keeps a start-up string for the life of the process.
fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
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
    R: http_body::Body + Default + Unpin + Send + 'static,
{
    type Response = http::Response<Recorded<R>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let known = self.methods.get(request.uri().path());
        let method = known.unwrap_or(&UNKNOWN);
        let span = tracing::info_span!(
            "rpc",
            otel.name = method.path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = method.path,
            tenant = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        adopt_remote_parent(&span, request.headers());
        self.metrics.started.get_or_create(&method.labels).inc();
        let call = Call {
            in_flight: InFlight::enter(&self.metrics, &method.labels),
            method,
            metrics: self.metrics.clone(),
            refusals: Arc::clone(&self.refusals),
            started: Instant::now(),
            span: span.clone(),
            quiet: false,
        };
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
                let mut call = call;
                match response.await {
                    Ok(response) => {
                        call.quiet = response.extensions().get::<Quiet>().is_some();
                        let (parts, body) = response.into_parts();
                        let pending = match header_status(&parts.headers) {
                            // Trailers-only: the call is over.
                            Some(code) => {
                                call.finish(code);
                                None
                            }
                            None => Some(call),
                        };
                        Ok(http::Response::from_parts(
                            parts,
                            Recorded {
                                inner: body,
                                call: pending,
                            },
                        ))
                    }
                    Err(error) => {
                        call.finish(tonic::Code::Unavailable);
                        Err(error)
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// A response body that finishes its call's record when the trailers pass
/// (or, dropped before them, as `Canceled`).
#[derive(Debug)]
pub struct Recorded<R> {
    inner: R,
    call: Option<Call>,
}

impl<R: Default> Default for Recorded<R> {
    fn default() -> Self {
        Self {
            inner: R::default(),
            call: None,
        }
    }
}

impl<R> http_body::Body for Recorded<R>
where
    R: http_body::Body + Unpin,
{
    type Data = R::Data;
    type Error = R::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|trailers| header_status(trailers).unwrap_or(tonic::Code::Unknown)),
            // A failed body, or one that ended without trailers: the client
            // sees an error with no status of ours.
            Poll::Ready(Some(Err(_)) | None) => Some(tonic::Code::Unknown),
            Poll::Pending => None,
        };
        if let Some(code) = code
            && let Some(call) = self.call.take()
        {
            call.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<R> Drop for Recorded<R> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.finish(tonic::Code::Cancelled);
        }
    }
}

/// A call not finished yet: what its record needs.
#[derive(Debug)]
struct Call {
    method: &'static Method,
    metrics: RpcMetrics,
    refusals: Arc<RefusalLog>,
    started: Instant,
    span: tracing::Span,
    in_flight: InFlight,
    quiet: bool,
}

impl Call {
    fn finish(self, code: tonic::Code) {
        let elapsed = self.started.elapsed();
        drop(self.in_flight);
        let labels = &self.method.labels;
        self.metrics
            .latency
            .get_or_create(labels)
            .observe(elapsed.as_secs_f64());
        self.metrics
            .handled
            .get_or_create(&labels.with_code(code))
            .inc();
        let _entered = self.span.enter();
        self.span.record("rpc.grpc.status_code", code as i32);
        let latency_ms = elapsed.as_secs_f64() * 1e3;
        if is_refusal(code) {
            self.refusals.record(self.method.path, code, latency_ms);
        } else if self.quiet || is_probe(self.method.path) {
            tracing::debug!(code = ?code, latency_ms, "rpc finished");
        } else {
            tracing::info!(code = ?code, latency_ms, "rpc finished");
        }
    }
}

/// The most of an unknown call's body read before it is answered, and how
/// long that may take.
const READ_OFF_BYTES: usize = 64 * 1024;
const READ_OFF_TIME: std::time::Duration = std::time::Duration::from_millis(500);

/// Reads a request body that no handler will read (an unknown method, a
/// refused caller), up to [`READ_OFF_BYTES`] or [`READ_OFF_TIME`], and
/// drops it. Answering before the client's DATA
/// frames are read leaves them counted against the connection by HTTP/2's
/// flood guard (h2 answers a flood of such calls with GOAWAY
/// ENHANCE_YOUR_CALM, ending the honest calls on the same connection too),
/// and races the client's own send of the body.
pub async fn read_off<B>(mut body: B)
where
    B: http_body::Body + Unpin,
{
    use http_body_util::BodyExt;
    use prost::bytes::Buf;
    let reading = async {
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                read = read.saturating_add(data.remaining());
            }
            if read > READ_OFF_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(READ_OFF_TIME, reading).await;
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

/// The `grpc-status` in `headers`, if any.
fn header_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// Status code names as grpc-go spells them (`codes.Code.String()`), so
/// `grpc_code` matches what go-grpc-prometheus dashboards expect.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "Canceled",
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
#[derive(Debug)]
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
