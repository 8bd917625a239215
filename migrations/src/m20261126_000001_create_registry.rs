//! The first schema: providers, agents and their immutable version histories.
//!
//! Portable to SQLite and PostgreSQL: text ids (UUIDv7 strings assigned by the
//! application), string-backed enums guarded by CHECK constraints (no native
//! PostgreSQL enum types), JSON columns (`jsonb` on PostgreSQL, TEXT on SQLite)
//! and `timestamptz` timestamps (TEXT on SQLite). Every statement makes one
//! schema change, which SQLite requires.
//!
//! The value lists in the CHECK constraints are frozen here on purpose: a later
//! migration that adds a provider type must rebuild the constraint itself
//! rather than have this one change under an existing database.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

/// Creates the four registry tables and their indexes.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

/// `providers.provider_type` values, as stored.
const PROVIDER_TYPES: [&str; 10] = [
    "OPENAI",
    "ANTHROPIC",
    "AZURE_OPENAI",
    "GOOGLE",
    "BEDROCK",
    "OLLAMA",
    "OPENAI_COMPATIBLE",
    "MISTRAL",
    "COHERE",
    "GROQ",
];

/// `*_versions.action` values, as stored.
const VERSION_ACTIONS: [&str; 3] = ["CREATE", "UPDATE", "ROLLBACK"];

#[derive(DeriveIden)]
enum Providers {
    Table,
    Id,
    TenantId,
    Name,
    ProviderType,
    Config,
    ApiKeyCiphertext,
    IsDefault,
    Version,
    CreateTime,
    UpdateTime,
    CreatedBy,
    UpdatedBy,
}

#[derive(DeriveIden)]
enum Agents {
    Table,
    Id,
    TenantId,
    Name,
    LlmProviderId,
    Config,
    Version,
    CreateTime,
    UpdateTime,
    CreatedBy,
    UpdatedBy,
}

#[derive(DeriveIden)]
enum AgentVersions {
    Table,
    Id,
    AgentId,
    TenantId,
    VersionNumber,
    Action,
    Configuration,
    Diff,
    ChangeDescription,
    ChangedBy,
    CreateTime,
}

#[derive(DeriveIden)]
enum ProviderVersions {
    Table,
    Id,
    ProviderId,
    TenantId,
    VersionNumber,
    Action,
    Configuration,
    Diff,
    ChangeDescription,
    ChangedBy,
    CreateTime,
}

/// A text primary key (a UUIDv7 string assigned by the application).
fn text_id(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().not_null().primary_key().take()
}

fn text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().not_null().take()
}

fn text_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).text().null().take()
}

/// JSON: `jsonb` on PostgreSQL, TEXT on SQLite.
fn json(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).json_binary().not_null().take()
}

fn big_integer(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().not_null().take()
}

/// `timestamp with time zone` on PostgreSQL, TEXT (RFC 3339) on SQLite.
fn timestamptz(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .take()
}

/// A `bigint` identity (PostgreSQL) / `INTEGER PRIMARY KEY AUTOINCREMENT` (SQLite).
fn big_pk_auto(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .take()
}

/// A text column whose value must be one of `values`, as a named CHECK.
fn text_enum(col: impl IntoIden, check_name: &str, values: &[&str]) -> ColumnDef {
    let col = col.into_iden();
    ColumnDef::new(col.clone())
        .text()
        .not_null()
        .check(Check::named(
            check_name.to_owned(),
            Expr::col(col).is_in(values.iter().copied()),
        ))
        .take()
}

