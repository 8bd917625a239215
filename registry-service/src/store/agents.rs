//! Agents and their versions in the database.

use chrono::{DateTime, Utc};
use migrations::entity::{agent, agent_version, provider};
use sea_orm::sea_query::{Expr, Query, SimpleExpr, UpdateStatement};
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    FromQueryResult, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::providers::ProviderRecord;
use super::{
    MAX_WRITE_ATTEMPTS, Page, Store, VersionRecord, begin_write, db_error, foreign_key_violation,
    insert_row, json_val, paginate, stale_etag, unique_violation, val, write_with_version,
};
use crate::caller::Caller;
use crate::error::Error;
use crate::model::agent::AgentSpec;
use crate::model::version::{self, Action};

/// An agent as stored now.
#[derive(Debug, Clone)]
pub struct AgentRecord {
    pub id: String,
    pub spec: AgentSpec,
    pub version: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

impl AgentRecord {
    fn from_row(row: agent::Model) -> Result<Self, Error> {
        Ok(Self {
            spec: AgentSpec::from_json(&row.config)?,
            id: row.id,
            version: row.version,
            create_time: row.create_time,
            update_time: row.update_time,
            created_by: row.created_by,
            updated_by: row.updated_by,
        })
    }
}

/// Who writes a version, and why.
#[derive(Debug)]
pub struct Write<'a> {
    pub caller: &'a Caller,
    pub action: Action,
    pub description: String,
}

/// Creates an agent and its version 1.
pub async fn create(
    store: &Store,
    write: Write<'_>,
    spec: AgentSpec,
) -> Result<AgentRecord, Error> {
    let now = super::now();
    let record = AgentRecord {
        id: uuid::Uuid::now_v7().to_string(),
        spec,
        version: 1,
        create_time: now,
        update_time: now,
        created_by: write.caller.subject.clone(),
        updated_by: write.caller.subject.clone(),
    };
    let backend = store.get_database_backend();
    let config = json_val(backend, &record.spec.to_json());
    let row = agent_row(&write, &record, config.clone());
    let diff = json_val(backend, &version::changes_to_json(&[]));
    let version = version_row(&write, &record, config, diff);
    let record = create_with_version(store, &write, record, row, version).await?;
    store
        .recent_agents()
        .remember(&write.caller.tenant, &record);
    Ok(record)
}

/// `INSERT INTO agents … SELECT … WHERE <the assigned provider is in the
/// tenant>` and version 1, written together ([`write_with_version`]).
async fn create_with_version(
    store: &Store,
    write: &Write<'_>,
    record: AgentRecord,
    row: Vec<(agent::Column, SimpleExpr)>,
    version: Vec<(agent_version::Column, SimpleExpr)>,
) -> Result<AgentRecord, Error> {
    let (columns, values): (Vec<_>, Vec<_>) = row.into_iter().unzip();
    let mut select = Query::select();
    select.exprs(values);
    if let Some(provider_id) = &record.spec.llm_provider_id {
        select.and_where(Expr::exists(
            Query::select()
                .expr(Expr::val(1))
                .from(provider::Entity)
                .and_where(provider::Column::Id.eq(provider_id.clone()))
                .and_where(provider::Column::TenantId.eq(write.caller.tenant.clone()))
                .to_owned(),
        ));
    }
    let mut insert = Query::insert();
    insert
        .into_table(agent::Entity)
        .columns(columns)
        .select_from(select)
        .map_err(|e| Error::Internal(format!("agent insert: {e}")))?
        .returning_col(agent::Column::Id);
    let written = write_with_version(store, insert, agent_version::Entity, version)
        .await
        .map_err(|e| write_error(e, &record.spec))?;
    match (&record.spec.llm_provider_id, written) {
        (_, true) => Ok(record),
        (Some(provider_id), false) => Err(provider_not_found(provider_id)),
        (None, false) => Err(Error::Internal("agent insert wrote no row".to_owned())),
    }
}

