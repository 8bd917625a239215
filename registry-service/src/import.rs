//! `registry-service import-fernet`: carries providers over from the
//! Python platform's database. Each Fernet-encrypted API key is decrypted
//! and re-encrypted inside crypto-service (`ImportFernet`), so plaintext
//! never enters the registry process.
//!
//! Every legacy row of the tenant becomes one provider (version 1, action
//! CREATE) under a new UUIDv7 id, with its key as crypto-service ciphertext
//! bound to that id. A row whose key cannot be carried over, or whose
//! settings do not map, is reported and not created; a name the tenant
//! already has is skipped, so running the import again only adds what is
//! missing. Output: one line per row on stdout (`imported <name> as <id>`,
//! `skipped <name>: <reason>`, `failed <name>: <reason>`) and a summary
//! line; the exit status is non-zero when a row failed. Keys and tokens are
//! never printed.
//!
//! Then the platform's agents of the tenant (an agent's tenant is its
//! provider's: `agents` has no tenant column) come over with their whole
//! history: every `agent_versions` snapshot is mapped to an [`AgentSpec`]
//! and validated as `CreateAgent` validates it, its legacy provider id
//! replaced by the id of the provider this import (or an earlier run)
//! created for that row. Only when every version maps is anything written:
//! version 1 through `versioned::create`, each later one through
//! `versioned::update` with the platform's action (UPDATE or ROLLBACK),
//! description and user (its email as `changed_by`; `user <id>` for no
//! email, or for one no token's subject may be, by
//! `auth::check_identity_name`), so the registry computes the diffs and
//! the change log, audit trail and hash chains record each version as
//! they record the API's writes. Not carried over:
//! the platform's timestamps (versions are stamped at import time), and
//! `is_active`, which the platform's agents do not have (see README,
//! "Moving over from the Python platform"). Lines: `imported agent <name>
//! as <id> (<n> versions)`, `skipped agent …`, `failed agent …`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;

use migrations::entity::{agent, provider};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, EntityTrait,
    QueryFilter, QueryResult, QuerySelect, Statement,
};
use serde_json::{Map, Value};

use crate::api::describe;
use crate::caller::Caller;
use crate::config::{Args, ImportArgs};
use crate::crypto::Crypto;
use crate::error::Error;
use crate::model::agent::AgentSpec;
use crate::model::provider::ProviderSpec;
use crate::model::version::Action;
use crate::store::agents::Agents;
use crate::store::providers::Providers;
use crate::store::versioned::Write;
use crate::store::{self, db_error, providers};
use crate::telemetry::RegistryMetrics;
use proto::v1 as pb;

/// The change description of every imported provider's version 1.
pub const CHANGE_DESCRIPTION: &str = "Imported from the Python platform";

/// Rows per `ImportFernet` call (crypto-service accepts up to 1,000).
const BATCH_ROWS: usize = 100;

const LEGACY_URL_SETTING: &str = "LEGACY_DATABASE_URL";

/// Runs the import and prints a report per row.
pub async fn run(args: &Args, import: &ImportArgs) -> Result<(), Error> {
    let settings = args.serve.settings(&args.common)?;
    let tenant = required("--tenant", &import.tenant)?;
    let subject = required("--subject", &import.subject)?;

    let legacy = connect_legacy(&import.legacy_database_url).await?;
    let rows = rows_of_tenant(
        read_legacy_rows(&legacy).await?,
        &read_tenants(&legacy).await,
        &tenant,
    )?;
    let tenant_provider_ids: HashSet<i64> = rows.iter().map(|row| row.id).collect();
    let agents = read_legacy_agents(&legacy).await?;
    legacy.close().await.map_err(legacy_error)?;

    let db = if import.dry_run {
        connect_read_only(&settings.database).await
    } else {
        let db = store::connect(&settings.database).await?;
        if settings.migrate {
            store::migrate_up(&db).await?;
        }
        Some(db)
    };
    let migrated = match &db {
        Some(db) if import.dry_run => migrations::status(db)
            .await
            .map(|all| all.iter().all(|(_, applied)| *applied))
            .unwrap_or(false),
        Some(_) => true,
        None => false,
    };
    let crypto = Crypto::connect_lazy(
        &settings.crypto_endpoint,
        settings.crypto_tls.clone(),
        settings.crypto_timeout,
        RegistryMetrics::default(),
    )?;

    // The store writes as the server does (no recent-records cache: the
    // import only creates).
    let store = db
        .clone()
        .filter(|_| !import.dry_run)
        .map(|db| store::Store::new(db, &RegistryMetrics::default(), (0, 0)));
    let mut importer = Importer {
        db: db.as_ref(),
        store: store.as_ref(),
        crypto: &crypto,
        caller: Caller { tenant, subject },
        dry_run: import.dry_run,
        taken: HashMap::new(),
        agents_taken: HashSet::new(),
        provider_ids: HashMap::new(),
        has_default: false,
        report: Report::default(),
    };
    if migrated {
        importer.load_tenant_state().await?;
    } else {
        println!(
            "note: the registry database does not exist or is not migrated yet; \
             names already taken are not checked"
        );
    }
    let mut result = importer.import_all(rows).await;
    if result.is_ok() {
        match agents {
            Some(agents) => {
                result = importer.import_agents(agents, &tenant_provider_ids).await;
            }
            None => println!(
                "note: the Python platform's database has no agents table; no agents imported"
            ),
        }
    }
    let report = importer.report;
    println!("{}", report.summary(import.dry_run));
    result?;
    if report.failed > 0 {
        return Err(Error::precondition(
            "IMPORT_INCOMPLETE",
            format!(
                "{} row(s) failed; fix them (or the legacy key) and run the import again: \
                 rows already imported are skipped",
                report.failed
            ),
        ));
    }
    Ok(())
}

