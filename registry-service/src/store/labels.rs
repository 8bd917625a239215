//! Labels of versioned resources, once for every [`Kind`]: a label names
//! one version of one resource (`production` → 7). `labels` holds where each
//! label points now, `label_moves` every move (label, from → to, actor,
//! time, reason), both keyed by the kind's name ([`Names::kind`]) and the
//! resource id, so a new kind has labels without code or tables of its own.
//! `label_policies` holds each tenant's protected labels.
//!
//! Every change of a label — set, move, delete — goes through
//! [`move_label`], in one write transaction with its history row; a
//! resource's labels and their history stay while it is soft-deleted and
//! go with it when it is purged ([`forget`], called by the purge's
//! transaction).
//!
//! [`Names::kind`]: super::versioned::Names

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Order, Query, SelectStatement};
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, FromQueryResult, QueryResult, StatementBuilder,
};
use serde_json::Value;

use super::audit::{self, Action as AuditAction, Entry};
use super::chain::Link;
use super::changes::{self, ChangeAction, NewChange};
use super::request_ids::{self, Answer};
use super::versioned::{self, How, Kind};
use super::{Store, db_error, json_val, now, val};
use crate::caller::Caller;
use crate::error::Error;
pub use crate::model::label::{LATEST, check_name};

/// The most labels one resource may hold.
pub const MAX_LABELS: usize = 64;
/// The most labels a tenant's policy may protect.
pub const MAX_PROTECTED: usize = 64;
/// The longest reason of a move.
pub const MAX_REASON_CHARS: usize = 1024;

const LABELS: &str = "labels";
const MOVES: &str = "label_moves";
const POLICIES: &str = "label_policies";

/// Where a label points now.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct LabelRecord {
    pub label: String,
    pub version_number: i64,
    pub update_time: DateTime<Utc>,
    pub updated_by: String,
}

/// One recorded move of a label (`0`: none, before a create or after a
/// delete).
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct MoveRecord {
    pub id: i64,
    pub label: String,
    pub from_version: i64,
    pub to_version: i64,
    pub actor: String,
    pub move_time: DateTime<Utc>,
    pub reason: String,
}

/// One change of a label, as asked.
#[derive(Debug)]
pub struct LabelChange<'a> {
    pub caller: &'a Caller,
    /// Whether the caller is a tenant admin (may move protected labels).
    pub admin: bool,
    pub resource_id: &'a str,
    pub label: &'a str,
    /// The version to point at; `None` deletes the label.
    pub to: Option<i64>,
    /// Compare-and-set on the version the label points at now: `None` no
    /// check, `Some(0)` it must not exist, `Some(n)` it must point at `n`.
    pub expected: Option<i64>,
    pub reason: &'a str,
    /// Whether the change is remembered under a request id, or only
    /// checked (`validate_only`: nothing is written).
    pub how: How<'a>,
}

