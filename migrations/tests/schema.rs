//! The registry schema, tested through its behaviour: uniqueness, the one
//! default provider per tenant, foreign keys (cascade and restrict), CHECK
//! constraints, entity round trips, and `down` / `up` again.
//!
//! Every check is written once, as an `async fn(DatabaseConnection)`, and runs
//! on two backends: a fresh SQLite file (configured as the registry runs it:
//! WAL, busy timeout, foreign keys on), and — when `TEST_POSTGRES_URL` is set,
//! e.g. `postgres://postgres@127.0.0.1:5432/test` — a fresh PostgreSQL
//! database `mig_<random hex>` created through that URL and dropped afterwards,
//! even when the check fails.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt as _;
use migrations::entity::{
    ProviderType, VersionAction, agent, agent_version, change, provider, provider_version,
    tenant_revision,
};
use migrations::{Migrator, MigratorTrait};
use sea_orm::prelude::DateTimeUtc;
use sea_orm::sea_query::{Query, SimpleExpr};
use sea_orm::sqlx::error::ErrorKind;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ActiveModelTrait, ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectOptions,
    ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, EntityTrait, Iterable,
    ModelTrait, PaginatorTrait, QueryFilter, QueryOrder, RuntimeErr, SqliteTransactionMode,
    Statement, TransactionOptions, TransactionTrait,
};
use serde_json::json;
use tempfile::TempDir;

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database and what it takes to throw it away.
struct Fresh {
    db: DatabaseConnection,
    cleanup: Cleanup,
}

enum Cleanup {
    /// The directory holding the SQLite file (and its WAL).
    Sqlite(TempDir),
    /// The maintenance connection and the database to drop through it.
    Postgres {
        admin: DatabaseConnection,
        name: String,
    },
}

/// Connects to a SQLite file the way the registry does: WAL, synchronous
/// NORMAL, foreign keys on, the given busy timeout. (The schema tests' own
/// helper: the connection the registry opens, FULL, is checked by
/// registry-service's `store::tests`.)
async fn connect_sqlite(url: &str, busy_timeout: Duration) -> DatabaseConnection {
    let mut options = ConnectOptions::new(url);
    options.sqlx_logging(false).map_sqlx_sqlite_opts(move |o| {
        o.journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(busy_timeout)
            .foreign_keys(true)
    });
    Database::connect(options)
        .await
        .expect("the SQLite file opens")
}

fn sqlite_url(dir: &TempDir) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("registry.db").display()
    )
}

/// `base` with its database name replaced by `name` (query string kept).
fn with_database(base: &str, name: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (base, None),
    };
    let authority = head.find("://").map_or(0, |i| i + 3);
    let path = head[authority..]
        .find('/')
        .map_or(head.len(), |i| authority + i);
    let mut url = format!("{}/{name}", &head[..path]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// A fresh database on `backend`, or `None` when PostgreSQL is not configured.
async fn fresh(backend: Backend) -> Option<Fresh> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let db = connect_sqlite(&sqlite_url(&dir), Duration::from_secs(5)).await;
            Some(Fresh {
                db,
                cleanup: Cleanup::Sqlite(dir),
            })
        }
        Backend::Postgres => {
            let base = std::env::var("TEST_POSTGRES_URL").ok()?;
            let mut options = ConnectOptions::new(base.clone());
            options.sqlx_logging(false).max_connections(1);
            let admin = Database::connect(options)
                .await
                .expect("TEST_POSTGRES_URL accepts connections");
            let name = format!(
                "mig_{:016x}",
                getrandom::u64().expect("the OS random number generator")
            );
            admin
                .execute_unprepared(&format!(r#"CREATE DATABASE "{name}""#))
                .await
                .expect("CREATE DATABASE for the test");
            let mut options = ConnectOptions::new(with_database(&base, &name));
            options.sqlx_logging(false);
            let db = Database::connect(options)
                .await
                .expect("the new test database accepts connections");
            Some(Fresh {
                db,
                cleanup: Cleanup::Postgres { admin, name },
            })
        }
    }
}

