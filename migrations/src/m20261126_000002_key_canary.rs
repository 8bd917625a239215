//! The key canary: one ciphertext of a fixed value, written through
//! crypto-service when the registry first reaches it, and decrypted again
//! at every readiness check. A crypto-service holding the wrong key fails
//! that check at once, instead of failing every ResolveAgent later.

use sea_orm_migration::prelude::*;

/// Creates `key_canary`.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

/// The `key_canary` table.
#[derive(DeriveIden)]
pub enum KeyCanary {
    Table,
    Id,
    Ciphertext,
    CreateTime,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(KeyCanary::Table)
                    .col(
                        ColumnDef::new(KeyCanary::Id)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(KeyCanary::Ciphertext).text().not_null())
                    .col(
                        ColumnDef::new(KeyCanary::CreateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(KeyCanary::Table).take())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
