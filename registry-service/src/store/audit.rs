//! The audit trail (`audit_events`): an append-only record of who did what
//! to which resource, with the request id, for `ListAuditEvents`.
//!
//! - A version row records its event itself: a trigger on each version table
//!   (migration `m20261208_000001_audit`) appends it in the statement that
//!   inserts the version, so a write and its event commit together on every
//!   write path without another statement from here.
//! - Everything else calls [`record`] inside the transaction of what it
//!   records (a purge, a label move, the label policy, a key revocation),
//!   or [`append`] when there is none: a credential release (one insert; on
//!   SQLite a share of the group commit, on PostgreSQL one statement; no
//!   lock a tenant's other writes wait on), a key operation.
//! - [`seal`] chains the events in the order it finds them (tamper evidence,
//!   see `store::chain`): a background task, so no insert waits for a chain
//!   head; [`delete_expired`] enforces the retention, keeping the chain
//!   verifiable from its new start.
//!
//! `details` never holds a secret: a provider key appears as its revision.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{
    Alias, Condition, Expr, ExprTrait, Func, InsertStatement, OnConflict, Order, Query, SimpleExpr,
};
use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, QueryResult, StatementBuilder};
use serde_json::Value;

use super::chain::Link;
use super::search::{ordered, prefix, text_column};
use super::versioned::Kind;
use super::{Page, Store, db_error, json_val, paginate, val};
use crate::caller::Caller;
use crate::error::Error;
use crate::filter::{self, Comparison, Filter, Op, quote};

const EVENTS: &str = "audit_events";
const SEALS: &str = "audit_seals";
/// The seal row of the chain's head.
const HEAD: &str = "audit";
/// The seal row of the chain's start once retention deleted its oldest
/// events: the last deleted event's position and hash.
const ANCHOR: &str = "audit-anchor";

/// What an event records (`audit_events.action`; documented for clients in
/// audit.proto). Version writes record their version's action (`CREATE`,
/// `UPDATE`, `ROLLBACK`, `DELETE`, `UNDELETE`) through the version tables'
/// trigger; these are the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A resource and its history removed for good.
    Purge,
    /// A label set or moved.
    LabelSet,
    /// A label deleted.
    LabelDelete,
    /// The tenant's protected labels replaced.
    LabelPolicyUpdate,
    /// A provider key revision revoked.
    KeyRevoke,
    /// A decrypted key returned by ResolveAgent.
    CredentialRelease,
    /// Stored keys re-encrypted to the active key version.
    CredentialsRewrap,
    /// A key version retired.
    KeyVersionRetire,
}

impl Action {
    /// As stored and shown.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Purge => "PURGE",
            Self::LabelSet => "LABEL_SET",
            Self::LabelDelete => "LABEL_DELETE",
            Self::LabelPolicyUpdate => "LABEL_POLICY_UPDATE",
            Self::KeyRevoke => "KEY_REVOKE",
            Self::CredentialRelease => "CREDENTIAL_RELEASE",
            Self::CredentialsRewrap => "CREDENTIALS_REWRAP",
            Self::KeyVersionRetire => "KEY_VERSION_RETIRE",
        }
    }
}

/// An event to record.
#[derive(Debug)]
pub struct Entry<'a> {
    /// Empty for a platform-wide event (a key operation).
    pub tenant: &'a str,
    pub actor: &'a str,
    pub action: Action,
    /// `agent`, `provider`, or empty.
    pub kind: &'static str,
    /// The resource's id, or empty.
    pub resource_id: &'a str,
    pub request_id: Option<&'a str>,
    /// Never a secret.
    pub details: Value,
}

impl<'a> Entry<'a> {
    /// `caller`'s `action` on resource `id` of kind `K`.
    pub fn on<K: Kind>(
        caller: &'a Caller,
        action: Action,
        id: &'a str,
        request_id: Option<&'a str>,
        details: Value,
    ) -> Self {
        Self {
            tenant: &caller.tenant,
            actor: &caller.subject,
            action,
            kind: K::NAMES.kind,
            resource_id: id,
            request_id,
            details,
        }
    }