/// Sets, moves or deletes a label of resource `change.resource_id` of kind
/// `K`, and records the move, in one transaction: the one place a label
/// changes. Answers where the label points afterwards (`None`: deleted).
/// Pointing a label where it already points changes and records nothing.
pub async fn move_label<K: Kind>(
    store: &Store,
    change: LabelChange<'_>,
) -> Result<Option<LabelRecord>, Error> {
    let tenant = &change.caller.tenant;
    let (id, label) = (change.resource_id, change.label);
    let txn = store.begin_write().await?;
    // The resource's row locked (PostgreSQL; SQLite's write transaction
    // holds the database): label moves of one resource take turns, and the
    // resource cannot be deleted under them.
    versioned::get_locked::<K>(&txn, tenant, id).await?;
    if let Some(to) = change.to {
        require_version::<K>(&txn, tenant, id, to).await?;
    }
    if !change.admin && protected(&txn, tenant).await?.iter().any(|p| p == label) {
        return Err(Error::LabelProtected {
            label: label.to_owned(),
        });
    }
    let current = label_of::<K>(&txn, tenant, id, label).await?;
    let now_at = current.as_ref().map(|c| c.version_number);
    check_expected(label, change.expected, now_at)?;
    if now_at == change.to {
        return match current {
            Some(current) => {
                if let Some(claim) = change.how.claim.filter(|_| !change.how.validate_only) {
                    let answer = Answer {
                        resource_id: id.to_owned(),
                        version_number: current.version_number,
                        answer_time: current.update_time,
                        answered_by: current.updated_by.clone(),
                    };
                    request_ids::insert(&txn, tenant, claim, &answer).await?;
                    txn.commit().await.map_err(db_error)?;
                }
                Ok(Some(current))
            }
            None => Err(Error::NotFound {
                kind: "label",
                id: format!("{id}@{label}"),
            }),
        };
    }
    let time = now();
    let subject = &change.caller.subject;
    match change.to {
        Some(to) => {
            if current.is_none() && count_labels::<K>(&txn, tenant, id).await? >= MAX_LABELS {
                return Err(Error::precondition(
                    "TOO_MANY_LABELS",
                    format!("this {} already holds {MAX_LABELS} labels", K::NAMES.kind),
                ));
            }
            upsert::<K>(&txn, tenant, id, label, to, time, subject).await?;
        }
        None => {
            let delete = Query::delete()
                .from_table(Alias::new(LABELS))
                .and_where(resource::<K>(tenant, id))
                .and_where(Expr::col(Alias::new("label")).eq(label))
                .to_owned();
            txn.execute(&delete).await.map_err(db_error)?;
        }
    }
    let recorded = MoveRecord {
        id: 0,
        label: label.to_owned(),
        from_version: now_at.unwrap_or(0),
        to_version: change.to.unwrap_or(0),
        actor: subject.clone(),
        move_time: time,
        reason: change.reason.to_owned(),
    };
    // The resource's moves are one chain, linked under its row's lock.
    let prev = last_move_hash::<K>(&txn, tenant, id).await?;
    let hash = move_link(tenant, K::NAMES.kind, id, &recorded).hash_after(&prev);
    let mut record_move = Query::insert();
    record_move.into_table(Alias::new(MOVES)).columns(
        [
            "tenant_id",
            "kind",
            "resource_id",
            "label",
            "from_version",
            "to_version",
            "actor",
            "move_time",
            "reason",
            "hash",
        ]
        .map(Alias::new),
    );
    record_move
        .values([
            val(tenant.clone()),
            val(K::NAMES.kind),
            val(id.to_owned()),
            val(label.to_owned()),
            val(recorded.from_version),
            val(recorded.to_version),
            val(subject.clone()),
            val(time),
            val(change.reason.to_owned()),
            val(hash),
        ])
        .map_err(|e| Error::Internal(format!("label statement: {e}")))?;
    txn.execute(&record_move).await.map_err(db_error)?;
    let answer = Answer {
        resource_id: id.to_owned(),
        version_number: change.to.unwrap_or(0),
        answer_time: time,
        answered_by: subject.clone(),
    };
    if change.how.validate_only {
        txn.rollback().await.map_err(db_error)?;
        return Ok(change.to.map(|_| LabelRecord::of(label, answer)));
    }
    if let Some(claim) = change.how.claim {
        request_ids::insert(&txn, tenant, claim, &answer).await?;
    }
    let request_id = change.how.claim.map(|claim| claim.request_id.as_str());
    let (action, details) = (
        match change.to {
            Some(_) => AuditAction::LabelSet,
            None => AuditAction::LabelDelete,
        },
        serde_json::json!({
            "label": label,
            "from_version": now_at.unwrap_or(0),
            "to_version": change.to.unwrap_or(0),
            "reason": change.reason,
        }),
    );
    audit::record(
        &txn,
        Entry::on::<K>(change.caller, action, id, request_id, details),
    )
    .await?;
    // Last: the change log's revision lock (see `store::changes`).
    let logged = NewChange {
        tenant,
        kind: K::LOGGED_AS,
        resource_id: id,
        version_number: change.to.unwrap_or(0),
        label: Some(label),
        action: match change.to {
            Some(_) => ChangeAction::LabelSet,
            None => ChangeAction::LabelDelete,
        },
        changed_by: subject,
    };
    changes::record(&txn, logged).await?;
    txn.commit().await.map_err(db_error)?;
    store.committed(tenant);
    Ok(change.to.map(|_| LabelRecord::of(label, answer)))
}

impl LabelRecord {
    /// Label `label` as a remembered answer of setting it names it.
    pub fn of(label: &str, answer: Answer) -> Self {
        Self {
            label: label.to_owned(),
            version_number: answer.version_number,
            update_time: answer.answer_time,
            updated_by: answer.answered_by,
        }
    }
}

