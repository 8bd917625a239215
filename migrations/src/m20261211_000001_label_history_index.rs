//! `ix_label_moves_label` `(kind, resource_id, label, id)`: one label's
//! history of one resource.
//!
//! `List…LabelHistory` with a `label` asks for `kind = ? AND resource_id
//! = ? AND label = ?` in move order. With only `ix_label_moves_resource`
//! `(kind, resource_id, id)` the database walked every move of the
//! resource, of every label, testing each for the one asked: a resource
//! whose labels moved a million times cost a million rows per page, on
//! SQLite on the read connection every caller shares. With the label in
//! the index a page reads its own moves and stops at its `LIMIT`. The
//! resource's whole history (no `label`) keeps its index; a move writes
//! one index entry more.

use sea_orm_migration::prelude::*;

/// Creates `ix_label_moves_label`.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

/// The index's name.
const INDEX: &str = "ix_label_moves_label";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(LabelMoves::Table)
                    .col(LabelMoves::Kind)
                    .col(LabelMoves::ResourceId)
                    .col(LabelMoves::Label)
                    .col(LabelMoves::Id)
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(INDEX)
                    .table(LabelMoves::Table)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum LabelMoves {
    Table,
    Kind,
    ResourceId,
    Label,
    Id,
}
