//! `RuntimeService.ResolveAgent`: the effective configuration an agent runs
//! with, including the decrypted API key — the only path by which a
//! plaintext credential leaves the system.

use proto::v1 as pb;
use proto::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use super::{Meta, Resource, message};
use super::{Registry, require_id};
use super::{etag, timestamp};
use crate::caller::Caller;
use crate::error::{Error, Violations};
use crate::model::Snapshot;
use crate::model::agent::AgentSpec;
use crate::model::params::ModelParams;
use crate::model::provider::ProviderSpec;
use crate::store::agents::{self as agent_store, Agents, ProviderAt};
use crate::store::audit::{self, Action as AuditAction, Entry};
use crate::store::labels;
use crate::store::providers::{self as provider_store, ProviderRecord, Providers};
use crate::store::versioned::{self, Record};

/// Temperature when neither the agent nor its provider sets one.
pub const FALLBACK_TEMPERATURE: f64 = 0.7;

#[tonic::async_trait]
impl RuntimeService for Registry {
    #[tracing::instrument(skip_all, fields(agent_id = %request.get_ref().agent_id))]
    async fn resolve_agent(
        &self,
        request: Request<pb::ResolveAgentRequest>,
    ) -> Result<Response<pb::ResolvedAgent>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        check_request(&request)?;
        let tenant = &caller.tenant;
        let known = Known {
            tenant,
            agent_id: &request.agent_id,
            version_number: request.version_number,
            label: &request.label,
        };
        if let Some(unchanged) = self
            .resolutions
            .not_modified(&known, &request.if_none_match)
        {
            return Ok(Response::new(unchanged));
        }
        // Read before anything the answer is made of (see `Resolutions`).
        let generation = self.db.changes().generation(tenant);
        // The agent version asked for: by number, by label, or the current.
        let wanted = match (request.version_number, request.label.as_str()) {
            (Some(number), _) => Some(number),
            (None, "" | labels::LATEST) => None,
            (None, label) => {
                let target =
                    labels::label_of::<Agents>(&self.db, tenant, &request.agent_id, label).await?;
                let target = target.ok_or_else(|| Error::NotFound {
                    kind: "agent label",
                    id: format!("{}@{label}", request.agent_id),
                })?;
                Some(target.version_number)
            }
        };
        // The current configuration: agent and provider in one query.
        // An older version: the provider it recorded (`ran_on`).
        let (current, spec, agent_version, joined, ran_on) = match wanted {
            None => {
                let (current, provider) =
                    agent_store::get_with_provider(&self.db, tenant, &request.agent_id).await?;
                let spec = current.spec.clone();
                let version = current.version;
                (current, spec, version, provider, None)
            }
            Some(number) => {
                let (current, spec, ran_on) =
                    agent_store::spec_at(&self.db, tenant, &request.agent_id, number).await?;
                (current, spec, number, None, ran_on)
            }
        };
        // The live configuration (no version asked for) follows the
        // agent's provider label now; a version asked for, by number or by
        // label, is reproduced as it was written (see runtime.proto).
        let live = wanted.is_none();
        let provider = match self.referenced_provider(tenant, &spec, live).await? {
            Some(provider) => provider,
            None => match (ran_on, joined) {
                (Some(at), _) => self.provider_as_of(tenant, &at).await?,
                (None, Some(provider)) => provider,
                (None, None) => self.provider_for(tenant, &spec).await?,
            },
        };
        if let Some(url) = &provider.spec.base_url
            && provider.spec.api_key.is_some()
            && !self.destinations.allows(url)
        {
            return Err(super::providers::destination_not_allowed(url).into());
        }
        // Checked after every rule a full answer is checked against (the
        // destination above), so a cached answer is never one the registry
        // would refuse now.
        let resolution = Resolution {
            etag: resolution_etag(&request.label, agent_version, &provider),
            agent_version,
            provider_version: provider.version,
            label: request.label.clone(),
        };
        self.resolutions
            .remember(&known, resolution.clone(), generation);
        if !request.if_none_match.is_empty() && request.if_none_match == resolution.etag {
            return Ok(Response::new(resolution.not_modified()));
        }
        let resolution = resolution.etag;
        let api_key = match &provider.spec.api_key {
            Some(ciphertext) => {
                let key = self
                    .crypto
                    .decrypt_api_key(tenant, &provider.id, ciphertext)
                    .await?;
                // Recorded before the key leaves: no release goes unaudited.
                let details = serde_json::json!({
                    "agent_version": agent_version,
                    "provider_id": provider.id,
                    "provider_version": provider.version,
                    "credential_revision": provider.spec.api_key_revision,
                });
                let release = Entry::on::<Agents>(
                    &caller,
                    AuditAction::CredentialRelease,
                    &request.agent_id,
                    None,
                    details,
                );
                audit::append(&self.db, release).await?;
                key
            }
            None => zeroize::Zeroizing::new(String::new()),
        };
        let agent = match wanted {
            None => message::<Agents>(&current),
            Some(_) => {
                let meta = Meta {
                    id: current.id.clone(),
                    version: agent_version,
                    etag: etag(agent_version),
                    create_time: Some(timestamp(current.create_time)),
                    update_time: None,
                    created_by: current.created_by.clone(),
                    updated_by: String::new(),
                    labels: Default::default(),
                    delete_time: None,
                    purge_time: None,
                };
                Agents::message(&spec, meta)
            }
        };
        Ok(Response::new(pb::ResolvedAgent {
            agent: Some(agent),
            effective: Some(effective_parameters(&spec, &provider).into()),
            provider: Some(message::<Providers>(&provider)),
            api_key: api_key.to_string(),
            agent_version,
            provider_version: provider.version,
            etag: resolution,
            not_modified: false,
            label: request.label,
        }))
    }
}