/// What a label move's chain link covers (see `store::chain`), in this
/// order: tenant, kind, resource id, label, from and to versions, actor,
/// time, reason. A resource's moves form one chain, in id order.
pub fn move_link(tenant: &str, kind: &str, resource_id: &str, moved: &MoveRecord) -> Link {
    Link::new()
        .text(tenant)
        .text(kind)
        .text(resource_id)
        .text(&moved.label)
        .number(moved.from_version)
        .number(moved.to_version)
        .text(&moved.actor)
        .time(moved.move_time)
        .text(&moved.reason)
}

/// The hash of resource `id`'s last label move (`""` when none is hashed).
async fn last_move_hash<K: Kind>(
    txn: &DatabaseTransaction,
    tenant: &str,
    id: &str,
) -> Result<String, Error> {
    #[derive(FromQueryResult)]
    struct Last {
        hash: Option<String>,
    }
    let query = Query::select()
        .column(Alias::new("hash"))
        .from(Alias::new(MOVES))
        .and_where(resource::<K>(tenant, id))
        .order_by(Alias::new("id"), Order::Desc)
        .limit(1)
        .to_owned();
    let last = read_all::<Last>(txn, &query).await?.into_iter().next();
    Ok(last.and_then(|l| l.hash).unwrap_or_default())
}

/// ABORTED when the compare-and-set does not hold; the message names where
/// the label points now.
fn check_expected(label: &str, expected: Option<i64>, now_at: Option<i64>) -> Result<(), Error> {
    let Some(expected) = expected else {
        return Ok(());
    };
    if now_at.unwrap_or(0) == expected {
        return Ok(());
    }
    let now = match now_at {
        Some(version) => format!("points at version {version}"),
        None => "does not exist".to_owned(),
    };
    let wanted = match expected {
        0 => "not to exist".to_owned(),
        n => format!("to point at version {n}"),
    };
    Err(Error::Aborted(format!(
        "label {label:?} {now} (expected {wanted}); read the labels again"
    )))
}

/// NOT_FOUND unless resource `id` has version `number`.
async fn require_version<K: Kind>(
    txn: &DatabaseTransaction,
    tenant: &str,
    id: &str,
    number: i64,
) -> Result<(), Error> {
    versioned::get_version::<K>(txn, tenant, id, number)
        .await
        .map(|_| ())
}

/// `kind = … AND resource_id = … AND tenant_id = …` of the label tables.
fn resource<K: Kind>(tenant: &str, id: &str) -> sea_orm::sea_query::SimpleExpr {
    Expr::col(Alias::new("kind"))
        .eq(K::NAMES.kind)
        .and(Expr::col(Alias::new("resource_id")).eq(id))
        .and(Expr::col(Alias::new("tenant_id")).eq(tenant))
}

async fn count_labels<K: Kind>(
    txn: &DatabaseTransaction,
    tenant: &str,
    id: &str,
) -> Result<usize, Error> {
    Ok(labels_of::<K>(txn, tenant, id).await?.len())
}

async fn upsert<K: Kind>(
    txn: &DatabaseTransaction,
    tenant: &str,
    id: &str,
    label: &str,
    to: i64,
    time: DateTime<Utc>,
    subject: &str,
) -> Result<(), Error> {
    let mut insert = Query::insert();
    insert.into_table(Alias::new(LABELS)).columns(
        [
            "kind",
            "resource_id",
            "label",
            "tenant_id",
            "version_number",
            "update_time",
            "updated_by",
        ]
        .map(Alias::new),
    );
    insert
        .values([
            val(K::NAMES.kind),
            val(id.to_owned()),
            val(label.to_owned()),
            val(tenant.to_owned()),
            val(to),
            val(time),
            val(subject.to_owned()),
        ])
        .map_err(|e| Error::Internal(format!("label statement: {e}")))?;
    insert.on_conflict(
        OnConflict::columns(["kind", "resource_id", "label"].map(Alias::new))
            .update_columns(["version_number", "update_time", "updated_by"].map(Alias::new))
            .to_owned(),
    );
    txn.execute(&insert).await.map_err(db_error)?;
    Ok(())
}

/// `SELECT version_number FROM labels WHERE …`: the version label `label`
/// of resource `id` names, as a subquery of a write's statement.
pub fn target_query<K: Kind>(tenant: &str, id: &str, label: &str) -> SelectStatement {
    Query::select()
        .column(Alias::new("version_number"))
        .from(Alias::new(LABELS))
        .and_where(resource::<K>(tenant, id))
        .and_where(Expr::col(Alias::new("label")).eq(label))
        .to_owned()
}