/// Runs `check` on a fresh database of `backend`, then throws the database
/// away — also when `check` panics, whose panic is then resumed.
async fn run<F, Fut>(backend: Backend, check: F)
where
    F: FnOnce(DatabaseConnection) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(Fresh { db, cleanup }) = fresh(backend).await else {
        eprintln!("TEST_POSTGRES_URL is not set: skipping the PostgreSQL variant of this test");
        return;
    };
    let outcome = AssertUnwindSafe(check(db.clone())).catch_unwind().await;
    db.close().await.expect("the test connection closes");
    match cleanup {
        Cleanup::Sqlite(dir) => dir.close().expect("the temporary directory is removed"),
        Cleanup::Postgres { admin, name } => {
            admin
                .execute_unprepared(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                .await
                .expect("DROP DATABASE for the test");
            admin
                .close()
                .await
                .expect("the maintenance connection closes");
        }
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One `#[tokio::test]` per check and backend: `sqlite::<check>` and
/// `postgres::<check>`, running the same function.
macro_rules! on_both_backends {
    ($($check:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    super::run(super::Backend::Sqlite, super::$check).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $check() {
                    super::run(super::Backend::Postgres, super::$check).await;
                }
            )+
        }
    };
}

on_both_backends!(
    provider_and_agent_names_are_unique_per_tenant,
    a_tenant_has_at_most_one_default_provider,
    version_numbers_are_unique_per_resource,
    deleting_a_resource_deletes_its_versions,
    a_provider_in_use_cannot_be_deleted,
    check_constraints_reject_unknown_enum_values,
    entities_round_trip_every_column,
    down_drops_every_table_and_up_applies_again,
    version_rows_record_their_change_with_the_tenants_next_revision,
    agent_tools_follow_each_agents_tools,
    a_write_finds_its_agent_by_id_in_a_large_tenant,
    one_labels_history_is_read_from_an_index_of_its_own,
);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const T1: &str = "tenant-1";
const T2: &str = "tenant-2";

/// The tables and secondary indexes the migration creates.
const TABLES: [&str; 15] = [
    "agent_tools",
    "agent_versions",
    "agents",
    "audit_events",
    "audit_seals",
    "changes",
    "key_canary",
    "label_moves",
    "label_policies",
    "labels",
    "provider_key_revisions",
    "provider_versions",
    "providers",
    "request_ids",
    "tenant_revisions",
];
const INDEXES: [&str; 24] = [
    "ix_agent_tools_tenant_tool",
    "ix_agents_delete_time",
    "ix_agents_live_tenant_id",
    "ix_agents_llm_provider_id",
    "ix_agents_tenant_create_time",
    "ix_agents_tenant_id",
    "ix_agents_tenant_provider",
    "ix_agents_tenant_update_time",
    "ix_audit_events_tenant",
    "ix_audit_events_time",
    "ix_label_moves_label",
    "ix_label_moves_resource",
    "ix_labels_search",
    "ix_providers_delete_time",
    "ix_providers_tenant_create_time",
    "ix_providers_tenant_id",
    "ix_providers_tenant_update_time",
    "ix_request_ids_create_time",
    "ux_agent_versions_agent_version",
    "ux_agents_tenant_name",
    "ux_audit_events_chain",
    "ux_provider_versions_provider_version",
    "ux_providers_tenant_default",
    "ux_providers_tenant_name",
];

/// [`INDEXES`], and on PostgreSQL the byte-order (`COLLATE "C"`) name
/// indexes, sorted.
fn expected_indexes(db: &DatabaseConnection) -> Vec<&'static str> {
    let mut expected: Vec<&str> = INDEXES.into();
    if db.get_database_backend() == DbBackend::Postgres {
        expected.extend(["ix_agents_tenant_name_c", "ix_providers_tenant_name_c"]);
    }
    expected.sort_unstable();
    expected
}

async fn up(db: &DatabaseConnection) {
    Migrator::up(db, None)
        .await
        .expect("the migrations apply to a fresh database");
}

/// A fixed instant with microseconds (PostgreSQL keeps microseconds).
fn at(seconds: i64) -> DateTimeUtc {
    DateTimeUtc::from_timestamp(1_795_000_000 + seconds, 123_456_000).expect("a valid instant")
}

fn new_provider(id: &str, tenant: &str, name: &str, is_default: bool) -> provider::ActiveModel {
    provider::ActiveModel {
        id: Set(id.to_owned()),
        tenant_id: Set(tenant.to_owned()),
        name: Set(name.to_owned()),
        provider_type: Set(ProviderType::OpenAi),
        config: Set(json!({ "model_name": "gpt-4o" })),
        api_key_ciphertext: Set(None),
        is_default: Set(is_default),
        version: Set(1),
        create_time: Set(at(0)),
        update_time: Set(at(0)),
        created_by: Set("alice".to_owned()),
        updated_by: Set("alice".to_owned()),
        // Unset: the helpers also write rows before the soft-delete migration.
        delete_time: NotSet,
        version_hash: NotSet,
    }
}

fn new_agent(id: &str, tenant: &str, name: &str, provider: Option<&str>) -> agent::ActiveModel {
    agent::ActiveModel {
        id: Set(id.to_owned()),
        tenant_id: Set(tenant.to_owned()),
        name: Set(name.to_owned()),
        llm_provider_id: Set(provider.map(str::to_owned)),
        config: Set(json!({ "role": "researcher" })),
        tools: Set("[]".to_owned()),
        version: Set(1),
        create_time: Set(at(0)),
        update_time: Set(at(0)),
        created_by: Set("alice".to_owned()),
        updated_by: Set("alice".to_owned()),
        // Unset: the helpers also write rows before the soft-delete migration.
        delete_time: NotSet,
        version_hash: NotSet,
    }
}

fn new_agent_version(agent_id: &str, tenant: &str, number: i64) -> agent_version::ActiveModel {
    agent_version::ActiveModel {
        id: NotSet,
        agent_id: Set(agent_id.to_owned()),
        tenant_id: Set(tenant.to_owned()),
        version_number: Set(number),
        action: Set(if number == 1 {
            VersionAction::Create
        } else {
            VersionAction::Update
        }),
        configuration: Set(json!({ "role": "researcher" })),
        diff: Set(json!([])),
        change_description: Set(String::new()),
        changed_by: Set("alice".to_owned()),
        create_time: Set(at(number)),
        provider_id: Set(None),
        provider_version: Set(None),
    }
}

fn new_provider_version(
    provider_id: &str,
    tenant: &str,
    number: i64,
) -> provider_version::ActiveModel {
    provider_version::ActiveModel {
        id: NotSet,
        provider_id: Set(provider_id.to_owned()),
        tenant_id: Set(tenant.to_owned()),
        version_number: Set(number),
        action: Set(if number == 1 {
            VersionAction::Create
        } else {
            VersionAction::Update
        }),
        configuration: Set(json!({ "model_name": "gpt-4o" })),
        diff: Set(json!([])),
        change_description: Set(String::new()),
        changed_by: Set("alice".to_owned()),
        create_time: Set(at(number)),
    }
}

/// SQLite reports a violated `ON DELETE RESTRICT` with the extended code
/// SQLITE_CONSTRAINT_TRIGGER (1811), not SQLITE_CONSTRAINT_FOREIGNKEY (787),
/// so neither sqlx's `ErrorKind` nor sea-orm's `DbErr::sql_err()` classifies
/// it as a foreign key violation.
const SQLITE_CONSTRAINT_TRIGGER: &str = "1811";

