//! The change log (`changes`): what `WatchChanges` streams. Version rows
//! record their change by a trigger in the database (migration
//! `m20261207_000003_change_log`; the change's action is the version's, so
//! a soft delete and an undelete are logged as DELETE and UNDELETE); the
//! writes that append no version row (a purge, a label move) record theirs here, with [`record`], as the
//! last statement of their transaction: it locks the tenant's revision
//! row until the commit, and no writer takes a lock after that one.

use chrono::{DateTime, Utc};
use migrations::entity::{change, tenant_revision};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query, SimpleExpr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::{db_error, val};
use crate::error::Error;

/// The kinds of resource a change names, as the log stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Agent,
    Provider,
}

impl ResourceKind {
    /// As stored in `changes.kind`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "AGENT",
            Self::Provider => "PROVIDER",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "AGENT" => Some(Self::Agent),
            "PROVIDER" => Some(Self::Provider),
            _ => None,
        }
    }
}

/// What a change did, as the log stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeAction {
    /// Version 1 written.
    Create,
    /// A new version from an update.
    Update,
    /// A new version restoring an earlier one.
    Rollback,
    /// The resource deleted (soft delete: its DELETE version written).
    Delete,
    /// A label set or moved.
    LabelSet,
    /// A label deleted.
    LabelDelete,
    /// A deleted resource restored (its UNDELETE version written).
    Undelete,
    /// A deleted resource removed for good, with its history.
    Purge,
}

impl ChangeAction {
    /// As stored in `changes.action`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Rollback => "ROLLBACK",
            Self::Delete => "DELETE",
            Self::LabelSet => "LABEL_SET",
            Self::LabelDelete => "LABEL_DELETE",
            Self::Undelete => "UNDELETE",
            Self::Purge => "PURGE",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            Self::Create,
            Self::Update,
            Self::Rollback,
            Self::Delete,
            Self::LabelSet,
            Self::LabelDelete,
            Self::Undelete,
            Self::Purge,
        ]
        .into_iter()
        .find(|action| action.as_str() == text)
    }
}

/// One committed change of a tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    /// The tenant's revision of this change (1, 2, 3 … with no gap).
    pub revision: i64,
    pub kind: ResourceKind,
    pub resource_id: String,
    /// The version written; a delete's last version; the version a label
    /// names now (0 when deleted).
    pub version_number: i64,
    /// The label, for label changes.
    pub label: Option<String>,
    pub action: ChangeAction,
    pub commit_time: DateTime<Utc>,
    pub changed_by: String,
}

/// A change to record with [`record`] (its revision is the tenant's next).
#[derive(Debug)]
pub struct NewChange<'a> {
    pub tenant: &'a str,
    pub kind: ResourceKind,
    pub resource_id: &'a str,
    pub version_number: i64,
    pub label: Option<&'a str>,
    pub action: ChangeAction,
    pub changed_by: &'a str,
}

/// Appends `change` with the tenant's next revision, inside `txn`. Call it
/// as the transaction's last write (see the module documentation).
pub async fn record(txn: &DatabaseTransaction, change: NewChange<'_>) -> Result<(), Error> {
    let bump = Query::insert()
        .into_table(tenant_revision::Entity)
        .columns([
            tenant_revision::Column::TenantId,
            tenant_revision::Column::Revision,
        ])
        .values_panic([val(change.tenant.to_owned()), val(1_i64)])
        .on_conflict(
            OnConflict::column(tenant_revision::Column::TenantId)
                .value(
                    tenant_revision::Column::Revision,
                    Expr::col((tenant_revision::Entity, tenant_revision::Column::Revision)).add(1),
                )
                .to_owned(),
        )
        .to_owned();
    txn.execute(&bump).await.map_err(db_error)?;
    let values = Query::select()
        .exprs([
            val(change.tenant.to_owned()),
            Expr::col(tenant_revision::Column::Revision),
            val(change.kind.as_str()),
            val(change.resource_id.to_owned()),
            val(change.version_number),
            val(change.label.map(str::to_owned)),
            val(change.action.as_str()),
            val(super::now()),
            val(change.changed_by.to_owned()),
        ])
        .from(tenant_revision::Entity)
        .and_where(tenant_revision::Column::TenantId.eq(change.tenant))
        .to_owned();
    let insert = Query::insert()
        .into_table(change::Entity)
        .columns([
            change::Column::TenantId,
            change::Column::Revision,
            change::Column::Kind,
            change::Column::ResourceId,
            change::Column::VersionNumber,
            change::Column::Label,
            change::Column::Action,
            change::Column::CommitTime,
            change::Column::ChangedBy,
        ])
        .select_from(values)
        .map_err(|e| Error::Internal(format!("change log insert: {e}")))?
        .to_owned();
    txn.execute(&insert).await.map_err(db_error)?;
    Ok(())
}

/// The tenant's changes after revision `after`, oldest first, at most
/// `limit`.
pub async fn after(
    db: &impl ConnectionTrait,
    tenant: &str,
    after: i64,
    limit: u64,
) -> Result<Vec<ChangeRecord>, Error> {
    let rows = change::Entity::find()
        .filter(change::Column::TenantId.eq(tenant))
        .filter(change::Column::Revision.gt(after))
        .order_by_asc(change::Column::Revision)
        .limit(limit)
        .all(db)
        .await
        .map_err(db_error)?;
    rows.into_iter().map(from_row).collect()
}