/// Where label `label` of resource `id` points now.
pub async fn label_of<K: Kind>(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
    label: &str,
) -> Result<Option<LabelRecord>, Error> {
    let query = Query::select()
        .columns(["label", "version_number", "update_time", "updated_by"].map(Alias::new))
        .from(Alias::new(LABELS))
        .and_where(resource::<K>(tenant, id))
        .and_where(Expr::col(Alias::new("label")).eq(label))
        .to_owned();
    Ok(read_all::<LabelRecord>(db, &query)
        .await?
        .into_iter()
        .next())
}

/// The labels of resource `id`, by name (without checking that it exists).
pub async fn labels_of<K: Kind>(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
) -> Result<Vec<LabelRecord>, Error> {
    read_all::<LabelRecord>(db, &labels_query::<K>(tenant, id)).await
}

/// The query of [`labels_of`] (which a write may also run in its own
/// batch: [`super::versioned::Written::labels`]).
pub fn labels_query<K: Kind>(tenant: &str, id: &str) -> SelectStatement {
    Query::select()
        .columns(["label", "version_number", "update_time", "updated_by"].map(Alias::new))
        .from(Alias::new(LABELS))
        .and_where(resource::<K>(tenant, id))
        .order_by(Alias::new("label"), Order::Asc)
        .to_owned()
}

/// The labels in `rows` of [`labels_query`].
pub fn from_rows(rows: &[QueryResult]) -> Result<Vec<LabelRecord>, Error> {
    rows.iter()
        .map(|row| LabelRecord::from_query_result(row, ""))
        .collect::<Result<_, _>>()
        .map_err(db_error)
}

/// The labels of resource `id` (which must exist, deleted or not:
/// NOT_FOUND otherwise; a deleted resource's labels stay readable, as its
/// versions do).
pub async fn list<K: Kind>(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
) -> Result<Vec<LabelRecord>, Error> {
    versioned::get_shown::<K>(db, tenant, id, versioned::Shown::WithDeleted).await?;
    labels_of::<K>(db, tenant, id).await
}

/// The labels of each of `ids`, in one query: id → label → version.
pub async fn labels_of_many<K: Kind>(
    db: &impl ConnectionTrait,
    tenant: &str,
    ids: &[&str],
) -> Result<HashMap<String, BTreeMap<String, i64>>, Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let query = Query::select()
        .columns(["resource_id", "label", "version_number"].map(Alias::new))
        .from(Alias::new(LABELS))
        .and_where(Expr::col(Alias::new("kind")).eq(K::NAMES.kind))
        .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant))
        .and_where(
            Expr::col(Alias::new("resource_id")).is_in(ids.iter().map(|id| (*id).to_owned())),
        )
        .to_owned();
    let mut labels: HashMap<String, BTreeMap<String, i64>> = HashMap::new();
    for row in read_all::<ResourceLabel>(db, &query).await? {
        labels
            .entry(row.resource_id)
            .or_default()
            .insert(row.label, row.version_number);
    }
    Ok(labels)
}

#[derive(FromQueryResult)]
struct ResourceLabel {
    resource_id: String,
    label: String,
    version_number: i64,
}

/// One page of the moves of resource `id`'s labels (or of `label`'s),
/// oldest first, after move `after`; NOT_FOUND for an unknown resource.
pub async fn history<K: Kind>(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
    label: Option<&str>,
    after: Option<i64>,
    limit: u64,
) -> Result<(Vec<MoveRecord>, Option<i64>), Error> {
    versioned::get_shown::<K>(db, tenant, id, versioned::Shown::WithDeleted).await?;
    let mut query = Query::select();
    query
        .columns(
            [
                "id",
                "label",
                "from_version",
                "to_version",
                "actor",
                "move_time",
                "reason",
            ]
            .map(Alias::new),
        )
        .from(Alias::new(MOVES))
        .and_where(resource::<K>(tenant, id))
        .order_by(Alias::new("id"), Order::Asc)
        .limit(limit + 1);
    if let Some(label) = label {
        query.and_where(Expr::col(Alias::new("label")).eq(label));
    }
    if let Some(after) = after {
        query.and_where(Expr::col(Alias::new("id")).gt(after));
    }
    let mut moves = read_all::<MoveRecord>(db, &query).await?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next = if moves.len() > limit {
        moves.truncate(limit);
        moves.last().map(|m| m.id)
    } else {
        None
    };
    Ok((moves, next))
}