    /// `caller`'s `action` on its whole tenant.
    pub fn tenant_wide(caller: &'a Caller, action: Action, details: Value) -> Self {
        Self {
            tenant: &caller.tenant,
            actor: &caller.subject,
            action,
            kind: "",
            resource_id: "",
            request_id: None,
            details,
        }
    }

    /// A platform operator's `action` over every tenant (tenant empty).
    pub fn platform(actor: &'a str, action: Action, details: Value) -> Self {
        Self {
            tenant: "",
            actor,
            action,
            kind: "",
            resource_id: "",
            request_id: None,
            details,
        }
    }

    fn insert(&self, backend: DbBackend) -> InsertStatement {
        let resource = match (self.kind, self.resource_id) {
            ("", _) | (_, "") => String::new(),
            (kind, id) => format!("{kind}s/{id}"),
        };
        let mut insert = Query::insert();
        insert
            .into_table(Alias::new(EVENTS))
            .columns(
                [
                    "tenant_id",
                    "event_time",
                    "actor",
                    "action",
                    "kind",
                    "resource",
                    "request_id",
                    "details",
                ]
                .map(Alias::new),
            )
            .values_panic([
                val(self.tenant.to_owned()),
                val(super::now()),
                val(self.actor.to_owned()),
                val(self.action.as_str()),
                val(self.kind),
                val(resource),
                val(self.request_id.map(str::to_owned)),
                json_val(backend, &self.details),
            ]);
        insert
    }
}

/// Records `entry` through `db`: inside the transaction of what it records.
/// After the commit the caller says so ([`Store::committed`] or
/// [`Store::audit_recorded`]): the sealer looks then (else within
/// [`IDLE_LOOK_EVERY`]).
pub async fn record(db: &impl ConnectionTrait, entry: Entry<'_>) -> Result<(), Error> {
    let insert = entry.insert(db.get_database_backend());
    db.execute(&insert).await.map_err(db_error)?;
    Ok(())
}

/// Records `entry` on its own, durably before it returns: one insert (on
/// SQLite a share of the group commit).
pub async fn append(store: &Store, entry: Entry<'_>) -> Result<(), Error> {
    let insert = entry.insert(store.get_database_backend());
    store.write_alone(insert).await.map_err(db_error)?;
    store.audit_recorded();
    Ok(())
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, FromQueryResult)]
pub struct EventRecord {
    pub id: i64,
    pub tenant_id: String,
    pub event_time: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub kind: String,
    pub resource: String,
    pub request_id: Option<String>,
    pub details: Value,
    pub chain_seq: Option<i64>,
    pub hash: Option<String>,
}

impl EventRecord {
    /// The event's content as its chain link covers it, at position `seq`.
    pub fn link(&self, seq: i64) -> Link {
        Link::new()
            .number(seq)
            .number(self.id)
            .text(&self.tenant_id)
            .time(self.event_time)
            .text(&self.actor)
            .text(&self.action)
            .text(&self.kind)
            .text(&self.resource)
            .optional(self.request_id.as_deref())
            .json(&self.details)
    }
}

/// The columns an [`EventRecord`] reads.
const COLUMNS: [&str; 11] = [
    "id",
    "tenant_id",
    "event_time",
    "actor",
    "action",
    "kind",
    "resource",
    "request_id",
    "details",
    "chain_seq",
    "hash",
];

/// A checked `ListAuditEvents` filter: its condition and its canonical
/// text (what page tokens are bound to).
#[derive(Debug)]
pub struct AuditFilter {
    condition: Option<SimpleExpr>,
    /// The canonical form (empty: every event).
    pub canonical: String,
}

