//! Reads on SQLite through a read-only connection of their own, kept open
//! for the life of the process instead of borrowed from the pool per
//! statement.
//!
//! sqlx runs each SQLite connection on a thread of its own and pings a
//! pooled connection every time it is given back (one more hand-off to that
//! thread and back, from a task spawned for it). A read is one statement,
//! so that ping was half of its trips to the connection's thread. Reads
//! here take the connection, run their statement and leave. A call
//! cancelled half-way does no harm: the connection's thread finishes the
//! statement (or stops when nobody takes its rows) before it runs the
//! next one, and the connection only reads. WAL lets this connection read
//! while the pool's connection writes: reads do not queue behind a commit,
//! and each statement sees every transaction committed before it started.
//!
//! A connection that fails with anything but an SQL error (I/O, its thread
//! gone) is closed and the next read opens a new one.
//!
//! A read may come with a budget of SQLite virtual machine instructions
//! ([`SqliteReads::query_all_within`]): SQLite's progress handler, called
//! every [`PROGRESS_STEPS`] instructions on the connection's thread,
//! interrupts the statement once the budget is spent, and the read answers
//! that it ran out instead of rows. One read at a time holds the
//! connection, so a search that would walk a whole tenant cannot keep
//! every other caller's reads waiting behind it. Instructions, not time:
//! the same query over the same rows runs out, or not, however loaded the
//! machine is, so a page's answer does not depend on the load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sea_orm::sqlx::{self, ConnectOptions, Connection};
use sea_orm::{DbErr, QueryResult, RuntimeErr, Statement, Value, Values};
use tokio::sync::Mutex;

/// Virtual machine instructions between two calls of the progress
/// handler: well under a millisecond of work, so a budget is kept to
/// within them, while a call (an atomic decrement) costs nothing
/// measurable.
pub const PROGRESS_STEPS: u64 = 1_000;

/// The budget of a read without one.
const UNLIMITED: u64 = u64::MAX;

/// SQLite's result code of a statement its progress handler stopped.
const SQLITE_INTERRUPT: &str = "9";

/// The progress handler's calls the running read has left ([`UNLIMITED`]:
/// it runs to its end). Set before each read by the task that holds the
/// connection, counted down by the progress handler on the connection's
/// thread.
type Remaining = Arc<AtomicU64>;

/// The read connection, opened on first use.
#[derive(Debug, Clone)]
pub struct SqliteReads {
    options: Arc<SqliteConnectOptions>,
    connection: Arc<Mutex<Option<SqliteConnection>>>,
    remaining: Remaining,
}

impl SqliteReads {
    /// Reads from the database `pool` connects to.
    pub fn new(pool: &sqlx::SqlitePool) -> Self {
        let options = pool.connect_options().as_ref().clone().read_only(true);
        Self {
            options: Arc::new(options),
            connection: Arc::new(Mutex::new(None)),
            remaining: Arc::new(AtomicU64::new(UNLIMITED)),
        }
    }

    /// Runs `statement` and answers its rows.
    pub async fn query_all(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.run(statement, None)
            .await?
            .ok_or_else(|| DbErr::Custom("a read without a budget was interrupted".to_owned()))
    }

    /// Runs `statement` for at most `steps` virtual machine instructions
    /// (rounded up to [`PROGRESS_STEPS`]): its rows, or `None` when it was
    /// stopped at the end of its budget.
    pub async fn query_all_within(
        &self,
        statement: Statement,
        steps: u64,
    ) -> Result<Option<Vec<QueryResult>>, DbErr> {
        self.run(statement, Some(steps.div_ceil(PROGRESS_STEPS)))
            .await
    }

    /// Runs `statement` with `calls` of the progress handler (`None`: as
    /// many as it takes).
    async fn run(
        &self,
        statement: Statement,
        calls: Option<u64>,
    ) -> Result<Option<Vec<QueryResult>>, DbErr> {
        let mut held = self.connection.lock().await;
        let connection = match &mut *held {
            Some(connection) => connection,
            None => held.insert(self.open().await.map_err(query_error)?),
        };
        let (sql, values) = with_literal_limit(statement);
        let query = sqlx::query_with(sqlx::AssertSqlSafe(sql), sea_query_sqlx::SqlxValues(values));
        // Every read sets the budget it runs under, so one left behind by a
        // read whose caller went away holds nobody else.
        self.remaining
            .store(calls.unwrap_or(UNLIMITED), Ordering::Relaxed);
        match query.fetch_all(&mut *connection).await {
            Ok(rows) => Ok(Some(rows.into_iter().map(QueryResult::from).collect())),
            Err(error) => {
                let interrupted = error
                    .as_database_error()
                    .and_then(|e| e.code())
                    .is_some_and(|code| code == SQLITE_INTERRUPT);
                if interrupted && calls.is_some() {
                    return Ok(None);
                }
                if error.as_database_error().is_none()
                    && let Some(broken) = held.take()
                {
                    let _ = broken.close().await;
                }
                Err(query_error(error))
            }
        }
    }

