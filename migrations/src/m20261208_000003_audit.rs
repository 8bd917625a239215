//! The audit trail (issue 18): `audit_events`, one row per mutation, label
//! move, label policy update, key revocation, credential release and key
//! operation, append-only; and the request id on version rows.
//!
//! A version row records its audit event itself, like its change-log row:
//! an AFTER INSERT trigger on each version table ([`audit_trigger`]; a new
//! kind's migration adds its own) appends the event with the version's
//! action, author, time and request id. So every write path, the
//! one-statement fast writes included, audits its write in the same
//! transaction without another statement from the registry. The other
//! events are inserted by the registry (`store::audit`), inside the
//! transaction of what they record when there is one.
//!
//! `details` is JSON (`jsonb` on PostgreSQL, TEXT on SQLite) and never
//! holds a secret. `chain_seq` and `hash` are filled later, by the sealing
//! task that chains events (tamper evidence; NULL until sealed).
//!
//! Tamper evidence also adds a `hash` to every version row and label move
//! and the head of each resource's version chain to its row (see
//! [`ADDED_COLUMNS`]); the registry computes them (`store::chain`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// Creates `audit_events`, `audit_seals`, the version tables' audit
/// triggers, and the columns of [`ADDED_COLUMNS`].
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

/// The audit trail.
#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    TenantId,
    EventTime,
    Actor,
    Action,
    Kind,
    Resource,
    RequestId,
    Details,
    ChainSeq,
    Hash,
}

/// The head of the audit chain: one row (`chain = 'audit'`), the last
/// sealed event's position and hash.
#[derive(DeriveIden)]
enum AuditSeals {
    Table,
    Chain,
    Seq,
    Hash,
    SealTime,
}

/// The version tables of this migration's time: (table, owner, kind, the
/// resource name's collection).
const VERSION_TABLES: [(&str, &str, &str, &str); 2] = [
    ("agent_versions", "agent_id", "agent", "agents"),
    ("provider_versions", "provider_id", "provider", "providers"),
];

/// The text columns this migration adds (all nullable): the request id of
/// a version, and the hash chains' links and heads (tamper evidence): each
/// version row's and label move's `hash`, and on each resource row the
/// hash of its newest version (`version_hash`, the head of its chain, so a
/// write links its version without reading the version table).
const ADDED_COLUMNS: [(&str, &str); 7] = [
    ("agent_versions", "request_id"),
    ("provider_versions", "request_id"),
    ("agent_versions", "hash"),
    ("provider_versions", "hash"),
    ("agents", "version_hash"),
    ("providers", "version_hash"),
    ("label_moves", "hash"),
];

/// The statements that make inserts into `table` (a version table whose
/// resource column is `owner`) record an audit event of kind `kind`
/// (`"agent"`) on resource `<collection>/<id>`: an AFTER INSERT trigger
/// that appends the event with the version row's action, author, time and
/// request id, and as details its number and change description.
pub fn audit_trigger(
    backend: DbBackend,
    table: &str,
    owner: &str,
    kind: &str,
    collection: &str,
) -> Vec<String> {
    let name = format!("{table}_record_audit");
    let columns = "tenant_id, event_time, actor, action, kind, resource, request_id, details";
    let values = |object: &str| {
        format!(
            "NEW.tenant_id, NEW.create_time, NEW.changed_by, NEW.action, '{kind}', \
             '{collection}/' || NEW.{owner}, NEW.request_id, {object}('version_number', \
             NEW.version_number, 'change_description', NEW.change_description)"
        )
    };
    match backend {
        DbBackend::Postgres => vec![
            format!(
                "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 INSERT INTO audit_events ({columns}) VALUES ({}); RETURN NULL; END $$",
                values("jsonb_build_object")
            ),
            format!(
                "CREATE TRIGGER {name} AFTER INSERT ON {table} FOR EACH ROW \
                 EXECUTE FUNCTION {name}()"
            ),
        ],
        _ => vec![format!(
            "CREATE TRIGGER {name} AFTER INSERT ON {table} BEGIN \
             INSERT INTO audit_events ({columns}) VALUES ({}); END",
            values("json_object")
        )],
    }
}

/// The statements that drop what [`audit_trigger`] made.
fn drop_audit_trigger(backend: DbBackend, table: &str) -> Vec<String> {
    let name = format!("{table}_record_audit");
    match backend {
        DbBackend::Postgres => vec![
            format!("DROP TRIGGER IF EXISTS {name} ON {table}"),
            format!("DROP FUNCTION IF EXISTS {name}()"),
        ],
        _ => vec![format!("DROP TRIGGER IF EXISTS {name}")],
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(
                        ColumnDef::new(AuditEvents::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(AuditEvents::TenantId).text().not_null())
                    .col(
                        ColumnDef::new(AuditEvents::EventTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(AuditEvents::Actor).text().not_null())
                    .col(ColumnDef::new(AuditEvents::Action).text().not_null())
                    .col(ColumnDef::new(AuditEvents::Kind).text().not_null())
                    .col(ColumnDef::new(AuditEvents::Resource).text().not_null())
                    .col(ColumnDef::new(AuditEvents::RequestId).text())
                    .col(
                        ColumnDef::new(AuditEvents::Details)
                            .json_binary()
                            .not_null(),
                    )
                    .col(ColumnDef::new(AuditEvents::ChainSeq).big_integer())
                    .col(ColumnDef::new(AuditEvents::Hash).text())
                    .take(),
            )
            .await?;
        // A tenant admin's listing: the tenant's events by id.
        manager
            .create_index(
                Index::create()
                    .name("ix_audit_events_tenant")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::TenantId)
                    .col(AuditEvents::Id)
                    .take(),
            )
            .await?;
        // Retention deletes by time.
        manager
            .create_index(
                Index::create()
                    .name("ix_audit_events_time")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::EventTime)
                    .take(),
            )
            .await?;
        // The chain, in order; each position once.
        manager
            .create_index(
                Index::create()
                    .name("ux_audit_events_chain")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::ChainSeq)
                    .unique()
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AuditSeals::Table)
                    .col(
                        ColumnDef::new(AuditSeals::Chain)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(AuditSeals::Seq).big_integer().not_null())
                    .col(ColumnDef::new(AuditSeals::Hash).text().not_null())
                    .col(
                        ColumnDef::new(AuditSeals::SealTime)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .take(),
            )
            .await?;
        let backend = manager.get_database_backend();
        let db = manager.get_connection();
        // One change per ALTER TABLE: SQLite takes no more.
        for (table, column) in ADDED_COLUMNS {
            db.execute_unprepared(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))
                .await?;
        }
        for (table, owner, kind, collection) in VERSION_TABLES {
            for statement in audit_trigger(backend, table, owner, kind, collection) {
                db.execute_unprepared(&statement).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let db = manager.get_connection();
        for (table, _, _, _) in VERSION_TABLES {
            for statement in drop_audit_trigger(backend, table) {
                db.execute_unprepared(&statement).await?;
            }
        }
        for (table, column) in ADDED_COLUMNS {
            db.execute_unprepared(&format!("ALTER TABLE {table} DROP COLUMN {column}"))
                .await?;
        }
        manager
            .drop_table(Table::drop().table(AuditSeals::Table).take())
            .await?;
        manager
            .drop_table(Table::drop().table(AuditEvents::Table).take())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