/// A tenant or subject flag, trimmed: held to the rule a token's are
/// (`auth::check_identity_name`), so that no import writes rows under a
/// tenant no token could name.
fn required(setting: &str, value: &str) -> Result<String, Error> {
    let value = value.trim();
    crate::auth::check_identity_name(value).map_err(|problem| Error::config(setting, problem))?;
    Ok(value.to_owned())
}

/// Counts of what happened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Report {
    imported: usize,
    skipped: usize,
    failed: usize,
}

impl Report {
    fn summary(&self, dry_run: bool) -> String {
        if dry_run {
            format!(
                "import-fernet (dry run, nothing written): {} to import, {} skipped, {} failed",
                self.imported, self.skipped, self.failed
            )
        } else {
            format!(
                "import-fernet: {} imported, {} skipped, {} failed",
                self.imported, self.skipped, self.failed
            )
        }
    }
}

struct Importer<'a> {
    /// The registry database; `None` in a dry run without one.
    db: Option<&'a DatabaseConnection>,
    /// The store imported providers are written through (not in a dry run).
    store: Option<&'a store::Store>,
    crypto: &'a Crypto,
    caller: Caller,
    dry_run: bool,
    /// Provider names the tenant has (or will have after this run), with
    /// the id of the provider holding each.
    taken: HashMap<String, String>,
    /// Agent names the tenant has (or will have after this run).
    agents_taken: HashSet<String>,
    /// Legacy provider id -> the registry id of the provider it became
    /// (this run's, or the one of that name an earlier run created).
    provider_ids: HashMap<i64, String>,
    /// Whether the tenant has a default provider (or will have).
    has_default: bool,
    report: Report,
}

/// A row ready to be created: its new id and spec (key not yet sealed).
struct Planned {
    row: LegacyRow,
    id: String,
    spec: ProviderSpec,
    notes: Vec<String>,
}

impl Importer<'_> {
    async fn load_tenant_state(&mut self) -> Result<(), Error> {
        let Some(db) = self.db else {
            return Ok(());
        };
        let names: Vec<(String, String)> = provider::Entity::find()
            .select_only()
            .column(provider::Column::Name)
            .column(provider::Column::Id)
            .filter(provider::Column::TenantId.eq(self.caller.tenant.clone()))
            .into_tuple()
            .all(db)
            .await
            .map_err(db_error)?;
        self.taken = names.into_iter().collect();
        let agent_names: Vec<String> = agent::Entity::find()
            .select_only()
            .column(agent::Column::Name)
            .filter(agent::Column::TenantId.eq(self.caller.tenant.clone()))
            .into_tuple()
            .all(db)
            .await
            .map_err(db_error)?;
        self.agents_taken = agent_names.into_iter().collect();
        self.has_default = providers::default_of(db, &self.caller.tenant)
            .await?
            .is_some();
        Ok(())
    }

    async fn import_all(&mut self, rows: Vec<LegacyRow>) -> Result<(), Error> {
        let mut batch = Vec::new();
        for row in rows {
            let name = row.name.clone();
            if let Some(existing) = self.taken.get(&name) {
                self.provider_ids.insert(row.id, existing.clone());
                self.skipped(
                    &name,
                    "a provider with this name already exists in the tenant",
                );
                continue;
            }
            match plan(row) {
                Ok(planned) => {
                    self.taken.insert(name, planned.id.clone());
                    batch.push(planned);
                }
                Err(reason) => self.failed(&name, &reason),
            }
            if batch.len() == BATCH_ROWS {
                self.import_batch(std::mem::take(&mut batch)).await?;
            }
        }
        if !batch.is_empty() {
            self.import_batch(batch).await?;
        }
        Ok(())
    }

    /// Seals the batch's keys in one `ImportFernet` call, then creates each
    /// provider whose key (if it has one) came through.
    async fn import_batch(&mut self, batch: Vec<Planned>) -> Result<(), Error> {
        let items: Vec<(&str, &str)> = batch
            .iter()
            .filter_map(|p| p.row.token().map(|token| (p.id.as_str(), token)))
            .collect();
        let mut sealed = if items.is_empty() {
            Vec::new()
        } else {
            self.crypto
                .import_fernet(&self.caller.tenant, &items)
                .await?
        }
        .into_iter();
        for mut planned in batch {
            if planned.row.token().is_some() {
                match sealed.next() {
                    Some(Ok(ciphertext)) => planned.spec.api_key = Some(ciphertext),
                    Some(Err(reason)) => {
                        self.failed(&planned.row.name, &format!("api_key: {reason}"));
                        continue;
                    }
                    None => {
                        return Err(Error::Internal(
                            "crypto-service answered too few ImportFernet results".to_owned(),
                        ));
                    }
                }
            }
            self.create(planned).await?;
        }
        Ok(())
    }

    async fn create(&mut self, mut planned: Planned) -> Result<(), Error> {
        if planned.spec.is_default {
            if self.has_default {
                planned.spec.is_default = false;
                planned
                    .notes
                    .push("not default: the tenant already has a default provider".to_owned());
            } else {
                self.has_default = true;
            }
        }
        let name = planned.row.name.clone();
        let suffix = notes(&planned.notes);
        let store = match self.store {
            Some(store) if !self.dry_run => store,
            _ => {
                println!("would import {} as {}{suffix}", shown(&name), planned.id);
                self.provider_ids.insert(planned.row.id, planned.id);
                self.report.imported += 1;
                return Ok(());
            }
        };
        let write = Write::new(&self.caller, Action::Create, CHANGE_DESCRIPTION.to_owned());
        let kind = Providers::default();
        let legacy_id = planned.row.id;
        match store::versioned::create(store, &kind, write, planned.id.clone(), planned.spec).await
        {
            Ok(record) => {
                println!("imported {} as {}{suffix}", shown(&name), record.id);
                self.provider_ids.insert(legacy_id, record.id);
                self.report.imported += 1;
                Ok(())
            }
            Err(Error::AlreadyExists { .. } | Error::NameHeldByDeleted { .. }) => {
                self.skipped(
                    &name,
                    "a provider with this name already exists in the tenant",
                );
                Ok(())
            }
            Err(error @ Error::Unavailable { .. }) => Err(error),
            Err(error) => {
                self.failed(&name, &error.to_string());
                Ok(())
            }
        }
    }

    fn skipped(&mut self, name: &str, reason: &str) {
        println!("skipped {}: {reason}", shown(name));
        self.report.skipped += 1;
    }

    fn failed(&mut self, name: &str, reason: &str) {
        println!("failed {}: {reason}", shown(name));
        self.report.failed += 1;
    }
}

