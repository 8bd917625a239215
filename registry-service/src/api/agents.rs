//! `AgentService`.

use proto::v1 as pb;
use proto::v1::agent_service_server::AgentService;
use tonic::{Request, Response, Status};

use super::{Registry, mask_paths, require_id, require_version, version_cursor};
use crate::caller::Caller;
use crate::error::Error;
use crate::model::agent::{self, AgentSpec};
use crate::model::version::{self, Action};
use crate::page;
use crate::store::agents::{self as store, AgentRecord, Write};
use crate::store::{VersionRecord, describe, etag, parse_etag, timestamp};

#[tonic::async_trait]
impl AgentService for Registry {
    #[tracing::instrument(skip_all, fields(agent_id))]
    async fn create_agent(
        &self,
        request: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
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
        let record = store::create(&self.db, write, spec).await?;
        tracing::Span::current().record("agent_id", &record.id);
        Ok(Response::new(agent_proto(&record)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let caller = Caller::of(&request)?;
        let id = &request.get_ref().id;
        require_id("id", id)?;
        let record = store::get(&self.db, &caller.tenant, id).await?;
        Ok(Response::new(agent_proto(&record)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let limit = page::size(request.page_size)?;
        let scope = page::Scope::new(&[&caller.tenant, "ListAgents"]);
        let after = scope.resume_after(&request.page_token)?;
        let page = store::list(&self.db, &caller.tenant, after, limit).await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: page.items.iter().map(agent_proto).collect(),
            next_page_token: page
                .next_after
                .map(|k| scope.token_after(&k))
                .unwrap_or_default(),
            total_size: clamp_total(page.total),
        }))
    }

    #[tracing::instrument(skip_all, fields(agent_id))]
    async fn update_agent(
        &self,
        request: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
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
                &[],
            ),
        )?;
        let description = describe(&request.change_description, || "Agent updated".to_owned())?;
        let write = Write {
            caller: &caller,
            action: Action::Update,
            description,
        };
        let record = store::update(
            &self.db,
            write,
            &input.id,
            expected,
            |current| match &paths {
                None => AgentSpec::from_proto(&input),
                Some(paths) => {
                    let mut spec = current.spec.clone();
                    spec.apply_all(&input, paths);
                    spec.validated()
                }
            },
        )
        .await?;
        Ok(Response::new(agent_proto(&record)))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<()>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        require_id("id", &request.id)?;
        let expected = parse_etag(&request.etag, "etag")?;
        store::delete(&self.db, &caller.tenant, &request.id, expected).await?;
        Ok(Response::new(()))
    }

    #[tracing::instrument(skip_all)]
    async fn list_agent_versions(
        &self,
        request: Request<pb::ListAgentVersionsRequest>,
    ) -> Result<Response<pb::ListAgentVersionsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        require_id("agent_id", &request.agent_id)?;
        let limit = page::size(request.page_size)?;
        let scope = page::Scope::new(&[&caller.tenant, "ListAgentVersions", &request.agent_id]);
        let before = version_cursor(scope.resume_after(&request.page_token)?)?;
        let page = store::list_versions(&self.db, &caller.tenant, &request.agent_id, before, limit)
            .await?;
        let versions = page
            .items
            .iter()
            .map(|v| version_proto(&request.agent_id, v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(pb::ListAgentVersionsResponse {
            versions,
            next_page_token: page
                .next_after
                .map(|k| scope.token_after(&k))
                .unwrap_or_default(),
            total_size: clamp_total(page.total),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_agent_version(
        &self,
        request: Request<pb::GetAgentVersionRequest>,
    ) -> Result<Response<pb::AgentVersion>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        require_id("agent_id", &request.agent_id)?;
        require_version("version_number", request.version_number)?;
        let version = store::get_version(
            &self.db,
            &caller.tenant,
            &request.agent_id,
            request.version_number,
        )
        .await?;
        Ok(Response::new(version_proto(&request.agent_id, &version)?))
    }

    #[tracing::instrument(skip_all)]
    async fn diff_agent_versions(
        &self,
        request: Request<pb::DiffAgentVersionsRequest>,
    ) -> Result<Response<pb::DiffAgentVersionsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        require_id("agent_id", &request.agent_id)?;
        super::require_versions(request.from_version, request.to_version)?;
        let from = store::get_version(
            &self.db,
            &caller.tenant,
            &request.agent_id,
            request.from_version,
        )
        .await?;
        let to = store::get_version(
            &self.db,
            &caller.tenant,
            &request.agent_id,
            request.to_version,
        )
        .await?;
        let changes = version::diff(&from.configuration, &to.configuration);
        Ok(Response::new(pb::DiffAgentVersionsResponse {
            changes: changes.iter().map(version::change_to_proto).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(agent_id))]
    async fn rollback_agent(
        &self,
        request: Request<pb::RollbackAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        require_id("agent_id", &request.agent_id)?;
        require_version("version_number", request.version_number)?;
        tracing::Span::current().record("agent_id", &request.agent_id);
        let expected = parse_etag(&request.etag, "etag")?;
        let number = request.version_number;
        let description = describe(&request.change_description, || {
            format!("Rolled back to version {number}")
        })?;
        let write = Write {
            caller: &caller,
            action: Action::Rollback,
            description,
        };
        let record = store::rollback(&self.db, write, &request.agent_id, number, expected).await?;
        Ok(Response::new(agent_proto(&record)))
    }
}

/// The response form of a stored agent.
pub fn agent_proto(record: &AgentRecord) -> pb::Agent {
    pb::Agent {
        id: record.id.clone(),
        version: record.version,
        etag: etag(record.version),
        create_time: Some(timestamp(record.create_time)),
        update_time: Some(timestamp(record.update_time)),
        created_by: record.created_by.clone(),
        updated_by: record.updated_by.clone(),
        ..record.spec.to_proto()
    }
}

fn version_proto(agent_id: &str, version: &VersionRecord) -> Result<pb::AgentVersion, Error> {
    let spec = AgentSpec::from_json(&version.configuration)?;
    let configuration = pb::Agent {
        id: agent_id.to_owned(),
        version: version.version_number,
        etag: etag(version.version_number),
        update_time: Some(timestamp(version.create_time)),
        updated_by: version.changed_by.clone(),
        ..spec.to_proto()
    };
    Ok(pb::AgentVersion {
        version_number: version.version_number,
        action: version::action_to_proto(version.action).into(),
        configuration: Some(configuration),
        diff: version.diff_proto(),
        change_description: version.change_description.clone(),
        changed_by: version.changed_by.clone(),
        create_time: Some(timestamp(version.create_time)),
    })
}

/// `total_size` is an int32 in the contract.
pub fn clamp_total(total: i64) -> i32 {
    i32::try_from(total).unwrap_or(i32::MAX)
}
