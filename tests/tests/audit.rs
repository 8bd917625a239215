//! The audit trail (issue 18): a workflow of every audited kind of call
//! (create, update, label moves, rollback, a key released, delete,
//! undelete, purge, key revocation)
//! yields exactly the expected events, in order, with their actors,
//! resources and request ids, and never a key; tenant admins see their
//! tenant, platform operators every tenant, viewers and editors nothing;
//! filters by actor, resource, kind, action and time, and page tokens bound
//! to the filter.

use prost_types::FieldMask;
use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use proto::v1::audit_service_client::AuditServiceClient;
use proto::v1::key_service_client::KeyServiceClient;
use proto::v1::label_policy_service_client::LabelPolicyServiceClient;
use proto::v1::provider_service_client::ProviderServiceClient;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use tests::auth::{Authed, STACK_OPERATOR};
use tests::stack::Stack;
use tonic::Code;

/// The provider key of the workflow: it must appear in no event.
const KEY: &str = "sk-audit-0123456789-never-in-the-trail";

/// The request ids the workflow sends (AIP-155), each on one call: the
/// agent's create and update (both one-statement writes), the first label
/// move, the rollback (a locking write) and the purge. Each must be in its
/// call's event and in no other.
const CREATE_REQUEST: &str = "0193f1b2-7c4d-7e8f-9a0b-1c2d3e4fa001";
const UPDATE_REQUEST: &str = "0193f1b2-7c4d-7e8f-9a0b-1c2d3e4fa002";
const LABEL_REQUEST: &str = "0193f1b2-7c4d-7e8f-9a0b-1c2d3e4fa003";
const ROLLBACK_REQUEST: &str = "0193f1b2-7c4d-7e8f-9a0b-1c2d3e4fa004";
const PURGE_REQUEST: &str = "0193f1b2-7c4d-7e8f-9a0b-1c2d3e4fa005";

/// The clients of one caller.
struct Caller {
    agents: AgentServiceClient<Authed>,
    providers: ProviderServiceClient<Authed>,
    runtime: RuntimeServiceClient<Authed>,
    policy: LabelPolicyServiceClient<Authed>,
    audit: AuditServiceClient<Authed>,
}

impl Caller {
    async fn new(stack: &Stack, subject: &str, tenant: &str, roles: &[&str]) -> Self {
        let channel = stack.channel_as(subject, tenant, roles).await;
        Self {
            agents: AgentServiceClient::new(channel.clone()),
            providers: ProviderServiceClient::new(channel.clone()),
            runtime: RuntimeServiceClient::new(channel.clone()),
            policy: LabelPolicyServiceClient::new(channel.clone()),
            audit: AuditServiceClient::new(channel),
        }
    }

    async fn create_provider(&mut self, name: &str) -> pb::Provider {
        self.providers
            .create_provider(pb::CreateProviderRequest {
                provider: Some(pb::Provider {
                    name: name.to_owned(),
                    provider_type: pb::ProviderType::Openai.into(),
                    model_name: "gpt-4o".to_owned(),
                    base_url: "https://api.openai.com/v1".to_owned(),
                    api_key: KEY.to_owned(),
                    ..Default::default()
                }),
                change_description: String::new(),
                ..Default::default()
            })
            .await
            .expect("create provider")
            .into_inner()
    }

    async fn create_agent(&mut self, name: &str, provider_id: &str, request_id: &str) -> pb::Agent {
        self.agents
            .create_agent(pb::CreateAgentRequest {
                agent: Some(pb::Agent {
                    name: name.to_owned(),
                    role: "Analyst".to_owned(),
                    goal: "Analyze".to_owned(),
                    llm_provider_id: Some(provider_id.to_owned()),
                    ..Default::default()
                }),
                change_description: String::new(),
                request_id: request_id.to_owned(),
                ..Default::default()
            })
            .await
            .expect("create agent")
            .into_inner()
    }

