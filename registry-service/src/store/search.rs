//! Search over a versioned kind's rows: a parsed [`filter`](crate::filter)
//! checked against the fields the kind declares ([`Kind::FILTER_FIELDS`])
//! and turned into a sea-query condition (every value bound, nothing
//! spliced into SQL), and an `order_by` (AIP-132) with its keyset cursor.
//!
//! The same condition means the same on SQLite and PostgreSQL: text is
//! compared in byte order (SQLite's BINARY; `COLLATE "C"` on PostgreSQL,
//! indexed so in `m20261207_000002_search`), timestamps as instants (RFC
//! 3339 text of one format on SQLite, `timestamptz` on PostgreSQL), and
//! every comparison of a nullable column is written so that it is true or
//! false, never NULL (so `NOT` means "not").
//!
//! Pages stay keyset pages: the cursor is the last row's sort keys and id,
//! and the next page starts strictly after it in the same order (the id
//! breaks ties, in the direction of the last key).
//!
//! A filtered page is bounded ([`ListScan`]): its query runs for at most a
//! budget of SQLite instructions (on PostgreSQL, of time), and one that
//! runs out (the database walking a large tenant for a filter few or none
//! of its rows meet) is answered from a window instead — the matches among
//! the next rows in order, however few, with a cursor after the window's
//! last row. The caller pages on (AIP-158: a page may hold fewer items
//! than asked, or none, and still have a next page).

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query, SimpleExpr};
use sea_orm::{ConnectionTrait, DbBackend};

use super::versioned::{Kind, Record, col};
use super::{db_error, val};
use crate::error::Error;
use crate::filter::{self, Comparison, Filter, Op, quote};

/// A field a filter may name, and what it is in the kind's tables.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// As the filter names it.
    pub name: &'static str,
    pub column: Column,
}

impl Field {
    /// The field `name` over `column`.
    pub const fn new(name: &'static str, column: Column) -> Self {
        Self { name, column }
    }
}

