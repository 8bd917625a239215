//! `providers`: the current configuration of each LLM provider, one row per
//! provider; its history is in [`provider_version`](super::provider_version).

use sea_orm::entity::prelude::*;

/// A provider row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "providers")]
pub struct Model {
    /// UUIDv7 string, assigned by the registry.
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub id: String,
    #[sea_orm(column_type = "Text")]
    pub tenant_id: String,
    /// Unique within the tenant.
    #[sea_orm(column_type = "Text")]
    pub name: String,
    pub provider_type: ProviderType,
    /// Everything else: model_name, base_url, api_version, default_parameters …
    #[sea_orm(column_type = "JsonBinary")]
    pub config: Json,
    /// The api key as stored by crypto-service; never the plaintext.
    #[sea_orm(column_type = "Text", nullable)]
    pub api_key_ciphertext: Option<String>,
    /// At most one per tenant (a partial unique index).
    pub is_default: bool,
    /// The current version number (the newest `provider_versions` row).
    pub version: i64,
    pub create_time: DateTimeUtc,
    pub update_time: DateTimeUtc,
    #[sea_orm(column_type = "Text")]
    pub created_by: String,
    #[sea_orm(column_type = "Text")]
    pub updated_by: String,
    /// When the provider was deleted (soft delete); `None` while it is live.
    pub delete_time: Option<DateTimeUtc>,
    /// The hash of the newest `provider_versions` row: the head of the resource's
    /// version chain (tamper evidence; `None` before its first hashed
    /// version).
    #[sea_orm(column_type = "Text", nullable)]
    pub version_hash: Option<String>,
}

/// `providers.provider_type`, stored as text under a CHECK constraint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum ProviderType {
    #[sea_orm(string_value = "OPENAI")]
    OpenAi,
    #[sea_orm(string_value = "ANTHROPIC")]
    Anthropic,
    #[sea_orm(string_value = "AZURE_OPENAI")]
    AzureOpenAi,
    #[sea_orm(string_value = "GOOGLE")]
    Google,
    #[sea_orm(string_value = "BEDROCK")]
    Bedrock,
    #[sea_orm(string_value = "OLLAMA")]
    Ollama,
    #[sea_orm(string_value = "OPENAI_COMPATIBLE")]
    OpenAiCompatible,
    #[sea_orm(string_value = "MISTRAL")]
    Mistral,
    #[sea_orm(string_value = "COHERE")]
    Cohere,
    #[sea_orm(string_value = "GROQ")]
    Groq,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// Agents assigned to this provider (deleting it is RESTRICTed while any exist).
    #[sea_orm(has_many = "super::agent::Entity")]
    Agent,
    /// This provider's versions (deleted with it).
    #[sea_orm(has_many = "super::provider_version::Entity")]
    ProviderVersion,
}

impl Related<super::agent::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Agent.def()
    }
}

impl Related<super::provider_version::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ProviderVersion.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