/// The `agents` row of a new agent.
fn agent_row(
    write: &Write<'_>,
    record: &AgentRecord,
    config: SimpleExpr,
) -> Vec<(agent::Column, SimpleExpr)> {
    use agent::Column;
    vec![
        (Column::Id, val(record.id.clone())),
        (Column::TenantId, val(write.caller.tenant.clone())),
        (Column::Name, val(record.spec.name.clone())),
        (
            Column::LlmProviderId,
            val(record.spec.llm_provider_id.clone()),
        ),
        (Column::Config, config),
        (Column::Version, val(record.version)),
        (Column::CreateTime, val(record.create_time)),
        (Column::UpdateTime, val(record.update_time)),
        (Column::CreatedBy, val(record.created_by.clone())),
        (Column::UpdatedBy, val(record.updated_by.clone())),
    ]
}

/// The agent `id` of `tenant`.
pub async fn get(db: &impl ConnectionTrait, tenant: &str, id: &str) -> Result<AgentRecord, Error> {
    let row = agent::Entity::find_by_id(id.to_owned())
        .filter(agent::Column::TenantId.eq(tenant))
        .all(db)
        .await
        .map_err(db_error)?
        .into_iter()
        .next()
        .ok_or_else(|| not_found(id))?;
    AgentRecord::from_row(row)
}

/// The agent `id` of `tenant` and its assigned provider, in one query
/// (`None` when it has no provider: the caller falls back to the tenant's
/// default).
pub async fn get_with_provider(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
) -> Result<(AgentRecord, Option<ProviderRecord>), Error> {
    let (row, provider) = agent::Entity::find_by_id(id.to_owned())
        .filter(agent::Column::TenantId.eq(tenant))
        .find_also_related(provider::Entity)
        .all(db)
        .await
        .map_err(db_error)?
        .into_iter()
        .next()
        .ok_or_else(|| not_found(id))?;
    // Assignments are checked against the tenant when made; this keeps a
    // foreign row out even so.
    let provider = provider
        .filter(|p| p.tenant_id == tenant)
        .map(ProviderRecord::from_row)
        .transpose()?;
    Ok((AgentRecord::from_row(row)?, provider))
}