/// A name as printed: control characters escaped, so one row is one line.
fn shown(name: &str) -> String {
    if name.chars().any(char::is_control) {
        format!("{name:?}")
    } else {
        name.to_owned()
    }
}

fn notes(notes: &[String]) -> String {
    if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join("; "))
    }
}

/// One row of the platform's `llm_providers` table.
struct LegacyRow {
    id: i64,
    tenant_id: i64,
    name: String,
    provider_type: String,
    model_name: String,
    api_base: Option<String>,
    /// The stored form of the key (Fernet token, base64'd again).
    api_key: Option<String>,
    config: Option<String>,
    is_active: bool,
    is_default: bool,
}

impl fmt::Debug for LegacyRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LegacyRow")
            .field("tenant_id", &self.tenant_id)
            .field("name", &self.name)
            .field("provider_type", &self.provider_type)
            .field("api_key", &self.token().map(|_| "<token>"))
            .finish_non_exhaustive()
    }
}

impl LegacyRow {
    /// The stored key, when the row has one (the platform writes "" for none).
    fn token(&self) -> Option<&str> {
        self.api_key
            .as_deref()
            .map(str::trim)
            .filter(|token| !token.is_empty())
    }
}

/// The provider a legacy row becomes, validated as `CreateProvider` would.
fn plan(row: LegacyRow) -> Result<Planned, String> {
    let kind = provider_type(&row.provider_type)?;
    let mut notes = Vec::new();
    if !row.is_active {
        notes.push("inactive on the Python platform".to_owned());
    }
    let config = config_object(row.config.as_deref())?;
    let mut params = pb::ModelParameters::default();
    let mut api_version = None;
    let mut ignored = BTreeSet::new();
    for (key, value) in &config {
        match key.as_str() {
            "temperature" => params.temperature = Some(number(key, value)?),
            "top_p" => params.top_p = Some(number(key, value)?),
            "frequency_penalty" => params.frequency_penalty = Some(number(key, value)?),
            "presence_penalty" => params.presence_penalty = Some(number(key, value)?),
            "max_tokens" => params.max_tokens = Some(integer(key, value)?),
            "timeout" | "timeout_seconds" | "request_timeout" => {
                params.timeout_seconds = Some(integer(key, value)?);
            }
            "stop" => params.stop = stop_sequences(value)?,
            "api_version" if kind == pb::ProviderType::AzureOpenai => {
                api_version = Some(text(key, value)?);
            }
            _ => {
                ignored.insert(key.clone());
            }
        }
    }
    if !ignored.is_empty() {
        let keys: Vec<String> = ignored.into_iter().collect();
        notes.push(format!("config keys not carried over: {}", keys.join(", ")));
    }
    let base_url = row
        .api_base
        .as_deref()
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    if kind == pb::ProviderType::AzureOpenai && (base_url.is_empty() || api_version.is_none()) {
        return Err(
            "an Azure OpenAI provider needs api_base (the resource endpoint) and \
             config.api_version; set them on the Python platform and run again"
                .to_owned(),
        );
    }
    if kind == pb::ProviderType::OpenaiCompatible && base_url.is_empty() {
        return Err(format!(
            "provider_type {:?} becomes OPENAI_COMPATIBLE, which needs an api_base",
            row.provider_type
        ));
    }
    let has_params = params != pb::ModelParameters::default();
    let request = pb::Provider {
        name: row.name.clone(),
        provider_type: kind.into(),
        model_name: row.model_name.clone(),
        base_url,
        api_version,
        default_parameters: has_params.then_some(params),
        is_default: row.is_default,
        ..Default::default()
    };
    let input = ProviderSpec::from_proto(&request).map_err(|error| error.to_string())?;
    Ok(Planned {
        row,
        id: uuid::Uuid::now_v7().to_string(),
        spec: input.spec,
        notes,
    })
}

/// The registry's type for the platform's `provider_type` (the enum's name,
/// as SQLAlchemy stores it, or its value; any case).
fn provider_type(value: &str) -> Result<pb::ProviderType, String> {
    use pb::ProviderType as T;
    Ok(match value.trim().to_ascii_lowercase().as_str() {
        "openai" => T::Openai,
        "anthropic" => T::Anthropic,
        "azure" | "azure_openai" | "azureopenai" => T::AzureOpenai,
        "ollama" => T::Ollama,
        "vllm" | "custom" | "openai_compatible" => T::OpenaiCompatible,
        "google" | "gemini" => T::Google,
        "bedrock" => T::Bedrock,
        "mistral" => T::Mistral,
        "cohere" => T::Cohere,
        "groq" => T::Groq,
        _ => return Err(format!("unknown provider_type {value:?}")),
    })
}

fn config_object(config: Option<&str>) -> Result<Map<String, Value>, String> {
    let Some(text) = config.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(Map::new());
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err("config is not a JSON object".to_owned()),
        Err(_) => Err("config is not valid JSON".to_owned()),
    }
}

