//! Stored ciphertexts as a whole: counting them per key version, retiring
//! a version none of them uses, moving them to the active version through
//! crypto-service's Rewrap, and the key canary. Values live in three
//! places: `providers.api_key_ciphertext`, the `api_key` of every
//! `provider_versions` snapshot, and `key_canary`.

use std::collections::BTreeMap;

use migrations::entity::{key_canary, provider, provider_version};
use sea_orm::sea_query::{Alias, Condition, Expr, ExprTrait, Query, SimpleExpr};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::Value;

use super::audit::{self, Entry};
use super::{begin_write, db_error, unique_violation};
use crate::crypto::{Crypto, RawFailure, api_key_aad, key_version_of};
use crate::error::Error;

/// The canary's id, plaintext and associated data.
const CANARY_ID: &str = "canary";
const CANARY_PLAINTEXT: &[u8] = b"agentregistry key canary v1";
const CANARY_AAD: &[u8] = b"agentregistry.v1|key_canary";

/// Stored values per key version (`None`: not an `arc1` ciphertext).
pub type Counts = BTreeMap<Option<u32>, u64>;

/// What a rewrap pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RewrapReport {
    pub scanned: u64,
    pub rewrapped: u64,
    pub already_current: u64,
    pub changed_concurrently: u64,
}

/// One stored value: where it is, its ciphertext and associated data.
#[derive(Debug, Clone)]
struct Stored {
    place: Place,
    ciphertext: String,
    aad: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Place {
    Provider(String),
    ProviderVersion { id: i64, configuration: Value },
    Canary,
}

/// Whose stored values to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every tenant's, and the canary: the platform operator's view.
    Everything,
    /// One tenant's provider keys (current rows and version snapshots).
    Tenant(&'a str),
}

/// The most stored values a tenant's count reads ([`Scope::Tenant`]). A
/// tenant's version snapshots grow with every provider write, and each
/// counted snapshot is a JSON value taken apart: a tenant of 100,000
/// values took 251–317 ms a call, and with the cap it takes 22–36 ms
/// however long its history (BENCHMARKS.md, "A tenant's key count,
/// capped"). The platform operator's count ([`Scope::Everything`]) is not
/// capped.
pub const TENANT_COUNTED_VALUES: u64 = 10_000;

/// Counts the stored values in `scope` by the key version each names: one
/// aggregate per place, grouped in the database by the ciphertext's
/// `arc1.<version>.` prefix, so only the groups cross to the registry. A
/// tenant's version snapshots are found through its providers (the
/// snapshots' `(provider_id, version_number)` index), not by reading every
/// tenant's, and a tenant's places together are read up to
/// [`TENANT_COUNTED_VALUES`]: a tenant with more answers
/// FAILED_PRECONDITION `TOO_MANY_STORED_VALUES`, having read one value
/// more than the cap.
///
/// Reading every value into the registry instead (as the rewrap job must)
/// took 576–598 ms for 110,000 values, on the connection a locking write
/// needs, and 36–40 ms for a tenant's 1,100; the aggregates take 177–200
/// and 3.5–4.3 ms (BENCHMARKS.md, "Counting stored values").
pub async fn count_by_version(
    db: &impl ConnectionTrait,
    scope: Scope<'_>,
) -> Result<Counts, Error> {
    let backend = db.get_database_backend();
    let mut places = vec![
        ("providers", "api_key_ciphertext", scope.providers()),
        (
            "provider_versions",
            "configuration ->> 'api_key'",
            scope.snapshots(),
        ),
    ];
    if scope == Scope::Everything {
        places.push(("key_canary", "ciphertext", Condition::all()));
    }
    let cap = match scope {
        Scope::Everything => None,
        Scope::Tenant(_) => Some(TENANT_COUNTED_VALUES),
    };
    let mut counts = Counts::new();
    let mut counted: u64 = 0;
    for (table, value, condition) in places {
        let values = Query::select()
            .expr_as(version_prefix(backend, value), Alias::new("prefix"))
            .from(Alias::new(table))
            .and_where(Expr::cust(format!("{value} IS NOT NULL")))
            .cond_where(condition)
            .apply_if(cap, |values, cap| {
                // One more than is left under the cap: reading it is how
                // the count knows it ran over.
                values.limit(cap.saturating_sub(counted).saturating_add(1));
            })
            .to_owned();
        let grouped = Query::select()
            .column(Alias::new("prefix"))
            .expr_as(Expr::cust("COUNT(*)"), Alias::new("values_counted"))
            .from_subquery(values, Alias::new("stored"))
            .group_by_col(Alias::new("prefix"))
            .to_owned();
        for row in db
            .query_all_raw(backend.build(&grouped))
            .await
            .map_err(db_error)?
        {
            let prefix: Option<String> = row.try_get("", "prefix").map_err(db_error)?;
            let in_group: i64 = row.try_get("", "values_counted").map_err(db_error)?;
            let in_group = u64::try_from(in_group).unwrap_or(0);
            counted = counted.saturating_add(in_group);
            let version = prefix.as_deref().and_then(key_version_of);
            *counts.entry(version).or_default() += in_group;
        }
        if let Some(cap) = cap.filter(|cap| counted > *cap) {
            return Err(Error::precondition(
                "TOO_MANY_STORED_VALUES",
                format!(
                    "this tenant stores more than {cap} provider keys (current and in version \
                     snapshots), more than one call counts: the platform operator's \
                     GetKeyStatus counts every stored value"
                ),
            ));
        }
    }
    Ok(counts)
}

/// `arc1.<version>.` of an `arc1` ciphertext (what [`key_version_of`]
/// reads), NULL for anything else; `value` is the SQL of the ciphertext.
fn version_prefix(backend: DbBackend, value: &str) -> SimpleExpr {
    let find = match backend {
        DbBackend::Postgres => "strpos",
        _ => "instr",
    };
    Expr::cust(format!(
        "CASE WHEN {value} LIKE 'arc1.%' THEN substr({value}, 1, 5 + {find}(substr({value}, 6), '.')) END"
    ))
}

impl Scope<'_> {
    /// The provider rows in scope.
    fn providers(self) -> Condition {
        match self {
            Self::Everything => Condition::all(),
            Self::Tenant(tenant) => {
                Condition::all().add(Expr::col(Alias::new("tenant_id")).eq(tenant))
            }
        }
    }

