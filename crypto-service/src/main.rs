//! The `crypto-service` binary: parse configuration, load the keyring, bind,
//! serve until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use crypto_service::Error;
use crypto_service::config::{Args, ListenAddress, LogFormat};
use crypto_service::server::{self, Listener};

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args);
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
    let settings = args.settings()?;
    let keyring = Arc::new(args.keyring(|name| std::env::var(name).ok())?);
    tracing::info!(
        active_version = keyring.active_version(),
        versions = keyring.versions().len(),
        "keyring loaded"
    );
    let listener = bind(&settings.listen).await?;
    server::serve(listener, settings, keyring, shutdown_signal()).await
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

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

fn init_logging(args: &Args) {
    use tracing_subscriber::EnvFilter;
    // Transport crates log frame details at debug level: keep them at warn
    // unless the filter names them.
    let filter = EnvFilter::try_new(format!("h2=warn,hyper=warn,tower=warn,{}", args.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}
