//! Group commit of agent writes on SQLite: one transaction, and so one
//! durable commit (WAL append and fsync), for every write that arrived while
//! the previous group was committing.
//!
//! Each write is a list of statements whose last one tells whether it
//! wrote (see [`super::Store::write_with_version`]), optionally followed by
//! a read whose rows come back with that answer: what the write's own
//! transaction sees right after it, with no trip of its own to a
//! connection (a write's answer that needs one more read, the labels of
//! an updated resource, gets it here). A task owns the queue; it
//! takes every waiting write (up to [`MAX_GROUP`]) and sends them as one
//! batch, `BEGIN IMMEDIATE; <write 1>; SELECT changes(); <write 2>; SELECT
//! changes(); …`, to the connection's thread, and `COMMIT` once every
//! write's outcome has come: a write is never answered "failed" after it
//! was committed, nor "written" before its commit. A group's text is the same whenever the same kinds of write
//! arrive in the same order (under a steady stream of updates, one text
//! per group size), so it is kept prepared, up to [`MAX_CACHED_GROUP`]
//! writes. Writes stay independent: each one's conditions (the version it
//! expects, the provider it names) are evaluated against what the writes
//! before it in the group left, exactly as if they had committed one by
//! one in that order.
//!
//! When a statement fails (a duplicate name, say), the group is rolled
//! back, the write at fault (the one whose `SELECT changes()` row did not
//! come) gets the error, and the others run again as one group: one more
//! transaction, not one per write. A failure that is not about one
//! statement (the database is locked or unreachable) is every write's
//! answer, without retries. An idle queue adds no latency: a lone write is
//! a group of one.
//!
//! A write whose caller has gone (cancelled, timed out) before its group
//! starts is dropped unrun; once a group starts, the task runs it to its
//! end whatever happens to the callers, so no transaction is left
//! half-done. The task is watched: when it stops (it panicked), [`GroupCommit::running`]
//! says so (readiness reports it) and writes fail at once as UNAVAILABLE.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::histogram::Histogram;
use sea_orm::sea_query::Values;
use sea_orm::sqlx::{self, Row};
use sea_orm::{DbErr, RuntimeErr};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
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

/// The first column's name of the rows of a write's read.
const READ: &str = "agentregistry_read";

/// A write's outcome: whether its last statement changed a row, and the
/// rows of its read (none without one).
#[derive(Debug, Default)]
pub struct Written {
    pub changed: bool,
    pub read: Vec<sqlx::sqlite::SqliteRow>,
}

/// The queue of writes in front of the committer task.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    writes: mpsc::Sender<PendingWrite>,
    /// Cleared when the committer task ends, however it ends.
    running: Arc<AtomicBool>,
}

/// One write: its statements (each ending in `;`), their values in order,
/// and where its outcome goes.
#[derive(Debug)]
struct PendingWrite {
    sql: String,
    values: Values,
    outcome: oneshot::Sender<Result<Written, DbErr>>,
}

impl GroupCommit {
    /// Starts the committer task for `pool`, which records each group's
    /// size in `group_sizes`; it stops when the last clone of the answer is
    /// dropped and the queue is empty.
    pub fn start(pool: sqlx::SqlitePool, group_sizes: Histogram) -> Self {
        let (writes, queue) = mpsc::channel(QUEUE_DEPTH);
        let running = Arc::new(AtomicBool::new(true));
        let stopped = Stopped(Arc::clone(&running));
        tokio::spawn(async move {
            // Dropped when the task ends, also by a panic (unwinding).
            let _stopped = stopped;
            commit_groups(pool, queue, group_sizes).await;
        });
        Self { writes, running }
    }

    /// Whether the committer task still runs.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Queues `statements` as one write and waits for its group to commit;
    /// answers whether the last statement changed a row, and the rows of
    /// `read` (a `SELECT`), run after them in the same transaction.
    pub async fn write(
        &self,
        statements: Vec<(String, Values)>,
        read: Option<(String, Values)>,
    ) -> Result<Written, DbErr> {
        let (sql, values) = joined(statements, read);
        let (outcome, answer) = oneshot::channel();
        let pending = PendingWrite {
            sql,
            values,
            outcome,
        };
        if !self.running() || self.writes.send(pending).await.is_err() {
            return Err(stopped());
        }
        answer.await.map_err(|_| stopped())?
    }
}