/// The constraint a database error reports, if it is a constraint violation.
fn violation(err: &DbErr) -> Option<ErrorKind> {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            e.as_database_error().map(|d| {
                if d.code().as_deref() == Some(SQLITE_CONSTRAINT_TRIGGER)
                    && d.message() == "FOREIGN KEY constraint failed"
                {
                    ErrorKind::ForeignKeyViolation
                } else {
                    d.kind()
                }
            })
        }
        _ => None,
    }
}

/// Asserts that `result` failed with a violation of the `expected` kind.
#[track_caller]
fn assert_violation<T: std::fmt::Debug>(result: Result<T, DbErr>, expected: ErrorKind, what: &str) {
    match result {
        Ok(value) => panic!("{what}: expected {expected:?}, but it succeeded: {value:?}"),
        Err(err) => assert_eq!(
            violation(&err),
            Some(expected),
            "{what}: wrong failure: {err}"
        ),
    }
}

/// Inserts one `*_versions` row with a raw `action` (bypassing the entity's
/// enum), so that the CHECK constraint is what decides.
async fn insert_raw_version(
    db: &DatabaseConnection,
    provider_side: bool,
    parent_id: &str,
    number: i64,
    action: &str,
) -> Result<(), DbErr> {
    let row: [SimpleExpr; 9] = [
        parent_id.into(),
        T1.into(),
        number.into(),
        action.into(),
        json!({}).into(),
        json!([]).into(),
        "".into(),
        "alice".into(),
        at(0).into(),
    ];
    let mut insert = Query::insert();
    if provider_side {
        use provider_version::Column as C;
        insert.into_table(provider_version::Entity).columns([
            C::ProviderId,
            C::TenantId,
            C::VersionNumber,
            C::Action,
            C::Configuration,
            C::Diff,
            C::ChangeDescription,
            C::ChangedBy,
            C::CreateTime,
        ]);
    } else {
        use agent_version::Column as C;
        insert.into_table(agent_version::Entity).columns([
            C::AgentId,
            C::TenantId,
            C::VersionNumber,
            C::Action,
            C::Configuration,
            C::Diff,
            C::ChangeDescription,
            C::ChangedBy,
            C::CreateTime,
        ]);
    }
    insert.values(row).expect("as many values as columns");
    db.execute(&insert).await.map(drop)
}

/// Inserts one provider with a raw `provider_type`.
async fn insert_raw_provider(
    db: &DatabaseConnection,
    id: &str,
    provider_type: &str,
) -> Result<(), DbErr> {
    use provider::Column as C;
    let insert = Query::insert()
        .into_table(provider::Entity)
        .columns([
            C::Id,
            C::TenantId,
            C::Name,
            C::ProviderType,
            C::Config,
            C::Version,
            C::CreateTime,
            C::UpdateTime,
            C::CreatedBy,
            C::UpdatedBy,
        ])
        .values([
            id.into(),
            T1.into(),
            id.into(),
            provider_type.into(),
            json!({}).into(),
            1_i64.into(),
            at(0).into(),
            at(0).into(),
            "alice".into(),
            "alice".into(),
        ])
        .expect("as many values as columns")
        .to_owned();
    db.execute(&insert).await.map(drop)
}

/// The first column of every row `sql` returns, as text.
async fn strings(db: &DatabaseConnection, sql: &str) -> Vec<String> {
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("the catalogue query runs")
        .iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("a text column"))
        .collect()
}

/// The tables in the database, sorted.
async fn tables(db: &DatabaseConnection) -> Vec<String> {
    strings(
        db,
        match db.get_database_backend() {
            DbBackend::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite%' ORDER BY name"
            }
            _ => "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1",
        },
    )
    .await
}

/// The secondary indexes in the database (not primary keys), sorted.
async fn indexes(db: &DatabaseConnection) -> Vec<String> {
    strings(
        db,
        match db.get_database_backend() {
            DbBackend::Sqlite => {
                "SELECT name FROM sqlite_master WHERE type = 'index' \
                 AND name NOT LIKE 'sqlite_autoindex%' ORDER BY name"
            }
            _ => {
                "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() \
                 AND indexname NOT LIKE '%_pkey' ORDER BY 1"
            }
        },
    )
    .await
}

async fn sqlite_pragma(db: &DatabaseConnection, pragma: &str) -> String {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            format!("PRAGMA {pragma}"),
        ))
        .await
        .expect("the PRAGMA runs")
        .expect("the PRAGMA returns a row");
    row.try_get_by_index::<String>(0)
        .or_else(|_| row.try_get_by_index::<i64>(0).map(|n| n.to_string()))
        .expect("a text or integer PRAGMA value")
}

// ---------------------------------------------------------------------------
// The checks, run on both backends
// ---------------------------------------------------------------------------

async fn provider_and_agent_names_are_unique_per_tenant(db: DatabaseConnection) {
    up(&db).await;

    new_provider("p1", T1, "openai", false)
        .insert(&db)
        .await
        .expect("the first provider named openai");
    assert_violation(
        new_provider("p2", T1, "openai", false).insert(&db).await,
        ErrorKind::UniqueViolation,
        "a second provider named openai in the same tenant",
    );
    new_provider("p3", T2, "openai", false)
        .insert(&db)
        .await
        .expect("the same provider name in another tenant");
    assert_violation(
        new_provider("p1", T2, "other", false).insert(&db).await,
        ErrorKind::UniqueViolation,
        "a provider id that exists already",
    );

    new_agent("a1", T1, "researcher", None)
        .insert(&db)
        .await
        .expect("the first agent named researcher");
    assert_violation(
        new_agent("a2", T1, "researcher", None).insert(&db).await,
        ErrorKind::UniqueViolation,
        "a second agent named researcher in the same tenant",
    );
    new_agent("a3", T2, "researcher", None)
        .insert(&db)
        .await
        .expect("the same agent name in another tenant");

    assert_eq!(provider::Entity::find().count(&db).await.expect("count"), 2);
    assert_eq!(agent::Entity::find().count(&db).await.expect("count"), 2);
}