fn number(key: &str, value: &Value) -> Result<f64, String> {
    value
        .as_f64()
        .ok_or_else(|| format!("config.{key} is not a number"))
}

fn integer(key: &str, value: &Value) -> Result<i32, String> {
    let whole = value
        .as_i64()
        .or_else(|| {
            value
                .as_f64()
                .filter(|n| n.fract() == 0.0)
                .map(|n| n as i64)
        })
        .ok_or_else(|| format!("config.{key} is not a whole number"))?;
    i32::try_from(whole).map_err(|_| format!("config.{key} is out of range"))
}

fn text(key: &str, value: &Value) -> Result<String, String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("config.{key} is not a string"))
}

fn stop_sequences(value: &Value) -> Result<Vec<String>, String> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::String(one) => Ok(vec![one.clone()]),
        Value::Array(all) => all
            .iter()
            .map(|item| text("stop", item))
            .collect::<Result<_, _>>(),
        _ => Err("config.stop is not a string or a list of strings".to_owned()),
    }
}

/// The registry database for a dry run: a SQLite file opened read-only (and
/// not created); `None` when there is none to read.
async fn connect_read_only(settings: &store::DatabaseSettings) -> Option<DatabaseConnection> {
    let mut settings = settings.clone();
    if settings.url.starts_with("sqlite:") && !settings.url.contains("mode=") {
        let separator = if settings.url.contains('?') { '&' } else { '?' };
        settings.url = format!("{}{separator}mode=ro", settings.url);
    }
    store::connect(&settings).await.ok()
}

/// Opens the platform's database; a SQLite file read-only.
async fn connect_legacy(url: &str) -> Result<DatabaseConnection, Error> {
    let url = url.trim();
    let url = if url.starts_with("sqlite:") {
        if url.contains("mode=") {
            url.to_owned()
        } else if url.contains('?') {
            format!("{url}&mode=ro")
        } else {
            format!("{url}?mode=ro")
        }
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        url.to_owned()
    } else {
        return Err(Error::config(
            LEGACY_URL_SETTING,
            "must start with sqlite: or postgres://",
        ));
    };
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(1)
        .min_connections(1)
        .sqlx_logging(false);
    Database::connect(options).await.map_err(|error| {
        Error::config(
            LEGACY_URL_SETTING,
            format!(
                "cannot open the Python platform's database: {}",
                legacy_detail(&error)
            ),
        )
    })
}

fn legacy_error(error: sea_orm::DbErr) -> Error {
    Error::config(
        LEGACY_URL_SETTING,
        format!(
            "reading the Python platform's database: {}",
            legacy_detail(&error)
        ),
    )
}

/// The database's own message, without the connection string.
fn legacy_detail(error: &sea_orm::DbErr) -> String {
    match error {
        sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))
        | sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | sea_orm::DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => e.to_string(),
        other => other.to_string(),
    }
}

/// Every provider row, oldest first. The casts give the same column types
/// on SQLite and PostgreSQL (where `provider_type` is a native enum and
/// `config` JSON).
async fn read_legacy_rows(legacy: &DatabaseConnection) -> Result<Vec<LegacyRow>, Error> {
    const SQL: &str = "SELECT CAST(id AS BIGINT) AS id, \
        CAST(tenant_id AS BIGINT) AS tenant_id, name, \
        CAST(provider_type AS TEXT) AS provider_type, model_name, api_base, api_key, \
        CAST(config AS TEXT) AS config, is_active, is_default \
        FROM llm_providers ORDER BY id";
    let rows = legacy
        .query_all_raw(Statement::from_string(
            legacy.get_database_backend(),
            SQL.to_owned(),
        ))
        .await
        .map_err(legacy_error)?;
    rows.iter().map(legacy_row).collect()
}

fn legacy_row(row: &QueryResult) -> Result<LegacyRow, Error> {
    let column = |name: &str, error: sea_orm::DbErr| {
        Error::config(
            LEGACY_URL_SETTING,
            format!(
                "llm_providers.{name} is unreadable: {}",
                legacy_detail(&error)
            ),
        )
    };
    let string = |name: &str| row.try_get::<String>("", name).map_err(|e| column(name, e));
    let optional = |name: &str| {
        row.try_get::<Option<String>>("", name)
            .map_err(|e| column(name, e))
    };
    let boolean = |name: &str| {
        row.try_get::<bool>("", name)
            .or_else(|_| row.try_get::<i64>("", name).map(|n| n != 0))
            .map_err(|e| column(name, e))
    };
    Ok(LegacyRow {
        id: row.try_get::<i64>("", "id").map_err(|e| column("id", e))?,
        tenant_id: row
            .try_get::<i64>("", "tenant_id")
            .map_err(|e| column("tenant_id", e))?,
        name: string("name")?,
        provider_type: string("provider_type")?,
        model_name: string("model_name")?,
        api_base: optional("api_base")?,
        api_key: optional("api_key")?,
        config: optional("config")?,
        is_active: boolean("is_active")?,
        is_default: boolean("is_default")?,
    })
}

/// A tenant of the platform: id, name, schema name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LegacyTenant {
    id: i64,
    name: String,
    schema_name: String,
}

/// The platform's tenants; empty when the table cannot be read (only
/// needed to tell several tenants apart).
async fn read_tenants(legacy: &DatabaseConnection) -> Vec<LegacyTenant> {
    const SQL: &str = "SELECT CAST(id AS BIGINT) AS id, name, schema_name FROM tenants ORDER BY id";
    let Ok(rows) = legacy
        .query_all_raw(Statement::from_string(
            legacy.get_database_backend(),
            SQL.to_owned(),
        ))
        .await
    else {
        return Vec::new();
    };
    rows.iter()
        .filter_map(|row| {
            Some(LegacyTenant {
                id: row.try_get("", "id").ok()?,
                name: row.try_get("", "name").ok()?,
                schema_name: row.try_get("", "schema_name").ok()?,
            })
        })
        .collect()
}

