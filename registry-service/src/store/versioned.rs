//! The one store of versioned resources. Agents and providers (and any kind
//! that follows) are rows of a table with `id`, `tenant_id`, `version`,
//! `create_time`, `update_time`, `created_by` and `updated_by`, plus their
//! own columns, and a history table of snapshots keyed by
//! `(<owner>_id, version_number)`. Reading, listing, the version history,
//! creating, updating, rolling back and deleting live here, once; a kind is
//! a [`Kind`]: a strategy (as in the Kubernetes apiserver's generic store)
//! that says how its spec maps to its columns, how it diffs, what it guards
//! and what a write of it must do inside the write transaction.
//!
//! A write takes one of two paths:
//!
//! - **fast** (the kind says a write may: [`Kind::fast`]): the conditional
//!   update (or insert) and the version row go out together
//!   ([`Store::write_with_version`]): one statement on PostgreSQL, one share of a
//!   group commit on SQLite. An update starts from the record as this
//!   process last wrote it ([`Kind::recent`]) when the kind keeps one, or
//!   else from the row read once.
//! - **locked**: after losing the race, or when the kind needs reads and
//!   writes of other rows ([`Kind::prepare`], [`Kind::finish`]): a write
//!   transaction (IMMEDIATE on SQLite) that reads the row `FOR UPDATE` on
//!   PostgreSQL, up to [`MAX_WRITE_ATTEMPTS`] times.
//!
//! A write whose [`Write::claim`] is set (an AIP-155 request id) also
//! stores its `request_ids` row ([`request_ids`]) on whichever path it
//! takes, in the same statement or transaction; without one it is exactly
//! the statements above. A dry run (AIP-163: [`validate_create`],
//! [`validate_update`], [`validate_rollback`], [`delete`] and [`undelete`]
//! with `validate_only`) is the locking path in a transaction that is
//! rolled back, answering the record and the diff it would have written.

use std::future::Future;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{
    Alias, Expr, ExprTrait, InsertStatement, JoinType, Query, SelectStatement, SimpleExpr,
    UpdateStatement,
};
use sea_orm::{
    ActiveEnum, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    FromQueryResult, IdenStatic, Iterable, QueryFilter, QueryOrder, QueryResult, QuerySelect,
    QueryTrait, Related,
};
use serde_json::Value;

use super::audit::{self, Action as AuditAction, Entry};
use super::chain::Link;
use super::changes::{self, ChangeAction, NewChange, ResourceKind};
use super::labels::{self, LabelRecord};
use super::recent::{Recent, Weigh};
use super::request_ids::{self, Answer, Claim};
use super::search::{self, Search};
use super::{
    MAX_WRITE_ATTEMPTS, Page, Store, VersionRecord, db_error, insert_row, json_val, paginate,
    stale_etag, val,
};
use crate::caller::Caller;
use crate::error::Error;
use crate::model::Snapshot;
use crate::model::version::{self, Action, Change};

/// A resource as stored now.
#[derive(Debug, Clone)]
pub struct Record<S> {
    pub id: String,
    pub spec: S,
    pub version: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
    /// When it was deleted (soft delete); `None` while it is live.
    pub delete_time: Option<DateTime<Utc>>,
    /// The hash of the newest version row: the head of the resource's
    /// version chain (`None` before its first hashed version).
    pub version_hash: Option<String>,
}

/// What an update or a rollback wrote, and the resource's labels when the
/// write read them with it.
#[derive(Debug)]
pub struct Written<S> {
    pub record: Record<S>,
    /// The labels as the write's own transaction left them: read in the
    /// fast write's batch on SQLite (where that saves a read of its own
    /// after the commit); `None` on the other paths, whose caller reads
    /// them ([`labels::labels_of`]).
    pub labels: Option<Vec<LabelRecord>>,
}

impl<S> Written<S> {
    /// `record`, with no labels read.
    fn alone(record: Record<S>) -> Self {
        Self {
            record,
            labels: None,
        }
    }
}

/// Who writes a version, and why.
#[derive(Debug, Clone)]
pub struct Write<'a> {
    pub caller: &'a Caller,
    pub action: Action,
    pub description: String,
    /// The caller's request id (AIP-155), recorded on the version row and
    /// its audit event.
    pub request_id: Option<String>,
    /// The request id to remember the write under, with what a retry must
    /// match ([`request_ids`]): stored with the write, in its statement or
    /// transaction. `None`: nothing is remembered (and nothing costs more).
    pub claim: Option<Claim>,
}

impl<'a> Write<'a> {
    /// A write by `caller` without a request id.
    pub fn new(caller: &'a Caller, action: Action, description: String) -> Self {
        Self {
            caller,
            action,
            description,
            request_id: None,
            claim: None,
        }
    }

    /// The row of `request_ids` that remembers this write answering with
    /// `record`, when it is to be remembered.
    fn remembered<S>(&self, record: &Record<S>) -> Option<Vec<(Alias, SimpleExpr)>> {
        let claim = self.claim.as_ref()?;
        Some(request_ids::row(
            &self.caller.tenant,
            claim,
            &answer_of(record),
        ))
    }

    /// Remembers this write answering with `record` through `db` (a write
    /// that writes nothing else: a change that changed nothing).
    pub async fn remember<S>(
        &self,
        db: &impl ConnectionTrait,
        record: &Record<S>,
    ) -> Result<(), Error> {
        match &self.claim {
            Some(claim) => {
                request_ids::insert(db, &self.caller.tenant, claim, &answer_of(record)).await
            }
            None => Ok(()),
        }
    }
}

/// What a request id remembers of a call that answered with `record`.
fn answer_of<S>(record: &Record<S>) -> Answer {
    Answer {
        resource_id: record.id.clone(),
        version_number: record.version,
        answer_time: record.update_time,
        answered_by: record.updated_by.clone(),
    }
}

/// How a kind is named.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    /// In errors (`"agent"`).
    pub kind: &'static str,
    /// One of its versions in errors (`"agent version"`).
    pub version: &'static str,
    /// The version table's column naming the resource (`"agent_id"`).
    pub owner: &'static str,
}

impl Names {
    /// The names `kind`, `version` and `owner`.
    pub const fn new(kind: &'static str, version: &'static str, owner: &'static str) -> Self {
        Self {
            kind,
            version,
            owner,
        }
    }
}

/// What a failed write statement means.
#[derive(Debug)]
pub enum Clash {
    /// Something the kind guards moved under the write: try again.
    Retry,
    /// The caller's answer.
    Fail(Error),
}

/// A kind of versioned resource: its spec, its tables, and what its writes
/// need beyond the row and the version row.
pub trait Kind: Sync {
    /// The validated configuration a version snapshot holds.
    type Spec: Snapshot + Weigh + Clone + PartialEq + Send + Sync + 'static;
    /// The table of current rows.
    type Entity: EntityTrait<Model: Send + Sync> + Related<Self::Versions>;
    /// The table of version rows.
    type Versions: EntityTrait + Related<Self::Entity>;

    /// How errors and the version table name the kind.
    const NAMES: Names;
    /// How the change log names the kind.
    const LOGGED_AS: ResourceKind;
    /// The fields a `List` filter may name ([`search`]): each kind lists
    /// them once, from [`search::NAME`], [`search::CREATE_TIME`] and
    /// [`search::UPDATE_TIME`] and its own columns and side tables.
    const FILTER_FIELDS: &'static [search::Field];

    /// The resource's name (unique in its tenant; an `order_by` key).
    fn name(spec: &Self::Spec) -> &str;

