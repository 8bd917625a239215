//! `agents`: the current configuration of each CrewAI agent, one row per
//! agent; its history is in [`agent_version`](super::agent_version).

use sea_orm::entity::prelude::*;

/// An agent row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "agents")]
pub struct Model {
    /// UUIDv7 string, assigned by the registry.
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub id: String,
    #[sea_orm(column_type = "Text")]
    pub tenant_id: String,
    /// Unique within the tenant.
    #[sea_orm(column_type = "Text")]
    pub name: String,
    /// The assigned provider; `None` means the tenant's default provider.
    #[sea_orm(column_type = "Text", nullable)]
    pub llm_provider_id: Option<String>,
    /// Every other agent field (role, goal, backstory, tools, llm_overrides …).
    #[sea_orm(column_type = "JsonBinary")]
    pub config: Json,
    /// `config.tools` as a JSON array of names, written with `config`: what
    /// the triggers keeping `agent_tools` read (a changed string is changed
    /// tools, with no JSON parsed to tell).
    #[sea_orm(column_type = "Text")]
    pub tools: String,
    /// The current version number (the newest `agent_versions` row).
    pub version: i64,
    pub create_time: DateTimeUtc,
    pub update_time: DateTimeUtc,
    #[sea_orm(column_type = "Text")]
    pub created_by: String,
    #[sea_orm(column_type = "Text")]
    pub updated_by: String,
    /// When the agent was deleted (soft delete); `None` while it is live.
    pub delete_time: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The assigned provider (ON DELETE RESTRICT).
    #[sea_orm(
        belongs_to = "super::provider::Entity",
        from = "Column::LlmProviderId",
        to = "super::provider::Column::Id",
        on_delete = "Restrict"
    )]
    Provider,
    /// This agent's versions (deleted with it).
    #[sea_orm(has_many = "super::agent_version::Entity")]
    AgentVersion,
}

impl Related<super::provider::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Provider.def()
    }
}

impl Related<super::agent_version::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::AgentVersion.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
