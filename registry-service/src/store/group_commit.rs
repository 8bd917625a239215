//! Group commit of agent writes on SQLite: one transaction, and so one
//! durable commit (WAL append and fsync), for every write that arrived while
//! the previous group was committing.
//!
//! Each write is a list of statements whose last one tells whether it
//! wrote (see [`super::write_with_version`]). A task owns the queue; it
//! takes every waiting write (up to [`MAX_GROUP`]) and sends them as one
//! batch, `BEGIN IMMEDIATE; <write 1>; SELECT changes(); <write 2>; SELECT
//! changes(); … COMMIT`, to the connection's thread: one hand-off per
//! group. A group's text is the same whenever the same kinds of write
//! arrive in the same order (under a steady stream of updates, one text
//! per group size), so it is kept prepared, up to [`MAX_CACHED_GROUP`]
//! writes. Writes stay independent: each one's conditions (the version it
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

/// Most writes in a group whose prepared statements are kept for the next
/// group of the same text. Larger groups (more writers at once than this)
/// are parsed each time: their texts rarely recur, and each one kept holds
/// three prepared statements per write.
const MAX_CACHED_GROUP: usize = 16;

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
/// values in order (SQLite's placeholders are positional).
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
async fn run_transaction(
    pool: &sqlx::SqlitePool,
    group: &[PendingWrite],
) -> Result<Vec<bool>, DbErr> {
    let mut sql = String::from("BEGIN IMMEDIATE;\n");
    let mut values = Vec::new();
    for pending in group {
        sql.push_str(&pending.sql);
        values.extend(pending.values.0.iter().cloned());
    }
    sql.push_str("COMMIT;");
    let mut connection = pool.acquire().await.map_err(exec_error)?;
    // Prepared once per text: parsing and planning every group's text
    // anew was about an eighth of the registry's CPU in the update phase
    // of the issue-3 workload. The reads have a connection of their own,
    // so these statements evict none of theirs.
    let batch = sqlx::query_with(
        sqlx::AssertSqlSafe(sql),
        sea_query_sqlx::SqlxValues(Values(values)),
    )
    .persistent(group.len() <= MAX_CACHED_GROUP);
    match batch.fetch_all(&mut *connection).await {
        Ok(rows) => written_per_write(&rows, group.len()),
        Err(error) => {
            let rolled_back = sqlx::query("ROLLBACK").execute(&mut *connection).await;
            if rolled_back.is_err() {
                // No transaction was open (BEGIN itself failed), or the
                // connection is broken: either way, not one to reuse.
                let _ = connection.close().await;
            }
            Err(exec_error(error))
        }
    }
}

/// Reads each write's `SELECT changes()` row; rows a statement returned
/// (`RETURNING`) are skipped.
fn written_per_write(rows: &[sqlx::sqlite::SqliteRow], writes: usize) -> Result<Vec<bool>, DbErr> {
    let mut written = Vec::with_capacity(writes);
    for row in rows {
        let closes_a_write = row
            .try_column(0)
            .is_ok_and(|column| sqlx::Column::name(column) == WRITTEN);
        if closes_a_write {
            let changed: i64 = row.try_get(0).map_err(exec_error)?;
            written.push(changed == 1);
        }
    }
    if written.len() != writes {
        return Err(DbErr::Custom(format!(
            "group commit: {} outcomes for {writes} writes",
            written.len()
        )));
    }
    Ok(written)
}

/// Whether `error` came from one statement of the batch (a constraint, a
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
