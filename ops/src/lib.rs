//! Operational plumbing both agentregistry services share, so each server
//! assembles the same behaviour from one place: structured logs and
//! OpenTelemetry traces ([`telemetry`]), per-RPC spans and Prometheus
//! metrics as tower layers ([`rpc`], [`metrics`], with the process's own
//! series from [`process`]), grpc.health.v1 and server reflection as their
//! specifications describe them ([`health`], [`reflection`]), the
//! `healthcheck` subcommand's client ([`healthcheck`]), accepted connections
//! (`TCP_NODELAY`, TLS, writes gathered per HTTP/2 flush: [`connection`];
//! a TLS certificate reloaded while serving: [`tls`]), and
//! SIGTERM/SIGINT handling with health flipped before draining
//! ([`shutdown`]).

pub mod cli;
pub mod connection;
pub mod health;
pub mod healthcheck;
pub mod metrics;
pub mod process;
pub mod reflection;
pub mod rpc;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

/// The health service name that stays SERVING while the process runs:
/// Kubernetes liveness probes ask for it, readiness probes ask for `""`.
pub const LIVENESS: &str = "liveness";
