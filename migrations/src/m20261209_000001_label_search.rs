//! What the `label` filter field needs (`label:"production"`, issue 18):
//! an index on `labels` that leads with the tenant, the kind and the label,
//! so that the few resources holding a label are found in it instead of by
//! reading every label of the tenant. The primary key `(kind, resource_id,
//! label)` serves a resource's own labels, not this.

use sea_orm_migration::prelude::*;

/// Creates `ix_labels_search`.
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

const INDEX: &str = "ix_labels_search";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(Labels::Table)
                    .col(Labels::TenantId)
                    .col(Labels::Kind)
                    .col(Labels::Label)
                    .col(Labels::ResourceId)
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(Labels::Table).to_owned())
            .await
    }
}
