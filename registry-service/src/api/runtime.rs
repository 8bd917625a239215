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
