//! `ix_agents_live_tenant_id` `(tenant_id, id) WHERE delete_time IS NULL`
//! in place of `ix_agents_live_tenant` `(tenant_id) WHERE delete_time IS
//! NULL` (issue 16: PostgreSQL CPU per write).
//!
//! A write of an agent finds its row by `tenant_id = ? AND id = ? AND
//! delete_time IS NULL`. On PostgreSQL, before the tables are analyzed (a
//! new database, or one whose autovacuum is off or has not come round),
//! the planner costed the partial index on `tenant_id` alone as well as
//! the primary key, picked it because its predicate matched too, and
//! then read every live agent of the tenant to find one: 634 such scans
//! in `bench registry` (auto_explain, 100 agents), and a write's database
//! CPU grew with the tenant. With `id` in the index the row is one index
//! entry whichever index the planner takes; the index still counts a
//! tenant's live agents alone, and it is the order of the plain listing
//! (`WHERE tenant_id = ? AND delete_time IS NULL ORDER BY id`).

use sea_orm_migration::prelude::*;

/// Puts `ix_agents_live_tenant_id` in place of `ix_agents_live_tenant`.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Partial indexes are written as SQL: the same text on both
        // databases.
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE INDEX ix_agents_live_tenant_id ON agents (tenant_id, id) \
             WHERE delete_time IS NULL",
        )
        .await?;
        db.execute_unprepared("DROP INDEX ix_agents_live_tenant")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE INDEX ix_agents_live_tenant ON agents (tenant_id) WHERE delete_time IS NULL",
        )
        .await?;
        db.execute_unprepared("DROP INDEX ix_agents_live_tenant_id")
            .await?;
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