    async fn update_goal(&mut self, id: &str, goal: &str, request_id: &str) -> pb::Agent {
        self.agents
            .update_agent(pb::UpdateAgentRequest {
                agent: Some(pb::Agent {
                    id: id.to_owned(),
                    goal: goal.to_owned(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["goal".to_owned()],
                }),
                change_description: String::new(),
                request_id: request_id.to_owned(),
                ..Default::default()
            })
            .await
            .expect("update agent")
            .into_inner()
    }

    async fn set_label(&mut self, id: &str, label: &str, version: i64, request_id: &str) {
        self.agents
            .set_agent_label(pb::SetAgentLabelRequest {
                agent_id: id.to_owned(),
                label: label.to_owned(),
                version_number: version,
                expected_version: None,
                reason: "release".to_owned(),
                request_id: request_id.to_owned(),
                ..Default::default()
            })
            .await
            .expect("set label");
    }

    async fn resolve(&mut self, id: &str, if_none_match: &str) -> pb::ResolvedAgent {
        self.runtime
            .resolve_agent(pb::ResolveAgentRequest {
                agent_id: id.to_owned(),
                version_number: None,
                if_none_match: if_none_match.to_owned(),
                label: String::new(),
            })
            .await
            .expect("resolve agent")
            .into_inner()
    }

    async fn list(&mut self, filter: &str) -> Result<Vec<pb::AuditEvent>, tonic::Status> {
        let mut events = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .audit
                .list_audit_events(pb::ListAuditEventsRequest {
                    filter: filter.to_owned(),
                    page_size: 3,
                    page_token: token,
                })
                .await?
                .into_inner();
            events.extend(page.audit_events);
            if page.next_page_token.is_empty() {
                return Ok(events);
            }
            token = page.next_page_token;
        }
    }

    /// The events `filter` selects, oldest first, as (action, actor,
    /// resource, request id).
    async fn trail(&mut self, filter: &str) -> Vec<(String, String, String, String)> {
        let mut events = self.list(filter).await.expect("list audit events");
        events.reverse();
        events.into_iter().map(summary).collect()
    }
}

fn summary(event: pb::AuditEvent) -> (String, String, String, String) {
    (event.action, event.actor, event.resource, event.request_id)
}

fn row(action: &str, actor: &str, resource: &str) -> (String, String, String, String) {
    requested(action, actor, resource, "")
}

/// An event of a call that sent `request_id`.
fn requested(
    action: &str,
    actor: &str,
    resource: &str,
    request_id: &str,
) -> (String, String, String, String) {
    (
        action.to_owned(),
        actor.to_owned(),
        resource.to_owned(),
        request_id.to_owned(),
    )
}

/// Runs the workflow in `tenant` (admin `alice`, editor `bob`, runtime
/// `runner`) and answers the agent's and the provider's resource names.
async fn workflow(stack: &Stack, tenant: &str) -> (String, String) {
    let mut alice = Caller::new(stack, "alice", tenant, &["admin"]).await;
    let mut bob = Caller::new(stack, "bob", tenant, &["editor"]).await;
    let mut runner = Caller::new(stack, "runner", tenant, &["runtime"]).await;

    let provider = alice.create_provider("openai").await;
    let agent = bob
        .create_agent("analyst", &provider.id, CREATE_REQUEST)
        .await;
    bob.update_goal(&agent.id, "Analyze deeply", UPDATE_REQUEST)
        .await;
    bob.set_label(&agent.id, "production", 2, LABEL_REQUEST)
        .await;
    bob.set_label(&agent.id, "production", 1, "").await;
    bob.agents
        .rollback_agent(pb::RollbackAgentRequest {
            agent_id: agent.id.clone(),
            version_number: 1,
            etag: String::new(),
            change_description: String::new(),
            request_id: ROLLBACK_REQUEST.to_owned(),
            ..Default::default()
        })
        .await
        .expect("rollback");
    let resolved = runner.resolve(&agent.id, "").await;
    assert_eq!(resolved.api_key, KEY);
    let again = runner.resolve(&agent.id, &resolved.etag).await;
    assert!(again.not_modified, "{again:?}");
    assert!(again.api_key.is_empty());
    bob.agents
        .delete_agent_label(pb::DeleteAgentLabelRequest {
            agent_id: agent.id.clone(),
            label: "production".to_owned(),
            expected_version: None,
            reason: String::new(),
            ..Default::default()
        })
        .await
        .expect("delete label");
    alice
        .policy
        .update_label_policy(pb::UpdateLabelPolicyRequest {
            protected_labels: vec!["production".to_owned()],
            ..Default::default()
        })
        .await
        .expect("label policy");
    bob.agents
        .delete_agent(pb::DeleteAgentRequest {
            id: agent.id.clone(),
            etag: String::new(),
            ..Default::default()
        })
        .await
        .expect("delete agent");
    bob.agents
        .undelete_agent(pb::UndeleteAgentRequest {
            id: agent.id.clone(),
            etag: String::new(),
            ..Default::default()
        })
        .await
        .expect("undelete agent");
    bob.agents
        .delete_agent(pb::DeleteAgentRequest {
            id: agent.id.clone(),
            etag: String::new(),
            ..Default::default()
        })
        .await
        .expect("delete agent again");
    alice
        .agents
        .purge_agent(pb::PurgeAgentRequest {
            id: agent.id.clone(),
            etag: String::new(),
            request_id: PURGE_REQUEST.to_owned(),
            ..Default::default()
        })
        .await
        .expect("purge agent");
    alice
        .providers
        .revoke_provider_key(pb::RevokeProviderKeyRequest {
            provider_id: provider.id.clone(),
            revision: 1,
            reason: "leaked".to_owned(),
            ..Default::default()
        })
        .await
        .expect("revoke key");
    (
        format!("agents/{}", agent.id),
        format!("providers/{}", provider.id),
    )
}

