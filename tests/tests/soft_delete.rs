//! Soft delete (AIP-164) from outside, on real servers: a deleted agent or
//! provider is hidden (Get, List, ResolveAgent, every write) unless
//! `show_deleted`, keeps its history, labels and name, comes back with
//! Undelete as a new version, and is gone for good after Purge (admins
//! only) or after the retention period (the background task); the watch
//! feed sees each step; a provider stays while live agents use it, and its
//! purge waits for the deleted agents that name it.

use std::time::{Duration, Instant};

use prost_types::FieldMask;
use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use proto::v1::provider_service_client::ProviderServiceClient;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use proto::v1::watch_service_client::WatchServiceClient;
use tests::auth::Authed;
use tests::stack::Stack;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// A bound on waiting for the retention task (it runs every second in the
/// test that waits for it), not a synchronisation.
const PURGE_DEADLINE: Duration = Duration::from_secs(30);
/// A bound on waiting for a watched change.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);

/// The clients of one caller.
struct Caller {
    agents: AgentServiceClient<Authed>,
    providers: ProviderServiceClient<Authed>,
    runtime: RuntimeServiceClient<Authed>,
    watch: WatchServiceClient<Authed>,
}

impl Caller {
    async fn new(stack: &Stack, subject: &str, roles: &[&str]) -> Self {
        let channel = stack.channel_as(subject, "acme", roles).await;
        Self {
            agents: AgentServiceClient::new(channel.clone()),
            providers: ProviderServiceClient::new(channel.clone()),
            runtime: RuntimeServiceClient::new(channel.clone()),
            watch: WatchServiceClient::new(channel),
        }
    }