/// One page of the tenant's agents, oldest first.
pub async fn list(
    db: &impl ConnectionTrait,
    tenant: &str,
    after: Option<String>,
    limit: u64,
) -> Result<Page<AgentRecord>, Error> {
    let scoped = agent::Entity::find().filter(agent::Column::TenantId.eq(tenant));
    let total = scoped.clone().count(db).await.map_err(db_error)?;
    let mut query = scoped.order_by_asc(agent::Column::Id).limit(limit + 1);
    if let Some(after) = after {
        query = query.filter(agent::Column::Id.gt(after));
    }
    let rows = query.all(db).await.map_err(db_error)?;
    let records = rows
        .into_iter()
        .map(AgentRecord::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(paginate(records, limit, |r| r.id.clone(), total_i64(total)))
}

/// Changes an agent with `change`, appending a version unless nothing
/// changed (rollbacks always append); a stale etag (`expected_version`)
/// answers ABORTED. The first attempt starts from the agent as this
/// process last wrote it ([`super::recent`]), or else reads the row, then
/// writes the change and its version together ([`write_with_version`]; the
/// common case: nobody else is writing this agent). After losing that race,
/// or when the assignment changes, the current row is read inside the write
/// transaction, locked (`FOR UPDATE` on PostgreSQL; SQLite's write
/// transaction is IMMEDIATE), so concurrent writers queue instead of
/// failing.
pub async fn update(
    store: &Store,
    write: Write<'_>,
    id: &str,
    expected_version: Option<i64>,
    change: impl Fn(&AgentRecord) -> Result<AgentSpec, Error>,
) -> Result<AgentRecord, Error> {
    let tenant = &write.caller.tenant;
    let recent = store.recent_agents();
    let guess = recent.get(tenant, id);
    if let Some(guess) = &guess
        && usable(guess, expected_version)
        && let Ok(spec) = change(guess)
        && (spec != guess.spec || write.action != Action::Update)
        && let Some(record) = write_optimistically(store, &write, guess, spec).await?
    {
        recent.written_from_guess(tenant, &record);
        return Ok(record);
    }
    recent.reading_the_row(guess.is_some());
    let outcome = update_from_the_row(store, &write, id, expected_version, change).await;
    recent.settle(tenant, id, outcome)
}

/// Whether a guess can start a write for a caller who expects
/// `expected_version`: one that names another version is checked against
/// the row instead.
fn usable(guess: &AgentRecord, expected_version: Option<i64>) -> bool {
    expected_version.is_none_or(|expected| expected == guess.version)
}

/// [`update`] from the row as read now.
async fn update_from_the_row(
    store: &Store,
    write: &Write<'_>,
    id: &str,
    expected_version: Option<i64>,
    change: impl Fn(&AgentRecord) -> Result<AgentSpec, Error>,
) -> Result<AgentRecord, Error> {
    let current = get(store, &write.caller.tenant, id).await?;
    check_etag(expected_version, &current)?;
    let spec = change(&current)?;
    if spec == current.spec && write.action == Action::Update {
        return Ok(current);
    }
    if let Some(record) = write_optimistically(store, write, &current, spec).await? {
        return Ok(record);
    }
    // Another writer got there first, or the assignment changes: the
    // locking path below queues behind the write lock and checks it.
    for _ in 0..MAX_WRITE_ATTEMPTS {
        let txn = begin_write(store.pool()).await?;
        let current = get_locked(&txn, &write.caller.tenant, id).await?;
        check_etag(expected_version, &current)?;
        let spec = change(&current)?;
        if spec == current.spec && write.action == Action::Update {
            return Ok(current);
        }
        if let Some(record) = write_next_version(&txn, write, &current, spec).await? {
            txn.commit().await.map_err(db_error)?;
            return Ok(record);
        }
    }
    Err(too_many_writers())
}

fn too_many_writers() -> Error {
    Error::Aborted("too many concurrent writers on this agent; try again".to_owned())
}

/// Rolls agent `id` back to its version `number`: a new version whose
/// configuration is that snapshot. Written like [`update`]: first from the
/// agent as this process last wrote it and the snapshot, or else after one
/// read of the agent and the snapshot together; after losing the race, the
/// snapshot is read again inside the locking write transaction.
pub async fn rollback(
    store: &Store,
    write: Write<'_>,
    id: &str,
    number: i64,
    expected_version: Option<i64>,
) -> Result<AgentRecord, Error> {
    let tenant = &write.caller.tenant;
    let recent = store.recent_agents();
    let guess = recent.get(tenant, id);
    if let Some(guess) = &guess
        && usable(guess, expected_version)
    {
        let target = get_version(store, tenant, id, number)
            .await
            .inspect_err(|error| recent.forget_if_gone(id, error))?;
        let spec = AgentSpec::from_json(&target.configuration)?;
        if let Some(record) = write_optimistically(store, &write, guess, spec).await? {
            recent.written_from_guess(tenant, &record);
            return Ok(record);
        }
    }
    recent.reading_the_row(guess.is_some());
    let outcome = rollback_from_the_row(store, &write, id, number, expected_version).await;
    recent.settle(tenant, id, outcome)
}

/// [`rollback`] from the row as read now.
async fn rollback_from_the_row(
    store: &Store,
    write: &Write<'_>,
    id: &str,
    number: i64,
    expected_version: Option<i64>,
) -> Result<AgentRecord, Error> {
    let (current, target) = get_with_version(store, &write.caller.tenant, id, number).await?;
    check_etag(expected_version, &current)?;
    let spec = AgentSpec::from_json(&target.configuration)?;
    if let Some(record) = write_optimistically(store, write, &current, spec).await? {
        return Ok(record);
    }
    for _ in 0..MAX_WRITE_ATTEMPTS {
        let txn = begin_write(store.pool()).await?;
        let current = get_locked(&txn, &write.caller.tenant, id).await?;
        let target = get_version(&txn, &write.caller.tenant, id, number).await?;
        check_etag(expected_version, &current)?;
        let spec = AgentSpec::from_json(&target.configuration)?;
        if let Some(record) = write_next_version(&txn, write, &current, spec).await? {
            txn.commit().await.map_err(db_error)?;
            return Ok(record);
        }
    }
    Err(too_many_writers())
}

/// The agent `id` of `tenant` and its version `number`, in one query.
async fn get_with_version(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
    number: i64,
) -> Result<(AgentRecord, VersionRecord), Error> {
    let found = agent::Entity::find_by_id(id.to_owned())
        .filter(agent::Column::TenantId.eq(tenant))
        .find_also_related(agent_version::Entity)
        .filter(agent_version::Column::VersionNumber.eq(number))
        .all(db)
        .await
        .map_err(db_error)?
        .into_iter()
        .next();
    match found {
        Some((row, Some(version))) => Ok((AgentRecord::from_row(row)?, version_record(version))),
        // No such agent or no such version: the separate lookups tell which.
        _ => {
            let version = get_version(db, tenant, id, number).await?;
            Ok((get(db, tenant, id).await?, version))
        }
    }
}

/// ABORTED when the caller's etag names another version than the current.
fn check_etag(expected_version: Option<i64>, current: &AgentRecord) -> Result<(), Error> {
    match expected_version {
        Some(expected) if expected != current.version => Err(stale_etag("agent", current.version)),
        _ => Ok(()),
    }
}

async fn get_locked(
    txn: &DatabaseTransaction,
    tenant: &str,
    id: &str,
) -> Result<AgentRecord, Error> {
    let row = agent::Entity::find_by_id(id.to_owned())
        .filter(agent::Column::TenantId.eq(tenant))
        .lock_exclusive()
        .all(txn)
        .await
        .map_err(db_error)?
        .into_iter()
        .next()
        .ok_or_else(|| not_found(id))?;
    AgentRecord::from_row(row)
}

/// Deletes an agent (its versions go with it).
pub async fn delete(
    store: &Store,
    tenant: &str,
    id: &str,
    expected_version: Option<i64>,
) -> Result<(), Error> {
    let mut query = agent::Entity::delete_many()
        .filter(agent::Column::Id.eq(id))
        .filter(agent::Column::TenantId.eq(tenant));
    if let Some(expected) = expected_version {
        query = query.filter(agent::Column::Version.eq(expected));
    }
    let txn = begin_write(store.pool()).await?;
    let deleted = query.exec(&txn).await.map_err(db_error)?.rows_affected;
    if deleted == 0 {
        let current = agent::Entity::find_by_id(id.to_owned())
            .filter(agent::Column::TenantId.eq(tenant))
            .one(&txn)
            .await
            .map_err(db_error)?;
        txn.rollback().await.map_err(db_error)?;
        return Err(match current {
            Some(row) => stale_etag("agent", row.version),
            None => not_found(id),
        });
    }
    txn.commit().await.map_err(db_error)?;
    store.recent_agents().forget(id);
    Ok(())
}

/// One page of an agent's versions, newest first, in one query: the
/// agent's current version (the total) comes with each row through a join
/// that also scopes the versions to the caller's tenant.
pub async fn list_versions(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
    before: Option<i64>,
    limit: u64,
) -> Result<Page<VersionRecord>, Error> {
    let mut query = agent_version::Entity::find()
        .select_only()
        .columns([
            agent_version::Column::VersionNumber,
            agent_version::Column::Action,
            agent_version::Column::Configuration,
            agent_version::Column::Diff,
            agent_version::Column::ChangeDescription,
            agent_version::Column::ChangedBy,
            agent_version::Column::CreateTime,
        ])
        .column_as(agent::Column::Version, "current_version")
        .inner_join(agent::Entity)
        .filter(agent_version::Column::AgentId.eq(id))
        .filter(agent::Column::TenantId.eq(tenant))
        .order_by_desc(agent_version::Column::VersionNumber)
        .limit(limit + 1);
    if let Some(before) = before {
        query = query.filter(agent_version::Column::VersionNumber.lt(before));
    }
    let rows = query
        .into_model::<VersionRow>()
        .all(db)
        .await
        .map_err(db_error)?;
    // Versions are contiguous from 1, so the current version is the count.
    let total = match rows.first() {
        Some(row) => row.current_version,
        // No rows: an unknown agent, or a page past the oldest version.
        None => get(db, tenant, id).await?.version,
    };
    let records = rows.into_iter().map(VersionRow::into_record).collect();
    Ok(paginate(
        records,
        limit,
        |r| r.version_number.to_string(),
        total,
    ))
}

/// A version row with its agent's current version.
#[derive(Debug, FromQueryResult)]
struct VersionRow {
    version_number: i64,
    action: Action,
    configuration: serde_json::Value,
    diff: serde_json::Value,
    change_description: String,
    changed_by: String,
    create_time: DateTime<Utc>,
    current_version: i64,
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
        }
    }
}