async fn a_tenant_has_at_most_one_default_provider(db: DatabaseConnection) {
    up(&db).await;

    new_provider("p1", T1, "first", true)
        .insert(&db)
        .await
        .expect("the tenant's first default provider");
    for (id, name) in [("p2", "second"), ("p3", "third")] {
        new_provider(id, T1, name, false)
            .insert(&db)
            .await
            .expect("any number of non-default providers");
    }
    assert_violation(
        new_provider("p4", T1, "fourth", true).insert(&db).await,
        ErrorKind::UniqueViolation,
        "a second default provider in the tenant",
    );
    new_provider("p5", T2, "first", true)
        .insert(&db)
        .await
        .expect("another tenant's default provider");

    // Moving the default: clear the old one, then set the new one, in one
    // transaction.
    let txn = db.begin().await.expect("begin");
    provider::ActiveModel {
        id: Set("p1".to_owned()),
        is_default: Set(false),
        ..Default::default()
    }
    .update(&txn)
    .await
    .expect("clear the old default");
    provider::ActiveModel {
        id: Set("p2".to_owned()),
        is_default: Set(true),
        ..Default::default()
    }
    .update(&txn)
    .await
    .expect("set the new default");
    txn.commit().await.expect("commit");

    let defaults: Vec<(String, String)> = provider::Entity::find()
        .filter(provider::Column::IsDefault.eq(true))
        .order_by_asc(provider::Column::TenantId)
        .all(&db)
        .await
        .expect("select the defaults")
        .into_iter()
        .map(|p| (p.tenant_id, p.id))
        .collect();
    assert_eq!(
        defaults,
        [
            (T1.to_owned(), "p2".to_owned()),
            (T2.to_owned(), "p5".to_owned())
        ]
    );
}

async fn version_numbers_are_unique_per_resource(db: DatabaseConnection) {
    up(&db).await;
    new_provider("p1", T1, "openai", false)
        .insert(&db)
        .await
        .expect("provider p1");
    new_provider("p2", T1, "anthropic", false)
        .insert(&db)
        .await
        .expect("provider p2");
    new_agent("a1", T1, "researcher", Some("p1"))
        .insert(&db)
        .await
        .expect("agent a1");
    new_agent("a2", T1, "writer", Some("p1"))
        .insert(&db)
        .await
        .expect("agent a2");

    for n in [1, 2] {
        new_agent_version("a1", T1, n)
            .insert(&db)
            .await
            .expect("a new agent version number");
        new_provider_version("p1", T1, n)
            .insert(&db)
            .await
            .expect("a new provider version number");
    }
    assert_violation(
        new_agent_version("a1", T1, 2).insert(&db).await,
        ErrorKind::UniqueViolation,
        "agent a1's version 2 twice",
    );
    assert_violation(
        new_provider_version("p1", T1, 1).insert(&db).await,
        ErrorKind::UniqueViolation,
        "provider p1's version 1 twice",
    );
    new_agent_version("a2", T1, 2)
        .insert(&db)
        .await
        .expect("the same number for another agent");
    new_provider_version("p2", T1, 1)
        .insert(&db)
        .await
        .expect("the same number for another provider");

    assert_eq!(
        agent_version::Entity::find()
            .count(&db)
            .await
            .expect("count"),
        3
    );
    assert_eq!(
        provider_version::Entity::find()
            .count(&db)
            .await
            .expect("count"),
        3
    );
}

async fn deleting_a_resource_deletes_its_versions(db: DatabaseConnection) {
    if db.get_database_backend() == DbBackend::Sqlite {
        assert_eq!(
            sqlite_pragma(&db, "foreign_keys").await,
            "1",
            "SQLite enforces foreign keys on this connection"
        );
    }
    up(&db).await;
    new_provider("p1", T1, "openai", false)
        .insert(&db)
        .await
        .expect("provider p1");
    new_provider("p2", T1, "anthropic", false)
        .insert(&db)
        .await
        .expect("provider p2");
    for id in ["a1", "a2"] {
        new_agent(id, T1, id, Some("p1"))
            .insert(&db)
            .await
            .expect("an agent");
    }
    for n in 1..=3 {
        new_agent_version("a1", T1, n)
            .insert(&db)
            .await
            .expect("a version of a1");
        new_provider_version("p2", T1, n)
            .insert(&db)
            .await
            .expect("a version of p2");
    }
    new_agent_version("a2", T1, 1)
        .insert(&db)
        .await
        .expect("a version of a2");
    new_provider_version("p1", T1, 1)
        .insert(&db)
        .await
        .expect("a version of p1");

    let deleted = agent::Entity::delete_by_id("a1")
        .exec(&db)
        .await
        .expect("delete agent a1");
    assert_eq!(deleted.rows_affected, 1);
    let left: Vec<(String, i64)> = agent_version::Entity::find()
        .all(&db)
        .await
        .expect("select agent versions")
        .into_iter()
        .map(|v| (v.agent_id, v.version_number))
        .collect();
    assert_eq!(left, [("a2".to_owned(), 1)], "a1's versions went with it");

    provider::Entity::delete_by_id("p2")
        .exec(&db)
        .await
        .expect("delete provider p2 (no agent uses it)");
    let left: Vec<String> = provider_version::Entity::find()
        .all(&db)
        .await
        .expect("select provider versions")
        .into_iter()
        .map(|v| v.provider_id)
        .collect();
    assert_eq!(left, ["p1"], "p2's versions went with it");
}