/// Every field of a ResolveAgent request checked, one violation per bad
/// field, before any database work.
fn check_request(request: &pb::ResolveAgentRequest) -> Result<(), Error> {
    let mut v = Violations::default();
    if let Err(Error::BadRequest(violations)) = require_id("agent_id", &request.agent_id) {
        for violation in violations {
            v.add(violation.field, violation.description);
        }
    }
    if request.version_number.is_some_and(|n| n < 1) {
        v.add("version_number", "must be 1 or more");
    }
    if !request.label.is_empty() {
        if request.version_number.is_some() {
            v.add(
                "label",
                "must not be set together with version_number (at most one of the two)",
            );
        } else if request.label != labels::LATEST
            && let Err(problem) = labels::check_name(&request.label)
        {
            v.add("label", problem);
        }
    }
    if request.if_none_match.chars().count() > MAX_ETAG_CHARS {
        v.add(
            "if_none_match",
            format!("must be at most {MAX_ETAG_CHARS} characters"),
        );
    }
    v.finish(())
}

impl Registry {
    /// The provider version an agent version names itself: for the live
    /// configuration, the one its provider label names now; for any, its
    /// pinned `llm_provider_version`. `None`: the agent names none (or a
    /// version asked for follows a label: what it recorded applies).
    async fn referenced_provider(
        &self,
        tenant: &str,
        spec: &AgentSpec,
        live: bool,
    ) -> Result<Option<ProviderRecord>, Error> {
        let Some(id) = &spec.llm_provider_id else {
            return Ok(None);
        };
        let version = match (&spec.llm_provider_label, spec.llm_provider_version) {
            (Some(label), _) if live => {
                let target = labels::label_of::<Providers>(&self.db, tenant, id, label).await?;
                let target = target.ok_or_else(|| {
                    Error::precondition(
                        "PROVIDER_LABEL_NOT_FOUND",
                        format!(
                            "the agent follows label {label:?} of provider {id:?}, which no longer exists: set the label again, or point the agent elsewhere"
                        ),
                    )
                })?;
                target.version_number
            }
            (_, Some(version)) => version,
            _ => return Ok(None),
        };
        let at = ProviderAt {
            id: id.clone(),
            version,
        };
        self.provider_as_of(tenant, &at).await.map(Some)
    }

