//! Group commit of agent writes on SQLite: one transaction, and so one
//! durable commit (WAL append and fsync), for every write that arrived while
//! the previous group was committing.
//!
//! Each write is a list of statements whose last one tells whether it
//! wrote (see [`super::write_with_version`]). A task owns the queue; it
//! takes every waiting write (up to [`MAX_GROUP`]) and runs them on the
//! pool's connection as one transaction: `BEGIN IMMEDIATE`, then each
//! write (`<statements>; SELECT changes()`, one command to the
//! connection's thread, its prepared statements cached), then `COMMIT`.
//! Writes stay independent: each one's conditions (the version it
//! expects, the provider it names) are evaluated against what the writes
//! before it in the group left, exactly as if they had committed one by
//! one in that order.
//!
//! When a statement fails (a duplicate name, say), the whole group is
//! rolled back and its writes are run again one transaction each, so only
//! the write at fault gets the error. A failure that is not about one
//! statement (the database is locked or unreachable) is every write's
//! answer, without retries. An idle queue adds no latency: a lone write is
//! a group of one.
//!
//! The task runs the writes whatever happens to their callers, so a call
//! cancelled while it waits never leaves a transaction half-done.

use prometheus_client::metrics::histogram::Histogram;
use sea_orm::DbErr;
use sea_orm::sea_query::Values;
use sea_orm::sqlx::{self, Row};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Most writes in one transaction.
pub const MAX_GROUP: usize = 64;

/// Writes waiting for the committer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 1024;

/// The column name of the row that closes each write's statements.
const WRITTEN: &str = "agentregistry_written";

/// The queue of writes in front of the committer task.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    writes: mpsc::Sender<PendingWrite>,
}

/// One write: its statements (each ending in `;`), their values in order,
/// and where its outcome goes.
#[derive(Debug)]
struct PendingWrite {
    sql: String,
    values: Values,
    outcome: oneshot::Sender<Result<bool, DbErr>>,
}

impl GroupCommit {
    /// Starts the committer task for `pool`, which records each group's
    /// size in `group_sizes`; it stops when the last clone of the answer is
    /// dropped and the queue is empty.
    pub fn start(pool: sqlx::SqlitePool, group_sizes: Histogram) -> Self {
        let (writes, queue) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(commit_groups(pool, queue, group_sizes));
        Self { writes }
    }

    /// Queues `statements` as one write and waits for its group to commit;
    /// answers whether the last statement changed a row.
    pub async fn write(&self, statements: Vec<(String, Values)>) -> Result<bool, DbErr> {
        let (sql, values) = joined(statements);
        let (outcome, answer) = oneshot::channel();
        let pending = PendingWrite {
            sql,
            values,
            outcome,
        };
        if self.writes.send(pending).await.is_err() {
            return Err(DbErr::Custom("the SQLite committer has stopped".to_owned()));
        }
        answer
            .await
            .map_err(|_| DbErr::Custom("the SQLite committer dropped a write".to_owned()))?
    }
}

/// The statements as one SQL text ending in `SELECT changes()`, and their
/// values in order (SQLite's placeholders are positional). The text of a
/// kind of write is the same every time, so its statements stay prepared.
fn joined(statements: Vec<(String, Values)>) -> (String, Values) {
    let mut sql = String::new();
    let mut values = Vec::new();
    for (statement, statement_values) in statements {
        sql.push_str(&statement);
        sql.push_str(";\n");
        values.extend(statement_values.0);
    }
    sql.push_str("SELECT changes() AS ");
    sql.push_str(WRITTEN);
    sql.push_str(";\n");
    (sql, Values(values))
}

/// The committer: every write waiting when a group starts joins it.
async fn commit_groups(
    pool: sqlx::SqlitePool,
    mut queue: mpsc::Receiver<PendingWrite>,
    group_sizes: Histogram,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        group_sizes.observe(group.len() as f64);
        let span = tracing::debug_span!("sqlite group commit", writes = group.len());
        commit(&pool, std::mem::take(&mut group))
            .instrument(span)
            .await;
    }
}