/// The rows to import into `tenant`. A database of one tenant is imported
/// whole; with several, `tenant` must name one of them (by id, name or
/// schema name), so no tenant's providers land in another's.
fn rows_of_tenant(
    rows: Vec<LegacyRow>,
    tenants: &[LegacyTenant],
    tenant: &str,
) -> Result<Vec<LegacyRow>, Error> {
    let ids: BTreeSet<i64> = rows.iter().map(|row| row.tenant_id).collect();
    if ids.len() <= 1 {
        return Ok(rows);
    }
    let matching: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| {
            id.to_string() == tenant
                || tenants
                    .iter()
                    .any(|t| t.id == *id && (t.schema_name == tenant || t.name == tenant))
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok(rows
            .into_iter()
            .filter(|row| row.tenant_id == *one)
            .collect()),
        _ => {
            let known: Vec<String> = ids
                .iter()
                .map(|id| match tenants.iter().find(|t| t.id == *id) {
                    Some(t) => format!("{id} ({})", t.schema_name),
                    None => id.to_string(),
                })
                .collect();
            Err(Error::config(
                "--tenant",
                format!(
                    "the Python platform's database holds providers of {} tenants ({}); \
                     --tenant must name exactly one of them by id, name or schema_name",
                    ids.len(),
                    known.join(", ")
                ),
            ))
        }
    }
}

/// An agent of the platform (`agents`) with its version history
/// (`agent_versions`, oldest first).
#[derive(Debug)]
struct LegacyAgent {
    name: String,
    /// The legacy provider its current row runs on (it tells the tenant:
    /// the platform's agents have no tenant column of their own).
    provider_id: i64,
    versions: Vec<LegacyVersion>,
}

/// One row of `agent_versions`.
#[derive(Debug)]
struct LegacyVersion {
    number: i64,
    action: String,
    /// The user's email (`users.email`), `user <id>` when the user row is
    /// gone, `None` when the platform recorded no user.
    changed_by: Option<String>,
    /// The full configuration snapshot (JSON).
    configuration: String,
    description: Option<String>,
}

/// A version ready to be written.
struct PlannedVersion {
    action: Action,
    spec: AgentSpec,
    changed_by: Option<String>,
    description: String,
}

/// The snapshot keys of the platform's `Agent` columns that map to the
/// registry's `Agent` (every one of them does).
const AGENT_KEYS: &[&str] = &[
    "name",
    "role",
    "goal",
    "backstory",
    "llm_provider_id",
    "temperature",
    "max_tokens",
    "allow_delegation",
    "verbose",
    "cache",
    "max_iter",
    "max_rpm",
    "max_execution_time",
    "allow_code_execution",
    "respect_context_window",
    "max_retry_limit",
];

impl Importer<'_> {
    /// Imports the agents whose provider is one of the tenant's legacy
    /// providers (`tenant_provider_ids`); the others belong to another
    /// tenant and are left alone.
    async fn import_agents(
        &mut self,
        agents: Vec<LegacyAgent>,
        tenant_provider_ids: &HashSet<i64>,
    ) -> Result<(), Error> {
        for legacy in agents {
            if !tenant_provider_ids.contains(&legacy.provider_id) {
                continue;
            }
            let name = legacy.name.clone();
            if self.agents_taken.contains(&name) {
                self.skipped_agent(
                    &name,
                    "an agent with this name already exists in the tenant",
                );
                continue;
            }
            let planned = match plan_agent(&legacy, &self.provider_ids, tenant_provider_ids) {
                Ok(planned) => planned,
                Err(reason) => {
                    self.failed_agent(&name, &reason);
                    continue;
                }
            };
            self.agents_taken.insert(name.clone());
            self.write_agent(&name, planned).await?;
        }
        Ok(())
    }

    /// Creates the agent from its first version, then appends each later
    /// one through the same core the API writes with (so the registry
    /// computes each diff, and the change log and audit trail record each
    /// version).
    async fn write_agent(
        &mut self,
        name: &str,
        (versions, mut notes): (Vec<PlannedVersion>, Vec<String>),
    ) -> Result<(), Error> {
        let count = versions.len();
        let store = match self.store {
            Some(store) if !self.dry_run => store,
            _ => {
                notes.insert(0, versions_note(count));
                println!("would import agent {}{}", shown(name), self::notes(&notes));
                self.report.imported += 1;
                return Ok(());
            }
        };
        let id = uuid::Uuid::now_v7().to_string();
        let mut written = 0;
        let mut merged = 0;
        let mut current = 0;
        for version in versions {
            let caller = Caller {
                tenant: self.caller.tenant.clone(),
                subject: version
                    .changed_by
                    .clone()
                    .unwrap_or_else(|| self.caller.subject.clone()),
            };
            let write = Write::new(&caller, version.action, version.description);
            let result = if version.action == Action::Create {
                store::versioned::create(store, &Agents, write, id.clone(), version.spec).await
            } else {
                let spec = version.spec;
                store::versioned::update(store, &Agents, write, &id, None, |_| Ok(spec.clone()))
                    .await
                    .map(|written| written.record)
            };
            match result {
                Ok(record) => {
                    if record.version == current {
                        merged += 1;
                    }
                    current = record.version;
                    written += 1;
                }
                Err(Error::AlreadyExists { .. } | Error::NameHeldByDeleted { .. })
                    if written == 0 =>
                {
                    self.skipped_agent(
                        name,
                        "an agent with this name already exists in the tenant",
                    );
                    return Ok(());
                }
                Err(error @ Error::Unavailable { .. }) => return Err(error),
                Err(error) if written == 0 => {
                    self.failed_agent(name, &error.to_string());
                    return Ok(());
                }
                Err(error) => {
                    self.failed_agent(
                        name,
                        &format!(
                            "{id} holds only its first {current} version(s): version {} \
                             failed: {error}",
                            written + 1
                        ),
                    );
                    return Ok(());
                }
            }
        }
        notes.insert(
            0,
            versions_note(usize::try_from(current).unwrap_or_default()),
        );
        if merged > 0 {
            notes.push(format!(
                "{merged} legacy version(s) identical to the one before once mapped: not repeated"
            ));
        }
        println!(
            "imported agent {} as {id}{}",
            shown(name),
            self::notes(&notes)
        );
        self.report.imported += 1;
        Ok(())
    }

    fn skipped_agent(&mut self, name: &str, reason: &str) {
        println!("skipped agent {}: {reason}", shown(name));
        self.report.skipped += 1;
    }

    fn failed_agent(&mut self, name: &str, reason: &str) {
        println!("failed agent {}: {reason}", shown(name));
        self.report.failed += 1;
    }
}

