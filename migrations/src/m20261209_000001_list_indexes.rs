//! Indexes for List (issue 18):
//!
//! - `ix_labels_search` `(tenant_id, kind, label, resource_id)`: the `label`
//!   filter field (`label:"production"`) finds the few resources holding a
//!   label in it instead of reading every label of the tenant (the primary
//!   key `(kind, resource_id, label)` serves a resource's own labels).
//! - `ix_agents_live_tenant` `(tenant_id) WHERE delete_time IS NULL`, in
//!   place of `ix_agents_tenant` `(tenant_id)`: an unfiltered ListAgents
//!   counts the tenant's live agents for `total_size`, and since soft
//!   delete every count tests `delete_time IS NULL`, which the full index
//!   cannot answer without reading each row (37 ms p50 for the first page
//!   over 100,000 agents in `bench filter`, where the index alone had
//!   given 3.7 ms). The partial index answers it alone, and holds no entry
//!   for a deleted agent.

use sea_orm_migration::prelude::*;

/// Creates `ix_labels_search` and puts `ix_agents_live_tenant` in place of
/// `ix_agents_tenant`.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Labels {
    Table,
    TenantId,
    Kind,
    Label,
    ResourceId,
}

const LABELS_INDEX: &str = "ix_labels_search";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(LABELS_INDEX)
                    .table(Labels::Table)
                    .col(Labels::TenantId)
                    .col(Labels::Kind)
                    .col(Labels::Label)
                    .col(Labels::ResourceId)
                    .take(),
            )
            .await?;
        // Partial indexes are written as SQL: the same text on both
        // databases.
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE INDEX ix_agents_live_tenant ON agents (tenant_id) WHERE delete_time IS NULL",
        )
        .await?;
        db.execute_unprepared("DROP INDEX ix_agents_tenant").await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("CREATE INDEX ix_agents_tenant ON agents (tenant_id)")
            .await?;
        db.execute_unprepared("DROP INDEX ix_agents_live_tenant")
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name(LABELS_INDEX)
                    .table(Labels::Table)
                    .to_owned(),
            )
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
