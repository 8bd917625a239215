//! Providers and their versions in the database. The API key is stored only
//! as crypto-service ciphertext, in the row and in every snapshot; each key
//! gets a credential revision (`provider_key_revisions`) as it is written,
//! and no write makes a revoked revision current again.

use chrono::{DateTime, Utc};
use migrations::entity::{agent, provider, provider_key_revision, provider_version};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};

use super::agents::Write;
use super::{
    MAX_WRITE_ATTEMPTS, Page, VersionRecord, begin_write, db_error, foreign_key_violation,
    paginate, stale_etag, unique_violation,
};
use crate::error::Error;
use crate::model::provider::ProviderSpec;
use crate::model::version::{self, Action};

/// A provider as stored now.
#[derive(Debug, Clone)]
pub struct ProviderRecord {
    pub id: String,
    pub spec: ProviderSpec,
    pub version: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
}

impl ProviderRecord {
    /// Reads a row.
    pub fn from_row(row: provider::Model) -> Result<Self, Error> {
        // The row's columns are authoritative; `config` holds the rest.
        let mut spec = ProviderSpec::from_json(&row.config)?;
        spec.name = row.name;
        spec.is_default = row.is_default;
        spec.api_key = row.api_key_ciphertext;
        Ok(Self {
            spec,
            id: row.id,
            version: row.version,
            create_time: row.create_time,
            update_time: row.update_time,
            created_by: row.created_by,
            updated_by: row.updated_by,
        })
    }
}

/// Creates a provider (whose key is already ciphertext, bound to `id`) and
/// its version 1; takes over the tenant default when `spec.is_default`.
pub async fn create(
    db: &DatabaseConnection,
    write: Write<'_>,
    id: String,
    mut spec: ProviderSpec,
) -> Result<ProviderRecord, Error> {
    // A new provider's first key is its revision 1.
    spec.api_key_revision = spec.api_key.as_ref().map(|_| 1);
    for _ in 0..MAX_WRITE_ATTEMPTS {
        let now = super::now();
        let txn = begin_write(db).await?;
        if spec.is_default && !take_default(&txn, &write, &id, &spec.name).await? {
            txn.rollback().await.map_err(db_error)?;
            continue;
        }
        let row = provider::ActiveModel {
            id: Set(id.clone()),
            tenant_id: Set(write.caller.tenant.clone()),
            name: Set(spec.name.clone()),
            provider_type: Set(provider_type(&spec)?),
            config: Set(config_json(&spec)),
            api_key_ciphertext: Set(spec.api_key.clone()),
            is_default: Set(spec.is_default),
            version: Set(1),
            create_time: Set(now),
            update_time: Set(now),
            created_by: Set(write.caller.subject.clone()),
            updated_by: Set(write.caller.subject.clone()),
        };
        // Without RETURNING: the row is what we just built (on SQLite,
        // sea-orm's `insert` would read it back with a second statement).
        if let Err(error) = provider::Entity::insert(row)
            .exec_without_returning(&txn)
            .await
        {
            match classify(error, &spec) {
                WriteFailure::DefaultTaken => continue,
                WriteFailure::Error(error) => return Err(error),
            }
        }
        if let Some(revision) = spec.api_key_revision {
            insert_key_revision(&txn, &write, &id, revision, now).await?;
        }
        insert_version(&txn, &write, &id, 1, &spec, Vec::new(), now).await?;
        txn.commit().await.map_err(db_error)?;
        return Ok(ProviderRecord {
            id,
            spec,
            version: 1,
            create_time: now,
            update_time: now,
            created_by: write.caller.subject.clone(),
            updated_by: write.caller.subject.clone(),
        });
    }
    Err(contended())
}

/// The provider `id` of `tenant`.
pub async fn get(
    db: &impl sea_orm::ConnectionTrait,
    tenant: &str,
    id: &str,
) -> Result<ProviderRecord, Error> {
    let row = provider::Entity::find_by_id(id.to_owned())
        .filter(provider::Column::TenantId.eq(tenant))
        .all(db)
        .await
        .map_err(db_error)?
        .into_iter()
        .next()
        .ok_or_else(|| not_found(id))?;
    ProviderRecord::from_row(row)
}

