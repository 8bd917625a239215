//! Readiness from a background check, not per request: every interval the
//! registry pings its database and has crypto-service decrypt the key
//! canary (writing it the first time).
//! While either fails, `""` and every registry service report NOT_SERVING
//! (so load balancers and Kubernetes stop routing here); when both answer
//! again they report SERVING. Each transition is logged once.

use std::time::Duration;

use ops::health::{Reporter, ServingStatus};
use sea_orm::{DatabaseBackend, DatabaseConnection};

use crate::crypto::Crypto;
use crate::server::SERVICE_NAMES;
use crate::store::keys::{self, Canary};
use crate::store::{self, Store};
use crate::telemetry::RegistryMetrics;

/// Checks the dependencies every `interval`, forever; abort the task to stop.
pub async fn watch(
    store: Store,
    crypto: Crypto,
    health: Reporter,
    metrics: RegistryMetrics,
    interval: Duration,
) {
    let mut serving: Option<bool> = None;
    let mut wrong_key_logged = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let db = store.pool();
        // A stopped SQLite committer fails every agent write: not ready.
        let database = check_database(db, &metrics).await && store.writes_running();
        let crypto_ok =
            database && check_crypto(db, &crypto, &metrics, &mut wrong_key_logged).await;
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
            ops::shutdown::set_readiness(&health, &SERVICE_NAMES, status);
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

/// crypto-service is ready when it decrypts the registry's canary: an
/// unreachable service and one holding the wrong key both fail, and a wrong
/// key is logged as such once.
async fn check_crypto(
    db: &DatabaseConnection,
    crypto: &Crypto,
    metrics: &RegistryMetrics,
    wrong_key_logged: &mut bool,
) -> bool {
    let outcome = keys::check_canary(db, crypto).await;
    let up = matches!(outcome, Ok(Canary::Verified | Canary::Created));
    metrics.set_up("crypto-service", up);
    match outcome {
        Ok(Canary::WrongKey(reason)) if !*wrong_key_logged => {
            tracing::error!(
                %reason,
                "crypto-service cannot decrypt the registry's key canary: it holds the wrong key (check ENCRYPTION_KEY / MASTER_SECRET / the keyring); readiness stays NOT_SERVING"
            );
            *wrong_key_logged = true;
        }
        Ok(Canary::Created) => tracing::info!("key canary written"),
        Ok(Canary::Verified) => *wrong_key_logged = false,
        _ => {}
    }
    up
}
