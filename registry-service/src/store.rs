//! Storage through sea-orm on SQLite or PostgreSQL: connecting, running
//! migrations, and the pieces the agent and provider stores share.
//!
//! Every change and its version row are written in one transaction. The
//! version number is taken with a conditional update (`… WHERE version =
//! n`), which works the same on both databases; a writer that loses the race
//! re-reads and tries again, or gets ABORTED when it sent an etag. The unique
//! `(resource_id, version_number)` index is the backstop.
//!
//! An agent's create, update or rollback and its version row go out
//! together ([`Store::write_with_version`]): on PostgreSQL as one statement (a
//! data-modifying CTE, atomic without BEGIN/COMMIT), on SQLite as one batch
//! with its BEGIN IMMEDIATE and COMMIT, sent to the connection's thread as
//! one command together with every other agent write waiting at that moment
//! (`group_commit`). An update is then a read and a share of one durable
//! commit instead of a transaction of five statements; without the read
//! when this process wrote the agent last (`recent`: the conditional update
//! tells whether that guess is current). The locking transaction stays for
//! lost races, assignment changes and providers.
//!
//! Lookups of one row by key use `all`, not `one`: `one` appends `LIMIT ?`,
//! and SQLite re-prepares a cached statement whose LIMIT is a bound
//! parameter every time it is bound again (its planner may use the value) —
//! about 5 % of the registry's CPU in a profile of the issue-3 workload.
//! Page queries need their LIMIT: on SQLite's read connection a trailing
//! `LIMIT ?` is written as the number (`sqlite_reads`); inside a
//! transaction it stays bound.

pub mod agents;
pub mod audit;
pub mod chain;
pub mod changes;
mod group_commit;
pub mod keys;
pub mod labels;
pub mod providers;
pub mod recent;
pub mod request_ids;
pub mod search;
mod sqlite_reads;
pub mod statistics;
pub mod versioned;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{
    CommonTableExpression, Expr, InsertStatement, IntoIden, Query, QueryStatementWriter,
    SelectStatement, SimpleExpr, SqliteQueryBuilder, SubQueryStatement, WithClause,
};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, EntityTrait, ExecResult, QueryResult, SqlErr, SqliteTransactionMode, Statement,
    TransactionOptions, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;
use serde_json::Value;

use crate::error::Error;
use crate::model::agent::AgentSpec;
use crate::model::version::{self, Change};
use crate::telemetry::RegistryMetrics;
use changes::ChangeSignal;
use group_commit::GroupCommit;
use recent::Recent;
use sqlite_reads::SqliteReads;

/// How often a write without an etag retries after losing a race.
pub const MAX_WRITE_ATTEMPTS: usize = 20;

/// A pooled connection idle at least this long is pinged before use.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(30);

/// Database connection settings.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `sqlite://path?mode=rwc` or `postgres://…`.
    pub url: String,
    /// Most pooled connections.
    pub max_connections: u32,
    /// How long a call waits for a connection (and SQLite for a lock).
    pub acquire_timeout: Duration,
    /// SQLite only: MiB of page cache per connection.
    pub sqlite_cache_mib: u32,
}

/// SQLite's page cache per connection unless set. SQLite's default of
/// 2 MiB holds 4 % of the agents' indexes at 100,000 agents, and each page
/// a filtered ListAgents read past it came from the operating system
/// (`label AND tool`, ordered: p50 10.7–13.5 against 8.6–9.0 ms). The read
/// connection's cache is emptied by every write, and refilling a large one
/// costs more: a trade (ARCHITECTURE.md, "SQLite's planner statistics").
pub const SQLITE_DEFAULT_CACHE_MIB: u32 = 32;