    /// The spec stored in a row: `config` as read from its `config`
    /// column, completed from the kind's other columns (read by name, with
    /// `prefix`, as a joined select names them).
    fn read_spec(
        config: Self::Spec,
        _row: &QueryResult,
        _prefix: &str,
    ) -> Result<Self::Spec, DbErr> {
        Ok(config)
    }
    /// The changes from `old` to `new` (`new_json` is `new` as a snapshot).
    fn diff(old: &Self::Spec, _new: &Self::Spec, new_json: &Value) -> Vec<Change> {
        version::diff_bounded(&old.to_json(), new_json)
    }
    /// The kind's own columns for `spec`; `snapshot` is the bound snapshot.
    fn columns(
        spec: &Self::Spec,
        snapshot: &SimpleExpr,
        backend: DbBackend,
    ) -> Result<Vec<(&'static str, SimpleExpr)>, Error>;
    /// What a failed write of `spec` means.
    fn clash(&self, error: DbErr, spec: &Self::Spec) -> Clash;
    /// The kind's own columns of a version row of `spec` in `tenant` (each
    /// a value, or a subquery the row's insert evaluates as it writes).
    fn version_columns(_tenant: &str, _spec: &Self::Spec) -> Vec<(&'static str, SimpleExpr)> {
        Vec::new()
    }

    /// A condition on the current row that a write over `current` must
    /// still find when it commits, beyond its version number: a column
    /// that changes outside versioned writes (the rewrap job's ciphertexts)
    /// and that the new version copies from what the write read. A write
    /// that finds it changed writes nothing and is tried again.
    fn still_as_read(_current: &Self::Spec) -> Option<SimpleExpr> {
        None
    }

    /// The records this process wrote last, when the kind keeps them.
    fn recent<'s>(&self, _store: &'s Store) -> Option<&'s Recent<Self::Spec>> {
        None
    }
    /// Whether writing `new` over `current` (`None`: creating it) needs
    /// nothing but the row and the version row.
    fn fast(&self, current: Option<&Self::Spec>, new: &Self::Spec) -> bool;
    /// A condition a fast create's insert must meet (its guard), and the
    /// answer when it does not.
    fn insert_guard(&self, _tenant: &str, _spec: &Self::Spec) -> Option<(SimpleExpr, Error)> {
        None
    }
    /// Inside a locked write, before the row is written: may change the
    /// spec and the description; `false` when a race was lost (try again).
    fn prepare(
        &self,
        txn: &DatabaseTransaction,
        write: &Write<'_>,
        id: &str,
        current: Option<&Self::Spec>,
        next: &mut Self::Spec,
        description: &mut String,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Inside a locked write, after the row and its version are written
    /// (`current` is `None` for a create).
    fn finish(
        &self,
        _txn: &DatabaseTransaction,
        _write: &Write<'_>,
        _current: Option<&Record<Self::Spec>>,
        _written: &Record<Self::Spec>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }
    /// Inside the delete transaction, before the row is marked deleted:
    /// refuses a delete the kind does not allow.
    fn guard_delete(
        &self,
        _txn: &DatabaseTransaction,
        _tenant: &str,
        _id: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }
    /// Inside the undelete transaction, before the row is live again:
    /// refuses an undelete the kind does not allow (what `spec` references
    /// is gone).
    fn guard_undelete(
        _txn: &DatabaseTransaction,
        _tenant: &str,
        _spec: &Self::Spec,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }
    /// Inside the purge transaction, before the row goes: refuses a purge
    /// the kind does not allow (other rows still reference it).
    fn guard_purge(
        _txn: &DatabaseTransaction,
        _tenant: &str,
        _id: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }
}

/// A row read into a record of kind `K`.
pub struct Read<K: Kind>(pub Record<K::Spec>);

impl<K: Kind> std::fmt::Debug for Read<K>
where
    K::Spec: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Read").field(&self.0).finish()
    }
}

impl<K: Kind> FromQueryResult for Read<K> {
    fn from_query_result(row: &QueryResult, pre: &str) -> Result<Self, DbErr> {
        let config: Value = row.try_get(pre, "config")?;
        let config = K::Spec::from_json(&config).map_err(|e| DbErr::Type(e.to_string()))?;
        Ok(Self(Record {
            spec: K::read_spec(config, row, pre)?,
            id: row.try_get(pre, "id")?,
            version: row.try_get(pre, "version")?,
            create_time: row.try_get(pre, "create_time")?,
            update_time: row.try_get(pre, "update_time")?,
            created_by: row.try_get(pre, "created_by")?,
            updated_by: row.try_get(pre, "updated_by")?,
            delete_time: row.try_get(pre, "delete_time")?,
            version_hash: row.try_get(pre, "version_hash")?,
        }))
    }
}

/// A column of the kind's row table, named with its table.
pub fn col<K: Kind>(name: &'static str) -> Expr {
    Expr::col((K::Entity::default(), Alias::new(name)))
}

/// A column of the kind's version table, named with its table.
pub fn vcol<K: Kind>(name: &'static str) -> Expr {
    Expr::col((K::Versions::default(), Alias::new(name)))
}

/// `id = … AND tenant_id = …` of the kind's table.
fn scoped<K: Kind>(tenant: &str, id: &str) -> SimpleExpr {
    col::<K>("id").eq(id).and(col::<K>("tenant_id").eq(tenant))
}

/// Which resources a read finds: soft-deleted ones only when asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// Live resources only: a deleted one is NOT_FOUND.
    Live,
    /// Deleted ones too (`show_deleted`, undelete, purge, the history).
    WithDeleted,
}

impl Shown {
    /// `Live`, or `WithDeleted` when `show_deleted`.
    pub fn deleted_too(show_deleted: bool) -> Self {
        if show_deleted {
            Self::WithDeleted
        } else {
            Self::Live
        }
    }

    /// The condition on the kind's rows (none for `WithDeleted`).
    fn condition<K: Kind>(self) -> Option<SimpleExpr> {
        match self {
            Self::Live => Some(live::<K>()),
            Self::WithDeleted => None,
        }
    }
}

/// `delete_time IS NULL` of the kind's table: the row is live.
pub fn live<K: Kind>() -> SimpleExpr {
    col::<K>("delete_time").is_null()
}

/// The live resource `id` of `tenant` (a deleted one is NOT_FOUND).
pub async fn get<K: Kind>(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
) -> Result<Record<K::Spec>, Error> {
    get_shown::<K>(db, tenant, id, Shown::Live).await
}

/// The resource `id` of `tenant`, deleted too when `shown` says.
pub async fn get_shown<K: Kind>(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
    shown: Shown,
) -> Result<Record<K::Spec>, Error> {
    let query = K::Entity::find()
        .filter(scoped::<K>(tenant, id))
        .apply_if(shown.condition::<K>(), QueryFilter::filter);
    first::<K>(query, db, id).await
}

/// The live resource `id` of `tenant`, locked until `txn` ends (`FOR
/// UPDATE` on PostgreSQL; SQLite's write transaction holds the whole
/// database).
pub async fn get_locked<K: Kind>(
    txn: &DatabaseTransaction,
    tenant: &str,
    id: &str,
) -> Result<Record<K::Spec>, Error> {
    get_locked_shown::<K>(txn, tenant, id, Shown::Live).await
}

/// [`get_locked`], deleted too when `shown` says.
async fn get_locked_shown<K: Kind>(
    txn: &DatabaseTransaction,
    tenant: &str,
    id: &str,
    shown: Shown,
) -> Result<Record<K::Spec>, Error> {
    let query = K::Entity::find()
        .filter(scoped::<K>(tenant, id))
        .apply_if(shown.condition::<K>(), QueryFilter::filter)
        .lock_exclusive();
    first::<K>(query, txn, id).await
}

/// The first record `query` finds, or NOT_FOUND. `all`, not `one`: see
/// the module documentation of [`super`] (a bound `LIMIT` re-prepares).
async fn first<K: Kind>(
    query: sea_orm::Select<K::Entity>,
    db: &impl ConnectionTrait,
    id: &str,
) -> Result<Record<K::Spec>, Error> {
    let rows = query
        .into_model::<Read<K>>()
        .all(db)
        .await
        .map_err(db_error)?;
    rows.into_iter()
        .next()
        .map(|read| read.0)
        .ok_or_else(|| not_found::<K>(id))
}

/// One page of the tenant's resources that `search` selects (deleted ones
/// only when `shown` says: a filter cannot bring them back), in its order
/// (oldest first by default), after the cursor `after`.
///
/// The unfiltered listing walks one index in its order, which the `LIMIT`
/// ends, and counts up to [`COUNTED_ROWS`]. A filtered page reads its
/// matches' ids first ([`keys_first`]) and is bounded by the store's
/// [`search::ListScan`]: when its query runs out of budget, the page is
/// read from a window
/// ([`list_window`]); when its count does, `total_size` is the page's own
/// matches (read as "at least", like a count that reached
/// [`COUNTED_MATCHES`]).
pub async fn list<K: Kind>(
    db: &Store,
    tenant: &str,
    (search, shown): (&Search, Shown),
    after: Option<String>,
    limit: u64,
) -> Result<Page<Record<K::Spec>>, Error> {
    let listed = K::Entity::find()
        .filter(col::<K>("tenant_id").eq(tenant))
        .apply_if(shown.condition::<K>(), QueryFilter::filter);
    let conditions = search.conditions::<K>(db).await?;
    let scope = listed.clone().apply_if(
        conditions.as_ref().map(|c| c.page.clone()),
        QueryFilter::filter,
    );
    let page = in_order_after::<K>(scope.clone(), search, after.as_deref())?;
    let page = match conditions {
        None => page.limit(limit + 1).into_query(),
        Some(_) => keys_first::<K>(page, search, limit + 1)?,
    };
    let statement = db.get_database_backend().build(&page);
    let scan = db.list_scan();
    let rows = match conditions {
        None => db.query_all_raw(statement).await.map_err(db_error)?,
        Some(conditions) => match db
            .query_within(statement, scan.steps)
            .await
            .map_err(db_error)?
        {
            Some(rows) => rows,
            None => {
                let window = Window {
                    listed,
                    condition: conditions.window,
                    rows: search.window_rows(scan.window),
                };
                return list_window::<K>(db, search, window, after, limit).await;
            }
        },
    };
    let records = records_of::<K>(rows)?;
    // A first page that is not full holds every match: counting them again
    // would walk the same rows a second time (a filter that matches
    // nothing walks every candidate).
    let found = u64::try_from(records.len()).unwrap_or(u64::MAX);
    let total = if after.is_none() && found <= limit {
        found
    } else if search.is_filtered() {
        count_up_to(db, &scope, COUNTED_MATCHES, scan.steps)
            .await?
            .unwrap_or(Ord::min(found, limit))
    } else {
        // No step budget: the cap bounds the walk of the tenant's index.
        count_up_to(db, &scope, COUNTED_ROWS, super::UNBOUNDED)
            .await?
            .unwrap_or(COUNTED_ROWS)
    };
    let total = i64::try_from(total).unwrap_or(i64::MAX);
    Ok(paginate(records, limit, |r| search.cursor::<K>(r), total))
}

