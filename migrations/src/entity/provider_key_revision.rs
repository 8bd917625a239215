//! `provider_key_revisions`: every API key ever stored for a provider, by
//! revision (1, 2, 3 … per provider), and whether it was revoked. Holds no
//! key material: the ciphertexts stay in the provider row and snapshots.

use sea_orm::entity::prelude::*;

/// One credential revision of a provider.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "provider_key_revisions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub provider_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub revision: i64,
    #[sea_orm(column_type = "Text")]
    pub tenant_id: String,
    pub create_time: DateTimeUtc,
    /// The subject that stored the key.
    #[sea_orm(column_type = "Text")]
    pub created_by: String,
    /// When it was revoked; `None` while it may be used.
    pub revoke_time: Option<DateTimeUtc>,
    /// The subject that revoked it.
    #[sea_orm(column_type = "Text", nullable)]
    pub revoked_by: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The provider (ON DELETE CASCADE).
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
