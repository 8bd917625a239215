//! `AgentService`: requests into [`AgentSpec`]s, the versioned core's
//! answers into messages.

use proto::v1 as pb;
use proto::v1::agent_service_server::AgentService;
use tonic::{Request, Response, Status};

use super::messages::check_agent_counts;
use super::retries::Intent;
use super::{Registry, Resource, UpdateParts, creation, message, parts, required};
use crate::model::agent::{self, AgentSpec};
use crate::store::agents::Agents;
use crate::store::versioned::{self, Record};

impl Resource for Agents {
    super::resource_messages!(
        pb::Agent, pb::AgentVersion, field "agent",
        counts check_agent_counts, mask paths agent::is_mask_path
    );
}

super::versioned_service! {
    AgentService for Agents = Agents; versions of agent_id; delete by id;
    get_agent(GetAgentRequest);
    list_agents(ListAgentsRequest, "ListAgents") -> ListAgentsResponse { agents };
    delete_agent(DeleteAgentRequest);
    undelete_agent(UndeleteAgentRequest);
    purge_agent(PurgeAgentRequest);
    list_agent_versions(ListAgentVersionsRequest, "ListAgentVersions") -> ListAgentVersionsResponse;
    get_agent_version(GetAgentVersionRequest);
    diff_agent_versions(DiffAgentVersionsRequest) -> DiffAgentVersionsResponse;
    rollback_agent(RollbackAgentRequest);
    labels set_agent_label(SetAgentLabelRequest), delete_agent_label(DeleteAgentLabelRequest),
        list_agent_labels(ListAgentLabelsRequest),
        list_agent_label_history(ListAgentLabelHistoryRequest, "ListAgentLabelHistory");

    #[tracing::instrument(skip_all, fields(agent_id))]
    async fn create_agent(
        &self,
        request: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let (caller, request) = parts(request)?;
        let intent = Intent::of(&request)?;
        let input = required("agent", request.agent)?;
        check_agent_counts(&input)?;
        let spec = AgentSpec::from_proto(&input)?;
        let (write, id) = creation::<Agents>(&caller, &request.change_description)?;
        let write = intent.stamp(write);
        tracing::Span::current().record("agent_id", &id);
        if intent.validate_only {
            let validated = versioned::validate_create(&self.db, &Agents, &write, &id, spec);
            let validated = self.validated::<Agents>(&caller.tenant, validated.await?);
            return Ok(Response::new(validated.await?));
        }
        let create = || async {
            let (write, id, spec) = (write.clone(), id.clone(), spec.clone());
            let record = versioned::create(&self.db, &Agents, write, id, spec).await?;
            Ok(message::<Agents>(&record))
        };
        let rebuild = |answer| self.created_at::<Agents>(&caller, answer);
        let created = self.once_write_first(&caller, &intent, create, rebuild);
        Ok(Response::new(created.await?))
    }

    #[tracing::instrument(skip_all, fields(agent_id = %request.get_ref().agent.as_ref().map_or("", |a| &a.id)))]
    async fn update_agent(
        &self,
        request: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::Agent>, Status> {
        let (caller, request) = parts(request)?;
        let intent = Intent::of(&request)?;
        let (mask, description) = (request.update_mask.as_ref(), &request.change_description);
        let (input, parts) = UpdateParts::of::<Agents>(&caller, request.agent, mask, description)?;
        let UpdateParts {
            write,
            expected,
            paths,
        } = parts;
        let change = |current: &Record<AgentSpec>| match &paths {
            None => AgentSpec::from_proto(&input),
            Some(paths) => {
                let mut spec = current.spec.clone();
                spec.apply_all(&input, paths);
                spec.validated()
            }
        };
        let (id, write) = (&input.id, intent.stamp(write));
        if intent.validate_only {
            let validated =
                versioned::validate_update(&self.db, &Agents, &write, id, expected, change);
            let validated = self.validated::<Agents>(&caller.tenant, validated.await?);
            return Ok(Response::new(validated.await?));
        }
        let update = || async {
            let write = write.clone();
            let written = versioned::update(&self.db, &Agents, write, id, expected, &change).await?;
            self.written::<Agents>(&caller.tenant, written).await
        };
        let rebuild = |answer| self.labelled_at::<Agents>(&caller, answer);
        let updated = self.once_write_first(&caller, &intent, update, rebuild);
        Ok(Response::new(updated.await?))
    }
}