/// What a filterable field is, which says the comparators it takes and how
/// its values read.
#[derive(Debug, Clone, Copy)]
pub enum Column {
    /// A text column of the row, compared in byte order: every comparator
    /// but `:`; `=` with a value ending in `*` is a prefix.
    Text(&'static str),
    /// A nullable column of the row holding another resource's id: `=` and
    /// `!=`; the empty value means none.
    Reference(&'static str),
    /// A timestamp column of the row: RFC 3339 values, every comparator
    /// but `:`.
    Time(&'static str),
    /// A boolean column of the row: `true` or `false`, `=` and `!=`.
    Bool(&'static str),
    /// A nullable column of the row, read as a boolean: `true` when it is
    /// set (`deleted = true` ⇔ `delete_time IS NOT NULL`); `=` and `!=`,
    /// or the field alone for `= true`.
    IsSet(&'static str),
    /// A text column of the row holding one of `values`, which a filter
    /// may also write with `prefix` (the proto enum's value names): `=`
    /// and `!=`.
    Choice {
        column: &'static str,
        prefix: &'static str,
        values: &'static [&'static str],
    },
    /// Membership: the resource has a row in `table` (a side table kept
    /// with the resource's own row) whose `owner` column is its id and
    /// whose `value` column is the value: `field:"x"` or `field = "x"`.
    /// The side table has a `tenant_id` column; its index `(tenant_id,
    /// [scope column,] value, owner)` finds the few owners of a rare value.
    Has {
        table: &'static str,
        owner: &'static str,
        value: &'static str,
        /// For a side table that serves several kinds: its column naming
        /// the kind, and this kind's name there (`labels.kind = 'agent'`).
        scope: Option<(&'static str, &'static str)>,
        /// A value every resource has without a row (the label `latest`):
        /// testing it selects every resource.
        implicit: Option<&'static str>,
    },
}

/// `name`: every kind's unique name.
pub const NAME: Field = Field::new("name", Column::Text("name"));
/// `create_time`: when the resource was created.
pub const CREATE_TIME: Field = Field::new("create_time", Column::Time("create_time"));
/// `update_time`: when its current version was written.
pub const UPDATE_TIME: Field = Field::new("update_time", Column::Time("update_time"));
/// `label`: the resource of kind `kind` (its [`Names::kind`]) has a label
/// of that name (`label:"production"`), from the `labels` table every kind
/// shares (indexed for it in `m20261209_000001_list_indexes`). Every
/// resource has the implicit `latest`.
///
/// [`Names::kind`]: super::versioned::Names
pub const fn label(kind: &'static str) -> Field {
    Field::new(
        "label",
        Column::Has {
            table: "labels",
            owner: "resource_id",
            value: "label",
            scope: Some(("kind", kind)),
            implicit: Some(crate::model::label::LATEST),
        },
    )
}
/// `deleted`: the resource is soft-deleted. A List selects deleted
/// resources only with `show_deleted`, whatever the filter says.
pub const DELETED: Field = Field::new("deleted", Column::IsSet("delete_time"));

/// The longest `order_by`, in bytes.
pub const MAX_ORDER_BY_BYTES: usize = 128;
/// The most keys an `order_by` may name (the id always follows them).
pub const MAX_ORDER_KEYS: usize = 2;

/// A key rows may be ordered by: a column every kind has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Name,
    CreateTime,
    UpdateTime,
}

impl Key {
    const ALL: [Self; 3] = [Self::Name, Self::CreateTime, Self::UpdateTime];

    /// As `order_by` names it, and its column.
    fn name(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::CreateTime => "create_time",
            Self::UpdateTime => "update_time",
        }
    }
}

/// How far a filtered listing searches before it answers
/// (`REGISTRY_LIST_SCAN_STEPS`, `REGISTRY_LIST_SCAN_POSTGRES_MS`,
/// `REGISTRY_LIST_SCAN_WINDOW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListScan {
    /// SQLite virtual machine instructions a filtered page's query, and
    /// then its count, may run. Zero, on either database: every filtered
    /// page is read from a window, and its count is not taken.
    pub steps: u64,
    /// How long a filtered page's query, and then its count, may run on
    /// PostgreSQL (its `statement_timeout`), which counts no instructions.
    pub postgres_time: Duration,
    /// The rows, in the listing's order, that a page read from a window
    /// tests against the filter.
    pub window: u64,
}

/// The default budget. A walk of the rows of `bench filter`'s tenant of
/// 100,000 agents for a filter none of them meets took about 850,000
/// instructions (about 56 ms; 8.5 a row;
/// `bench/results/session15/instructions_per_query.py`), so 50,000 is a
/// walk of about 6,000 rows, 3–9 ms on the bench's machine as its load
/// varies. Every other filtered page of the bench, and its count, finishes
/// inside it (BENCHMARKS.md, "Bounded filtered pages").
pub const DEFAULT_LIST_SCAN_STEPS: u64 = 50_000;
/// The default window: 2,000 rows take SQLite 1.3–3.2 ms to read and test
/// (about 34,000 instructions; the same script).
pub const DEFAULT_LIST_SCAN_WINDOW: u64 = 2_000;

/// The default time on PostgreSQL, in milliseconds. Unlike SQLite, every
/// call there has a connection of its own, but the pool's connections are
/// few (10 by default): a handful of callers repeating a filter that walks
/// a large tenant (a combination that matches nothing, 70–75 ms at
/// 100,000 agents, and growing with the tenant; BENCHMARKS.md) would hold all of
/// them, and every other tenant's call would wait for one. Every filtered
/// page of `bench filter` that has matches took at most 27 ms (p50) with
/// planner statistics, so 50 ms cuts only the walks. A time, not a count
/// of work: on a loaded server a page may come from a window sooner (the
/// same matches, on more pages).
pub const DEFAULT_LIST_SCAN_POSTGRES_MS: u64 = 50;

impl Default for ListScan {
    fn default() -> Self {
        Self {
            steps: DEFAULT_LIST_SCAN_STEPS,
            postgres_time: Duration::from_millis(DEFAULT_LIST_SCAN_POSTGRES_MS),
            window: DEFAULT_LIST_SCAN_WINDOW,
        }
    }
}

/// A checked search: the condition a row must meet, the order, and the
/// canonical text of both (what a page token is bound to).
#[derive(Debug, Clone)]
pub struct Search {
    parsed: Option<Filter>,
    /// The side-table memberships the filter tests (each once).
    memberships: Vec<Membership>,
    tenant: String,
    order: Vec<(Key, Order)>,
    /// The filter's canonical form (empty when there is none).
    pub filter: String,
    /// The order's canonical form (empty for the default, by id).
    pub order_by: String,
    backend: DbBackend,
}

impl Search {
    /// Checks `filter` against kind `K`'s fields and `order_by` against
    /// the keys; one violation per bad field (`filter`, `order_by`).
    pub fn new<K: Kind>(
        tenant: &str,
        (filter, order_by): (&str, &str),
        backend: DbBackend,
    ) -> Result<Self, Error> {
        // Building the condition once checks every field, comparator and
        // value; `condition` builds it again with the side tables probed.
        let to = Target {
            tenant,
            backend,
            common: &[],
            window: false,
        };
        let mut checked = None;
        let filter_checked = filter::parse(filter).and_then(|parsed| {
            if let Some(parsed) = &parsed {
                condition::<K>(parsed, &to)?;
            }
            checked = Some(parsed);
            Ok(())
        });
        let order = Error::both(filter_checked, parse_order_by(order_by))?;
        // Both checks passed, so the filter's outcome is there.
        let parsed = checked.flatten();
        let mut memberships = Vec::new();
        if let Some(parsed) = &parsed {
            memberships_of::<K>(parsed, &mut memberships);
        }
        let order_by = order
            .iter()
            .map(|(key, direction)| match direction {
                Order::Desc => format!("{} desc", key.name()),
                _ => key.name().to_owned(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Self {
            filter: parsed.as_ref().map(ToString::to_string).unwrap_or_default(),
            parsed,
            memberships,
            tenant: tenant.to_owned(),
            order_by,
            order,
            backend,
        })
    }

    /// Whether this is the plain listing (no filter, by id).
    pub fn is_plain(&self) -> bool {
        self.parsed.is_none() && self.order.is_empty()
    }

    /// Whether a filter narrows the listing.
    pub fn is_filtered(&self) -> bool {
        self.parsed.is_some()
    }

    /// How many of a window of `rows` a page read from a window tests:
    /// the window is shared among the side-table memberships the filter
    /// tests, each a lookup per row, so that a filter of many
    /// (`tool:"a" OR … OR tool:"z"`, up to 32) costs a page about what one
    /// does (32 probes of each of 2,000 rows took ~20 ms). At least one.
    pub fn window_rows(&self, rows: u64) -> u64 {
        let probes = u64::try_from(self.memberships.len()).unwrap_or(u64::MAX);
        Ord::max(rows / Ord::max(probes, 1), 1)
    }

    /// The conditions rows must meet, if any. Each membership (`tool:"x"`)
    /// is first counted in its side table, up to [`FEW_OWNERS`] + 1: a
    /// value with few owners is tested as `id IN (<its owners>)` (the
    /// owners drive the query), one with more as `EXISTS (<this row's
    /// membership>)` per row (a page's rows come after a few probes, where
    /// listing tens of thousands of owners first would take milliseconds).
    pub async fn conditions<K: Kind>(
        &self,
        db: &impl ConnectionTrait,
    ) -> Result<Option<Conditions>, Error> {
        let Some(parsed) = &self.parsed else {
            return Ok(None);
        };
        let mut common = Vec::new();
        for membership in &self.memberships {
            if membership
                .owners_beyond(db, &self.tenant, FEW_OWNERS)
                .await?
            {
                common.push(membership.clone());
            }
        }
        let mut to = Target {
            tenant: &self.tenant,
            backend: self.backend,
            common: &common,
            window: false,
        };
        let page = condition::<K>(parsed, &to)?;
        to.window = true;
        let window = condition::<K>(parsed, &to)?;
        Ok(Some(Conditions { page, window }))
    }

    /// `ORDER BY` terms: the keys, then the id in the last key's direction.
    pub fn order_terms<K: Kind>(&self) -> Vec<(SimpleExpr, Order)> {
        let mut terms: Vec<_> = self
            .order
            .iter()
            .map(|(key, direction)| (self.key_column::<K>(*key), direction.clone()))
            .collect();
        terms.push((col::<K>("id"), self.id_direction()));
        terms
    }

    /// The cursor after `record`: its id for the plain order, else its
    /// sort keys and id as a JSON array of strings.
    pub fn cursor<K: Kind>(&self, record: &Record<K::Spec>) -> String {
        if self.order.is_empty() {
            return record.id.clone();
        }
        let mut values: Vec<String> = self
            .order
            .iter()
            .map(|(key, _)| match key {
                Key::Name => K::name(&record.spec).to_owned(),
                Key::CreateTime => time_text(record.create_time),
                Key::UpdateTime => time_text(record.update_time),
            })
            .collect();
        values.push(record.id.clone());
        serde_json::to_string(&values).unwrap_or_default()
    }

    /// The condition of the rows strictly after `cursor` in this order
    /// (INVALID_ARGUMENT on `page_token` when it is not a cursor of it).
    pub fn after<K: Kind>(&self, cursor: &str) -> Result<SimpleExpr, Error> {
        let id = col::<K>("id");
        if self.order.is_empty() {
            return Ok(id.gt(cursor));
        }
        let invalid = || Error::bad_field("page_token", "is not a page token of this request");
        let values: Vec<String> = serde_json::from_str(cursor).map_err(|_| invalid())?;
        if values.len() != self.order.len() + 1 {
            return Err(invalid());
        }
        let bound = |key: Key, text: &str| -> Result<SimpleExpr, Error> {
            Ok(match key {
                Key::Name => self.text_value(text),
                Key::CreateTime | Key::UpdateTime => {
                    let time = DateTime::parse_from_rfc3339(text).map_err(|_| invalid())?;
                    val(time.with_timezone(&Utc))
                }
            })
        };
        // From the innermost term out: id beyond the last id, then each key
        // beyond its value, or equal to it and the terms inside.
        let beyond = |column: SimpleExpr, direction: &Order, value: SimpleExpr| match direction {
            Order::Desc => column.lt(value),
            _ => column.gt(value),
        };
        let (last_id, keys) = values.split_last().ok_or_else(invalid)?;
        let mut condition = beyond(id, &self.id_direction(), val(last_id.clone()));
        for ((key, direction), text) in self.order.iter().zip(keys).rev() {
            let column = self.key_column::<K>(*key);
            let value = bound(*key, text)?;
            condition = beyond(column.clone(), direction, value.clone())
                .or(column.eq(value).and(condition));
        }
        // The first key's bound once more, on its own: an index on it
        // starts its range scan there instead of at the first row.
        let (first, direction) = &self.order[0];
        let column = self.key_column::<K>(*first);
        let value = bound(*first, &keys[0])?;
        let from = match direction {
            Order::Desc => column.lte(value),
            _ => column.gte(value),
        };
        Ok(from.and(condition))
    }

    fn id_direction(&self) -> Order {
        self.order
            .last()
            .map_or(Order::Asc, |(_, direction)| direction.clone())
    }

    fn key_column<K: Kind>(&self, key: Key) -> SimpleExpr {
        match key {
            Key::Name => text_column(col::<K>(key.name()), self.backend),
            Key::CreateTime | Key::UpdateTime => col::<K>(key.name()),
        }
    }

    fn text_value(&self, text: &str) -> SimpleExpr {
        text_column(val(text.to_owned()), self.backend)
    }
}

/// A timestamp as a cursor keeps it: RFC 3339 in UTC, to the microsecond.
fn time_text(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Text compared in byte order on both databases.
pub(crate) fn text_column(expr: SimpleExpr, backend: DbBackend) -> SimpleExpr {
    match backend {
        DbBackend::Postgres => Expr::cust_with_expr(r#"$1 COLLATE "C""#, expr),
        _ => expr,
    }
}

/// Parses `order_by`: `key [asc|desc]`, comma-separated, at most
/// [`MAX_ORDER_KEYS`] keys, each once.
fn parse_order_by(text: &str) -> Result<Vec<(Key, Order)>, Error> {
    let refuse = |what: String| Error::bad_field("order_by", what);
    if text.len() > MAX_ORDER_BY_BYTES {
        return Err(refuse(format!(
            "must be at most {MAX_ORDER_BY_BYTES} bytes (got {})",
            text.len()
        )));
    }
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let known = || {
        Key::ALL
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut order: Vec<(Key, Order)> = Vec::new();
    for part in text.split(',') {
        if order.len() == MAX_ORDER_KEYS {
            return Err(refuse(format!(
                "names at most {MAX_ORDER_KEYS} keys (the id always follows them)"
            )));
        }
        let words: Vec<&str> = part.split_whitespace().take(3).collect();
        let (name, direction) = match words.as_slice() {
            [name] => (*name, Order::Asc),
            [name, "asc"] => (*name, Order::Asc),
            [name, "desc"] => (*name, Order::Desc),
            [] => return Err(refuse("has an empty key between commas".to_owned())),
            _ => {
                return Err(refuse(format!(
                    "{} is not `key`, `key asc` or `key desc`",
                    quote(part.trim())
                )));
            }
        };
        let key = Key::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                refuse(format!(
                    "cannot order by {}; keys: {}",
                    quote(name),
                    known()
                ))
            })?;
        if order.iter().any(|(k, _)| *k == key) {
            return Err(refuse(format!("names {} twice", key.name())));
        }
        order.push((key, direction));
    }
    Ok(order)
}

/// Where a condition applies: the caller's tenant (side tables are
/// searched within it, so their index leads) and the database.
struct Target<'a> {
    tenant: &'a str,
    backend: DbBackend,
    /// Memberships whose value has many owners (tested per row).
    common: &'a [Membership],
    /// Whether the condition tests a window's rows ([`Conditions::window`]).
    window: bool,
}

/// A filter's condition, as a page's query and count test it and as a
/// window's rows do: the same test, but a window must probe each of its
/// rows, and PostgreSQL left to plan a common membership's `EXISTS` turns
/// it into a join that may first read every owner of the value (by hand,
/// at 100,000 agents, a window of 2,000 rows hash-joined the 50,000
/// `agent_tools` rows of a common tool: 35 ms of the window's 43;
/// `bench/results/session18/window-explain.txt`). There the window's
/// `EXISTS` carries an `OFFSET 0`, which PostgreSQL never turns into a
/// join: one index probe per window row. The page's query keeps the
/// planner's choice: with the same `OFFSET`, a common tool's first page
/// took twice as long (BENCHMARKS.md, "A window probes each row on
/// PostgreSQL").
#[derive(Debug, Clone)]
pub struct Conditions {
    /// For the page's query and its count.
    pub page: SimpleExpr,
    /// For a window's rows.
    pub window: SimpleExpr,
}

/// When a side table holds at most this many owners of a value, a filter
/// on it lists them; with more, it tests each row (see
/// [`Search::conditions`]).
pub const FEW_OWNERS: u64 = 1000;

/// A membership a filter tests: the resource has a row in `table` whose
/// `owner` is its id and whose `column` is `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Membership {
    table: &'static str,
    owner: &'static str,
    column: &'static str,
    scope: Option<(&'static str, &'static str)>,
    value: String,
}

impl Membership {
    /// Whether more than `few` resources of `tenant` have it (counts at
    /// most `few + 1` index entries).
    async fn owners_beyond(
        &self,
        db: &impl ConnectionTrait,
        tenant: &str,
        few: u64,
    ) -> Result<bool, Error> {
        let table = Alias::new(self.table);
        let found = Query::select()
            .expr(Expr::val(1))
            .from(table.clone())
            .and_where(Expr::col((table, Alias::new("tenant_id"))).eq(tenant))
            .and_where(self.value_condition())
            .limit(few + 1)
            .to_owned();
        let count = Query::select()
            .expr_as(Expr::cust("COUNT(*)"), Alias::new("owners"))
            .from_subquery(found, Alias::new("found"))
            .to_owned();
        let statement = db.get_database_backend().build(&count);
        let row = db.query_one_raw(statement).await.map_err(db_error)?;
        let owners: i64 = match row {
            Some(row) => row.try_get("", "owners").map_err(db_error)?,
            None => 0,
        };
        Ok(u64::try_from(owners).unwrap_or(0) > few)
    }

