//! `AgentService`: requests into [`AgentSpec`]s, the versioned core's
//! answers into messages.

use proto::v1 as pb;
use proto::v1::agent_service_server::AgentService;
use tonic::{Request, Response, Status};

use super::{Listed, Meta, Registry, Resource, mask_paths, message, parts, require_id};
use crate::error::Error;
use crate::model::agent::{self, AgentSpec};
use crate::model::version::Action;
use crate::store::agents::Agents;
use crate::store::versioned::{self, Write};
use crate::store::{describe, parse_etag};

impl Resource for Agents {
    type Message = pb::Agent;
    type Version = pb::AgentVersion;

    fn message(spec: &AgentSpec, meta: Meta) -> pb::Agent {
        let Meta {
            id,
            version,
            etag,
            create_time,
            update_time,
            created_by,
            updated_by,
        } = meta;
        pb::Agent {
            id,
            version,
            etag,
            create_time,
            update_time,
            created_by,
            updated_by,
            ..spec.to_proto()
        }
    }

    super::version_message!(pb::AgentVersion);
}

#[tonic::async_trait]
impl AgentService for Registry {
    #[tracing::instrument(skip_all, fields(agent_id))]
    async fn create_agent(
        &self,
        request: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let (caller, request) = parts(request)?;
        let input = request
            .agent
            .ok_or_else(|| Error::bad_field("agent", "is required"))?;
        agent::check_counts(&input)?;
        let spec = AgentSpec::from_proto(&input)?;
        let description = describe(&request.change_description, || "Agent created".to_owned())?;
        let write = Write {
            caller: &caller,
            action: Action::Create,
            description,
        };
        let id = uuid::Uuid::now_v7().to_string();
        tracing::Span::current().record("agent_id", &id);
        let record = versioned::create(&self.db, &Agents, write, id, spec).await?;
        Ok(Response::new(message::<Agents>(&record)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let (caller, request) = parts(request)?;
        let agent = self.get::<Agents>(&caller, "id", &request.id).await?;
        Ok(Response::new(agent))
    }

    #[tracing::instrument(skip_all)]
    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let (caller, request) = parts(request)?;
        let (size, token) = (request.page_size, &request.page_token);
        let Listed {
            items: agents,
            next_page_token,
            total_size,
        } = self
            .list::<Agents>(&caller, "ListAgents", size, token)
            .await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents,
            next_page_token,
            total_size,
        }))
    }

    #[tracing::instrument(skip_all, fields(agent_id))]
    async fn update_agent(
        &self,
        request: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let (caller, request) = parts(request)?;
        let input = request
            .agent
            .ok_or_else(|| Error::bad_field("agent", "is required"))?;
        require_id("agent.id", &input.id)?;
        tracing::Span::current().record("agent_id", &input.id);
        let expected = parse_etag(&input.etag, "agent.etag")?;
        let paths = Error::both(
            agent::check_counts(&input),
            mask_paths(
                request.update_mask.as_ref(),
                || AgentSpec::fields_set(&input),
                agent::is_mask_path,
            ),
        )?;
        let description = describe(&request.change_description, || "Agent updated".to_owned())?;
        let write = Write {
            caller: &caller,
            action: Action::Update,
            description,
        };
        let change = |current: &versioned::Record<AgentSpec>| match &paths {
            None => AgentSpec::from_proto(&input),
            Some(paths) => {
                let mut spec = current.spec.clone();
                spec.apply_all(&input, paths);
                spec.validated()
            }
        };
        let record =
            versioned::update(&self.db, &Agents, write, &input.id, expected, change).await?;
        Ok(Response::new(message::<Agents>(&record)))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<()>, Status> {
        let (caller, request) = parts(request)?;
        self.delete(&Agents, &caller, "id", &request.id, &request.etag)
            .await?;
        Ok(Response::new(()))
    }

    #[tracing::instrument(skip_all)]
    async fn list_agent_versions(
        &self,
        request: Request<pb::ListAgentVersionsRequest>,
    ) -> Result<Response<pb::ListAgentVersionsResponse>, Status> {
        let (caller, request) = parts(request)?;
        let of = ("ListAgentVersions", "agent_id", request.agent_id.as_str());
        let (size, token) = (request.page_size, &request.page_token);
        let Listed {
            items: versions,
            next_page_token,
            total_size,
        } = self
            .list_versions::<Agents>(&caller, of, size, token)
            .await?;
        Ok(Response::new(pb::ListAgentVersionsResponse {
            versions,
            next_page_token,
            total_size,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_agent_version(
        &self,
        request: Request<pb::GetAgentVersionRequest>,
    ) -> Result<Response<pb::AgentVersion>, Status> {
        let (caller, request) = parts(request)?;
        let (id, number) = (&request.agent_id, request.version_number);
        let version = self
            .get_version::<Agents>(&caller, "agent_id", id, number)
            .await?;
        Ok(Response::new(version))
    }

    #[tracing::instrument(skip_all)]
    async fn diff_agent_versions(
        &self,
        request: Request<pb::DiffAgentVersionsRequest>,
    ) -> Result<Response<pb::DiffAgentVersionsResponse>, Status> {
        let (caller, request) = parts(request)?;
        let versions = (request.from_version, request.to_version);
        let changes = self
            .diff_versions::<Agents>(&caller, "agent_id", &request.agent_id, versions)
            .await?;
        Ok(Response::new(pb::DiffAgentVersionsResponse { changes }))
    }

    #[tracing::instrument(skip_all, fields(agent_id = %request.get_ref().agent_id))]
    async fn rollback_agent(
        &self,
        request: Request<pb::RollbackAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let (caller, request) = parts(request)?;
        let id = ("agent_id", request.agent_id.as_str());
        let how = (request.etag.as_str(), request.change_description.as_str());
        let agent = self
            .rollback(&Agents, &caller, id, request.version_number, how)
            .await?;
        Ok(Response::new(agent))
    }
}
