//! Labels of agents and providers (`production` → v7): set, moved with a
//! compare-and-set, deleted, every move in a history with its actor and
//! reason; protected labels only admins move; labels on the resource and
//! in its version listing; a rollback moves none; ResolveAgent by label;
//! an agent that names its provider by label (`provider@production`)
//! follows that label at its current version and keeps, at older ones,
//! the provider version it was written against — always with the
//! provider's current key.

use std::collections::BTreeMap;

use prost_types::FieldMask;
use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use proto::v1::label_policy_service_client::LabelPolicyServiceClient;
use proto::v1::provider_service_client::ProviderServiceClient;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use tests::auth::Authed;
use tests::stack::Stack;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The clients of one caller.
struct Caller {
    agents: AgentServiceClient<Authed>,
    providers: ProviderServiceClient<Authed>,
    runtime: RuntimeServiceClient<Authed>,
    policy: LabelPolicyServiceClient<Authed>,
}

impl Caller {
    async fn new(stack: &Stack, subject: &str, tenant: &str, roles: &[&str]) -> Self {
        let channel = stack.channel_as(subject, tenant, roles).await;
        Self {
            agents: AgentServiceClient::new(channel.clone()),
            providers: ProviderServiceClient::new(channel.clone()),
            runtime: RuntimeServiceClient::new(channel.clone()),
            policy: LabelPolicyServiceClient::new(channel),
        }
    }

    async fn create_agent(&mut self, agent: pb::Agent) -> pb::Agent {
        self.agents
            .create_agent(pb::CreateAgentRequest {
                agent: Some(agent),
                change_description: String::new(),
                ..Default::default()
            })
            .await
            .expect("create agent")
            .into_inner()
    }

    async fn update_goal(&mut self, id: &str, goal: &str) -> pb::Agent {
        self.agents
            .update_agent(pb::UpdateAgentRequest {
                agent: Some(pb::Agent {
                    id: id.to_owned(),
                    goal: goal.to_owned(),
                    ..Default::default()
                }),
                update_mask: Some(mask(&["goal"])),
                change_description: String::new(),
                ..Default::default()
            })
            .await
            .expect("update agent")
            .into_inner()
    }