/// Opens the pool. SQLite gets WAL, `synchronous=FULL`, foreign keys, a
/// busy timeout and its page cache's size (the read connection, opened with
/// the pool's options, too); PostgreSQL its defaults.
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, Error> {
    let mut options = ConnectOptions::new(settings.url.clone());
    options
        .max_connections(settings.max_connections)
        .min_connections(1)
        .acquire_timeout(settings.acquire_timeout)
        .connect_timeout(settings.acquire_timeout)
        // No ping on every checkout (sea-orm's default): it costs a round
        // trip per call (a thread hand-off on SQLite, a network round trip on
        // PostgreSQL). A connection that died anyway fails its next
        // statement with an I/O error, which `db_error` answers as
        // UNAVAILABLE (retryable), and the pool drops broken connections
        // when they come back. Only a connection idle long enough for a
        // server, proxy or firewall to have dropped it is pinged first.
        .test_before_acquire_if_idle_for(IDLE_BEFORE_PING)
        .sqlx_logging(false);
    if settings.url.starts_with("sqlite:") {
        let busy = settings.acquire_timeout;
        // Negative: a size in KiB rather than in pages.
        let cache_kib = -i64::from(settings.sqlite_cache_mib) * 1024;
        options.map_sqlx_sqlite_opts(move |opts| {
            opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(busy)
                .pragma("cache_size", cache_kib.to_string())
                .create_if_missing(true)
        });
    }
    Database::connect(options).await.map_err(db_error)
}

/// Applies every pending migration.
pub async fn migrate_up(db: &DatabaseConnection) -> Result<(), Error> {
    migrations::Migrator::up(db, None).await.map_err(db_error)
}

/// Starts a write transaction (IMMEDIATE on SQLite, so two writers never
/// deadlock upgrading read locks).
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, Error> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    })
    .await
    .map_err(db_error)
}

/// How the store reaches its database, chosen once when it opens (by the
/// URL's scheme), so no caller picks a connection by the type of a
/// parameter: each backend owns its write path for a row and its version
/// row ([`Store::write_with_version`]) and where queries go.
#[derive(Debug, Clone)]
enum Backend {
    /// SQLite: a committer connection that sends the writes waiting at one
    /// moment as one transaction (`group_commit`), and a read-only
    /// connection held open for queries outside a transaction
    /// (`sqlite_reads`; WAL: reads do not wait for a commit).
    Sqlite {
        writes: GroupCommit,
        reads: SqliteReads,
    },
    /// PostgreSQL: the pool for everything; a row and its version row are
    /// one statement (a data-modifying CTE).
    Postgres,
}

/// The budget of [`Store::query_within`] that runs a query to its end.
pub const UNBOUNDED: u64 = u64::MAX;

/// PostgreSQL's code for a statement it cancelled (`query_canceled`: its
/// `statement_timeout` ran out, or an operator cancelled it).
const POSTGRES_QUERY_CANCELED: &str = "57014";

