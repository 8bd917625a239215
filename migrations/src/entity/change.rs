//! `changes`: the change log `WatchChanges` streams, one row per committed
//! change of a tenant, keyed by `(tenant_id, revision)`; revisions count
//! 1, 2, 3 … per tenant with no gap, in commit order (see the migration
//! `m20261207_000003_change_log`). Old rows are compacted away from the
//! bottom; nothing else ever deletes or edits one.

use sea_orm::entity::prelude::*;

/// One change.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "changes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub tenant_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub revision: i64,
    /// The resource kind (`AGENT`, `PROVIDER`).
    #[sea_orm(column_type = "Text")]
    pub kind: String,
    #[sea_orm(column_type = "Text")]
    pub resource_id: String,
    /// The version written, or the resource's last version (a delete), or
    /// the version a label now names (0 once deleted).
    pub version_number: i64,
    /// The label moved, for label changes.
    #[sea_orm(column_type = "Text", nullable)]
    pub label: Option<String>,
    /// What happened (`CREATE`, `UPDATE`, `ROLLBACK`, `DELETE`, …).
    #[sea_orm(column_type = "Text")]
    pub action: String,
    pub commit_time: DateTimeUtc,
    /// The caller's subject.
    #[sea_orm(column_type = "Text")]
    pub changed_by: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