fn index(name: &str, table: impl IntoIden) -> IndexCreateStatement {
    Index::create().name(name).table(table).take()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // providers
        manager
            .create_table(
                Table::create()
                    .table(Providers::Table)
                    .col(text_id(Providers::Id))
                    .col(text(Providers::TenantId))
                    .col(text(Providers::Name))
                    .col(text_enum(
                        Providers::ProviderType,
                        "ck_providers_provider_type",
                        &PROVIDER_TYPES,
                    ))
                    .col(json(Providers::Config))
                    .col(text_null(Providers::ApiKeyCiphertext))
                    .col(
                        ColumnDef::new(Providers::IsDefault)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(big_integer(Providers::Version))
                    .col(timestamptz(Providers::CreateTime))
                    .col(timestamptz(Providers::UpdateTime))
                    .col(text(Providers::CreatedBy))
                    .col(text(Providers::UpdatedBy))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                index("ux_providers_tenant_name", Providers::Table)
                    .col(Providers::TenantId)
                    .col(Providers::Name)
                    .unique()
                    .take(),
            )
            .await?;
        // At most one default provider per tenant: a partial unique index.
        let is_default = match manager.get_database_backend() {
            DbBackend::Postgres => Expr::col(Providers::IsDefault),
            DbBackend::Sqlite => Expr::col(Providers::IsDefault).eq(1),
            other => {
                return Err(DbErr::Migration(format!(
                    "agentregistry supports SQLite and PostgreSQL, not {other:?}"
                )));
            }
        };
        manager
            .create_index(
                index("ux_providers_tenant_default", Providers::Table)
                    .col(Providers::TenantId)
                    .unique()
                    .and_where(is_default)
                    .take(),
            )
            .await?;
        // Keyset pagination: WHERE tenant_id = ? AND id > ? ORDER BY id.
        manager
            .create_index(
                index("ix_providers_tenant_id", Providers::Table)
                    .col(Providers::TenantId)
                    .col(Providers::Id)
                    .take(),
            )
            .await?;

        // agents
        manager
            .create_table(
                Table::create()
                    .table(Agents::Table)
                    .col(text_id(Agents::Id))
                    .col(text(Agents::TenantId))
                    .col(text(Agents::Name))
                    .col(text_null(Agents::LlmProviderId))
                    .col(json(Agents::Config))
                    .col(big_integer(Agents::Version))
                    .col(timestamptz(Agents::CreateTime))
                    .col(timestamptz(Agents::UpdateTime))
                    .col(text(Agents::CreatedBy))
                    .col(text(Agents::UpdatedBy))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_agents_llm_provider_id")
                            .from(Agents::Table, Agents::LlmProviderId)
                            .to(Providers::Table, Providers::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_index(
                index("ux_agents_tenant_name", Agents::Table)
                    .col(Agents::TenantId)
                    .col(Agents::Name)
                    .unique()
                    .take(),
            )
            .await?;
        manager
            .create_index(
                index("ix_agents_tenant_id", Agents::Table)
                    .col(Agents::TenantId)
                    .col(Agents::Id)
                    .take(),
            )
            .await?;
        // Serves the RESTRICT check on provider deletion and "agents using provider X".
        manager
            .create_index(
                index("ix_agents_llm_provider_id", Agents::Table)
                    .col(Agents::LlmProviderId)
                    .take(),
            )
            .await?;

        // agent_versions
        manager
            .create_table(
                Table::create()
                    .table(AgentVersions::Table)
                    .col(big_pk_auto(AgentVersions::Id))
                    .col(text(AgentVersions::AgentId))
                    .col(text(AgentVersions::TenantId))
                    .col(big_integer(AgentVersions::VersionNumber))
                    .col(text_enum(
                        AgentVersions::Action,
                        "ck_agent_versions_action",
                        &VERSION_ACTIONS,
                    ))
                    .col(json(AgentVersions::Configuration))
                    .col(json(AgentVersions::Diff))
                    .col(text(AgentVersions::ChangeDescription))
                    .col(text(AgentVersions::ChangedBy))
                    .col(timestamptz(AgentVersions::CreateTime))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_agent_versions_agent_id")
                            .from(AgentVersions::Table, AgentVersions::AgentId)
                            .to(Agents::Table, Agents::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .take(),
            )
            .await?;
        // No gaps, no duplicates backstop; also serves "newest first" keyset pages
        // (scanned backwards) and the cascade from agents.
        manager
            .create_index(
                index("ux_agent_versions_agent_version", AgentVersions::Table)
                    .col(AgentVersions::AgentId)
                    .col(AgentVersions::VersionNumber)
                    .unique()
                    .take(),
            )
            .await?;

        // provider_versions (the snapshot JSON carries the api key ciphertext)
        manager
            .create_table(
                Table::create()
                    .table(ProviderVersions::Table)
                    .col(big_pk_auto(ProviderVersions::Id))
                    .col(text(ProviderVersions::ProviderId))
                    .col(text(ProviderVersions::TenantId))
                    .col(big_integer(ProviderVersions::VersionNumber))
                    .col(text_enum(
                        ProviderVersions::Action,
                        "ck_provider_versions_action",
                        &VERSION_ACTIONS,
                    ))
                    .col(json(ProviderVersions::Configuration))
                    .col(json(ProviderVersions::Diff))
                    .col(text(ProviderVersions::ChangeDescription))
                    .col(text(ProviderVersions::ChangedBy))
                    .col(timestamptz(ProviderVersions::CreateTime))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_provider_versions_provider_id")
                            .from(ProviderVersions::Table, ProviderVersions::ProviderId)
                            .to(Providers::Table, Providers::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_index(
                index(
                    "ux_provider_versions_provider_version",
                    ProviderVersions::Table,
                )
                .col(ProviderVersions::ProviderId)
                .col(ProviderVersions::VersionNumber)
                .unique()
                .take(),
            )
            .await?;

        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Reverse order of creation: children before the tables they reference.
        // Indexes go with their tables.
        manager
            .drop_table(Table::drop().table(ProviderVersions::Table).take())
            .await?;
        manager
            .drop_table(Table::drop().table(AgentVersions::Table).take())
            .await?;
        manager
            .drop_table(Table::drop().table(Agents::Table).take())
            .await?;
        manager
            .drop_table(Table::drop().table(Providers::Table).take())
            .await
    }

    /// One transaction on every backend: on SQLite too (where sea-orm-migration
    /// would otherwise run each statement on its own), so a failed `up` leaves
    /// no half-built schema behind. Both databases have transactional DDL.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