/// Clears the flag it holds when dropped; logs an error when the drop is
/// the committer task's panic unwinding. Any other end is the process
/// shutting down (its runtime drops the task, or the last writer is
/// gone): no error to report.
#[derive(Debug)]
struct Stopped(Arc<AtomicBool>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
        if std::thread::panicking() {
            tracing::error!("the SQLite committer stopped: agent writes fail until a restart");
        } else {
            tracing::debug!("the SQLite committer stopped");
        }
    }
}

/// The answer while the committer is gone: a connection-level error, so
/// UNAVAILABLE (see [`super::db_error`]).
fn stopped() -> DbErr {
    DbErr::Conn(RuntimeErr::Internal(
        "the SQLite committer has stopped".to_owned(),
    ))
}

/// The statements, then the read with its rows marked (a `SELECT` leaves
/// `changes()` as the last write set it), as one SQL text ending in
/// `SELECT changes()`, and their values in order (SQLite's placeholders are
/// positional).
fn joined(statements: Vec<(String, Values)>, read: Option<(String, Values)>) -> (String, Values) {
    let mut sql = String::new();
    let mut values = Vec::new();
    for (statement, statement_values) in statements {
        sql.push_str(&statement);
        sql.push_str(";\n");
        values.extend(statement_values.0);
    }
    if let Some((read, read_values)) = read {
        sql.push_str("SELECT 1 AS ");
        sql.push_str(READ);
        sql.push_str(", * FROM (");
        sql.push_str(&read);
        sql.push_str(");\n");
        values.extend(read_values.0);
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
        // Callers that went away before their group started: not run.
        group.retain(|pending| !pending.outcome.is_closed());
        if group.is_empty() {
            continue;
        }
        group_sizes.observe(group.len() as f64);
        let span = tracing::debug_span!("sqlite group commit", writes = group.len());
        commit(&pool, std::mem::take(&mut group))
            .instrument(span)
            .await;
    }
}

/// Commits `group` as one transaction; when a statement fails, the write
/// at fault gets the error and the rest run again as one group.
async fn commit(pool: &sqlx::SqlitePool, mut group: Vec<PendingWrite>) {
    while !group.is_empty() {
        match run_transaction(pool, &group).await {
            Ok(written) => {
                for (pending, written) in group.into_iter().zip(written) {
                    let _ = pending.outcome.send(Ok(written));
                }
                return;
            }
            Err(Failed {
                error,
                at: Some(at),
            }) if at < group.len() && is_statement_error(&error) => {
                let at_fault = group.remove(at);
                let _ = at_fault.outcome.send(Err(error));
            }
            Err(Failed { error, .. }) => {
                for pending in group {
                    let _ = pending.outcome.send(Err(error.clone()));
                }
                return;
            }
        }
    }
}

/// A group that failed: the error, and the index of the write that was
/// running when it came (`None` when the group did not start).
#[derive(Debug)]
struct Failed {
    error: DbErr,
    at: Option<usize>,
}

impl From<DbErr> for Failed {
    fn from(error: DbErr) -> Self {
        Self { error, at: None }
    }
}

