//! The SQLite query planner's statistics. SQLite gathers none unless asked
//! (PostgreSQL's autovacuum keeps its own), and without them it assumes
//! that an equality on an index's first column finds about ten rows. So a
//! tenant looks small, and a List filter that ORs two indexed fields
//! (`name = "agent-0999*" OR tool:"rare-tool"`) walked the tenant's whole
//! table (84 ms p50 over 100,000 agents in `bench filter`) where, knowing
//! how many rows a tenant holds, the planner unions the two index lookups
//! (about 1 ms).
//!
//! [`keep_fresh`] runs `PRAGMA optimize` at start and every period: SQLite
//! analyzes only the tables whose size changed a lot since their last
//! analysis (or that were never analyzed), each from a bounded sample of
//! its indexes ([`ANALYSIS_LIMIT`] rows), so a run costs milliseconds and
//! most runs do nothing. The statistics are a table of the database
//! (`sqlite_stat1`), which a connection reads when it opens (and the one
//! that analyzed, at once): when a round changed them, the read
//! connection is opened anew ([`Store::replan_reads`]).

use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

use super::Store;

/// Rows of each index that one analysis samples (the size SQLite
/// recommends for `PRAGMA optimize` run periodically).
const ANALYSIS_LIMIT: u32 = 400;

/// On SQLite, runs `PRAGMA optimize` at once and every `period` until the
/// task is dropped; on PostgreSQL returns at once.
pub async fn keep_fresh(store: Store, period: Duration) {
    if store.get_database_backend() != DbBackend::Sqlite {
        return;
    }
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(error) = refresh(&store).await {
            tracing::warn!(%error, "refreshing SQLite's planner statistics failed");
        }
    }
}

/// One round: `PRAGMA optimize`, and the read connection opened anew when
/// the statistics changed.
async fn refresh(store: &Store) -> Result<(), DbErr> {
    // 0x10002: analyze where it may help (2), checking every table's size
    // (0x10000), not only the tables this connection has used.
    let optimize = format!("PRAGMA analysis_limit = {ANALYSIS_LIMIT}; PRAGMA optimize = 0x10002;");
    let before = statistics(store).await;
    store.pool().execute_unprepared(&optimize).await?;
    if statistics(store).await != before {
        store.replan_reads().await;
    }
    Ok(())
}

/// The statistics as text (one line per index), or `None` before the
/// first analysis (no `sqlite_stat1` yet) or when they cannot be read.
async fn statistics(store: &Store) -> Option<String> {
    let read = async {
        let pool = store.pool();
        let query = "SELECT group_concat(tbl || ' ' || coalesce(idx, '') || ' ' || stat, ';') \
                     FROM sqlite_stat1";
        let row = pool
            .query_one_raw(Statement::from_string(pool.get_database_backend(), query))
            .await?;
        row.map(|row| row.try_get_by_index::<Option<String>>(0))
            .transpose()
            .map(Option::flatten)
    };
    let text: Result<Option<String>, DbErr> = read.await;
    text.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DatabaseSettings, connect, migrate_up};
    use crate::telemetry::RegistryMetrics;
    use sea_orm::QueryResult;

    /// The plan of the bench's slow OR filter, as the read connection
    /// (where every List runs) makes it.
    async fn plan_of_an_or(store: &Store) -> String {
        let explain = "EXPLAIN QUERY PLAN SELECT id FROM agents WHERE tenant_id = 't' \
            AND delete_time IS NULL AND ((name >= 'agent-01' AND name < 'agent-02') \
            OR id IN ('a', 'b')) ORDER BY id LIMIT 11";
        let rows: Vec<QueryResult> = store
            .query_all_raw(Statement::from_string(DbBackend::Sqlite, explain))
            .await
            .expect("explain");
        rows.iter()
            .map(|row| row.try_get::<String>("", "detail").expect("a plan line"))
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Without statistics SQLite takes a tenant for ten rows and walks it
    /// for an OR; after one round the read connection (opened before the
    /// analysis) unions the two index lookups instead.
    #[tokio::test]
    async fn after_a_round_the_reads_plan_with_the_statistics() {
        let path = std::env::temp_dir().join(format!("statistics-{}.db", uuid::Uuid::now_v7()));
        let settings = DatabaseSettings {
            url: format!("sqlite://{}?mode=rwc", path.display()),
            max_connections: 1,
            acquire_timeout: std::time::Duration::from_millis(2500),
            sqlite_cache_mib: crate::store::SQLITE_DEFAULT_CACHE_MIB,
        };
        let pool = connect(&settings).await.expect("connect");
        migrate_up(&pool).await.expect("migrate");
        let store = Store::new(pool, &RegistryMetrics::default(), (0, 0));
        store
            .pool()
            .execute_unprepared(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) \
                 INSERT INTO agents (id, tenant_id, name, config, tools, version, create_time, \
                 update_time, created_by, updated_by) SELECT printf('id-%05d', i), 't', \
                 printf('agent-%05d', i), '{}', '[]', 1, '2026-12-06T00:00:00Z', \
                 '2026-12-06T00:00:00Z', 'me', 'me' FROM n",
            )
            .await
            .expect("3,000 agents of one tenant");
        let before = plan_of_an_or(&store).await;
        assert!(!before.contains("MULTI-INDEX OR"), "{before}");

        refresh(&store).await.expect("a round");
        let after = plan_of_an_or(&store).await;
        assert!(after.contains("MULTI-INDEX OR"), "{after}");
        let _ = std::fs::remove_file(path);
    }
}
