//! Providers: the versioned kind [`Providers`]. The API key is stored only
//! as crypto-service ciphertext, in the row and in every snapshot; each key
//! gets a credential revision (`provider_key_revisions`) as it is written,
//! and no write makes a revoked revision current again. A provider write
//! takes the fast path of [`versioned`] when neither its key nor the
//! tenant's default moves; otherwise the locking path, where
//! [`Kind::prepare`] numbers keys, refuses revoked ones and takes the
//! default over.

use migrations::entity::{agent, provider, provider_key_revision, provider_version};
use sea_orm::sea_query::{Expr, ExprTrait, SimpleExpr};
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QueryResult, QuerySelect, QueryTrait, Set,
};
use serde_json::Value;

use super::audit::{self, Action as AuditAction, Entry};
use super::changes::ResourceKind;
use super::recent::Weigh;
use super::search::{self, Column, Field};
use super::versioned::{self, Base, Clash, Kind, Names, Read, Record, Validated, Write};
use super::{MAX_WRITE_ATTEMPTS, Store, db_error, insert_row, json_val, unique_violation, val};
use crate::error::Error;
use crate::model::Snapshot;
use crate::model::provider::{ProviderKind, ProviderSpec};
use crate::model::version::{Action, Change};

/// A provider as stored now.
pub type ProviderRecord = Record<ProviderSpec>;

/// The provider kind. With `revoke_replaced`, an update that replaces the
/// key revokes the revision it replaces, in the same transaction.
#[derive(Debug, Clone, Copy, Default)]
pub struct Providers {
    pub revoke_replaced: bool,
}

impl Kind for Providers {
    type Spec = ProviderSpec;
    type Entity = provider::Entity;
    type Versions = provider_version::Entity;