/// Deletes resource `id`'s labels and their history, inside the resource's
/// purge transaction (a soft delete keeps them).
pub async fn forget<K: Kind>(
    txn: &DatabaseTransaction,
    tenant: &str,
    id: &str,
) -> Result<(), Error> {
    // The resource's purge is the change a watch sees.
    for table in [LABELS, MOVES] {
        let delete = Query::delete()
            .from_table(Alias::new(table))
            .and_where(resource::<K>(tenant, id))
            .to_owned();
        txn.execute(&delete).await.map_err(db_error)?;
    }
    Ok(())
}

/// A tenant's label policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Sorted, each once.
    pub protected_labels: Vec<String>,
    /// When and by whom it was last updated; `None` when never.
    pub updated: Option<(DateTime<Utc>, String)>,
}

#[derive(FromQueryResult)]
struct PolicyRow {
    protected_labels: Value,
    update_time: DateTime<Utc>,
    updated_by: String,
}

/// The tenant's label policy (empty when never set).
pub async fn policy(db: &impl ConnectionTrait, tenant: &str) -> Result<Policy, Error> {
    let query = Query::select()
        .columns(["protected_labels", "update_time", "updated_by"].map(Alias::new))
        .from(Alias::new(POLICIES))
        .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant))
        .to_owned();
    let Some(row) = read_all::<PolicyRow>(db, &query).await?.into_iter().next() else {
        return Ok(Policy::default());
    };
    let protected_labels = serde_json::from_value(row.protected_labels)
        .map_err(|e| Error::Internal(format!("unreadable label policy: {e}")))?;
    Ok(Policy {
        protected_labels,
        updated: Some((row.update_time, row.updated_by)),
    })
}

/// The tenant's protected labels.
async fn protected(db: &impl ConnectionTrait, tenant: &str) -> Result<Vec<String>, Error> {
    Ok(policy(db, tenant).await?.protected_labels)
}

/// Replaces the tenant's protected labels (`labels` checked, sorted and
/// each once); remembered under a request id, or only answered (a dry run:
/// the labels were checked, nothing else is).
pub async fn set_policy(
    store: &Store,
    caller: &Caller,
    labels: Vec<String>,
    how: How<'_>,
) -> Result<Policy, Error> {
    let time = now();
    if how.validate_only {
        return Ok(Policy {
            protected_labels: labels,
            updated: Some((time, caller.subject.clone())),
        });
    }
    let backend = store.get_database_backend();
    let json = Value::from(labels.clone());
    let mut insert = Query::insert();
    insert
        .into_table(Alias::new(POLICIES))
        .columns(["tenant_id", "protected_labels", "update_time", "updated_by"].map(Alias::new));
    insert
        .values([
            val(caller.tenant.clone()),
            json_val(backend, &json),
            val(time),
            val(caller.subject.clone()),
        ])
        .map_err(|e| Error::Internal(format!("label statement: {e}")))?;
    insert.on_conflict(
        OnConflict::column(Alias::new("tenant_id"))
            .update_columns(["protected_labels", "update_time", "updated_by"].map(Alias::new))
            .to_owned(),
    );
    let txn = store.begin_write().await?;
    txn.execute(&insert).await.map_err(db_error)?;
    if let Some(claim) = how.claim {
        let answer = Answer {
            resource_id: POLICIES.to_owned(),
            version_number: 0,
            answer_time: time,
            answered_by: caller.subject.clone(),
        };
        request_ids::insert(&txn, &caller.tenant, claim, &answer).await?;
    }
    let details = serde_json::json!({ "protected_labels": labels });
    let mut entry = Entry::tenant_wide(caller, AuditAction::LabelPolicyUpdate, details);
    entry.request_id = how.claim.map(|claim| claim.request_id.as_str());
    audit::record(&txn, entry).await?;
    txn.commit().await.map_err(db_error)?;
    store.audit_recorded();
    Ok(Policy {
        protected_labels: labels,
        updated: Some((time, caller.subject.clone())),
    })
}

/// Every row `query` selects, read as `T`.
async fn read_all<T: FromQueryResult>(
    db: &impl ConnectionTrait,
    query: &impl StatementBuilder,
) -> Result<Vec<T>, Error> {
    let rows = db.query_all(query).await.map_err(db_error)?;
    rows.iter()
        .map(|row| T::from_query_result(row, ""))
        .collect::<Result<_, _>>()
        .map_err(db_error)
}