    /// The agent's assigned provider, or the tenant's default one.
    async fn provider_for(&self, tenant: &str, spec: &AgentSpec) -> Result<ProviderRecord, Error> {
        match &spec.llm_provider_id {
            Some(id) => provider_store::get(&self.db, tenant, id)
                .await
                .map_err(|error| provider_gone(error, id)),
            None => provider_store::default_of(&self.db, tenant)
                .await?
                .ok_or_else(|| {
                    Error::precondition(
                        "NO_DEFAULT_PROVIDER",
                        "the agent has no provider and the tenant has no default provider",
                    )
                }),
        }
    }

    /// The provider an agent version was written against, as it was then
    /// (its configuration at `at.version`) with its key as it is now: the
    /// current, non-revoked key, never an older one. A key is bound to where
    /// it is sent, so when the provider's destination (`base_url`,
    /// `provider_type`) changed since, the current key is not sent to the
    /// old one: FAILED_PRECONDITION `DESTINATION_CHANGED`.
    async fn provider_as_of(&self, tenant: &str, at: &ProviderAt) -> Result<ProviderRecord, Error> {
        let now = provider_store::get(&self.db, tenant, &at.id)
            .await
            .map_err(|error| provider_gone(error, &at.id))?;
        if now.version == at.version {
            return Ok(now);
        }
        let then =
            versioned::get_version::<Providers>(&self.db, tenant, &at.id, at.version).await?;
        let spec = ProviderSpec::from_json(&then.configuration)?;
        let moved =
            spec.base_url != now.spec.base_url || spec.provider_type != now.spec.provider_type;
        if now.spec.api_key.is_some() && moved {
            return Err(Error::precondition(
                "DESTINATION_CHANGED",
                format!(
                    "this agent version ran on provider {:?} at its version {}, whose base_url \
                     or provider_type differs from the provider's now; the current key is not \
                     sent to the old destination: resolve the current agent version, or roll \
                     the provider back",
                    at.id, at.version
                ),
            ));
        }
        Ok(Record {
            spec: ProviderSpec {
                api_key: now.spec.api_key.clone(),
                api_key_revision: now.spec.api_key_revision,
                ..spec
            },
            version: at.version,
            update_time: then.create_time,
            updated_by: then.changed_by,
            ..now
        })
    }
}

/// FAILED_PRECONDITION for an agent's provider that no longer exists.
fn provider_gone(error: Error, id: &str) -> Error {
    match error {
        Error::NotFound { .. } => Error::precondition(
            "PROVIDER_NOT_FOUND",
            format!("the agent's provider {id:?} no longer exists"),
        ),
        other => other,
    }
}

/// What a resolution's `not_modified` answer says.
#[derive(Debug, Clone)]
struct Resolution {
    etag: String,
    agent_version: i64,
    provider_version: i64,
    /// The label resolved, when one was asked for.
    label: String,
}

impl Resolution {
    fn not_modified(self) -> pb::ResolvedAgent {
        pb::ResolvedAgent {
            agent: None,
            provider: None,
            api_key: String::new(),
            effective: None,
            agent_version: self.agent_version,
            provider_version: self.provider_version,
            etag: self.etag,
            not_modified: true,
            label: self.label,
        }
    }
}

/// What a ResolveAgent call asks for: a cache key.
#[derive(Debug)]
struct Known<'a> {
    tenant: &'a str,
    agent_id: &'a str,
    version_number: Option<i64>,
    label: &'a str,
}