    const NAMES: Names = Names::new("provider", "provider version", "provider_id");
    const LOGGED_AS: ResourceKind = ResourceKind::Provider;
    /// `provider_type` as stored (`OPENAI`) or as the proto enum names it
    /// (`PROVIDER_TYPE_OPENAI`); `label` as for every kind.
    const FILTER_FIELDS: &'static [Field] = &[
        search::NAME,
        Field::new(
            "provider_type",
            Column::Choice {
                column: "provider_type",
                prefix: "PROVIDER_TYPE_",
                values: &ProviderKind::STORED_NAMES,
            },
        ),
        Field::new("is_default", Column::Bool("is_default")),
        search::CREATE_TIME,
        search::UPDATE_TIME,
        search::label(Self::NAMES.kind),
        search::DELETED,
    ];

    fn name(spec: &ProviderSpec) -> &str {
        &spec.name
    }

    /// The row's columns are authoritative; `config` holds the rest.
    fn read_spec(
        mut spec: ProviderSpec,
        row: &QueryResult,
        prefix: &str,
    ) -> Result<ProviderSpec, DbErr> {
        spec.name = row.try_get(prefix, "name")?;
        spec.is_default = row.try_get(prefix, "is_default")?;
        spec.api_key = row.try_get(prefix, "api_key_ciphertext")?;
        Ok(spec)
    }

    fn diff(old: &ProviderSpec, new: &ProviderSpec, _new_json: &Value) -> Vec<Change> {
        ProviderSpec::diff(old, new)
    }

    /// `config` is the snapshot without the key (which has its column).
    fn columns(
        spec: &ProviderSpec,
        _snapshot: &SimpleExpr,
        backend: DbBackend,
    ) -> Result<Vec<(&'static str, SimpleExpr)>, Error> {
        let provider_type =
            provider::ProviderType::try_from_value(&spec.provider_type.as_str().to_owned())
                .map_err(|e| Error::Internal(format!("provider type: {e}")))?;
        let mut config = spec.clone();
        config.api_key = None;
        Ok(vec![
            ("name", val(spec.name.clone())),
            ("provider_type", val(provider_type.to_value())),
            ("config", json_val(backend, &config.to_json())),
            ("api_key_ciphertext", val(spec.api_key.clone())),
            ("is_default", val(spec.is_default)),
        ])
    }

    /// The key's ciphertext, which the rewrap job re-encrypts in place: a
    /// write that keeps the key copies the ciphertext it read into its
    /// version, so it must not commit over a ciphertext rewrapped since
    /// (its version would keep the old key version alive after the job
    /// reported the provider moved).
    fn still_as_read(current: &ProviderSpec) -> Option<SimpleExpr> {
        let stored = versioned::col::<Self>("api_key_ciphertext");
        Some(match &current.api_key {
            Some(ciphertext) => stored.eq(ciphertext.clone()),
            None => stored.is_null(),
        })
    }

    /// A clash on the one-default index (or any but the name's) means
    /// another provider became the default meanwhile: try again.
    fn clash(&self, error: DbErr, spec: &ProviderSpec) -> Clash {
        match unique_violation(&error) {
            Some(message) if message.contains("default") || !message.contains("name") => {
                Clash::Retry
            }
            Some(_) => Clash::Fail(Error::AlreadyExists {
                kind: "provider",
                name: spec.name.clone(),
            }),
            None => Clash::Fail(db_error(error)),
        }
    }

    /// Fast unless the write touches the key or moves the default.
    fn fast(&self, current: Option<&ProviderSpec>, new: &ProviderSpec) -> bool {
        match current {
            None => !new.is_default && new.api_key.is_none(),
            Some(current) => {
                current.is_default == new.is_default
                    && current.api_key == new.api_key
                    && current.api_key_revision == new.api_key_revision
            }
        }
    }

    /// A key whose revision is revoked is never made current: the current
    /// key stays, and the description says so. A new key is numbered (a
    /// new provider's first key is revision 1, recorded in [`finish`]
    /// once its row exists). A new default takes the tenant's default over.
    async fn prepare(
        &self,
        txn: &DatabaseTransaction,
        write: &Write<'_>,
        id: &str,
        current: Option<&ProviderSpec>,
        next: &mut ProviderSpec,
        description: &mut String,
    ) -> Result<bool, Error> {
        if let Some(current) = current
            && let Some(revision) = next.api_key_revision
            && next.api_key_revision != current.api_key_revision
            && is_revoked(txn, id, revision).await?
        {
            next.api_key = current.api_key.clone();
            next.api_key_revision = current.api_key_revision;
            description.push_str(&match current.api_key_revision {
                Some(kept) => {
                    format!(" (key revision {revision} is revoked: kept key revision {kept})")
                }
                None => format!(" (key revision {revision} is revoked: kept the current key)"),
            });
        }
        if next.api_key.is_some() && next.api_key_revision.is_none() {
            next.api_key_revision = Some(match current {
                None => 1,
                Some(_) => {
                    let revision = next_key_revision(txn, id).await?;
                    insert_key_revision(txn, write, id, revision).await?;
                    revision
                }
            });
        }
        let becomes_default = next.is_default && !current.is_some_and(|c| c.is_default);
        if becomes_default {
            return take_default(txn, write, id, &next.name).await;
        }
        Ok(true)
    }

    /// A new provider's key revision; with `revoke_replaced`, the revision
    /// an update replaced is revoked.
    async fn finish(
        &self,
        txn: &DatabaseTransaction,
        write: &Write<'_>,
        current: Option<&ProviderRecord>,
        written: &ProviderRecord,
    ) -> Result<(), Error> {
        let Some(current) = current else {
            if let Some(revision) = written.spec.api_key_revision {
                insert_key_revision(txn, write, &written.id, revision).await?;
            }
            return Ok(());
        };
        if self.revoke_replaced
            && let Some(replaced) = current.spec.api_key_revision
            && written.spec.api_key_revision != Some(replaced)
        {
            revoke_key_revision(txn, write, &written.id, replaced).await?;
        }
        Ok(())
    }

    /// Refused while live agents are assigned to the provider (deleted
    /// ones may keep naming it: they cannot be undeleted while it is
    /// deleted, and they hold its purge back).
    async fn guard_delete(
        &self,
        txn: &DatabaseTransaction,
        tenant: &str,
        id: &str,
    ) -> Result<(), Error> {
        // Counted up to a cap: the walk of the agents' index happens inside
        // the write transaction (on SQLite, every writer waits for it).
        let assigned = agent::Entity::find()
            .select_only()
            .column(agent::Column::Id)
            .filter(agent::Column::TenantId.eq(tenant))
            .filter(agent::Column::LlmProviderId.eq(id))
            .filter(agent::Column::DeleteTime.is_null())
            .limit(COUNTED_ASSIGNED + 1)
            .into_tuple::<String>()
            .all(txn)
            .await
            .map_err(db_error)?
            .len();
        match u64::try_from(assigned).unwrap_or(u64::MAX) {
            0 => Ok(()),
            n if n > COUNTED_ASSIGNED => Err(in_use(&format!("more than {COUNTED_ASSIGNED}"))),
            n => Err(in_use(&n.to_string())),
        }
    }

    /// Refused while deleted agents still name the provider (the foreign
    /// key would refuse anyway): the answer names up to
    /// [`NAMED_REFERRERS`] of them; purge them first.
    async fn guard_purge(txn: &DatabaseTransaction, tenant: &str, id: &str) -> Result<(), Error> {
        let referrers: Vec<String> = agent::Entity::find()
            .select_only()
            .column(agent::Column::Id)
            .filter(agent::Column::TenantId.eq(tenant))
            .filter(agent::Column::LlmProviderId.eq(id))
            .order_by_asc(agent::Column::Id)
            .limit(NAMED_REFERRERS + 1)
            .into_tuple()
            .all(txn)
            .await
            .map_err(db_error)?;
        if referrers.is_empty() {
            return Ok(());
        }
        let more = if referrers.len() as u64 > NAMED_REFERRERS {
            " and more"
        } else {
            ""
        };
        let named = referrers
            .iter()
            .take(NAMED_REFERRERS as usize)
            .map(|id| format!("{id:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        Err(Error::precondition(
            "PROVIDER_REFERENCED",
            format!(
                "deleted agents still name this provider ({named}{more}): purge them first, \
                 or undelete them and assign them another provider"
            ),
        ))
    }
}