/// Version `number` of agent `id`.
pub async fn get_version(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
    number: i64,
) -> Result<VersionRecord, Error> {
    let row = agent_version::Entity::find()
        .filter(agent_version::Column::AgentId.eq(id))
        .filter(agent_version::Column::TenantId.eq(tenant))
        .filter(agent_version::Column::VersionNumber.eq(number))
        .all(db)
        .await
        .map_err(db_error)?
        .into_iter()
        .next();
    match row {
        Some(row) => Ok(version_record(row)),
        None => {
            // Tell a missing agent from a missing version.
            get(db, tenant, id).await?;
            Err(Error::NotFound {
                kind: "agent version",
                id: format!("{id}@{number}"),
            })
        }
    }
}

/// Writes `spec` as version `current.version + 1`; `None` when another
/// writer took that number first.
async fn write_next_version(
    txn: &DatabaseTransaction,
    write: &Write<'_>,
    current: &AgentRecord,
    spec: AgentSpec,
) -> Result<Option<AgentRecord>, Error> {
    let next = Next::after(current, write, spec, txn.get_database_backend());
    let updated = txn
        .execute(&next.bump(write, current))
        .await
        .map_err(|e| write_error(e, &next.record.spec))?;
    if updated.rows_affected() == 0 {
        return Ok(None);
    }
    // An unchanged assignment needs no check: it was checked when it was
    // made, the foreign key (ON DELETE RESTRICT) keeps the provider from
    // going away while the agent uses it, and a provider never changes
    // tenant.
    if next.record.spec.llm_provider_id != current.spec.llm_provider_id {
        check_provider(txn, &write.caller.tenant, &next.record.spec).await?;
    }
    insert_row(txn, agent_version::Entity, next.version_row(write))
        .await
        .map_err(db_error)?;
    Ok(Some(next.record))
}