impl Known<'_> {
    /// Unambiguous: the agent id is a UUID, the version digits and the
    /// label DNS-label characters, none of them a newline.
    fn key(&self) -> String {
        let version = self
            .version_number
            .map_or_else(String::new, |n| n.to_string());
        format!(
            "{}\n{}\n{version}\n{}",
            self.tenant, self.agent_id, self.label
        )
    }
}

/// The last resolutions answered, each with its tenant's generation when
/// it was read ([`crate::store::changes::ChangeSignal::generation`]): while
/// that generation stays the same nothing the resolution depends on has
/// changed, so a re-resolution naming its etag is answered `not_modified`
/// without reading the database (nor calling crypto-service). Every write
/// of the tenant moves the generation (this process's at commit; another
/// replica's when its PostgreSQL notification arrives). Bounded by count
/// (least recently used out).
#[derive(Debug)]
pub struct Resolutions {
    entries: std::sync::Mutex<hashlink::LruCache<String, (Resolution, u64)>>,
    signal: std::sync::Arc<crate::store::changes::ChangeSignal>,
}

impl Resolutions {
    /// A cache of at most `capacity` resolutions (0: none), checked against
    /// `signal`'s generations.
    pub fn new(
        capacity: usize,
        signal: std::sync::Arc<crate::store::changes::ChangeSignal>,
    ) -> Self {
        Self {
            entries: std::sync::Mutex::new(hashlink::LruCache::new(capacity)),
            signal,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, hashlink::LruCache<String, (Resolution, u64)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The `not_modified` answer, when `etag` names the resolution last
    /// answered for `known` and its tenant has not changed since.
    fn not_modified(&self, known: &Known<'_>, etag: &str) -> Option<pb::ResolvedAgent> {
        if etag.is_empty() {
            return None;
        }
        let generation = self.signal.generation(known.tenant);
        let mut entries = self.entries();
        let (resolution, at) = entries.get(&known.key())?;
        let current = *at == generation && resolution.etag == etag;
        current.then(|| resolution.clone().not_modified())
    }

    /// Keeps `resolution`, read at `generation`.
    fn remember(&self, known: &Known<'_>, resolution: Resolution, generation: u64) {
        let mut entries = self.entries();
        if entries.capacity() > 0 {
            entries.insert(known.key(), (resolution, generation));
        }
    }
}

/// The longest `if_none_match` looked at.
const MAX_ETAG_CHARS: usize = 256;

/// The etag of a resolution: what the answer depends on that can change.
/// The agent label asked for and the version it names (or the version
/// asked for) pin the agent's configuration; the provider's id and version
/// (after its label, when the agent follows one) pin its configuration (a
/// key change or revocation writes a new provider version); the credential
/// revision names the key itself (a rewrap changes its ciphertext, not its
/// plaintext, nor this).
fn resolution_etag(label: &str, agent_version: i64, provider: &ProviderRecord) -> String {
    let revision = provider
        .spec
        .api_key
        .as_ref()
        .and(provider.spec.api_key_revision);
    let label = if label.is_empty() {
        String::new()
    } else {
        format!("{label}@")
    };
    format!(
        "\"{label}{agent_version}.{}.{}.{}\"",
        provider.id,
        provider.version,
        revision.map_or_else(|| "-".to_owned(), |r| r.to_string())
    )
}

/// Provider defaults (with its model name), then the agent's temperature,
/// then the agent's overrides; temperature falls back to 0.7.
pub fn effective_parameters(agent: &AgentSpec, provider: &ProviderRecord) -> ModelParams {
    let base = ModelParams {
        model_name: Some(provider.spec.model_name.clone()),
        ..provider.spec.default_parameters.clone()
    };
    let agent_level = ModelParams {
        temperature: agent.temperature,
        ..ModelParams::default()
    };
    let mut effective = base
        .overlaid_with(&agent_level)
        .overlaid_with(&agent.llm_overrides);
    effective.temperature = effective.temperature.or(Some(FALLBACK_TEMPERATURE));
    effective
}
