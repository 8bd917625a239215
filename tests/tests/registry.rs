//! registry-service end to end: both real binaries, a fresh database per
//! test (SQLite by default, PostgreSQL when TEST_POSTGRES_URL is set), and
//! gRPC clients doing what the platform's users do.

use std::collections::BTreeMap;

use prost::Message;
use prost_types::FieldMask;
use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use proto::v1::provider_service_client::ProviderServiceClient;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use tests::auth::Authed;
use tests::http_get;
use tests::stack::{Stack, start_registry};
use tonic::Code;
use tonic_types::StatusExt;

struct Clients {
    agents: AgentServiceClient<Authed>,
    providers: ProviderServiceClient<Authed>,
    runtime: RuntimeServiceClient<Authed>,
}

/// Clients acting as alice, admin and runtime of tenant `acme`.
async fn clients(stack: &Stack) -> Clients {
    clients_as(stack, "alice", "acme", &["admin", "runtime"]).await
}

async fn clients_as(stack: &Stack, subject: &str, tenant: &str, roles: &[&str]) -> Clients {
    let channel = stack.channel_as(subject, tenant, roles).await;
    Clients {
        agents: AgentServiceClient::new(channel.clone()),
        providers: ProviderServiceClient::new(channel.clone()),
        runtime: RuntimeServiceClient::new(channel),
    }
}

/// The report's example agent.
fn data_analyst(name: &str, provider_id: Option<&str>) -> pb::Agent {
    pb::Agent {
        name: name.to_owned(),
        role: "Senior Data Analyst".to_owned(),
        goal: "Analyze complex datasets".to_owned(),
        backstory: "Expert in data science".to_owned(),
        llm_provider_id: provider_id.map(str::to_owned),
        temperature: Some(0.7),
        cache: Some(true),
        max_iter: Some(15),
        ..Default::default()
    }
}

fn openai(name: &str, api_key: &str) -> pb::Provider {
    pb::Provider {
        name: name.to_owned(),
        provider_type: pb::ProviderType::Openai.into(),
        model_name: "gpt-4".to_owned(),
        api_key: api_key.to_owned(),
        is_default: true,
        ..Default::default()
    }
}

async fn create_agent(c: &mut Clients, agent: pb::Agent) -> pb::Agent {
    c.agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(agent),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create agent")
        .into_inner()
}

async fn create_provider(c: &mut Clients, provider: pb::Provider) -> pb::Provider {
    c.providers
        .create_provider(pb::CreateProviderRequest {
            provider: Some(provider),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create provider")
        .into_inner()
}

async fn get_agent(c: &mut Clients, id: &str) -> pb::Agent {
    c.agents
        .get_agent(pb::GetAgentRequest {
            id: id.to_owned(),
            show_deleted: false,
        })
        .await
        .expect("get")
        .into_inner()
}

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

fn changes(diff: &[pb::FieldChange]) -> BTreeMap<String, (i32, String, String)> {
    diff.iter()
        .map(|c| {
            let show = |v: &Option<prost_types::Value>| {
                format!("{:?}", v.as_ref().and_then(|v| v.kind.clone()))
            };
            (
                c.path.clone(),
                (c.kind, show(&c.old_value), show(&c.new_value)),
            )
        })
        .collect()
}

/// The first page of agent `id`'s versions, newest first (up to 20).
async fn history(c: &mut Clients, id: &str) -> pb::ListAgentVersionsResponse {
    c.agents
        .list_agent_versions(pb::ListAgentVersionsRequest {
            agent_id: id.to_owned(),
            page_size: 20,
            page_token: String::new(),
        })
        .await
        .expect("versions")
        .into_inner()
}

fn number(value: f64) -> String {
    format!("{:?}", Some(prost_types::value::Kind::NumberValue(value)))
}

fn violations(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn create_update_list_and_rollback_follow_the_report_examples() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;

    let created = create_agent(&mut c, data_analyst("Data Analyst Agent", None)).await;
    assert_eq!(created.version, 1);
    assert_eq!(
        created.allow_delegation,
        Some(true),
        "platform default applied"
    );
    assert_eq!(created.max_retry_limit, Some(2));

    let updated = c
        .agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: created.id.clone(),
                temperature: Some(0.8),
                max_iter: Some(20),
                ..Default::default()
            }),
            update_mask: mask(&["temperature", "max_iter"]),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.version, 2);
    assert_eq!(
        (updated.temperature, updated.max_iter),
        (Some(0.8), Some(20))
    );
    assert_eq!(
        updated.goal, created.goal,
        "fields outside the mask are kept"
    );

    let history = history(&mut c, &created.id).await;
    assert_eq!(history.total_size, 2);
    assert_eq!(
        history
            .versions
            .iter()
            .map(|v| v.version_number)
            .collect::<Vec<_>>(),
        [2, 1],
        "newest first"
    );
    let v2 = &history.versions[0];
    assert_eq!(v2.action(), pb::VersionAction::Update);
    let modified = pb::ChangeKind::Modified as i32;
    assert_eq!(
        changes(&v2.diff),
        BTreeMap::from([
            (
                "max_iter".to_owned(),
                (modified, number(15.0), number(20.0))
            ),
            (
                "temperature".to_owned(),
                (modified, number(0.7), number(0.8))
            ),
        ]),
        "exactly temperature 0.7→0.8 and max_iter 15→20"
    );
    assert_eq!(history.versions[1].action(), pb::VersionAction::Create);
    assert_eq!(
        history.versions[1].changed_by, "alice",
        "the token's subject"
    );
    assert_eq!(created.created_by, "alice");

    let rolled_back = c
        .agents
        .rollback_agent(pb::RollbackAgentRequest {
            agent_id: created.id.clone(),
            version_number: 1,
            ..Default::default()
        })
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!(rolled_back.version, 3);
    assert_eq!(
        (rolled_back.temperature, rolled_back.max_iter),
        (Some(0.7), Some(15))
    );
    let v3 = c
        .agents
        .get_agent_version(pb::GetAgentVersionRequest {
            agent_id: created.id.clone(),
            version_number: 3,
        })
        .await
        .expect("v3")
        .into_inner();
    assert_eq!(v3.action(), pb::VersionAction::Rollback);
    assert_eq!(v3.change_description, "Rolled back to version 1");
    assert_eq!(
        changes(&v3.diff).len(),
        2,
        "diff against the version it replaced"
    );

    let v1_to_v3 = c
        .agents
        .diff_agent_versions(pb::DiffAgentVersionsRequest {
            agent_id: created.id.clone(),
            from_version: 1,
            to_version: 3,
        })
        .await
        .expect("diff")
        .into_inner();
    assert!(v1_to_v3.changes.is_empty(), "v3 holds v1's configuration");

    // An update that changes nothing appends nothing.
    let same = c
        .agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: created.id.clone(),
                temperature: Some(0.7),
                ..Default::default()
            }),
            update_mask: mask(&["temperature"]),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("no-op update")
        .into_inner();
    assert_eq!(same.version, 3);
    stack.finish().await;
}