/// The conditional version bump and the version row, written together
/// without a read in the transaction ([`write_with_version`]). `None` when
/// another writer took the version first or the assignment changes (its
/// tenant check needs the locking path).
async fn write_optimistically(
    store: &Store,
    write: &Write<'_>,
    current: &AgentRecord,
    spec: AgentSpec,
) -> Result<Option<AgentRecord>, Error> {
    if spec.llm_provider_id != current.spec.llm_provider_id {
        return Ok(None);
    }
    let next = Next::after(current, write, spec, store.get_database_backend());
    let mut bump = next.bump(write, current);
    bump.returning_col(agent::Column::Id);
    let written = write_with_version(store, bump, agent_version::Entity, next.version_row(write))
        .await
        .map_err(|e| write_error(e, &next.record.spec))?;
    Ok(written.then_some(next.record))
}

/// The agent as the next version will store it, with the values of its
/// configuration (made once for the row and the snapshot) and of that
/// version's diff.
struct Next {
    record: AgentRecord,
    config: SimpleExpr,
    diff: SimpleExpr,
}

impl Next {
    fn after(
        current: &AgentRecord,
        write: &Write<'_>,
        spec: AgentSpec,
        backend: DbBackend,
    ) -> Self {
        let config = spec.to_json();
        let changes = version::diff(&current.spec.to_json(), &config);
        let record = AgentRecord {
            id: current.id.clone(),
            spec,
            version: current.version + 1,
            create_time: current.create_time,
            update_time: super::now(),
            created_by: current.created_by.clone(),
            updated_by: write.caller.subject.clone(),
        };
        Self {
            record,
            config: json_val(backend, &config),
            diff: json_val(backend, &version::changes_to_json(&changes)),
        }
    }