    /// `id IN (<the owners>)` or, when `per_row`, `EXISTS (<this row's
    /// membership>)` (on PostgreSQL, for a window, with `OFFSET 0`: see
    /// [`Conditions`]).
    fn condition<K: Kind>(&self, to: &Target<'_>, per_row: bool) -> SimpleExpr {
        let table = Alias::new(self.table);
        let column = |name: &str| Expr::col((table.clone(), Alias::new(name)));
        let value = self.value_condition();
        if per_row {
            let mut this_row = Query::select()
                .expr(Expr::val(1))
                .from(table.clone())
                .and_where(column(self.owner).equals((K::Entity::default(), Alias::new("id"))))
                .and_where(value)
                .to_owned();
            if to.window && to.backend == DbBackend::Postgres {
                this_row.offset(0);
            }
            Expr::exists(this_row)
        } else {
            let owners = Query::select()
                .column((table.clone(), Alias::new(self.owner)))
                .from(table.clone())
                .and_where(column("tenant_id").eq(to.tenant))
                .and_where(value)
                .to_owned();
            col::<K>("id").in_subquery(owners)
        }
    }

    /// The side table's rows of this value (and of this kind, for a table
    /// that serves several).
    fn value_condition(&self) -> SimpleExpr {
        let column = |name: &str| Expr::col((Alias::new(self.table), Alias::new(name)));
        let value = column(self.column).eq(self.value.as_str());
        match self.scope {
            Some((kind_column, kind)) => column(kind_column).eq(kind).and(value),
            None => value,
        }
    }
}

/// Every membership `filter` tests, each once (the filter is checked).
fn memberships_of<K: Kind>(filter: &Filter, found: &mut Vec<Membership>) {
    match filter {
        Filter::All(items) | Filter::Any(items) => {
            for item in items {
                memberships_of::<K>(item, found);
            }
        }
        Filter::Not(inner) => memberships_of::<K>(inner, found),
        Filter::Compare(c) => {
            let field = K::FILTER_FIELDS.iter().find(|f| f.name == c.field);
            if let Some(Field {
                column:
                    Column::Has {
                        table,
                        owner,
                        value,
                        scope,
                        implicit,
                    },
                ..
            }) = field
            {
                if *implicit == Some(c.value.text.as_str()) {
                    return;
                }
                let membership = Membership {
                    table,
                    owner,
                    column: value,
                    scope: *scope,
                    value: c.value.text.clone(),
                };
                if !found.contains(&membership) {
                    found.push(membership);
                }
            }
        }
    }
}

/// The condition `filter` puts on kind `K`'s rows.
fn condition<K: Kind>(filter: &Filter, to: &Target<'_>) -> Result<SimpleExpr, Error> {
    // Recursion follows the filter's nesting, which `filter::parse`
    // bounds (parentheses, at most one negation each).
    let join = |items: &[Filter], and: bool| -> Result<SimpleExpr, Error> {
        let mut joined: Option<SimpleExpr> = None;
        for item in items {
            let next = condition::<K>(item, to)?;
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
        Filter::Not(inner) => Ok(condition::<K>(inner, to)?.not()),
        Filter::Compare(comparison) => compare::<K>(comparison, to),
    }
}

/// One comparison as a condition that is never NULL.
fn compare<K: Kind>(c: &Comparison, to: &Target<'_>) -> Result<SimpleExpr, Error> {
    let backend = to.backend;
    let field = K::FILTER_FIELDS
        .iter()
        .find(|f| f.name == c.field)
        .ok_or_else(|| {
            let known: Vec<&str> = K::FILTER_FIELDS.iter().map(|f| f.name).collect();
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
    if c.alone && !matches!(field.column, Column::Bool(_) | Column::IsSet(_)) {
        // Only a boolean field stands alone (`deleted`).
        return Err(filter::invalid(
            value.at,
            format!(
                "expected a comparator (=, !=, <, <=, >, >= or :) after {}",
                quote(&c.field)
            ),
        ));
    }
    let takes = |ops: &str| {
        filter::invalid(
            c.at,
            format!("{} takes {ops} (not '{}')", field.name, c.op.as_str()),
        )
    };
    let exact = || -> Result<&str, Error> {
        if value.prefix {
            Err(filter::invalid(
                value.at,
                format!("{} takes a whole value, not a prefix ('*')", field.name),
            ))
        } else {
            Ok(&value.text)
        }
    };
    let ordering = "=, !=, <, <=, > or >=";
    match field.column {
        Column::Text(name) => {
            let column = text_column(col::<K>(name), backend);
            let bound = |text: &str| text_column(val(text.to_owned()), backend);
            if value.prefix {
                return match c.op {
                    Op::Eq => Ok(prefix(column, &value.text, bound)),
                    Op::Ne => Ok(prefix(column, &value.text, bound).not()),
                    _ => Err(filter::invalid(
                        value.at,
                        "a prefix ('*') goes with = or != only",
                    )),
                };
            }
            let text = bound(&value.text);
            ordered(column, c.op, text).ok_or_else(|| takes(ordering))
        }
        Column::Time(name) => {
            let text = exact()?;
            let time = DateTime::parse_from_rfc3339(text).map_err(|_| {
                filter::invalid(
                    value.at,
                    format!(
                        "{} takes an RFC 3339 time such as 2026-12-07T10:00:00Z (got {})",
                        field.name,
                        quote(text)
                    ),
                )
            })?;
            let time = val(time.with_timezone(&Utc));
            ordered(col::<K>(name), c.op, time).ok_or_else(|| takes(ordering))
        }
        Column::Reference(name) => {
            let text = exact()?;
            let column = col::<K>(name);
            let equal = if text.is_empty() {
                column.is_null()
            } else {
                column.clone().is_not_null().and(column.eq(text))
            };
            match c.op {
                Op::Eq => Ok(equal),
                Op::Ne => Ok(equal.not()),
                _ => Err(takes("= or !=")),
            }
        }
        Column::Bool(name) | Column::IsSet(name) => {
            let flag = match exact()? {
                "true" => true,
                "false" => false,
                other => {
                    return Err(filter::invalid(
                        value.at,
                        format!("{} takes true or false (got {})", field.name, quote(other)),
                    ));
                }
            };
            let equal = match field.column {
                Column::IsSet(_) if flag => col::<K>(name).is_not_null(),
                Column::IsSet(_) => col::<K>(name).is_null(),
                _ => col::<K>(name).eq(flag),
            };
            match c.op {
                Op::Eq => Ok(equal),
                Op::Ne => Ok(equal.not()),
                _ => Err(takes("= or !=")),
            }
        }
        Column::Choice {
            column,
            prefix,
            values,
        } => {
            let text = exact()?;
            let stored = text.strip_prefix(prefix).unwrap_or(text);
            let stored = values.iter().find(|v| **v == stored).ok_or_else(|| {
                filter::invalid(
                    value.at,
                    format!(
                        "{} is not a {}; values: {}",
                        quote(text),
                        field.name,
                        values.join(", ")
                    ),
                )
            })?;
            let equal = col::<K>(column).eq(*stored);
            match c.op {
                Op::Eq => Ok(equal),
                Op::Ne => Ok(equal.not()),
                _ => Err(takes("= or !=")),
            }
        }
        Column::Has {
            table,
            owner,
            value: member,
            scope,
            implicit,
        } => {
            let text = exact()?;
            if !matches!(c.op, Op::Has | Op::Eq) {
                return Err(takes(": or = (has; negate with NOT)"));
            }
            if implicit == Some(text) {
                // Every resource has it: true, as a comparison that is
                // never NULL.
                return Ok(Expr::val(1).eq(1));
            }
            let membership = Membership {
                table,
                owner,
                column: member,
                scope,
                value: text.to_owned(),
            };
            let per_row = to.common.contains(&membership);
            Ok(membership.condition::<K>(to, per_row))
        }
    }
}

/// `column <op> value` for a comparator that orders; `None` for `:`.
pub(crate) fn ordered(column: SimpleExpr, op: Op, value: SimpleExpr) -> Option<SimpleExpr> {
    Some(match op {
        Op::Eq => column.eq(value),
        Op::Ne => column.ne(value),
        Op::Lt => column.lt(value),
        Op::Le => column.lte(value),
        Op::Gt => column.gt(value),
        Op::Ge => column.gte(value),
        Op::Has => return None,
    })
}

/// `column` starts with `stem`: a range `[stem, successor)` in byte order,
/// which an index on the column serves.
pub(crate) fn prefix(
    column: SimpleExpr,
    stem: &str,
    bound: impl Fn(&str) -> SimpleExpr,
) -> SimpleExpr {
    let from = column.clone().gte(bound(stem));
    match successor(stem) {
        Some(upper) => from.and(column.lt(bound(&upper))),
        None => from,
    }
}

/// The least string above every string that starts with `stem` (in code
/// point order, which is UTF-8's byte order); `None` when there is none.
fn successor(stem: &str) -> Option<String> {
    let mut chars: Vec<char> = stem.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match u32::from(last) + 1 {
            0xD800 => Some('\u{E000}'),
            code => char::from_u32(code),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_successor_bounds_every_string_with_the_prefix() {
        assert_eq!(successor("abc").as_deref(), Some("abd"));
        assert_eq!(successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(successor(""), None);
        assert_eq!(successor("\u{10FFFF}"), None);
        for inside in ["abc", "abc\u{10FFFE}", "abcz", "abc\u{1F600}"] {
            assert!(("abc".."abd").contains(&inside), "{inside}");
        }
    }

    #[test]
    fn order_by_takes_at_most_two_known_keys_each_once() {
        let keys = |text: &str| parse_order_by(text).map_err(|e| e.to_string());
        assert_eq!(keys("").ok(), Some(vec![]));
        assert_eq!(
            keys(" update_time desc ,name").ok(),
            Some(vec![
                (Key::UpdateTime, Order::Desc),
                (Key::Name, Order::Asc)
            ])
        );
        assert_eq!(
            keys("create_time asc").ok(),
            Some(vec![(Key::CreateTime, Order::Asc)])
        );
        for bad in [
            "id",
            "name DESC",
            "name desc extra",
            "name,",
            "name, name desc",
            "name, create_time, update_time",
        ] {
            assert!(keys(bad).is_err(), "{bad}");
        }
        assert!(keys(&"name ".repeat(40)).is_err());
    }
}