async fn a_provider_in_use_cannot_be_deleted(db: DatabaseConnection) {
    up(&db).await;
    new_provider("p1", T1, "openai", true)
        .insert(&db)
        .await
        .expect("provider p1");
    new_agent("a1", T1, "researcher", Some("p1"))
        .insert(&db)
        .await
        .expect("agent a1 assigned to p1");
    new_agent("a2", T1, "writer", None)
        .insert(&db)
        .await
        .expect("an agent with no provider (the tenant's default)");
    assert_violation(
        new_agent("a3", T1, "critic", Some("nope"))
            .insert(&db)
            .await,
        ErrorKind::ForeignKeyViolation,
        "an agent assigned to a provider that does not exist",
    );

    assert_violation(
        provider::Entity::delete_by_id("p1").exec(&db).await,
        ErrorKind::ForeignKeyViolation,
        "deleting a provider an agent uses",
    );
    assert!(
        provider::Entity::find_by_id("p1")
            .one(&db)
            .await
            .expect("select p1")
            .is_some(),
        "p1 is still there"
    );

    agent::Entity::delete_by_id("a1")
        .exec(&db)
        .await
        .expect("delete the agent using p1");
    let deleted = provider::Entity::delete_by_id("p1")
        .exec(&db)
        .await
        .expect("delete p1 once nothing uses it");
    assert_eq!(deleted.rows_affected, 1);
}

async fn check_constraints_reject_unknown_enum_values(db: DatabaseConnection) {
    up(&db).await;
    new_provider("p1", T1, "openai", false)
        .insert(&db)
        .await
        .expect("provider p1");
    new_agent("a1", T1, "researcher", Some("p1"))
        .insert(&db)
        .await
        .expect("agent a1");

    for provider_side in [false, true] {
        let parent = if provider_side { "p1" } else { "a1" };
        // The raw insert works with a valid action: what fails below is the CHECK.
        insert_raw_version(&db, provider_side, parent, 1, "CREATE")
            .await
            .expect("a raw version row with a valid action");
        // Soft delete's actions (m20261208_000002_soft_delete) pass too.
        for (n, action) in [(5, "DELETE"), (6, "UNDELETE")] {
            insert_raw_version(&db, provider_side, parent, n, action)
                .await
                .expect("a raw version row with a soft-delete action");
        }
        for (n, bad) in [(2, "PURGE"), (3, "update"), (4, "")] {
            assert_violation(
                insert_raw_version(&db, provider_side, parent, n, bad).await,
                ErrorKind::CheckViolation,
                &format!("action {bad:?} (provider side: {provider_side})"),
            );
        }
    }

    insert_raw_provider(&db, "p2", "GROQ")
        .await
        .expect("a raw provider row with a valid type");
    for (id, bad) in [("p3", "FOO"), ("p4", "openai"), ("p5", "OPENAI ")] {
        assert_violation(
            insert_raw_provider(&db, id, bad).await,
            ErrorKind::CheckViolation,
            &format!("provider_type {bad:?}"),
        );
    }
}

async fn entities_round_trip_every_column(db: DatabaseConnection) {
    up(&db).await;

    // Every provider type the entity knows passes the CHECK and reads back.
    for (i, provider_type) in ProviderType::iter().enumerate() {
        let id = format!("p{i}");
        let mut row = new_provider(&id, T1, &format!("provider {i}"), false);
        row.provider_type = Set(provider_type);
        row.insert(&db)
            .await
            .expect("every ProviderType passes the CHECK");
        let back = provider::Entity::find_by_id(id)
            .one(&db)
            .await
            .expect("select")
            .expect("the provider");
        assert_eq!(back.provider_type, provider_type);
    }

    let config = json!({
        "model_name": "claude-sonnet",
        "base_url": "https://api.example.com/v1",
        "default_parameters": { "temperature": 0.2, "max_tokens": 1024, "stop": ["\n\n"] },
        "api_version": null,
        "unicode": "naïve ✓",
    });
    let expected = provider::Model {
        id: "0190c1e0-0000-7000-8000-000000000001".to_owned(),
        tenant_id: T2.to_owned(),
        name: "anthropic".to_owned(),
        provider_type: ProviderType::Anthropic,
        config: config.clone(),
        api_key_ciphertext: Some("v1.AAAA.ciphertext".to_owned()),
        is_default: true,
        version: 7,
        create_time: at(0),
        update_time: at(3600),
        created_by: "alice".to_owned(),
        updated_by: "bob".to_owned(),
        delete_time: None,
        version_hash: Some("ab".repeat(32)),
    };
    let inserted = provider::ActiveModel::from(expected.clone())
        .insert(&db)
        .await
        .expect("insert a provider through the entity");
    assert_eq!(inserted, expected);
    let back = provider::Entity::find_by_id(expected.id.clone())
        .one(&db)
        .await
        .expect("select")
        .expect("the provider");
    assert_eq!(
        back, expected,
        "every provider column reads back as written"
    );

    // The server default for is_default is false.
    let mut row = new_provider("p-default", T2, "no default given", false);
    row.is_default = NotSet;
    assert!(
        !row.insert(&db)
            .await
            .expect("insert without is_default")
            .is_default
    );

    let agent = agent::ActiveModel::from(agent::Model {
        id: "0190c1e0-0000-7000-8000-000000000002".to_owned(),
        tenant_id: T2.to_owned(),
        name: "researcher".to_owned(),
        llm_provider_id: Some(expected.id.clone()),
        config: json!({ "role": "r", "tools": ["search"], "llm_overrides": { "temperature": 0.7 } }),
        tools: r#"["search"]"#.to_owned(),
        version: 2,
        create_time: at(10),
        update_time: at(20),
        created_by: "alice".to_owned(),
        updated_by: "alice".to_owned(),
        delete_time: Some(at(30)),
        version_hash: None,
    })
    .insert(&db)
    .await
    .expect("insert an agent through the entity");
    assert_eq!(
        agent
            .find_related(provider::Entity)
            .one(&db)
            .await
            .expect("select the agent's provider"),
        Some(expected.clone())
    );

    for (n, action) in [(1, VersionAction::Create), (2, VersionAction::Rollback)] {
        let mut row = new_agent_version(&agent.id, T2, n);
        row.action = Set(action);
        row.diff =
            Set(json!([{ "path": "role", "kind": "MODIFIED", "old_value": n, "new_value": null }]));
        row.insert(&db).await.expect("insert an agent version");
    }
    let versions = agent
        .find_related(agent_version::Entity)
        .order_by_desc(agent_version::Column::VersionNumber)
        .all(&db)
        .await
        .expect("select the agent's versions, newest first");
    assert_eq!(
        versions
            .iter()
            .map(|v| (v.version_number, v.action, v.create_time))
            .collect::<Vec<_>>(),
        [
            (2, VersionAction::Rollback, at(2)),
            (1, VersionAction::Create, at(1))
        ]
    );
    assert_eq!(
        versions[1].diff,
        json!([{ "path": "role", "kind": "MODIFIED", "old_value": 1, "new_value": null }])
    );
    assert!(versions[0].id != versions[1].id, "row ids are assigned");

    let mut row = new_provider_version(&expected.id, T2, 1);
    row.configuration = Set(json!({ "api_key_ciphertext": "v1.AAAA.ciphertext" }));
    let version = row.insert(&db).await.expect("insert a provider version");
    let back = provider_version::Entity::find_by_id(version.id)
        .one(&db)
        .await
        .expect("select")
        .expect("the provider version");
    assert_eq!(back, version);
    assert_eq!(
        back.find_related(provider::Entity)
            .one(&db)
            .await
            .expect("select the version's provider")
            .map(|p| p.id),
        Some(expected.id)
    );
}