/// The first `rows` rows of `page` (in order), their ids found and sorted
/// first, then only those rows read: `SELECT … WHERE id IN (SELECT id …
/// ORDER BY … LIMIT rows) ORDER BY …`. A filtered page whose matches come
/// from a side table sorts them (SQLite keeps the best `rows` in a
/// temporary b-tree): sorting their keys instead of their whole rows (an
/// agent's is ~700 bytes) cut SQLite's time for the bench's `label AND
/// tool` page by 28–55 % and the registry's CPU per call by 15–24 %
/// (BENCHMARKS.md); a page that walks an index in order reads its rows
/// once more by id.
fn keys_first<K: Kind>(
    page: sea_orm::Select<K::Entity>,
    search: &Search,
    rows: u64,
) -> Result<SelectStatement, Error> {
    let ids = page
        .select_only()
        .column_as(col::<K>("id"), "id")
        .limit(rows)
        .into_query();
    let read = K::Entity::find().filter(col::<K>("id").in_subquery(ids));
    Ok(in_order_after::<K>(read, search, None)?.into_query())
}

/// `select` in `search`'s order, strictly after the cursor `after`.
fn in_order_after<K: Kind>(
    mut select: sea_orm::Select<K::Entity>,
    search: &Search,
    after: Option<&str>,
) -> Result<sea_orm::Select<K::Entity>, Error> {
    for (term, direction) in search.order_terms::<K>() {
        select = select.order_by(term, direction);
    }
    if let Some(after) = after {
        select = select.filter(search.after::<K>(after)?);
    }
    Ok(select)
}

/// The rows a filtered page read from a window tests.
struct Window<E: EntityTrait> {
    /// The tenant's rows the listing shows (live, or deleted too).
    listed: sea_orm::Select<E>,
    /// The filter's condition, as a window tests it.
    condition: SimpleExpr,
    /// How many rows, in the listing's order, the window holds.
    rows: u64,
}

/// A filtered page read from a window: the next `window.rows` listed rows
/// after `after`, in order (a walk of the order's index that the `LIMIT`
/// ends), then those of them the filter selects, up to `limit` — each a
/// lookup by id, never a walk of the tenant. When they fill the page it
/// continues after its last row, as any page; when they do not and the
/// window was full, after the window's last row (a short page, or an
/// empty one, with a next page); else the listing ends here.
/// `total_size` is this page's matches: counting every match is what the
/// budget ran out on.
async fn list_window<K: Kind>(
    db: &Store,
    search: &Search,
    window: Window<K::Entity>,
    after: Option<String>,
    limit: u64,
) -> Result<Page<Record<K::Spec>>, Error> {
    let ahead = in_order_after::<K>(window.listed, search, after.as_deref())?;
    // SELECT <the kind's columns> FROM (<the window's ids>) AS window
    // CROSS JOIN <table> WHERE <table>.id = window.id AND <filter>: SQLite
    // keeps a CROSS JOIN's order, so the window drives the lookups.
    let window_alias = Alias::new("scan_window");
    let window_id = "window_id";
    let ids = ahead
        .clone()
        .select_only()
        .column_as(col::<K>("id"), window_id)
        .limit(window.rows)
        .into_query();
    let page = K::Entity::find()
        .filter(Expr::col((window_alias.clone(), Alias::new(window_id))).eq(col::<K>("id")))
        .filter(window.condition);
    // The window is after the cursor already.
    let page = in_order_after::<K>(page, search, None)?;
    let mut statement = page.limit(limit + 1).into_query();
    statement
        .from_clear()
        .from_subquery(ids, window_alias)
        .join(
            JoinType::CrossJoin,
            K::Entity::default(),
            sea_orm::Condition::all(),
        );
    let rows = db
        .query_all_raw(db.get_database_backend().build(&statement))
        .await
        .map_err(db_error)?;
    let records = records_of::<K>(rows)?;
    let found = u64::try_from(records.len()).unwrap_or(u64::MAX);
    let total = i64::try_from(Ord::min(found, limit)).unwrap_or(i64::MAX);
    if found > limit {
        return Ok(paginate(records, limit, |r| search.cursor::<K>(r), total));
    }
    let last_of_window = ahead
        .offset(window.rows.saturating_sub(1))
        .limit(1)
        .into_model::<Read<K>>()
        .all(db)
        .await
        .map_err(db_error)?;
    Ok(Page {
        items: records,
        next_after: last_of_window
            .first()
            .map(|read| search.cursor::<K>(&read.0)),
        total,
    })
}

/// Records from rows of the kind's full select.
fn records_of<K: Kind>(rows: Vec<QueryResult>) -> Result<Vec<Record<K::Spec>>, Error> {
    rows.iter()
        .map(|row| Read::<K>::from_query_result(row, "").map(|read| read.0))
        .collect::<Result<_, _>>()
        .map_err(db_error)
}

/// A filtered listing's `total_size` counts at most this many matches: a
/// count walks every match, testing the filter on each, and with 10,000 the
/// first page of `NOT tool:"search"` over 100,000 agents (half match) took
/// 16 ms, most of it counting (`bench filter`, BENCHMARKS.md).
pub const COUNTED_MATCHES: u64 = 1_000;

/// An unfiltered listing's `total_size` counts at most this many rows, so
/// that a tenant's size does not set what a page costs: the count walks
/// one index entry per row, and all 100,000 of the bench's agents took
/// 4.8–6.1 ms of SQLite's time, most of an unfiltered page's 5–8 ms;
/// 10,000 take 0.45–0.7 ms (BENCHMARKS.md).
pub const COUNTED_ROWS: u64 = 10_000;

/// The rows `scope` selects, counted up to `most` within `steps` of
/// SQLite's instructions (`None`: the count ran out of them).
async fn count_up_to<E: EntityTrait>(
    db: &Store,
    scope: &sea_orm::Select<E>,
    most: u64,
    steps: u64,
) -> Result<Option<u64>, Error> {
    let matches = scope
        .clone()
        .select_only()
        .expr(Expr::val(1))
        .limit(most)
        .into_query();
    let count = Query::select()
        .expr_as(Expr::cust("COUNT(*)"), Alias::new("matches"))
        .from_subquery(matches, Alias::new("matched"))
        .to_owned();
    let Some(rows) = db
        .query_within(db.get_database_backend().build(&count), steps)
        .await
        .map_err(db_error)?
    else {
        return Ok(None);
    };
    let counted: i64 = match rows.first() {
        Some(row) => row.try_get("", "matches").map_err(db_error)?,
        None => 0,
    };
    Ok(Some(u64::try_from(counted).unwrap_or(0)))
}

/// The version columns every version table has, as a select reads them.
const VERSION_COLUMNS: [&str; 7] = [
    "version_number",
    "action",
    "configuration",
    "diff",
    "change_description",
    "changed_by",
    "create_time",
];

/// A select of version rows of `id` in `tenant`, with the resource's
/// current version. The versions are looked up by the id the resource
/// row of `tenant` answers (`<owner> = (SELECT id FROM <table> WHERE id =
/// … AND tenant_id = …)`, evaluated once): another tenant's id finds no
/// row there, so its history is never read. With only the join's tenant
/// test, PostgreSQL walked the version index of the id given and tested
/// each row: a caller naming another tenant's resource of 200,000
/// versions cost 43–61 ms for its NOT_FOUND (BENCHMARKS.md, "Another
/// tenant's history"); SQLite's plan left it to the planner.
fn versions_of<K: Kind>(tenant: &str, id: &str) -> sea_orm::Select<K::Versions> {
    let mut query = K::Versions::find().select_only();
    for name in VERSION_COLUMNS {
        query = query.column_as(vcol::<K>(name), name);
    }
    let owned = Query::select()
        .column((K::Entity::default(), Alias::new("id")))
        .from(K::Entity::default())
        .and_where(scoped::<K>(tenant, id))
        .to_owned();
    query
        .column_as(col::<K>("version"), "current_version")
        .column_as(col::<K>("create_time"), "resource_create_time")
        .column_as(col::<K>("created_by"), "resource_created_by")
        .inner_join(K::Entity::default())
        .filter(vcol::<K>(K::NAMES.owner).eq(SimpleExpr::SubQuery(None, Box::new(owned.into()))))
        .filter(col::<K>("tenant_id").eq(tenant))
}