/// Runs the query `statement` on PostgreSQL for at most `time`: its rows,
/// or `None` when PostgreSQL cancelled it. The timeout is set for the
/// statement's own transaction (`SET LOCAL`), so it ends with it — also
/// when the caller goes away half-way and the transaction is rolled back —
/// and no pooled connection keeps it.
async fn postgres_query_within(
    pool: &DatabaseConnection,
    statement: Statement,
    time: Duration,
) -> Result<Option<Vec<QueryResult>>, DbErr> {
    let millis = time.as_millis().max(1);
    let txn = pool.begin().await?;
    txn.execute_unprepared(&format!("SET LOCAL statement_timeout = {millis}"))
        .await?;
    match txn.query_all_raw(statement).await {
        Ok(rows) => {
            txn.commit().await?;
            Ok(Some(rows))
        }
        Err(error) if database_code(&error).as_deref() == Some(POSTGRES_QUERY_CANCELED) => {
            txn.rollback().await?;
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

/// The database's own code of a statement's error, if it gave one.
fn database_code(error: &DbErr) -> Option<String> {
    match error {
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => e
            .as_database_error()
            .and_then(|e| e.code())
            .map(|code| code.into_owned()),
        _ => None,
    }
}

/// The database: its pool, its [`Backend`], and the agents this process
/// wrote last (`recent`). As a [`ConnectionTrait`] it runs a query where
/// its backend reads and a statement on the pool; a locking transaction
/// comes from [`Store::begin_write`]. It does not dereference to the pool.
#[derive(Debug, Clone)]
pub struct Store {
    pool: DatabaseConnection,
    backend: Backend,
    recent_agents: Arc<Recent<AgentSpec>>,
    changes: Arc<ChangeSignal>,
    /// Notified after each commit through this process that may have
    /// recorded an audit event: what the trail's sealer waits on.
    audit_recorded: Arc<tokio::sync::Notify>,
    list_scan: search::ListScan,
}

impl Store {
    /// Wraps `pool`; on SQLite starts its committer task (so it must be
    /// called inside the runtime), which records group sizes in `metrics`.
    /// Keeps up to `recent_agents` (a count and a weight in bytes) written
    /// agents as the first guess of the next update (`recent`).
    pub fn new(
        pool: DatabaseConnection,
        metrics: &RegistryMetrics,
        recent_agents: (usize, usize),
    ) -> Self {
        let backend = match pool.get_database_backend() {
            DbBackend::Sqlite => {
                let sqlite = pool.get_sqlite_connection_pool();
                let group_sizes = metrics.sqlite_group_writes.clone();
                Backend::Sqlite {
                    writes: GroupCommit::start(sqlite.clone(), group_sizes),
                    reads: SqliteReads::new(sqlite),
                }
            }
            _ => Backend::Postgres,
        };
        Self {
            backend,
            recent_agents: Arc::new(Recent::new("agent", recent_agents, metrics)),
            changes: Arc::default(),
            audit_recorded: Arc::default(),
            list_scan: search::ListScan::default(),
            pool,
        }
    }

    /// This store with filtered listings bounded by `scan`.
    pub fn with_list_scan(self, scan: search::ListScan) -> Self {
        Self {
            list_scan: scan,
            ..self
        }
    }

    /// How far a filtered listing may search before it answers.
    pub fn list_scan(&self) -> search::ListScan {
        self.list_scan
    }

    /// Runs the query `statement` for at most `steps` of SQLite's virtual
    /// machine instructions: its rows, or `None` when SQLite stopped it at
    /// the end of its budget (a zero budget: not run, on either database;
    /// [`UNBOUNDED`]: run to its end, on either). PostgreSQL counts no
    /// instructions: any other budget there is the list scan's time
    /// ([`search::ListScan::postgres_time`]), after which PostgreSQL
    /// cancels the statement and the answer is `None` too.
    pub async fn query_within(
        &self,
        statement: Statement,
        steps: u64,
    ) -> Result<Option<Vec<QueryResult>>, DbErr> {
        if steps == 0 {
            return Ok(None);
        }
        match &self.backend {
            Backend::Sqlite { reads, .. } => reads.query_all_within(statement, steps).await,
            Backend::Postgres if steps == UNBOUNDED => {
                self.pool.query_all_raw(statement).await.map(Some)
            }
            Backend::Postgres => {
                postgres_query_within(&self.pool, statement, self.list_scan.postgres_time).await
            }
        }
    }

    /// The pool, for what runs outside the request path (readiness pings,
    /// key jobs, migrations).
    pub fn pool(&self) -> &DatabaseConnection {
        &self.pool
    }

    /// Starts a locking write transaction on the pool ([`begin_write`]).
    pub async fn begin_write(&self) -> Result<DatabaseTransaction, Error> {
        begin_write(&self.pool).await
    }

    /// Whether writes can be made: on SQLite, whether the committer task
    /// still runs.
    pub fn writes_running(&self) -> bool {
        match &self.backend {
            Backend::Sqlite { writes, .. } => writes.running(),
            Backend::Postgres => true,
        }
    }

    /// On SQLite, closes the read connection: the next query opens one
    /// that plans with the planner statistics as they are now (a
    /// connection reads them when it opens, and an analysis by another
    /// connection does not reach it). On PostgreSQL, nothing.
    pub async fn replan_reads(&self) {
        if let Backend::Sqlite { reads, .. } = &self.backend {
            reads.reopen().await;
        }
    }

    /// The agents this process wrote last.
    pub fn recent_agents(&self) -> &Recent<AgentSpec> {
        &self.recent_agents
    }

    /// The PostgreSQL pool, on PostgreSQL (the watch feed listens for
    /// change notifications on a connection of its own from it).
    pub fn postgres_pool(&self) -> Option<&sea_orm::sqlx::PgPool> {
        match self.backend {
            Backend::Postgres => Some(self.pool.get_postgres_connection_pool()),
            Backend::Sqlite { .. } => None,
        }
    }

    /// Raised after every committed write of a tenant: what the watch feed
    /// waits on.
    pub fn changes(&self) -> &Arc<ChangeSignal> {
        &self.changes
    }

    /// Says, after its commit, that a write of `tenant` changed a resource
    /// or a label: wakes the watch feed ([`Store::changes`]) and the audit
    /// trail's sealer (the write's event).
    pub fn committed(&self, tenant: &str) {
        self.changes.raise(tenant);
        self.audit_recorded.notify_one();
    }

    /// Says, after its commit, that an audit event was recorded with no
    /// resource changed (a credential release, a key operation, a label
    /// policy): wakes the audit trail's sealer.
    pub fn audit_recorded(&self) {
        self.audit_recorded.notify_one();
    }

    /// Completes at the first [`Store::committed`] or
    /// [`Store::audit_recorded`] since the last wait completed (at once if
    /// one came in between): the trail may have grown.
    pub async fn audit_may_have_grown(&self) {
        self.audit_recorded.notified().await;
    }
}

#[sea_orm::prelude::async_trait::async_trait]
impl ConnectionTrait for Store {
    fn get_database_backend(&self) -> DbBackend {
        self.pool.get_database_backend()
    }

    async fn execute_raw(&self, statement: Statement) -> Result<ExecResult, DbErr> {
        self.pool.execute_raw(statement).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.pool.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, statement: Statement) -> Result<Option<QueryResult>, DbErr> {
        Ok(self.query_all_raw(statement).await?.into_iter().next())
    }

    async fn query_all_raw(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        match &self.backend {
            Backend::Sqlite { reads, .. } => reads.query_all(statement).await,
            Backend::Postgres => self.pool.query_all_raw(statement).await,
        }
    }
}

/// Writes `change` (an insert or a conditional update of at most one row)
/// and, exactly when it wrote its row, the version row `version_row` into
/// `versions`: both or neither are stored. Answers whether it wrote.
///
/// PostgreSQL: one statement, `WITH written AS (<change> RETURNING …)
/// INSERT INTO <versions> (<columns>) SELECT <values> FROM written`, atomic
/// without BEGIN/COMMIT; `change` must return a column (`RETURNING`).
///
/// SQLite cannot put DML in a CTE: there the write is `<change>; INSERT
/// INTO <versions> … SELECT <values> WHERE changes() = 1`, committed in one
/// transaction with the other writes waiting at that moment
/// (`group_commit`).
///
/// `remembered`, when given, is a row of `request_ids` (an AIP-155 request
/// id, [`request_ids`]) written exactly when the version row is: one more
/// CTE of the same statement on PostgreSQL, one more statement of the same
/// batch on SQLite. A clash on its key fails the whole write.
///
/// `read_after`, when given, is a query whose rows the answer carries on
/// SQLite, run in the write's batch right after it (no read of its own on
/// the read connection); on PostgreSQL it is not run (`None`: the caller
/// reads).
impl Store {
    pub async fn write_with_version<V, C, S>(
        &self,
        change: S,
        versions: V,
        version_row: Vec<(C, SimpleExpr)>,
        remembered: Option<Vec<(sea_orm::sea_query::Alias, SimpleExpr)>>,
        read_after: Option<SelectStatement>,
    ) -> Result<(bool, Option<Vec<QueryResult>>), DbErr>
    where
        V: EntityTrait,
        C: IntoIden,
        S: Into<SubQueryStatement> + QueryStatementWriter,
    {
        let (columns, values): (Vec<C>, Vec<SimpleExpr>) = version_row.into_iter().unzip();
        let mut insert = Query::insert();
        insert.into_table(versions).columns(columns);
        let mut remember = remembered.map(|row| {
            let (columns, values): (Vec<_>, Vec<SimpleExpr>) = row.into_iter().unzip();
            let mut insert = Query::insert();
            insert
                .into_table(sea_orm::sea_query::Alias::new(request_ids::TABLE))
                .columns(columns);
            (insert, values)
        });
        if let Backend::Sqlite { writes, .. } = &self.backend {
            let when_written = |values: Vec<SimpleExpr>| {
                Query::select()
                    .exprs(values)
                    .and_where(Expr::cust("changes() = 1"))
                    .to_owned()
            };
            insert
                .select_from(when_written(values))
                .map_err(|e| DbErr::Custom(e.to_string()))?;
            let mut statements = vec![
                change.build(SqliteQueryBuilder),
                insert.build(SqliteQueryBuilder),
            ];
            // After the version row: `changes()` is then 1 exactly when
            // both rows before it were written, and so is the batch's
            // closing `changes()` when this one is.
            if let Some((mut remember, values)) = remember {
                remember
                    .select_from(when_written(values))
                    .map_err(|e| DbErr::Custom(e.to_string()))?;
                statements.push(remember.build(SqliteQueryBuilder));
            }
            let read = read_after.map(|query| query.build(SqliteQueryBuilder));
            let wanted = read.is_some();
            let written = writes.write(statements, read).await?;
            let rows = wanted.then(|| written.read.into_iter().map(QueryResult::from).collect());
            return Ok((written.changed, rows));
        }
        const WRITTEN: &str = "written";
        const REMEMBERED: &str = "remembered";
        let cte = CommonTableExpression::new()
            .query(change)
            .table_name(WRITTEN)
            .to_owned();
        let mut with = WithClause::new();
        with.cte(cte);
        if let Some((remember, values)) = remember.as_mut() {
            remember
                .select_from(
                    Query::select()
                        .exprs(std::mem::take(values))
                        .from(WRITTEN)
                        .to_owned(),
                )
                .map_err(|e| DbErr::Custom(e.to_string()))?;
            with.cte(
                CommonTableExpression::new()
                    .query(remember.clone())
                    .table_name(REMEMBERED)
                    .to_owned(),
            );
        }
        insert
            .with_cte(with)
            .select_from(Query::select().exprs(values).from(WRITTEN).to_owned())
            .map_err(|e| DbErr::Custom(e.to_string()))?;
        let written = self.pool.execute(&insert).await?.rows_affected();
        Ok((written == 1, None))
    }
}

impl Store {
    /// Runs `insert` on its own, committed before it returns: on SQLite a
    /// share of the group commit (no lock of its own, one fsync shared with
    /// the writes waiting at that moment), on PostgreSQL one statement.
    pub async fn write_alone(&self, insert: InsertStatement) -> Result<(), DbErr> {
        match &self.backend {
            Backend::Sqlite { writes, .. } => writes
                .write(vec![insert.build(SqliteQueryBuilder)], None)
                .await
                .map(|_| ()),
            Backend::Postgres => self.pool.execute(&insert).await.map(|_| ()),
        }
    }
}

/// Inserts one row given as columns and values.
pub async fn insert_row<E, C>(
    db: &impl ConnectionTrait,
    table: E,
    row: Vec<(C, SimpleExpr)>,
) -> Result<(), DbErr>
where
    E: EntityTrait,
    C: IntoIden,
{
    let (columns, values): (Vec<C>, Vec<SimpleExpr>) = row.into_iter().unzip();
    let mut insert = Query::insert();
    insert
        .into_table(table)
        .columns(columns)
        .values(values)
        .map_err(|e| DbErr::Custom(e.to_string()))?;
    db.execute(&insert).await.map(|_| ())
}

/// A bound value for a statement.
pub fn val(value: impl Into<sea_orm::Value>) -> SimpleExpr {
    Expr::val(value)
}

/// A JSON column's value to bind. SQLite keeps JSON as text, so there it
/// is bound as its text: a write's values are copied on their way to the
/// database (when the statement is built, when it joins a group commit),
/// and a string copies in one piece where a JSON tree copies node by node.
/// PostgreSQL gets JSON (its columns are `jsonb`).
pub fn json_val(backend: DbBackend, value: &Value) -> SimpleExpr {
    match backend {
        DbBackend::Sqlite => val(value.to_string()),
        _ => val(value.clone()),
    }
}

/// Maps a database error on purpose: lost connections are UNAVAILABLE
/// (retryable); everything else is INTERNAL and logged.
pub fn db_error(error: DbErr) -> Error {
    use sea_orm::sqlx::Error as Sqlx;
    let unavailable = match &error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => {
            matches!(
                e.as_ref(),
                Sqlx::Io(_)
                    | Sqlx::PoolTimedOut
                    | Sqlx::PoolClosed
                    | Sqlx::WorkerCrashed
                    | Sqlx::Tls(_)
            ) || is_busy(e.as_ref())
        }
        _ => false,
    };
    if unavailable {
        Error::Unavailable {
            dependency: "database",
            detail: error.to_string(),
        }
    } else {
        Error::Internal(format!("database: {error}"))
    }
}

fn is_busy(error: &sea_orm::sqlx::Error) -> bool {
    // SQLITE_BUSY / SQLITE_LOCKED after the busy timeout; PostgreSQL
    // 57P01 (admin shutdown), 57P03 (cannot connect now).
    matches!(
        error.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("5" | "6" | "517" | "57P01" | "57P03")
    )
}

/// Whether a database error is a unique-index violation, and its message.
pub fn unique_violation(error: &DbErr) -> Option<String> {
    match error.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(message)) => Some(message),
        _ => None,
    }
}

