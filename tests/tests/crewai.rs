//! The whole CrewAI agent: every attribute the registry stores beyond the
//! platform's own (templates, reasoning, memory, multimodal, code execution
//! mode, date injection, the embedder and per-tool settings) is typed,
//! defaulted, validated and versioned like the rest, end to end over gRPC.

use std::collections::{BTreeMap, BTreeSet};

use prost_types::value::Kind;
use prost_types::{FieldMask, ListValue, Struct, Value};
use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use tests::auth::Authed;
use tests::stack::Stack;
use tonic::Code;
use tonic_types::StatusExt;

async fn agents(stack: &Stack) -> AgentServiceClient<Authed> {
    AgentServiceClient::new(stack.channel_as("alice", "acme", &["editor"]).await)
}

fn text(value: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(value.to_owned())),
    }
}

fn number(value: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(value)),
    }
}

fn object(fields: &[(&str, Value)]) -> Struct {
    Struct {
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    }
}

fn nested(value: Struct) -> Value {
    Value {
        kind: Some(Kind::StructValue(value)),
    }
}

/// An agent with only what a create requires.
fn minimal(name: &str) -> pb::Agent {
    pb::Agent {
        name: name.to_owned(),
        role: "Researcher".to_owned(),
        goal: "Find sources".to_owned(),
        tools: vec!["search".to_owned(), "scrape".to_owned()],
        ..Default::default()
    }
}

/// Every CrewAI setting set to something other than its default.
fn every_setting() -> pb::Agent {
    let search = object(&[
        ("max_results", number(5.0)),
        ("engine", nested(object(&[("name", text("ddg"))]))),
    ]);
    let embedder = object(&[
        ("provider", text("openai")),
        (
            "config",
            nested(object(&[("model", text("text-embedding-3-small"))])),
        ),
    ]);
    pb::Agent {
        tool_config: [("search".to_owned(), search)].into(),
        function_calling_llm: Some("gpt-4o-mini".to_owned()),
        system_template: Some("You are {role}.".to_owned()),
        prompt_template: Some("Task: {input}".to_owned()),
        response_template: Some("Answer: {output}".to_owned()),
        use_system_prompt: Some(false),
        memory: Some(true),
        reasoning: Some(true),
        max_reasoning_attempts: Some(3),
        multimodal: Some(true),
        code_execution_mode: pb::CodeExecutionMode::Unsafe.into(),
        inject_date: Some(true),
        date_format: Some("%d.%m.%Y".to_owned()),
        embedder: Some(embedder),
        ..minimal("ignored")
    }
}

/// The mask paths of the settings [`every_setting`] sets.
const SETTINGS: [&str; 14] = [
    "tool_config",
    "function_calling_llm",
    "system_template",
    "prompt_template",
    "response_template",
    "use_system_prompt",
    "memory",
    "reasoning",
    "max_reasoning_attempts",
    "multimodal",
    "code_execution_mode",
    "inject_date",
    "date_format",
    "embedder",
];

async fn update(
    client: &mut AgentServiceClient<Authed>,
    agent: pb::Agent,
    paths: &[&str],
) -> Result<pb::Agent, tonic::Status> {
    let request = pb::UpdateAgentRequest {
        agent: Some(agent),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
        change_description: String::new(),
        ..Default::default()
    };
    client
        .update_agent(request)
        .await
        .map(tonic::Response::into_inner)
}

/// The settings as a comparable value (the metadata left out).
fn settings_of(agent: &pb::Agent) -> pb::Agent {
    pb::Agent {
        id: String::new(),
        version: 0,
        etag: String::new(),
        create_time: None,
        update_time: None,
        created_by: String::new(),
        updated_by: String::new(),
        name: String::new(),
        ..agent.clone()
    }
}

