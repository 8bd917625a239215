//! Reads on SQLite through a read-only connection of their own, kept open
//! for the life of the process instead of borrowed from the pool per
//! statement.
//!
//! sqlx runs each SQLite connection on a thread of its own and pings a
//! pooled connection every time it is given back (one more hand-off to that
//! thread and back, from a task spawned for it). A read is one statement,
//! so that ping was half of its trips to the connection's thread. Reads
//! here take the connection, run their statement and leave; the statement
//! runs in a task of its own, so a call cancelled half-way never abandons
//! the connection mid-statement. WAL lets this connection read while the
//! pool's connection writes: reads do not queue behind a commit, and each
//! statement sees every transaction committed before it started.
//!
//! A connection that fails with anything but an SQL error (I/O, its thread
//! gone) is closed and the next read opens a new one.

use std::sync::Arc;

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sea_orm::sqlx::{self, ConnectOptions, Connection};
use sea_orm::{DbErr, QueryResult, RuntimeErr, Statement};
use tokio::sync::Mutex;

/// The read connection, opened on first use.
#[derive(Debug, Clone)]
pub struct SqliteReads {
    options: Arc<SqliteConnectOptions>,
    connection: Arc<Mutex<Option<SqliteConnection>>>,
}

impl SqliteReads {
    /// Reads from the database `pool` connects to.
    pub fn new(pool: &sqlx::SqlitePool) -> Self {
        let options = pool.connect_options().as_ref().clone().read_only(true);
        Self {
            options: Arc::new(options),
            connection: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs `statement` and answers its rows.
    pub async fn query_all(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let reads = self.clone();
        tokio::spawn(async move { reads.run(statement).await })
            .await
            .map_err(|e| DbErr::Custom(format!("SQLite read task: {e}")))?
    }

    async fn run(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let mut held = self.connection.lock().await;
        let connection = match &mut *held {
            Some(connection) => connection,
            None => held.insert(self.options.connect().await.map_err(query_error)?),
        };
        let values = statement.values.unwrap_or(sea_orm::Values(Vec::new()));
        let query = sqlx::query_with(
            sqlx::AssertSqlSafe(statement.sql),
            sea_query_sqlx::SqlxValues(values),
        );
        match query.fetch_all(&mut *connection).await {
            Ok(rows) => Ok(rows.into_iter().map(QueryResult::from).collect()),
            Err(error) => {
                if error.as_database_error().is_none()
                    && let Some(broken) = held.take()
                {
                    let _ = broken.close().await;
                }
                Err(query_error(error))
            }
        }
    }
}

fn query_error(error: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(error)))
}
