//! Idempotent retries (AIP-155 `request_id`) and dry runs (AIP-163
//! `validate_only`), end to end on real servers, on SQLite and (with
//! TEST_POSTGRES_URL) PostgreSQL.
//!
//! A retry with the same request id and the same request is answered with
//! the first answer and writes nothing more — after a restart, after a
//! crash between the commit and the answer, and when the duplicates race;
//! the same id with another request, or an id that is not a UUID, is
//! INVALID_ARGUMENT on `request_id`. A dry run answers what the real call
//! would (the resource, the diff its version would record: exactly the
//! diff the real call then records), every check still fires, and nothing
//! changes: no row, no version number, no change-log revision, no call to
//! crypto-service.

use prost_types::FieldMask;
use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use proto::v1::provider_service_client::ProviderServiceClient;
use tests::auth::Authed;
use tests::health::wait_for_status;
use tests::stack::{Stack, TestDatabase, start_registry};
use tests::{Launch, http_get};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

/// The clients of one caller.
struct Caller {
    agents: AgentServiceClient<Authed>,
    providers: ProviderServiceClient<Authed>,
}

impl Caller {
    async fn new(stack: &Stack, tenant: &str, roles: &[&str]) -> Self {
        let channel = stack.channel_as("alice", tenant, roles).await;
        Self {
            agents: AgentServiceClient::new(channel.clone()),
            providers: ProviderServiceClient::new(channel),
        }
    }

    async fn create(&mut self, agent: pb::Agent, request_id: &str) -> Result<pb::Agent, Status> {
        self.create_as(agent, request_id, false).await
    }

