//! Logs and traces: a `tracing` subscriber writing JSON or pretty lines,
//! plus, when an OTLP endpoint is configured, an OpenTelemetry layer that
//! exports spans over OTLP/gRPC. W3C trace context (`traceparent`) is the
//! propagation format, in both directions.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::codegen::http::HeaderMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines, in colour when stderr is a terminal.
    Pretty,
}

/// Telemetry settings read at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The service name on every span.
    pub service_name: &'static str,
    /// Log format.
    pub format: LogFormat,
    /// `tracing` filter (`info`, `registry_service=debug` …).
    pub level: String,
    /// OTLP/gRPC endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`); no export when unset.
    pub otlp_endpoint: Option<String>,
}

/// Flushes and stops trace export when dropped (at the end of `main`).
#[derive(Debug)]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Transport crates log request details below `warn`; keep them quiet
/// unless the filter names them.
const QUIET: &str = "h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn,sqlx=warn,sea_orm=warn,sea_orm_migration=warn,opentelemetry=warn,opentelemetry_sdk=warn";

/// Installs the global subscriber (and the OTLP exporter when configured).
/// Must run inside the tokio runtime.
pub fn init(settings: &Settings) -> Result<Guard, String> {
    let filter = EnvFilter::try_new(format!("{QUIET},{}", settings.level))
        .map_err(|e| format!("LOG_LEVEL: {e}"))?;
    let fmt = match settings.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        // Colour only on a terminal: escape codes in a file or a pipe are noise.
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = match &settings.otlp_endpoint {
        Some(endpoint) => Some(otlp_provider(settings.service_name, endpoint)?),
        None => None,
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer(settings.service_name))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| format!("logging: {e}"))?;
    Ok(Guard { provider })
}

fn otlp_provider(service_name: &'static str, endpoint: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Makes `span` a child of the W3C trace context in `headers`, if any.
pub fn adopt_remote_parent(span: &tracing::Span, headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
}

/// Writes the current span's W3C trace context into `metadata`, so the
/// service called next joins the same trace.
pub fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MetadataInjector(metadata));
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// A tonic interceptor that propagates the current trace to the callee.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateTrace;

impl tonic::service::Interceptor for PropagateTrace {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject_current(request.metadata_mut());
        Ok(request)
    }
}
