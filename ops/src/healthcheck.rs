//! The `healthcheck` subcommand both binaries have: one grpc.health.v1
//! Check against the process's own health endpoint, for orchestrators that
//! probe by running a command in the container (compose healthchecks; the
//! distroless images have no shell, curl or grpc_health_probe). It passes
//! only on SERVING; anything else is one line that says why.
//!
//! Each binary turns its own `serve` settings into a [`Target`] (and
//! [`Tls`], when its endpoint needs it), so the command reads the same flags
//! and environment as `serve` and needs no arguments of its own.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Flags of the `healthcheck` subcommand.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The health service name to ask for: `""` (the default) is the whole
    /// server's readiness, `liveness` whether the process runs.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Seconds the connection and the Check may take together.
    #[arg(long, default_value_t = 3)]
    pub timeout_seconds: u64,
}

/// Where a process serves grpc.health.v1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A TCP address. An unspecified listen address (`0.0.0.0`, `[::]`)
    /// is checked on the loopback address of its family.
    Tcp(SocketAddr),
    /// A unix socket.
    Unix(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(address) => write!(f, "{address}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// TLS for a check of a TLS endpoint: the CA that signed the server's
/// certificate, the name it is valid for, and a client certificate when
/// the endpoint requires one.
#[derive(Clone)]
pub struct Tls {
    /// CA certificate(s), PEM.
    pub ca_pem: Vec<u8>,
    /// The DNS name the server's certificate must be valid for.
    pub server_name: String,
    /// Client certificate chain and private key, PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Why a check did not pass: one line, naming the endpoint and never a
/// secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{target}: {problem}")]
pub struct Unhealthy {
    /// The endpoint checked.
    pub target: String,
    /// What went wrong.
    pub problem: String,
}

/// Asks `target` once for `service`'s status: `Ok` only on SERVING.
pub async fn check(
    target: &Target,
    tls: Option<Tls>,
    service: &str,
    timeout: Duration,
) -> Result<(), Unhealthy> {
    let target = target.probed();
    let unhealthy = |problem: String| Unhealthy {
        target: target.to_string(),
        problem,
    };
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let asked = async {
        let channel = connect(&target, tls, timeout).await?;
        HealthClient::new(channel)
            .check(request)
            .await
            .map_err(|status| match status.code() {
                tonic::Code::NotFound => format!("the health service does not know {service:?}"),
                // A connection that failed after the handshake (a client
                // certificate the server refused) arrives as a status
                // whose source says why.
                code => match std::error::Error::source(&status) {
                    Some(source) => format!("Check failed: {}", innermost(source)),
                    None => format!("Check failed: {code:?}: {}", status.message()),
                },
            })
    };
    let response = tokio::time::timeout(timeout, asked)
        .await
        .map_err(|_| unhealthy(format!("no answer within {} s", timeout.as_secs_f32())))?
        .map_err(unhealthy)?;
    match response.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        status => Err(unhealthy(format!(
            "{service:?} is {}",
            status.as_str_name()
        ))),
    }
}

impl Target {
    /// The address to connect to for this listen address.
    fn probed(&self) -> Self {
        match self {
            Self::Tcp(address) if address.ip().is_unspecified() => {
                let loopback = match address.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                };
                Self::Tcp(SocketAddr::new(loopback, address.port()))
            }
            other => other.clone(),
        }
    }
}

async fn connect(
    target: &Target,
    tls: Option<Tls>,
    timeout: Duration,
) -> Result<tonic::transport::Channel, String> {
    let unreachable = |error: tonic::transport::Error| {
        // The transport error's own text is "transport error"; the
        // innermost source says what happened (connection refused, a
        // handshake failure).
        format!("cannot connect: {}", innermost(&error))
    };
    match target {
        Target::Unix(path) => {
            let path = path.clone();
            Endpoint::from_static("http://localhost")
                .connect_timeout(timeout)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(unreachable)
        }
        Target::Tcp(address) => {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
                .map_err(|e| format!("not an endpoint: {e}"))?
                .connect_timeout(timeout);
            if let Some(tls) = tls {
                let mut config = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                    .domain_name(tls.server_name);
                if let Some((cert, key)) = tls.identity {
                    config = config.identity(Identity::from_pem(cert, key));
                }
                endpoint = endpoint
                    .tls_config(config)
                    .map_err(|e| format!("TLS settings: {e}"))?;
            }
            endpoint.connect().await.map_err(unreachable)
        }
    }
}

/// The text of the innermost cause of `error`.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_checked_on_loopback() {
        let probed = |text: &str| Target::Tcp(text.parse().expect("an address")).probed();
        assert_eq!(
            probed("0.0.0.0:50052"),
            Target::Tcp("127.0.0.1:50052".parse().expect("an address"))
        );
        assert_eq!(
            probed("[::]:50052"),
            Target::Tcp("[::1]:50052".parse().expect("an address"))
        );
        assert_eq!(
            probed("10.1.2.3:50052"),
            Target::Tcp("10.1.2.3:50052".parse().expect("an address"))
        );
    }
}
