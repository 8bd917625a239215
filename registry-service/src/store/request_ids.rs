//! Remembered request ids (AIP-155): a mutation sent with a `request_id`
//! stores a row in `request_ids` in the same statement or transaction as
//! its own writes — never alone before or after them — so the row exists
//! exactly when the call's write committed, whichever process or replica
//! made it. A retry reads it ([`find`]) and is answered from it instead of
//! running again.
//!
//! A row holds what a retry must match (the method and the request's
//! fingerprint) and what the first answer is rebuilt from ([`Answer`]):
//! the resource and the version the call wrote or answered with — an
//! answer rebuilt from immutable history is the answer given — and, for a
//! label, when it was set and by whom. Nothing in it is secret.
//!
//! The primary key (tenant, request id) makes two concurrent calls with one
//! id write once: the second one's insert fails ([`is_taken`]) and its
//! whole write with it.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query, SimpleExpr};
use sea_orm::{ConnectionTrait, DbErr, FromQueryResult};

use super::{db_error, unique_violation, val};
use crate::error::Error;

/// The table.
pub const TABLE: &str = "request_ids";

/// A request id a write is to be remembered under: the caller's id, the
/// method and the fingerprint of the request (SHA-256, hex, of its encoding
/// with `request_id` and `validate_only` cleared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub request_id: String,
    pub method: &'static str,
    pub fingerprint: String,
}

/// What a call answered, as its row keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The resource written (or answered with).
    pub resource_id: String,
    /// Its version in the answer (for a label: the version it names).
    pub version_number: i64,
    /// When the answer's state was written.
    pub answer_time: DateTime<Utc>,
    /// Who wrote it.
    pub answered_by: String,
}

/// A remembered call.
#[derive(Debug, Clone, FromQueryResult)]
pub struct Remembered {
    pub method: String,
    pub fingerprint: String,
    pub resource_id: String,
    pub version_number: i64,
    pub answer_time: DateTime<Utc>,
    pub answered_by: String,
    pub create_time: DateTime<Utc>,
}

impl Remembered {
    /// The answer it keeps.
    pub fn answer(&self) -> Answer {
        Answer {
            resource_id: self.resource_id.clone(),
            version_number: self.version_number,
            answer_time: self.answer_time,
            answered_by: self.answered_by.clone(),
        }
    }
}

/// The row remembering `claim` in `tenant` with `answer`, as columns and
/// values (for an insert of its own, or one riding in a write's
/// statement).
pub fn row(tenant: &str, claim: &Claim, answer: &Answer) -> Vec<(Alias, SimpleExpr)> {
    [
        ("tenant_id", val(tenant.to_owned())),
        ("request_id", val(claim.request_id.clone())),
        ("method", val(claim.method)),
        ("fingerprint", val(claim.fingerprint.clone())),
        ("resource_id", val(answer.resource_id.clone())),
        ("version_number", val(answer.version_number)),
        ("answer_time", val(answer.answer_time)),
        ("answered_by", val(answer.answered_by.clone())),
        ("create_time", val(super::now())),
    ]
    .into_iter()
    .map(|(name, value)| (Alias::new(name), value))
    .collect()
}

/// Remembers `claim` with `answer` through `db` (inside the write's
/// transaction); a clash with another call of the same id is
/// [`Error::RequestInProgress`].
pub async fn insert(
    db: &impl ConnectionTrait,
    tenant: &str,
    claim: &Claim,
    answer: &Answer,
) -> Result<(), Error> {
    db.execute(&insert_statement(tenant, claim, answer)?)
        .await
        .map(|_| ())
        .map_err(|error| taken_or(error, db_error))
}

/// `INSERT INTO request_ids … VALUES …` of [`row`].
fn insert_statement(
    tenant: &str,
    claim: &Claim,
    answer: &Answer,
) -> Result<sea_orm::sea_query::InsertStatement, Error> {
    let (columns, values): (Vec<Alias>, Vec<SimpleExpr>) =
        row(tenant, claim, answer).into_iter().unzip();
    let mut insert = Query::insert();
    insert
        .into_table(Alias::new(TABLE))
        .columns(columns)
        .values(values)
        .map_err(|e| Error::Internal(format!("request id statement: {e}")))?;
    Ok(insert)
}

/// The remembered call of `request_id` in `tenant`, if any.
pub async fn find(
    db: &impl ConnectionTrait,
    tenant: &str,
    request_id: &str,
) -> Result<Option<Remembered>, Error> {
    let query = Query::select()
        .columns(
            [
                "method",
                "fingerprint",
                "resource_id",
                "version_number",
                "answer_time",
                "answered_by",
                "create_time",
            ]
            .map(Alias::new),
        )
        .from(Alias::new(TABLE))
        .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant))
        .and_where(Expr::col(Alias::new("request_id")).eq(request_id))
        .to_owned();
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(backend.build(&query))
        .await
        .map_err(db_error)?;
    rows.into_iter()
        .next()
        .map(|row| Remembered::from_query_result(&row, ""))
        .transpose()
        .map_err(db_error)
}

/// Forgets `request_id` of `tenant` when it was remembered before
/// `before` (an expired row a new call may take over).
pub async fn forget_expired(
    db: &impl ConnectionTrait,
    tenant: &str,
    request_id: &str,
    before: DateTime<Utc>,
) -> Result<(), Error> {
    let delete = Query::delete()
        .from_table(Alias::new(TABLE))
        .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant))
        .and_where(Expr::col(Alias::new("request_id")).eq(request_id))
        .and_where(Expr::col(Alias::new("create_time")).lt(before))
        .to_owned();
    db.execute(&delete).await.map_err(db_error)?;
    Ok(())
}

/// Deletes every row remembered before `before`; answers how many.
pub async fn prune(db: &impl ConnectionTrait, before: DateTime<Utc>) -> Result<u64, Error> {
    let delete = Query::delete()
        .from_table(Alias::new(TABLE))
        .and_where(Expr::col(Alias::new("create_time")).lt(before))
        .to_owned();
    let done = db.execute(&delete).await.map_err(db_error)?;
    Ok(done.rows_affected())
}

/// Whether `error` is a clash on this table's key: another call with the
/// same request id wrote first (SQLite names the table's columns in its
/// message, PostgreSQL the key `request_ids_pkey`).
pub fn is_taken(error: &DbErr) -> bool {
    unique_violation(error).is_some_and(|message| message.contains("request_id"))
}

/// [`Error::RequestInProgress`] when `error` is [`is_taken`], else
/// `otherwise(error)`.
pub fn taken_or(error: DbErr, otherwise: impl FnOnce(DbErr) -> Error) -> Error {
    if is_taken(&error) {
        Error::RequestInProgress
    } else {
        otherwise(error)
    }
}