/// One page of a resource's versions, newest first, in one query.
pub async fn list_versions<K: Kind>(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
    before: Option<i64>,
    limit: u64,
) -> Result<Page<VersionRecord>, Error> {
    let mut query = versions_of::<K>(tenant, id)
        .order_by_desc(vcol::<K>("version_number"))
        .limit(limit + 1);
    if let Some(before) = before {
        query = query.filter(vcol::<K>("version_number").lt(before));
    }
    let rows = query
        .into_model::<VersionRow>()
        .all(db)
        .await
        .map_err(db_error)?;
    // Versions are contiguous from 1, so the current version is the count.
    let total = match rows.first() {
        Some(row) => row.current_version,
        // No rows: an unknown resource, or a page past the oldest version.
        None => {
            get_shown::<K>(db, tenant, id, Shown::WithDeleted)
                .await?
                .version
        }
    };
    let records = rows.into_iter().map(VersionRow::into_record).collect();
    Ok(paginate(
        records,
        limit,
        |r| r.version_number.to_string(),
        total,
    ))
}

/// Version `number` of resource `id`.
pub async fn get_version<K: Kind>(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
    number: i64,
) -> Result<VersionRecord, Error> {
    let row = versions_of::<K>(tenant, id)
        .filter(vcol::<K>("version_number").eq(number))
        .into_model::<VersionRow>()
        .all(db)
        .await
        .map_err(db_error)?
        .into_iter()
        .next();
    match row {
        Some(row) => Ok(row.into_record()),
        None => {
            // Tell a missing resource from a missing version (a deleted
            // resource's history stays readable).
            get_shown::<K>(db, tenant, id, Shown::WithDeleted).await?;
            Err(Error::NotFound {
                kind: K::NAMES.version,
                id: format!("{id}@{number}"),
            })
        }
    }
}

/// The live resource `id` of `tenant` and its version `number`, in one query
/// (the resource's columns ride along, prefixed, with the version's).
async fn get_with_version<K: Kind>(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
    number: i64,
) -> Result<(Record<K::Spec>, VersionRecord), Error> {
    let mut query = versions_of::<K>(tenant, id)
        .filter(vcol::<K>("version_number").eq(number))
        .filter(live::<K>());
    for column in <K::Entity as EntityTrait>::Column::iter() {
        let name = column.as_str();
        query = query.column_as(col::<K>(name), format!("{RESOURCE}{name}"));
    }
    let found = query
        .into_model::<WithVersion<K>>()
        .all(db)
        .await
        .map_err(db_error)?
        .into_iter()
        .next();
    match found {
        Some(WithVersion(current, version)) => Ok((current, version)),
        // No such resource or no such version: the lookups tell which.
        None => {
            let version = get_version::<K>(db, tenant, id, number).await?;
            Ok((get::<K>(db, tenant, id).await?, version))
        }
    }
}

/// The prefix of the resource's columns in [`get_with_version`].
const RESOURCE: &str = "resource_row_";

/// A resource and one of its versions, read together.
struct WithVersion<K: Kind>(Record<K::Spec>, VersionRecord);

impl<K: Kind> FromQueryResult for WithVersion<K> {
    fn from_query_result(row: &QueryResult, pre: &str) -> Result<Self, DbErr> {
        let Read(current) = Read::<K>::from_query_result(row, RESOURCE)?;
        let version = VersionRow::from_query_result(row, pre)?.into_record();
        Ok(Self(current, version))
    }
}

/// A version row with its resource's current version.
#[derive(Debug, FromQueryResult)]
struct VersionRow {
    version_number: i64,
    action: Action,
    configuration: Value,
    diff: Value,
    change_description: String,
    changed_by: String,
    create_time: DateTime<Utc>,
    current_version: i64,
    resource_create_time: DateTime<Utc>,
    resource_created_by: String,
}

impl VersionRow {
    fn into_record(self) -> VersionRecord {
        VersionRecord {
            version_number: self.version_number,
            action: self.action,
            diff: version::changes_from_json(&self.diff),
            configuration: self.configuration,
            change_description: self.change_description,
            changed_by: self.changed_by,
            create_time: self.create_time,
            resource_create_time: self.resource_create_time,
            resource_created_by: self.resource_created_by,
        }
    }
}

/// Creates resource `id` (the caller names it: a provider's key is bound
/// to its id before it is stored) and its version 1.
pub async fn create<K: Kind>(
    store: &Store,
    kind: &K,
    write: Write<'_>,
    id: String,
    spec: K::Spec,
) -> Result<Record<K::Spec>, Error> {
    let base = Base::New(&id);
    let tenant = &write.caller.tenant;
    let written = if kind.fast(None, &spec) {
        write_fast(store, kind, &write, base, spec)
            .await
            .and_then(|written| written.map(|w| w.record).ok_or_else(contended::<K>))
    } else {
        create_locked(store, kind, &write, base, spec).await
    };
    let record = match written {
        Ok(record) => record,
        Err(error) => return Err(explain_name_clash::<K>(store, tenant, error).await),
    };
    if let Some(recent) = kind.recent(store) {
        recent.remember(&write.caller.tenant, &record);
    }
    store.committed(&write.caller.tenant);
    Ok(record)
}

async fn create_locked<K: Kind>(
    store: &Store,
    kind: &K,
    write: &Write<'_>,
    base: Base<'_, K::Spec>,
    spec: K::Spec,
) -> Result<Record<K::Spec>, Error> {
    for _ in 0..MAX_WRITE_ATTEMPTS {
        let txn = store.begin_write().await?;
        if let Some(record) = write_locked(&txn, kind, write, base, spec.clone()).await? {
            txn.commit().await.map_err(db_error)?;
            return Ok(record);
        }
    }
    Err(contended::<K>())
}

/// What a write starts from.
#[derive(Debug)]
pub enum Base<'a, S> {
    /// Nothing: it creates resource `id`.
    New(&'a str),
    /// The current record.
    Current(&'a Record<S>),
}

impl<S> Clone for Base<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Base<'_, S> {}

impl<'a, S> Base<'a, S> {
    fn current(self) -> Option<&'a Record<S>> {
        match self {
            Self::New(_) => None,
            Self::Current(current) => Some(current),
        }
    }
}

/// What an update or rollback writes.
enum Target<'f, S> {
    /// The spec `change` makes of the current record.
    Change(&'f (dyn Fn(&Record<S>) -> Result<S, Error> + Sync)),
    /// The snapshot of this version.
    Version(i64),
}

impl<S: Snapshot> Target<'_, S> {
    /// The spec to write over `current` (a snapshot is read through `db`).
    async fn spec<K: Kind<Spec = S>>(
        &self,
        db: &impl ConnectionTrait,
        tenant: &str,
        current: &Record<S>,
    ) -> Result<S, Error> {
        match self {
            Self::Change(change) => change(current),
            Self::Version(number) => {
                let snapshot = get_version::<K>(db, tenant, &current.id, *number).await?;
                S::from_json(&snapshot.configuration)
            }
        }
    }
}

/// Changes resource `id` with `change`, appending a version unless nothing
/// changed; a stale etag (`expected_version`) answers ABORTED. The first
/// attempt starts from the record as this process last wrote it (when the
/// kind keeps them), or else reads the row; the fast path writes the change
/// and its version together. After losing that race, or when the kind's
/// write needs more ([`Kind::fast`]), the locking path reads the row
/// inside the write transaction, so concurrent writers queue instead of
/// failing.
pub async fn update<K: Kind>(
    store: &Store,
    kind: &K,
    write: Write<'_>,
    id: &str,
    expected_version: Option<i64>,
    change: impl Fn(&Record<K::Spec>) -> Result<K::Spec, Error> + Sync,
) -> Result<Written<K::Spec>, Error> {
    let target = Target::Change(&change);
    let written = write_version(store, kind, &write, id, expected_version, target).await;
    store.committed(&write.caller.tenant);
    match written {
        Err(error) => Err(explain_name_clash::<K>(store, &write.caller.tenant, error).await),
        written => written,
    }
}