/// Whether a database error is a foreign-key violation.
pub fn foreign_key_violation(error: &DbErr) -> bool {
    matches!(
        error.sql_err(),
        Some(SqlErr::ForeignKeyConstraintViolation(_))
    )
}

/// The current time, truncated to microseconds (what both databases keep).
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// The ABORTED answer for a stale etag.
pub fn stale_etag(kind: &str, current: i64) -> Error {
    Error::Aborted(format!(
        "the {kind} changed since that etag was read (now at version {current}); read it again"
    ))
}

/// One stored version of an agent or provider.
#[derive(Debug, Clone)]
pub struct VersionRecord {
    pub version_number: i64,
    pub action: version::Action,
    pub configuration: Value,
    pub diff: Vec<Change>,
    pub change_description: String,
    pub changed_by: String,
    pub create_time: DateTime<Utc>,
    /// When the resource was created, and by whom.
    pub resource_create_time: DateTime<Utc>,
    pub resource_created_by: String,
}

/// One page of a listing.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The key to resume after, when more items follow.
    pub next_after: Option<String>,
    /// All items of the listing, across pages.
    pub total: i64,
}

/// Splits `limit + 1` fetched rows into a page and the resume key.
pub fn paginate<T>(
    mut rows: Vec<T>,
    limit: u64,
    key: impl Fn(&T) -> String,
    total: i64,
) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next_after = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(&key)
    } else {
        None
    };
    Page {
        items: rows,
        next_after,
        total,
    }
}