/// Every version of `legacy` mapped and validated as the API would, so
/// an agent that does not map writes nothing.
fn plan_agent(
    legacy: &LegacyAgent,
    provider_ids: &HashMap<i64, String>,
    tenant_provider_ids: &HashSet<i64>,
) -> Result<(Vec<PlannedVersion>, Vec<String>), String> {
    if legacy.versions.is_empty() {
        return Err("it has no version history on the Python platform".to_owned());
    }
    let mut planned = Vec::with_capacity(legacy.versions.len());
    let mut ignored = BTreeSet::new();
    for (index, version) in legacy.versions.iter().enumerate() {
        let at = |reason: String| format!("version {}: {reason}", version.number);
        let action = match version.action.trim().to_ascii_lowercase().as_str() {
            _ if index == 0 => Action::Create,
            "update" | "create" => Action::Update,
            "rollback" => Action::Rollback,
            other => return Err(at(format!("unknown action {other:?}"))),
        };
        let config = config_object(Some(&version.configuration))
            .map_err(|e| at(e.replace("config", "configuration")))?;
        ignored.extend(
            config
                .keys()
                .filter(|key| !AGENT_KEYS.contains(&key.as_str()))
                .cloned(),
        );
        let input = agent_message(&config, provider_ids, tenant_provider_ids).map_err(at)?;
        let spec = AgentSpec::from_proto(&input).map_err(|e| at(e.to_string()))?;
        // Checked as a request's change_description is.
        let description = describe(version.description.as_deref().unwrap_or_default(), || {
            CHANGE_DESCRIPTION.to_owned()
        })
        .map_err(|e| at(e.to_string()))?;
        planned.push(PlannedVersion {
            action,
            spec,
            changed_by: version.changed_by.clone(),
            description,
        });
    }
    let mut notes = Vec::new();
    if !ignored.is_empty() {
        let keys: Vec<String> = ignored.into_iter().collect();
        notes.push(format!(
            "configuration keys not carried over: {}",
            keys.join(", ")
        ));
    }
    Ok((planned, notes))
}

/// The registry's `Agent` for one legacy snapshot.
fn agent_message(
    config: &Map<String, Value>,
    provider_ids: &HashMap<i64, String>,
    tenant_provider_ids: &HashSet<i64>,
) -> Result<pb::Agent, String> {
    let get = |key: &str| config.get(key).filter(|v| !v.is_null());
    let string = |key: &str| get(key).map(|v| text(key, v)).transpose();
    let flag = |key: &str| {
        get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| format!("configuration.{key} is not a boolean"))
            })
            .transpose()
    };
    let whole = |key: &str| get(key).map(|v| integer(key, v)).transpose();
    let legacy_provider = get("llm_provider_id")
        .and_then(Value::as_i64)
        .ok_or("configuration.llm_provider_id is missing")?;
    if !tenant_provider_ids.contains(&legacy_provider) {
        return Err(format!(
            "its provider (legacy id {legacy_provider}) belongs to another tenant"
        ));
    }
    let provider_id = provider_ids
        .get(&legacy_provider)
        .ok_or_else(|| format!("its provider (legacy id {legacy_provider}) was not imported"))?;
    let max_tokens = whole("max_tokens")?;
    Ok(pb::Agent {
        name: string("name")?.unwrap_or_default(),
        role: string("role")?.unwrap_or_default(),
        goal: string("goal")?.unwrap_or_default(),
        backstory: string("backstory")?.unwrap_or_default(),
        llm_provider_id: Some(provider_id.clone()),
        temperature: get("temperature")
            .map(|v| number("temperature", v))
            .transpose()?,
        llm_overrides: max_tokens.map(|max_tokens| pb::ModelParameters {
            max_tokens: Some(max_tokens),
            ..Default::default()
        }),
        allow_delegation: flag("allow_delegation")?,
        verbose: flag("verbose")?,
        cache: flag("cache")?,
        max_iter: whole("max_iter")?,
        max_rpm: whole("max_rpm")?,
        max_execution_time: whole("max_execution_time")?,
        allow_code_execution: flag("allow_code_execution")?,
        respect_context_window: flag("respect_context_window")?,
        max_retry_limit: whole("max_retry_limit")?,
        ..Default::default()
    })
}

fn versions_note(count: usize) -> String {
    if count == 1 {
        "1 version".to_owned()
    } else {
        format!("{count} versions")
    }
}