    async fn create_agent(&mut self, agent: pb::Agent) -> Result<pb::Agent, Status> {
        self.agents
            .create_agent(pb::CreateAgentRequest {
                agent: Some(agent),
                change_description: String::new(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn get_agent(&mut self, id: &str, show_deleted: bool) -> Result<pb::Agent, Status> {
        self.agents
            .get_agent(pb::GetAgentRequest {
                id: id.to_owned(),
                show_deleted,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn list_agents(&mut self, filter: &str, show_deleted: bool) -> Vec<String> {
        self.agents
            .list_agents(pb::ListAgentsRequest {
                filter: filter.to_owned(),
                show_deleted,
                page_size: 100,
                ..Default::default()
            })
            .await
            .expect("list agents")
            .into_inner()
            .agents
            .into_iter()
            .map(|agent| agent.name)
            .collect()
    }

    async fn delete_agent(&mut self, id: &str, etag: &str) -> Result<(), Status> {
        self.agents
            .delete_agent(pb::DeleteAgentRequest {
                id: id.to_owned(),
                etag: etag.to_owned(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    async fn undelete_agent(&mut self, id: &str, etag: &str) -> Result<pb::Agent, Status> {
        self.agents
            .undelete_agent(pb::UndeleteAgentRequest {
                id: id.to_owned(),
                etag: etag.to_owned(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn purge_agent(&mut self, id: &str) -> Result<(), Status> {
        self.agents
            .purge_agent(pb::PurgeAgentRequest {
                id: id.to_owned(),
                etag: String::new(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    /// (version, action) of every version of agent `id`, oldest first.
    async fn agent_versions(&mut self, id: &str) -> Result<Vec<(i64, pb::VersionAction)>, Status> {
        let versions = self
            .agents
            .list_agent_versions(pb::ListAgentVersionsRequest {
                agent_id: id.to_owned(),
                page_size: 100,
                page_token: String::new(),
            })
            .await?
            .into_inner()
            .versions;
        let mut seen: Vec<_> = versions
            .iter()
            .map(|v| (v.version_number, v.action()))
            .collect();
        seen.reverse();
        Ok(seen)
    }

    async fn create_provider(&mut self, name: &str, is_default: bool) -> pb::Provider {
        self.providers
            .create_provider(pb::CreateProviderRequest {
                provider: Some(pb::Provider {
                    name: name.to_owned(),
                    provider_type: pb::ProviderType::Openai.into(),
                    model_name: "gpt-4o".to_owned(),
                    base_url: "https://api.openai.com/v1".to_owned(),
                    api_key: "sk-soft-delete-test".to_owned(),
                    is_default,
                    ..Default::default()
                }),
                change_description: String::new(),
                ..Default::default()
            })
            .await
            .expect("create provider")
            .into_inner()
    }

    async fn delete_provider(&mut self, id: &str) -> Result<(), Status> {
        self.providers
            .delete_provider(pb::DeleteProviderRequest {
                provider_id: id.to_owned(),
                etag: String::new(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    async fn undelete_provider(&mut self, id: &str) -> Result<pb::Provider, Status> {
        self.providers
            .undelete_provider(pb::UndeleteProviderRequest {
                provider_id: id.to_owned(),
                etag: String::new(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn purge_provider(&mut self, id: &str) -> Result<(), Status> {
        self.providers
            .purge_provider(pb::PurgeProviderRequest {
                provider_id: id.to_owned(),
                etag: String::new(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    async fn get_provider(&mut self, id: &str, show_deleted: bool) -> Result<pb::Provider, Status> {
        self.providers
            .get_provider(pb::GetProviderRequest {
                id: id.to_owned(),
                show_deleted,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn resolve(
        &mut self,
        id: &str,
        if_none_match: &str,
    ) -> Result<pb::ResolvedAgent, Status> {
        self.runtime
            .resolve_agent(pb::ResolveAgentRequest {
                agent_id: id.to_owned(),
                version_number: None,
                if_none_match: if_none_match.to_owned(),
                label: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Every change of the tenant so far, then the ones that follow.
    async fn watch_from_start(&mut self) -> tonic::Streaming<pb::Change> {
        self.watch
            .watch_changes(pb::WatchChangesRequest {
                after_revision: Some(0),
                kinds: Vec::new(),
            })
            .await
            .expect("watch")
            .into_inner()
    }
}

fn agent(name: &str, provider: Option<&str>) -> pb::Agent {
    pb::Agent {
        name: name.to_owned(),
        role: "Analyst".to_owned(),
        goal: "Analyze".to_owned(),
        llm_provider_id: provider.map(str::to_owned),
        ..Default::default()
    }
}

/// The code and `ErrorInfo.reason` of a refusal.
fn refusal<T: std::fmt::Debug>(result: Result<T, Status>) -> (Code, String) {
    let status = result.expect_err("refused");
    let reason = status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default();
    (status.code(), reason)
}

/// The next change of `resource_id` on `changes`: (action, version, by).
async fn next_of(
    changes: &mut tonic::Streaming<pb::Change>,
    resource_id: &str,
) -> (pb::ChangeAction, i64, String) {
    loop {
        let change = tokio::time::timeout(EVENT_DEADLINE, changes.message())
            .await
            .expect("a change within the deadline")
            .expect("the stream stays open")
            .expect("the stream does not end");
        if change.resource_id == resource_id {
            return (change.action(), change.version_number, change.changed_by);
        }
    }
}

#[tokio::test]
async fn delete_hides_undelete_restores_purge_removes_for_good() {
    let stack = Stack::start().await;
    let mut editor = Caller::new(&stack, "erin", &["editor"]).await;
    let mut admin = Caller::new(&stack, "ada", &["admin"]).await;
    let mut runtime = Caller::new(&stack, "rt", &["runtime"]).await;

    admin.create_provider("default", true).await;
    let kept = editor
        .create_agent(agent("kept", None))
        .await
        .expect("create");
    let doomed = editor
        .create_agent(agent("doomed", None))
        .await
        .expect("create");
    let id = doomed.id.clone();
    let updated = editor
        .agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: id.clone(),
                goal: "Analyze more".to_owned(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["goal".to_owned()],
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.version, 2);
    editor
        .agents
        .set_agent_label(pb::SetAgentLabelRequest {
            agent_id: id.clone(),
            label: "production".to_owned(),
            version_number: 1,
            expected_version: None,
            reason: String::new(),
            ..Default::default()
        })
        .await
        .expect("label");

    // A stale etag deletes nothing.
    assert_eq!(
        refusal(editor.delete_agent(&id, "\"1\"").await).0,
        Code::Aborted
    );
    editor.delete_agent(&id, "\"2\"").await.expect("delete");

    // Hidden from Get and List, shown with show_deleted (with its times).
    assert_eq!(
        refusal(editor.get_agent(&id, false).await).0,
        Code::NotFound
    );
    assert_eq!(editor.list_agents("", false).await, ["kept"]);
    assert_eq!(editor.list_agents("", true).await, ["kept", "doomed"]);
    let shown = editor.get_agent(&id, true).await.expect("show_deleted");
    assert_eq!(shown.version, 3);
    assert_eq!(shown.goal, "Analyze more", "the configuration is kept");
    assert_eq!(shown.labels.get("production"), Some(&1), "labels stay");
    let deleted_at = shown.delete_time.expect("delete_time").seconds;
    let purge_at = shown.purge_time.expect("purge_time").seconds;
    assert_eq!(
        purge_at - deleted_at,
        30 * 24 * 3600,
        "purged after the default 30 days"
    );
    assert!(kept.delete_time.is_none());

    // The `deleted` filter, which cannot bring deleted agents back.
    assert_eq!(editor.list_agents("deleted", true).await, ["doomed"]);
    assert_eq!(editor.list_agents("deleted = true", true).await, ["doomed"]);
    assert_eq!(editor.list_agents("NOT deleted", true).await, ["kept"]);
    assert_eq!(editor.list_agents("deleted = false", true).await, ["kept"]);
    assert!(editor.list_agents("deleted", false).await.is_empty());
    assert_eq!(
        refusal(
            editor
                .agents
                .list_agents(pb::ListAgentsRequest {
                    filter: "deleted = maybe".to_owned(),
                    ..Default::default()
                })
                .await
        )
        .0,
        Code::InvalidArgument
    );

    // Its history stays readable without show_deleted.
    use pb::VersionAction::{Create, Delete, Undelete, Update};
    assert_eq!(
        editor.agent_versions(&id).await.expect("versions"),
        [(1, Create), (2, Update), (3, Delete)]
    );
    let delete_version = editor
        .agents
        .get_agent_version(pb::GetAgentVersionRequest {
            agent_id: id.clone(),
            version_number: 3,
        })
        .await
        .expect("the DELETE version")
        .into_inner();
    assert!(delete_version.diff.is_empty(), "{delete_version:?}");
    assert_eq!(delete_version.changed_by, "erin");

    // Every write and the runtime see no agent.
    let write = editor
        .agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: id.clone(),
                goal: "Resurrect".to_owned(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["goal".to_owned()],
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await;
    assert_eq!(refusal(write).0, Code::NotFound);
    let rollback = editor
        .agents
        .rollback_agent(pb::RollbackAgentRequest {
            agent_id: id.clone(),
            version_number: 1,
            ..Default::default()
        })
        .await;
    assert_eq!(refusal(rollback).0, Code::NotFound);
    let label = editor
        .agents
        .set_agent_label(pb::SetAgentLabelRequest {
            agent_id: id.clone(),
            label: "staging".to_owned(),
            version_number: 1,
            expected_version: None,
            reason: String::new(),
            ..Default::default()
        })
        .await;
    assert_eq!(refusal(label).0, Code::NotFound);
    assert_eq!(
        refusal(editor.delete_agent(&id, "").await).0,
        Code::NotFound
    );
    assert_eq!(refusal(runtime.resolve(&id, "").await).0, Code::NotFound);

    // The name stays reserved, and the answer says by what.
    let clash = editor.create_agent(agent("doomed", None)).await;
    let status = clash.expect_err("the name is held");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(
        status.message().contains(&id) && status.message().contains("deleted"),
        "{status:?}"
    );
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "NAME_HELD_BY_DELETED");
    assert_eq!(info.metadata.get("id"), Some(&id));

    // Undelete: a new version, the configuration and labels as they were.
    let restored = editor.undelete_agent(&id, "\"3\"").await.expect("undelete");
    assert_eq!(restored.version, 4);
    assert_eq!(restored.goal, "Analyze more");
    assert!(restored.delete_time.is_none() && restored.purge_time.is_none());
    assert_eq!(restored.labels.get("production"), Some(&1));
    assert_eq!(
        editor.agent_versions(&id).await.expect("versions"),
        [(1, Create), (2, Update), (3, Delete), (4, Undelete)]
    );
    assert_eq!(editor.get_agent(&id, false).await.expect("live").version, 4);
    assert_eq!(editor.list_agents("", false).await, ["kept", "doomed"]);
    let resolved = runtime.resolve(&id, "").await.expect("resolves again");
    assert_eq!(resolved.agent_version, 4);
    let (code, reason) = refusal(editor.undelete_agent(&id, "").await);
    assert_eq!(
        (code, reason.as_str()),
        (Code::FailedPrecondition, "NOT_DELETED")
    );

    // A remembered resolution is not answered `not_modified` once deleted.
    editor.delete_agent(&id, "").await.expect("delete again");
    assert_eq!(
        refusal(runtime.resolve(&id, &resolved.etag).await).0,
        Code::NotFound
    );

    // Purge: admins only, deleted resources only.
    assert_eq!(
        refusal(editor.purge_agent(&id).await).0,
        Code::PermissionDenied
    );
    let (code, reason) = refusal(admin.purge_agent(&kept.id).await);
    assert_eq!(
        (code, reason.as_str()),
        (Code::FailedPrecondition, "NOT_DELETED")
    );
    assert!(editor.get_agent(&kept.id, false).await.is_ok());
    admin.purge_agent(&id).await.expect("purge");

    // Gone for good: the row, its versions, its labels; the name is free.
    assert_eq!(refusal(editor.get_agent(&id, true).await).0, Code::NotFound);
    assert_eq!(refusal(editor.agent_versions(&id).await).0, Code::NotFound);
    assert_eq!(
        refusal(editor.undelete_agent(&id, "").await).0,
        Code::NotFound
    );
    assert_eq!(refusal(admin.purge_agent(&id).await).0, Code::NotFound);
    assert_eq!(editor.list_agents("", true).await, ["kept"]);
    for table in ["agent_versions", "labels", "label_moves"] {
        let column = if table == "agent_versions" {
            "agent_id"
        } else {
            "resource_id"
        };
        let left = stack
            .database
            .count(&format!(
                "SELECT COUNT(*) FROM {table} WHERE {column} = '{id}'"
            ))
            .await;
        assert_eq!(left, 0, "{table} keeps nothing of the purged agent");
    }
    let again = editor
        .create_agent(agent("doomed", None))
        .await
        .expect("the name is free again");
    assert_eq!(again.version, 1);

    // The watch feed saw every step, in order.
    let mut changes = editor.watch_from_start().await;
    use pb::ChangeAction as A;
    let mut steps = Vec::new();
    for _ in 0..7 {
        steps.push(next_of(&mut changes, &id).await);
    }
    let steps: Vec<(A, i64, &str)> = steps
        .iter()
        .map(|(action, version, by)| (*action, *version, by.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            (A::Create, 1, "erin"),
            (A::Update, 2, "erin"),
            (A::LabelSet, 1, "erin"),
            (A::Delete, 3, "erin"),
            (A::Undelete, 4, "erin"),
            (A::Delete, 5, "erin"),
            (A::Purge, 5, "ada"),
        ]
    );
    stack.finish().await;
}

#[tokio::test]
async fn a_provider_stays_while_live_agents_use_it_and_its_purge_waits_for_deleted_ones() {
    let stack = Stack::start().await;
    let mut editor = Caller::new(&stack, "erin", &["editor"]).await;
    let mut admin = Caller::new(&stack, "ada", &["admin"]).await;

    let provider = admin.create_provider("openai", false).await;
    let pid = provider.id.clone();
    let user = editor
        .create_agent(agent("user", Some(&pid)))
        .await
        .expect("create");

    // In use by a live agent: refused, as before soft delete, and the
    // answer says how many.
    let refused = admin.delete_provider(&pid).await;
    let message = refused
        .as_ref()
        .err()
        .map(|status| status.message().to_owned());
    let (code, reason) = refusal(refused);
    assert_eq!(
        (code, reason.as_str()),
        (Code::FailedPrecondition, "PROVIDER_IN_USE")
    );
    assert_eq!(
        message.as_deref(),
        Some("1 agent(s) are assigned to this provider; reassign them first")
    );

    // A deleted agent does not hold the provider's delete back.
    editor
        .delete_agent(&user.id, "")
        .await
        .expect("delete agent");
    admin.delete_provider(&pid).await.expect("delete provider");
    assert_eq!(
        refusal(admin.get_provider(&pid, false).await).0,
        Code::NotFound
    );
    let shown = admin.get_provider(&pid, true).await.expect("show_deleted");
    assert!(shown.delete_time.is_some() && shown.api_key_set);

    // A deleted provider is a missing one for agents.
    let (code, reason) = refusal(editor.create_agent(agent("newcomer", Some(&pid))).await);
    assert_eq!(
        (code, reason.as_str()),
        (Code::FailedPrecondition, "PROVIDER_NOT_FOUND")
    );
    let other = editor
        .create_agent(agent("other", None))
        .await
        .expect("create");
    let moved = editor
        .agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: other.id.clone(),
                llm_provider_id: Some(pid.clone()),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["llm_provider_id".to_owned()],
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await;
    let (code, reason) = refusal(moved);
    assert_eq!(
        (code, reason.as_str()),
        (Code::FailedPrecondition, "PROVIDER_NOT_FOUND")
    );
    // Nor can an agent come back onto it.
    let (code, reason) = refusal(editor.undelete_agent(&user.id, "").await);
    assert_eq!(
        (code, reason.as_str()),
        (Code::FailedPrecondition, "PROVIDER_NOT_FOUND")
    );

    // Purging the provider waits for the deleted agent that names it.
    let refused = admin.purge_provider(&pid).await.expect_err("referenced");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains(&user.id), "{refused:?}");
    assert_eq!(
        refused
            .get_details_error_info()
            .map(|info| info.reason)
            .as_deref(),
        Some("PROVIDER_REFERENCED")
    );

    // Undeleting the provider lets the agent back; then both go again.
    let back = admin
        .undelete_provider(&pid)
        .await
        .expect("undelete provider");
    assert_eq!(back.version, 3);
    assert!(back.api_key_set, "the key comes back with it");
    editor
        .undelete_agent(&user.id, "")
        .await
        .expect("undelete agent");
    editor
        .delete_agent(&user.id, "")
        .await
        .expect("delete agent");
    admin.delete_provider(&pid).await.expect("delete provider");
    admin.purge_agent(&user.id).await.expect("purge agent");
    admin.purge_provider(&pid).await.expect("purge provider");
    assert_eq!(
        refusal(admin.get_provider(&pid, true).await).0,
        Code::NotFound
    );
    let revisions = stack
        .database
        .count(&format!(
            "SELECT COUNT(*) FROM provider_key_revisions WHERE provider_id = '{pid}'"
        ))
        .await;
    assert_eq!(revisions, 0, "the key revisions go with the provider");
    stack.finish().await;
}

/// An agent created on a provider while the provider is deleted: one of
/// the two wins, never both (a live agent's provider is live).
#[tokio::test]
async fn a_create_racing_the_providers_delete_never_lands_on_a_deleted_provider() {
    let stack = Stack::start().await;
    let mut editor = Caller::new(&stack, "erin", &["editor"]).await;
    let mut admin = Caller::new(&stack, "ada", &["admin"]).await;
    let mut outcomes = std::collections::BTreeMap::new();
    for round in 0..20 {
        let provider = admin.create_provider(&format!("p{round}"), false).await;
        let (created, deleted) = tokio::join!(
            editor.create_agent(agent(&format!("a{round}"), Some(&provider.id))),
            admin.delete_provider(&provider.id),
        );
        let outcome = match (&created, &deleted) {
            (Ok(_), Err(refused)) => {
                assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
                "agent won"
            }
            (Err(refused), Ok(())) => {
                assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
                "delete won"
            }
            other => panic!("round {round}: both or neither succeeded: {other:?}"),
        };
        *outcomes.entry(outcome).or_insert(0) += 1;
    }
    let orphans = stack
        .database
        .count(
            "SELECT COUNT(*) FROM agents a JOIN providers p ON a.llm_provider_id = p.id \
             WHERE a.delete_time IS NULL AND p.delete_time IS NOT NULL",
        )
        .await;
    assert_eq!(
        orphans, 0,
        "no live agent on a deleted provider ({outcomes:?})"
    );
    stack.finish().await;
}

#[tokio::test]
async fn the_retention_task_purges_what_was_deleted_longer_ago_than_the_period() {
    let stack = Stack::start_with(
        Stack::default_registry()
            .env("REGISTRY_PURGE_DELETED_AFTER_SECONDS", "1")
            .env("REGISTRY_PURGE_INTERVAL_SECONDS", "1"),
    )
    .await;
    let mut editor = Caller::new(&stack, "erin", &["editor"]).await;
    let mut admin = Caller::new(&stack, "ada", &["admin"]).await;

    let provider = admin.create_provider("openai", false).await;
    let user = editor
        .create_agent(agent("user", Some(&provider.id)))
        .await
        .expect("create");
    let live = editor
        .create_agent(agent("live", None))
        .await
        .expect("create");
    editor.delete_agent(&user.id, "").await.expect("delete");
    admin.delete_provider(&provider.id).await.expect("delete");

    let deadline = Instant::now() + PURGE_DEADLINE;
    loop {
        let agent_gone = editor.get_agent(&user.id, true).await.is_err();
        let provider_gone = admin.get_provider(&provider.id, true).await.is_err();
        if agent_gone && provider_gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retention task purged the deleted agent and provider within {PURGE_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        refusal(editor.get_agent(&user.id, true).await).0,
        Code::NotFound
    );
    assert_eq!(
        editor
            .get_agent(&live.id, false)
            .await
            .expect("live")
            .version,
        1
    );

    // The change log names the task as the purger, agents first.
    let mut changes = editor.watch_from_start().await;
    use pb::ChangeAction as A;
    use pb::ResourceKind as K;
    let mut seen = Vec::new();
    // Seven changes: these six and the live agent's creation.
    for _ in 0..7 {
        let change = tokio::time::timeout(EVENT_DEADLINE, changes.message())
            .await
            .expect("a change within the deadline")
            .expect("the stream stays open")
            .expect("the stream does not end");
        if change.resource_id == live.id {
            continue;
        }
        seen.push((
            change.kind(),
            change.action(),
            change.version_number,
            change.changed_by,
        ));
    }
    let by = |who: &str| who.to_owned();
    assert_eq!(
        seen,
        vec![
            (K::Provider, A::Create, 1, by("ada")),
            (K::Agent, A::Create, 1, by("erin")),
            (K::Agent, A::Delete, 2, by("erin")),
            (K::Provider, A::Delete, 2, by("ada")),
            (K::Agent, A::Purge, 2, by("retention")),
            (K::Provider, A::Purge, 2, by("retention")),
        ]
    );
    stack.finish().await;
}

#[tokio::test]
async fn an_invalid_retention_setting_is_refused_at_start() {
    for (setting, value) in [
        ("REGISTRY_PURGE_DELETED_AFTER_SECONDS", "0"),
        ("REGISTRY_PURGE_DELETED_AFTER_SECONDS", "999999999999"),
        ("REGISTRY_PURGE_INTERVAL_SECONDS", "0"),
    ] {
        let launch = Stack::default_registry()
            .env("DATABASE_URL", "sqlite::memory:")
            .env("CRYPTO_ENDPOINT", "http://127.0.0.1:1")
            .env(setting, value)
            .arg("--listen")
            .arg("127.0.0.1:0");
        let (status, output) =
            tests::Process::run_to_exit(&tests::binary("registry-service"), launch).await;
        assert!(!status.success(), "{setting}={value} refused");
        assert!(output.contains(setting), "{setting}={value}: {output}");
    }
}
