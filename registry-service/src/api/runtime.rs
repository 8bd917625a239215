//! `RuntimeService.ResolveAgent`: the effective configuration an agent runs
//! with, including the decrypted API key — the only path by which a
//! plaintext credential leaves the system.

use proto::v1 as pb;
use proto::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use super::{Meta, Resource, message};
use super::{Registry, require_id, require_version};
use super::{etag, timestamp};
use crate::caller::Caller;
use crate::error::Error;
use crate::model::agent::AgentSpec;
use crate::model::params::ModelParams;
use crate::store::agents::{self as agent_store, Agents};
use crate::store::providers::{self as provider_store, ProviderRecord, Providers};

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
        require_id("agent_id", &request.agent_id)?;
        if let Some(number) = request.version_number {
            require_version("version_number", number)?;
        }
        if request.if_none_match.chars().count() > MAX_ETAG_CHARS {
            return Err(Error::bad_field(
                "if_none_match",
                format!("must be at most {MAX_ETAG_CHARS} characters"),
            )
            .into());
        }
        // The current configuration: agent and provider in one query.
        let (current, spec, agent_version, provider) = match request.version_number {
            None => {
                let (current, provider) =
                    agent_store::get_with_provider(&self.db, &caller.tenant, &request.agent_id)
                        .await?;
                let spec = current.spec.clone();
                let version = current.version;
                (current, spec, version, provider)
            }
            Some(number) => {
                let (current, spec) =
                    agent_store::spec_at(&self.db, &caller.tenant, &request.agent_id, number)
                        .await?;
                (current, spec, number, None)
            }
        };
        let provider = match provider {
            Some(provider) => provider,
            None => self.provider_for(&caller.tenant, &spec).await?,
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
        let resolution = resolution_etag(agent_version, &provider);
        if !request.if_none_match.is_empty() && request.if_none_match == resolution {
            return Ok(Response::new(pb::ResolvedAgent {
                agent: None,
                provider: None,
                api_key: String::new(),
                effective: None,
                agent_version,
                provider_version: provider.version,
                etag: resolution,
                not_modified: true,
            }));
        }
        let api_key = match &provider.spec.api_key {
            Some(ciphertext) => {
                self.crypto
                    .decrypt_api_key(&caller.tenant, &provider.id, ciphertext)
                    .await?
            }
            None => zeroize::Zeroizing::new(String::new()),
        };
        let agent = match request.version_number {
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
        }))
    }
}

impl Registry {
    /// The agent's assigned provider, or the tenant's default one.
    async fn provider_for(&self, tenant: &str, spec: &AgentSpec) -> Result<ProviderRecord, Error> {
        match &spec.llm_provider_id {
            Some(id) => {
                provider_store::get(&self.db, tenant, id)
                    .await
                    .map_err(|error| match error {
                        Error::NotFound { .. } => Error::precondition(
                            "PROVIDER_NOT_FOUND",
                            format!("the agent's provider {id:?} no longer exists"),
                        ),
                        other => other,
                    })
            }
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
}

/// The longest `if_none_match` looked at.
const MAX_ETAG_CHARS: usize = 256;

/// The etag of a resolution: what the answer depends on that can change.
/// The agent version pins the agent's configuration; the provider's id and
/// version pin its configuration (a key change or revocation writes a new
/// provider version); the credential revision names the key itself (a
/// rewrap changes its ciphertext, not its plaintext, nor this).
fn resolution_etag(agent_version: i64, provider: &ProviderRecord) -> String {
    let revision = provider
        .spec
        .api_key
        .as_ref()
        .and(provider.spec.api_key_revision);
    format!(
        "\"{agent_version}.{}.{}.{}\"",
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