    /// The version snapshots in scope: those of the tenant's providers.
    fn snapshots(self) -> Condition {
        match self {
            Self::Everything => Condition::all(),
            Self::Tenant(tenant) => Condition::all().add(
                Expr::col(Alias::new("provider_id")).in_subquery(
                    Query::select()
                        .column(Alias::new("id"))
                        .from(Alias::new("providers"))
                        .and_where(Expr::col(Alias::new("tenant_id")).eq(tenant))
                        .to_owned(),
                ),
            ),
        }
    }
}

/// Runs `retire` (crypto-service's RetireKeyVersion) only when no stored
/// value names key `version`, counted while no write can store one, and
/// records `event` (the retire's audit event) with it: answers
/// `KEY_VERSION_IN_USE` otherwise, without calling it or recording
/// anything.
///
/// A count alone is not enough: a write that read a value before the
/// rewrap job moved it (a rollback copying an old snapshot, say) could
/// store it between the count and the retire, and that value would then
/// name a key nobody holds. So, after a first count outside any lock
/// (which refuses the common case, a retire run too early, without
/// holding anyone), the count runs again inside a write transaction that
/// holds every writer of the places a value lives, and `retire` runs
/// before it ends: on SQLite the transaction's write lock; on PostgreSQL
/// an `EXCLUSIVE` lock on the three tables, which also waits for a
/// locking write that has read its row `FOR UPDATE` and not yet written.
/// Writes wait for the second count and the call (ARCHITECTURE.md, "What
/// the fast paths rely on"); reads do not.
///
/// The event is written in that transaction before crypto-service is
/// asked, so a retire it refuses (or that fails) leaves no event, and one
/// it carries out commits its event as the writers are let go. Only a
/// commit that fails after the retire leaves the retire unrecorded: that
/// is logged, and the caller gets the error.
pub async fn retire_unused<T, Fut>(
    db: &DatabaseConnection,
    version: u32,
    event: Entry<'_>,
    retire: impl FnOnce() -> Fut,
) -> Result<T, Error>
where
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    refuse_if_in_use(db, version).await?;
    let txn = begin_write(db).await?;
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared(
            "LOCK TABLE providers, provider_versions, key_canary IN EXCLUSIVE MODE",
        )
        .await
        .map_err(db_error)?;
    }
    refuse_if_in_use(&txn, version).await?;
    audit::record(&txn, event).await?;
    let retired = retire().await?;
    if let Err(error) = txn.commit().await {
        tracing::error!(
            version,
            %error,
            "key version retired, but its audit event was not committed"
        );
        return Err(db_error(error));
    }
    Ok(retired)
}