/// Rolls resource `id` back to its version `number`: a new version whose
/// configuration is that snapshot, written like [`update`].
pub async fn rollback<K: Kind>(
    store: &Store,
    kind: &K,
    write: Write<'_>,
    id: &str,
    number: i64,
    expected_version: Option<i64>,
) -> Result<Written<K::Spec>, Error> {
    let target = Target::Version(number);
    let written = write_version(store, kind, &write, id, expected_version, target).await;
    store.committed(&write.caller.tenant);
    match written {
        Err(error) => Err(explain_name_clash::<K>(store, &write.caller.tenant, error).await),
        written => written,
    }
}

/// A name clash, explained: when the resource holding the name is a
/// deleted one, the answer says so (and how to free the name). Only on the
/// error path: a write that succeeds reads nothing more.
async fn explain_name_clash<K: Kind>(store: &Store, tenant: &str, error: Error) -> Error {
    let Error::AlreadyExists { kind, name } = error else {
        return error;
    };
    let holder = K::Entity::find()
        .select_only()
        .column_as(col::<K>("id"), "id")
        .filter(col::<K>("tenant_id").eq(tenant))
        .filter(col::<K>("name").eq(name.as_str()))
        .filter(col::<K>("delete_time").is_not_null())
        .into_tuple::<String>()
        .all(store)
        .await;
    match holder.map(|ids| ids.into_iter().next()) {
        Ok(Some(id)) => Error::NameHeldByDeleted { kind, name, id },
        // Held by a live resource, or the lookup failed: the plain answer.
        _ => Error::AlreadyExists { kind, name },
    }
}

async fn write_version<K: Kind>(
    store: &Store,
    kind: &K,
    write: &Write<'_>,
    id: &str,
    expected_version: Option<i64>,
    target: Target<'_, K::Spec>,
) -> Result<Written<K::Spec>, Error> {
    let tenant = &write.caller.tenant;
    let Some(recent) = kind.recent(store) else {
        return from_the_row(store, kind, write, id, expected_version, &target).await;
    };
    let guess = recent.get(tenant, id);
    if let Some(guess) = &guess
        && expected_version.is_none_or(|expected| expected == guess.version)
    {
        // A change the guess cannot decide (invalid, or no change) is
        // decided against the row; a missing snapshot is the answer.
        let spec = match target.spec::<K>(store, tenant, guess).await {
            Ok(spec) => Some(spec).filter(|s| *s != guess.spec || write.action != Action::Update),
            Err(_) if matches!(target, Target::Change(_)) => None,
            Err(error) => {
                recent.forget_if_gone(tenant, id, &error);
                return Err(error);
            }
        };
        let base = Base::Current(&**guess);
        if let Some(spec) = spec
            && let Some(written) = write_fast(store, kind, write, base, spec).await?
        {
            recent.written_from_guess(tenant, &written.record);
            return Ok(written);
        }
    }
    recent.reading_the_row(guess.is_some());
    let outcome = from_the_row(store, kind, write, id, expected_version, &target).await;
    recent.settle(tenant, id, outcome)
}

/// [`update`] or [`rollback`] from the row as read now.
async fn from_the_row<K: Kind>(
    store: &Store,
    kind: &K,
    write: &Write<'_>,
    id: &str,
    expected_version: Option<i64>,
    target: &Target<'_, K::Spec>,
) -> Result<Written<K::Spec>, Error> {
    let tenant = &write.caller.tenant;
    let (current, spec) = match target {
        Target::Change(change) => {
            let current = get::<K>(store, tenant, id).await?;
            check_etag::<K>(expected_version, &current)?;
            let spec = change(&current)?;
            (current, spec)
        }
        Target::Version(number) => {
            let (current, snapshot) = get_with_version::<K>(store, tenant, id, *number).await?;
            check_etag::<K>(expected_version, &current)?;
            (current, K::Spec::from_json(&snapshot.configuration)?)
        }
    };
    if spec == current.spec && write.action == Action::Update {
        write.remember(store, &current).await?;
        return Ok(Written::alone(current));
    }
    if let Some(written) = write_fast(store, kind, write, Base::Current(&current), spec).await? {
        return Ok(written);
    }
    for _ in 0..MAX_WRITE_ATTEMPTS {
        let txn = store.begin_write().await?;
        let current = get_locked::<K>(&txn, tenant, id).await?;
        check_etag::<K>(expected_version, &current)?;
        let spec = target.spec::<K>(&txn, tenant, &current).await?;
        if spec == current.spec && write.action == Action::Update {
            if write.claim.is_some() {
                write.remember(&txn, &current).await?;
                txn.commit().await.map_err(db_error)?;
            }
            return Ok(Written::alone(current));
        }
        let base = Base::Current(&current);
        if let Some(record) = write_locked(&txn, kind, write, base, spec).await? {
            txn.commit().await.map_err(db_error)?;
            return Ok(Written::alone(record));
        }
    }
    Err(contended::<K>())
}

/// ABORTED when the caller's etag names another version than the current.
fn check_etag<K: Kind>(expected: Option<i64>, current: &Record<K::Spec>) -> Result<(), Error> {
    match expected {
        Some(expected) if expected != current.version => {
            Err(stale_etag(K::NAMES.kind, current.version))
        }
        _ => Ok(()),
    }
}

/// The row (a conditional bump, or an insert meeting the kind's guard) and
/// its version row, written together without a read in the transaction
/// ([`Store::write_with_version`]); a bump also reads the resource's labels
/// with it where that is free (see [`Written::labels`]; a create answers
/// without labels). `None` when another writer took the version first, or
/// the kind's write needs the locking path.
async fn write_fast<K: Kind>(
    store: &Store,
    kind: &K,
    write: &Write<'_>,
    base: Base<'_, K::Spec>,
    spec: K::Spec,
) -> Result<Option<Written<K::Spec>>, Error> {
    if !kind.fast(base.current().map(|c| &c.spec), &spec) {
        return Ok(None);
    }
    let next = Next::<K>::new(base, write, spec, store.get_database_backend())?;
    let versions = K::Versions::default();
    let remembered = write.remembered(&next.record);
    let (written, refused) = match base {
        Base::New(_) => {
            let (insert, refused) = next.insert(kind, write)?;
            let version_row = next.version_row(write);
            let written = store.write_with_version(insert, versions, version_row, remembered, None);
            (written.await, refused)
        }
        Base::Current(current) => {
            let mut bump = next.bump(write, current);
            // A deleted row is written only by undelete (and purge).
            bump.and_where(live::<K>());
            bump.returning_col(Alias::new("id"));
            let version_row = next.version_row(write);
            let labels = labels::labels_query::<K>(&write.caller.tenant, &current.id);
            let written =
                store.write_with_version(bump, versions, version_row, remembered, Some(labels));
            (written.await, None)
        }
    };
    match (written, refused) {
        (Ok((true, rows)), _) => Ok(Some(Written {
            record: next.record,
            labels: rows.map(|rows| labels::from_rows(&rows)).transpose()?,
        })),
        (Ok((false, _)), Some(refused)) => Err(refused),
        (Ok((false, _)), None) => Ok(None),
        (Err(error), _) if request_ids::is_taken(&error) => Err(Error::RequestInProgress),
        (Err(error), _) => match kind.clash(error, &next.record.spec) {
            Clash::Retry => Ok(None),
            Clash::Fail(error) => Err(error),
        },
    }
}

/// Writes `spec` over `base` (as version 1 or the next) inside `txn`, with
/// the kind's [`Kind::prepare`] before and [`Kind::finish`] after the row
/// (and before its version row, the transaction's last write); `None`
/// when another writer took that number first or the kind lost a race.
pub async fn write_locked<K: Kind>(
    txn: &DatabaseTransaction,
    kind: &K,
    write: &Write<'_>,
    base: Base<'_, K::Spec>,
    spec: K::Spec,
) -> Result<Option<Record<K::Spec>>, Error> {
    let written = write_locked_with_diff(txn, kind, write, base, spec).await?;
    Ok(written.map(|validated| validated.record))
}

