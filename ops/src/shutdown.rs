//! Graceful shutdown shared by both servers: wait for SIGTERM or SIGINT,
//! flip readiness to NOT_SERVING, end the open health Watch streams (they
//! would otherwise hold the drain to its deadline), stop accepting, and
//! give in-flight calls a deadline to finish.

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::health::{Reporter, ServingStatus};

/// Completes on SIGTERM or SIGINT. The handlers are installed when this
/// is called, not when the future is first polled: a server that has said
/// it is serving (tests and supervisors act on that line) must not die of
/// a SIGTERM that arrives before its drain starts listening.
pub fn signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate());
    let mut interrupt = signal(SignalKind::interrupt());
    async move {
        let received = async |stream: &mut std::io::Result<tokio::signal::unix::Signal>,
                              name: &str| {
            match stream {
                Ok(stream) => {
                    stream.recv().await;
                }
                Err(error) => {
                    tracing::error!(%error, signal = name, "cannot listen for the signal");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = received(&mut interrupt, "SIGINT") => tracing::info!("SIGINT received"),
            () = received(&mut terminate, "SIGTERM") => tracing::info!("SIGTERM received"),
        }
    }
}

/// Sets `status` for `""` and every name in `services`.
pub fn set_readiness(health: &Reporter, services: &[&str], status: ServingStatus) {
    health.set("", status);
    for name in services {
        health.set(name, status);
    }
}

/// Runs `server` until it ends or `shutdown` completes; then readiness goes
/// NOT_SERVING for `""` and `services` (liveness stays SERVING), open
/// health Watch streams end after sending it, `stop` tells the server to
/// stop accepting, and in-flight calls get `drain`.
pub async fn serve_and_drain<E: std::fmt::Display>(
    server: impl Future<Output = Result<(), E>>,
    shutdown: impl Future<Output = ()>,
    health: &Reporter,
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
    set_readiness(health, services, ServingStatus::NotServing);
    health.close_watches();
    let _ = stop.send(());
    match tokio::time::timeout(drain, server).await {
        Ok(result) => result.map_err(|e| e.to_string())?,
        Err(_) => tracing::warn!("drain deadline passed; dropping the calls still running"),
    }
    Ok(())
}
