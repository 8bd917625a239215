//! Graceful shutdown shared by both servers: wait for SIGTERM or SIGINT,
//! flip readiness to NOT_SERVING, stop accepting, and give in-flight calls
//! a deadline to finish.

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Completes on SIGTERM or SIGINT.
pub async fn signal() {
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

/// Sets `status` for `""` and every name in `services`.
pub async fn set_readiness(health: &HealthReporter, services: &[&str], status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in services {
        health.set_service_status(*name, status).await;
    }
}

/// Runs `server` until it ends or `shutdown` completes; then readiness goes
/// NOT_SERVING for `""` and `services` (liveness stays SERVING), `stop`
/// tells the server to stop accepting, and in-flight calls get `drain`.
pub async fn serve_and_drain<E: std::fmt::Display>(
    server: impl Future<Output = Result<(), E>>,
    shutdown: impl Future<Output = ()>,
    health: &HealthReporter,
    services: &[&str],
    stop: oneshot::Sender<()>,
    drain: Duration,
) -> Result<(), String> {
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(|e| e.to_string()),
        () = shutdown => {}
    }
    tracing::info!(
        ?drain,
        "shutting down: readiness NOT_SERVING, draining in-flight calls"
    );
    set_readiness(health, services, ServingStatus::NotServing).await;
    let _ = stop.send(());
    match tokio::time::timeout(drain, server).await {
        Ok(result) => result.map_err(|e| e.to_string())?,
        Err(_) => tracing::warn!("drain deadline passed; dropping the calls still running"),
    }
    Ok(())
}