/// The most agents a refused provider purge names.
const NAMED_REFERRERS: u64 = 10;

/// Providers are not kept (see [`Kind::recent`]): a rough weight will do.
impl Weigh for ProviderSpec {
    fn heap_bytes(&self) -> usize {
        self.name.len() + self.model_name.len() + self.api_key.as_ref().map_or(0, String::len)
    }
}

/// The provider `id` of `tenant`.
pub async fn get(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
) -> Result<ProviderRecord, Error> {
    versioned::get::<Providers>(db, tenant, id).await
}

/// The tenant's default provider, if it has one (a deleted provider is no
/// default, though its row keeps `is_default` until another provider takes
/// the default over, or it is undeleted).
pub async fn default_of(
    db: &impl ConnectionTrait,
    tenant: &str,
) -> Result<Option<ProviderRecord>, Error> {
    let rows = provider::Entity::find()
        .filter(provider::Column::TenantId.eq(tenant))
        .filter(provider::Column::IsDefault.eq(true))
        .filter(provider::Column::DeleteTime.is_null())
        .into_model::<Read<Providers>>()
        .all(db)
        .await
        .map_err(db_error)?;
    Ok(rows.into_iter().next().map(|read| read.0))
}

/// Revokes credential revision `revision` of provider `id`. When it is the
/// current key, the key is removed in a new UPDATE version; otherwise
/// nothing but the revision changes. Revoking a revoked revision changes
/// nothing. Answers the provider and the changes its new version recorded
/// (none when no version was written). With `validate_only`, every check
/// runs and the transaction is rolled back.
pub async fn revoke_key(
    store: &Store,
    write: Write<'_>,
    id: &str,
    revision: i64,
    validate_only: bool,
) -> Result<Validated<ProviderSpec>, Error> {
    let unchanged = |record: ProviderRecord| Validated {
        record,
        diff: Vec::new(),
    };
    for _ in 0..MAX_WRITE_ATTEMPTS {
        let txn = store.begin_write().await?;
        // The provider's row lock orders this against every other write
        // of its key (rollbacks included).
        let current = versioned::get_locked::<Providers>(&txn, &write.caller.tenant, id).await?;
        let known = provider_key_revision::Entity::find_by_id((id.to_owned(), revision))
            .one(&txn)
            .await
            .map_err(db_error)?
            .ok_or_else(|| Error::NotFound {
                kind: "provider key revision",
                id: format!("{id}#{revision}"),
            })?;
        if known.revoke_time.is_some() {
            if !validate_only && write.claim.is_some() {
                write.remember(&txn, &current).await?;
                txn.commit().await.map_err(db_error)?;
            }
            return Ok(unchanged(current));
        }
        revoke_key_revision(&txn, &write, id, revision).await?;
        if current.spec.api_key_revision != Some(revision) {
            if validate_only {
                txn.rollback().await.map_err(db_error)?;
                return Ok(unchanged(current));
            }
            write.remember(&txn, &current).await?;
            txn.commit().await.map_err(db_error)?;
            store.audit_recorded();
            return Ok(unchanged(current));
        }
        let mut spec = current.spec.clone();
        spec.api_key = None;
        spec.api_key_revision = None;
        let kind = Providers::default();
        let base = Base::Current(&current);
        if let Some(written) =
            versioned::write_locked_with_diff(&txn, &kind, &write, base, spec).await?
        {
            if validate_only {
                txn.rollback().await.map_err(db_error)?;
                return Ok(written);
            }
            txn.commit().await.map_err(db_error)?;
            store.committed(&write.caller.tenant);
            return Ok(written);
        }
    }
    Err(versioned::contended::<Providers>())
}