/// Checks that a database answers (for readiness).
pub async fn ping(db: &DatabaseConnection) -> Result<(), Error> {
    db.execute_unprepared("SELECT 1")
        .await
        .map(|_| ())
        .map_err(db_error)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    async fn pragma(db: &impl ConnectionTrait, name: &str) -> String {
        let statement = Statement::from_string(DbBackend::Sqlite, format!("PRAGMA {name}"));
        let row = db
            .query_one_raw(statement)
            .await
            .expect("the PRAGMA runs")
            .expect("the PRAGMA answers a row");
        row.try_get_by_index::<String>(0)
            .or_else(|_| row.try_get_by_index::<i64>(0).map(|n| n.to_string()))
            .expect("a text or integer value")
    }

    /// A new SQLite database in the temporary directory, opened as the
    /// registry opens its own (a busy timeout of 2.5 s, a page cache of
    /// `cache_mib`); the caller removes the file at `path`.
    pub(crate) async fn fresh_sqlite(cache_mib: u32) -> (DatabaseConnection, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("registry-{}.db", uuid::Uuid::now_v7()));
        let settings = DatabaseSettings {
            url: format!("sqlite://{}?mode=rwc", path.display()),
            max_connections: 1,
            acquire_timeout: Duration::from_millis(2500),
            sqlite_cache_mib: cache_mib,
        };
        let db = connect(&settings).await.expect("the registry connects");
        (db, path)
    }

    /// The connection the registry itself opens (not a test helper's):
    /// WAL, every commit durable (FULL), foreign keys, the busy timeout,
    /// the page cache's size (the read connection's too).
    #[tokio::test]
    async fn the_registry_opens_sqlite_in_wal_with_full_sync_foreign_keys_busy_timeout_and_cache() {
        let (db, path) = fresh_sqlite(48).await;
        assert_eq!(pragma(&db, "journal_mode").await, "wal");
        assert_eq!(pragma(&db, "synchronous").await, "2", "FULL");
        assert_eq!(pragma(&db, "foreign_keys").await, "1");
        assert_eq!(pragma(&db, "busy_timeout").await, "2500");
        assert_eq!(pragma(&db, "cache_size").await, "-49152", "48 MiB, in KiB");
        // The store's reads go through a read-only connection of their own.
        let store = Store::new(db.clone(), &RegistryMetrics::default(), (0, 0));
        assert_eq!(
            pragma(&store, "cache_size").await,
            "-49152",
            "the read connection"
        );
        db.close().await.expect("close");
        let _ = std::fs::remove_file(path);
    }

    /// A read with a budget on SQLite's read connection is stopped when
    /// the budget is spent — a statement that would count for minutes
    /// answers within the test's patience — and the connection reads on
    /// after it, with a budget or without.
    #[tokio::test]
    async fn a_read_with_a_budget_stops_at_its_end_and_the_connection_reads_on() {
        let (db, path) = fresh_sqlite(2).await;
        let store = Store::new(db.clone(), &RegistryMetrics::default(), (0, 0));
        let endless = || {
            Statement::from_string(
                DbBackend::Sqlite,
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000000000) \
                 SELECT COUNT(*) FROM n",
            )
        };
        let one = || Statement::from_string(DbBackend::Sqlite, "SELECT 7");
        for steps in [0, 1, 50_000] {
            // Failing, not hanging, if the budget were not kept.
            let stopped = tokio::time::timeout(
                Duration::from_secs(10),
                store.query_within(endless(), steps),
            )
            .await
            .expect("stopped long before 10 s")
            .expect("a stopped read is no error");
            assert!(stopped.is_none(), "stopped after {steps} steps");
            let rows = store
                .query_within(one(), 1_000)
                .await
                .expect("the next read")
                .expect("within its budget");
            assert_eq!(rows[0].try_get_by_index::<i64>(0).expect("a number"), 7);
            assert_eq!(pragma(&store, "cache_size").await, "-2048", "no budget");
        }
        db.close().await.expect("close");
        let _ = std::fs::remove_file(path);
    }
}