/// Commits `group` as one transaction, or, when a statement fails, each
/// write alone.
async fn commit(pool: &sqlx::SqlitePool, group: Vec<PendingWrite>) {
    let outcomes = run_transaction(pool, &group).await;
    match outcomes {
        Ok(written) => {
            for (pending, written) in group.into_iter().zip(written) {
                let _ = pending.outcome.send(Ok(written));
            }
        }
        Err(error) if group.len() > 1 && is_statement_error(&error) => {
            for pending in group {
                let outcome = run_transaction(pool, std::slice::from_ref(&pending))
                    .await
                    .map(|written| written.first().copied().unwrap_or(false));
                let _ = pending.outcome.send(outcome);
            }
        }
        Err(error) => {
            for pending in group {
                let _ = pending.outcome.send(Err(error.clone()));
            }
        }
    }
}

/// Runs the writes of `group` in one IMMEDIATE transaction on a connection
/// of `pool` and answers, per write, whether it wrote. On failure the open
/// transaction is rolled back on the same connection before it goes back to
/// the pool, or the connection is closed.
///
/// Each write is its own command to the connection's thread, so that its
/// text stays the same from group to group and its prepared statements are
/// cached: one batch text for the whole group would be new almost every
/// time, and parsing and planning it again was an eighth of the registry's
/// CPU in the update phase of the issue-3 workload.
async fn run_transaction(
    pool: &sqlx::SqlitePool,
    group: &[PendingWrite],
) -> Result<Vec<bool>, DbErr> {
    let mut connection = pool.acquire().await.map_err(exec_error)?;
    let outcome = run_writes(&mut connection, group).await;
    if outcome.is_err() {
        let rolled_back = sqlx::query("ROLLBACK").execute(&mut *connection).await;
        if rolled_back.is_err() {
            // No transaction was open (BEGIN itself failed), or the
            // connection is broken: either way, not one to reuse.
            let _ = connection.close().await;
        }
    }
    outcome.map_err(exec_error)
}

/// `BEGIN IMMEDIATE`, each write of `group`, `COMMIT`.
async fn run_writes(
    connection: &mut sqlx::SqliteConnection,
    group: &[PendingWrite],
) -> Result<Vec<bool>, sqlx::Error> {
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *connection)
        .await?;
    let mut written = Vec::with_capacity(group.len());
    for pending in group {
        let write = sqlx::query_with(
            sqlx::AssertSqlSafe(pending.sql.as_str()),
            sea_query_sqlx::SqlxValues(pending.values.clone()),
        );
        let rows = write.fetch_all(&mut *connection).await?;
        written.push(write_outcome(&rows)?);
    }
    sqlx::query("COMMIT").execute(&mut *connection).await?;
    Ok(written)
}

/// Whether a write wrote: its last row is its `SELECT changes()` (rows a
/// statement returned with `RETURNING` come before it).
fn write_outcome(rows: &[sqlx::sqlite::SqliteRow]) -> Result<bool, sqlx::Error> {
    let closing = rows.last().filter(|row| {
        row.try_column(0)
            .is_ok_and(|column| sqlx::Column::name(column) == WRITTEN)
    });
    match closing {
        Some(row) => Ok(row.try_get::<i64, _>(0)? == 1),
        None => Err(sqlx::Error::Protocol(
            "group commit: a write did not end with its changes() row".to_owned(),
        )),
    }
}

/// Whether `error` came from one statement of a write (a constraint, a
/// value out of range) rather than from the database as a whole (locked,
/// I/O, no connection): only the former is worth running each write alone.
fn is_statement_error(error: &DbErr) -> bool {
    let DbErr::Exec(sea_orm::RuntimeErr::SqlxError(error)) = error else {
        return false;
    };
    let code = error
        .as_database_error()
        .and_then(|database| database.code())
        .and_then(|code| code.parse::<i64>().ok());
    // The primary result code (the low byte of an extended one):
    // SQLITE_ERROR, SQLITE_TOOBIG, SQLITE_CONSTRAINT, SQLITE_MISMATCH,
    // SQLITE_RANGE.
    matches!(code.map(|code| code & 0xff), Some(1 | 18 | 19 | 20 | 25))
}

fn exec_error(error: sqlx::Error) -> DbErr {
    DbErr::Exec(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(error)))
}