#[tokio::test]
async fn a_workflow_yields_exactly_its_audit_events_with_no_key_anywhere() {
    let stack = Stack::start().await;
    let (agent, provider) = workflow(&stack, "acme").await;
    let mut alice = Caller::new(&stack, "alice", "acme", &["admin"]).await;

    let expected = vec![
        row("CREATE", "alice", &provider),
        requested("CREATE", "bob", &agent, CREATE_REQUEST),
        requested("UPDATE", "bob", &agent, UPDATE_REQUEST),
        requested("LABEL_SET", "bob", &agent, LABEL_REQUEST),
        row("LABEL_SET", "bob", &agent),
        requested("ROLLBACK", "bob", &agent, ROLLBACK_REQUEST),
        row("CREDENTIAL_RELEASE", "runner", &agent),
        row("LABEL_DELETE", "bob", &agent),
        row("LABEL_POLICY_UPDATE", "alice", ""),
        row("DELETE", "bob", &agent),
        row("UNDELETE", "bob", &agent),
        row("DELETE", "bob", &agent),
        requested("PURGE", "alice", &agent, PURGE_REQUEST),
        row("KEY_REVOKE", "alice", &provider),
        row("UPDATE", "alice", &provider),
    ];
    assert_eq!(alice.trail("").await, expected);

    // Newest first, every event of the tenant, details as documented.
    let events = alice.list("").await.expect("list");
    assert!(
        events
            .windows(2)
            .all(|w| { w[0].id.parse::<i64>().expect("id") > w[1].id.parse::<i64>().expect("id") })
    );
    assert!(
        events
            .iter()
            .all(|e| e.tenant == "acme" && e.time.is_some())
    );
    let release = events
        .iter()
        .find(|e| e.action == "CREDENTIAL_RELEASE")
        .expect("a release");
    let details = format!("{:?}", release.details);
    let provider_id = provider.trim_start_matches("providers/");
    for wanted in [
        "agent_version",
        "provider_id",
        "provider_version",
        "credential_revision",
        provider_id,
    ] {
        assert!(details.contains(wanted), "{wanted} in {details}");
    }
    let moves: Vec<String> = events
        .iter()
        .filter(|e| e.action == "LABEL_SET")
        .map(|e| format!("{:?}", e.details))
        .collect();
    assert!(
        moves
            .iter()
            .all(|d| d.contains("production") && d.contains("release")),
        "{moves:?}"
    );

    // No key in any event, nor anywhere in the stored trail.
    for event in &events {
        assert!(!format!("{event:?}").contains("sk-audit"), "{event:?}");
    }
    let stored = stack
        .database
        .texts(
            "SELECT tenant_id || '|' || actor || '|' || action || '|' || kind || '|' || \
             resource || '|' || COALESCE(request_id, '') || '|' || CAST(details AS TEXT) \
             FROM audit_events",
        )
        .await;
    assert_eq!(stored.len(), expected.len());
    for line in &stored {
        assert!(!line.contains("sk-audit"), "{line}");
        assert!(!line.contains("arc1."), "no ciphertext either: {line}");
    }
    // Every chain intact after all of it (a purge included).
    let (ok, output) = verify(&stack, &[]).await;
    assert!(ok && output.contains(", 0 problems"), "{output}");
    stack.finish().await;
}

