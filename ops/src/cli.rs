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

/// Protective limits of a gRPC server. Values below a limit's minimum are
/// refused when the flags are parsed, never adjusted.
#[derive(Debug, Clone, Args)]
pub struct GrpcArgs {
    /// Server-side deadline for any call, in seconds; a shorter
    /// `grpc-timeout` from the client wins.
    #[arg(long, env = "GRPC_REQUEST_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_seconds: u64,
    /// Calls handled at once per connection; more are refused with
    /// RESOURCE_EXHAUSTED instead of queueing without bound.
    #[arg(long, env = "GRPC_CONCURRENCY_PER_CONNECTION", default_value_t = 256,
          value_parser = positive_usize)]
    pub concurrency_per_connection: usize,
    /// HTTP/2 streams a client may open at once per connection.
    #[arg(long, env = "GRPC_MAX_CONCURRENT_STREAMS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,
    /// Seconds between HTTP/2 keepalive pings to idle clients (0 = off).
    #[arg(long, env = "GRPC_KEEPALIVE_INTERVAL_SECONDS", default_value_t = 60)]
    pub keepalive_interval_seconds: u64,
    /// Seconds to wait for a keepalive acknowledgement before closing.
    #[arg(long, env = "GRPC_KEEPALIVE_TIMEOUT_SECONDS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive_timeout_seconds: u64,
}

/// A count of 1 or more.
fn positive_usize(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be 1 or more".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl GrpcArgs {
    /// A server builder with these limits: the transport half of a
    /// server's stack (the tower layers are each server's own, in its
    /// `server.rs`).
    pub fn server(&self) -> Server {
        let keepalive = (self.keepalive_interval_seconds > 0)
            .then(|| Duration::from_secs(self.keepalive_interval_seconds));
        Server::builder()
            // No call holds a worker or a connection's slot past its deadline.
            .timeout(Duration::from_secs(self.request_timeout_seconds))
            // One connection cannot take every worker: past the limit calls
            // are shed (RESOURCE_EXHAUSTED), not queued without bound.
            .concurrency_limit_per_connection(self.concurrency_per_connection)
            .load_shed(true)
            .max_concurrent_streams(self.max_concurrent_streams)
            // Connections whose peer vanished (no FIN through a NAT or a
            // crashed node) are found and closed.
            .http2_keepalive_interval(keepalive)
            .http2_keepalive_timeout(Some(Duration::from_secs(self.keepalive_timeout_seconds)))
            // Small responses leave at once, not after Nagle's delay.
            .tcp_nodelay(true)
    }
}
