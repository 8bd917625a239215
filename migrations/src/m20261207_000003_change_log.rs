//! The change log that `WatchChanges` streams: one row per committed
//! change of a tenant (a version written, a resource deleted, a label
//! moved), numbered by the tenant's revision 1, 2, 3 … with no gap, in
//! commit order.
//!
//! The revision comes from the tenant's row in `tenant_revisions`, bumped
//! in the same transaction as the change. On PostgreSQL that row stays
//! locked until the transaction ends, so a tenant's changes commit in
//! revision order (a watcher that has read revision N never later finds a
//! smaller one committed); on SQLite every write is serialized anyway.
//! Writers take that lock as their last lock, so it is never part of a
//! deadlock: see ARCHITECTURE.md, "The change log".
//!
//! Version rows record their change themselves: a trigger on each version
//! table ([`version_trigger`]; a new kind's migration adds its own), so
//! every write path (the fast one-statement writes included) gets it
//! without another statement. Deletes and label moves record theirs from
//! the registry. On PostgreSQL every insert into `changes` also sends
//! `NOTIFY agentregistry_changes, '<tenant> <revision>'` at commit, which
//! is how a change written through one replica reaches watchers on every
//! other.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// Creates `tenant_revisions`, `changes` and the version tables' triggers.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

/// Each tenant's last revision.
#[derive(DeriveIden)]
enum TenantRevisions {
    Table,
    TenantId,
    Revision,
}

/// The change log.
#[derive(DeriveIden)]
enum Changes {
    Table,
    TenantId,
    Revision,
    Kind,
    ResourceId,
    VersionNumber,
    Label,
    Action,
    CommitTime,
    ChangedBy,
}

/// The PostgreSQL channel every change is announced on.
pub const NOTIFY_CHANNEL: &str = "agentregistry_changes";

/// The statements that make inserts into `table` (a version table whose
/// resource column is `owner`) record a change of `kind` (`"AGENT"`): an
/// AFTER INSERT trigger that bumps the tenant's revision and appends the
/// change with the version row's number, action, author and time.
pub fn version_trigger(backend: DbBackend, table: &str, owner: &str, kind: &str) -> Vec<String> {
    let name = format!("{table}_record_change");
    let insert_change = format!(
        "INSERT INTO changes (tenant_id, revision, kind, resource_id, version_number, label, \
         action, commit_time, changed_by) SELECT NEW.tenant_id, revision, '{kind}', NEW.{owner}, \
         NEW.version_number, NULL, NEW.action, NEW.create_time, NEW.changed_by"
    );
    match backend {
        DbBackend::Postgres => vec![
            format!(
                "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 WITH bumped AS (INSERT INTO tenant_revisions AS t (tenant_id, revision) \
                 VALUES (NEW.tenant_id, 1) ON CONFLICT (tenant_id) DO UPDATE SET revision = \
                 t.revision + 1 RETURNING t.revision) {insert_change} FROM bumped; \
                 RETURN NULL; END $$"
            ),
            format!(
                "CREATE TRIGGER {name} AFTER INSERT ON {table} FOR EACH ROW \
                 EXECUTE FUNCTION {name}()"
            ),
        ],
        _ => vec![format!(
            "CREATE TRIGGER {name} AFTER INSERT ON {table} BEGIN \
             INSERT INTO tenant_revisions (tenant_id, revision) VALUES (NEW.tenant_id, 1) \
             ON CONFLICT (tenant_id) DO UPDATE SET revision = revision + 1; \
             {insert_change} FROM tenant_revisions WHERE tenant_id = NEW.tenant_id; END"
        )],
    }
}

/// The statements that drop what [`version_trigger`] made.
fn drop_version_trigger(backend: DbBackend, table: &str) -> Vec<String> {
    let name = format!("{table}_record_change");
    match backend {
        DbBackend::Postgres => vec![
            format!("DROP TRIGGER IF EXISTS {name} ON {table}"),
            format!("DROP FUNCTION IF EXISTS {name}()"),
        ],
        _ => vec![format!("DROP TRIGGER IF EXISTS {name}")],
    }
}

/// The version tables of this migration's time: (table, owner, kind).
const VERSION_TABLES: [(&str, &str, &str); 2] = [
    ("agent_versions", "agent_id", "AGENT"),
    ("provider_versions", "provider_id", "PROVIDER"),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(TenantRevisions::Table)
                    .col(
                        ColumnDef::new(TenantRevisions::TenantId)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(TenantRevisions::Revision)
                            .big_integer()
                            .not_null(),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Changes::Table)
                    .col(ColumnDef::new(Changes::TenantId).text().not_null())
                    .col(ColumnDef::new(Changes::Revision).big_integer().not_null())
                    .col(ColumnDef::new(Changes::Kind).text().not_null())
                    .col(ColumnDef::new(Changes::ResourceId).text().not_null())
                    .col(
                        ColumnDef::new(Changes::VersionNumber)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Changes::Label).text())
                    .col(ColumnDef::new(Changes::Action).text().not_null())
                    .col(
                        ColumnDef::new(Changes::CommitTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Changes::ChangedBy).text().not_null())
                    .primary_key(
                        Index::create()
                            .col(Changes::TenantId)
                            .col(Changes::Revision),
                    )
                    .take(),
            )
            .await?;
        let backend = manager.get_database_backend();
        let db = manager.get_connection();
        let mut statements = Vec::new();
        for (table, owner, kind) in VERSION_TABLES {
            statements.extend(version_trigger(backend, table, owner, kind));
        }
        if backend == DbBackend::Postgres {
            statements.push(format!(
                "CREATE FUNCTION changes_notify() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 PERFORM pg_notify('{NOTIFY_CHANNEL}', NEW.tenant_id || ' ' || NEW.revision); \
                 RETURN NULL; END $$"
            ));
            statements.push(
                "CREATE TRIGGER changes_notify AFTER INSERT ON changes FOR EACH ROW \
                 EXECUTE FUNCTION changes_notify()"
                    .to_owned(),
            );
        }
        for statement in statements {
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let db = manager.get_connection();
        let mut statements = Vec::new();
        for (table, _, _) in VERSION_TABLES {
            statements.extend(drop_version_trigger(backend, table));
        }
        if backend == DbBackend::Postgres {
            statements.push("DROP TRIGGER IF EXISTS changes_notify ON changes".to_owned());
            statements.push("DROP FUNCTION IF EXISTS changes_notify()".to_owned());
        }
        for statement in statements {
            db.execute_unprepared(&statement).await?;
        }
        manager
            .drop_table(Table::drop().table(Changes::Table).take())
            .await?;
        manager
            .drop_table(Table::drop().table(TenantRevisions::Table).take())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