async fn refuse_if_in_use(db: &impl ConnectionTrait, version: u32) -> Result<(), Error> {
    let counts = count_by_version(db, Scope::Everything).await?;
    match counts.get(&Some(version)).copied().unwrap_or(0) {
        0 => Ok(()),
        in_use => Err(Error::precondition(
            "KEY_VERSION_IN_USE",
            format!(
                "key version {version} still protects {in_use} stored values: run \
                 RewrapCredentials first"
            ),
        )),
    }
}

/// Moves every stored value not on `active` to it, `batch` values per
/// Rewrap call, stopping once `max_values` were examined (0 = all).
/// `progress` hears after each batch.
pub async fn rewrap_all(
    db: &DatabaseConnection,
    crypto: &Crypto,
    active: u32,
    batch: u64,
    max_values: u64,
    mut progress: impl FnMut(&RewrapReport),
) -> Result<RewrapReport, Error> {
    let mut report = RewrapReport::default();
    let mut after = Cursor::default();
    loop {
        let values = next_batch(db, &mut after, batch).await?;
        if values.is_empty() {
            break;
        }
        report.scanned += values.len() as u64;
        let (current, stale): (Vec<Stored>, Vec<Stored>) = values
            .into_iter()
            .partition(|v| key_version_of(&v.ciphertext) == Some(active));
        report.already_current += current.len() as u64;
        if !stale.is_empty() {
            let items = stale
                .iter()
                .map(|v| (v.ciphertext.clone(), v.aad.clone()))
                .collect();
            let rewrapped = crypto.rewrap(items).await?;
            let (written, raced) = store_rewrapped(db, &stale, &rewrapped).await?;
            report.rewrapped += written;
            report.changed_concurrently += raced;
        }
        progress(&report);
        if max_values > 0 && report.scanned >= max_values {
            break;
        }
    }
    Ok(report)
}

/// Writes rewrapped values back in one transaction; a provider whose key
/// changed meanwhile keeps the writer's value. Answers (written, raced).
async fn store_rewrapped(
    db: &DatabaseConnection,
    stale: &[Stored],
    rewrapped: &[crate::crypto::Rewrapped],
) -> Result<(u64, u64), Error> {
    let txn = begin_write(db).await?;
    let (mut written, mut raced) = (0, 0);
    for (value, new) in stale.iter().zip(rewrapped) {
        let changed = match &value.place {
            Place::Provider(id) => {
                provider::Entity::update_many()
                    .col_expr(
                        provider::Column::ApiKeyCiphertext,
                        Expr::value(new.ciphertext.clone()),
                    )
                    .filter(provider::Column::Id.eq(id.clone()))
                    .filter(provider::Column::ApiKeyCiphertext.eq(value.ciphertext.clone()))
                    .exec(&txn)
                    .await
                    .map_err(db_error)?
                    .rows_affected
            }
            Place::ProviderVersion { id, configuration } => {
                let mut configuration = configuration.clone();
                configuration["api_key"] = Value::String(new.ciphertext.clone());
                provider_version::Entity::update_many()
                    .col_expr(
                        provider_version::Column::Configuration,
                        Expr::value(configuration),
                    )
                    .filter(provider_version::Column::Id.eq(*id))
                    .exec(&txn)
                    .await
                    .map_err(db_error)?
                    .rows_affected
            }
            Place::Canary => {
                key_canary::Entity::update_many()
                    .col_expr(
                        key_canary::Column::Ciphertext,
                        Expr::value(new.ciphertext.clone()),
                    )
                    .filter(key_canary::Column::Id.eq(CANARY_ID))
                    .filter(key_canary::Column::Ciphertext.eq(value.ciphertext.clone()))
                    .exec(&txn)
                    .await
                    .map_err(db_error)?
                    .rows_affected
            }
        };
        if changed == 1 {
            written += 1;
        } else {
            raced += 1;
        }
    }
    txn.commit().await.map_err(db_error)?;
    Ok((written, raced))
}

/// Where a scan stands: the last key read in each place.
#[derive(Debug, Default)]
struct Cursor {
    provider: Option<String>,
    providers_done: bool,
    version: Option<i64>,
    versions_done: bool,
    canary_done: bool,
}

