//! `provider_versions`: the immutable history of a provider, one row per
//! create, update or rollback, numbered 1, 2, 3 … per provider (unique
//! `(provider_id, version_number)`); deleted with the provider. The snapshot
//! carries the api key only as ciphertext.

use sea_orm::entity::prelude::*;

use super::VersionAction;

/// A provider version row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "provider_versions")]
pub struct Model {
    /// Database-assigned row id; not part of the public contract.
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(column_type = "Text")]
    pub provider_id: String,
    #[sea_orm(column_type = "Text")]
    pub tenant_id: String,
    pub version_number: i64,
    pub action: VersionAction,
    /// The complete configuration snapshot after this change, including the
    /// api key ciphertext (never the plaintext).
    #[sea_orm(column_type = "JsonBinary")]
    pub configuration: Json,
    /// The change from the previous version.
    #[sea_orm(column_type = "JsonBinary")]
    pub diff: Json,
    #[sea_orm(column_type = "Text")]
    pub change_description: String,
    /// The caller's subject.
    #[sea_orm(column_type = "Text")]
    pub changed_by: String,
    pub create_time: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The versioned provider (ON DELETE CASCADE).
    #[sea_orm(
        belongs_to = "super::provider::Entity",
        from = "Column::ProviderId",
        to = "super::provider::Column::Id",
        on_delete = "Cascade"
    )]
    Provider,
}

impl Related<super::provider::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Provider.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
