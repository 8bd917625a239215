//! `agent_versions`: the immutable history of an agent, one row per create,
//! update or rollback, numbered 1, 2, 3 … per agent (unique
//! `(agent_id, version_number)`); deleted with the agent.

use sea_orm::entity::prelude::*;

use super::VersionAction;

/// An agent version row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "agent_versions")]
pub struct Model {
    /// Database-assigned row id; not part of the public contract.
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(column_type = "Text")]
    pub agent_id: String,
    #[sea_orm(column_type = "Text")]
    pub tenant_id: String,
    pub version_number: i64,
    pub action: VersionAction,
    /// The complete configuration snapshot after this change.
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
    /// The provider the agent resolved to when this version was written
    /// (assigned or the tenant's default), and that provider's version;
    /// `None` on rows written before they were recorded, or when there was
    /// none.
    #[sea_orm(column_type = "Text", nullable)]
    pub provider_id: Option<String>,
    pub provider_version: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The versioned agent (ON DELETE CASCADE).
    #[sea_orm(
        belongs_to = "super::agent::Entity",
        from = "Column::AgentId",
        to = "super::agent::Column::Id",
        on_delete = "Cascade"
    )]
    Agent,
}

impl Related<super::agent::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Agent.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
