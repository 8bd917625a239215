//! Credential revisions: one row per API key ever stored for a provider,
//! numbered 1, 2, 3 … per provider, and whether (when, by whom) it was
//! revoked. A revoked revision is never restored by a rollback nor
//! returned by ResolveAgent. Deleted with its provider.

use sea_orm_migration::prelude::*;

/// Creates `provider_key_revisions`.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

/// The `provider_key_revisions` table.
#[derive(DeriveIden)]
pub enum ProviderKeyRevisions {
    Table,
    ProviderId,
    Revision,
    TenantId,
    CreateTime,
    CreatedBy,
    RevokeTime,
    RevokedBy,
}

/// The providers table, as the foreign key names it.
#[derive(DeriveIden)]
enum Providers {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ProviderKeyRevisions::Table)
                    .col(
                        ColumnDef::new(ProviderKeyRevisions::ProviderId)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ProviderKeyRevisions::Revision)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ProviderKeyRevisions::TenantId)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ProviderKeyRevisions::CreateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ProviderKeyRevisions::CreatedBy)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ProviderKeyRevisions::RevokeTime).timestamp_with_time_zone(),
                    )
                    .col(ColumnDef::new(ProviderKeyRevisions::RevokedBy).text())
                    .primary_key(
                        Index::create()
                            .col(ProviderKeyRevisions::ProviderId)
                            .col(ProviderKeyRevisions::Revision),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_provider_key_revisions_provider_id")
                            .from(
                                ProviderKeyRevisions::Table,
                                ProviderKeyRevisions::ProviderId,
                            )
                            .to(Providers::Table, Providers::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ProviderKeyRevisions::Table).take())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
