//! `key_canary`: the registry's one ciphertext of a known value, used to
//! tell whether crypto-service holds the key the stored values need.

use sea_orm::entity::prelude::*;

/// The canary row (there is one, id `canary`).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "key_canary")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub id: String,
    /// crypto-service ciphertext of the canary value.
    #[sea_orm(column_type = "Text")]
    pub ciphertext: String,
    pub create_time: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
