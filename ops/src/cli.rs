//! Flags both services take, flattened into each one's clap arguments:
//! logs and traces, and the gRPC server's protective limits.

use std::time::Duration;

use clap::{Args, ValueEnum};
use tonic::transport::Server;

use crate::telemetry::{self, LogFormat};

/// Log and trace settings.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormatArg::Pretty, global = true)]
    pub log_format: LogFormatArg,
    /// Log filter in `tracing` syntax, e.g. `info` or `registry_service=debug`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    /// OTLP/gRPC endpoint for traces (e.g. http://otel-collector:4317);
    /// traces are not exported when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

impl TelemetryArgs {
    /// Installs logging and tracing for `service_name`.
    pub fn init(&self, service_name: &'static str) -> Result<telemetry::Guard, String> {
        telemetry::init(&telemetry::Settings {
            service_name,
            format: match self.log_format {
                LogFormatArg::Json => LogFormat::Json,
                LogFormatArg::Pretty => LogFormat::Pretty,
            },
            level: self.log_level.clone(),
            otlp_endpoint: self.otlp_endpoint.clone().filter(|e| !e.is_empty()),
        })
    }
}

/// Protective limits of a gRPC server.
#[derive(Debug, Clone, Args)]
pub struct GrpcArgs {
    /// Server-side deadline for any call, in seconds; a shorter
    /// `grpc-timeout` from the client wins.
    #[arg(long, env = "GRPC_REQUEST_TIMEOUT_SECONDS", default_value_t = 30)]
    pub request_timeout_seconds: u64,
    /// Calls handled at once per connection; more are refused with
    /// RESOURCE_EXHAUSTED instead of queueing without bound.
    #[arg(long, env = "GRPC_CONCURRENCY_PER_CONNECTION", default_value_t = 256)]
    pub concurrency_per_connection: usize,
    /// HTTP/2 streams a client may open at once per connection.
    #[arg(long, env = "GRPC_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,
    /// Seconds between HTTP/2 keepalive pings to idle clients (0 = off).
    #[arg(long, env = "GRPC_KEEPALIVE_INTERVAL_SECONDS", default_value_t = 60)]
    pub keepalive_interval_seconds: u64,
    /// Seconds to wait for a keepalive acknowledgement before closing.
    #[arg(long, env = "GRPC_KEEPALIVE_TIMEOUT_SECONDS", default_value_t = 20)]
    pub keepalive_timeout_seconds: u64,
}

impl GrpcArgs {
    /// A server builder with these limits applied.
    pub fn server(&self) -> Server {
        let keepalive = (self.keepalive_interval_seconds > 0)
            .then(|| Duration::from_secs(self.keepalive_interval_seconds));
        Server::builder()
            .timeout(Duration::from_secs(self.request_timeout_seconds.max(1)))
            .concurrency_limit_per_connection(self.concurrency_per_connection.max(1))
            .load_shed(true)
            .max_concurrent_streams(self.max_concurrent_streams.max(1))
            .http2_keepalive_interval(keepalive)
            .http2_keepalive_timeout(Some(Duration::from_secs(
                self.keepalive_timeout_seconds.max(1),
            )))
            .tcp_nodelay(true)
    }
}
