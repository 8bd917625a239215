//! The request ids of AIP-155 retries: one row per mutation a caller named
//! with a `request_id`, written in the same statement or transaction as the
//! mutation itself, so a retry finds it exactly when the first call's write
//! committed — after a restart and through any replica alike.
//!
//! A row holds what the retry must match (the method and the SHA-256
//! fingerprint of the request with `request_id` and `validate_only`
//! cleared) and what its answer is rebuilt from: the resource and the
//! version the call wrote or answered with (a version is immutable
//! history), and for a label its time and author. Rows older than the
//! retention window are deleted by the registry's pruning task, by
//! `create_time` (indexed).

use sea_orm_migration::prelude::*;

/// Creates `request_ids`.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

/// The remembered request ids.
#[derive(DeriveIden)]
enum RequestIds {
    Table,
    TenantId,
    RequestId,
    Method,
    Fingerprint,
    ResourceId,
    VersionNumber,
    AnswerTime,
    AnsweredBy,
    CreateTime,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RequestIds::Table)
                    .col(ColumnDef::new(RequestIds::TenantId).text().not_null())
                    .col(ColumnDef::new(RequestIds::RequestId).text().not_null())
                    .col(ColumnDef::new(RequestIds::Method).text().not_null())
                    .col(ColumnDef::new(RequestIds::Fingerprint).text().not_null())
                    .col(ColumnDef::new(RequestIds::ResourceId).text().not_null())
                    .col(
                        ColumnDef::new(RequestIds::VersionNumber)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RequestIds::AnswerTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(RequestIds::AnsweredBy).text().not_null())
                    .col(
                        ColumnDef::new(RequestIds::CreateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(RequestIds::TenantId)
                            .col(RequestIds::RequestId),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_request_ids_create_time")
                    .table(RequestIds::Table)
                    .col(RequestIds::CreateTime)
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(RequestIds::Table).take())
            .await
    }
}