/// Each version row, of any kind, appends a change with its tenant's next
/// revision (1, 2, 3 … per tenant), its number, action and author; a
/// version row refused by a constraint appends nothing.
async fn version_rows_record_their_change_with_the_tenants_next_revision(db: DatabaseConnection) {
    up(&db).await;
    new_provider("p1", T1, "openai", false)
        .insert(&db)
        .await
        .expect("provider");
    new_agent("a1", T1, "analyst", None)
        .insert(&db)
        .await
        .expect("agent");
    new_agent("a2", T2, "analyst", None)
        .insert(&db)
        .await
        .expect("agent of another tenant");
    new_agent_version("a1", T1, 1)
        .insert(&db)
        .await
        .expect("v1");
    new_provider_version("p1", T1, 1)
        .insert(&db)
        .await
        .expect("provider v1");
    new_agent_version("a2", T2, 1)
        .insert(&db)
        .await
        .expect("other tenant's v1");
    new_agent_version("a1", T1, 2)
        .insert(&db)
        .await
        .expect("v2");
    new_agent_version("a1", T1, 2)
        .insert(&db)
        .await
        .expect_err("a duplicate version number is refused");

    let logged: Vec<(String, i64, String, String, i64, String, String)> = change::Entity::find()
        .order_by_asc(change::Column::TenantId)
        .order_by_asc(change::Column::Revision)
        .all(&db)
        .await
        .expect("changes")
        .into_iter()
        .map(|c| {
            (
                c.tenant_id,
                c.revision,
                c.kind,
                c.resource_id,
                c.version_number,
                c.action,
                c.changed_by,
            )
        })
        .collect();
    let row = |tenant: &str, revision, kind: &str, id: &str, version, action: &str| {
        (
            tenant.to_owned(),
            revision,
            kind.to_owned(),
            id.to_owned(),
            version,
            action.to_owned(),
            "alice".to_owned(),
        )
    };
    assert_eq!(
        logged,
        [
            row(T1, 1, "AGENT", "a1", 1, "CREATE"),
            row(T1, 2, "PROVIDER", "p1", 1, "CREATE"),
            row(T1, 3, "AGENT", "a1", 2, "UPDATE"),
            row(T2, 1, "AGENT", "a2", 1, "CREATE"),
        ]
    );
    let heads: Vec<(String, i64)> = tenant_revision::Entity::find()
        .order_by_asc(tenant_revision::Column::TenantId)
        .all(&db)
        .await
        .expect("tenant revisions")
        .into_iter()
        .map(|t| (t.tenant_id, t.revision))
        .collect();
    assert_eq!(heads, [(T1.to_owned(), 3), (T2.to_owned(), 1)]);
}