#[tokio::test]
async fn every_crewai_setting_is_defaulted_stored_diffed_and_rolled_back() {
    let stack = Stack::start().await;
    let mut client = agents(&stack).await;
    let created = client
        .create_agent(pb::CreateAgentRequest {
            agent: Some(minimal("researcher")),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    // CrewAI's defaults, as the proto documents them.
    assert_eq!(created.use_system_prompt, Some(true));
    assert_eq!(created.memory, Some(false));
    assert_eq!(created.reasoning, Some(false));
    assert_eq!(created.multimodal, Some(false));
    assert_eq!(created.inject_date, Some(false));
    assert_eq!(created.date_format.as_deref(), Some("%Y-%m-%d"));
    assert_eq!(
        created.code_execution_mode,
        i32::from(pb::CodeExecutionMode::Safe)
    );
    assert!(created.tool_config.is_empty());
    assert_eq!(created.embedder, None);
    assert_eq!(created.max_reasoning_attempts, None);
    assert_eq!(created.system_template, None);

    let wanted = every_setting();
    let input = pb::Agent {
        id: created.id.clone(),
        ..wanted.clone()
    };
    let updated = update(&mut client, input, &SETTINGS)
        .await
        .expect("every setting");
    // The platform's own fields keep the defaults the create stored.
    let expected = pb::Agent {
        allow_delegation: created.allow_delegation,
        verbose: created.verbose,
        cache: created.cache,
        max_iter: created.max_iter,
        allow_code_execution: created.allow_code_execution,
        respect_context_window: created.respect_context_window,
        max_retry_limit: created.max_retry_limit,
        ..wanted.clone()
    };
    assert_eq!(
        settings_of(&updated),
        settings_of(&expected),
        "the agent answers every setting as sent"
    );
    let read = client
        .get_agent(pb::GetAgentRequest {
            id: created.id.clone(),
            show_deleted: false,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(settings_of(&read), settings_of(&updated));

    // Version 2 records exactly the settings that changed, nested JSON by
    // its dotted paths.
    let diff = client
        .diff_agent_versions(pb::DiffAgentVersionsRequest {
            agent_id: created.id.clone(),
            from_version: 1,
            to_version: 2,
        })
        .await
        .expect("diff")
        .into_inner()
        .changes;
    let paths: BTreeSet<&str> = diff.iter().map(|c| c.path.as_str()).collect();
    let expected: BTreeSet<&str> = [
        "tool_config",
        "function_calling_llm",
        "system_template",
        "prompt_template",
        "response_template",
        "use_system_prompt",
        "memory",
        "reasoning",
        "max_reasoning_attempts",
        "multimodal",
        "code_execution_mode",
        "inject_date",
        "date_format",
        "embedder",
    ]
    .into();
    assert_eq!(paths, expected, "{diff:?}");

    // A rename changes nothing else: no setting shows up in its diff.
    let renamed = pb::Agent {
        id: created.id.clone(),
        name: "senior researcher".to_owned(),
        ..Default::default()
    };
    update(&mut client, renamed, &["name"])
        .await
        .expect("rename");
    let diff = client
        .diff_agent_versions(pb::DiffAgentVersionsRequest {
            agent_id: created.id.clone(),
            from_version: 2,
            to_version: 3,
        })
        .await
        .expect("diff")
        .into_inner()
        .changes;
    let paths: Vec<&str> = diff.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["name"]);

    // Rolling back to version 1 restores every default; version 2 keeps
    // its settings.
    let rolled_back = client
        .rollback_agent(pb::RollbackAgentRequest {
            agent_id: created.id.clone(),
            version_number: 1,
            etag: String::new(),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!(settings_of(&rolled_back), settings_of(&created));
    let version_2 = client
        .get_agent_version(pb::GetAgentVersionRequest {
            agent_id: created.id.clone(),
            version_number: 2,
        })
        .await
        .expect("version 2")
        .into_inner();
    let configuration = version_2.configuration.expect("configuration");
    assert_eq!(settings_of(&configuration), settings_of(&updated));
    stack.finish().await;
}

/// The fields a create of `agent` is refused for: INVALID_ARGUMENT with a
/// BadRequest, one violation per field, in the order given.
async fn refused_fields(client: &mut AgentServiceClient<Authed>, agent: pb::Agent) -> Vec<String> {
    let status = client
        .create_agent(pb::CreateAgentRequest {
            agent: Some(agent),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

#[tokio::test]
async fn bad_crewai_settings_are_refused_one_violation_per_field_and_write_nothing() {
    let stack = Stack::start().await;
    let mut client = agents(&stack).await;
    // 17 levels of objects: one more than allowed.
    let mut deep = object(&[("leaf", text("x"))]);
    for _ in 0..16 {
        deep = object(&[("next", nested(deep))]);
    }
    let large = object(&[("blob", text(&"x".repeat(17 * 1024)))]);
    let not_a_number = object(&[(
        "values",
        Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![number(f64::NAN)],
            })),
        },
    )]);
    let bad = pb::Agent {
        tool_config: BTreeMap::from([
            ("unlisted".to_owned(), Struct::default()),
            ("scrape".to_owned(), large),
        ])
        .into_iter()
        .collect(),
        function_calling_llm: Some("   ".to_owned()),
        system_template: Some("t".repeat(10_001)),
        max_reasoning_attempts: Some(0),
        date_format: Some(String::new()),
        embedder: Some(deep),
        ..minimal("bad")
    };
    let fields: BTreeSet<String> = refused_fields(&mut client, bad).await.into_iter().collect();
    let expected: BTreeSet<String> = [
        "agent.tool_config[\"unlisted\"]",
        "agent.tool_config[\"scrape\"]",
        "agent.function_calling_llm",
        "agent.system_template",
        "agent.max_reasoning_attempts",
        "agent.date_format",
        "agent.embedder",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(fields, expected);

    // A number JSON cannot hold is refused before anything else looks.
    let nan = pb::Agent {
        embedder: Some(not_a_number),
        ..minimal("nan")
    };
    let fields = refused_fields(&mut client, nan).await;
    assert_eq!(fields, ["agent.embedder"]);

    // More tool settings than any agent may list: refused by count.
    let many = (0..65)
        .map(|i| (format!("tool-{i}"), Struct::default()))
        .collect();
    let too_many = pb::Agent {
        tool_config: many,
        ..minimal("many")
    };
    let fields = refused_fields(&mut client, too_many).await;
    assert_eq!(fields, ["agent.tool_config"]);

    assert_eq!(stack.database.count("SELECT count(*) FROM agents").await, 0);
    assert_eq!(
        stack
            .database
            .count("SELECT count(*) FROM agent_versions")
            .await,
        0
    );
    stack.finish().await;
}