/// The fields a filter may name, and their columns.
const FIELDS: [(&str, Field); 7] = [
    ("actor", Field::Text("actor")),
    ("action", Field::Text("action")),
    ("kind", Field::Text("kind")),
    ("resource", Field::Text("resource")),
    ("request_id", Field::Text("request_id")),
    ("tenant", Field::Text("tenant_id")),
    ("time", Field::Time("event_time")),
];

#[derive(Debug, Clone, Copy)]
enum Field {
    Text(&'static str),
    Time(&'static str),
}

impl AuditFilter {
    /// Parses and checks `text` (INVALID_ARGUMENT on field `filter`, with
    /// the byte offset).
    pub fn new(text: &str, backend: DbBackend) -> Result<Self, Error> {
        let parsed = filter::parse(text)?;
        let condition = parsed
            .as_ref()
            .map(|parsed| condition(parsed, backend))
            .transpose()?;
        Ok(Self {
            condition,
            canonical: parsed.map(|p| p.to_string()).unwrap_or_default(),
        })
    }
}

fn condition(filter: &Filter, backend: DbBackend) -> Result<SimpleExpr, Error> {
    // Recursion follows the filter's nesting, which `filter::parse` bounds.
    let join = |items: &[Filter], and: bool| -> Result<SimpleExpr, Error> {
        let mut joined: Option<SimpleExpr> = None;
        for item in items {
            let next = condition(item, backend)?;
            joined = Some(match joined {
                None => next,
                Some(so_far) if and => so_far.and(next),
                Some(so_far) => so_far.or(next),
            });
        }
        joined.ok_or_else(|| Error::Internal("an empty filter group".to_owned()))
    };
    match filter {
        Filter::All(items) => join(items, true),
        Filter::Any(items) => join(items, false),
        Filter::Not(inner) => Ok(condition(inner, backend)?.not()),
        Filter::Compare(comparison) => compare(comparison, backend),
    }
}

/// One comparison as a condition that is never NULL.
fn compare(c: &Comparison, backend: DbBackend) -> Result<SimpleExpr, Error> {
    let (name, field) = FIELDS
        .iter()
        .find(|(name, _)| *name == c.field)
        .ok_or_else(|| {
            let known: Vec<&str> = FIELDS.iter().map(|(name, _)| *name).collect();
            filter::invalid(
                c.at,
                format!(
                    "unknown field {}; fields: {}",
                    quote(&c.field),
                    known.join(", ")
                ),
            )
        })?;
    let value = &c.value;
    let takes = || {
        filter::invalid(
            c.at,
            format!(
                "{name} takes =, !=, <, <=, > or >= (not '{}')",
                c.op.as_str()
            ),
        )
    };
    match *field {
        Field::Text(column) => {
            // A missing request id reads as empty, so no comparison is NULL.
            let stored: SimpleExpr =
                Func::coalesce([Expr::col((Alias::new(EVENTS), Alias::new(column))), val("")])
                    .into();
            let stored = text_column(stored, backend);
            let bound = |text: &str| text_column(val(text.to_owned()), backend);
            if value.prefix {
                return match c.op {
                    Op::Eq => Ok(prefix(stored, &value.text, bound)),
                    Op::Ne => Ok(prefix(stored, &value.text, bound).not()),
                    _ => Err(filter::invalid(
                        value.at,
                        "a prefix ('*') goes with = or != only",
                    )),
                };
            }
            ordered(stored, c.op, bound(&value.text)).ok_or_else(takes)
        }
        Field::Time(column) => {
            if value.prefix {
                return Err(filter::invalid(
                    value.at,
                    format!("{name} takes a whole value, not a prefix ('*')"),
                ));
            }
            let time = DateTime::parse_from_rfc3339(&value.text).map_err(|_| {
                filter::invalid(
                    value.at,
                    format!(
                        "{name} takes an RFC 3339 time such as 2026-12-07T10:00:00Z (got {})",
                        quote(&value.text)
                    ),
                )
            })?;
            let stored = Expr::col((Alias::new(EVENTS), Alias::new(column)));
            ordered(stored, c.op, val(time.with_timezone(&Utc))).ok_or_else(takes)
        }
    }
}

/// Whose events a listing shows.
#[derive(Debug, Clone, Copy)]
pub enum Visible<'a> {
    /// One tenant's (a tenant admin's view).
    Tenant(&'a str),
    /// Every tenant's and the platform's (a platform operator's view).
    Everything,
}

/// One page of the events `filter` selects among the `visible` ones,
/// newest first, before event `before` (a page's last id).
///
/// A filtered page is bounded as a filtered List of resources is (the
/// store's [`ListScan`](super::search::ListScan)): its query runs within
/// the scan budget, and one that runs out (a filter few events meet, in a
/// long trail) is read from a window of the next visible events instead
/// ([`list_window`]), so it may be short or empty and still have a next
/// page. Nothing counts a filtered trail (`total` is -1).
pub async fn list(
    db: &Store,
    visible: Visible<'_>,
    filter: &AuditFilter,
    before: Option<i64>,
    limit: u64,
) -> Result<Page<EventRecord>, Error> {
    let shown = shown_before(visible, before);
    let mut query = Query::select();
    query
        .columns(COLUMNS.map(|c| (Alias::new(EVENTS), Alias::new(c))))
        .from(Alias::new(EVENTS))
        .cond_where(shown.clone())
        .order_by((Alias::new(EVENTS), Alias::new("id")), Order::Desc)
        .limit(limit + 1);
    let Some(condition) = &filter.condition else {
        let rows = read_all::<EventRecord>(db, &query).await?;
        return Ok(paginate(rows, limit, |e| e.id.to_string(), -1));
    };
    query.and_where(condition.clone());
    let scan = db.list_scan();
    let statement = db.get_database_backend().build(&query);
    match db
        .query_within(statement, scan.steps)
        .await
        .map_err(db_error)?
    {
        Some(rows) => {
            let rows = records::<EventRecord>(&rows)?;
            Ok(paginate(rows, limit, |e| e.id.to_string(), -1))
        }
        None => list_window(db, shown, condition, scan.window, limit).await,
    }
}

/// The `visible` events before event `before`.
fn shown_before(visible: Visible<'_>, before: Option<i64>) -> Condition {
    let column = |name: &str| Expr::col((Alias::new(EVENTS), Alias::new(name)));
    Condition::all()
        .add_option(match visible {
            Visible::Tenant(tenant) => Some(column("tenant_id").eq(tenant)),
            Visible::Everything => None,
        })
        .add_option(before.map(|before| column("id").lt(before)))
}

/// A filtered page read from a window: the ids of the next `rows` events
/// `shown` selects, newest first (a walk of an index the `LIMIT` ends),
/// then those of them `condition` selects, up to `limit`. When they fill
/// the page it continues after its last event; when they do not and the
/// window was full, before the window's oldest event (a short page, or an
/// empty one, with a next page); else the trail ends here.
async fn list_window(
    db: &Store,
    shown: Condition,
    condition: &SimpleExpr,
    rows: u64,
    limit: u64,
) -> Result<Page<EventRecord>, Error> {
    let id = || Expr::col((Alias::new(EVENTS), Alias::new("id")));
    let window = Query::select()
        .expr_as(id(), Alias::new("window_id"))
        .from(Alias::new(EVENTS))
        .cond_where(shown)
        .order_by((Alias::new(EVENTS), Alias::new("id")), Order::Desc)
        .limit(rows)
        .to_owned();
    let mut page = Query::select();
    page.columns(COLUMNS.map(|c| (Alias::new(EVENTS), Alias::new(c))))
        .from(Alias::new(EVENTS))
        .and_where(id().in_subquery(window.clone()))
        .and_where(condition.clone())
        .order_by((Alias::new(EVENTS), Alias::new("id")), Order::Desc)
        .limit(limit + 1);
    let found = read_all::<EventRecord>(db, &page).await?;
    if found.len() as u64 > limit {
        return Ok(paginate(found, limit, |e| e.id.to_string(), -1));
    }
    let extent = Query::select()
        .expr_as(Expr::cust("COUNT(*)"), Alias::new("events"))
        .expr_as(Expr::cust("MIN(window_id)"), Alias::new("oldest"))
        .from_subquery(window, Alias::new("scan_window"))
        .to_owned();
    let extent = read_all::<WindowExtent>(db, &extent).await?;
    let next_after = extent
        .first()
        .filter(|extent| u64::try_from(extent.events).is_ok_and(|events| events >= rows))
        .and_then(|extent| extent.oldest)
        .map(|oldest| oldest.to_string());
    Ok(Page {
        items: found,
        next_after,
        total: -1,
    })
}

/// How many events a window held, and its oldest.
#[derive(Debug, FromQueryResult)]
struct WindowExtent {
    events: i64,
    oldest: Option<i64>,
}

/// Every row `query` selects, read as `T`.
async fn read_all<T: FromQueryResult>(
    db: &impl ConnectionTrait,
    query: &impl StatementBuilder,
) -> Result<Vec<T>, Error> {
    let rows = db.query_all(query).await.map_err(db_error)?;
    records(&rows)
}

/// `rows`, read as `T`.
fn records<T: FromQueryResult>(rows: &[QueryResult]) -> Result<Vec<T>, Error> {
    rows.iter()
        .map(|row| T::from_query_result(row, ""))
        .collect::<Result<_, _>>()
        .map_err(db_error)
}

/// The most events one [`seal`] round chains.
pub const SEAL_BATCH: u64 = 1000;

/// A seal row: a chain position and its hash.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct Seal {
    pub seq: i64,
    pub hash: String,
}

/// The seal row `chain` (`HEAD` or `ANCHOR`), when there is one.
async fn seal_row(
    db: &impl ConnectionTrait,
    chain: &str,
    lock: bool,
) -> Result<Option<Seal>, Error> {
    let mut query = Query::select();
    query
        .columns(["seq", "hash"].map(Alias::new))
        .from(Alias::new(SEALS))
        .and_where(Expr::col(Alias::new("chain")).eq(chain));
    if lock && db.get_database_backend() == DbBackend::Postgres {
        query.lock_exclusive();
    }
    Ok(read_all::<Seal>(db, &query).await?.into_iter().next())
}

/// Sets seal row `chain` to `seal`.
async fn set_seal(db: &impl ConnectionTrait, chain: &str, seal: &Seal) -> Result<(), Error> {
    let mut upsert = Query::insert();
    upsert
        .into_table(Alias::new(SEALS))
        .columns(["chain", "seq", "hash", "seal_time"].map(Alias::new))
        .values_panic([
            val(chain),
            val(seal.seq),
            val(seal.hash.clone()),
            val(super::now()),
        ])
        .on_conflict(
            OnConflict::column(Alias::new("chain"))
                .update_columns(["seq", "hash", "seal_time"].map(Alias::new))
                .to_owned(),
        );
    db.execute(&upsert).await.map_err(db_error)?;
    Ok(())
}

/// The audit chain's head: the last sealed event's position and hash
/// (`0`, `""` before the first).
pub async fn head(db: &impl ConnectionTrait) -> Result<Seal, Error> {
    Ok(seal_row(db, HEAD, false).await?.unwrap_or(Seal {
        seq: 0,
        hash: String::new(),
    }))
}

/// Where the chain starts after retention: the last deleted position and
/// its hash (`0`, `""` when nothing was deleted).
pub async fn anchor(db: &impl ConnectionTrait) -> Result<Seal, Error> {
    Ok(seal_row(db, ANCHOR, false).await?.unwrap_or(Seal {
        seq: 0,
        hash: String::new(),
    }))
}

/// Chains up to [`SEAL_BATCH`] unsealed events, oldest id first, after the
/// chain's head, in one write transaction (the head's row locked on
/// PostgreSQL, so replicas' sealers take turns). An event that commits
/// after a younger one was sealed is chained in a later round: the chain's
/// order is its sealing order (`chain_seq`), not the id. Answers how many
/// it sealed.
pub async fn seal(store: &Store) -> Result<u64, Error> {
    // A read first (on SQLite on the read connection): an idle trail takes
    // no write lock.
    let mut probe = Query::select();
    probe
        .expr(Expr::val(1))
        .from(Alias::new(EVENTS))
        .and_where(Expr::col(Alias::new("chain_seq")).is_null())
        .limit(1);
    if store.query_all(&probe).await.map_err(db_error)?.is_empty() {
        return Ok(0);
    }
    let txn = store.begin_write().await?;
    let mut head = match seal_row(&txn, HEAD, true).await? {
        Some(head) => head,
        None => Seal {
            seq: 0,
            hash: String::new(),
        },
    };
    let mut query = Query::select();
    query
        .columns(COLUMNS.map(Alias::new))
        .from(Alias::new(EVENTS))
        .and_where(Expr::col(Alias::new("chain_seq")).is_null())
        .order_by(Alias::new("id"), Order::Asc)
        .limit(SEAL_BATCH);
    let unsealed = read_all::<EventRecord>(&txn, &query).await?;
    if unsealed.is_empty() {
        return Ok(0);
    }
    for event in &unsealed {
        let seq = head.seq + 1;
        let hash = event.link(seq).hash_after(&head.hash);
        let update = Query::update()
            .table(Alias::new(EVENTS))
            .values([
                (Alias::new("chain_seq"), val(seq)),
                (Alias::new("hash"), val(hash.clone())),
            ])
            .and_where(Expr::col(Alias::new("id")).eq(event.id))
            .to_owned();
        txn.execute(&update).await.map_err(db_error)?;
        head = Seal { seq, hash };
    }
    set_seal(&txn, HEAD, &head).await?;
    txn.commit().await.map_err(db_error)?;
    Ok(u64::try_from(unsealed.len()).unwrap_or(u64::MAX))
}

/// Deletes the sealed events of the chain up to the newest one older than
/// `cutoff` (a prefix of the chain, so what stays verifies from the new
/// anchor: the last deleted position and its hash). Unsealed events stay
/// until sealed. Answers how many it deleted.
pub async fn delete_expired(store: &Store, cutoff: DateTime<Utc>) -> Result<u64, Error> {
    let mut probe = Query::select();
    probe
        .expr(Expr::val(1))
        .from(Alias::new(EVENTS))
        .and_where(Expr::col(Alias::new("event_time")).lt(cutoff))
        .and_where(Expr::col(Alias::new("chain_seq")).is_not_null())
        .limit(1);
    if store.query_all(&probe).await.map_err(db_error)?.is_empty() {
        return Ok(0);
    }
    let txn = store.begin_write().await?;
    let mut last = Query::select();
    last.columns(["chain_seq", "hash"].map(Alias::new))
        .from(Alias::new(EVENTS))
        .and_where(Expr::col(Alias::new("chain_seq")).is_not_null())
        .and_where(Expr::col(Alias::new("event_time")).lt(cutoff))
        .order_by(Alias::new("chain_seq"), Order::Desc)
        .limit(1);
    #[derive(FromQueryResult)]
    struct Last {
        chain_seq: i64,
        hash: String,
    }
    let Some(last) = read_all::<Last>(&txn, &last).await?.into_iter().next() else {
        return Ok(0);
    };
    let delete = Query::delete()
        .from_table(Alias::new(EVENTS))
        .and_where(Expr::col(Alias::new("chain_seq")).lte(last.chain_seq))
        .to_owned();
    let deleted = txn
        .execute(&delete)
        .await
        .map_err(db_error)?
        .rows_affected();
    let anchor = Seal {
        seq: last.chain_seq,
        hash: last.hash,
    };
    set_seal(&txn, ANCHOR, &anchor).await?;
    txn.commit().await.map_err(db_error)?;
    Ok(deleted)
}

/// The sealed events in chain order after position `after`, at most
/// `limit` (for `verify`).
pub async fn sealed_after(
    db: &impl ConnectionTrait,
    after: i64,
    limit: u64,
) -> Result<Vec<EventRecord>, Error> {
    let mut query = Query::select();
    query
        .columns(COLUMNS.map(Alias::new))
        .from(Alias::new(EVENTS))
        .and_where(Expr::col(Alias::new("chain_seq")).gt(after))
        .order_by(Alias::new("chain_seq"), Order::Asc)
        .limit(limit);
    read_all(db, &query).await
}

/// The longest the sealer goes without looking for unsealed events when
/// this process recorded none: events of another replica whose sealer
/// stopped before sealing them, or of the offline `rewrap` command.
const IDLE_LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How often expired events are looked for: retention is counted in days.
const EXPIRY_LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// The trail's upkeep until aborted: chains the new events ([`seal`], as
/// many rounds as there are full batches) at start, then after each commit
/// through this process that may have recorded one
/// ([`Store::audit_may_have_grown`]), at most once per `interval`, and at
/// least every [`IDLE_LOOK_EVERY`]; at start and then at the first of those
/// rounds [`EXPIRY_LOOK_EVERY`] after the last, deletes events older than
/// `retention` ([`delete_expired`]). An idle registry so neither wakes nor
/// asks its database anything between its idle looks. A failed round is
/// logged and tried again after `interval`.
pub async fn upkeep(store: Store, retention: std::time::Duration, interval: std::time::Duration) {
    use tokio::time::{Instant, sleep, timeout};
    let mut next_expiry_look = Instant::now();
    loop {
        let sealed = seal_all(&store).await;
        if Instant::now() >= next_expiry_look {
            next_expiry_look = Instant::now() + EXPIRY_LOOK_EVERY;
            if let Ok(retention) = chrono::Duration::from_std(retention) {
                match delete_expired(&store, super::now() - retention).await {
                    Ok(0) => {}
                    Ok(deleted) => tracing::info!(deleted, "expired audit events deleted"),
                    Err(error) => tracing::warn!(%error, "deleting expired audit events failed"),
                }
            }
        }
        sleep(interval).await;
        if sealed {
            // A commit during the round or the sleep has left its wake-up:
            // this completes at once.
            let _ = timeout(IDLE_LOOK_EVERY, store.audit_may_have_grown()).await;
        }
    }
}

/// Seals in rounds until one seals less than a full batch; `false` when a
/// round failed.
async fn seal_all(store: &Store) -> bool {
    loop {
        match seal(store).await {
            Ok(sealed) if sealed == SEAL_BATCH => continue,
            Ok(_) => return true,
            Err(error) => {
                tracing::warn!(%error, "sealing the audit trail failed");
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::sea_query::SqliteQueryBuilder;

    #[test]
    fn a_text_field_reads_a_missing_value_as_empty() {
        let filter = AuditFilter::new(r#"tenant = "globex""#, DbBackend::Sqlite).expect("filter");
        let mut query = Query::select();
        query.column(Alias::new("id")).from(Alias::new(EVENTS));
        query.and_where(filter.condition.clone().expect("condition"));
        assert_eq!(
            query.to_string(SqliteQueryBuilder),
            r#"SELECT "id" FROM "audit_events" WHERE COALESCE("audit_events"."tenant_id", '') = 'globex'"#
        );
    }
}