    /// `UPDATE agents SET … WHERE id = … AND tenant = … AND version =
    /// <current>`: takes the version number only if nobody else did.
    fn bump(&self, write: &Write<'_>, current: &AgentRecord) -> UpdateStatement {
        let record = &self.record;
        Query::update()
            .table(agent::Entity)
            .values([
                (agent::Column::Name, val(record.spec.name.clone())),
                (
                    agent::Column::LlmProviderId,
                    val(record.spec.llm_provider_id.clone()),
                ),
                (agent::Column::Config, self.config.clone()),
                (agent::Column::Version, val(record.version)),
                (agent::Column::UpdateTime, val(record.update_time)),
                (agent::Column::UpdatedBy, val(record.updated_by.clone())),
            ])
            .and_where(agent::Column::Id.eq(current.id.clone()))
            .and_where(agent::Column::TenantId.eq(write.caller.tenant.clone()))
            .and_where(agent::Column::Version.eq(current.version))
            .to_owned()
    }

    fn version_row(&self, write: &Write<'_>) -> Vec<(agent_version::Column, SimpleExpr)> {
        version_row(write, &self.record, self.config.clone(), self.diff.clone())
    }
}

/// The `agent_versions` row that records `record` as written by `write`.
fn version_row(
    write: &Write<'_>,
    record: &AgentRecord,
    config: SimpleExpr,
    diff: SimpleExpr,
) -> Vec<(agent_version::Column, SimpleExpr)> {
    use agent_version::Column;
    vec![
        (Column::AgentId, val(record.id.clone())),
        (Column::TenantId, val(write.caller.tenant.clone())),
        (Column::VersionNumber, val(record.version)),
        (Column::Action, val(write.action.to_value())),
        (Column::Configuration, config),
        (Column::Diff, diff),
        (Column::ChangeDescription, val(write.description.clone())),
        (Column::ChangedBy, val(write.caller.subject.clone())),
        (Column::CreateTime, val(record.update_time)),
    ]
}

/// The assigned provider must exist in the caller's tenant.
async fn check_provider(
    txn: &DatabaseTransaction,
    tenant: &str,
    spec: &AgentSpec,
) -> Result<(), Error> {
    let Some(provider_id) = &spec.llm_provider_id else {
        return Ok(());
    };
    let found = provider::Entity::find_by_id(provider_id.clone())
        .filter(provider::Column::TenantId.eq(tenant))
        .count(txn)
        .await
        .map_err(db_error)?;
    if found == 0 {
        return Err(provider_not_found(provider_id));
    }
    Ok(())
}

fn provider_not_found(provider_id: &str) -> Error {
    Error::precondition(
        "PROVIDER_NOT_FOUND",
        format!("provider {provider_id:?} does not exist in this tenant"),
    )
}

/// Maps the errors of a statement that writes an agent (and, on
/// PostgreSQL, its version row): a name clash is ALREADY_EXISTS, a missing
/// provider FAILED_PRECONDITION. A clash on the version index
/// (`ux_agent_versions_agent_version`, or `agent_versions.…` in SQLite's
/// message) is not the caller's doing and stays INTERNAL.
fn write_error(error: sea_orm::DbErr, spec: &AgentSpec) -> Error {
    let name_clash =
        unique_violation(&error).is_some_and(|message| !message.contains("agent_versions"));
    if name_clash {
        Error::AlreadyExists {
            kind: "agent",
            name: spec.name.clone(),
        }
    } else if foreign_key_violation(&error) {
        Error::precondition("PROVIDER_NOT_FOUND", "the assigned provider does not exist")
    } else {
        db_error(error)
    }
}

fn version_record(row: agent_version::Model) -> VersionRecord {
    VersionRecord {
        version_number: row.version_number,
        action: row.action,
        diff: version::changes_from_json(&row.diff),
        configuration: row.configuration,
        change_description: row.change_description,
        changed_by: row.changed_by,
        create_time: row.create_time,
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound {
        kind: "agent",
        id: id.to_owned(),
    }
}

fn total_i64(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Used by the runtime: the agent snapshot at `number`, or the current one.
pub async fn spec_at(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
    number: Option<i64>,
) -> Result<(AgentRecord, AgentSpec, i64), Error> {
    let current = get(db, tenant, id).await?;
    match number {
        None => {
            let spec = current.spec.clone();
            let version = current.version;
            Ok((current, spec, version))
        }
        Some(n) => {
            let version = get_version(db, tenant, id, n).await?;
            let spec = AgentSpec::from_json(&version.configuration)?;
            Ok((current, spec, n))
        }
    }
}