/// [`write_locked`], answering the changes the version row records too.
pub async fn write_locked_with_diff<K: Kind>(
    txn: &DatabaseTransaction,
    kind: &K,
    write: &Write<'_>,
    base: Base<'_, K::Spec>,
    mut spec: K::Spec,
) -> Result<Option<Validated<K::Spec>>, Error> {
    let mut description = write.description.clone();
    let (id, current) = match base {
        Base::New(id) => (id, None),
        Base::Current(current) => (current.id.as_str(), Some(&current.spec)),
    };
    let prepared = kind.prepare(txn, write, id, current, &mut spec, &mut description);
    if !prepared.await? {
        return Ok(None);
    }
    let write = &Write {
        description,
        request_id: write.request_id.clone(),
        claim: write.claim.clone(),
        ..*write
    };
    let next = Next::<K>::new(base, write, spec, txn.get_database_backend())?;
    let written = match base {
        Base::New(_) => insert_row(txn, K::Entity::default(), next.row(write))
            .await
            .map(|()| 1),
        Base::Current(current) => txn
            .execute(next.bump(write, current).and_where(live::<K>()))
            .await
            .map(|done| done.rows_affected()),
    };
    match written {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(error) if request_ids::is_taken(&error) => return Err(Error::RequestInProgress),
        Err(error) => {
            return match kind.clash(error, &next.record.spec) {
                Clash::Retry => Ok(None),
                Clash::Fail(error) => Err(error),
            };
        }
    }
    kind.finish(txn, write, base.current(), &next.record)
        .await?;
    // Before the version row: its key may wait for another call's
    // transaction, which must not find this one holding the revision lock.
    write.remember(txn, &next.record).await?;
    // Last: the version row's trigger bumps the tenant's change-log
    // revision, whose lock no writer may hold while waiting for another.
    insert_row(txn, K::Versions::default(), next.version_row(write))
        .await
        .map_err(db_error)?;
    Ok(Some(Validated {
        record: next.record,
        diff: next.changes,
    }))
}

/// Deletes resource `id` (soft delete, AIP-164), when the kind allows: a
/// DELETE version (configuration unchanged, empty diff) marks its row
/// deleted. Its history, labels and label history stay, and its name stays
/// taken, until it is undeleted ([`undelete`]) or purged ([`purge`]). A
/// resource already deleted is NOT_FOUND. `write.action` is
/// [`Action::Delete`]. With `validate_only` it runs every check and
/// writes nothing (AIP-163).
pub async fn delete<K: Kind>(
    store: &Store,
    kind: &K,
    write: Write<'_>,
    id: &str,
    expected_version: Option<i64>,
    validate_only: bool,
) -> Result<Record<K::Spec>, Error> {
    debug_assert_eq!(write.action, Action::Delete);
    mark::<K>(store, kind, write, id, expected_version, validate_only).await
}

/// Restores deleted resource `id` as it was: an UNDELETE version
/// (configuration unchanged, empty diff) makes its row live again. A
/// resource that is not deleted: FAILED_PRECONDITION `NOT_DELETED`.
/// `write.action` is [`Action::Undelete`]. With `validate_only` it runs
/// every check and writes nothing (AIP-163).
pub async fn undelete<K: Kind>(
    store: &Store,
    kind: &K,
    write: Write<'_>,
    id: &str,
    expected_version: Option<i64>,
    validate_only: bool,
) -> Result<Record<K::Spec>, Error> {
    debug_assert_eq!(write.action, Action::Undelete);
    mark::<K>(store, kind, write, id, expected_version, validate_only).await
}

/// Writes the DELETE or UNDELETE version of `id` (`write.action`) and sets
/// or clears its row's `delete_time`, in one locking transaction; the
/// version row's trigger logs the change. A dry run rolls the transaction
/// back after every write, so every check (the kind's guards, the
/// database's constraints) has run.
async fn mark<K: Kind>(
    store: &Store,
    kind: &K,
    write: Write<'_>,
    id: &str,
    expected_version: Option<i64>,
    validate_only: bool,
) -> Result<Record<K::Spec>, Error> {
    let tenant = &write.caller.tenant;
    let deleting = write.action == Action::Delete;
    let txn = store.begin_write().await?;
    let current = get_locked_shown::<K>(&txn, tenant, id, Shown::WithDeleted).await?;
    match (deleting, current.delete_time) {
        (true, Some(_)) => return Err(not_found::<K>(id)),
        (false, None) => {
            return Err(Error::precondition(
                "NOT_DELETED",
                format!("{} {id:?} is not deleted", K::NAMES.kind),
            ));
        }
        _ => {}
    }
    check_etag::<K>(expected_version, &current)?;
    if deleting {
        kind.guard_delete(&txn, tenant, id).await?;
    } else {
        K::guard_undelete(&txn, tenant, &current.spec).await?;
    }
    let backend = txn.get_database_backend();
    let base = Base::Current(&current);
    let mut next = Next::<K>::new(base, &write, current.spec.clone(), backend)?;
    next.record.delete_time = deleting.then_some(next.record.update_time);
    let mut bump = next.bump(&write, &current);
    bump.value(Alias::new("delete_time"), val(next.record.delete_time));
    let bumped = txn.execute(&bump).await.map_err(db_error)?;
    if bumped.rows_affected() == 0 {
        // The row is locked (or, on SQLite, the database): not expected.
        return Err(contended::<K>());
    }
    // Before the version row, as in every locked write.
    if !validate_only {
        write.remember(&txn, &next.record).await?;
    }
    // Last: the version row's trigger takes the change log's lock.
    insert_row(&txn, K::Versions::default(), next.version_row(&write))
        .await
        .map_err(db_error)?;
    if validate_only {
        txn.rollback().await.map_err(db_error)?;
        return Ok(next.record);
    }
    txn.commit().await.map_err(db_error)?;
    if let Some(recent) = kind.recent(store) {
        recent.forget(tenant, id);
    }
    store.committed(tenant);
    Ok(next.record)
}

/// Who purges a resource: an admin's Purge call, or the retention task.
#[derive(Debug, Clone, Copy)]
pub enum Purger<'a> {
    /// A tenant admin, at once.
    Admin(&'a Caller),
    /// The retention task: only a resource deleted at `deleted_before` or
    /// earlier.
    Retention { deleted_before: DateTime<Utc> },
}

impl Purger<'_> {
    /// The subject the change log (and the audit trail) names.
    pub fn subject(&self) -> &str {
        match self {
            Self::Admin(caller) => &caller.subject,
            Self::Retention { .. } => RETENTION_SUBJECT,
        }
    }
}

/// How the change log names the retention task as the author of a purge.
pub const RETENTION_SUBJECT: &str = "retention";

