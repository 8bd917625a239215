//! The SQLite query planner's statistics. SQLite gathers none unless asked
//! (PostgreSQL's autovacuum keeps its own), and without them it plans a
//! List filter by the indexes alone: an OR of two indexed fields (`name =
//! "agent-0999*" OR tool:"rare-tool"`) walked the tenant's whole table in
//! id order (96 ms p50 over 100,000 agents, `bench filter`) where, knowing
//! how selective each index is, it unions the two index lookups instead.
//!
//! [`keep_fresh`] runs `PRAGMA optimize` now and then: SQLite analyzes only
//! the tables whose size changed a lot since their last analysis (or that
//! were never analyzed), each from a bounded sample of its indexes
//! ([`ANALYSIS_LIMIT`] rows), so a run costs milliseconds and most runs do
//! nothing. The statistics are a table of the database (`sqlite_stat1`),
//! read by every connection when it prepares a statement.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend};

use super::Store;

/// Rows of each index that one analysis samples (SQLite's recommendation
/// for `PRAGMA optimize` run periodically).
const ANALYSIS_LIMIT: u32 = 400;

/// How often the sizes are checked.
pub const PERIOD: Duration = Duration::from_secs(60);

/// On SQLite, runs `PRAGMA optimize` at once and every `period` until the
/// task is dropped; on PostgreSQL returns at once.
pub async fn keep_fresh(store: Store, period: Duration) {
    if store.get_database_backend() != DbBackend::Sqlite {
        return;
    }
    // 0x10002: analyze where it may help (2), checking every table's size
    // (0x10000), not only the tables this connection has used.
    let optimize = format!("PRAGMA analysis_limit = {ANALYSIS_LIMIT}; PRAGMA optimize = 0x10002;");
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = store.pool().execute_unprepared(&optimize).await {
            tracing::warn!(%error, "refreshing SQLite's planner statistics failed");
        }
    }
}