#[tokio::test]
async fn provider_keys_are_stored_encrypted_masked_in_diffs_restored_by_rollback_and_resolved() {
    const KEY_V1: &str = "sk-live-first-key-7f3a91c0";
    const KEY_V2: &str = "sk-live-second-key-2b64e8d5";
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let mut responses = Vec::new();

    let provider = create_provider(&mut c, openai("OpenAI GPT-4", KEY_V1)).await;
    responses.push(provider.encode_to_vec());
    assert!(provider.api_key_set);
    assert!(provider.api_key.is_empty());

    // Assign and Override.
    let mut agent = data_analyst("Resolver", Some(&provider.id));
    agent.llm_overrides = Some(pb::ModelParameters {
        max_tokens: Some(512),
        temperature: Some(0.2),
        ..Default::default()
    });
    let agent = create_agent(&mut c, agent).await;
    responses.push(agent.encode_to_vec());

    let updated = c
        .providers
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                id: provider.id.clone(),
                api_key: KEY_V2.to_owned(),
                ..Default::default()
            }),
            update_mask: mask(&["api_key"]),
            change_description: "rotate the key".to_owned(),
            revoke_replaced_key: false,
            ..Default::default()
        })
        .await
        .expect("update key")
        .into_inner();
    responses.push(updated.encode_to_vec());
    assert_eq!(updated.version, 2);

    let history = c
        .providers
        .list_provider_versions(pb::ListProviderVersionsRequest {
            provider_id: provider.id.clone(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .expect("versions")
        .into_inner();
    responses.push(history.encode_to_vec());
    let marker = |revision: i64| {
        format!(
            "{:?}",
            Some(prost_types::value::Kind::StringValue(format!(
                "***encrypted, revision {revision}***"
            )))
        )
    };
    assert_eq!(
        changes(&history.versions[0].diff),
        BTreeMap::from([(
            "api_key".to_owned(),
            (pb::ChangeKind::Modified as i32, marker(1), marker(2))
        )])
    );

    let resolved = c
        .runtime
        .resolve_agent(pb::ResolveAgentRequest {
            agent_id: agent.id.clone(),
            version_number: None,
            if_none_match: String::new(),
            label: String::new(),
        })
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(resolved.api_key, KEY_V2);
    let effective = resolved.effective.expect("effective");
    assert_eq!(effective.model_name.as_deref(), Some("gpt-4"));
    assert_eq!(
        effective.temperature,
        Some(0.2),
        "overrides win over the agent's temperature"
    );
    assert_eq!(effective.max_tokens, Some(512));

    let restored = c
        .providers
        .rollback_provider(pb::RollbackProviderRequest {
            provider_id: provider.id.clone(),
            version_number: 1,
            ..Default::default()
        })
        .await
        .expect("rollback")
        .into_inner();
    responses.push(restored.encode_to_vec());
    assert_eq!(restored.version, 3);
    let resolved = c
        .runtime
        .resolve_agent(pb::ResolveAgentRequest {
            agent_id: agent.id.clone(),
            version_number: None,
            if_none_match: String::new(),
            label: String::new(),
        })
        .await
        .expect("resolve after rollback")
        .into_inner();
    assert_eq!(resolved.api_key, KEY_V1, "rollback restored the first key");

    let stored = stack.database.stored_bytes().await;
    let logs = stack.logs();
    for key in [KEY_V1, KEY_V2] {
        assert!(
            !stored.windows(key.len()).any(|w| w == key.as_bytes()),
            "{key} stored in plaintext"
        );
        assert!(!logs.contains(key), "{key} in the logs");
        for response in &responses {
            assert!(
                !response.windows(key.len()).any(|w| w == key.as_bytes()),
                "{key} in a response"
            );
        }
    }
    assert!(
        stored.windows(7).any(|w| w == b"arc1.1."),
        "the key is stored as ciphertext"
    );
    let logs = stack.finish().await;
    assert!(!logs.contains(KEY_V1) && !logs.contains(KEY_V2));
}

#[tokio::test]
async fn concurrent_writers_get_contiguous_versions_and_aborted_on_stale_etags() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let agent = create_agent(&mut c, data_analyst("Contended", None)).await;

    let mut writers = Vec::new();
    for writer in 0..16 {
        let mut agents = c.agents.clone();
        let id = agent.id.clone();
        writers.push(tokio::spawn(async move {
            let mut applied = Vec::new();
            let mut aborted = 0;
            for round in 0..50 {
                let current = agents
                    .get_agent(pb::GetAgentRequest {
                        id: id.clone(),
                        show_deleted: false,
                    })
                    .await
                    .expect("get")
                    .into_inner();
                let goal = format!("writer {writer} round {round}");
                let result = agents
                    .update_agent(pb::UpdateAgentRequest {
                        agent: Some(pb::Agent {
                            id: id.clone(),
                            goal: goal.clone(),
                            etag: current.etag,
                            ..Default::default()
                        }),
                        update_mask: mask(&["goal"]),
                        change_description: String::new(),
                        ..Default::default()
                    })
                    .await;
                match result {
                    Ok(updated) => applied.push((updated.into_inner().version, goal)),
                    Err(status) if status.code() == Code::Aborted => aborted += 1,
                    Err(status) => panic!("unexpected {status:?}"),
                }
            }
            (applied, aborted)
        }));
    }
    let mut applied = Vec::new();
    let mut aborted = 0;
    for writer in writers {
        let (mine, refused) = writer.await.expect("writer");
        applied.extend(mine);
        aborted += refused;
    }
    assert_eq!(applied.len() + aborted, 800);
    assert!(!applied.is_empty());

    // Versions 1..N, contiguous, and each applied update is its own version.
    let mut versions = BTreeMap::new();
    let mut token = String::new();
    loop {
        let page = c
            .agents
            .list_agent_versions(pb::ListAgentVersionsRequest {
                agent_id: agent.id.clone(),
                page_size: 100,
                page_token: token,
            })
            .await
            .expect("page")
            .into_inner();
        for v in page.versions {
            let goal = v.configuration.expect("configuration").goal;
            assert!(
                versions.insert(v.version_number, goal).is_none(),
                "duplicate version"
            );
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<i64> = (1..=i64::try_from(applied.len()).expect("fits") + 1).collect();
    assert_eq!(
        versions.keys().copied().collect::<Vec<_>>(),
        expected,
        "contiguous, none lost"
    );
    for (version, goal) in &applied {
        assert_eq!(
            versions.get(version),
            Some(goal),
            "version {version} holds its own update"
        );
    }
    stack.finish().await;
}

#[tokio::test]
async fn bad_input_names_every_bad_field_and_unknown_ids_are_not_found() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;

    let status = c
        .agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: " ".to_owned(),
                role: String::new(),
                goal: "g".repeat(2001),
                temperature: Some(f64::NAN),
                max_iter: Some(0),
                max_rpm: Some(-5),
                tools: vec!["search".to_owned(), "search".to_owned()],
                llm_provider_id: Some("not-a-uuid".to_owned()),
                llm_overrides: Some(pb::ModelParameters {
                    top_p: Some(1.5),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("invalid agent");
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut fields = violations(&status);
    fields.sort();
    assert_eq!(
        fields,
        [
            "agent.goal",
            "agent.llm_overrides.top_p",
            "agent.llm_provider_id",
            "agent.max_iter",
            "agent.max_rpm",
            "agent.name",
            "agent.role",
            "agent.temperature",
            "agent.tools[1]",
        ]
    );

    let status = c
        .providers
        .create_provider(pb::CreateProviderRequest {
            provider: Some(pb::Provider {
                name: "p".into(),
                provider_type: 99,
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("invalid provider");
    let mut fields = violations(&status);
    fields.sort();
    assert_eq!(fields, ["provider.model_name", "provider.provider_type"]);

    let missing = "01900000-0000-7000-8000-000000000000".to_owned();
    let status = c
        .agents
        .get_agent(pb::GetAgentRequest {
            id: missing.clone(),
            show_deleted: false,
        })
        .await
        .expect_err("missing");
    assert_eq!(status.code(), Code::NotFound);
    let status = c
        .agents
        .rollback_agent(pb::RollbackAgentRequest {
            agent_id: missing.clone(),
            version_number: 1,
            ..Default::default()
        })
        .await
        .expect_err("missing");
    assert_eq!(status.code(), Code::NotFound);
    let status = c
        .providers
        .delete_provider(pb::DeleteProviderRequest {
            provider_id: missing.clone(),
            etag: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("missing");
    assert_eq!(status.code(), Code::NotFound);

    let agent = create_agent(&mut c, data_analyst("Twin", None)).await;
    let status = c
        .agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(data_analyst("Twin", None)),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("duplicate name");
    assert_eq!(status.code(), Code::AlreadyExists);
    let status = c
        .agents
        .get_agent_version(pb::GetAgentVersionRequest {
            agent_id: agent.id.clone(),
            version_number: 9,
        })
        .await
        .expect_err("missing version");
    assert_eq!(status.code(), Code::NotFound);

    let status = c
        .agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: agent.id.clone(),
                max_iter: Some(5000),
                ..Default::default()
            }),
            update_mask: mask(&["version", "max_iter", "bogus"]),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("unknown path");
    // The output-only `version` is ignored; the unknown path is named.
    assert_eq!(violations(&status), ["update_mask.paths[2]"]);

    let status = c
        .agents
        .list_agents(pb::ListAgentsRequest {
            page_size: -1,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("negative page size");
    assert_eq!(violations(&status), ["page_size"]);

    // A stale etag writes nothing.
    let status = c
        .agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: agent.id.clone(),
                goal: "new".into(),
                etag: "\"7\"".into(),
                ..Default::default()
            }),
            update_mask: mask(&["goal"]),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("stale etag");
    assert_eq!(status.code(), Code::Aborted);
    let current = get_agent(&mut c, &agent.id).await;
    assert_eq!((current.version, current.goal), (1, agent.goal));

    // An etag in any form other than the one the registry issues is
    // refused, not read as a version: the bare current version, a missing
    // quote, a sign, a leading zero, doubled quotes.
    for malformed in [
        "1",
        "\"1",
        "1\"",
        "\"+1\"",
        "\"01\"",
        "\"\"1\"\"",
        "\"-1\"",
        "\"\"",
    ] {
        let status = c
            .agents
            .update_agent(pb::UpdateAgentRequest {
                agent: Some(pb::Agent {
                    id: agent.id.clone(),
                    goal: "new".into(),
                    etag: malformed.into(),
                    ..Default::default()
                }),
                update_mask: mask(&["goal"]),
                change_description: String::new(),
                ..Default::default()
            })
            .await
            .expect_err("malformed etag");
        assert_eq!(status.code(), Code::InvalidArgument, "{malformed}");
        assert_eq!(violations(&status), ["agent.etag"], "{malformed}");
    }
    let current = get_agent(&mut c, &agent.id).await;
    assert_eq!(current.version, 1);

    // A rename onto a taken name and a rollback to a missing version write
    // nothing: no version row, the agent unchanged (these go through the
    // one-statement write on PostgreSQL, the one-command batch on SQLite).
    let other = create_agent(&mut c, data_analyst("Other", None)).await;
    let status = c
        .agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: other.id.clone(),
                name: "Twin".into(),
                ..Default::default()
            }),
            update_mask: mask(&["name"]),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("rename onto a taken name");
    assert_eq!(status.code(), Code::AlreadyExists);
    let status = c
        .agents
        .rollback_agent(pb::RollbackAgentRequest {
            agent_id: other.id.clone(),
            version_number: 2,
            ..Default::default()
        })
        .await
        .expect_err("rollback to a missing version");
    assert_eq!(status.code(), Code::NotFound);
    let current = get_agent(&mut c, &other.id).await;
    assert_eq!((current.version, current.name), (1, "Other".to_owned()));
    assert_eq!(
        stack
            .database
            .count(&format!(
                "SELECT COUNT(*) FROM agent_versions WHERE agent_id = '{}'",
                other.id
            ))
            .await,
        1,
        "only version 1 is stored"
    );
    // The failed writes left nothing open: the next one is version 2.
    let renamed = c
        .agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: other.id.clone(),
                name: "Other renamed".into(),
                ..Default::default()
            }),
            update_mask: mask(&["name"]),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("a rename onto a free name after the failed one")
        .into_inner();
    assert_eq!(renamed.version, 2);
    stack.finish().await;
}

#[tokio::test]
async fn create_provider_with_crypto_down_is_unavailable_and_writes_nothing() {
    let mut stack = Stack::start().await;
    let mut c = clients(&stack).await;
    stack.stop_crypto().await;
    let status = c
        .providers
        .create_provider(pb::CreateProviderRequest {
            provider: Some(openai("Unreachable", "sk-never-stored")),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("crypto-service is down");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        stack.database.count("SELECT COUNT(*) FROM providers").await,
        0
    );
    assert_eq!(
        stack
            .database
            .count("SELECT COUNT(*) FROM provider_versions")
            .await,
        0
    );
    stack.finish().await;
}

#[tokio::test]
async fn pages_walk_every_agent_once_and_tokens_are_bound_to_their_request() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    for i in 0..23 {
        create_agent(&mut c, data_analyst(&format!("agent-{i:02}"), None)).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .agents
            .list_agents(pb::ListAgentsRequest {
                page_size: 10,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        assert_eq!(page.total_size, 23);
        pages += 1;
        seen.extend(page.agents.into_iter().map(|a| a.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        let status = c
            .providers
            .list_providers(pb::ListProvidersRequest {
                page_size: 10,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect_err("an agents token is not a providers token");
        assert_eq!(violations(&status), ["page_token"]);
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..23).map(|i| format!("agent-{i:02}")).collect();
    assert_eq!(seen, expected);

    let big = c
        .agents
        .list_agents(pb::ListAgentsRequest {
            page_size: 1000,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .expect("clamped")
        .into_inner();
    assert_eq!(big.agents.len(), 23);
    stack.finish().await;
}

#[tokio::test]
async fn defaults_move_atomically_and_assigned_providers_cannot_be_deleted() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let first = create_provider(&mut c, openai("first", "sk-first-0001")).await;
    let second = create_provider(&mut c, openai("second", "sk-second-0002")).await;
    assert!(second.is_default);
    let first_now = c
        .providers
        .get_provider(pb::GetProviderRequest {
            id: first.id.clone(),
            show_deleted: false,
        })
        .await
        .expect("get")
        .into_inner();
    assert!(!first_now.is_default, "the default moved");
    assert_eq!(first_now.version, 2, "losing the default is a version");

    // An agent without a provider resolves through the tenant default.
    let agent = create_agent(&mut c, data_analyst("Defaulted", None)).await;
    let resolved = c
        .runtime
        .resolve_agent(pb::ResolveAgentRequest {
            agent_id: agent.id.clone(),
            version_number: None,
            if_none_match: String::new(),
            label: String::new(),
        })
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(resolved.provider.expect("provider").id, second.id);
    assert_eq!(resolved.api_key, "sk-second-0002");

    let assigned = create_agent(&mut c, data_analyst("Assigned", Some(&first.id))).await;
    let status = c
        .providers
        .delete_provider(pb::DeleteProviderRequest {
            provider_id: first.id.clone(),
            etag: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("in use");
    assert_eq!(status.code(), Code::FailedPrecondition);

    c.agents
        .delete_agent(pb::DeleteAgentRequest {
            id: assigned.id.clone(),
            etag: String::new(),
            ..Default::default()
        })
        .await
        .expect("delete agent");
    assert_eq!(
        stack
            .database
            .count(&format!(
                "SELECT COUNT(*) FROM agent_versions WHERE agent_id = '{}'",
                assigned.id
            ))
            .await,
        2,
        "a deleted agent keeps its versions: CREATE, then DELETE (soft delete)"
    );
    c.providers
        .delete_provider(pb::DeleteProviderRequest {
            provider_id: first.id.clone(),
            etag: String::new(),
            ..Default::default()
        })
        .await
        .expect("now deletable");

    let status = c
        .agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(data_analyst("Orphan", Some(&first.id))),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("deleted provider");
    assert_eq!(status.code(), Code::FailedPrecondition);
    stack.finish().await;
}

#[tokio::test]
async fn resolve_agent_as_of_an_earlier_version() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    create_provider(&mut c, openai("default", "sk-resolve-0003")).await;
    let agent = create_agent(&mut c, data_analyst("Versioned", None)).await;
    c.agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: agent.id.clone(),
                temperature: Some(1.5),
                ..Default::default()
            }),
            update_mask: None,
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("update without a mask changes the fields it sets");
    let now = c
        .runtime
        .resolve_agent(pb::ResolveAgentRequest {
            agent_id: agent.id.clone(),
            version_number: None,
            if_none_match: String::new(),
            label: String::new(),
        })
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(
        (
            now.agent_version,
            now.effective.expect("effective").temperature
        ),
        (2, Some(1.5))
    );
    let then = c
        .runtime
        .resolve_agent(pb::ResolveAgentRequest {
            agent_id: agent.id.clone(),
            version_number: Some(1),
            if_none_match: String::new(),
            label: String::new(),
        })
        .await
        .expect("resolve v1")
        .into_inner();
    assert_eq!(then.agent_version, 1);
    assert_eq!(then.agent.expect("agent").temperature, Some(0.7));
    assert_eq!(then.effective.expect("effective").temperature, Some(0.7));
    stack.finish().await;
}

/// Writes that arrive together are committed together on SQLite (one
/// transaction for the group); each must still get its own answer.
#[tokio::test]
async fn concurrent_creates_each_get_their_own_answer() {
    let stack = Stack::start().await;
    let c = clients(&stack).await;
    let missing_provider = "0192f0c4-5e1a-7000-8000-000000000000".to_owned();
    let mut calls = Vec::new();
    for i in 0..24 {
        let agent = match i % 3 {
            0 => data_analyst(&format!("Solo {i}"), None),
            1 => data_analyst("Shared", None),
            _ => data_analyst(&format!("Orphan {i}"), Some(&missing_provider)),
        };
        let mut agents = c.agents.clone();
        calls.push(tokio::spawn(async move {
            let answer = agents
                .create_agent(pb::CreateAgentRequest {
                    agent: Some(agent),
                    change_description: String::new(),
                    ..Default::default()
                })
                .await;
            (i % 3, answer.map(|a| a.into_inner()))
        }));
    }
    let mut created = Vec::new();
    let mut codes = BTreeMap::new();
    for call in calls {
        let (kind, answer) = call.await.expect("call");
        match answer {
            Ok(agent) => {
                assert_eq!(agent.version, 1);
                created.push((kind, agent.name, agent.id));
            }
            Err(status) => {
                *codes
                    .entry((kind, format!("{:?}", status.code())))
                    .or_insert(0) += 1
            }
        }
    }
    let solos = created.iter().filter(|(kind, ..)| *kind == 0).count();
    let shared = created.iter().filter(|(kind, ..)| *kind == 1).count();
    assert_eq!((solos, shared, created.len()), (8, 1, 9), "{created:?}");
    let mut agents = c.agents.clone();
    for (_, name, id) in &created {
        let stored = agents
            .get_agent(pb::GetAgentRequest {
                id: id.clone(),
                show_deleted: false,
            })
            .await
            .expect("get a created agent")
            .into_inner();
        assert_eq!((&stored.name, stored.version), (name, 1));
    }
    assert_eq!(
        codes,
        BTreeMap::from([
            ((1, "AlreadyExists".to_owned()), 7),
            ((2, "FailedPrecondition".to_owned()), 8)
        ])
    );
    let count = |sql: &'static str| stack.database.count(sql);
    assert_eq!(count("SELECT COUNT(*) FROM agents").await, 9);
    assert_eq!(
        count("SELECT COUNT(*) FROM agent_versions WHERE version_number = 1").await,
        9
    );
    assert_eq!(count("SELECT COUNT(*) FROM agent_versions").await, 9);
    stack.finish().await;
}

#[tokio::test]
async fn concurrent_writers_without_etags_all_apply_in_order() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let agent = create_agent(&mut c, data_analyst("Queued", None)).await;
    let mut writers = Vec::new();
    for writer in 0..16 {
        let mut agents = c.agents.clone();
        let id = agent.id.clone();
        writers.push(tokio::spawn(async move {
            for round in 0..20 {
                agents
                    .update_agent(pb::UpdateAgentRequest {
                        agent: Some(pb::Agent {
                            id: id.clone(),
                            backstory: format!("{writer}/{round}"),
                            ..Default::default()
                        }),
                        update_mask: mask(&["backstory"]),
                        change_description: String::new(),
                        ..Default::default()
                    })
                    .await
                    .expect("an update without an etag waits its turn and applies");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let current = get_agent(&mut c, &agent.id).await;
    assert_eq!(current.version, 1 + 16 * 20);
    let versions = stack
        .database
        .count(&format!(
            "SELECT COUNT(DISTINCT version_number) FROM agent_versions WHERE agent_id = '{}' AND version_number BETWEEN 1 AND 321",
            agent.id
        ))
        .await;
    assert_eq!(versions, 321);
    stack.finish().await;
}

/// Clients of another registry process on the stack's database, acting
/// as alice (admin) of `acme`.
async fn second_registry_clients(stack: &Stack) -> (tests::Process, Clients) {
    let other = start_registry(
        &stack.database,
        &stack.crypto_endpoint,
        Stack::default_registry(),
    )
    .await;
    let token = tests::auth::token("alice", "acme", &["admin"]);
    let channel = tests::auth::authed(other.channel().await, tests::auth::Bearer::new(&token));
    let clients = Clients {
        agents: AgentServiceClient::new(channel.clone()),
        providers: ProviderServiceClient::new(channel.clone()),
        runtime: RuntimeServiceClient::new(channel),
    };
    (other, clients)
}

async fn update(
    c: &mut Clients,
    agent: pb::Agent,
    paths: &[&str],
) -> Result<pb::Agent, tonic::Status> {
    c.agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(agent),
            update_mask: mask(paths),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn rollback(c: &mut Clients, id: &str, number: i64) -> Result<pb::Agent, tonic::Status> {
    c.agents
        .rollback_agent(pb::RollbackAgentRequest {
            agent_id: id.to_owned(),
            version_number: number,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The value of `registry_agent_write_guesses_total{outcome=…}` in a
/// Prometheus text exposition.
fn guesses(metrics: &str, outcome: &str) -> u64 {
    let series = format!("registry_agent_write_guesses_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().expect("a counter value"))
}

/// A registry starts an update from the agent as it last wrote it, without
/// reading the row. Another registry process on the same database makes
/// that guess stale; every answer must still be the one the row gives: no
/// lost write, no false no-op, no false ABORTED, masks merged into the row,
/// diffs against the row.
#[tokio::test]
async fn updates_from_a_stale_agent_answer_as_the_row_does() {
    let stack = Stack::start_with(
        Stack::default_registry()
            .arg("--metrics-listen")
            .arg("127.0.0.1:0"),
    )
    .await;
    let metrics = stack
        .registry
        .log_field("metrics serving", "listen")
        .expect("metrics address in the log");
    let mut a = clients(&stack).await;
    let (other, mut b) = second_registry_clients(&stack).await;
    let created = create_agent(&mut a, data_analyst("Shared", None)).await;
    let id = created.id.clone();
    let agent = |change: pb::Agent| pb::Agent {
        id: id.clone(),
        ..change
    };

    let v2 = update(
        &mut a,
        agent(pb::Agent {
            temperature: Some(0.8),
            ..Default::default()
        }),
        &["temperature"],
    )
    .await
    .expect("a: v2 from its guess");
    assert_eq!(v2.version, 2);
    let v3 = update(
        &mut b,
        agent(pb::Agent {
            temperature: Some(0.9),
            ..Default::default()
        }),
        &["temperature"],
    )
    .await
    .expect("b: v3");
    assert_eq!(v3.version, 3);

    // a's guess (v2) already says 0.8: not a no-op, since the row says 0.9.
    let v4 = update(
        &mut a,
        agent(pb::Agent {
            temperature: Some(0.8),
            ..Default::default()
        }),
        &["temperature"],
    )
    .await
    .expect("a: v4");
    assert_eq!((v4.version, v4.temperature), (4, Some(0.8)));
    let diff = a
        .agents
        .get_agent_version(pb::GetAgentVersionRequest {
            agent_id: id.clone(),
            version_number: 4,
        })
        .await
        .expect("v4")
        .into_inner()
        .diff;
    let modified = pb::ChangeKind::Modified as i32;
    assert_eq!(
        changes(&diff),
        BTreeMap::from([(
            "temperature".to_owned(),
            (modified, number(0.9), number(0.8))
        )]),
        "diffed against the row, not the guess"
    );

    // b's etag is current though a's guess (v4) is older: not ABORTED.
    let v5 = update(
        &mut b,
        agent(pb::Agent {
            max_iter: Some(20),
            ..Default::default()
        }),
        &["max_iter"],
    )
    .await
    .expect("b: v5");
    let v6 = update(
        &mut a,
        agent(pb::Agent {
            max_iter: Some(25),
            etag: v5.etag.clone(),
            ..Default::default()
        }),
        &["max_iter"],
    )
    .await
    .expect("a: v6 with b's current etag");
    assert_eq!((v6.version, v6.max_iter), (6, Some(25)));
    let stale = update(
        &mut a,
        agent(pb::Agent {
            max_iter: Some(30),
            etag: v4.etag.clone(),
            ..Default::default()
        }),
        &["max_iter"],
    )
    .await
    .expect_err("v4's etag is stale");
    assert_eq!(stale.code(), Code::Aborted);

    // A mask merges into the row: b's role stays.
    let v7 = update(
        &mut b,
        agent(pb::Agent {
            role: "Lead Analyst".to_owned(),
            ..Default::default()
        }),
        &["role"],
    )
    .await
    .expect("b: v7");
    assert_eq!(v7.version, 7);
    let v8 = update(
        &mut a,
        agent(pb::Agent {
            goal: "Find the trend".to_owned(),
            ..Default::default()
        }),
        &["goal"],
    )
    .await
    .expect("a: v8");
    assert_eq!(
        (v8.version, v8.role.as_str(), v8.goal.as_str(), v8.max_iter),
        (8, "Lead Analyst", "Find the trend", Some(25))
    );

    // A rollback from a stale guess appends after the row's version.
    assert_eq!(rollback(&mut b, &id, 1).await.expect("b: v9").version, 9);
    let v10 = rollback(&mut a, &id, 2).await.expect("a: v10");
    assert_eq!(
        (v10.version, v10.temperature, v10.max_iter),
        (10, Some(0.8), Some(15))
    );
    let history = history(&mut a, &id).await;
    assert_eq!(
        history
            .versions
            .iter()
            .map(|v| v.version_number)
            .collect::<Vec<_>>(),
        (1..=10).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        changes(&history.versions[0].diff),
        BTreeMap::from([(
            "temperature".to_owned(),
            (modified, number(0.7), number(0.8))
        )]),
        "v10 (v2's configuration) diffed against v9 (v1's)"
    );

    // Only v2 was written from a guess; the guesses of v4, v6, the stale
    // etag, v8 and v10 were out of date.
    let text = http_get(&metrics, "/metrics").await;
    assert_eq!(
        (guesses(&text, "written"), guesses(&text, "stale")),
        (1, 5),
        "{text}"
    );

    // Deleted by b: a's guess does not bring it back.
    b.agents
        .delete_agent(pb::DeleteAgentRequest {
            id: id.clone(),
            etag: String::new(),
            ..Default::default()
        })
        .await
        .expect("b: delete");
    let gone = update(
        &mut a,
        agent(pb::Agent {
            temperature: Some(0.5),
            ..Default::default()
        }),
        &["temperature"],
    )
    .await
    .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(
        rollback(&mut a, &id, 1).await.expect_err("deleted").code(),
        Code::NotFound
    );
    let text = http_get(&metrics, "/metrics").await;
    assert_eq!(
        (guesses(&text, "stale"), guesses(&text, "absent")),
        (6, 1),
        "the NOT_FOUND update forgot the agent: the rollback had no guess\n{text}"
    );
    other.terminate().await;
    stack.finish().await;
}

#[tokio::test]
async fn the_migrate_subcommand_reports_applies_and_reverts() {
    let database = tests::stack::TestDatabase::fresh().await;
    let registry = tests::binary("registry-service");
    let run = |action: &str| {
        let launch = tests::Launch::default()
            .arg("migrate")
            .arg(action)
            .env("DATABASE_URL", database.url());
        tests::Process::run_to_exit(&registry, launch)
    };
    let (status, output) = run("up").await;
    assert!(status.success(), "{output}");
    let (_, output) = run("status").await;
    assert!(
        output.contains("applied m20261126_000001_create_registry"),
        "{output}"
    );
    assert_eq!(database.count("SELECT COUNT(*) FROM agents").await, 0);
    let (status, output) = run("down").await;
    assert!(status.success(), "{output}");
    let (_, output) = run("status").await;
    assert!(
        output.contains("applied m20261126_000001_create_registry"),
        "{output}"
    );
    assert!(
        output.contains("applied m20261126_000002_key_canary"),
        "{output}"
    );
    assert!(
        output.contains("applied m20261206_000001_provider_key_revisions"),
        "{output}"
    );
    assert!(
        output.contains("applied m20261206_000002_agent_version_provider"),
        "{output}"
    );
    // Down reverts the newest migration only: the status lists oldest
    // first, so every line but the last is applied.
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    let (newest, older) = lines.split_last().expect("a status line per migration");
    assert!(
        newest.starts_with("pending m2026"),
        "down reverts the newest: {output}"
    );
    assert!(
        older.len() >= 7 && older.iter().all(|line| line.starts_with("applied m2026")),
        "down reverts only the newest: {output}"
    );
    database.drop_database().await;
}

/// A string or list field going from empty to set is ADDED (only its new
/// value), and back to empty REMOVED (only its old value): the presence
/// rule of `FieldChange` in common.proto. Version diffs, DiffAgentVersions
/// and snapshots stored by an earlier release (which kept an empty
/// backstory as `""` and no tools as `[]`) all follow it.
#[tokio::test]
async fn a_field_that_becomes_set_or_empty_is_added_or_removed() {
    use prost_types::value::Kind;
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let created = create_agent(
        &mut c,
        pb::Agent {
            backstory: String::new(),
            ..data_analyst("presence", None)
        },
    )
    .await;
    let set = pb::Agent {
        id: created.id.clone(),
        backstory: "Expert".into(),
        tools: vec!["search".into()],
        ..Default::default()
    };
    update(&mut c, set, &["backstory", "tools"])
        .await
        .expect("set");
    let cleared = pb::Agent {
        id: created.id.clone(),
        ..Default::default()
    };
    update(&mut c, cleared, &["backstory", "tools"])
        .await
        .expect("clear");

    let shown = |kind: Option<Kind>| format!("{kind:?}");
    let backstory = shown(Some(Kind::StringValue("Expert".into())));
    let tools = shown(Some(Kind::ListValue(prost_types::ListValue {
        values: vec![prost_types::Value {
            kind: Some(Kind::StringValue("search".into())),
        }],
    })));
    let none = shown(None);
    let (added, removed) = (pb::ChangeKind::Added as i32, pb::ChangeKind::Removed as i32);
    let set_diff = BTreeMap::from([
        (
            "backstory".to_owned(),
            (added, none.clone(), backstory.clone()),
        ),
        ("tools".to_owned(), (added, none.clone(), tools.clone())),
    ]);
    let cleared_diff = BTreeMap::from([
        ("backstory".to_owned(), (removed, backstory, none.clone())),
        ("tools".to_owned(), (removed, tools, none)),
    ]);

    let history = history(&mut c, &created.id).await;
    let numbers: Vec<i64> = history.versions.iter().map(|v| v.version_number).collect();
    assert_eq!(numbers, [3, 2, 1]);
    assert_eq!(changes(&history.versions[1].diff), set_diff, "version 2");
    assert_eq!(
        changes(&history.versions[0].diff),
        cleared_diff,
        "version 3"
    );

    // Versions 1 and 3 as an earlier release stored them.
    let db = sea_orm::Database::connect(stack.database.url())
        .await
        .expect("connect");
    let spelled_out = if stack.database.is_postgres() {
        r#"(configuration::jsonb || '{"backstory": "", "tools": []}'::jsonb)::json"#
    } else {
        r"json_set(configuration, '$.backstory', '', '$.tools', json('[]'))"
    };
    use sea_orm::ConnectionTrait;
    db.execute_unprepared(&format!(
        "UPDATE agent_versions SET configuration = {spelled_out} \
         WHERE agent_id = '{}' AND version_number IN (1, 3)",
        created.id
    ))
    .await
    .expect("an earlier release's snapshots");
    drop(db);

    let diff = |from_version: i64, to_version: i64| {
        let mut agents = c.agents.clone();
        let agent_id = created.id.clone();
        async move {
            agents
                .diff_agent_versions(pb::DiffAgentVersionsRequest {
                    agent_id,
                    from_version,
                    to_version,
                })
                .await
                .expect("diff")
                .into_inner()
                .changes
        }
    };
    assert_eq!(changes(&diff(1, 2).await), set_diff, "1 → 2");
    assert_eq!(changes(&diff(2, 3).await), cleared_diff, "2 → 3");
    assert!(diff(1, 3).await.is_empty(), "1 and 3 are both unset");
    assert!(diff(3, 1).await.is_empty(), "and the other way");
    stack.finish().await;
}
