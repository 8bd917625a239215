//! Which provider an agent version ran on: each agent version row records
//! the provider (its id and version) the agent resolved to when the version
//! was written — the assigned one, or the tenant's default — so resolving
//! an old agent version reproduces that provider's configuration. Rows
//! written before this migration have neither (they resolve against the
//! provider as it is now).

use sea_orm_migration::prelude::*;

/// Adds `provider_id` and `provider_version` to `agent_versions`.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AgentVersions {
    Table,
    ProviderId,
    ProviderVersion,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(AgentVersions::Table)
                    .add_column(ColumnDef::new(AgentVersions::ProviderId).text().null())
                    .take(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(AgentVersions::Table)
                    .add_column(
                        ColumnDef::new(AgentVersions::ProviderVersion)
                            .big_integer()
                            .null(),
                    )
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [AgentVersions::ProviderVersion, AgentVersions::ProviderId] {
            manager
                .alter_table(
                    Table::alter()
                        .table(AgentVersions::Table)
                        .drop_column(column)
                        .take(),
                )
                .await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