    async fn set_agent_label(
        &mut self,
        id: &str,
        label: &str,
        version: i64,
        expected: Option<i64>,
        reason: &str,
    ) -> Result<pb::Label, Status> {
        self.agents
            .set_agent_label(pb::SetAgentLabelRequest {
                agent_id: id.to_owned(),
                label: label.to_owned(),
                version_number: version,
                expected_version: expected,
                reason: reason.to_owned(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn delete_agent_label(
        &mut self,
        id: &str,
        label: &str,
        expected: Option<i64>,
    ) -> Result<(), Status> {
        self.agents
            .delete_agent_label(pb::DeleteAgentLabelRequest {
                agent_id: id.to_owned(),
                label: label.to_owned(),
                expected_version: expected,
                reason: String::new(),
                ..Default::default()
            })
            .await
            .map(|_| ())
    }

    async fn agent_history(&mut self, id: &str, label: &str) -> Vec<(String, i64, i64, String)> {
        let moves = self
            .agents
            .list_agent_label_history(pb::ListAgentLabelHistoryRequest {
                agent_id: id.to_owned(),
                label: label.to_owned(),
                page_size: 0,
                page_token: String::new(),
            })
            .await
            .expect("label history")
            .into_inner()
            .moves;
        moves
            .into_iter()
            .map(|m| (m.label, m.from_version, m.to_version, m.actor))
            .collect()
    }

    async fn create_provider(&mut self, name: &str, model: &str, key: &str) -> pb::Provider {
        self.providers
            .create_provider(pb::CreateProviderRequest {
                provider: Some(pb::Provider {
                    name: name.to_owned(),
                    provider_type: pb::ProviderType::Openai.into(),
                    model_name: model.to_owned(),
                    base_url: "https://api.openai.com/v1".to_owned(),
                    api_key: key.to_owned(),
                    ..Default::default()
                }),
                change_description: String::new(),
                ..Default::default()
            })
            .await
            .expect("create provider")
            .into_inner()
    }

    async fn update_provider(&mut self, provider: pb::Provider, paths: &[&str]) -> pb::Provider {
        self.providers
            .update_provider(pb::UpdateProviderRequest {
                provider: Some(provider),
                update_mask: Some(mask(paths)),
                change_description: String::new(),
                revoke_replaced_key: false,
                ..Default::default()
            })
            .await
            .expect("update provider")
            .into_inner()
    }

    async fn set_provider_label(
        &mut self,
        id: &str,
        label: &str,
        version: i64,
    ) -> Result<pb::Label, Status> {
        self.providers
            .set_provider_label(pb::SetProviderLabelRequest {
                provider_id: id.to_owned(),
                label: label.to_owned(),
                version_number: version,
                expected_version: None,
                reason: String::new(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn resolve(
        &mut self,
        id: &str,
        version: Option<i64>,
        label: &str,
        if_none_match: &str,
    ) -> Result<pb::ResolvedAgent, Status> {
        self.runtime
            .resolve_agent(pb::ResolveAgentRequest {
                agent_id: id.to_owned(),
                version_number: version,
                if_none_match: if_none_match.to_owned(),
                label: label.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

fn mask(paths: &[&str]) -> FieldMask {
    FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    }
}

fn agent(name: &str) -> pb::Agent {
    pb::Agent {
        name: name.to_owned(),
        role: "Analyst".to_owned(),
        goal: "Analyze".to_owned(),
        ..Default::default()
    }
}

/// The fields a refusal's BadRequest names, in order.
fn bad_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

fn labels(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(l, v)| ((*l).to_owned(), *v)).collect()
}

#[tokio::test]
async fn labels_are_set_moved_compared_and_recorded_and_show_on_the_agent() {
    let stack = Stack::start().await;
    let mut alice = Caller::new(&stack, "alice", "acme", &["editor"]).await;
    let mut bob = Caller::new(&stack, "bob", "acme", &["editor"]).await;
    let created = alice.create_agent(agent("analyst")).await;
    let id = created.id.clone();
    alice.update_goal(&id, "Analyze v2").await;
    alice.update_goal(&id, "Analyze v3").await;

    // Set with "must not exist yet".
    let set = alice
        .set_agent_label(&id, "production", 1, Some(0), "first release")
        .await
        .expect("set production");
    assert_eq!((set.label.as_str(), set.version_number), ("production", 1));
    assert_eq!(set.updated_by, "alice");

    // "Must not exist" again, and a stale expectation: ABORTED, naming
    // where the label points now; nothing moves.
    for expected in [0, 3] {
        let status = bob
            .set_agent_label(&id, "production", 2, Some(expected), "")
            .await
            .expect_err("compare-and-set fails");
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        assert!(
            status.message().contains("version 1"),
            "the message names the current target: {}",
            status.message()
        );
    }

    // The move with the right expectation; the same move again records
    // nothing.
    bob.set_agent_label(&id, "production", 2, Some(1), "promote v2")
        .await
        .expect("move production");
    bob.set_agent_label(&id, "production", 2, None, "again")
        .await
        .expect("no-op");
    alice
        .set_agent_label(&id, "staging", 3, None, "try v3")
        .await
        .expect("set staging");
    let status = alice
        .delete_agent_label(&id, "staging", Some(2))
        .await
        .expect_err("stale delete");
    assert_eq!(status.code(), Code::Aborted);
    alice
        .delete_agent_label(&id, "staging", Some(3))
        .await
        .expect("delete staging");
    let status = alice
        .delete_agent_label(&id, "staging", None)
        .await
        .expect_err("deleted already");
    assert_eq!(status.code(), Code::NotFound);

    // Every move, oldest first, with its actor and reason.
    let history = alice.agent_history(&id, "").await;
    let expected = vec![
        ("production".to_owned(), 0, 1, "alice".to_owned()),
        ("production".to_owned(), 1, 2, "bob".to_owned()),
        ("staging".to_owned(), 0, 3, "alice".to_owned()),
        ("staging".to_owned(), 3, 0, "alice".to_owned()),
    ];
    assert_eq!(history, expected);
    assert_eq!(
        alice.agent_history(&id, "production").await,
        expected[..2].to_vec()
    );
    // Paged one by one: the same moves, reasons included.
    let mut token = String::new();
    let mut paged = Vec::new();
    loop {
        let page = alice
            .agents
            .list_agent_label_history(pb::ListAgentLabelHistoryRequest {
                agent_id: id.clone(),
                label: String::new(),
                page_size: 1,
                page_token: token.clone(),
            })
            .await
            .expect("a page")
            .into_inner();
        assert!(page.moves.len() <= 1);
        paged.extend(page.moves);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let reasons: Vec<&str> = paged.iter().map(|m| m.reason.as_str()).collect();
    assert_eq!(reasons, ["first release", "promote v2", "try v3", ""]);

    // On the agent, in the listing, and on the version it names.
    let read = alice
        .agents
        .get_agent(pb::GetAgentRequest {
            id: id.clone(),
            show_deleted: false,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(read.labels, labels(&[("production", 2)]));
    let listed = alice
        .agents
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.agents[0].labels, labels(&[("production", 2)]));
    let versions = alice
        .agents
        .list_agent_versions(pb::ListAgentVersionsRequest {
            agent_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("versions")
        .into_inner()
        .versions;
    let by_version: Vec<(i64, Vec<String>)> = versions
        .iter()
        .map(|v| (v.version_number, v.labels.clone()))
        .collect();
    assert_eq!(
        by_version,
        vec![(3, vec![]), (2, vec!["production".to_owned()]), (1, vec![])]
    );
    let listed_labels = alice
        .agents
        .list_agent_labels(pb::ListAgentLabelsRequest {
            agent_id: id.clone(),
        })
        .await
        .expect("labels")
        .into_inner()
        .labels;
    assert_eq!(listed_labels.len(), 1);
    assert_eq!(listed_labels[0].label, "production");
    assert_eq!(listed_labels[0].version_number, 2);
    assert_eq!(listed_labels[0].updated_by, "bob");

    // A rollback writes version 4 and moves no label.
    let rolled = alice
        .agents
        .rollback_agent(pb::RollbackAgentRequest {
            agent_id: id.clone(),
            version_number: 1,
            ..Default::default()
        })
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!(rolled.version, 4);
    assert_eq!(rolled.labels, labels(&[("production", 2)]));
    assert_eq!(alice.agent_history(&id, "").await, expected);

    // An update mask naming the output-only `labels` is ignored.
    let updated = alice
        .agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: id.clone(),
                goal: "Analyze v5".to_owned(),
                labels: labels(&[("production", 1)]),
                ..Default::default()
            }),
            update_mask: Some(mask(&["goal", "labels"])),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("update naming labels")
        .into_inner();
    assert_eq!(updated.version, 5);
    assert_eq!(updated.labels, labels(&[("production", 2)]));

    // Deleting the agent (soft delete) keeps its labels and their
    // history; purging it deletes them.
    alice
        .agents
        .delete_agent(pb::DeleteAgentRequest {
            id: id.clone(),
            etag: String::new(),
            ..Default::default()
        })
        .await
        .expect("delete agent");
    let labels_and_moves = format!(
        "SELECT (SELECT COUNT(*) FROM labels WHERE resource_id = '{id}') \
         + (SELECT COUNT(*) FROM label_moves WHERE resource_id = '{id}')"
    );
    assert!(
        stack.database.count(&labels_and_moves).await > 0,
        "a deleted agent keeps its labels and their history"
    );
    let mut ada = Caller::new(&stack, "ada", "acme", &["admin"]).await;
    ada.agents
        .purge_agent(pb::PurgeAgentRequest {
            id: id.clone(),
            etag: String::new(),
        })
        .await
        .expect("purge agent");
    let left = stack.database.count(&labels_and_moves).await;
    assert_eq!(left, 0, "labels or moves left after the purge");
    stack.finish().await;
}

#[tokio::test]
async fn protected_labels_are_moved_only_by_admins() {
    let stack = Stack::start().await;
    let mut admin = Caller::new(&stack, "ada", "acme", &["admin"]).await;
    let mut editor = Caller::new(&stack, "eddie", "acme", &["editor"]).await;
    let mut viewer = Caller::new(&stack, "vera", "acme", &["viewer"]).await;
    let provider = admin
        .create_provider("openai", "gpt-4", "sk-label-one")
        .await;
    let agent = editor.create_agent(agent("analyst")).await;

    // The policy: read by viewers, written by admins only.
    let empty = viewer
        .policy
        .get_label_policy(pb::GetLabelPolicyRequest {})
        .await
        .expect("policy")
        .into_inner();
    assert!(empty.protected_labels.is_empty());
    assert!(empty.update_time.is_none());
    let status = editor
        .policy
        .update_label_policy(pb::UpdateLabelPolicyRequest {
            protected_labels: vec!["production".to_owned()],
            ..Default::default()
        })
        .await
        .expect_err("editors do not write the policy");
    assert_eq!(status.code(), Code::PermissionDenied);
    let policy = admin
        .policy
        .update_label_policy(pb::UpdateLabelPolicyRequest {
            protected_labels: vec!["production".to_owned(), "gold".to_owned()],
            ..Default::default()
        })
        .await
        .expect("admin writes the policy")
        .into_inner();
    assert_eq!(policy.protected_labels, ["gold", "production"]);
    assert_eq!(policy.updated_by, "ada");
    let read = viewer
        .policy
        .get_label_policy(pb::GetLabelPolicyRequest {})
        .await
        .expect("policy")
        .into_inner();
    assert_eq!(read.protected_labels, ["gold", "production"]);

    // An editor may not set or delete a protected label, of either kind;
    // an unprotected one, yes.
    let status = editor
        .set_provider_label(&provider.id, "production", 1)
        .await
        .expect_err("protected");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status).as_deref(), Some("LABEL_PROTECTED"));
    assert!(status.message().contains("production"), "{status:?}");
    let status = editor
        .set_agent_label(&agent.id, "gold", 1, None, "")
        .await
        .expect_err("protected");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("gold"), "{status:?}");
    editor
        .set_provider_label(&provider.id, "canary", 1)
        .await
        .expect("unprotected");

    // An admin may; then the editor still may not delete it.
    admin
        .set_provider_label(&provider.id, "production", 1)
        .await
        .expect("admin sets a protected label");
    admin
        .set_agent_label(&agent.id, "gold", 1, Some(0), "")
        .await
        .expect("admin sets a protected agent label");
    let status = editor
        .delete_agent_label(&agent.id, "gold", None)
        .await
        .expect_err("protected delete");
    assert_eq!(status.code(), Code::PermissionDenied);
    admin
        .delete_agent_label(&agent.id, "gold", Some(1))
        .await
        .expect("admin deletes it");

    // Provider labels on the provider and its versions.
    let read = viewer
        .providers
        .get_provider(pb::GetProviderRequest {
            id: provider.id.clone(),
            show_deleted: false,
        })
        .await
        .expect("get provider")
        .into_inner();
    assert_eq!(read.labels, labels(&[("canary", 1), ("production", 1)]));
    let versions = viewer
        .providers
        .list_provider_versions(pb::ListProviderVersionsRequest {
            provider_id: provider.id.clone(),
            ..Default::default()
        })
        .await
        .expect("provider versions")
        .into_inner()
        .versions;
    assert_eq!(versions[0].labels, ["canary", "production"]);
    let history = viewer
        .providers
        .list_provider_label_history(pb::ListProviderLabelHistoryRequest {
            provider_id: provider.id.clone(),
            ..Default::default()
        })
        .await
        .expect("provider label history")
        .into_inner()
        .moves;
    let actors: Vec<(&str, &str)> = history
        .iter()
        .map(|m| (m.label.as_str(), m.actor.as_str()))
        .collect();
    assert_eq!(actors, [("canary", "eddie"), ("production", "ada")]);
    stack.finish().await;
}

#[tokio::test]
async fn malformed_requests_are_refused_per_field_and_other_tenants_see_nothing() {
    let stack = Stack::start().await;
    let mut editor = Caller::new(&stack, "eddie", "acme", &["editor"]).await;
    let mut viewer = Caller::new(&stack, "vera", "acme", &["viewer"]).await;
    let mut runtime = Caller::new(&stack, "rt", "acme", &["runtime"]).await;
    let mut stranger = Caller::new(
        &stack,
        "mallory",
        "globex",
        &["viewer", "editor", "admin", "runtime"],
    )
    .await;
    let agent = editor.create_agent(agent("analyst")).await;
    let id = agent.id.clone();

    let too_long = "a".repeat(64);
    for label in [
        "Production",
        too_long.as_str(),
        "latest",
        "-edge",
        "a_b",
        "",
    ] {
        let status = editor
            .set_agent_label(&id, label, 1, None, "")
            .await
            .expect_err("a bad label");
        assert_eq!(bad_fields(&status), ["label"], "{label:?}");
    }
    // 63 characters is a label.
    editor
        .set_agent_label(&id, &"a".repeat(63), 1, None, "")
        .await
        .expect("63 characters");
    let status = editor
        .delete_agent_label(&id, "latest", None)
        .await
        .expect_err("latest");
    assert_eq!(bad_fields(&status), ["label"]);
    // Every bad field at once, before any database work.
    let status = editor
        .agents
        .set_agent_label(pb::SetAgentLabelRequest {
            agent_id: "not-a-uuid".to_owned(),
            label: "UPPER".to_owned(),
            version_number: 0,
            expected_version: Some(-1),
            reason: "r".repeat(1025),
            ..Default::default()
        })
        .await
        .expect_err("every field bad");
    assert_eq!(
        bad_fields(&status),
        [
            "agent_id",
            "label",
            "version_number",
            "expected_version",
            "reason"
        ]
    );
    let status = viewer
        .agents
        .list_agent_label_history(pb::ListAgentLabelHistoryRequest {
            agent_id: id.clone(),
            label: "BAD".to_owned(),
            page_size: -1,
            page_token: "garbage".to_owned(),
        })
        .await
        .expect_err("bad history request");
    assert_eq!(bad_fields(&status), ["label", "page_size", "page_token"]);
    let status = editor
        .set_agent_label(&id, "production", 9, None, "")
        .await
        .expect_err("no version 9");
    assert_eq!(status.code(), Code::NotFound);
    let status = runtime
        .resolve(&id, Some(1), "production", "")
        .await
        .expect_err("version and label");
    assert_eq!(bad_fields(&status), ["label"]);
    let status = runtime
        .resolve(&id, None, "BAD", "")
        .await
        .expect_err("bad label");
    assert_eq!(bad_fields(&status), ["label"]);
    let status = runtime
        .resolve(&id, None, "nowhere", "")
        .await
        .expect_err("unknown label");
    assert_eq!(status.code(), Code::NotFound);

    // A resource holds at most 64 labels (one is set above).
    for n in 1..64 {
        editor
            .set_agent_label(&id, &format!("l{n}"), 1, None, "")
            .await
            .expect("a label within the bound");
    }
    let status = editor
        .set_agent_label(&id, "one-more", 1, None, "")
        .await
        .expect_err("65th label");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status).as_deref(), Some("TOO_MANY_LABELS"));
    // Moving an existing one is still fine.
    editor
        .set_agent_label(&id, "l1", 1, Some(1), "")
        .await
        .expect("a no-op move within the bound");

    // The policy's bound and names.
    let mut admin = Caller::new(&stack, "ada", "acme", &["admin"]).await;
    let status = admin
        .policy
        .update_label_policy(pb::UpdateLabelPolicyRequest {
            protected_labels: vec!["ok".to_owned(), "Not-OK".to_owned(), "latest".to_owned()],
            ..Default::default()
        })
        .await
        .expect_err("bad names");
    assert_eq!(
        bad_fields(&status),
        ["protected_labels[1]", "protected_labels[2]"]
    );
    let status = admin
        .policy
        .update_label_policy(pb::UpdateLabelPolicyRequest {
            protected_labels: (0..65).map(|n| format!("p{n}")).collect(),
            ..Default::default()
        })
        .await
        .expect_err("too many");
    assert_eq!(bad_fields(&status), ["protected_labels"]);

    // Another tenant: NOT_FOUND, as for a missing agent.
    let status = stranger
        .set_agent_label(&id, "production", 1, None, "")
        .await
        .expect_err("other tenant");
    assert_eq!(status.code(), Code::NotFound);
    let status = stranger
        .agents
        .list_agent_labels(pb::ListAgentLabelsRequest {
            agent_id: id.clone(),
        })
        .await
        .expect_err("other tenant");
    assert_eq!(status.code(), Code::NotFound);
    let status = stranger
        .agents
        .list_agent_label_history(pb::ListAgentLabelHistoryRequest {
            agent_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("other tenant");
    assert_eq!(status.code(), Code::NotFound);
    let status = stranger
        .resolve(&id, None, "l1", "")
        .await
        .expect_err("other tenant");
    assert_eq!(status.code(), Code::NotFound);

    // Roles: viewers list, never set; the runtime resolves by label, never
    // sets or lists.
    viewer
        .agents
        .list_agent_labels(pb::ListAgentLabelsRequest {
            agent_id: id.clone(),
        })
        .await
        .expect("viewers list labels");
    let status = viewer
        .set_agent_label(&id, "l1", 1, None, "")
        .await
        .expect_err("viewer");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = runtime
        .set_agent_label(&id, "l1", 1, None, "")
        .await
        .expect_err("runtime");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = runtime
        .agents
        .list_agent_labels(pb::ListAgentLabelsRequest {
            agent_id: id.clone(),
        })
        .await
        .expect_err("runtime");
    assert_eq!(status.code(), Code::PermissionDenied);
    stack.finish().await;
}

#[tokio::test]
async fn resolving_by_label_follows_agent_and_provider_labels_with_the_current_key() {
    let stack = Stack::start().await;
    let mut admin = Caller::new(&stack, "ada", "acme", &["admin"]).await;
    let mut runtime = Caller::new(&stack, "rt", "acme", &["runtime"]).await;

    // Provider v1 (gpt-4, temperature 0.1), labelled production; v2 gpt-4o.
    let provider = admin
        .create_provider("openai", "gpt-4", "sk-label-first")
        .await;
    let pid = provider.id.clone();
    admin
        .update_provider(
            pb::Provider {
                id: pid.clone(),
                default_parameters: Some(pb::ModelParameters {
                    temperature: Some(0.1),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &["default_parameters"],
        )
        .await;
    admin
        .set_provider_label(&pid, "production", 2)
        .await
        .expect("provider label");
    admin
        .update_provider(
            pb::Provider {
                id: pid.clone(),
                model_name: "gpt-4o".to_owned(),
                default_parameters: Some(pb::ModelParameters {
                    temperature: Some(0.9),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &["model_name", "default_parameters"],
        )
        .await;

    // The agent runs on `openai@production`.
    let follower = admin
        .create_agent(pb::Agent {
            llm_provider_id: Some(pid.clone()),
            llm_provider_label: "production".to_owned(),
            ..agent("follower")
        })
        .await;
    let aid = follower.id.clone();
    assert_eq!(follower.llm_provider_label, "production");
    let first = runtime.resolve(&aid, None, "", "").await.expect("resolve");
    let provider_seen = first.provider.as_ref().expect("provider");
    assert_eq!(
        (provider_seen.model_name.as_str(), first.provider_version),
        ("gpt-4", 2)
    );
    assert_eq!(
        first.effective.as_ref().expect("effective").temperature,
        Some(0.1)
    );
    assert_eq!(first.api_key, "sk-label-first");

    // Agent label `stable` → agent v1; the agent moves on to v2.
    admin
        .set_agent_label(&aid, "stable", 1, Some(0), "")
        .await
        .expect("agent label");
    admin.update_goal(&aid, "Analyze v2").await;
    let by_label = runtime
        .resolve(&aid, None, "stable", "")
        .await
        .expect("by label");
    assert_eq!(by_label.agent_version, 1);
    assert_eq!(by_label.label, "stable");
    assert_eq!(by_label.agent.as_ref().expect("agent").goal, "Analyze");
    let latest = runtime
        .resolve(&aid, None, "latest", "")
        .await
        .expect("latest");
    assert_eq!(latest.agent_version, 2);

    // Moving the provider label moves what the current agent version runs
    // on (and its etag); the older agent version keeps what it recorded.
    let before = runtime.resolve(&aid, None, "", "").await.expect("current");
    admin
        .set_provider_label(&pid, "production", 3)
        .await
        .expect("move provider label");
    let after = runtime
        .resolve(&aid, None, "", &before.etag)
        .await
        .expect("current after the move");
    assert!(!after.not_modified, "the provider label moved");
    assert_ne!(after.etag, before.etag);
    assert_eq!(
        after.provider.as_ref().expect("provider").model_name,
        "gpt-4o"
    );
    assert_eq!(after.provider_version, 3);
    let unchanged = runtime
        .resolve(&aid, None, "", &after.etag)
        .await
        .expect("again");
    assert!(unchanged.not_modified);
    let old = runtime
        .resolve(&aid, None, "stable", &by_label.etag)
        .await
        .expect("old by label");
    assert!(old.not_modified, "agent v1 still ran on provider v2");

    // The agent label moves to v2: the etag of the label resolution changes.
    admin
        .set_agent_label(&aid, "stable", 2, Some(1), "")
        .await
        .expect("move agent label");
    let moved = runtime
        .resolve(&aid, None, "stable", &by_label.etag)
        .await
        .expect("label moved");
    assert!(!moved.not_modified);
    assert_eq!(moved.agent_version, 2);
    // Agent v2 was written while `production` named provider v2: asked
    // for by label, it runs as written, though it is the current version.
    assert_eq!(moved.provider_version, 2);
    let live = runtime.resolve(&aid, None, "", "").await.expect("live");
    assert_eq!(
        (live.agent_version, live.provider_version),
        (2, 3),
        "the live configuration follows the provider label"
    );

    // Rotate the key (provider v4): an old agent version gets the new key
    // with its old configuration.
    admin
        .update_provider(
            pb::Provider {
                id: pid.clone(),
                api_key: "sk-label-second".to_owned(),
                ..Default::default()
            },
            &["api_key"],
        )
        .await;
    let old = runtime
        .resolve(&aid, Some(1), "", "")
        .await
        .expect("old version");
    let old_provider = old.provider.as_ref().expect("provider");
    assert_eq!(old.api_key, "sk-label-second");
    assert_eq!(old_provider.model_name, "gpt-4");
    assert_eq!(old_provider.base_url, "https://api.openai.com/v1");
    assert_eq!(old.provider_version, 2);
    assert_eq!(
        old.effective.as_ref().expect("effective").temperature,
        Some(0.1)
    );

    // A pinned provider version.
    let pinned = admin
        .create_agent(pb::Agent {
            llm_provider_id: Some(pid.clone()),
            llm_provider_version: Some(1),
            ..agent("pinned")
        })
        .await;
    let resolved = runtime
        .resolve(&pinned.id, None, "", "")
        .await
        .expect("pinned");
    assert_eq!(resolved.provider_version, 1);
    assert_eq!(resolved.api_key, "sk-label-second");

    // References that do not hold.
    let refused = |agent: pb::Agent| {
        let mut agents = admin.agents.clone();
        async move {
            agents
                .create_agent(pb::CreateAgentRequest {
                    agent: Some(agent),
                    change_description: String::new(),
                    ..Default::default()
                })
                .await
                .expect_err("refused")
        }
    };
    let status = refused(pb::Agent {
        llm_provider_id: Some(pid.clone()),
        llm_provider_label: "nowhere".to_owned(),
        ..agent("a1")
    })
    .await;
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status).as_deref(), Some("PROVIDER_LABEL_NOT_FOUND"));
    let status = refused(pb::Agent {
        llm_provider_id: Some(pid.clone()),
        llm_provider_version: Some(99),
        ..agent("a2")
    })
    .await;
    assert_eq!(
        reason(&status).as_deref(),
        Some("PROVIDER_VERSION_NOT_FOUND")
    );
    let status = refused(pb::Agent {
        llm_provider_label: "production".to_owned(),
        llm_provider_version: Some(1),
        ..agent("a3")
    })
    .await;
    assert_eq!(
        bad_fields(&status),
        ["agent.llm_provider_label", "agent.llm_provider_version"]
    );

    // The provider label the current agent version follows is deleted.
    admin
        .providers
        .delete_provider_label(pb::DeleteProviderLabelRequest {
            provider_id: pid.clone(),
            label: "production".to_owned(),
            expected_version: Some(3),
            reason: "retired".to_owned(),
            ..Default::default()
        })
        .await
        .expect("delete provider label");
    let status = runtime
        .resolve(&aid, None, "", "")
        .await
        .expect_err("label gone");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status).as_deref(), Some("PROVIDER_LABEL_NOT_FOUND"));
    let logs = stack.finish().await;
    assert!(!logs.contains("sk-label"), "a key in the logs");
}

#[tokio::test]
async fn concurrent_compare_and_sets_let_exactly_one_writer_create_the_label() {
    let stack = Stack::start().await;
    let mut editor = Caller::new(&stack, "eddie", "acme", &["editor"]).await;
    let created = editor.create_agent(agent("raced")).await;
    let id = created.id.clone();
    for n in 2..=8 {
        editor.update_goal(&id, &format!("Analyze v{n}")).await;
    }
    // Eight writers at once, each "must not exist yet", each to its own
    // version: one wins, the others see it and write nothing.
    let mut writers = Vec::new();
    for version in 1..=8 {
        let mut agents = editor.agents.clone();
        let id = id.clone();
        writers.push(tokio::spawn(async move {
            agents
                .set_agent_label(pb::SetAgentLabelRequest {
                    agent_id: id,
                    label: "race".to_owned(),
                    version_number: version,
                    expected_version: Some(0),
                    reason: format!("writer {version}"),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().version_number)
                .map_err(|s| s.code())
        }));
    }
    let mut won = Vec::new();
    for writer in writers {
        match writer.await.expect("writer task") {
            Ok(version) => won.push(version),
            Err(code) => assert_eq!(code, Code::Aborted),
        }
    }
    assert_eq!(won.len(), 1, "exactly one writer creates the label");
    let history = editor.agent_history(&id, "race").await;
    assert_eq!(
        history,
        [("race".to_owned(), 0, won[0], "eddie".to_owned())]
    );
    stack.finish().await;
}