/// The tenant's default provider, if it has one.
pub async fn default_of(
    db: &impl ConnectionTrait,
    tenant: &str,
) -> Result<Option<ProviderRecord>, Error> {
    let row = provider::Entity::find()
        .filter(provider::Column::TenantId.eq(tenant))
        .filter(provider::Column::IsDefault.eq(true))
        .one(db)
        .await
        .map_err(db_error)?;
    row.map(ProviderRecord::from_row).transpose()
}

/// One page of the tenant's providers, oldest first.
pub async fn list(
    db: &impl ConnectionTrait,
    tenant: &str,
    after: Option<String>,
    limit: u64,
) -> Result<Page<ProviderRecord>, Error> {
    let scoped = provider::Entity::find().filter(provider::Column::TenantId.eq(tenant));
    let total = scoped.clone().count(db).await.map_err(db_error)?;
    let mut query = scoped.order_by_asc(provider::Column::Id).limit(limit + 1);
    if let Some(after) = after {
        query = query.filter(provider::Column::Id.gt(after));
    }
    let rows = query.all(db).await.map_err(db_error)?;
    let records = rows
        .into_iter()
        .map(ProviderRecord::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(paginate(
        records,
        limit,
        |r| r.id.clone(),
        i64::try_from(total).unwrap_or(i64::MAX),
    ))
}

/// Changes a provider with `change` (whose key, if new, is already
/// ciphertext), appending a version unless nothing changed; see
/// [`super::agents::update`] for the locking and etag rules.
///
/// A key `change` brings without a revision is numbered as it is written;
/// with `revoke_replaced`, the revision it replaces is revoked in the same
/// transaction. A key whose revision is revoked is never made current: the
/// current key stays, and the version's description says so.
pub async fn update(
    db: &DatabaseConnection,
    write: Write<'_>,
    id: &str,
    expected_version: Option<i64>,
    revoke_replaced: bool,
    change: impl Fn(&ProviderRecord) -> Result<ProviderSpec, Error>,
) -> Result<ProviderRecord, Error> {
    for _ in 0..MAX_WRITE_ATTEMPTS {
        let txn = begin_write(db).await?;
        let current = get_locked(&txn, &write.caller.tenant, id).await?;
        if let Some(expected) = expected_version
            && expected != current.version
        {
            return Err(stale_etag("provider", current.version));
        }
        let spec = change(&current)?;
        if spec == current.spec && write.action == Action::Update {
            return Ok(current);
        }
        let replaced = current.spec.api_key_revision;
        if let Some(record) = write_next_version(&txn, &write, &current, &spec).await? {
            if revoke_replaced
                && let Some(replaced) = replaced
                && record.spec.api_key_revision != Some(replaced)
            {
                revoke_key_revision(&txn, &write, id, replaced).await?;
            }
            txn.commit().await.map_err(db_error)?;
            return Ok(record);
        }
    }
    Err(contended())
}

/// Revokes credential revision `revision` of provider `id`. When it is the
/// current key, the key is removed in a new UPDATE version; otherwise
/// nothing but the revision changes. Revoking a revoked revision changes
/// nothing.
pub async fn revoke_key(
    db: &DatabaseConnection,
    write: Write<'_>,
    id: &str,
    revision: i64,
) -> Result<ProviderRecord, Error> {
    for _ in 0..MAX_WRITE_ATTEMPTS {
        let txn = begin_write(db).await?;
        // The provider's row lock orders this against every other write
        // of its key (rollbacks included).
        let current = get_locked(&txn, &write.caller.tenant, id).await?;
        let known = provider_key_revision::Entity::find_by_id((id.to_owned(), revision))
            .one(&txn)
            .await
            .map_err(db_error)?
            .ok_or_else(|| Error::NotFound {
                kind: "provider key revision",
                id: format!("{id}#{revision}"),
            })?;
        if known.revoke_time.is_some() {
            return Ok(current);
        }
        revoke_key_revision(&txn, &write, id, revision).await?;
        if current.spec.api_key_revision != Some(revision) {
            txn.commit().await.map_err(db_error)?;
            return Ok(current);
        }
        let mut spec = current.spec.clone();
        spec.api_key = None;
        spec.api_key_revision = None;
        if let Some(record) = write_next_version(&txn, &write, &current, &spec).await? {
            txn.commit().await.map_err(db_error)?;
            return Ok(record);
        }
    }
    Err(contended())
}

/// Records that `revision` of `provider_id` was stored now.
async fn insert_key_revision(
    txn: &DatabaseTransaction,
    write: &Write<'_>,
    provider_id: &str,
    revision: i64,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let row = provider_key_revision::ActiveModel {
        provider_id: Set(provider_id.to_owned()),
        revision: Set(revision),
        tenant_id: Set(write.caller.tenant.clone()),
        create_time: Set(now),
        created_by: Set(write.caller.subject.clone()),
        revoke_time: Set(None),
        revoked_by: Set(None),
    };
    provider_key_revision::Entity::insert(row)
        .exec_without_returning(txn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// The revision a new key of `provider_id` gets: one more than any before.
async fn next_key_revision(txn: &DatabaseTransaction, provider_id: &str) -> Result<i64, Error> {
    let newest = provider_key_revision::Entity::find()
        .filter(provider_key_revision::Column::ProviderId.eq(provider_id))
        .order_by_desc(provider_key_revision::Column::Revision)
        .one(txn)
        .await
        .map_err(db_error)?;
    Ok(newest.map_or(1, |row| row.revision + 1))
}

/// Whether `revision` of `provider_id` is revoked.
async fn is_revoked(
    txn: &DatabaseTransaction,
    provider_id: &str,
    revision: i64,
) -> Result<bool, Error> {
    Ok(
        provider_key_revision::Entity::find_by_id((provider_id.to_owned(), revision))
            .one(txn)
            .await
            .map_err(db_error)?
            .is_some_and(|row| row.revoke_time.is_some()),
    )
}

/// Marks `revision` of `provider_id` revoked (when it is not already).
async fn revoke_key_revision(
    txn: &DatabaseTransaction,
    write: &Write<'_>,
    provider_id: &str,
    revision: i64,
) -> Result<(), Error> {
    provider_key_revision::Entity::update_many()
        .col_expr(
            provider_key_revision::Column::RevokeTime,
            Expr::value(super::now()),
        )
        .col_expr(
            provider_key_revision::Column::RevokedBy,
            Expr::value(write.caller.subject.clone()),
        )
        .filter(provider_key_revision::Column::ProviderId.eq(provider_id))
        .filter(provider_key_revision::Column::Revision.eq(revision))
        .filter(provider_key_revision::Column::RevokeTime.is_null())
        .exec(txn)
        .await
        .map_err(db_error)?;
    tracing::warn!(provider_id, revision, "provider key revision revoked");
    Ok(())
}

async fn get_locked(
    txn: &DatabaseTransaction,
    tenant: &str,
    id: &str,
) -> Result<ProviderRecord, Error> {
    let row = provider::Entity::find_by_id(id.to_owned())
        .filter(provider::Column::TenantId.eq(tenant))
        .lock_exclusive()
        .all(txn)
        .await
        .map_err(db_error)?
        .into_iter()
        .next()
        .ok_or_else(|| not_found(id))?;
    ProviderRecord::from_row(row)
}

/// Deletes a provider (its versions go with it); refused while agents are
/// assigned to it.
pub async fn delete(
    db: &DatabaseConnection,
    tenant: &str,
    id: &str,
    expected_version: Option<i64>,
) -> Result<(), Error> {
    let txn = begin_write(db).await?;
    let mut query = provider::Entity::delete_many()
        .filter(provider::Column::Id.eq(id))
        .filter(provider::Column::TenantId.eq(tenant));
    if let Some(expected) = expected_version {
        query = query.filter(provider::Column::Version.eq(expected));
    }
    let assigned = agent::Entity::find()
        .filter(agent::Column::TenantId.eq(tenant))
        .filter(agent::Column::LlmProviderId.eq(id))
        .count(&txn)
        .await
        .map_err(db_error)?;
    if assigned > 0 {
        txn.rollback().await.map_err(db_error)?;
        // Another tenant's provider answers NOT_FOUND, never "in use".
        get(db, tenant, id).await?;
        return Err(in_use(assigned));
    }
    let deleted = match query.exec(&txn).await {
        Ok(result) => result.rows_affected,
        Err(error) if foreign_key_violation(&error) => {
            txn.rollback().await.map_err(db_error)?;
            return Err(in_use(1));
        }
        Err(error) => return Err(db_error(error)),
    };
    if deleted == 0 {
        txn.rollback().await.map_err(db_error)?;
        let current = get(db, tenant, id).await?;
        return Err(stale_etag("provider", current.version));
    }
    txn.commit().await.map_err(db_error)
}

/// One page of a provider's versions, newest first.
pub async fn list_versions(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
    before: Option<i64>,
    limit: u64,
) -> Result<Page<VersionRecord>, Error> {
    let total = get(db, tenant, id).await?.version;
    let mut query = provider_version::Entity::find()
        .filter(provider_version::Column::ProviderId.eq(id))
        .filter(provider_version::Column::TenantId.eq(tenant))
        .order_by_desc(provider_version::Column::VersionNumber)
        .limit(limit + 1);
    if let Some(before) = before {
        query = query.filter(provider_version::Column::VersionNumber.lt(before));
    }
    let rows = query.all(db).await.map_err(db_error)?;
    let records = rows.into_iter().map(version_record).collect();
    Ok(paginate(
        records,
        limit,
        |r| r.version_number.to_string(),
        total,
    ))
}

/// Version `number` of provider `id`.
pub async fn get_version(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
    number: i64,
) -> Result<VersionRecord, Error> {
    let row = provider_version::Entity::find()
        .filter(provider_version::Column::ProviderId.eq(id))
        .filter(provider_version::Column::TenantId.eq(tenant))
        .filter(provider_version::Column::VersionNumber.eq(number))
        .all(db)
        .await
        .map_err(db_error)?
        .into_iter()
        .next();
    match row {
        Some(row) => Ok(version_record(row)),
        None => {
            get(db, tenant, id).await?;
            Err(Error::NotFound {
                kind: "provider version",
                id: format!("{id}@{number}"),
            })
        }
    }
}

/// Writes `spec` as the next version inside `txn`; `None` when another
/// writer took the number or the default moved under us.
async fn write_next_version(
    txn: &DatabaseTransaction,
    write: &Write<'_>,
    current: &ProviderRecord,
    spec: &ProviderSpec,
) -> Result<Option<ProviderRecord>, Error> {
    let next = current.version + 1;
    let now = super::now();
    let mut spec = spec.clone();
    let mut description = write.description.clone();
    if let Some(revision) = spec.api_key_revision
        && spec.api_key_revision != current.spec.api_key_revision
        && is_revoked(txn, &current.id, revision).await?
    {
        spec.api_key = current.spec.api_key.clone();
        spec.api_key_revision = current.spec.api_key_revision;
        description.push_str(&match current.spec.api_key_revision {
            Some(kept) => {
                format!(" (key revision {revision} is revoked: kept key revision {kept})")
            }
            None => format!(" (key revision {revision} is revoked: kept the current key)"),
        });
    }
    if spec.api_key.is_some() && spec.api_key_revision.is_none() {
        let revision = next_key_revision(txn, &current.id).await?;
        insert_key_revision(txn, write, &current.id, revision, now).await?;
        spec.api_key_revision = Some(revision);
    }
    let spec = &spec;
    let write = &Write {
        caller: write.caller,
        action: write.action,
        description,
    };
    if spec.is_default
        && !current.spec.is_default
        && !take_default(txn, write, &current.id, &spec.name).await?
    {
        return Ok(None);
    }
    let updated = provider::Entity::update_many()
        .col_expr(provider::Column::Name, Expr::value(spec.name.clone()))
        .col_expr(
            provider::Column::ProviderType,
            Expr::value(provider_type(spec)?.to_value()),
        )
        .col_expr(provider::Column::Config, Expr::value(config_json(spec)))
        .col_expr(
            provider::Column::ApiKeyCiphertext,
            Expr::value(spec.api_key.clone()),
        )
        .col_expr(provider::Column::IsDefault, Expr::value(spec.is_default))
        .col_expr(provider::Column::Version, Expr::value(next))
        .col_expr(provider::Column::UpdateTime, Expr::value(now))
        .col_expr(
            provider::Column::UpdatedBy,
            Expr::value(write.caller.subject.clone()),
        )
        .filter(provider::Column::Id.eq(current.id.clone()))
        .filter(provider::Column::TenantId.eq(write.caller.tenant.clone()))
        .filter(provider::Column::Version.eq(current.version))
        .exec(txn)
        .await;
    let updated = match updated {
        Ok(result) => result.rows_affected,
        Err(error) => match classify(error, spec) {
            WriteFailure::DefaultTaken => return Ok(None),
            WriteFailure::Error(error) => return Err(error),
        },
    };
    if updated == 0 {
        return Ok(None);
    }
    let changes = ProviderSpec::diff(&current.spec, spec);
    insert_version(txn, write, &current.id, next, spec, changes, now).await?;
    Ok(Some(ProviderRecord {
        id: current.id.clone(),
        spec: spec.clone(),
        version: next,
        create_time: current.create_time,
        update_time: now,
        created_by: current.created_by.clone(),
        updated_by: write.caller.subject.clone(),
    }))
}

/// Clears the tenant's current default (another provider), appending an
/// UPDATE version to it. `false` when it changed under us.
async fn take_default(
    txn: &DatabaseTransaction,
    write: &Write<'_>,
    new_default_id: &str,
    new_default_name: &str,
) -> Result<bool, Error> {
    let previous = provider::Entity::find()
        .filter(provider::Column::TenantId.eq(write.caller.tenant.clone()))
        .filter(provider::Column::IsDefault.eq(true))
        .filter(provider::Column::Id.ne(new_default_id))
        .one(txn)
        .await
        .map_err(db_error)?;
    let Some(previous) = previous else {
        return Ok(true);
    };
    let previous = ProviderRecord::from_row(previous)?;
    let mut spec = previous.spec.clone();
    spec.is_default = false;
    let handover = Write {
        caller: write.caller,
        action: Action::Update,
        description: format!("Default provider moved to {new_default_name:?}"),
    };
    let next = previous.version + 1;
    let now = super::now();
    let updated = provider::Entity::update_many()
        .col_expr(provider::Column::IsDefault, Expr::value(false))
        .col_expr(provider::Column::Version, Expr::value(next))
        .col_expr(provider::Column::UpdateTime, Expr::value(now))
        .col_expr(
            provider::Column::UpdatedBy,
            Expr::value(write.caller.subject.clone()),
        )
        .filter(provider::Column::Id.eq(previous.id.clone()))
        .filter(provider::Column::Version.eq(previous.version))
        .exec(txn)
        .await
        .map_err(db_error)?;
    if updated.rows_affected == 0 {
        return Ok(false);
    }
    let changes = ProviderSpec::diff(&previous.spec, &spec);
    insert_version(txn, &handover, &previous.id, next, &spec, changes, now).await?;
    Ok(true)
}

async fn insert_version(
    txn: &DatabaseTransaction,
    write: &Write<'_>,
    provider_id: &str,
    number: i64,
    spec: &ProviderSpec,
    changes: Vec<version::Change>,
    now: DateTime<Utc>,
) -> Result<(), Error> {
    let row = provider_version::ActiveModel {
        provider_id: Set(provider_id.to_owned()),
        tenant_id: Set(write.caller.tenant.clone()),
        version_number: Set(number),
        action: Set(write.action),
        configuration: Set(spec.to_json()),
        diff: Set(version::changes_to_json(&changes)),
        change_description: Set(write.description.clone()),
        changed_by: Set(write.caller.subject.clone()),
        create_time: Set(now),
        ..Default::default()
    };
    // Without RETURNING: nothing of the row is needed back.
    provider_version::Entity::insert(row)
        .exec_without_returning(txn)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// The `config` column: the snapshot without the columns stored apart.
fn config_json(spec: &ProviderSpec) -> serde_json::Value {
    let mut config = spec.clone();
    config.api_key = None;
    config.to_json()
}

fn provider_type(spec: &ProviderSpec) -> Result<provider::ProviderType, Error> {
    provider::ProviderType::try_from_value(&spec.provider_type.as_str().to_owned())
        .map_err(|e| Error::Internal(format!("provider type: {e}")))
}

enum WriteFailure {
    /// Another provider became the default concurrently.
    DefaultTaken,
    Error(Error),
}

fn classify(error: sea_orm::DbErr, spec: &ProviderSpec) -> WriteFailure {
    match unique_violation(&error) {
        Some(message) if message.contains("default") || !message.contains("name") => {
            WriteFailure::DefaultTaken
        }
        Some(_) => WriteFailure::Error(Error::AlreadyExists {
            kind: "provider",
            name: spec.name.clone(),
        }),
        None => WriteFailure::Error(db_error(error)),
    }
}

fn version_record(row: provider_version::Model) -> VersionRecord {
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
        kind: "provider",
        id: id.to_owned(),
    }
}

fn in_use(agents: u64) -> Error {
    Error::precondition(
        "PROVIDER_IN_USE",
        format!("{agents} agent(s) are assigned to this provider; reassign them first"),
    )
}

fn contended() -> Error {
    Error::Aborted("too many concurrent writers on this provider; try again".to_owned())
}