/// `agent_tools`, as the search migration made it and the tools-column
/// migration keeps it: copied from the agents that exist when each runs
/// (from `config.tools`), then rewritten by the database with every insert
/// or change of an agent's `tools`, and deleted with the agent.
async fn agent_tools_follow_each_agents_tools(db: DatabaseConnection) {
    let tools = |db: DatabaseConnection| async move {
        strings(
            &db,
            "SELECT agent_id || ':' || tool FROM agent_tools ORDER BY agent_id, tool",
        )
        .await
    };
    let before = |name: &str| {
        let position = Migrator::migrations()
            .iter()
            .position(|m| m.name() == name)
            .unwrap_or_else(|| panic!("migration {name}"));
        u32::try_from(position).expect("a few")
    };
    // An agent written before the search migration, one written between
    // it and the tools column (raw: the entity has the column), and then
    // the rest of the migrations.
    let raw_agent = |id: &str, name: &str, config: &str| {
        format!(
            "INSERT INTO agents (id, tenant_id, name, config, version, create_time, \
             update_time, created_by, updated_by) VALUES ('{id}', '{T1}', '{name}', '{config}', \
             1, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', 'alice', 'alice')"
        )
    };
    Migrator::up(&db, Some(before("m20261207_000002_search")))
        .await
        .expect("the migrations before search");
    let old = raw_agent(
        "a1",
        "old",
        r#"{"role":"r","tools":["search","calc","search"]}"#,
    );
    db.execute_unprepared(&old).await.expect("a1");
    let searched =
        before("m20261208_000001_agent_tools_column") - before("m20261207_000002_search");
    Migrator::up(&db, Some(searched))
        .await
        .expect("up to the tools column");
    let between = raw_agent("a0", "between", r#"{"role":"r","tools":["web"]}"#);
    db.execute_unprepared(&between).await.expect("a0");
    up(&db).await;
    assert_eq!(
        strings(&db, "SELECT id || '=' || tools FROM agents ORDER BY id").await,
        [r#"a0=["web"]"#, r#"a1=["search","calc","search"]"#]
    );
    assert_eq!(tools(db.clone()).await, ["a0:web", "a1:calc", "a1:search"]);

    let with_tools = |id: &str, name: &str, tools: &str| {
        let mut agent = new_agent(id, T1, name, None);
        agent.tools = Set(tools.to_owned());
        agent
    };
    with_tools("a2", "new", r#"["web"]"#)
        .insert(&db)
        .await
        .expect("an agent after it");
    new_agent("a3", T1, "none", None)
        .insert(&db)
        .await
        .expect("an agent without tools");
    assert_eq!(
        tools(db.clone()).await,
        ["a0:web", "a1:calc", "a1:search", "a2:web"]
    );

    let mut changed = with_tools("a1", "old", r#"["calc","browser"]"#);
    changed.version = Set(2);
    changed.update(&db).await.expect("new tools");
    let mut renamed = with_tools("a2", "renamed", r#"["web"]"#);
    renamed.version = Set(2);
    renamed.update(&db).await.expect("the same tools");
    assert_eq!(
        tools(db.clone()).await,
        ["a0:web", "a1:browser", "a1:calc", "a2:web"]
    );

    agent::Entity::delete_by_id("a1")
        .exec(&db)
        .await
        .expect("delete a1");
    assert_eq!(tools(db.clone()).await, ["a0:web", "a2:web"]);
}

/// A write of an agent finds its row by tenant, id and `delete_time IS
/// NULL`. The plan must look the id up in an index, also in a tenant of
/// many agents and before the planner has statistics (a new database, no
/// ANALYZE yet): a partial index on the tenant alone once made PostgreSQL
/// read every live agent of the tenant per write.
async fn a_write_finds_its_agent_by_id_in_a_large_tenant(db: DatabaseConnection) {
    up(&db).await;
    let agents: Vec<_> = (0..300)
        .map(|i| new_agent(&format!("agent-{i:03}"), T1, &format!("name-{i:03}"), None))
        .collect();
    agent::Entity::insert_many(agents)
        .exec(&db)
        .await
        .expect("300 agents");
    let lookup = "UPDATE agents SET version = version + 1 WHERE id = 'agent-150' \
                  AND tenant_id = 'tenant-1' AND version = 1 AND delete_time IS NULL";
    let backend = db.get_database_backend();
    let plan = plan_of(&db, lookup).await;
    // PostgreSQL: `Index Cond: (… (id = 'agent-150'::text))`; SQLite:
    // `SEARCH agents USING INDEX … (… id=?)`. Not `tenant_id =` alone.
    let by_id = |line: &String| match backend {
        DbBackend::Postgres => line.contains("Index Cond:") && line.contains("(id = "),
        _ => line.contains("SEARCH agents") && (line.contains("(id=?") || line.contains(" id=?")),
    };
    assert!(
        plan.iter().any(by_id),
        "the id is not an index condition: {plan:#?}"
    );
}

/// `List…LabelHistory` with a `label`: the plan finds that label's moves
/// of the resource in an index and reads them in move order, without a
/// sort and without walking the resource's moves of every other label
/// (a million moves of other labels would have cost a million rows per
/// page). Checked over 300 moves of ten labels, before the planner has
/// statistics.
async fn one_labels_history_is_read_from_an_index_of_its_own(db: DatabaseConnection) {
    up(&db).await;
    let backend = db.get_database_backend();
    let moves: Vec<String> = (0..300)
        .map(|i| {
            format!(
                "('{T1}', 'agent', 'agent-1', 'label-{}', {}, {}, 'alice', '2026-12-07T00:00:00Z', '')",
                i % 10,
                i,
                i + 1
            )
        })
        .collect();
    let insert = format!(
        "INSERT INTO label_moves (tenant_id, kind, resource_id, label, from_version, \
         to_version, actor, move_time, reason) VALUES {}",
        moves.join(", ")
    );
    db.execute_unprepared(&insert).await.expect("300 moves");
    let history = format!(
        "SELECT id, label FROM label_moves WHERE kind = 'agent' AND resource_id = 'agent-1' \
         AND tenant_id = '{T1}' AND label = 'label-3' AND id > 5 ORDER BY id LIMIT 11"
    );
    let plan = plan_of(&db, &history).await;
    let by_label = |line: &String| match backend {
        DbBackend::Postgres => line.contains("ix_label_moves_label"),
        _ => line.contains("USING INDEX ix_label_moves_label") && line.contains("label=?"),
    };
    assert!(
        plan.iter().any(by_label),
        "the label is not an index condition: {plan:#?}"
    );
    assert!(
        !plan
            .iter()
            .any(|line| line.contains("Sort") || line.contains("TEMP B-TREE")),
        "the moves are sorted, not read in order: {plan:#?}"
    );
}

/// The lines of the database's plan for `sql` (PostgreSQL's `EXPLAIN`,
/// SQLite's `EXPLAIN QUERY PLAN`).
async fn plan_of(db: &DatabaseConnection, sql: &str) -> Vec<String> {
    let backend = db.get_database_backend();
    let (explain, column) = match backend {
        DbBackend::Postgres => (format!("EXPLAIN {sql}"), "QUERY PLAN"),
        _ => (format!("EXPLAIN QUERY PLAN {sql}"), "detail"),
    };
    db.query_all_raw(Statement::from_string(backend, explain))
        .await
        .expect("explain")
        .iter()
        .map(|row| row.try_get::<String>("", column).expect("a plan line"))
        .collect()
}

async fn down_drops_every_table_and_up_applies_again(db: DatabaseConnection) {
    let names = |status: &[(String, bool)]| -> Vec<String> {
        status.iter().map(|(name, _)| name.clone()).collect()
    };

    // Before anything: pending, and asking did not create the bookkeeping table.
    let before = migrations::status(&db)
        .await
        .expect("status on an empty database");
    assert_eq!(
        names(&before),
        [
            "m20261126_000001_create_registry",
            "m20261126_000002_key_canary",
            "m20261206_000001_provider_key_revisions",
            "m20261206_000002_agent_version_provider",
            "m20261207_000001_labels",
            "m20261207_000002_search",
            "m20261207_000003_change_log",
            "m20261208_000001_agent_tools_column",
            "m20261208_000002_soft_delete",
            "m20261208_000003_audit",
            "m20261208_000010_request_ids",
            "m20261209_000001_list_indexes",
            "m20261210_000001_live_agent_index",
            "m20261211_000001_label_history_index",
        ]
    );
    assert!(before.iter().all(|(_, applied)| !applied), "{before:?}");
    assert!(tables(&db).await.is_empty(), "status is read-only");

    up(&db).await;
    let after_up = migrations::status(&db).await.expect("status");
    assert!(after_up.iter().all(|(_, applied)| *applied), "{after_up:?}");
    let mut expected_tables: Vec<&str> = TABLES.into();
    expected_tables.push("seaql_migrations");
    expected_tables.sort_unstable();
    assert_eq!(tables(&db).await, expected_tables);
    assert_eq!(indexes(&db).await, expected_indexes(&db));
    Migrator::up(&db, None).await.expect("up again is a no-op");

    Migrator::down(&db, None).await.expect("down");
    assert_eq!(
        tables(&db).await,
        ["seaql_migrations"],
        "down leaves only sea-orm's (now empty) bookkeeping table"
    );
    assert!(indexes(&db).await.is_empty());
    let after_down = migrations::status(&db).await.expect("status");
    assert!(
        after_down.iter().all(|(_, applied)| !applied),
        "{after_down:?}"
    );

    up(&db).await;
    let again = migrations::status(&db).await.expect("status");
    assert_eq!(names(&again), names(&before));
    assert!(again.iter().all(|(_, applied)| *applied), "{again:?}");
    assert_eq!(tables(&db).await, expected_tables);
    new_provider("p1", T1, "openai", true)
        .insert(&db)
        .await
        .expect("the re-created schema takes rows");
}

// ---------------------------------------------------------------------------
// SQLite only: the connection settings the registry relies on
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sqlite_connection_runs_in_wal_with_busy_timeout_and_foreign_keys() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = connect_sqlite(&sqlite_url(&dir), Duration::from_millis(2500)).await;
    assert_eq!(sqlite_pragma(&db, "journal_mode").await, "wal");
    assert_eq!(sqlite_pragma(&db, "synchronous").await, "1", "NORMAL");
    assert_eq!(sqlite_pragma(&db, "busy_timeout").await, "2500");
    assert_eq!(sqlite_pragma(&db, "foreign_keys").await, "1");
    db.close().await.expect("close");
}

#[tokio::test]
async fn sqlite_immediate_transaction_takes_the_write_lock_at_begin() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = sqlite_url(&dir);
    let first = connect_sqlite(&url, Duration::from_secs(5)).await;
    // No busy timeout on the second: a lock conflict fails at once.
    let second = connect_sqlite(&url, Duration::ZERO).await;
    up(&first).await;
    let immediate = TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    };
    let is_locked = |err: &DbErr| err.to_string().contains("database is locked");

    let writer = first
        .begin_with_options(immediate)
        .await
        .expect("BEGIN IMMEDIATE");
    let err = second
        .begin_with_options(immediate)
        .await
        .expect_err("a second BEGIN IMMEDIATE waits for the first writer");
    assert!(is_locked(&err), "{err}");

    // A deferred transaction begins, reads (WAL), and fails only when it
    // tries to write: the late SQLITE_BUSY that IMMEDIATE avoids.
    let deferred = second
        .begin()
        .await
        .expect("a deferred BEGIN takes no lock");
    assert_eq!(
        provider::Entity::find()
            .count(&deferred)
            .await
            .expect("readers are not blocked in WAL mode"),
        0
    );
    let err = new_provider("p1", T1, "openai", false)
        .insert(&deferred)
        .await
        .expect_err("the deferred writer cannot upgrade its lock");
    assert!(is_locked(&err), "{err}");
    deferred.rollback().await.expect("rollback");

    writer.commit().await.expect("commit the first writer");
    let writer = second
        .begin_with_options(immediate)
        .await
        .expect("BEGIN IMMEDIATE once the first writer is done");
    new_provider("p1", T1, "openai", false)
        .insert(&writer)
        .await
        .expect("write");
    writer.commit().await.expect("commit");

    first.close().await.expect("close");
    second.close().await.expect("close");
}

#[test]
fn the_test_database_url_keeps_everything_but_the_name() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "mig_1"),
        "postgres://postgres@127.0.0.1:5432/mig_1"
    );
    assert_eq!(
        with_database("postgres://u:p@db/test?sslmode=disable", "mig_2"),
        "postgres://u:p@db/mig_2?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://db:5432", "mig_3"),
        "postgres://db:5432/mig_3"
    );
}