/// Runs the writes of `group` in one IMMEDIATE transaction on a connection
/// of `pool` and answers, per write, whether it wrote and what it read. On failure the open
/// transaction is rolled back on the same connection before it goes back to
/// the pool, or the connection is closed.
async fn run_transaction(
    pool: &sqlx::SqlitePool,
    group: &[PendingWrite],
) -> Result<Vec<Written>, Failed> {
    let mut sql = String::from("BEGIN IMMEDIATE;\n");
    let mut values = Vec::new();
    for pending in group {
        sql.push_str(&pending.sql);
        values.extend(pending.values.0.iter().cloned());
    }
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
    // Each write's `SELECT changes()` row, as it comes: when a statement
    // fails, the writes before it have theirs, so the one at fault is the
    // next. A read's rows come before it and go with it; rows a statement
    // returned (`RETURNING`) are skipped.
    let mut written = Vec::with_capacity(group.len());
    let mut read = Vec::new();
    let failure = {
        let mut rows = batch.fetch(&mut *connection);
        loop {
            match rows.next().await {
                None => break None,
                Some(Ok(row)) => {
                    let first = row.try_column(0).map(sqlx::Column::name).ok();
                    if first == Some(READ) {
                        read.push(row);
                    } else if first == Some(WRITTEN) {
                        match row.try_get::<i64, _>(0) {
                            Ok(changed) => written.push(Written {
                                changed: changed == 1,
                                read: std::mem::take(&mut read),
                            }),
                            Err(error) => break Some(error),
                        }
                    }
                }
                Some(Err(error)) => break Some(error),
            }
        }
    };
    let error = match failure {
        // Every outcome is known before the commit: an outcome missing is
        // a bug, answered as a failure of a group that wrote nothing.
        None if written.len() != group.len() => sqlx::Error::Protocol(format!(
            "group commit: {} outcomes for {} writes",
            written.len(),
            group.len()
        )),
        None => match sqlx::query("COMMIT").execute(&mut *connection).await {
            Ok(_) => return Ok(written),
            // Not committed: no write of the group happened.
            Err(error) => {
                rollback(connection).await;
                return Err(exec_error(error).into());
            }
        },
        Some(error) => error,
    };
    let at = Some(written.len());
    rollback(connection).await;
    Err(Failed {
        error: exec_error(error),
        at,
    })
}