/// Removes deleted resource `id` of `tenant` for good, inside `txn`: its
/// row, its versions (by the foreign key's cascade), its labels and label
/// history, and records the purge in the change log (last, as every
/// writer). Every purge goes through here, whoever asks (`by`).
///
/// Answers the purged resource's last version, or `None` when there was
/// nothing to purge for the retention task (the resource is live again,
/// deleted too recently, or already purged by another replica: the delete
/// is conditional, so replicas running the task at once purge each
/// resource once). For an admin, a resource that is not deleted is
/// FAILED_PRECONDITION `NOT_DELETED`, and one that does not exist
/// NOT_FOUND. The kind may refuse ([`Kind::guard_purge`]). An admin's
/// purge sent with a request id is remembered under `claim`, before the
/// change log's lock like every write.
pub async fn purge<K: Kind>(
    txn: &DatabaseTransaction,
    tenant: &str,
    id: &str,
    by: Purger<'_>,
    claim: Option<&Claim>,
) -> Result<Option<i64>, Error> {
    let current = match get_locked_shown::<K>(txn, tenant, id, Shown::WithDeleted).await {
        Ok(current) => current,
        Err(Error::NotFound { .. }) if matches!(by, Purger::Retention { .. }) => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut condition = scoped::<K>(tenant, id).and(col::<K>("delete_time").is_not_null());
    match (by, current.delete_time) {
        (Purger::Admin(_), None) => {
            return Err(Error::precondition(
                "NOT_DELETED",
                format!(
                    "{} {id:?} is not deleted: delete it before purging it",
                    K::NAMES.kind
                ),
            ));
        }
        (Purger::Retention { deleted_before }, Some(deleted)) if deleted <= deleted_before => {
            condition = condition.and(col::<K>("delete_time").lte(deleted_before));
        }
        (Purger::Retention { .. }, _) => return Ok(None),
        (Purger::Admin(_), Some(_)) => {}
    }
    K::guard_purge(txn, tenant, id).await?;
    let removed = K::Entity::delete_many()
        .filter(condition)
        .exec(txn)
        .await
        .map_err(db_error)?;
    if removed.rows_affected == 0 {
        return Ok(None);
    }
    super::labels::forget::<K>(txn, tenant, id).await?;
    if let Some(claim) = claim {
        let answer = Answer {
            resource_id: id.to_owned(),
            version_number: current.version,
            answer_time: super::now(),
            answered_by: by.subject().to_owned(),
        };
        request_ids::insert(txn, tenant, claim, &answer).await?;
    }
    let entry = Entry {
        tenant,
        actor: by.subject(),
        action: AuditAction::Purge,
        kind: K::NAMES.kind,
        resource_id: id,
        request_id: claim.map(|claim| claim.request_id.as_str()),
        details: serde_json::json!({ "version_number": current.version }),
    };
    audit::record(txn, entry).await?;
    let change = NewChange {
        tenant,
        kind: K::LOGGED_AS,
        resource_id: id,
        version_number: current.version,
        label: None,
        action: ChangeAction::Purge,
        changed_by: by.subject(),
    };
    changes::record(txn, change).await?;
    Ok(Some(current.version))
}

/// An admin's purge of resource `id` ([`purge`] in a transaction of its
/// own), when the caller's etag (if sent) is current; remembered under a
/// request id, or only checked (`how`: the transaction is rolled back).
pub async fn purge_now<K: Kind>(
    store: &Store,
    kind: &K,
    caller: &Caller,
    id: &str,
    expected_version: Option<i64>,
    how: How<'_>,
) -> Result<(), Error> {
    let txn = store.begin_write().await?;
    if expected_version.is_some() {
        let current = get_locked_shown::<K>(&txn, &caller.tenant, id, Shown::WithDeleted).await?;
        check_etag::<K>(expected_version, &current)?;
    }
    purge::<K>(&txn, &caller.tenant, id, Purger::Admin(caller), how.claim).await?;
    if how.validate_only {
        txn.rollback().await.map_err(db_error)?;
        return Ok(());
    }
    txn.commit().await.map_err(db_error)?;
    forget_purged(store, kind, &caller.tenant, id);
    Ok(())
}

/// How many expired resources the retention task purges per query.
const PURGE_BATCH: u64 = 100;

/// Purges every resource of kind `K` (any tenant) deleted at
/// `deleted_before` or earlier, a batch at a time, each in its own
/// transaction ([`purge`]); answers how many it purged. A resource the kind
/// refuses to purge (a provider a deleted agent still references) is
/// skipped and logged; it is tried again on the next run.
pub async fn purge_expired<K: Kind>(
    store: &Store,
    kind: &K,
    deleted_before: DateTime<Utc>,
) -> Result<u64, Error> {
    let mut purged = 0;
    let mut skipped: Vec<(String, String)> = Vec::new();
    loop {
        let mut query = Query::select();
        query
            .expr_as(col::<K>("tenant_id"), Alias::new("tenant_id"))
            .expr_as(col::<K>("id"), Alias::new("id"))
            .from(K::Entity::default())
            .and_where(col::<K>("delete_time").is_not_null())
            .and_where(col::<K>("delete_time").lte(deleted_before))
            .order_by_expr(col::<K>("delete_time"), sea_orm::Order::Asc)
            .limit(PURGE_BATCH + skipped.len() as u64);
        let backend = store.get_database_backend();
        let rows = store
            .query_all_raw(backend.build(&query))
            .await
            .map_err(db_error)?;
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            let tenant: String = row.try_get("", "tenant_id").map_err(db_error)?;
            let id: String = row.try_get("", "id").map_err(db_error)?;
            if !skipped.iter().any(|(t, i)| *t == tenant && *i == id) {
                found.push((tenant, id));
            }
        }
        if found.is_empty() {
            return Ok(purged);
        }
        for (tenant, id) in found {
            let txn = store.begin_write().await?;
            match purge::<K>(
                &txn,
                &tenant,
                &id,
                Purger::Retention { deleted_before },
                None,
            )
            .await
            {
                Ok(Some(_)) => {
                    txn.commit().await.map_err(db_error)?;
                    forget_purged(store, kind, &tenant, &id);
                    purged += 1;
                }
                Ok(None) => {}
                Err(Error::FailedPrecondition { .. }) => {
                    tracing::info!(
                        kind = K::NAMES.kind,
                        tenant = %tenant,
                        id = %id,
                        "not purged yet: still referenced"
                    );
                    skipped.push((tenant, id));
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// After a purge's commit: the recent records forget it, watchers wake.
fn forget_purged<K: Kind>(store: &Store, kind: &K, tenant: &str, id: &str) {
    if let Some(recent) = kind.recent(store) {
        recent.forget(tenant, id);
    }
    store.committed(tenant);
}

/// How a write that is not a version runs (a label move, a label policy):
/// whether it is remembered under a request id, or only checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct How<'a> {
    /// The request id to remember the write under.
    pub claim: Option<&'a Claim>,
    /// Only run the checks; write nothing (AIP-163).
    pub validate_only: bool,
}

/// What a dry run (AIP-163 `validate_only`) answers: the resource as the
/// write would leave it, and the changes its version would record.
#[derive(Debug)]
pub struct Validated<S> {
    pub record: Record<S>,
    pub diff: Vec<Change>,
}

/// A dry run of [`create`]: the locking path's write of version 1 (every
/// check the kind makes: the name free, its references there) in a
/// transaction that is rolled back. Nothing is visible to anyone else (the
/// transaction never commits), no version number is taken, the change log
/// and its watchers and this process's recent records are not touched.
pub async fn validate_create<K: Kind>(
    store: &Store,
    kind: &K,
    write: &Write<'_>,
    id: &str,
    spec: K::Spec,
) -> Result<Validated<K::Spec>, Error> {
    let txn = store.begin_write().await?;
    let written = write_locked_with_diff(&txn, kind, write, Base::New(id), spec).await;
    txn.rollback().await.map_err(db_error)?;
    written?.ok_or_else(contended::<K>)
}

/// A dry run of [`update`] (as [`validate_create`]): a change that changes
/// nothing answers the current record and no changes.
pub async fn validate_update<K: Kind>(
    store: &Store,
    kind: &K,
    write: &Write<'_>,
    id: &str,
    expected_version: Option<i64>,
    change: impl Fn(&Record<K::Spec>) -> Result<K::Spec, Error> + Sync,
) -> Result<Validated<K::Spec>, Error> {
    let target = Target::Change(&change);
    validate_version(store, kind, write, id, expected_version, target).await
}

/// A dry run of [`rollback`] (as [`validate_create`]).
pub async fn validate_rollback<K: Kind>(
    store: &Store,
    kind: &K,
    write: &Write<'_>,
    id: &str,
    number: i64,
    expected_version: Option<i64>,
) -> Result<Validated<K::Spec>, Error> {
    let target = Target::Version(number);
    validate_version(store, kind, write, id, expected_version, target).await
}

async fn validate_version<K: Kind>(
    store: &Store,
    kind: &K,
    write: &Write<'_>,
    id: &str,
    expected_version: Option<i64>,
    target: Target<'_, K::Spec>,
) -> Result<Validated<K::Spec>, Error> {
    let txn = store.begin_write().await?;
    let validated = validate_in(&txn, kind, write, id, expected_version, &target).await;
    txn.rollback().await.map_err(db_error)?;
    validated
}

async fn validate_in<K: Kind>(
    txn: &DatabaseTransaction,
    kind: &K,
    write: &Write<'_>,
    id: &str,
    expected_version: Option<i64>,
    target: &Target<'_, K::Spec>,
) -> Result<Validated<K::Spec>, Error> {
    let tenant = &write.caller.tenant;
    let current = get_locked::<K>(txn, tenant, id).await?;
    check_etag::<K>(expected_version, &current)?;
    let spec = target.spec::<K>(txn, tenant, &current).await?;
    if spec == current.spec && write.action == Action::Update {
        return Ok(Validated {
            record: current,
            diff: Vec::new(),
        });
    }
    let base = Base::Current(&current);
    write_locked_with_diff(txn, kind, write, base, spec)
        .await?
        .ok_or_else(contended::<K>)
}

/// The record resource `id` had at its version `number`, rebuilt from that
/// immutable version row (what a retried call is answered with).
pub async fn record_at<K: Kind>(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
    number: i64,
) -> Result<Record<K::Spec>, Error> {
    let version = get_version::<K>(db, tenant, id, number).await?;
    Ok(Record {
        id: id.to_owned(),
        spec: K::Spec::from_json(&version.configuration)?,
        version: version.version_number,
        create_time: version.resource_create_time,
        update_time: version.create_time,
        created_by: version.resource_created_by,
        updated_by: version.changed_by,
        delete_time: (version.action == Action::Delete).then_some(version.create_time),
        version_hash: None,
    })
}

/// The ABORTED answer when the locking path keeps losing.
pub fn contended<K: Kind>() -> Error {
    Error::Contended(format!(
        "too many concurrent writers on this {}; try again",
        K::NAMES.kind
    ))
}

/// NOT_FOUND for resource `id`.
pub fn not_found<K: Kind>(id: &str) -> Error {
    Error::NotFound {
        kind: K::NAMES.kind,
        id: id.to_owned(),
    }
}

/// A resource as the next version will store it, with the bound values of
/// its snapshot (made once for the row and the version row) and its diff.
struct Next<K: Kind> {
    record: Record<K::Spec>,
    columns: Vec<(&'static str, SimpleExpr)>,
    /// Of `columns`, those whose value the current row already holds. A
    /// bump leaves them out: SQLite rewrites the entry of every index over
    /// a column an UPDATE sets, whether or not its value moved (an agent's
    /// name and provider are in three).
    unchanged: Vec<&'static str>,
    snapshot: SimpleExpr,
    diff: SimpleExpr,
    /// The changes `diff` holds.
    changes: Vec<Change>,
}

impl<K: Kind> Next<K> {
    /// `spec` as version 1 of a new resource, or as the version after the
    /// current one.
    fn new(
        base: Base<'_, K::Spec>,
        write: &Write<'_>,
        spec: K::Spec,
        backend: DbBackend,
    ) -> Result<Self, Error> {
        let json = spec.to_json();
        let (now, subject) = (super::now(), &write.caller.subject);
        let (record, changes) = match base {
            Base::New(id) => {
                let record = Record {
                    id: id.to_owned(),
                    spec,
                    version: 1,
                    create_time: now,
                    update_time: now,
                    created_by: subject.clone(),
                    updated_by: subject.clone(),
                    delete_time: None,
                    version_hash: None,
                };
                (record, Vec::new())
            }
            Base::Current(current) => {
                let changes = K::diff(&current.spec, &spec, &json);
                let record = Record {
                    id: current.id.clone(),
                    spec,
                    version: current.version + 1,
                    create_time: current.create_time,
                    update_time: now,
                    created_by: current.created_by.clone(),
                    updated_by: subject.clone(),
                    delete_time: current.delete_time,
                    version_hash: None,
                };
                (record, changes)
            }
        };
        let diff = version::changes_to_json(&changes);
        let mut record = record;
        let prev = base.current().and_then(|c| c.version_hash.as_deref());
        let hashed = Hashed {
            kind: K::NAMES.kind,
            tenant: &write.caller.tenant,
            id: &record.id,
            number: record.version,
            action: &write.action.to_value(),
            configuration: &json,
            diff: &diff,
            description: &write.description,
            changed_by: subject,
            time: record.update_time,
            request_id: write.request_id.as_deref(),
        };
        record.version_hash = Some(hashed.hash_after(prev.unwrap_or_default()));
        let snapshot = json_val(backend, &json);
        let columns = K::columns(&record.spec, &snapshot, backend)?;
        // The snapshot's own column always moves with the version; the
        // others are compared with the current row's.
        let unchanged = match base.current() {
            Some(current) => K::columns(&current.spec, &snapshot, backend)?
                .into_iter()
                .zip(&columns)
                .filter(|((_, before), (_, after))| before == after && *after != snapshot)
                .map(|((name, _), _)| name)
                .collect(),
            None => Vec::new(),
        };
        Ok(Self {
            columns,
            unchanged,
            diff: json_val(backend, &diff),
            snapshot,
            record,
            changes,
        })
    }

    /// `INSERT INTO <table> … SELECT … [WHERE <the kind's guard>]`, and the
    /// answer when the guard refuses.
    fn insert(
        &self,
        kind: &K,
        write: &Write<'_>,
    ) -> Result<(InsertStatement, Option<Error>), Error> {
        let (columns, values): (Vec<_>, Vec<_>) = self.row(write).into_iter().unzip();
        let mut select = Query::select();
        select.exprs(values);
        let guard = kind.insert_guard(&write.caller.tenant, &self.record.spec);
        let refused = guard.map(|(condition, refused)| {
            select.and_where(condition);
            refused
        });
        let mut insert = Query::insert();
        insert
            .into_table(K::Entity::default())
            .columns(columns)
            .select_from(select)
            .map_err(|e| Error::Internal(format!("{} insert: {e}", K::NAMES.kind)))?
            .returning_col(Alias::new("id"));
        Ok((insert, refused))
    }

    /// The whole row of a new resource.
    fn row(&self, write: &Write<'_>) -> Vec<(Alias, SimpleExpr)> {
        let record = &self.record;
        let mut row = vec![
            (Alias::new("id"), val(record.id.clone())),
            (Alias::new("tenant_id"), val(write.caller.tenant.clone())),
            (Alias::new("version"), val(record.version)),
            (Alias::new("create_time"), val(record.create_time)),
            (Alias::new("update_time"), val(record.update_time)),
            (Alias::new("created_by"), val(record.created_by.clone())),
            (Alias::new("updated_by"), val(record.updated_by.clone())),
            (Alias::new("version_hash"), val(record.version_hash.clone())),
        ];
        row.extend(self.own_columns());
        row
    }

    fn own_columns(&self) -> impl Iterator<Item = (Alias, SimpleExpr)> + '_ {
        self.columns
            .iter()
            .map(|(name, value)| (Alias::new(*name), value.clone()))
    }

    /// `UPDATE <table> SET … WHERE id = … AND tenant_id = … AND version =
    /// <current> [AND <what the kind needs still as read>]`: takes the
    /// version number only if nobody else did, and only over the row the
    /// write read ([`Kind::still_as_read`]).
    fn bump(&self, write: &Write<'_>, current: &Record<K::Spec>) -> UpdateStatement {
        let record = &self.record;
        let mut values: Vec<(Alias, SimpleExpr)> = self
            .columns
            .iter()
            .filter(|(name, _)| !self.unchanged.contains(name))
            .map(|(name, value)| (Alias::new(*name), value.clone()))
            .collect();
        values.extend([
            (Alias::new("version"), val(record.version)),
            (Alias::new("update_time"), val(record.update_time)),
            (Alias::new("updated_by"), val(record.updated_by.clone())),
            (Alias::new("version_hash"), val(record.version_hash.clone())),
        ]);
        let mut bump = Query::update();
        bump.table(K::Entity::default())
            .values(values)
            .and_where(scoped::<K>(&write.caller.tenant, &current.id))
            .and_where(col::<K>("version").eq(current.version));
        if let Some(as_read) = K::still_as_read(&current.spec) {
            bump.and_where(as_read);
        }
        bump
    }

    /// The version row that records this version as written by `write`,
    /// with the kind's own columns.
    fn version_row(&self, write: &Write<'_>) -> Vec<(Alias, SimpleExpr)> {
        let mut row = version_row(
            K::NAMES.owner,
            write,
            (&self.record.id, self.record.version),
            self.snapshot.clone(),
            self.diff.clone(),
            self.record.update_time,
            self.record.version_hash.as_deref().unwrap_or_default(),
        );
        let own = K::version_columns(&write.caller.tenant, &self.record.spec);
        row.extend(
            own.into_iter()
                .map(|(name, value)| (Alias::new(name), value)),
        );
        row
    }
}

/// A version row of resource `id`, number `number`, linked by `hash`:
/// `owner` names the resource column.
pub fn version_row(
    owner: &'static str,
    write: &Write<'_>,
    (id, number): (&str, i64),
    snapshot: SimpleExpr,
    diff: SimpleExpr,
    time: DateTime<Utc>,
    hash: &str,
) -> Vec<(Alias, SimpleExpr)> {
    vec![
        (Alias::new(owner), val(id.to_owned())),
        (Alias::new("tenant_id"), val(write.caller.tenant.clone())),
        (Alias::new("version_number"), val(number)),
        (Alias::new("action"), val(write.action.to_value())),
        (Alias::new("configuration"), snapshot),
        (Alias::new("diff"), diff),
        (
            Alias::new("change_description"),
            val(write.description.clone()),
        ),
        (Alias::new("changed_by"), val(write.caller.subject.clone())),
        (Alias::new("create_time"), val(time)),
        (Alias::new("request_id"), val(write.request_id.clone())),
        (Alias::new("hash"), val(hash.to_owned())),
    ]
}

/// What a version row's chain link covers (see `store::chain`), in this
/// order: the kind, tenant, resource id, version number, action, the
/// configuration (a provider key's ciphertext replaced by a marker: the
/// rewrap job re-encrypts it in place), the diff, the change description,
/// the author, the time and the request id. A kind's own version columns
/// (an agent version's provider id and version, recorded by subqueries as
/// the row is inserted) are not covered.
#[derive(Debug)]
pub struct Hashed<'a> {
    pub kind: &'a str,
    pub tenant: &'a str,
    pub id: &'a str,
    pub number: i64,
    pub action: &'a str,
    pub configuration: &'a Value,
    pub diff: &'a Value,
    pub description: &'a str,
    pub changed_by: &'a str,
    pub time: DateTime<Utc>,
    pub request_id: Option<&'a str>,
}

impl Hashed<'_> {
    /// The row's hash after the version whose hash is `prev` (`""`: none).
    pub fn hash_after(&self, prev: &str) -> String {
        Link::new()
            .text(self.kind)
            .text(self.tenant)
            .text(self.id)
            .number(self.number)
            .text(self.action)
            .configuration(self.configuration)
            .json(self.diff)
            .text(self.description)
            .text(self.changed_by)
            .time(self.time)
            .optional(self.request_id)
            .hash_after(prev)
    }
}
