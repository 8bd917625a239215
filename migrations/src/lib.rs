//! The agentregistry database schema and its sea-orm entities.
//!
//! The schema is created and changed only through the migrations in this
//! crate (sea-orm-migration), and the same migrations run on SQLite (the
//! embedded default) and PostgreSQL. The registry-service applies them at
//! start-up through [`Migrator`] (`Migrator::up(&db, None)`) or from its
//! `migrate` subcommand, and reads and writes the tables through the entities
//! in [`entity`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), migrations::DbErr> {
//! use migrations::{Migrator, MigratorTrait};
//!
//! let db = sea_orm::Database::connect("sqlite://registry.db?mode=rwc").await?;
//! Migrator::up(&db, None).await?;
//! for (name, applied) in migrations::status(&db).await? {
//!     println!("{name}: {}", if applied { "applied" } else { "pending" });
//! }
//! # Ok(())
//! # }
//! ```

pub mod entity;
mod m20261126_000001_create_registry;
mod m20261126_000002_key_canary;
mod m20261206_000001_provider_key_revisions;
mod m20261206_000002_agent_version_provider;
mod m20261207_000001_labels;
mod m20261207_000002_search;
mod m20261207_000003_change_log;
mod m20261208_000001_agent_tools_column;
mod m20261208_000002_soft_delete;
mod m20261208_000003_audit;
mod m20261208_000010_request_ids;
mod m20261209_000001_list_indexes;
mod m20261210_000001_live_agent_index;
mod m20261211_000001_label_history_index;

pub use m20261207_000003_change_log::{NOTIFY_CHANNEL, version_trigger};
pub use m20261208_000003_audit::audit_trigger;

pub use m20261208_000001_agent_tools_column::{
    POSTGRES_TRIGGERS as AGENT_TOOLS_POSTGRES_TRIGGERS,
    SQLITE_TRIGGERS as AGENT_TOOLS_SQLITE_TRIGGERS,
};
use sea_orm_migration::sea_orm::ConnectionTrait;
pub use sea_orm_migration::{DbErr, MigrationStatus, MigrationTrait, MigratorTrait};

/// Every migration of the registry schema, in the order they apply.
#[derive(Debug)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_registry::Migration),
            Box::new(m20261126_000002_key_canary::Migration),
            Box::new(m20261206_000001_provider_key_revisions::Migration),
            Box::new(m20261206_000002_agent_version_provider::Migration),
            Box::new(m20261207_000001_labels::Migration),
            Box::new(m20261207_000002_search::Migration),
            Box::new(m20261207_000003_change_log::Migration),
            Box::new(m20261208_000001_agent_tools_column::Migration),
            Box::new(m20261208_000002_soft_delete::Migration),
            Box::new(m20261208_000003_audit::Migration),
            Box::new(m20261208_000010_request_ids::Migration),
            Box::new(m20261209_000001_list_indexes::Migration),
            Box::new(m20261210_000001_live_agent_index::Migration),
            Box::new(m20261211_000001_label_history_index::Migration),
        ]
    }
}

/// Every migration this build knows, oldest first, with whether it has been
/// applied to `db` (`(name, applied)`).
///
/// Read-only: unlike [`MigratorTrait::get_migration_with_status`] it never
/// creates the `seaql_migrations` bookkeeping table, so a role without DDL
/// rights can call it (a database without that table reports every migration
/// as pending). It fails when `db` records a migration this build does not
/// know — the database is newer than the binary.
pub async fn status<C>(db: &C) -> Result<Vec<(String, bool)>, DbErr>
where
    C: ConnectionTrait,
{
    Ok(Migrator::get_migration_with_status_read_only(db)
        .await?
        .into_iter()
        .map(|m| (m.name().to_owned(), m.status() == MigrationStatus::Applied))
        .collect())
}
