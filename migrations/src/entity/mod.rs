//! sea-orm entities for the registry tables, one module per table.
//!
//! They mirror the schema built by the migrations of this crate; the tests in
//! `tests/schema.rs` round-trip every column through them on SQLite and
//! PostgreSQL. JSON columns are [`serde_json::Value`](sea_orm::prelude::Json)
//! (`jsonb` on PostgreSQL, TEXT on SQLite), timestamps are
//! `chrono::DateTime<Utc>` ([`DateTimeUtc`](sea_orm::prelude::DateTimeUtc)),
//! and the string-backed enums below match the CHECK constraints.

pub mod agent;
pub mod agent_version;
pub mod change;
pub mod key_canary;
pub mod provider;
pub mod provider_key_revision;
pub mod provider_version;
pub mod tenant_revision;

use sea_orm::entity::prelude::*;

pub use provider::ProviderType;

/// What appended a version row (`agent_versions.action`,
/// `provider_versions.action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum VersionAction {
    /// The resource was created (version 1).
    #[sea_orm(string_value = "CREATE")]
    Create,
    /// The resource's configuration was changed.
    #[sea_orm(string_value = "UPDATE")]
    Update,
    /// An earlier snapshot was restored as the current configuration.
    #[sea_orm(string_value = "ROLLBACK")]
    Rollback,
    /// The resource was deleted (soft delete): the configuration is kept.
    #[sea_orm(string_value = "DELETE")]
    Delete,
    /// A deleted resource was restored, configuration unchanged.
    #[sea_orm(string_value = "UNDELETE")]
    Undelete,
}