/// Up to `batch` stored values after `cursor`, providers first, then
/// version snapshots, then the canary.
async fn next_batch(
    db: &impl ConnectionTrait,
    cursor: &mut Cursor,
    batch: u64,
) -> Result<Vec<Stored>, Error> {
    if !cursor.providers_done {
        let mut query = provider::Entity::find()
            .filter(provider::Column::ApiKeyCiphertext.is_not_null())
            .order_by_asc(provider::Column::Id)
            .limit(batch);
        if let Some(after) = &cursor.provider {
            query = query.filter(provider::Column::Id.gt(after.clone()));
        }
        let rows = query.all(db).await.map_err(db_error)?;
        cursor.providers_done = (rows.len() as u64) < batch;
        cursor.provider = rows
            .last()
            .map(|row| row.id.clone())
            .or(cursor.provider.take());
        let values: Vec<Stored> = rows
            .into_iter()
            .filter_map(|row| {
                let ciphertext = row.api_key_ciphertext?;
                Some(Stored {
                    aad: api_key_aad(&row.tenant_id, &row.id),
                    place: Place::Provider(row.id),
                    ciphertext,
                })
            })
            .collect();
        if !values.is_empty() || !cursor.providers_done {
            return Ok(values);
        }
    }
    if !cursor.versions_done {
        let mut query = provider_version::Entity::find()
            .order_by_asc(provider_version::Column::Id)
            .limit(batch);
        if let Some(after) = cursor.version {
            query = query.filter(provider_version::Column::Id.gt(after));
        }
        let rows = query.all(db).await.map_err(db_error)?;
        cursor.versions_done = (rows.len() as u64) < batch;
        cursor.version = rows.last().map(|row| row.id).or(cursor.version);
        let values: Vec<Stored> = rows
            .into_iter()
            .filter_map(|row| {
                let ciphertext = row.configuration.get("api_key")?.as_str()?.to_owned();
                Some(Stored {
                    aad: api_key_aad(&row.tenant_id, &row.provider_id),
                    place: Place::ProviderVersion {
                        id: row.id,
                        configuration: row.configuration,
                    },
                    ciphertext,
                })
            })
            .collect();
        if !values.is_empty() || !cursor.versions_done {
            return Ok(values);
        }
    }
    if !cursor.canary_done {
        cursor.canary_done = true;
        let canary = key_canary::Entity::find_by_id(CANARY_ID.to_owned())
            .one(db)
            .await
            .map_err(db_error)?;
        return Ok(canary
            .map(|row| Stored {
                place: Place::Canary,
                ciphertext: row.ciphertext,
                aad: CANARY_AAD.to_vec(),
            })
            .into_iter()
            .collect());
    }
    Ok(Vec::new())
}

/// What the canary check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Canary {
    /// crypto-service decrypts the canary: it holds the right key.
    Verified,
    /// The canary did not exist and was written now.
    Created,
    /// crypto-service answered, but cannot decrypt the canary: wrong key.
    WrongKey(String),
    /// crypto-service did not answer.
    Unreachable(String),
}

/// Checks (or, the first time, writes) the canary through crypto-service.
pub async fn check_canary(db: &DatabaseConnection, crypto: &Crypto) -> Result<Canary, Error> {
    let stored = key_canary::Entity::find_by_id(CANARY_ID.to_owned())
        .one(db)
        .await
        .map_err(db_error)?;
    let Some(stored) = stored else {
        return create_canary(db, crypto).await;
    };
    Ok(
        match crypto.decrypt_raw(&stored.ciphertext, CANARY_AAD).await {
            Ok(plaintext) if plaintext == CANARY_PLAINTEXT => Canary::Verified,
            Ok(_) => Canary::WrongKey("the canary decrypted to another value".to_owned()),
            Err(failure) => classify(failure),
        },
    )
}

async fn create_canary(db: &DatabaseConnection, crypto: &Crypto) -> Result<Canary, Error> {
    let ciphertext = match crypto.encrypt_raw(CANARY_PLAINTEXT, CANARY_AAD).await {
        Ok(ciphertext) => ciphertext,
        Err(failure) => return Ok(classify(failure)),
    };
    let row = key_canary::ActiveModel {
        id: Set(CANARY_ID.to_owned()),
        ciphertext: Set(ciphertext),
        create_time: Set(super::now()),
    };
    match row.insert(db).await {
        Ok(_) => Ok(Canary::Created),
        // Another replica wrote it first: check theirs next time.
        Err(error) if unique_violation(&error).is_some() => Ok(Canary::Created),
        Err(error) => Err(db_error(error)),
    }
}

fn classify(failure: RawFailure) -> Canary {
    match failure {
        RawFailure::Refused(message) => Canary::WrongKey(message),
        RawFailure::Unreachable(message) => Canary::Unreachable(message),
    }
}
