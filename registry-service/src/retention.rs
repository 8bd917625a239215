//! The retention task: purges the agents and providers deleted longer ago
//! than `REGISTRY_PURGE_DELETED_AFTER_SECONDS`, every
//! `REGISTRY_PURGE_INTERVAL_SECONDS`, through the same store function as an
//! admin's Purge call ([`versioned::purge`], as [`Purger::Retention`]).
//!
//! Every replica runs it. Each purge is a conditional delete (the row must
//! still be deleted, and deleted before the cut-off) in a transaction of
//! its own, so replicas running at once purge each resource once: the
//! loser finds nothing to delete and writes nothing. Agents go before
//! providers, so a provider whose deleted agents expire in the same run is
//! purged after them.
//!
//! [`Purger::Retention`]: crate::store::versioned::Purger::Retention

use std::time::Duration;

use crate::store::Store;
use crate::store::agents::Agents;
use crate::store::providers::Providers;
use crate::store::versioned::{self, Kind};

/// The longest retention a deployment may set: 10 years.
pub const MAX_PURGE_AFTER_SECONDS: u64 = 10 * 365 * 86_400;

/// How long deleted resources are kept, and how often the task looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// A resource deleted longer ago than this is purged.
    pub purge_after: Duration,
    /// Between runs of the task.
    pub interval: Duration,
}

/// Runs the task until the process ends (the first run at once).
pub async fn run(store: Store, settings: RetentionSettings) {
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        purge_expired(&store, settings.purge_after).await;
    }
}

/// One run: every kind's expired resources, agents first.
pub async fn purge_expired(store: &Store, purge_after: Duration) {
    let Ok(purge_after) = chrono::Duration::from_std(purge_after) else {
        return;
    };
    let Some(deleted_before) = chrono::Utc::now().checked_sub_signed(purge_after) else {
        return;
    };
    purge_kind(store, &Agents, deleted_before).await;
    purge_kind(store, &Providers::default(), deleted_before).await;
}

async fn purge_kind<K: Kind>(
    store: &Store,
    kind: &K,
    deleted_before: chrono::DateTime<chrono::Utc>,
) {
    match versioned::purge_expired(store, kind, deleted_before).await {
        Ok(0) => {}
        Ok(purged) => tracing::info!(
            kind = K::NAMES.kind,
            purged,
            "purged expired deleted resources"
        ),
        Err(error) => {
            tracing::warn!(kind = K::NAMES.kind, %error, "purging expired deleted resources failed")
        }
    }
}