    async fn create_as(
        &mut self,
        agent: pb::Agent,
        request_id: &str,
        validate_only: bool,
    ) -> Result<pb::Agent, Status> {
        self.agents
            .create_agent(pb::CreateAgentRequest {
                agent: Some(agent),
                request_id: request_id.to_owned(),
                validate_only,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn update_goal(
        &mut self,
        id: &str,
        goal: &str,
        (request_id, validate_only): (&str, bool),
    ) -> Result<pb::Agent, Status> {
        self.agents
            .update_agent(pb::UpdateAgentRequest {
                agent: Some(pb::Agent {
                    id: id.to_owned(),
                    goal: goal.to_owned(),
                    ..Default::default()
                }),
                update_mask: Some(mask(&["goal"])),
                request_id: request_id.to_owned(),
                validate_only,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn versions(&mut self, id: &str) -> Vec<pb::AgentVersion> {
        self.agents
            .list_agent_versions(pb::ListAgentVersionsRequest {
                agent_id: id.to_owned(),
                page_size: 100,
                ..Default::default()
            })
            .await
            .expect("list versions")
            .into_inner()
            .versions
    }

    async fn version(&mut self, id: &str, number: i64) -> pb::AgentVersion {
        self.agents
            .get_agent_version(pb::GetAgentVersionRequest {
                agent_id: id.to_owned(),
                version_number: number,
            })
            .await
            .expect("get version")
            .into_inner()
    }

    async fn get(&mut self, id: &str) -> Result<pb::Agent, Status> {
        self.agents
            .get_agent(pb::GetAgentRequest {
                id: id.to_owned(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn agent_count(&mut self) -> i32 {
        self.agents
            .list_agents(pb::ListAgentsRequest::default())
            .await
            .expect("list agents")
            .into_inner()
            .total_size
    }

    async fn create_provider(
        &mut self,
        provider: pb::Provider,
        validate_only: bool,
    ) -> Result<pb::Provider, Status> {
        self.providers
            .create_provider(pb::CreateProviderRequest {
                provider: Some(provider),
                validate_only,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

/// A `google.protobuf.Value` holding `s`.
fn text(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_owned())),
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
        backstory: "Curious".to_owned(),
        tools: vec!["search".to_owned()],
        ..Default::default()
    }
}

/// A tool's settings: a struct with a few fields.
fn settings(tool: &str) -> prost_types::Struct {
    let field = |value: &str| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(value.to_owned())),
    };
    prost_types::Struct {
        fields: [
            ("name", field(tool)),
            ("mode", field("fast")),
            ("lang", field("en")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    }
}

fn provider(name: &str, key: &str) -> pb::Provider {
    pb::Provider {
        name: name.to_owned(),
        provider_type: pb::ProviderType::Openai.into(),
        model_name: "gpt-4o".to_owned(),
        api_key: key.to_owned(),
        ..Default::default()
    }
}

/// The request ids these tests send (fixed, so a failure names them).
const FIRST: &str = "0193f1b2-7c4d-7e8f-9a0b-1c2d3e4f5a60";
const SECOND: &str = "0193f1b2-7c4d-7e8f-9a0b-1c2d3e4f5a61";
const THIRD: &str = "0193f1b2-7c4d-7e8f-9a0b-1c2d3e4f5a62";
const FOURTH: &str = "0193f1b2-7c4d-7e8f-9a0b-1c2d3e4f5a63";
const FIFTH: &str = "0193f1b2-7c4d-7e8f-9a0b-1c2d3e4f5a64";
const SIXTH: &str = "0193f1b2-7c4d-7e8f-9a0b-1c2d3e4f5a65";

/// The fields of an INVALID_ARGUMENT's violations.
fn violated_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// How many rows `table` holds.
async fn rows(database: &TestDatabase, table: &str) -> i64 {
    database
        .count(&format!("SELECT COUNT(*) FROM {table}"))
        .await
}

/// Everything a dry run must leave as it was: the rows of every table a
/// write touches and the tenant's change-log revision.
async fn footprint(database: &TestDatabase) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "agents",
        "agent_versions",
        "providers",
        "provider_versions",
        "provider_key_revisions",
        "labels",
        "label_moves",
        "changes",
        "request_ids",
    ] {
        counts.push(rows(database, table).await);
    }
    counts.push(
        database
            .count("SELECT COALESCE(MAX(revision), 0) FROM tenant_revisions")
            .await,
    );
    counts
}

#[tokio::test]
async fn a_retried_mutation_returns_the_first_answer_and_writes_once() {
    let stack = Stack::start().await;
    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;

    let created = alice.create(agent("analyst"), FIRST).await.expect("create");
    let retried = alice.create(agent("analyst"), FIRST).await.expect("retry");
    assert_eq!(retried, created, "the first answer, field for field");
    assert_eq!(alice.agent_count().await, 1);
    assert_eq!(alice.versions(&created.id).await.len(), 1);
    // The id is canonical: the same UUID in capitals is the same id.
    let shouted = alice
        .create(agent("analyst"), &FIRST.to_uppercase())
        .await
        .expect("same id in capitals");
    assert_eq!(shouted, created);

    let updated = alice
        .update_goal(&created.id, "Report", (SECOND, false))
        .await
        .expect("update");
    assert_eq!(updated.version, 2);
    let again = alice
        .update_goal(&created.id, "Report", (SECOND, false))
        .await
        .expect("update retried");
    assert_eq!(again, updated);
    assert_eq!(alice.versions(&created.id).await.len(), 2);

    let rollback = pb::RollbackAgentRequest {
        agent_id: created.id.clone(),
        version_number: 1,
        request_id: THIRD.to_owned(),
        ..Default::default()
    };
    let rolled_back = alice
        .agents
        .rollback_agent(rollback.clone())
        .await
        .expect("rollback")
        .into_inner();
    let rolled_back_again = alice
        .agents
        .rollback_agent(rollback)
        .await
        .expect("rollback retried")
        .into_inner();
    assert_eq!(rolled_back_again, rolled_back);
    assert_eq!(rolled_back.version, 3);
    assert_eq!(alice.versions(&created.id).await.len(), 3);

    let set = pb::SetAgentLabelRequest {
        agent_id: created.id.clone(),
        label: "production".to_owned(),
        version_number: 2,
        request_id: FOURTH.to_owned(),
        ..Default::default()
    };
    let label = alice
        .agents
        .set_agent_label(set.clone())
        .await
        .expect("set label")
        .into_inner();
    // Moved elsewhere meanwhile: the retry still answers the first move
    // and does not move it back.
    let moved = pb::SetAgentLabelRequest {
        version_number: 1,
        request_id: String::new(),
        ..set.clone()
    };
    alice.agents.set_agent_label(moved).await.expect("move");
    let label_again = alice
        .agents
        .set_agent_label(set)
        .await
        .expect("set label retried")
        .into_inner();
    assert_eq!(label_again, label);
    assert_eq!(
        alice.get(&created.id).await.expect("get").labels["production"],
        1
    );
    assert_eq!(rows(&stack.database, "label_moves").await, 2);

    let delete = pb::DeleteAgentRequest {
        id: created.id.clone(),
        request_id: FIFTH.to_owned(),
        ..Default::default()
    };
    alice
        .agents
        .delete_agent(delete.clone())
        .await
        .expect("delete");
    // Without a request id the second delete would be NOT_FOUND.
    alice
        .agents
        .delete_agent(delete)
        .await
        .expect("delete retried");
    assert_eq!(
        alice.get(&created.id).await.expect_err("refused").code(),
        Code::NotFound
    );
    assert_eq!(rows(&stack.database, "request_ids").await, 5);
    stack.finish().await;
}

#[tokio::test]
async fn a_request_id_is_refused_for_another_request_and_when_it_is_no_uuid() {
    let stack = Stack::start().await;
    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;
    let created = alice.create(agent("analyst"), FIRST).await.expect("create");

    // Same id, another agent: refused, and nothing written.
    let other = alice
        .create(agent("writer"), FIRST)
        .await
        .expect_err("refused");
    assert_eq!(violated_fields(&other), ["request_id"]);
    // Same id, same agent, another description: another request.
    let described = alice
        .agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(agent("analyst")),
            change_description: "first of its name".to_owned(),
            request_id: FIRST.to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(violated_fields(&described), ["request_id"]);
    // Same id, another method.
    let update = alice
        .update_goal(&created.id, "Report", (FIRST, false))
        .await
        .expect_err("refused");
    assert_eq!(violated_fields(&update), ["request_id"]);
    assert_eq!(alice.agent_count().await, 1);
    assert_eq!(alice.versions(&created.id).await.len(), 1);

    for bad in [
        "not-a-uuid",
        "0193f1b2",
        "0193f1b2-7c4d-7e8f-9a0b-1c2d3e4f5a6g",
    ] {
        let refused = alice
            .create(agent("third"), bad)
            .await
            .expect_err("refused");
        assert_eq!(violated_fields(&refused), ["request_id"], "{bad}");
    }
    assert_eq!(alice.agent_count().await, 1);

    // Request ids are per tenant: another tenant's same id is its own.
    let mut bob = Caller::new(&stack, "globex", &["admin"]).await;
    let theirs = bob
        .create(agent("writer"), FIRST)
        .await
        .expect("other tenant");
    assert_ne!(theirs.id, created.id);
    stack.finish().await;
}

#[tokio::test]
async fn a_retry_after_a_restart_returns_the_first_answer() {
    let mut stack = Stack::start().await;
    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;
    // Map entries: the fingerprint must not depend on a process's hashing.
    let configured = || pb::Agent {
        tools: ["search", "scrape", "summarize", "translate"]
            .map(str::to_owned)
            .to_vec(),
        tool_config: ["search", "scrape", "summarize", "translate"]
            .into_iter()
            .map(|tool| (tool.to_owned(), settings(tool)))
            .collect(),
        ..agent("analyst")
    };
    let created = alice.create(configured(), FIRST).await.expect("create");
    let updated = alice
        .update_goal(&created.id, "Report", (SECOND, false))
        .await
        .expect("update");

    let restarted = start_registry(
        &stack.database,
        &stack.crypto_endpoint,
        Stack::default_registry(),
    )
    .await;
    let old = std::mem::replace(&mut stack.registry, restarted);
    old.terminate().await;

    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;
    let retried = alice.create(configured(), FIRST).await.expect("retry");
    assert_eq!(retried, created);
    let retried_update = alice
        .update_goal(&created.id, "Report", (SECOND, false))
        .await
        .expect("update retried");
    // The update's answer carries the labels as they are now: none here.
    assert_eq!(retried_update, updated);
    assert_eq!(alice.agent_count().await, 1);
    assert_eq!(alice.versions(&created.id).await.len(), 2);
    stack.finish().await;
}

#[tokio::test]
async fn a_create_retried_after_a_crash_between_commit_and_answer_returns_that_agent() {
    // The registry aborts right after the commit of the call with FIRST
    // (a test hook only development mode accepts): the client never gets
    // the answer, and retries.
    let dying = Stack::default_registry()
        .env("REGISTRY_DEV", "true")
        .env("REGISTRY_TEST_ABORT_AFTER_COMMIT", FIRST);
    let mut stack = Stack::start_with(dying).await;
    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;
    let lost = alice
        .create(agent("analyst"), FIRST)
        .await
        .expect_err("refused");
    assert!(
        matches!(
            lost.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{lost:?}"
    );
    let replacement = start_registry(
        &stack.database,
        &stack.crypto_endpoint,
        Stack::default_registry(),
    )
    .await;
    let dead = std::mem::replace(&mut stack.registry, replacement);
    let (status, _) = dead.wait().await;
    assert!(!status.success(), "the registry died: {status:?}");

    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;
    // The write committed before the crash: it is there, once.
    assert_eq!(alice.agent_count().await, 1);
    let retried = alice.create(agent("analyst"), FIRST).await.expect("retry");
    assert_eq!(retried.name, "analyst");
    assert_eq!(retried.version, 1);
    assert_eq!(retried.created_by, "alice");
    assert_eq!(alice.agent_count().await, 1);
    let versions = alice.versions(&retried.id).await;
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(alice.get(&retried.id).await.expect("get"), retried);
    stack.finish().await;
}

#[tokio::test]
async fn a_development_mode_hook_is_refused_in_production() {
    let database = TestDatabase::fresh().await;
    let launch = Stack::default_registry()
        .env("REGISTRY_TEST_ABORT_AFTER_COMMIT", FIRST)
        .env("DATABASE_URL", database.url())
        .arg("--listen")
        .arg("127.0.0.1:0");
    let (status, output) =
        tests::Process::run_to_exit(&tests::binary("registry-service"), launch).await;
    assert!(!status.success());
    assert!(
        output.contains("REGISTRY_TEST_ABORT_AFTER_COMMIT"),
        "names the setting: {output}"
    );
    database.drop_database().await;
}

#[tokio::test]
async fn concurrent_duplicates_write_once() {
    let stack = Stack::start().await;
    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut caller = Caller::new(&stack, "acme", &["admin"]).await;
        calls.push(tokio::spawn(async move {
            caller.create(agent("analyst"), FIRST).await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for call in calls {
        let answer = call
            .await
            .expect("joined")
            .expect("every duplicate answered");
        ids.insert(answer.id);
    }
    assert_eq!(ids.len(), 1, "one agent answered to all: {ids:?}");
    let id = ids.pop_first().unwrap_or_default();
    assert_eq!(alice.agent_count().await, 1);

    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut caller = Caller::new(&stack, "acme", &["admin"]).await;
        let id = id.clone();
        calls.push(tokio::spawn(async move {
            caller.update_goal(&id, "Report", (SECOND, false)).await
        }));
    }
    for call in calls {
        let answer = call
            .await
            .expect("joined")
            .expect("every duplicate answered");
        assert_eq!(answer.version, 2);
    }
    assert_eq!(alice.versions(&id).await.len(), 2);
    stack.finish().await;
}

#[tokio::test]
async fn duplicates_through_two_replicas_write_once() {
    let stack = Stack::start().await;
    let replica = start_registry(
        &stack.database,
        &stack.crypto_endpoint,
        Stack::default_registry(),
    )
    .await;
    let token = tests::auth::token("alice", "acme", &["admin"]);
    let replica_channel =
        tests::auth::authed(replica.channel().await, tests::auth::Bearer::new(&token));
    let mut calls = Vec::new();
    for call in 0..8 {
        let mut agents = if call % 2 == 0 {
            Caller::new(&stack, "acme", &["admin"]).await.agents
        } else {
            AgentServiceClient::new(replica_channel.clone())
        };
        calls.push(tokio::spawn(async move {
            agents
                .create_agent(pb::CreateAgentRequest {
                    agent: Some(agent("analyst")),
                    request_id: FIRST.to_owned(),
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for call in calls {
        match call.await.expect("joined") {
            Ok(answer) => {
                ids.insert(answer.id);
            }
            // The other replica's write of the id was not readable yet.
            Err(status) => {
                assert_eq!(status.code(), Code::Aborted, "{status:?}");
                let reason = status.get_details_error_info().map(|info| info.reason);
                assert_eq!(reason.as_deref(), Some("REQUEST_IN_PROGRESS"));
            }
        }
    }
    assert_eq!(ids.len(), 1, "one agent answered to all: {ids:?}");
    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;
    assert_eq!(alice.agent_count().await, 1);
    // A retry through either replica answers that agent.
    let mut through_replica = AgentServiceClient::new(replica_channel);
    let retried = through_replica
        .create_agent(pb::CreateAgentRequest {
            agent: Some(agent("analyst")),
            request_id: FIRST.to_owned(),
            ..Default::default()
        })
        .await
        .expect("retry through the replica")
        .into_inner();
    assert!(ids.contains(&retried.id));
    assert_eq!(alice.versions(&retried.id).await.len(), 1);
    replica.terminate().await;
    stack.finish().await;
}

#[tokio::test]
async fn expired_request_ids_are_forgotten() {
    let stack = Stack::start_with(
        Stack::default_registry().env("REGISTRY_REQUEST_ID_RETENTION_SECONDS", "1"),
    )
    .await;
    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;
    alice.create(agent("analyst"), SIXTH).await.expect("create");
    assert_eq!(rows(&stack.database, "request_ids").await, 1);
    // The background task deletes it: wait on that, with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while rows(&stack.database, "request_ids").await > 0 {
        assert!(std::time::Instant::now() < deadline, "never pruned");
        tokio::task::yield_now().await;
    }
    // Forgotten: the id now names a new request.
    alice
        .create(agent("writer"), SIXTH)
        .await
        .expect("the id is free again");
    assert_eq!(alice.agent_count().await, 2);
    stack.finish().await;
}

/// An expired id that the hourly pruning has not deleted yet: an agent's
/// write goes first (it has no effect outside its transaction), meets the
/// old row on the primary key, and must still succeed — for a create, an
/// update and a rollback alike.
#[tokio::test]
async fn an_expired_request_id_still_stored_is_free() {
    let stack = Stack::start().await;
    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;
    // Every stored id made 26 years old; answers how many are that old.
    let age_every_id = || async {
        let database = &stack.database;
        database
            .execute("UPDATE request_ids SET create_time = '2000-01-01 00:00:00+00:00'")
            .await;
        database
            .count(
                "SELECT COUNT(*) FROM request_ids WHERE create_time < '2001-01-01 00:00:00+00:00'",
            )
            .await
    };

    let analyst = alice.create(agent("analyst"), FIRST).await.expect("create");
    assert_eq!(age_every_id().await, 1, "the row is there, expired");
    let writer = alice
        .create(agent("writer"), FIRST)
        .await
        .expect("an expired id names a new request");
    assert_eq!((writer.name.as_str(), writer.version), ("writer", 1));
    assert_ne!(writer.id, analyst.id);
    assert_eq!(alice.agent_count().await, 2);
    assert_eq!(rows(&stack.database, "request_ids").await, 1);
    // Remembered anew: its retry is answered, not run.
    let retried = alice.create(agent("writer"), FIRST).await.expect("retry");
    assert_eq!(retried, writer);
    assert_eq!(alice.agent_count().await, 2);

    let updated = alice
        .update_goal(&writer.id, "Write well", (SECOND, false))
        .await
        .expect("update");
    assert_eq!(age_every_id().await, 2);
    let again = alice
        .update_goal(&writer.id, "Write better", (SECOND, false))
        .await
        .expect("an expired id names a new update");
    assert_eq!(
        (again.version, again.goal.as_str()),
        (updated.version + 1, "Write better")
    );

    assert_eq!(age_every_id().await, 2);
    let rolled_back = alice
        .agents
        .rollback_agent(pb::RollbackAgentRequest {
            agent_id: writer.id.clone(),
            version_number: 1,
            request_id: SECOND.to_owned(),
            ..Default::default()
        })
        .await
        .expect("an expired id names a new rollback")
        .into_inner();
    assert_eq!(rolled_back.version, again.version + 1);
    assert_eq!(alice.versions(&writer.id).await.len(), 4);
    stack.finish().await;
}

#[tokio::test]
async fn a_dry_run_answers_the_diff_a_real_call_records_and_changes_nothing() {
    let stack = Stack::start().await;
    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;
    let created = alice.create(agent("analyst"), "").await.expect("create");
    let before = footprint(&stack.database).await;

    // Create: the agent as it would be, nothing kept (the name stays free).
    let would_create = alice
        .create_as(agent("writer"), "", true)
        .await
        .expect("dry create");
    assert_eq!(would_create.name, "writer");
    assert_eq!(would_create.version, 1);
    assert!(would_create.validated_diff.is_empty());
    assert_eq!(
        alice
            .get(&would_create.id)
            .await
            .expect_err("refused")
            .code(),
        Code::NotFound
    );
    assert_eq!(footprint(&stack.database).await, before);

    // Update: the diff it would record, then exactly the one recorded.
    let would = alice
        .update_goal(&created.id, "Report", (FIRST, true))
        .await
        .expect("dry update");
    assert_eq!(would.version, 2);
    assert_eq!(would.goal, "Report");
    assert_eq!(
        would.validated_diff,
        [pb::FieldChange {
            path: "goal".to_owned(),
            kind: pb::ChangeKind::Modified.into(),
            old_value: Some(text("Analyze")),
            new_value: Some(text("Report")),
        }]
    );
    assert_eq!(footprint(&stack.database).await, before);
    assert_eq!(alice.get(&created.id).await.expect("get").version, 1);
    // A dry run is not remembered: the same id then runs for real.
    let real = alice
        .update_goal(&created.id, "Report", (FIRST, false))
        .await
        .expect("real update");
    assert_eq!(real.version, 2, "no version number was consumed");
    assert!(real.validated_diff.is_empty());
    let recorded = alice.version(&created.id, 2).await;
    assert_eq!(recorded.diff, would.validated_diff);

    // Rollback.
    let rollback = pb::RollbackAgentRequest {
        agent_id: created.id.clone(),
        version_number: 1,
        validate_only: true,
        ..Default::default()
    };
    let before = footprint(&stack.database).await;
    let would = alice
        .agents
        .rollback_agent(rollback.clone())
        .await
        .expect("dry rollback")
        .into_inner();
    assert_eq!((would.version, would.goal.as_str()), (3, "Analyze"));
    assert_eq!(footprint(&stack.database).await, before);
    let rolled_back = alice
        .agents
        .rollback_agent(pb::RollbackAgentRequest {
            validate_only: false,
            ..rollback
        })
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!(rolled_back.version, 3);
    assert_eq!(
        alice.version(&created.id, 3).await.diff,
        would.validated_diff
    );
    assert_eq!(
        would.validated_diff,
        [pb::FieldChange {
            path: "goal".to_owned(),
            kind: pb::ChangeKind::Modified.into(),
            old_value: Some(text("Report")),
            new_value: Some(text("Analyze")),
        }]
    );

    // Set label and delete: checked, not done.
    let before = footprint(&stack.database).await;
    let label = alice
        .agents
        .set_agent_label(pb::SetAgentLabelRequest {
            agent_id: created.id.clone(),
            label: "production".to_owned(),
            version_number: 2,
            validate_only: true,
            ..Default::default()
        })
        .await
        .expect("dry set label")
        .into_inner();
    assert_eq!(
        (label.label.as_str(), label.version_number),
        ("production", 2)
    );
    assert_eq!(label.updated_by, "alice");
    alice
        .agents
        .delete_agent(pb::DeleteAgentRequest {
            id: created.id.clone(),
            validate_only: true,
            ..Default::default()
        })
        .await
        .expect("dry delete");
    assert_eq!(footprint(&stack.database).await, before);
    let after = alice.get(&created.id).await.expect("still there");
    assert!(after.labels.is_empty());
    assert_eq!(after.version, 3);
    stack.finish().await;
}

#[tokio::test]
async fn every_check_fires_in_a_dry_run() {
    let stack = Stack::start().await;
    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;
    let created = alice.create(agent("analyst"), "").await.expect("create");
    alice
        .update_goal(&created.id, "Report", ("", false))
        .await
        .expect("update");
    let before = footprint(&stack.database).await;

    // A stale etag.
    let stale = alice
        .agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: created.id.clone(),
                goal: "Other".to_owned(),
                etag: created.etag.clone(),
                ..Default::default()
            }),
            update_mask: Some(mask(&["goal"])),
            validate_only: true,
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    // A name taken.
    let taken = alice
        .create_as(agent("analyst"), "", true)
        .await
        .expect_err("refused");
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    // A provider that is not there.
    let missing = alice
        .create_as(
            pb::Agent {
                llm_provider_id: Some("0193f1b2-0000-7000-8000-000000000000".to_owned()),
                ..agent("writer")
            },
            "",
            true,
        )
        .await
        .expect_err("refused");
    assert_eq!(missing.code(), Code::FailedPrecondition, "{missing:?}");
    // Validation.
    let invalid = alice
        .create_as(agent(""), "", true)
        .await
        .expect_err("refused");
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");
    // A provider in use cannot be deleted.
    let used = alice
        .create_provider(provider("openai", ""), false)
        .await
        .expect("provider");
    alice
        .agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: created.id.clone(),
                llm_provider_id: Some(used.id.clone()),
                ..Default::default()
            }),
            update_mask: Some(mask(&["llm_provider_id"])),
            ..Default::default()
        })
        .await
        .expect("assign");
    let before_delete = footprint(&stack.database).await;
    let in_use = alice
        .providers
        .delete_provider(pb::DeleteProviderRequest {
            provider_id: used.id.clone(),
            validate_only: true,
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(in_use.code(), Code::FailedPrecondition, "{in_use:?}");
    assert_eq!(footprint(&stack.database).await, before_delete);
    assert_ne!(
        before, before_delete,
        "the real writes between were counted"
    );

    // A viewer may not, not even to try.
    let mut viewer = Caller::new(&stack, "acme", &["viewer"]).await;
    let denied = viewer
        .create_as(agent("writer"), "", true)
        .await
        .expect_err("refused");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = viewer
        .update_goal(&created.id, "Other", ("", true))
        .await
        .expect_err("refused");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    stack.finish().await;
}

/// crypto-service's answered calls of `method`, from its `/metrics`.
async fn crypto_calls(metrics: &str, method: &str) -> u64 {
    let body = http_get(metrics, "/metrics").await;
    let series = format!(
        r#"grpc_server_handled_total{{grpc_type="unary",grpc_service="agentregistry.crypto.v1.CryptoService",grpc_method="{method}",grpc_code="OK"}}"#
    );
    tests::metric_value(&body, &series)
}

#[tokio::test]
async fn a_provider_dry_run_calls_crypto_service_for_nothing() {
    // The key canary is checked at start and then only an hour later.
    let crypto = Launch::default().arg("--metrics-listen").arg("127.0.0.1:0");
    let registry = Stack::default_registry().env("REGISTRY_HEALTH_INTERVAL_SECONDS", "3600");
    let stack = Stack::launch(crypto, registry).await;
    let metrics = stack
        .crypto
        .as_ref()
        .and_then(|c| c.log_field("metrics serving", "listen"))
        .expect("crypto metrics");
    // Ready: the key canary (one Encrypt) is written.
    wait_for_status(stack.channel().await, "", ServingStatus::Serving).await;
    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;
    let encrypts = crypto_calls(&metrics, "Encrypt").await;
    let before = footprint(&stack.database).await;

    let would = alice
        .create_provider(provider("openai", "sk-first"), true)
        .await
        .expect("dry create");
    assert!(would.api_key_set);
    assert_eq!(would.api_key_revision, 1);
    assert_eq!(would.api_key, "", "never a key in an answer");
    assert_eq!(crypto_calls(&metrics, "Encrypt").await, encrypts);
    assert_eq!(footprint(&stack.database).await, before);

    let created = alice
        .create_provider(provider("openai", "sk-first"), false)
        .await
        .expect("create");
    assert_eq!(crypto_calls(&metrics, "Encrypt").await, encrypts + 1);

    // A new key: validated, numbered, shown as its diff, never encrypted.
    let rotate = pb::UpdateProviderRequest {
        provider: Some(pb::Provider {
            id: created.id.clone(),
            api_key: "sk-second".to_owned(),
            ..Default::default()
        }),
        update_mask: Some(mask(&["api_key"])),
        validate_only: true,
        ..Default::default()
    };
    let before = footprint(&stack.database).await;
    let would = alice
        .providers
        .update_provider(rotate.clone())
        .await
        .expect("dry rotate")
        .into_inner();
    assert_eq!((would.version, would.api_key_revision), (2, 2));
    assert_eq!(crypto_calls(&metrics, "Encrypt").await, encrypts + 1);
    assert_eq!(footprint(&stack.database).await, before);
    let rotated = alice
        .providers
        .update_provider(pb::UpdateProviderRequest {
            validate_only: false,
            ..rotate
        })
        .await
        .expect("rotate")
        .into_inner();
    assert_eq!(rotated.api_key_revision, 2);
    let recorded = alice
        .providers
        .get_provider_version(pb::GetProviderVersionRequest {
            provider_id: created.id.clone(),
            version_number: 2,
        })
        .await
        .expect("version 2")
        .into_inner();
    assert_eq!(recorded.diff, would.validated_diff);
    assert!(
        recorded.diff.iter().any(
            |c| c.path == "api_key" && c.new_value == Some(text("***encrypted, revision 2***"))
        ),
        "{:?}",
        recorded.diff
    );
    stack.finish().await;
}

#[tokio::test]
async fn a_retried_provider_write_answers_the_first_answer_without_encrypting_again() {
    let crypto = Launch::default().arg("--metrics-listen").arg("127.0.0.1:0");
    let registry = Stack::default_registry().env("REGISTRY_HEALTH_INTERVAL_SECONDS", "3600");
    let stack = Stack::launch(crypto, registry).await;
    let metrics = stack
        .crypto
        .as_ref()
        .and_then(|c| c.log_field("metrics serving", "listen"))
        .expect("crypto metrics");
    wait_for_status(stack.channel().await, "", ServingStatus::Serving).await;
    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;
    let encrypts = crypto_calls(&metrics, "Encrypt").await;

    let create = pb::CreateProviderRequest {
        provider: Some(provider("openai", "sk-first")),
        request_id: FIRST.to_owned(),
        ..Default::default()
    };
    let created = alice
        .providers
        .create_provider(create.clone())
        .await
        .expect("create")
        .into_inner();
    let retried = alice
        .providers
        .create_provider(create)
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retried, created);
    assert_eq!(
        crypto_calls(&metrics, "Encrypt").await,
        encrypts + 1,
        "the retry encrypted nothing"
    );

    let revoke = pb::RevokeProviderKeyRequest {
        provider_id: created.id.clone(),
        revision: 1,
        request_id: SECOND.to_owned(),
        ..Default::default()
    };
    let revoked = alice
        .providers
        .revoke_provider_key(revoke.clone())
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!((revoked.version, revoked.api_key_set), (2, false));
    let revoked_again = alice
        .providers
        .revoke_provider_key(revoke)
        .await
        .expect("revoke retried")
        .into_inner();
    assert_eq!(revoked_again, revoked);
    let versions = alice
        .providers
        .list_provider_versions(pb::ListProviderVersionsRequest {
            provider_id: created.id.clone(),
            ..Default::default()
        })
        .await
        .expect("versions")
        .into_inner();
    assert_eq!(versions.total_size, 2);

    let policy = pb::UpdateLabelPolicyRequest {
        protected_labels: vec!["production".to_owned(), "canary".to_owned()],
        request_id: THIRD.to_owned(),
        ..Default::default()
    };
    let mut policies = proto::v1::label_policy_service_client::LabelPolicyServiceClient::new(
        stack.channel_as("alice", "acme", &["admin"]).await,
    );
    let set = policies
        .update_label_policy(policy.clone())
        .await
        .expect("policy")
        .into_inner();
    assert_eq!(set.protected_labels, ["canary", "production"]);
    let set_again = policies
        .update_label_policy(policy)
        .await
        .expect("policy retried")
        .into_inner();
    assert_eq!(set_again, set);
    stack.finish().await;
}

/// A provider's key stays out of a request's fingerprint (an unkeyed
/// digest of a weak key could be guessed offline from the table): the same
/// request with another key fingerprints alike, in another tenant. A retry
/// that sends a key is compared by the key's value instead: the first key
/// is answered, another key or none is refused, and neither writes; a key
/// the update mask does not name is not taken, nor compared.
#[tokio::test]
async fn a_retried_key_is_compared_by_value_and_kept_out_of_fingerprints() {
    let stack = Stack::start().await;
    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;
    let mut bob = Caller::new(&stack, "globex", &["admin"]).await;
    let create = |key: &str| pb::CreateProviderRequest {
        provider: Some(provider("openai", key)),
        request_id: FIRST.to_owned(),
        ..Default::default()
    };
    let created = alice
        .providers
        .create_provider(create("sk-first-key"))
        .await
        .expect("create")
        .into_inner();
    bob.providers
        .create_provider(create("sk-other-key"))
        .await
        .expect("the same request id and request in another tenant");
    let fingerprints = "SELECT COUNT(DISTINCT fingerprint) FROM request_ids \
                        WHERE method = 'CreateProvider'";
    assert_eq!(rows(&stack.database, "request_ids").await, 2);
    assert_eq!(
        stack.database.count(fingerprints).await,
        1,
        "no key in them"
    );

    let before = footprint(&stack.database).await;
    for other in ["sk-other-key", ""] {
        let refused = alice
            .providers
            .create_provider(create(other))
            .await
            .expect_err("another key");
        assert_eq!(violated_fields(&refused), ["request_id"], "{other:?}");
    }
    let retried = alice
        .providers
        .create_provider(create("sk-first-key"))
        .await
        .expect("retry with the first key")
        .into_inner();
    assert_eq!(retried, created);
    assert_eq!(footprint(&stack.database).await, before);

    let update = |key: &str, paths: &[&str], request_id: &str| pb::UpdateProviderRequest {
        provider: Some(pb::Provider {
            id: created.id.clone(),
            model_name: "gpt-4.1".to_owned(),
            api_key: key.to_owned(),
            ..Default::default()
        }),
        update_mask: Some(mask(paths)),
        request_id: request_id.to_owned(),
        ..Default::default()
    };
    let rotated = alice
        .providers
        .update_provider(update("sk-second-key", &["api_key"], SECOND))
        .await
        .expect("rotate")
        .into_inner();
    assert_eq!((rotated.version, rotated.api_key_revision), (2, 2));
    let before = footprint(&stack.database).await;
    let refused = alice
        .providers
        .update_provider(update("sk-third-key", &["api_key"], SECOND))
        .await
        .expect_err("another key");
    assert_eq!(violated_fields(&refused), ["request_id"]);
    let retried = alice
        .providers
        .update_provider(update("sk-second-key", &["api_key"], SECOND))
        .await
        .expect("retry with the same key")
        .into_inner();
    assert_eq!(retried, rotated);
    assert_eq!(footprint(&stack.database).await, before);

    let renamed = alice
        .providers
        .update_provider(update("sk-ignored-key", &["model_name"], THIRD))
        .await
        .expect("a model change")
        .into_inner();
    assert_eq!((renamed.version, renamed.api_key_revision), (3, 2));
    let renamed_again = alice
        .providers
        .update_provider(update("sk-also-ignored", &["model_name"], THIRD))
        .await
        .expect("the ignored key is not compared")
        .into_inner();
    assert_eq!(renamed_again, renamed);
    stack.finish().await;
}

/// Undelete and Purge take a request id and a dry run like every other
/// mutation: a dry run leaves the deleted agent as it was, a retried
/// undelete or purge answers the first answer and writes once (a purge
/// retried after it removed the agent is no NOT_FOUND), and the purge's
/// audit event names its request id.
#[tokio::test]
async fn undelete_and_purge_are_retried_once_and_dry_run() {
    let stack = Stack::start().await;
    let mut alice = Caller::new(&stack, "acme", &["admin"]).await;
    let created = alice.create(agent("archived"), "").await.expect("create");
    let id = created.id.clone();
    let delete = |alice: &mut Caller| {
        let request = pb::DeleteAgentRequest {
            id: id.clone(),
            ..Default::default()
        };
        let mut agents = alice.agents.clone();
        async move { agents.delete_agent(request).await.expect("delete") }
    };
    delete(&mut alice).await;
    let deleted = |alice: &mut Caller| {
        let request = pb::GetAgentRequest {
            id: id.clone(),
            show_deleted: true,
        };
        let mut agents = alice.agents.clone();
        async move {
            agents
                .get_agent(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let undelete = |alice: &mut Caller, request_id: &str, validate_only: bool| {
        let request = pb::UndeleteAgentRequest {
            id: id.clone(),
            request_id: request_id.to_owned(),
            validate_only,
            ..Default::default()
        };
        let mut agents = alice.agents.clone();
        async move {
            agents
                .undelete_agent(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let purge = |alice: &mut Caller, request_id: &str, validate_only: bool| {
        let request = pb::PurgeAgentRequest {
            id: id.clone(),
            request_id: request_id.to_owned(),
            validate_only,
            ..Default::default()
        };
        let mut agents = alice.agents.clone();
        async move {
            agents
                .purge_agent(request)
                .await
                .map(tonic::Response::into_inner)
        }
    };

    // A dry-run undelete answers the agent live at version 3 and writes
    // nothing: it stays deleted at version 2.
    let before = footprint(&stack.database).await;
    let would = undelete(&mut alice, FIRST, true).await.expect("dry run");
    assert_eq!((would.version, would.delete_time), (3, None));
    assert_eq!(footprint(&stack.database).await, before);
    let still = deleted(&mut alice).await.expect("still there, deleted");
    assert_eq!(still.version, 2);
    assert!(still.delete_time.is_some());

    // Undelete under a request id, then its retry: one UNDELETE version.
    let undeleted = undelete(&mut alice, SECOND, false).await.expect("undelete");
    assert_eq!((undeleted.version, undeleted.delete_time), (3, None));
    let retried = undelete(&mut alice, SECOND, false).await.expect("retry");
    assert_eq!(retried, undeleted);
    // The UNDELETE version's audit event (written by its trigger) names the
    // request id, once.
    let audited = format!(
        "SELECT COUNT(*) FROM audit_events WHERE action = 'UNDELETE' AND request_id = '{SECOND}'"
    );
    assert_eq!(stack.database.count(&audited).await, 1);
    let actions: Vec<i32> = alice.versions(&id).await.iter().map(|v| v.action).collect();
    assert_eq!(
        actions,
        [
            pb::VersionAction::Undelete as i32,
            pb::VersionAction::Delete as i32,
            pb::VersionAction::Create as i32,
        ]
    );

    // A dry-run purge leaves the deleted agent; a purge under a request id
    // removes it, and its retry answers OK.
    delete(&mut alice).await;
    let before = footprint(&stack.database).await;
    purge(&mut alice, THIRD, true).await.expect("dry-run purge");
    assert_eq!(footprint(&stack.database).await, before);
    assert_eq!(deleted(&mut alice).await.expect("not purged").version, 4);
    purge(&mut alice, FOURTH, false).await.expect("purge");
    purge(&mut alice, FOURTH, false)
        .await
        .expect("retried purge");
    let gone = deleted(&mut alice).await.expect_err("purged");
    assert_eq!(gone.code(), Code::NotFound);
    let purges = format!(
        "SELECT COUNT(*) FROM audit_events WHERE action = 'PURGE' AND request_id = '{FOURTH}'"
    );
    assert_eq!(stack.database.count(&purges).await, 1);
    // Another request under a used id is refused.
    let other = purge(&mut alice, SECOND, false)
        .await
        .expect_err("another request");
    assert_eq!(other.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&other), ["request_id"]);
}