    /// A new read connection, with the progress handler that keeps the
    /// budget.
    async fn open(&self) -> Result<SqliteConnection, sqlx::Error> {
        let mut connection = self.options.connect().await?;
        let remaining = Arc::clone(&self.remaining);
        let every = i32::try_from(PROGRESS_STEPS).unwrap_or(i32::MAX);
        connection
            .lock_handle()
            .await?
            .set_progress_handler(every, move || {
                // `false` interrupts the statement. A compare-and-swap, so
                // that a statement still running for a caller that went
                // away never writes over the next read's budget (and never
                // gives an unlimited read one); it may spend some of it.
                let counted =
                    remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                        (left != UNLIMITED && left > 0).then(|| left - 1)
                    });
                match counted {
                    Ok(_) => true,
                    Err(left) => left == UNLIMITED,
                }
            });
        Ok(connection)
    }
}

impl SqliteReads {
    /// Closes the connection (if one is open); the next read opens a new
    /// one. A read in progress finishes first: it holds the connection.
    pub async fn reopen(&self) {
        if let Some(open) = self.connection.lock().await.take() {
            let _ = open.close().await;
        }
    }
}

/// The statement's SQL and values, with its last bound value written as a
/// number instead, when that value is a `LIMIT` (a trailing one, or a
/// subquery's after which nothing else is bound: a filtered page's).
///
/// SQLite (3.51, as bundled) plans a bound LIMIT with its value and marks
/// the statement to be prepared again whenever that parameter is bound
/// anew — on every call of a cached statement, so a page query was parsed
/// and planned each time. A literal keeps the cached plan (one cached
/// statement per page size in use).
fn with_literal_limit(statement: Statement) -> (String, Values) {
    let mut values = statement.values.unwrap_or(Values(Vec::new())).0;
    let mut sql = statement.sql;
    const BOUND_LIMIT: &str = " LIMIT ?";
    if let Some(at) = sql.rfind(BOUND_LIMIT)
        && !sql[at + BOUND_LIMIT.len()..].contains('?')
        && let Some(Value::BigUnsigned(Some(limit))) = values.last()
    {
        sql.replace_range(at..at + BOUND_LIMIT.len(), &format!(" LIMIT {limit}"));
        values.pop();
    }
    (sql, Values(values))
}

fn query_error(error: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(error)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::DbBackend;

    fn statement(sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
    }

    #[test]
    fn a_trailing_bound_limit_becomes_a_literal() {
        let (sql, values) = with_literal_limit(statement(
            "SELECT id FROM agents WHERE tenant_id = ? LIMIT ?",
            vec!["acme".into(), 21u64.into()],
        ));
        assert_eq!(sql, "SELECT id FROM agents WHERE tenant_id = ? LIMIT 21");
        assert_eq!(values.0, vec![Value::from("acme")]);
    }

    #[test]
    fn a_page_query_as_sea_orm_builds_it_gets_a_literal_limit() {
        use migrations::entity::agent;
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect, QueryTrait};
        let query = agent::Entity::find()
            .filter(agent::Column::TenantId.eq("acme"))
            .limit(11)
            .build(DbBackend::Sqlite);
        let (sql, values) = with_literal_limit(query);
        assert!(sql.ends_with(" LIMIT 11"), "{sql}");
        assert_eq!(values.0, vec![Value::from("acme")]);
    }

    #[test]
    fn a_subquery_limit_bound_last_becomes_a_literal() {
        let (sql, values) = with_literal_limit(statement(
            "SELECT * FROM agents WHERE id IN (SELECT id FROM agents WHERE tenant_id = ? \
             ORDER BY name LIMIT ?) ORDER BY name",
            vec!["acme".into(), 11u64.into()],
        ));
        assert_eq!(
            sql,
            "SELECT * FROM agents WHERE id IN (SELECT id FROM agents WHERE tenant_id = ? \
             ORDER BY name LIMIT 11) ORDER BY name"
        );
        assert_eq!(values.0, vec![Value::from("acme")]);
    }

    #[test]
    fn other_statements_are_left_alone() {
        for (sql, values) in [
            ("SELECT id FROM agents WHERE id = ?", vec![Value::from("x")]),
            (
                "SELECT id FROM agents LIMIT ? OFFSET ?",
                vec![Value::from(5u64), Value::from(10u64)],
            ),
            (
                "SELECT id FROM agents WHERE name = ? LIMIT ?",
                vec![Value::from("a"), Value::from("b")],
            ),
            (
                "SELECT id FROM (SELECT id FROM agents LIMIT ?) WHERE name = ?",
                vec![Value::from(5u64), Value::from("a")],
            ),
        ] {
            let (kept_sql, kept_values) = with_literal_limit(statement(sql, values.clone()));
            assert_eq!((kept_sql.as_str(), kept_values.0), (sql, values));
        }
    }
}