#[tokio::test]
async fn admins_see_their_tenant_operators_every_tenant_and_no_one_else_anything() {
    let stack = Stack::start().await;
    let (agent, provider) = workflow(&stack, "acme").await;
    let mut other = Caller::new(&stack, "carol", "globex", &["admin"]).await;
    other.create_provider("anthropic").await;

    // Another tenant's admin sees its own event only.
    let theirs = other.trail("").await;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].0, "CREATE");
    assert_eq!(theirs[0].1, "carol");
    // A filter cannot reach across tenants.
    assert!(other.trail(r#"tenant = "acme""#).await.is_empty());

    for roles in [&["viewer"][..], &["editor"][..], &["runtime"][..]] {
        let mut refused = Caller::new(&stack, "dave", "acme", roles).await;
        let status = refused.list("").await.expect_err("refused");
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{roles:?}: {status:?}"
        );
    }

    // A platform operator sees both tenants.
    let mut operator =
        Caller::new(&stack, STACK_OPERATOR, "platform", &["platform-operator"]).await;
    let all = operator.list("").await.expect("operator lists");
    assert_eq!(all.iter().filter(|e| e.tenant == "acme").count(), 15);
    assert_eq!(all.iter().filter(|e| e.tenant == "globex").count(), 1);
    let globex = operator.trail(r#"tenant = "globex""#).await;
    assert_eq!(globex, vec![row("CREATE", "carol", &globex[0].2)]);

    // A key operation is platform-wide: the operator's, in no tenant.
    let channel = stack
        .channel_as(STACK_OPERATOR, "platform", &["platform-operator"])
        .await;
    KeyServiceClient::new(channel)
        .rewrap_credentials(pb::RewrapCredentialsRequest::default())
        .await
        .expect("rewrap");
    let rewraps = operator
        .list(r#"action = "CREDENTIALS_REWRAP""#)
        .await
        .expect("operator lists");
    assert_eq!(rewraps.len(), 1, "{rewraps:?}");
    assert_eq!(rewraps[0].tenant, "");
    assert_eq!(rewraps[0].actor, STACK_OPERATOR);
    assert!(format!("{:?}", rewraps[0].details).contains("rewrapped"));

    // Filters: actor, resource, kind, action, and their combinations.
    let mut alice = Caller::new(&stack, "alice", "acme", &["admin"]).await;
    assert_eq!(alice.trail("").await.len(), 15, "no platform event");
    assert_eq!(
        alice.trail(r#"actor = "alice""#).await,
        vec![
            row("CREATE", "alice", &provider),
            row("LABEL_POLICY_UPDATE", "alice", ""),
            requested("PURGE", "alice", &agent, PURGE_REQUEST),
            row("KEY_REVOKE", "alice", &provider),
            row("UPDATE", "alice", &provider),
        ]
    );
    assert_eq!(
        alice.trail(&format!(r#"resource = "{provider}""#)).await,
        vec![
            row("CREATE", "alice", &provider),
            row("KEY_REVOKE", "alice", &provider),
            row("UPDATE", "alice", &provider),
        ]
    );
    assert_eq!(
        alice
            .trail(r#"kind = "provider" AND action = "UPDATE""#)
            .await,
        vec![row("UPDATE", "alice", &provider)]
    );
    assert_eq!(
        alice
            .trail(r#"action = "LABEL_*" AND NOT action = "LABEL_POLICY_UPDATE""#)
            .await,
        vec![
            requested("LABEL_SET", "bob", &agent, LABEL_REQUEST),
            row("LABEL_SET", "bob", &agent),
            row("LABEL_DELETE", "bob", &agent),
        ]
    );
    assert_eq!(
        alice
            .trail(&format!(r#"request_id = "{ROLLBACK_REQUEST}""#))
            .await,
        vec![requested("ROLLBACK", "bob", &agent, ROLLBACK_REQUEST)]
    );
    assert_eq!(
        alice
            .trail(r#"actor = "runner" OR actor = "nobody""#)
            .await
            .len(),
        1
    );

    // Time: the events after the rollback's, and up to it.
    let events = alice.list("").await.expect("list");
    let rollback = events
        .iter()
        .find(|e| e.action == "ROLLBACK")
        .expect("rollback");
    let at = rollback.time.expect("time");
    let at = chrono::DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).expect("nanos"))
        .expect("a time")
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let after: Vec<String> = alice
        .trail(&format!("time > {at}"))
        .await
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        after,
        [
            "CREDENTIAL_RELEASE",
            "LABEL_DELETE",
            "LABEL_POLICY_UPDATE",
            "DELETE",
            "UNDELETE",
            "DELETE",
            "PURGE",
            "KEY_REVOKE",
            "UPDATE"
        ]
    );
    let until = alice.trail(&format!("time <= {at}")).await;
    assert_eq!(until.len(), 6);
    assert_eq!(until[5].0, "ROLLBACK");

    // A page token is bound to its filter; bad filters name the offset.
    let first = alice
        .audit
        .list_audit_events(pb::ListAuditEventsRequest {
            filter: r#"actor = "bob""#.to_owned(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .expect("first page")
        .into_inner();
    assert_eq!(first.audit_events.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let reused = alice
        .audit
        .list_audit_events(pb::ListAuditEventsRequest {
            filter: r#"actor = "alice""#.to_owned(),
            page_size: 2,
            page_token: first.next_page_token.clone(),
        })
        .await
        .expect_err("a token of another filter");
    assert_eq!(reused.code(), Code::InvalidArgument, "{reused:?}");
    for bad in ["colour = \"red\"", "time > yesterday", "actor = "] {
        let status = alice.list(bad).await.expect_err(bad);
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        assert!(status.message().contains("at "), "{bad}: {status:?}");
    }
    let negative = alice
        .audit
        .list_audit_events(pb::ListAuditEventsRequest {
            filter: String::new(),
            page_size: -1,
            page_token: String::new(),
        })
        .await
        .expect_err("negative page size");
    assert_eq!(negative.code(), Code::InvalidArgument);
    stack.finish().await;
}

/// How long the sealing task may take to chain what the test wrote.
const SEALED_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// A registry that chains new audit events every 20 ms.
fn sealing_quickly() -> tests::Launch {
    Stack::default_registry().env("REGISTRY_AUDIT_SEAL_MILLISECONDS", "20")
}

/// Waits until `sql` (a count) answers `wanted`, polling with a deadline.
async fn until_count(stack: &Stack, sql: &str, wanted: i64) {
    let deadline = tokio::time::Instant::now() + SEALED_DEADLINE;
    loop {
        let now = stack.database.count(sql).await;
        if now == wanted {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sql} is {now}, not {wanted}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `registry-service verify` with `args`: whether it passed, and its output.
/// Waits until every audit event is sealed (within [`SEALED_DEADLINE`],
/// well inside the minute an idle registry may wait between looks).
async fn until_sealed(stack: &Stack) {
    until_count(
        stack,
        "SELECT COUNT(*) FROM audit_events WHERE hash IS NULL",
        0,
    )
    .await;
}

async fn verify(stack: &Stack, args: &[&str]) -> (bool, String) {
    let launch = tests::Launch::default()
        .env("DATABASE_URL", stack.database.url())
        .arg("verify")
        .args(args.iter().copied());
    let (status, output) =
        tests::Process::run_to_exit(&tests::binary("registry-service"), launch).await;
    (status.success(), output)
}

/// An agent of `bob`'s with versions 1..=3 (goal g1, g2).
async fn agent_with_three_versions(bob: &mut Caller, name: &str, provider_id: &str) -> String {
    let agent = bob.create_agent(name, provider_id, "").await;
    bob.update_goal(&agent.id, "g1", "").await;
    bob.update_goal(&agent.id, "g2", "").await;
    agent.id
}

#[tokio::test]
async fn verify_names_the_first_broken_link_of_each_chain_and_exported_heads_catch_a_cut_tail() {
    let stack = Stack::start_with(sealing_quickly()).await;
    let mut alice = Caller::new(&stack, "alice", "acme", &["admin"]).await;
    let mut bob = Caller::new(&stack, "bob", "acme", &["editor"]).await;
    let mut runner = Caller::new(&stack, "runner", "acme", &["runtime"]).await;
    let provider = alice.create_provider("openai").await;
    let edited = agent_with_three_versions(&mut bob, "edited", &provider.id).await;
    let labelled = agent_with_three_versions(&mut bob, "labelled", &provider.id).await;
    let cut = agent_with_three_versions(&mut bob, "cut", &provider.id).await;
    bob.set_label(&labelled, "production", 1, "").await;
    bob.set_label(&labelled, "production", 3, "").await;
    runner.resolve(&edited, "").await;
    until_sealed(&stack).await;

    // Untouched: clean, and its heads exported.
    let (ok, output) = verify(&stack, &[]).await;
    assert!(ok, "{output}");
    assert!(output.contains(", 0 problems"), "{output}");
    let dir = tempfile::tempdir().expect("tempdir");
    let heads = dir.path().join("heads.json");
    let heads_arg = heads.to_str().expect("a UTF-8 path");
    let (ok, output) = verify(&stack, &["--export-heads", heads_arg]).await;
    assert!(ok, "{output}");
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&heads).expect("heads written"))
            .expect("heads are JSON");
    // 4 version chains (a provider, 3 agents), 1 label chain, the trail.
    assert_eq!(
        exported["chains"].as_array().map(Vec::len),
        Some(5),
        "{exported}"
    );
    assert_eq!(exported["audit"]["seq"], 13, "{exported}");

    // The newest version row deleted and the agent's row rewritten to
    // match: consistent on its own, caught against the exported heads.
    let db = sea_orm::Database::connect(stack.database.url())
        .await
        .expect("connect");
    for statement in [
        format!("DELETE FROM agent_versions WHERE agent_id = '{cut}' AND version_number = 3"),
        format!(
            "UPDATE agents SET version = 2, \
             config = (SELECT configuration FROM agent_versions WHERE agent_id = '{cut}' AND version_number = 2), \
             version_hash = (SELECT hash FROM agent_versions WHERE agent_id = '{cut}' AND version_number = 2) \
             WHERE id = '{cut}'"
        ),
    ] {
        sea_orm::ConnectionTrait::execute_unprepared(&db, &statement)
            .await
            .expect("cut the chain's tail");
    }
    let (ok, output) = verify(&stack, &[]).await;
    assert!(
        ok,
        "without the exported heads a cut tail looks whole:\n{output}"
    );
    let (ok, output) = verify(&stack, &["--heads", heads_arg]).await;
    assert!(!ok, "{output}");
    assert!(
        output.contains(&format!(
            "agent_versions agent {cut} position 3: an exported chain head is missing"
        )),
        "{output}"
    );
    assert!(output.contains(", 1 problems"), "{output}");

    // One version row's configuration edited: that row is named.
    sea_orm::ConnectionTrait::execute_unprepared(
        &db,
        &format!(
            "UPDATE agent_versions SET configuration = \
             (SELECT configuration FROM agent_versions WHERE agent_id = '{edited}' AND version_number = 2) \
             WHERE agent_id = '{edited}' AND version_number = 1"
        ),
    )
    .await
    .expect("edit a version");
    let (ok, output) = verify(&stack, &[]).await;
    assert!(!ok, "{output}");
    assert!(
        output.contains(&format!(
            "agent_versions tenant acme agent {edited} position 1: the first broken link"
        )),
        "{output}"
    );
    assert!(output.contains(", 1 problems"), "{output}");

    // One label move's reason edited.
    let first_move = stack
        .database
        .count(&format!(
            "SELECT MIN(id) FROM label_moves WHERE resource_id = '{labelled}'"
        ))
        .await;
    sea_orm::ConnectionTrait::execute_unprepared(
        &db,
        &format!("UPDATE label_moves SET reason = 'forged' WHERE id = {first_move}"),
    )
    .await
    .expect("edit a label move");
    let (ok, output) = verify(&stack, &[]).await;
    assert!(!ok, "{output}");
    assert!(
        output.contains(&format!(
            "label_moves tenant acme agent {labelled} position {first_move}: the first broken link"
        )),
        "{output}"
    );
    assert!(output.contains(", 2 problems"), "{output}");

    // One audit event's actor edited.
    let release = stack
        .database
        .count("SELECT MIN(id) FROM audit_events WHERE action = 'CREDENTIAL_RELEASE'")
        .await;
    sea_orm::ConnectionTrait::execute_unprepared(
        &db,
        &format!("UPDATE audit_events SET actor = 'mallory' WHERE id = {release}"),
    )
    .await
    .expect("edit an audit event");
    let (ok, output) = verify(&stack, &[]).await;
    assert!(!ok, "{output}");
    assert!(
        output.contains(&format!(
            "audit_events tenant acme event {release} position "
        )),
        "{output}"
    );
    assert!(output.contains("the first broken link"), "{output}");
    assert!(output.contains(", 3 problems"), "{output}");
    drop(db);
    stack.finish().await;
}

#[tokio::test]
async fn an_event_that_changes_no_resource_is_sealed_at_the_next_round() {
    // The sealer looks when a commit through its process may have recorded
    // an event, else once a minute: each event below is the only one since
    // the last seal, and none of them writes a version.
    let stack = Stack::start_with(sealing_quickly()).await;
    let mut alice = Caller::new(&stack, "alice", "acme", &["admin"]).await;
    let mut bob = Caller::new(&stack, "bob", "acme", &["editor"]).await;
    let mut runner = Caller::new(&stack, "runner", "acme", &["runtime"]).await;
    let provider = alice.create_provider("openai").await;
    let agent = bob.create_agent("analyst", &provider.id, "").await;
    until_sealed(&stack).await;

    // A label policy.
    alice
        .policy
        .update_label_policy(pb::UpdateLabelPolicyRequest {
            protected_labels: vec!["production".to_owned()],
            ..Default::default()
        })
        .await
        .expect("label policy");
    until_sealed(&stack).await;

    // A credential release.
    assert_eq!(runner.resolve(&agent.id, "").await.api_key, KEY);
    until_sealed(&stack).await;

    // A revoked key revision that is no longer the current one.
    alice
        .providers
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                id: provider.id.clone(),
                api_key: "sk-audit-second".to_owned(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["api_key".to_owned()],
            }),
            ..Default::default()
        })
        .await
        .expect("a new key");
    until_sealed(&stack).await;
    let unchanged = alice
        .providers
        .revoke_provider_key(pb::RevokeProviderKeyRequest {
            provider_id: provider.id.clone(),
            revision: 1,
            reason: "rotated".to_owned(),
            ..Default::default()
        })
        .await
        .expect("revoke the replaced key")
        .into_inner();
    assert_eq!(unchanged.version, 2, "no version written");
    until_sealed(&stack).await;

    // A key operation.
    let operator = stack
        .channel_as(STACK_OPERATOR, "platform", &["platform-operator"])
        .await;
    KeyServiceClient::new(operator)
        .rewrap_credentials(pb::RewrapCredentialsRequest::default())
        .await
        .expect("rewrap");
    until_sealed(&stack).await;
    let trail = alice.trail("").await;
    let actions: Vec<&str> = trail.iter().map(|event| event.0.as_str()).collect();
    assert!(
        actions.contains(&"LABEL_POLICY_UPDATE")
            && actions.contains(&"CREDENTIAL_RELEASE")
            && actions.contains(&"KEY_REVOKE"),
        "{trail:?}"
    );
    stack.finish().await;
}

#[tokio::test]
async fn events_past_their_retention_are_deleted_and_the_rest_still_verifies() {
    // Sealing once at start-up, then not for an hour: the events written
    // now stay unsealed until the second registry below.
    let mut stack = Stack::start_with(
        Stack::default_registry().env("REGISTRY_AUDIT_SEAL_MILLISECONDS", "3600000"),
    )
    .await;
    let mut alice = Caller::new(&stack, "alice", "acme", &["admin"]).await;
    let provider = alice.create_provider("openai").await;
    let mut bob = Caller::new(&stack, "bob", "acme", &["editor"]).await;
    agent_with_three_versions(&mut bob, "kept", &provider.id).await;
    assert_eq!(
        stack
            .database
            .count("SELECT COUNT(*) FROM audit_events")
            .await,
        4
    );
    // The two oldest events happened long ago.
    let db = sea_orm::Database::connect(stack.database.url())
        .await
        .expect("connect");
    sea_orm::ConnectionTrait::execute_unprepared(
        &db,
        "UPDATE audit_events SET event_time = '2020-01-01T00:00:00+00:00' \
         WHERE id IN (SELECT id FROM audit_events ORDER BY id LIMIT 2)",
    )
    .await
    .expect("backdate");
    drop(db);

    // A registry keeping 30 days seals every event, then deletes those two.
    let second = tests::stack::start_registry(
        &stack.database,
        &stack.crypto_endpoint,
        sealing_quickly().env("REGISTRY_AUDIT_RETENTION_DAYS", "30"),
    )
    .await;
    let first = std::mem::replace(&mut stack.registry, second);
    first.terminate().await;
    until_count(&stack, "SELECT COUNT(*) FROM audit_events", 2).await;
    until_sealed(&stack).await;
    let mut alice = Caller::new(&stack, "alice", "acme", &["admin"]).await;
    let trail = alice.trail("").await;
    assert_eq!(trail.len(), 2, "{trail:?}");
    assert!(trail.iter().all(|e| e.0 == "UPDATE"), "{trail:?}");

    let (ok, output) = verify(&stack, &[]).await;
    assert!(ok, "{output}");
    assert!(output.contains(", 0 problems"), "{output}");
    stack.finish().await;
}

#[tokio::test]
async fn a_retention_or_seal_interval_out_of_bounds_stops_the_registry_at_start() {
    for (setting, value) in [
        ("REGISTRY_AUDIT_RETENTION_DAYS", "0"),
        ("REGISTRY_AUDIT_RETENTION_DAYS", "36501"),
        ("REGISTRY_AUDIT_SEAL_MILLISECONDS", "9"),
    ] {
        let launch = Stack::default_registry().env(setting, value);
        let (status, output) =
            tests::Process::run_to_exit(&tests::binary("registry-service"), launch).await;
        assert!(!status.success(), "started with {setting}={value}");
        assert!(output.contains(setting), "{setting}={value}: {output}");
    }
}

/// A filtered audit page is bounded like a filtered List: with the scan
/// budget at 0 every filtered page is read from a window of the next 4
/// visible events, so pages may be short or empty with a next page, and
/// paging on yields exactly the events the filter selects, newest first —
/// never another tenant's, whose events interleave. An unfiltered page
/// is never windowed.
#[tokio::test]
async fn a_filtered_trail_read_from_windows_pages_to_exactly_its_events() {
    const WINDOW: usize = 4;
    let stack = Stack::start_windowed(WINDOW).await;
    let alice = Caller::new(&stack, "alice", "acme", &["admin"]).await;
    let bob = Caller::new(&stack, "bob", "acme", &["admin"]).await;
    let carol = Caller::new(&stack, "carol", "other", &["admin"]).await;
    let create = |caller: &Caller, name: String| {
        let mut agents = caller.agents.clone();
        async move {
            let agent = agents
                .create_agent(pb::CreateAgentRequest {
                    agent: Some(pb::Agent {
                        name,
                        role: "Analyst".to_owned(),
                        goal: "Analyze".to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .expect("create agent")
                .into_inner();
            format!("agents/{}", agent.id)
        }
    };
    // acme: alice, alice, bob, then carol in another tenant, eight times.
    let mut bobs = Vec::new();
    let mut acme = Vec::new();
    for i in 0..8 {
        for j in 0..2 {
            let resource = create(&alice, format!("alice-{i}-{j}")).await;
            acme.push(row("CREATE", "alice", &resource));
        }
        let resource = create(&bob, format!("bob-{i}")).await;
        bobs.push(row("CREATE", "bob", &resource));
        acme.push(row("CREATE", "bob", &resource));
        create(&carol, format!("carol-{i}")).await;
    }
    bobs.reverse();
    acme.reverse();

    // Page by page, 3 at a time: the pages' sizes, and every event.
    let pages = |caller: &Caller, filter: &'static str| {
        let mut audit = caller.audit.clone();
        async move {
            let (mut sizes, mut events, mut token) = (Vec::new(), Vec::new(), String::new());
            loop {
                let page = audit
                    .list_audit_events(pb::ListAuditEventsRequest {
                        filter: filter.to_owned(),
                        page_size: 3,
                        page_token: token,
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{filter:?}: {e:?}"))
                    .into_inner();
                sizes.push(page.audit_events.len());
                assert!(page.audit_events.iter().all(|e| e.tenant == "acme"));
                events.extend(page.audit_events.into_iter().map(summary));
                if page.next_page_token.is_empty() {
                    return (sizes, events);
                }
                token = page.next_page_token;
            }
        }
    };
    // 24 acme events in windows of 4, newest first: one or two of bob's
    // in each of the 6 windows, so no page is full.
    let (sizes, events) = pages(&alice, r#"actor = "bob""#).await;
    assert_eq!(events, bobs, "exactly bob's events, newest first");
    assert!(sizes.len() >= 24 / WINDOW, "a window per call: {sizes:?}");
    assert!(sizes.iter().all(|&n| n < 3), "short pages: {sizes:?}");
    let (sizes, events) = pages(&alice, r#"actor = "nobody""#).await;
    assert!(events.is_empty());
    assert!(sizes.len() >= 24 / WINDOW, "every window read: {sizes:?}");
    // Unfiltered: full pages of 3, every acme event.
    let (sizes, events) = pages(&alice, "").await;
    assert_eq!(events, acme);
    assert_eq!(sizes, vec![3; 8]);
    stack.finish().await;
}