/// Records that `revision` of `provider_id` was stored now.
async fn insert_key_revision(
    txn: &DatabaseTransaction,
    write: &Write<'_>,
    provider_id: &str,
    revision: i64,
) -> Result<(), Error> {
    let row = provider_key_revision::ActiveModel {
        provider_id: Set(provider_id.to_owned()),
        revision: Set(revision),
        tenant_id: Set(write.caller.tenant.clone()),
        create_time: Set(super::now()),
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
    let details = serde_json::json!({ "revision": revision });
    let entry = Entry::on::<Providers>(
        write.caller,
        AuditAction::KeyRevoke,
        provider_id,
        write.request_id.as_deref(),
        details,
    );
    audit::record(txn, entry).await?;
    tracing::warn!(provider_id, revision, "provider key revision revoked");
    Ok(())
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
        .into_model::<Read<Providers>>()
        .all(txn)
        .await
        .map_err(db_error)?;
    let Some(Read(previous)) = previous.into_iter().next() else {
        return Ok(true);
    };
    let mut spec = previous.spec.clone();
    spec.is_default = false;
    let handover = Write {
        request_id: write.request_id.clone(),
        ..Write::new(
            write.caller,
            Action::Update,
            format!("Default provider moved to {new_default_name:?}"),
        )
    };
    let next = previous.version + 1;
    let now = super::now();
    let configuration = spec.to_json();
    let diff = crate::model::version::changes_to_json(&ProviderSpec::diff(&previous.spec, &spec));
    let hashed = versioned::Hashed {
        kind: Providers::NAMES.kind,
        tenant: &write.caller.tenant,
        id: &previous.id,
        number: next,
        action: &handover.action.to_value(),
        configuration: &configuration,
        diff: &diff,
        description: &handover.description,
        changed_by: &write.caller.subject,
        time: now,
        request_id: handover.request_id.as_deref(),
    };
    let hash = hashed.hash_after(previous.version_hash.as_deref().unwrap_or_default());
    let updated = provider::Entity::update_many()
        .col_expr(provider::Column::IsDefault, Expr::value(false))
        .col_expr(provider::Column::Version, Expr::value(next))
        .col_expr(provider::Column::UpdateTime, Expr::value(now))
        .col_expr(
            provider::Column::UpdatedBy,
            Expr::value(write.caller.subject.clone()),
        )
        .col_expr(provider::Column::VersionHash, Expr::value(hash.clone()))
        .filter(provider::Column::Id.eq(previous.id.clone()))
        .filter(provider::Column::Version.eq(previous.version))
        .apply_if(
            Providers::still_as_read(&previous.spec),
            QueryFilter::filter,
        )
        .exec(txn)
        .await
        .map_err(db_error)?;
    if updated.rows_affected == 0 {
        return Ok(false);
    }
    let backend = txn.get_database_backend();
    let row = versioned::version_row(
        Providers::NAMES.owner,
        &handover,
        (&previous.id, next),
        json_val(backend, &configuration),
        json_val(backend, &diff),
        now,
        &hash,
    );
    insert_row(txn, provider_version::Entity, row)
        .await
        .map_err(db_error)?;
    Ok(true)
}

/// The most live agents a refused delete counts for its message.
const COUNTED_ASSIGNED: u64 = 1_000;

/// `agents`: how many are assigned, as the message says it.
fn in_use(agents: &str) -> Error {
    Error::precondition(
        "PROVIDER_IN_USE",
        format!("{agents} agent(s) are assigned to this provider; reassign them first"),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use sea_orm::{ConnectionTrait, Database};

    use super::*;
    use crate::caller::Caller;
    use crate::model::params::ModelParams;
    use crate::model::provider::ProviderKind;
    use crate::model::version::Action;
    use crate::store::tests::fresh_sqlite;
    use crate::store::{Store, migrate_up};
    use crate::telemetry::RegistryMetrics;

    /// An update that keeps the key copies the ciphertext it read into its
    /// version. The rewrap job (its own process, its own connection)
    /// re-encrypts the key between that read and the write: the write must
    /// not commit over it. It is tried again over the rewrapped row, and
    /// the new version carries the ciphertext the job stored — else the
    /// old key version would live on in a version the job had reported
    /// moved.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_update_racing_the_rewrap_job_keeps_the_rewrapped_ciphertext() {
        let (db, path) = fresh_sqlite(2).await;
        migrate_up(&db).await.expect("the migrations run");
        let store = Store::new(db.clone(), &RegistryMetrics::default(), (0, 0));
        let job = Database::connect(format!("sqlite://{}", path.display()))
            .await
            .expect("the job's own connection");
        let caller = Caller {
            tenant: "tenant-a".to_owned(),
            subject: "alice".to_owned(),
        };
        let kind = Providers {
            revoke_replaced: false,
        };
        let spec = ProviderSpec {
            name: "main".to_owned(),
            provider_type: ProviderKind::Openai,
            model_name: "gpt-4o".to_owned(),
            base_url: None,
            api_version: None,
            default_parameters: ModelParams::default(),
            is_default: false,
            api_key: Some("sealed-under-key-1".to_owned()),
            api_key_revision: None,
        };
        let created = Write::new(&caller, Action::Create, "created".to_owned());
        versioned::create(&store, &kind, created, "p1".to_owned(), spec)
            .await
            .expect("created");

        // The change runs after the update read the row and before it
        // writes: the job's write lands exactly there, once.
        let rewrapped = AtomicBool::new(false);
        let change = |current: &ProviderRecord| {
            if !rewrapped.swap(true, Ordering::SeqCst) {
                let rewrap = job.execute_unprepared(
                    "UPDATE providers SET api_key_ciphertext = 'sealed-under-key-2' \
                     WHERE id = 'p1' AND api_key_ciphertext = 'sealed-under-key-1'",
                );
                let done = tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(rewrap)
                });
                assert_eq!(done.expect("the job's write").rows_affected(), 1);
            }
            let mut next = current.spec.clone();
            next.model_name = "gpt-4.1".to_owned();
            Ok(next)
        };
        let updated = Write::new(&caller, Action::Update, "model".to_owned());
        let written = versioned::update(&store, &kind, updated, "p1", None, change)
            .await
            .expect("the update is written");
        assert!(rewrapped.load(Ordering::SeqCst), "the job ran in between");

        assert_eq!(written.record.version, 2, "one version, not two");
        assert_eq!(
            written.record.spec.api_key.as_deref(),
            Some("sealed-under-key-2")
        );
        let version = versioned::get_version::<Providers>(&db, "tenant-a", "p1", 2)
            .await
            .expect("version 2");
        assert_eq!(version.configuration["api_key"], "sealed-under-key-2");
        assert_eq!(version.configuration["model_name"], "gpt-4.1");
        let stored = get(&db, "tenant-a", "p1").await.expect("the provider");
        assert_eq!(stored.spec.api_key.as_deref(), Some("sealed-under-key-2"));
        assert_eq!(stored.version, 2);
        job.close().await.expect("close");
        db.close().await.expect("close");
        let _ = std::fs::remove_file(path);
    }
}