fn from_row(row: change::Model) -> Result<ChangeRecord, Error> {
    let unknown = |what: &str, value: &str| {
        Error::Internal(format!("change log row with unknown {what} {value:?}"))
    };
    Ok(ChangeRecord {
        revision: row.revision,
        kind: ResourceKind::parse(&row.kind).ok_or_else(|| unknown("kind", &row.kind))?,
        action: ChangeAction::parse(&row.action).ok_or_else(|| unknown("action", &row.action))?,
        resource_id: row.resource_id,
        version_number: row.version_number,
        label: row.label,
        commit_time: row.commit_time,
        changed_by: row.changed_by,
    })
}

/// The tenant's last revision (0 before its first change).
pub async fn current(db: &impl ConnectionTrait, tenant: &str) -> Result<i64, Error> {
    let row = tenant_revision::Entity::find()
        .filter(tenant_revision::Column::TenantId.eq(tenant))
        .all(db)
        .await
        .map_err(db_error)?;
    Ok(row.first().map_or(0, |row| row.revision))
}

/// The tenant's oldest revision still kept, if any.
pub async fn oldest(db: &impl ConnectionTrait, tenant: &str) -> Result<Option<i64>, Error> {
    let row = change::Entity::find()
        .filter(change::Column::TenantId.eq(tenant))
        .order_by_asc(change::Column::Revision)
        .limit(1)
        .all(db)
        .await
        .map_err(db_error)?;
    Ok(row.first().map(|row| row.revision))
}

/// Deletes every tenant's changes older than its last `keep` revisions;
/// answers how many went.
pub async fn compact(db: &impl ConnectionTrait, keep: i64) -> Result<u64, Error> {
    let newest = Query::select()
        .expr(Expr::col((tenant_revision::Entity, tenant_revision::Column::Revision)).sub(keep))
        .from(tenant_revision::Entity)
        .and_where(
            Expr::col((tenant_revision::Entity, tenant_revision::Column::TenantId))
                .equals((change::Entity, change::Column::TenantId)),
        )
        .to_owned();
    let deleted = change::Entity::delete_many()
        .filter(
            Expr::col((change::Entity, change::Column::Revision))
                .lte(SimpleExpr::SubQuery(None, Box::new(newest.into()))),
        )
        .exec(db)
        .await
        .map_err(db_error)?;
    Ok(deleted.rows_affected)
}

/// Where a tenant's changes are known: the tenants whose change log grew
/// since the watch feed last looked (and a wake-up for it), and each
/// tenant's *generation*, a number that moves whenever a change of the
/// tenant becomes known here — what a cached answer about the tenant
/// (ResolveAgent's `not_modified`) is checked against. The versioned core
/// raises it after every commit through this process
/// ([`ChangeSignal::raise`]); the watch feed after each PostgreSQL
/// notification of any replica's commit. Bounded: past
/// [`MAX_PENDING_TENANTS`] tenants it keeps only "every tenant" (and every
/// generation moves).
#[derive(Debug, Default)]
pub struct ChangeSignal {
    state: std::sync::Mutex<SignalState>,
    wake: tokio::sync::Notify,
}

/// Most tenants a [`ChangeSignal`] names (pending, or with a generation of
/// their own) before it says "all".
pub const MAX_PENDING_TENANTS: usize = 4096;

/// What the feed has to look at.
#[derive(Debug, Default)]
pub struct Pending {
    /// Tenants written since the last [`ChangeSignal::take`].
    pub tenants: std::collections::HashSet<String>,
    /// More than [`MAX_PENDING_TENANTS`] were, or notifications were lost:
    /// look at every tenant.
    pub all: bool,
}

#[derive(Debug, Default)]
struct SignalState {
    pending: Pending,
    /// Moves by one at every raise.
    counter: u64,
    /// The counter at each tenant's last raise.
    generations: std::collections::HashMap<String, u64>,
    /// The generation of a tenant not in `generations`: the counter when
    /// that map was last cleared.
    floor: u64,
}

impl ChangeSignal {
    fn state(&self) -> std::sync::MutexGuard<'_, SignalState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Says that `tenant`'s change log grew (or may have).
    pub fn raise(&self, tenant: &str) {
        {
            let mut state = self.state();
            state.counter += 1;
            let counter = state.counter;
            // A tenant seen before is updated in place: no key allocated on
            // every write.
            if let Some(generation) = state.generations.get_mut(tenant) {
                *generation = counter;
            } else if state.generations.len() >= MAX_PENDING_TENANTS {
                state.generations.clear();
                state.floor = counter;
            } else {
                state.generations.insert(tenant.to_owned(), counter);
            }
            let pending = &mut state.pending;
            if !pending.all && !pending.tenants.contains(tenant) {
                if pending.tenants.len() < MAX_PENDING_TENANTS {
                    pending.tenants.insert(tenant.to_owned());
                } else {
                    pending.tenants.clear();
                    pending.all = true;
                }
            }
        }
        self.wake.notify_one();
    }

    /// Says that every tenant's change log may have grown (notifications
    /// were lost): every generation moves.
    pub fn raise_all(&self) {
        {
            let mut state = self.state();
            state.counter += 1;
            state.floor = state.counter;
            state.generations.clear();
            state.pending.tenants.clear();
            state.pending.all = true;
        }
        self.wake.notify_one();
    }

    /// `tenant`'s generation now. Read it *before* reading what a cached
    /// answer is made of: the answer is current while it stays the same.
    pub fn generation(&self, tenant: &str) -> u64 {
        let state = self.state();
        state
            .generations
            .get(tenant)
            .copied()
            .unwrap_or(state.floor)
    }

    /// Takes what was raised since the last call.
    pub fn take(&self) -> Pending {
        std::mem::take(&mut self.state().pending)
    }

    /// Waits until something is raised (at once when something was raised
    /// since the last wait).
    pub async fn raised(&self) {
        self.wake.notified().await;
    }
}