/// Ends the connection's open transaction before it goes back to the
/// pool, or closes the connection.
async fn rollback(mut connection: sqlx::pool::PoolConnection<sqlx::Sqlite>) {
    let rolled_back = sqlx::query("ROLLBACK").execute(&mut *connection).await;
    if rolled_back.is_err() {
        // No transaction was open (BEGIN itself failed), or the
        // connection is broken: either way, not one to reuse.
        let _ = connection.close().await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    /// A fresh database file with one table whose names are unique.
    async fn database() -> sqlx::SqlitePool {
        let path = std::env::temp_dir().join(format!("group-commit-{}.db", uuid::Uuid::now_v7()));
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .expect("open the database");
        sqlx::query("CREATE TABLE t (name TEXT NOT NULL UNIQUE, n INTEGER NOT NULL DEFAULT 0)")
            .execute(&pool)
            .await
            .expect("create the table");
        pool
    }

    type Answer = oneshot::Receiver<Result<Written, DbErr>>;

    /// One write of one statement with one bound name.
    fn write(sql: &str, name: &str) -> (PendingWrite, Answer) {
        read_after(sql, name, None)
    }

    /// [`write`], then `read` with no bound value.
    fn read_after(sql: &str, name: &str, read: Option<&str>) -> (PendingWrite, Answer) {
        let read = read.map(|read| (read.to_owned(), Values(Vec::new())));
        let (sql, values) = joined(vec![(sql.to_owned(), Values(vec![name.into()]))], read);
        let (outcome, answer) = oneshot::channel();
        let pending = PendingWrite {
            sql,
            values,
            outcome,
        };
        (pending, answer)
    }

    fn insert(name: &str) -> (PendingWrite, Answer) {
        write("INSERT INTO t (name) VALUES (?)", name)
    }

    fn bump(name: &str) -> (PendingWrite, Answer) {
        write("UPDATE t SET n = n + 1 WHERE name = ?", name)
    }

    async fn names(pool: &sqlx::SqlitePool) -> Vec<(String, i64)> {
        sqlx::query_as("SELECT name, n FROM t ORDER BY name")
            .fetch_all(pool)
            .await
            .expect("read the table")
    }

    async fn run(pool: &sqlx::SqlitePool, writes: Vec<(PendingWrite, Answer)>) -> Vec<Answer> {
        let (group, answers): (Vec<_>, Vec<_>) = writes.into_iter().unzip();
        commit(pool, group).await;
        answers
    }

    #[tokio::test]
    async fn a_mixed_group_answers_each_write_as_if_alone() {
        let pool = database().await;
        let answers = run(
            &pool,
            vec![insert("a"), insert("b"), bump("a"), bump("nobody")],
        )
        .await;
        let mut outcomes = Vec::new();
        for answer in answers {
            outcomes.push(answer.await.expect("answered").expect("no error").changed);
        }
        assert_eq!(outcomes, [true, true, true, false]);
        assert_eq!(names(&pool).await, [("a".into(), 1), ("b".into(), 0)]);
    }

    #[tokio::test]
    async fn a_unique_clash_fails_only_its_own_write() {
        let pool = database().await;
        let first = run(&pool, vec![insert("x")]).await;
        for answer in first {
            assert!(answer.await.expect("answered").expect("no error").changed);
        }
        let answers = run(
            &pool,
            vec![insert("a"), insert("x"), insert("b"), bump("x")],
        )
        .await;
        let mut outcomes = Vec::new();
        for answer in answers {
            outcomes.push(answer.await.expect("answered"));
        }
        let changed = |i: usize| outcomes[i].as_ref().is_ok_and(|w| w.changed);
        assert!(changed(0), "{outcomes:?}");
        let clash = outcomes[1].as_ref().expect_err("the duplicate fails");
        assert!(super::super::unique_violation(clash).is_some(), "{clash:?}");
        assert!(changed(2), "{outcomes:?}");
        assert!(changed(3), "{outcomes:?}");
        let expected = [("a".into(), 0), ("b".into(), 0), ("x".into(), 1)];
        assert_eq!(names(&pool).await, expected);
    }

    #[tokio::test]
    async fn each_write_gets_the_rows_of_its_own_read_as_its_transaction_saw_them() {
        let pool = database().await;
        let names_now = Some("SELECT name, n FROM t ORDER BY name");
        let answers = run(
            &pool,
            vec![
                read_after("INSERT INTO t (name) VALUES (?)", "a", names_now),
                insert("b"),
                read_after("UPDATE t SET n = n + 1 WHERE name = ?", "b", names_now),
                read_after("UPDATE t SET n = n + 1 WHERE name = ?", "nobody", names_now),
            ],
        )
        .await;
        let mut outcomes = Vec::new();
        for answer in answers {
            let written = answer.await.expect("answered").expect("no error");
            let rows: Vec<(String, i64)> = written
                .read
                .iter()
                .map(|row| (row.get("name"), row.get("n")))
                .collect();
            outcomes.push((written.changed, rows));
        }
        let a = ("a".to_owned(), 0);
        let b_bumped = ("b".to_owned(), 1);
        assert_eq!(
            outcomes,
            [
                (true, vec![a.clone()]),
                (true, vec![]),
                (true, vec![a.clone(), b_bumped.clone()]),
                // The read does not change what `changes()` says of the
                // write before it.
                (false, vec![a, b_bumped]),
            ]
        );
    }

    #[tokio::test]
    async fn a_write_whose_caller_left_before_its_group_is_not_run() {
        let pool = database().await;
        let (queue_in, queue) = mpsc::channel(8);
        let (gone, gone_answer) = insert("gone");
        drop(gone_answer);
        let (kept, kept_answer) = insert("kept");
        for pending in [gone, kept] {
            queue_in.send(pending).await.expect("queued");
        }
        drop(queue_in);
        commit_groups(pool.clone(), queue, Histogram::new([1.0].into_iter())).await;
        assert!(
            kept_answer
                .await
                .expect("answered")
                .expect("no error")
                .changed
        );
        assert_eq!(names(&pool).await, [("kept".into(), 0)]);
    }

    #[tokio::test]
    async fn a_stopped_committer_is_reported_and_writes_fail_as_unavailable() {
        let running = Arc::new(AtomicBool::new(true));
        let stopped_guard = Stopped(Arc::clone(&running));
        let task = tokio::spawn(async move {
            let _stopped = stopped_guard;
            panic!("the committer fails");
        });
        assert!(task.await.is_err());
        let (writes, _queue) = mpsc::channel(1);
        let committer = GroupCommit { writes, running };
        assert!(!committer.running());
        let error = committer
            .write(vec![("SELECT 1".to_owned(), Values(Vec::new()))], None)
            .await
            .expect_err("refused");
        assert!(matches!(
            super::super::db_error(error),
            crate::error::Error::Unavailable { .. }
        ));
    }
}
