//! Readiness from a background check, not per request: every interval the
//! registry pings its database and asks crypto-service for its key info.
//! While either fails, `""` and every registry service report NOT_SERVING
//! (so load balancers and Kubernetes stop routing here); when both answer
//! again they report SERVING. Each transition is logged once.

use std::time::Duration;

use sea_orm::{DatabaseBackend, DatabaseConnection};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::crypto::Crypto;
use crate::server::SERVICE_NAMES;
use crate::store;
use crate::telemetry::RegistryMetrics;

/// Checks the dependencies every `interval`, forever; abort the task to stop.
pub async fn watch(
    db: DatabaseConnection,
    crypto: Crypto,
    health: HealthReporter,
    metrics: RegistryMetrics,
    interval: Duration,
) {
    let mut serving: Option<bool> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (database, crypto_ok) = tokio::join!(
            check_database(&db, &metrics),
            check_crypto(&crypto, &metrics)
        );
        let ready = database && crypto_ok;
        if serving != Some(ready) {
            if ready {
                tracing::info!("dependencies answer: readiness SERVING");
            } else {
                tracing::warn!(
                    database,
                    crypto_service = crypto_ok,
                    "a dependency is unreachable: readiness NOT_SERVING"
                );
            }
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            ops::shutdown::set_readiness(&health, &SERVICE_NAMES, status).await;
            serving = Some(ready);
        }
    }
}

async fn check_database(db: &DatabaseConnection, metrics: &RegistryMetrics) -> bool {
    let up = store::ping(db).await.is_ok();
    metrics.set_up("database", up);
    match db.get_database_backend() {
        DatabaseBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            metrics.set_pool(pool.num_idle(), pool.size());
        }
        DatabaseBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            metrics.set_pool(pool.num_idle(), pool.size());
        }
        _ => {}
    }
    up
}

async fn check_crypto(crypto: &Crypto, metrics: &RegistryMetrics) -> bool {
    let up = crypto.key_info().await.is_ok();
    metrics.set_up("crypto-service", up);
    up
}
