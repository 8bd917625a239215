//! Soft delete (AIP-164): a deleted resource keeps its row, its history and
//! its labels until it is purged. Its row's `delete_time` says when it was
//! deleted (NULL: live); its name stays taken, since the unique
//! `(tenant_id, name)` index covers deleted rows too. Deleting and
//! undeleting each write a version, so the version tables' `action` takes
//! `DELETE` and `UNDELETE` as well (the change-log trigger copies the
//! action, so the change log records them as such).
//!
//! The CHECK on `action` was frozen by the first migration; PostgreSQL
//! replaces it, SQLite (which cannot alter a CHECK) rebuilds each version
//! table from its own stored definition with the new value list, and then
//! re-creates the table's indexes and triggers as they were.
//!
//! `down` restores the old value list, which fails (and rolls back) while
//! any DELETE or UNDELETE version exists: purge those resources first.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

/// Adds `delete_time` and widens the version actions.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

/// The tables of versioned resources and their version tables.
const KINDS: [(&str, &str); 2] = [
    ("agents", "agent_versions"),
    ("providers", "provider_versions"),
];

/// The version actions before this migration, as the CHECK lists them.
const OLD_ACTIONS: &str = "'CREATE', 'UPDATE', 'ROLLBACK'";
/// The version actions from this migration on.
const NEW_ACTIONS: &str = "'CREATE', 'UPDATE', 'ROLLBACK', 'DELETE', 'UNDELETE'";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for (table, versions) in KINDS {
            // One change per statement (SQLite's ALTER TABLE).
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new(table))
                        .add_column(
                            ColumnDef::new(Alias::new("delete_time"))
                                .timestamp_with_time_zone()
                                .null(),
                        )
                        .take(),
                )
                .await?;
            // Partial: live rows (nearly all) cost no index entry; the
            // retention task finds the expired ones through it.
            db.execute_unprepared(&format!(
                "CREATE INDEX ix_{table}_delete_time ON {table} (delete_time) \
                 WHERE delete_time IS NOT NULL"
            ))
            .await?;
            set_actions(manager, versions, OLD_ACTIONS, NEW_ACTIONS).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for (table, versions) in KINDS {
            set_actions(manager, versions, NEW_ACTIONS, OLD_ACTIONS).await?;
            db.execute_unprepared(&format!("DROP INDEX ix_{table}_delete_time"))
                .await?;
            db.execute_unprepared(&format!("ALTER TABLE {table} DROP COLUMN delete_time"))
                .await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

/// Replaces the value list `from` of `<versions>.action`'s CHECK with `to`.
async fn set_actions(
    manager: &SchemaManager<'_>,
    versions: &str,
    from: &str,
    to: &str,
) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let check = format!("ck_{versions}_action");
    if manager.get_database_backend() == DbBackend::Postgres {
        db.execute_unprepared(&format!("ALTER TABLE {versions} DROP CONSTRAINT {check}"))
            .await?;
        db.execute_unprepared(&format!(
            "ALTER TABLE {versions} ADD CONSTRAINT {check} CHECK (action IN ({to}))"
        ))
        .await?;
        return Ok(());
    }
    // SQLite: the table's definition, indexes and triggers as stored.
    let schema = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "SELECT type, sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL",
            [versions.into()],
        ))
        .await?;
    let mut definition = None;
    let mut dependents = Vec::new();
    for row in schema {
        let kind: String = row.try_get("", "type")?;
        let sql: String = row.try_get("", "sql")?;
        if kind == "table" {
            definition = Some(sql);
        } else {
            dependents.push(sql);
        }
    }
    let definition =
        definition.ok_or_else(|| DbErr::Migration(format!("no table {versions} to rebuild")))?;
    let rebuilt = format!("{versions}_rebuilt");
    let create = definition
        .replacen(&format!("\"{versions}\""), &format!("\"{rebuilt}\""), 1)
        .replacen(from, to, 1);
    if !create.contains(&format!("\"{rebuilt}\"")) || !create.contains(to) {
        return Err(DbErr::Migration(format!(
            "{versions}: its stored definition does not read as expected: {definition}"
        )));
    }
    let statements = [
        create,
        format!("INSERT INTO {rebuilt} SELECT * FROM {versions}"),
        format!("DROP TABLE {versions}"),
        format!("ALTER TABLE {rebuilt} RENAME TO {versions}"),
    ];
    for statement in statements.iter().chain(&dependents) {
        db.execute_unprepared(statement).await?;
    }
    Ok(())
}
