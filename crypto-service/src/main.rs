//! The `crypto-service` binary: parse configuration, load the keyring, bind,
//! serve until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use crypto_service::Error;
use crypto_service::config::{
    Args, Command, HealthcheckCommand, ListenAddress, check_no_legacy_overlap,
};
use crypto_service::keyring::SharedKeyring;
use crypto_service::server::{self, Listener};

/// mimalloc: the services allocate small, short-lived buffers on every
/// call from several threads, where it spends less CPU than the system
/// allocator (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // A probe run every few seconds: no logs, no trace exporter, one line
    // on failure.
    if let Some(Command::Healthcheck(check)) = &args.command {
        return match healthcheck(&args, check).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(problem) => {
                eprintln!("crypto-service healthcheck: {problem}");
                ExitCode::FAILURE
            }
        };
    }
    let _telemetry = match args.telemetry.init("crypto-service") {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("crypto-service: {error}");
            return ExitCode::FAILURE;
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "crypto-service failed");
            eprintln!("crypto-service: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let mut settings = args.settings()?;
    let (keyring, legacy_key) = args.keys(|name| std::env::var(name).ok())?;
    settings.legacy_key = legacy_key.map(std::sync::Arc::new);
    if settings.legacy_key.is_some() {
        tracing::info!("legacy Fernet key loaded: ImportFernet is enabled");
    }
    tracing::info!(
        active_version = keyring.active_version(),
        versions = keyring.versions().len(),
        "keyring loaded"
    );
    let keyring = SharedKeyring::new(keyring);
    reload_on_sighup(args.clone(), keyring.clone(), settings.legacy_key.clone())?;
    let metrics = ops::metrics::Metrics::new("crypto-service", |_| {});
    if let Some(address) = args.metrics_listen {
        serve_metrics(address, metrics.clone()).await?;
    }
    let listener = bind(&settings.listen).await?;
    server::serve(
        listener,
        settings,
        keyring,
        &metrics,
        ops::shutdown::signal(),
    )
    .await
}

/// `healthcheck`: one grpc.health.v1 Check of the server `args` describe.
async fn healthcheck(args: &Args, check: &HealthcheckCommand) -> Result<(), String> {
    let (target, tls) = check.target(args).map_err(|e| e.to_string())?;
    ops::healthcheck::check(
        &target,
        tls,
        &check.check.service,
        Duration::from_secs(check.check.timeout_seconds.max(1)),
    )
    .await
    .map_err(|unhealthy| unhealthy.to_string())
}

/// Re-reads the key settings (files are read again; environment values are
/// fixed for the life of the process) on every SIGHUP. Calls in flight keep
/// the keyring they started with; a bad new keyring, or one that overlaps
/// the legacy key in force, is logged and ignored.
fn reload_on_sighup(
    args: Args,
    keyring: SharedKeyring,
    legacy_key: Option<std::sync::Arc<crypto_service::fernet::FernetKey>>,
) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())
        .map_err(|e| Error::Serve(format!("cannot listen for SIGHUP: {e}")))?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let reloaded = args
                .keyring(|name| std::env::var(name).ok())
                .and_then(|reloaded| {
                    check_no_legacy_overlap(&reloaded, legacy_key.as_deref()).map(|()| reloaded)
                });
            match reloaded {
                Ok(reloaded) => {
                    tracing::info!(
                        active_version = reloaded.active_version(),
                        versions = reloaded.versions().len(),
                        "keyring reloaded"
                    );
                    keyring.replace(reloaded);
                }
                Err(error) => {
                    tracing::error!(%error, "keyring reload failed; keeping the current keyring");
                }
            }
        }
    });
    Ok(())
}

/// Binds the metrics endpoint and serves it in the background.
async fn serve_metrics(address: SocketAddr, metrics: ops::metrics::Metrics) -> Result<(), Error> {
    ops::metrics::spawn(address, metrics).await.map_err(|e| {
        Error::config(
            "CRYPTO_METRICS_LISTEN",
            format!("cannot bind {address}: {}", e.kind()),
        )
    })
}

async fn bind(address: &ListenAddress) -> Result<Listener, Error> {
    let bind_error = |error: std::io::Error| {
        Error::config(
            "CRYPTO_LISTEN",
            format!("cannot bind {address}: {}", error.kind()),
        )
    };
    match address {
        ListenAddress::Tcp(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .map(Listener::Tcp)
            .map_err(bind_error),
        ListenAddress::Unix(path) => {
            remove_stale_socket(path);
            let listener = tokio::net::UnixListener::bind(path).map_err(bind_error)?;
            restrict_to_owner_and_group(path).map_err(bind_error)?;
            Ok(Listener::Unix(listener))
        }
    }
}

/// A socket file left by a previous run would make bind fail.
fn remove_stale_socket(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

fn restrict_to_owner_and_group(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
}