/// Every agent of the platform with its versions; `None` when the database
/// has no `agents` table (a platform that never stored agents).
async fn read_legacy_agents(
    legacy: &DatabaseConnection,
) -> Result<Option<Vec<LegacyAgent>>, Error> {
    let backend = legacy.get_database_backend();
    let query = |sql: &str| legacy.query_all_raw(Statement::from_string(backend, sql.to_owned()));
    if query("SELECT 1 FROM agents WHERE 1 = 0").await.is_err() {
        return Ok(None);
    }
    let rows = query(
        "SELECT CAST(id AS BIGINT) AS id, name, \
         CAST(llm_provider_id AS BIGINT) AS llm_provider_id FROM agents ORDER BY id",
    )
    .await
    .map_err(legacy_error)?;
    let unreadable = |table: &str, name: &str, error: sea_orm::DbErr| {
        Error::config(
            LEGACY_URL_SETTING,
            format!("{table}.{name} is unreadable: {}", legacy_detail(&error)),
        )
    };
    let mut agents = Vec::with_capacity(rows.len());
    let mut index = HashMap::new();
    for row in &rows {
        let get = |name: &str| {
            row.try_get::<i64>("", name)
                .map_err(|e| unreadable("agents", name, e))
        };
        index.insert(get("id")?, agents.len());
        agents.push(LegacyAgent {
            name: row
                .try_get::<String>("", "name")
                .map_err(|e| unreadable("agents", "name", e))?,
            provider_id: get("llm_provider_id")?,
            versions: Vec::new(),
        });
    }
    let versions = query(
        "SELECT CAST(v.agent_id AS BIGINT) AS agent_id, \
         CAST(v.version_number AS BIGINT) AS version_number, \
         CAST(v.action AS TEXT) AS action, \
         CAST(v.changed_by_user_id AS BIGINT) AS user_id, u.email AS email, \
         CAST(v.configuration AS TEXT) AS configuration, v.change_description \
         FROM agent_versions v LEFT JOIN users u ON u.id = v.changed_by_user_id \
         ORDER BY v.agent_id, v.version_number, v.id",
    )
    .await
    .map_err(legacy_error)?;
    for row in &versions {
        let column = |name: &str, e| unreadable("agent_versions", name, e);
        let agent_id: i64 = row
            .try_get("", "agent_id")
            .map_err(|e| column("agent_id", e))?;
        let Some(&position) = index.get(&agent_id) else {
            continue;
        };
        let user: Option<i64> = row
            .try_get("", "user_id")
            .map_err(|e| column("user_id", e))?;
        let email: Option<String> = row.try_get("", "email").map_err(|e| column("email", e))?;
        agents[position].versions.push(LegacyVersion {
            number: row
                .try_get("", "version_number")
                .map_err(|e| column("version_number", e))?,
            action: row.try_get("", "action").map_err(|e| column("action", e))?,
            // An email no token could carry as its subject
            // (`check_identity_name`) is recorded by its user id
            // instead, as a version with no email is.
            changed_by: email
                .filter(|email| crate::auth::check_identity_name(email).is_ok())
                .or_else(|| user.map(|id| format!("user {id}"))),
            configuration: row
                .try_get("", "configuration")
                .map_err(|e| column("configuration", e))?,
            description: row
                .try_get("", "change_description")
                .map_err(|e| column("change_description", e))?,
        });
    }
    Ok(Some(agents))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(provider_type: &str, api_base: Option<&str>, config: &str) -> LegacyRow {
        LegacyRow {
            id: 1,
            tenant_id: 1,
            name: "Legacy".to_owned(),
            provider_type: provider_type.to_owned(),
            model_name: "gpt-4".to_owned(),
            api_base: api_base.map(str::to_owned),
            api_key: Some("Z0FBQUFB".to_owned()),
            config: Some(config.to_owned()),
            is_active: true,
            is_default: false,
        }
    }

    #[test]
    fn provider_types_map_by_enum_name_or_value() {
        use pb::ProviderType as T;
        for (legacy, expected) in [
            ("OPENAI", T::Openai),
            ("openai", T::Openai),
            ("ANTHROPIC", T::Anthropic),
            ("OLLAMA", T::Ollama),
            ("VLLM", T::OpenaiCompatible),
            ("custom", T::OpenaiCompatible),
            ("azure", T::AzureOpenai),
        ] {
            assert_eq!(provider_type(legacy), Ok(expected), "{legacy}");
        }
        assert_eq!(
            provider_type("palm"),
            Err("unknown provider_type \"palm\"".to_owned())
        );
    }

    #[test]
    fn config_becomes_default_parameters_and_the_rest_is_reported() {
        let planned = plan(row(
            "OPENAI",
            None,
            r#"{"temperature": 0.5, "max_tokens": 100, "timeout": 30, "stop": "END", "retries": 3, "api_version": "x"}"#,
        ))
        .expect("plans");
        let params = &planned.spec.default_parameters;
        assert_eq!(params.temperature, Some(0.5));
        assert_eq!(params.max_tokens, Some(100));
        assert_eq!(params.timeout_seconds, Some(30));
        assert_eq!(params.stop, vec!["END".to_owned()]);
        assert_eq!(planned.spec.api_version, None);
        assert_eq!(
            planned.notes,
            vec!["config keys not carried over: api_version, retries".to_owned()]
        );
        assert!(
            planned.spec.api_key.is_none(),
            "sealed only by crypto-service"
        );

        let error = plan(row("OPENAI", None, r#"{"temperature": "hot"}"#)).err();
        assert_eq!(error.as_deref(), Some("config.temperature is not a number"));
        let error = plan(row("OPENAI", None, r#"{"temperature": 7}"#)).err();
        assert!(error.is_some_and(|e| e.contains("default_parameters.temperature")));
    }

    #[test]
    fn azure_needs_an_endpoint_and_api_version_and_compatible_types_an_endpoint() {
        let planned = plan(row(
            "azure",
            Some("https://acme.openai.azure.com"),
            r#"{"api_version": "2024-06-01"}"#,
        ))
        .expect("azure with both");
        assert_eq!(planned.spec.api_version.as_deref(), Some("2024-06-01"));
        assert_eq!(
            planned.spec.base_url.as_deref(),
            Some("https://acme.openai.azure.com")
        );
        for (api_base, config) in [
            (None, r#"{"api_version": "2024-06-01"}"#),
            (Some("https://acme.openai.azure.com"), "{}"),
        ] {
            let error = plan(row("azure", api_base, config)).err();
            assert!(error.is_some_and(|e| e.contains("needs api_base")));
        }
        let error = plan(row("VLLM", None, "{}")).err();
        assert!(error.is_some_and(|e| e.contains("needs an api_base")));
    }

    #[test]
    fn several_legacy_tenants_need_tenant_to_name_one() {
        let tenants = vec![
            LegacyTenant {
                id: 1,
                name: "Acme".to_owned(),
                schema_name: "acme".to_owned(),
            },
            LegacyTenant {
                id: 2,
                name: "Globex".to_owned(),
                schema_name: "globex".to_owned(),
            },
        ];
        let rows = || {
            let mut other = row("OPENAI", None, "{}");
            other.tenant_id = 2;
            vec![row("OPENAI", None, "{}"), other]
        };
        for name in ["acme", "Acme", "1"] {
            let chosen = rows_of_tenant(rows(), &tenants, name).expect(name);
            assert_eq!(chosen.len(), 1);
            assert_eq!(chosen[0].tenant_id, 1);
        }
        let error = rows_of_tenant(rows(), &tenants, "initech").err();
        assert!(error.is_some_and(|e| e.to_string().contains("1 (acme), 2 (globex)")));
        // One tenant: imported whole, whatever it is called.
        let one = rows_of_tenant(vec![row("OPENAI", None, "{}")], &tenants, "anything");
        assert_eq!(one.map(|rows| rows.len()).ok(), Some(1));
    }

    #[test]
    fn names_print_on_one_line_and_rows_never_print_tokens() {
        assert_eq!(shown("OpenAI GPT-4"), "OpenAI GPT-4");
        assert_eq!(shown("two\nlines"), "\"two\\nlines\"");
        let printed = format!("{:?}", row("OPENAI", None, "{}"));
        assert!(!printed.contains("Z0FB"), "{printed}");
    }

    fn legacy_agent(versions: &[(&str, Value)]) -> LegacyAgent {
        LegacyAgent {
            name: "Researcher".to_owned(),
            provider_id: 1,
            versions: versions
                .iter()
                .enumerate()
                .map(|(index, (action, configuration))| LegacyVersion {
                    number: i64::try_from(index).unwrap_or_default() + 1,
                    action: (*action).to_owned(),
                    changed_by: Some("alice@acme.test".to_owned()),
                    configuration: configuration.to_string(),
                    description: None,
                })
                .collect(),
        }
    }

    #[test]
    fn agent_snapshots_map_to_specs_on_the_imported_providers() {
        let snapshot = |provider: i64, extra: Value| {
            let mut config = serde_json::json!({
                "name": "Researcher", "role": "Analyst", "goal": "Find facts",
                "backstory": "", "llm_provider_id": provider, "temperature": 0.5,
                "max_tokens": 512, "max_iter": 20, "verbose": true, "max_rpm": null
            });
            if let (Some(config), Value::Object(extra)) = (config.as_object_mut(), extra) {
                config.extend(extra);
            }
            config
        };
        const NEW_1: &str = "01900000-0000-7000-8000-000000000001";
        const NEW_2: &str = "01900000-0000-7000-8000-000000000002";
        let provider_ids = HashMap::from([(1, NEW_1.to_owned()), (2, NEW_2.to_owned())]);
        let tenant = HashSet::from([1, 2, 3]);
        let legacy = legacy_agent(&[
            ("UPDATE", snapshot(1, serde_json::json!({"team": "x"}))),
            ("rollback", snapshot(2, Value::Null)),
        ]);
        let (versions, notes) = plan_agent(&legacy, &provider_ids, &tenant).expect("maps");
        assert_eq!(
            versions[0].action,
            Action::Create,
            "the first is the CREATE"
        );
        assert_eq!(versions[1].action, Action::Rollback);
        assert_eq!(versions[0].description, CHANGE_DESCRIPTION);
        let spec = &versions[0].spec;
        assert_eq!(spec.llm_provider_id.as_deref(), Some(NEW_1));
        assert_eq!(spec.temperature, Some(0.5));
        assert_eq!(spec.llm_overrides.max_tokens, Some(512));
        assert_eq!(spec.max_iter, 20);
        assert!(spec.verbose);
        assert_eq!(versions[1].spec.llm_provider_id.as_deref(), Some(NEW_2));
        assert_eq!(notes, ["configuration keys not carried over: team"]);

        for (provider, expected) in [
            (3, "version 1: its provider (legacy id 3) was not imported"),
            (
                9,
                "version 1: its provider (legacy id 9) belongs to another tenant",
            ),
        ] {
            let legacy = legacy_agent(&[("CREATE", snapshot(provider, Value::Null))]);
            let error = plan_agent(&legacy, &provider_ids, &tenant).err();
            assert_eq!(error.as_deref(), Some(expected));
        }
        let legacy = legacy_agent(&[
            ("CREATE", snapshot(1, Value::Null)),
            (
                "UPDATE",
                snapshot(1, serde_json::json!({"temperature": 9.0})),
            ),
        ]);
        let error = plan_agent(&legacy, &provider_ids, &tenant).err();
        assert!(
            error.is_some_and(|e| e.starts_with("version 2: ") && e.contains("temperature")),
            "validated as CreateAgent validates"
        );
        let error = plan_agent(&legacy_agent(&[]), &provider_ids, &tenant).err();
        assert_eq!(
            error.as_deref(),
            Some("it has no version history on the Python platform")
        );
    }
}
