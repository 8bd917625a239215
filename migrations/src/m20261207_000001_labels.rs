//! Labels of versioned resources (agents, providers and any kind that
//! follows): `labels` holds where each label of a resource points now,
//! `label_moves` every move of one (from → to, by whom, when, why), and
//! `label_policies` each tenant's protected labels. One table of each for
//! every kind (`kind` is the kind's name, as errors give it: "agent",
//! "provider"), so a new kind has labels without a migration of its own.
//! A resource's labels and their moves are deleted with it by the store (in
//! the delete's transaction): a foreign key cannot name two tables.

use sea_orm_migration::prelude::*;

/// Creates `labels`, `label_moves` and `label_policies`.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

/// Where each label points now.
#[derive(DeriveIden)]
enum Labels {
    Table,
    Kind,
    ResourceId,
    Label,
    TenantId,
    VersionNumber,
    UpdateTime,
    UpdatedBy,
}

/// Every move of a label.
#[derive(DeriveIden)]
enum LabelMoves {
    Table,
    Id,
    TenantId,
    Kind,
    ResourceId,
    Label,
    FromVersion,
    ToVersion,
    Actor,
    MoveTime,
    Reason,
}

/// A tenant's protected labels.
#[derive(DeriveIden)]
enum LabelPolicies {
    Table,
    TenantId,
    ProtectedLabels,
    UpdateTime,
    UpdatedBy,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Labels::Table)
                    .col(ColumnDef::new(Labels::Kind).text().not_null())
                    .col(ColumnDef::new(Labels::ResourceId).text().not_null())
                    .col(ColumnDef::new(Labels::Label).text().not_null())
                    .col(ColumnDef::new(Labels::TenantId).text().not_null())
                    .col(
                        ColumnDef::new(Labels::VersionNumber)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Labels::UpdateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Labels::UpdatedBy).text().not_null())
                    .primary_key(
                        Index::create()
                            .col(Labels::Kind)
                            .col(Labels::ResourceId)
                            .col(Labels::Label),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LabelMoves::Table)
                    .col(
                        ColumnDef::new(LabelMoves::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(LabelMoves::TenantId).text().not_null())
                    .col(ColumnDef::new(LabelMoves::Kind).text().not_null())
                    .col(ColumnDef::new(LabelMoves::ResourceId).text().not_null())
                    .col(ColumnDef::new(LabelMoves::Label).text().not_null())
                    .col(
                        ColumnDef::new(LabelMoves::FromVersion)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(LabelMoves::ToVersion)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(LabelMoves::Actor).text().not_null())
                    .col(
                        ColumnDef::new(LabelMoves::MoveTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(LabelMoves::Reason).text().not_null())
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_label_moves_resource")
                    .table(LabelMoves::Table)
                    .col(LabelMoves::Kind)
                    .col(LabelMoves::ResourceId)
                    .col(LabelMoves::Id)
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LabelPolicies::Table)
                    .col(
                        ColumnDef::new(LabelPolicies::TenantId)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(LabelPolicies::ProtectedLabels)
                            .json_binary()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(LabelPolicies::UpdateTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(LabelPolicies::UpdatedBy).text().not_null())
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            LabelPolicies::Table.into_iden(),
            LabelMoves::Table.into_iden(),
            Labels::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).take())
                .await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
