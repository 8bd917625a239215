//! Hostile input end to end (issue 7): both real binaries, a fresh database
//! per test, and requests no honest client sends. Every refused case gets
//! one precise status (and, for INVALID_ARGUMENT, exactly the field
//! violations expected) and leaves every table as it was; every test ends
//! with a call that succeeds, so a panic or a wedged server shows.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use prost_types::FieldMask;
use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use proto::v1::provider_service_client::ProviderServiceClient;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use tests::auth::{Authed, Bearer, authed, now};
use tests::stack::Stack;
use tests::{Launch, pki};
use tonic::{Code, Status};
use tonic_types::StatusExt;

const TABLES: [&str; 4] = ["agents", "agent_versions", "providers", "provider_versions"];

/// Rows in every table, to show a refused call wrote nothing. One query
/// (one connection) for all four: each count takes four decimal digits of
/// the result, far more than any test here creates.
async fn rows(stack: &Stack) -> [i64; 4] {
    let sql = TABLES.iter().fold("0".to_owned(), |sum, table| {
        format!("({sum}) * 10000 + (SELECT COUNT(*) FROM {table})")
    });
    let mut packed = stack.database.count(&format!("SELECT {sql}")).await;
    let mut counts = [0; 4];
    for count in counts.iter_mut().rev() {
        *count = packed % 10_000;
        packed /= 10_000;
    }
    counts
}

fn violations(status: &Status) -> Vec<String> {
    let mut fields: Vec<String> = status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    fields.sort();
    fields
}

/// Awaits `$call`, which must fail with `$code` and exactly the sorted
/// violations `$fields`, and checks that no table changed. Gives the status.
macro_rules! refused {
    ($stack:expr, $what:expr, $code:expr, $fields:expr, $call:expr) => {{
        let what: &str = &$what;
        let before = rows(&$stack).await;
        let status = match $call.await {
            Ok(_) => panic!("{what}: accepted"),
            Err(status) => status,
        };
        assert_eq!(
            status.code(),
            $code,
            "{what}: {}",
            status.message().chars().take(300).collect::<String>()
        );
        let expected: Vec<String> = $fields.iter().map(|f: &&str| (*f).to_owned()).collect();
        assert_eq!(violations(&status), expected, "{what}");
        assert_eq!(rows(&$stack).await, before, "{what}: the database changed");
        status
    }};
}

const NONE: [&str; 0] = [];

struct Clients {
    agents: AgentServiceClient<Authed>,
    providers: ProviderServiceClient<Authed>,
    runtime: RuntimeServiceClient<Authed>,
}

async fn clients(stack: &Stack) -> Clients {
    let channel = stack
        .channel_as("mallory", "acme", &["admin", "runtime"])
        .await;
    Clients {
        agents: AgentServiceClient::new(channel.clone()),
        providers: ProviderServiceClient::new(channel.clone()),
        runtime: RuntimeServiceClient::new(channel),
    }
}

fn agent(name: &str) -> pb::Agent {
    pb::Agent {
        name: name.to_owned(),
        role: "Senior Data Analyst".to_owned(),
        goal: "Analyze complex datasets".to_owned(),
        backstory: "Expert in data science".to_owned(),
        temperature: Some(0.7),
        ..Default::default()
    }
}

fn openai(name: &str) -> pb::Provider {
    pb::Provider {
        name: name.to_owned(),
        provider_type: pb::ProviderType::Openai.into(),
        model_name: "gpt-4".to_owned(),
        api_key: "sk-hostile-test".to_owned(),
        is_default: true,
        ..Default::default()
    }
}

fn create_request(agent: pb::Agent) -> pb::CreateAgentRequest {
    pb::CreateAgentRequest {
        agent: Some(agent),
        change_description: String::new(),
        ..Default::default()
    }
}

fn update_request(agent: pb::Agent, paths: &[&str]) -> pb::UpdateAgentRequest {
    pb::UpdateAgentRequest {
        agent: Some(agent),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }),
        change_description: String::new(),
        ..Default::default()
    }
}

async fn create_agent(c: &mut Clients, agent: pb::Agent) -> pb::Agent {
    c.agents
        .create_agent(create_request(agent))
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

/// A call that must succeed after the hostile ones, and no panic logged.
async fn still_serving(stack: &Stack, c: &mut Clients) {
    c.agents
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect("the registry still answers");
    let logs = stack.logs();
    assert!(!logs.contains("panicked"), "a service panicked:\n{logs}");
}

async fn raw_call(
    channel: Authed,
    method: &str,
    payload: Vec<u8>,
) -> Result<tonic::Response<Vec<u8>>, Status> {
    tests::raw::unary(channel, method, tonic::Request::new(payload)).await
}

/// A CreateAgentRequest whose agent is `agent` plus `llm_overrides` given
/// as raw bytes (field 11 of Agent).
fn create_with_raw_overrides(agent: &pb::Agent, overrides: &[u8]) -> Vec<u8> {
    let mut agent_bytes = agent.encode_to_vec();
    encode_key(11, WireType::LengthDelimited, &mut agent_bytes);
    encode_varint(overrides.len() as u64, &mut agent_bytes);
    agent_bytes.extend_from_slice(overrides);
    let mut request = Vec::new();
    encode_key(1, WireType::LengthDelimited, &mut request);
    encode_varint(agent_bytes.len() as u64, &mut request);
    request.extend_from_slice(&agent_bytes);
    request
}

/// `depth` groups of the unknown field 100 inside one another.
fn nested_groups(depth: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for _ in 0..depth {
        encode_key(100, WireType::StartGroup, &mut bytes);
    }
    for _ in 0..depth {
        encode_key(100, WireType::EndGroup, &mut bytes);
    }
    bytes
}

/// `depth` length-delimited unknown fields 100 inside one another.
fn nested_messages(depth: usize) -> Vec<u8> {
    let mut inner = Vec::new();
    for _ in 0..depth {
        let mut outer = Vec::new();
        encode_key(100, WireType::LengthDelimited, &mut outer);
        encode_varint(inner.len() as u64, &mut outer);
        outer.extend_from_slice(&inner);
        inner = outer;
    }
    inner
}

// ---------------------------------------------------------------------------
// Field values.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn oversized_and_non_finite_fields_are_refused_per_field_and_write_nothing() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let existing = create_agent(&mut c, agent("Existing Agent")).await;
    // Ten times the backstory limit, under the 256 KiB message limit (a
    // larger message is OUT_OF_RANGE before it is decoded).
    let oversized = "x".repeat(100 * 1024);

    refused!(
        stack,
        "create with a 100 KB backstory",
        Code::InvalidArgument,
        ["agent.backstory"],
        c.agents.create_agent(create_request(pb::Agent {
            backstory: oversized.clone(),
            ..agent("Huge Backstory")
        }))
    );
    refused!(
        stack,
        "update with a 100 KB backstory",
        Code::InvalidArgument,
        ["agent.backstory"],
        c.agents.update_agent(update_request(
            pb::Agent {
                id: existing.id.clone(),
                backstory: oversized,
                ..Default::default()
            },
            &["backstory"],
        ))
    );

    let many_stops = pb::ModelParameters {
        stop: (0..10_000).map(|i| format!("stop-{i}")).collect(),
        ..Default::default()
    };
    refused!(
        stack,
        "create with 10,000 stop sequences",
        Code::InvalidArgument,
        ["agent.llm_overrides.stop"],
        c.agents.create_agent(create_request(pb::Agent {
            llm_overrides: Some(many_stops.clone()),
            ..agent("Many Stops")
        }))
    );
    refused!(
        stack,
        "update llm_overrides.stop to 10,000 sequences",
        Code::InvalidArgument,
        ["agent.llm_overrides.stop"],
        c.agents.update_agent(update_request(
            pb::Agent {
                id: existing.id.clone(),
                llm_overrides: Some(many_stops),
                ..Default::default()
            },
            &["llm_overrides.stop"],
        ))
    );
    let long_stops = pb::ModelParameters {
        stop: vec!["s".repeat(201); 16],
        ..Default::default()
    };
    let mut expected: Vec<String> = (0..16)
        .map(|i| format!("agent.llm_overrides.stop[{i}]"))
        .collect();
    expected.sort();
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    refused!(
        stack,
        "16 stop sequences of 201 characters",
        Code::InvalidArgument,
        expected,
        c.agents.create_agent(create_request(pb::Agent {
            llm_overrides: Some(long_stops),
            ..agent("Long Stops")
        }))
    );

    for (value, label) in [
        (f64::NAN, "NaN"),
        (f64::INFINITY, "+inf"),
        (f64::NEG_INFINITY, "-inf"),
    ] {
        refused!(
            stack,
            format!("temperature {label}"),
            Code::InvalidArgument,
            ["agent.temperature"],
            c.agents.create_agent(create_request(pb::Agent {
                temperature: Some(value),
                ..agent("Non-finite")
            }))
        );
        refused!(
            stack,
            format!("llm_overrides.top_p {label}"),
            Code::InvalidArgument,
            ["agent.llm_overrides.top_p"],
            c.agents.create_agent(create_request(pb::Agent {
                llm_overrides: Some(pb::ModelParameters {
                    top_p: Some(value),
                    ..Default::default()
                }),
                ..agent("Non-finite")
            }))
        );
        refused!(
            stack,
            format!("llm_overrides temperature and top_p {label}"),
            Code::InvalidArgument,
            [
                "agent.llm_overrides.temperature",
                "agent.llm_overrides.top_p",
                "agent.temperature"
            ],
            c.agents.create_agent(create_request(pb::Agent {
                temperature: Some(value),
                llm_overrides: Some(pb::ModelParameters {
                    temperature: Some(value),
                    top_p: Some(value),
                    ..Default::default()
                }),
                ..agent("Non-finite")
            }))
        );
        refused!(
            stack,
            format!("update temperature to {label}"),
            Code::InvalidArgument,
            ["agent.temperature"],
            c.agents.update_agent(update_request(
                pb::Agent {
                    id: existing.id.clone(),
                    temperature: Some(value),
                    ..Default::default()
                },
                &["temperature"],
            ))
        );
        refused!(
            stack,
            format!("provider default_parameters.top_p {label}"),
            Code::InvalidArgument,
            ["provider.default_parameters.top_p"],
            c.providers.create_provider(pb::CreateProviderRequest {
                provider: Some(pb::Provider {
                    default_parameters: Some(pb::ModelParameters {
                        top_p: Some(value),
                        ..Default::default()
                    }),
                    ..openai("Non-finite")
                }),
                change_description: String::new(),
                ..Default::default()
            })
        );
    }

    let current = c
        .agents
        .get_agent(pb::GetAgentRequest {
            id: existing.id.clone(),
            show_deleted: false,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(current.version, 1, "no refused update made a version");
    assert_eq!(current.temperature, Some(0.7));
    still_serving(&stack, &mut c).await;
    stack.finish().await;
}

/// Many bad list elements in one small request: the answer must still
/// reach the client as INVALID_ARGUMENT. Each bad element gets its own
/// violation, and all of them go into the status trailers (the BadRequest
/// detail and a grpc-message listing them again), which HTTP/2 peers cap:
/// 16 KiB by default in hyper, so in every tonic client.
#[tokio::test]
async fn many_bad_list_elements_still_answer_invalid_argument() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    for (what, input, field) in [
        (
            "64 empty tools",
            pb::Agent {
                tools: vec![String::new(); 64],
                ..agent("Empty Tools")
            },
            "agent.tools[63]",
        ),
        (
            "100 empty stop sequences",
            pb::Agent {
                llm_overrides: Some(pb::ModelParameters {
                    stop: vec![String::new(); 100],
                    ..Default::default()
                }),
                ..agent("Empty Stops")
            },
            "agent.llm_overrides.stop",
        ),
        (
            "10,000 empty tools",
            pb::Agent {
                tools: vec![String::new(); 10_000],
                ..agent("Empty Tools")
            },
            "agent.tools",
        ),
    ] {
        let before = rows(&stack).await;
        let status = c
            .agents
            .create_agent(create_request(input))
            .await
            .expect_err(what);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{what}: {}",
            status.message().chars().take(200).collect::<String>()
        );
        assert!(violations(&status).contains(&field.to_owned()), "{what}");
        assert_eq!(rows(&stack).await, before, "{what}: the database changed");
    }
    still_serving(&stack, &mut c).await;
    stack.finish().await;
}

#[tokio::test]
async fn deeply_nested_unknown_fields_in_llm_overrides_never_reach_a_handler_unchecked() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let channel = stack
        .channel_as("mallory", "acme", &["editor", "viewer"])
        .await;
    let method = "/agentregistry.v1.AgentService/CreateAgent";
    let overrides = pb::ModelParameters {
        temperature: Some(0.5),
        ..Default::default()
    }
    .encode_to_vec();

    // 10,000 nested groups: prost stops at its recursion limit (100), and
    // tonic answers a message it cannot decode with INTERNAL, as the gRPC
    // status-code guide says.
    let mut deep = overrides.clone();
    deep.extend(nested_groups(10_000));
    let status = refused!(
        stack,
        "10,000 nested groups in llm_overrides",
        Code::Internal,
        NONE,
        raw_call(
            channel.clone(),
            method,
            create_with_raw_overrides(&agent("Deep Groups"), &deep)
        )
    );
    assert!(
        status.message().contains("recursion limit"),
        "{}",
        status.message()
    );

    // 10,000 nested length-delimited fields are one unknown field of bytes:
    // skipped without recursion, so the request is an ordinary valid agent
    // whose unknown field is dropped.
    let mut deep = overrides.clone();
    deep.extend(nested_messages(10_000));
    let before = rows(&stack).await;
    let created = raw_call(
        channel.clone(),
        method,
        create_with_raw_overrides(&agent("Deep Messages"), &deep),
    )
    .await
    .expect("an unknown field is ignored");
    let created = pb::Agent::decode(created.into_inner().as_slice()).expect("an Agent");
    assert_eq!(
        created.llm_overrides,
        Some(pb::ModelParameters {
            temperature: Some(0.5),
            ..Default::default()
        })
    );
    let after = rows(&stack).await;
    assert_eq!(
        (after[0] - before[0], after[1] - before[1]),
        (1, 1),
        "one agent, one version"
    );
    assert_eq!(after[2..], before[2..]);
    let stored = c
        .agents
        .get_agent_version(pb::GetAgentVersionRequest {
            agent_id: created.id.clone(),
            version_number: 1,
        })
        .await
        .expect("version 1")
        .into_inner();
    assert_eq!(
        stored
            .configuration
            .and_then(|a| a.llm_overrides)
            .map(|o| o.encode_to_vec()),
        Some(overrides.clone()),
        "nothing of the unknown field was stored"
    );

    // A truncated message is INTERNAL too, and writes nothing.
    let mut truncated = create_with_raw_overrides(&agent("Truncated"), &overrides);
    truncated.pop();
    refused!(
        stack,
        "truncated CreateAgentRequest",
        Code::Internal,
        NONE,
        raw_call(channel.clone(), method, truncated)
    );
    still_serving(&stack, &mut c).await;
    stack.finish().await;
}

#[tokio::test]
async fn a_request_over_the_max_message_size_is_out_of_range() {
    let stack = Stack::start_with(
        Stack::default_registry()
            .arg("--max-message-bytes")
            .arg("65536"),
    )
    .await;
    let mut c = clients(&stack).await;
    let existing = create_agent(&mut c, agent("Small Agent")).await;

    // tonic checks the length prefix against the decoding limit before it
    // reads the body: OUT_OF_RANGE ("decoded message length too large").
    let status = refused!(
        stack,
        "CreateAgent of 70,000 bytes",
        Code::OutOfRange,
        NONE,
        c.agents.create_agent(create_request(pb::Agent {
            backstory: "x".repeat(70_000),
            ..agent("Too Big")
        }))
    );
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );
    refused!(
        stack,
        "UpdateAgent of 1 MB",
        Code::OutOfRange,
        NONE,
        c.agents.update_agent(update_request(
            pb::Agent {
                id: existing.id.clone(),
                backstory: "x".repeat(1 << 20),
                ..Default::default()
            },
            &["backstory"],
        ))
    );
    refused!(
        stack,
        "ListAgents with a 100 KB page token",
        Code::OutOfRange,
        NONE,
        c.agents.list_agents(pb::ListAgentsRequest {
            page_size: 1,
            page_token: "A".repeat(100_000),
            ..Default::default()
        })
    );
    // Just under the limit the message is decoded and validated.
    refused!(
        stack,
        "CreateAgent of 60,000 bytes",
        Code::InvalidArgument,
        ["agent.backstory"],
        c.agents.create_agent(create_request(pb::Agent {
            backstory: "x".repeat(60_000),
            ..agent("Nearly Too Big")
        }))
    );
    create_agent(
        &mut c,
        pb::Agent {
            backstory: "y".repeat(10_000),
            ..agent("Largest Backstory")
        },
    )
    .await;
    still_serving(&stack, &mut c).await;
    stack.finish().await;
}

#[tokio::test]
async fn provider_types_outside_the_enum_are_a_provider_type_violation() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let existing = create_provider(&mut c, openai("Existing Provider")).await;
    for value in [99, 0, -1, i32::MAX, i32::MIN] {
        refused!(
            stack,
            format!("CreateProvider provider_type {value}"),
            Code::InvalidArgument,
            ["provider.provider_type"],
            c.providers.create_provider(pb::CreateProviderRequest {
                provider: Some(pb::Provider {
                    provider_type: value,
                    ..openai(&format!("Type {value}"))
                }),
                change_description: String::new(),
                ..Default::default()
            })
        );
        refused!(
            stack,
            format!("UpdateProvider provider_type {value}"),
            Code::InvalidArgument,
            ["provider.provider_type"],
            c.providers.update_provider(pb::UpdateProviderRequest {
                provider: Some(pb::Provider {
                    id: existing.id.clone(),
                    provider_type: value,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["provider_type".to_owned()],
                }),
                change_description: String::new(),
                revoke_replaced_key: false,
                ..Default::default()
            })
        );
    }
    let current = c
        .providers
        .get_provider(pb::GetProviderRequest {
            id: existing.id.clone(),
            show_deleted: false,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (current.version, current.provider_type()),
        (1, pb::ProviderType::Openai)
    );
    still_serving(&stack, &mut c).await;
    stack.finish().await;
}

/// Values the registry would otherwise store as something the caller did
/// not say (an enum value it does not know) or show to every viewer (a
/// password in a URL), and URLs no client could call: each is its field's
/// violation, and nothing is written.
#[tokio::test]
async fn unknown_enum_values_and_urls_with_credentials_are_refused() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let existing = create_agent(&mut c, agent("Existing Agent")).await;
    for value in [3, 99, -1, i32::MAX] {
        refused!(
            stack,
            format!("CreateAgent code_execution_mode {value}"),
            Code::InvalidArgument,
            ["agent.code_execution_mode"],
            c.agents.create_agent(create_request(pb::Agent {
                code_execution_mode: value,
                ..agent(&format!("Mode {value}"))
            }))
        );
        refused!(
            stack,
            format!("UpdateAgent code_execution_mode {value}"),
            Code::InvalidArgument,
            ["agent.code_execution_mode"],
            c.agents.update_agent(update_request(
                pb::Agent {
                    id: existing.id.clone(),
                    code_execution_mode: value,
                    ..Default::default()
                },
                &["code_execution_mode"],
            ))
        );
    }
    for url in [
        "https://admin:SuperSecretPw@llm.example.com/v1",
        "https://sk-in-the-userinfo@llm.example.com",
        "http://[::1]:99999",
        "https:///v1",
    ] {
        refused!(
            stack,
            format!("CreateProvider base_url {url}"),
            Code::InvalidArgument,
            ["provider.base_url"],
            c.providers.create_provider(pb::CreateProviderRequest {
                provider: Some(pb::Provider {
                    provider_type: pb::ProviderType::OpenaiCompatible.into(),
                    base_url: url.to_owned(),
                    ..openai(&format!("Compatible {url}"))
                }),
                change_description: String::new(),
                ..Default::default()
            })
        );
    }
    still_serving(&stack, &mut c).await;
    let logs = stack.finish().await;
    assert!(
        !logs.contains("SuperSecretPw"),
        "a refused URL's password was logged"
    );
}

/// A tool configuration of `keys` numeric settings named `prefix0`, … .
fn settings(prefix: &str, keys: usize) -> prost_types::Struct {
    prost_types::Struct {
        fields: (0..keys)
            .map(|i| {
                let value = prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(i as f64)),
                };
                (format!("{prefix}{i:04}"), value)
            })
            .collect(),
    }
}

/// Every field within its own limit, together past what a configuration
/// may hold: refused before anything is stored. A change of hundreds of
/// settings at once is stored as one change of the field, not one per
/// key, so a version's diff stays about the size of the configuration.
#[tokio::test]
async fn a_configuration_past_its_size_is_refused_and_a_wide_change_is_stored_whole() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    // 15 tools with about 8 KiB of settings each: each under 16 KiB,
    // together about 125 KiB (the request about 210 KiB, under the message
    // limit).
    let tools: Vec<String> = (0..15).map(|i| format!("tool-{i}")).collect();
    let heavy = pb::Agent {
        tools: tools.clone(),
        tool_config: tools
            .iter()
            .map(|tool| (tool.clone(), settings("k", 700)))
            .collect(),
        ..agent("Heavy")
    };
    let status = refused!(
        stack,
        "CreateAgent of about 125 KiB of configuration",
        Code::InvalidArgument,
        ["agent"],
        c.agents.create_agent(create_request(heavy))
    );
    assert!(
        status.message().contains("65536 bytes"),
        "{}",
        status.message()
    );

    let created = create_agent(
        &mut c,
        pb::Agent {
            tools: vec!["search".into()],
            tool_config: [("search".to_owned(), settings("a", 300))].into(),
            ..agent("Wide")
        },
    )
    .await;
    c.agents
        .update_agent(update_request(
            pb::Agent {
                id: created.id.clone(),
                tool_config: [("search".to_owned(), settings("b", 300))].into(),
                ..Default::default()
            },
            &["tool_config"],
        ))
        .await
        .expect("600 settings change at once");
    let history = c
        .agents
        .list_agent_versions(pb::ListAgentVersionsRequest {
            agent_id: created.id.clone(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .expect("versions")
        .into_inner();
    let diff = &history.versions[0].diff;
    let shape: Vec<(&str, i32)> = diff.iter().map(|c| (c.path.as_str(), c.kind)).collect();
    assert_eq!(shape, [("tool_config", pb::ChangeKind::Modified as i32)]);
    // Two snapshots of ~5 KiB of settings, the diff's two values of the
    // same size: no per-key paths on top.
    let size = history.encoded_len();
    assert!(
        size < 32 * 1024,
        "a history of two versions took {size} bytes"
    );
    still_serving(&stack, &mut c).await;
    stack.finish().await;
}

/// Every item of a listing, from `page` (a page token to the page's
/// items, its encoded size and the next token), each page checked to be
/// within 1 MiB (and the response's few other bytes); and how many pages
/// it took.
async fn page_through<T>(
    mut page: impl AsyncFnMut(String) -> (Vec<T>, usize, String),
) -> (Vec<T>, usize) {
    let (mut items, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let (more, bytes, next) = page(token).await;
        assert!(bytes <= 1024 * 1024 + 1024, "a page of {bytes} bytes");
        items.extend(more);
        pages += 1;
        if next.is_empty() {
            return (items, pages);
        }
        token = next;
    }
}

/// A page ends early once its messages pass 1 MiB (AIP-158: fewer items
/// than asked, with a next page): 100 agents near the configuration limit
/// would otherwise be a 6 MiB answer, past what gRPC clients receive by
/// default. Paging on still yields every item once, in order.
#[tokio::test]
async fn pages_of_large_resources_stop_at_a_mebibyte_and_page_on() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    // Four tools of ~15 KiB of settings: ~60 KiB stored, ~80 KiB a message.
    let tools: Vec<String> = (0..4).map(|i| format!("tool-{i}")).collect();
    let large = |name: String| pb::Agent {
        tools: tools.clone(),
        tool_config: tools
            .iter()
            .map(|tool| (tool.clone(), settings("k", 1_000)))
            .collect(),
        ..agent(&name)
    };
    let names: Vec<String> = (0..20).map(|i| format!("large-{i:02}")).collect();
    let mut first = None;
    for name in &names {
        let created = create_agent(&mut c, large(name.clone())).await;
        first.get_or_insert(created.id);
    }
    let agents = c.agents.clone();
    let (listed, pages) = page_through(async |page_token| {
        let page = agents
            .clone()
            .list_agents(pb::ListAgentsRequest {
                page_size: 100,
                page_token,
                order_by: "name".into(),
                ..Default::default()
            })
            .await
            .expect("a page of agents")
            .into_inner();
        let bytes = page.encoded_len();
        let names = page.agents.into_iter().map(|a| a.name).collect();
        (names, bytes, page.next_page_token)
    })
    .await;
    assert_eq!(listed, names);
    assert!(pages >= 2, "20 agents of ~80 KiB fit one page");

    let id = first.expect("an agent");
    for round in 0..15 {
        let goal = pb::Agent {
            id: id.clone(),
            goal: format!("Goal {round}"),
            ..Default::default()
        };
        c.agents
            .update_agent(update_request(goal, &["goal"]))
            .await
            .expect("update");
    }
    let (numbers, pages) = page_through(async |page_token| {
        let page = agents
            .clone()
            .list_agent_versions(pb::ListAgentVersionsRequest {
                agent_id: id.clone(),
                page_size: 100,
                page_token,
            })
            .await
            .expect("a page of versions")
            .into_inner();
        let bytes = page.encoded_len();
        let numbers = page.versions.iter().map(|v| v.version_number).collect();
        (numbers, bytes, page.next_page_token)
    })
    .await;
    assert_eq!(numbers, (1..=16).rev().collect::<Vec<i64>>());
    assert!(pages >= 2, "16 versions of ~80 KiB fit one page");
    stack.finish().await;
}

// ---------------------------------------------------------------------------
// Text that looks like something else.
// ---------------------------------------------------------------------------

/// Creates an agent whose every text field is `text` and reads it back by
/// Get, GetAgentVersion and List, byte for byte.
async fn round_trip(c: &mut Clients, text: &str) -> Result<(), Status> {
    let name = text.to_owned();
    let input = pb::Agent {
        name: name.clone(),
        role: text.to_owned(),
        goal: text.to_owned(),
        backstory: text.to_owned(),
        tools: vec![text.to_owned()],
        llm_overrides: Some(pb::ModelParameters {
            stop: vec![text.to_owned()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = c
        .agents
        .create_agent(create_request(input.clone()))
        .await?
        .into_inner();
    let read = c
        .agents
        .get_agent(pb::GetAgentRequest {
            id: created.id.clone(),
            show_deleted: false,
        })
        .await
        .expect("get")
        .into_inner();
    let version = c
        .agents
        .get_agent_version(pb::GetAgentVersionRequest {
            agent_id: created.id.clone(),
            version_number: 1,
        })
        .await
        .expect("version 1")
        .into_inner()
        .configuration
        .expect("a configuration");
    for (agent, via) in [(&created, "create"), (&read, "get"), (&version, "version")] {
        let bytes = |s: &str| s.as_bytes().to_vec();
        assert_eq!(bytes(&agent.name), bytes(&name), "name via {via}");
        for (field, value) in [
            ("role", &agent.role),
            ("goal", &agent.goal),
            ("backstory", &agent.backstory),
        ] {
            assert_eq!(bytes(value), bytes(text), "{field} via {via}");
        }
        assert_eq!(agent.tools, input.tools, "tools via {via}");
        assert_eq!(agent.llm_overrides, input.llm_overrides, "stop via {via}");
    }
    let listed = c
        .agents
        .list_agents(pb::ListAgentsRequest {
            page_size: 100,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed.agents.iter().filter(|a| a.name == name).count(),
        1,
        "{name:?} listed once"
    );
    Ok(())
}

#[tokio::test]
async fn unicode_edge_cases_round_trip_byte_identical() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let texts = [
        "\u{202e}tnega desrever",                  // RTL override
        "Data\u{200d}Analyst",                     // zero-width joiner
        "\u{200b}\u{200c}\u{2060}invisible",       // zero-width space, ZWNJ, word joiner
        "👩\u{200d}👩\u{200d}👧\u{200d}👦 family", // ZWJ emoji sequence
        "🤖 Agent 🚀",
        "e\u{301}",           // decomposed é: not normalized…
        "\u{e9}",             // …so distinct from the precomposed one
        "\u{feff}BOM",        // byte-order mark
        "\u{10ffff}\u{fffd}", // the last code point, the replacement char
        "שלום עולם",          // right-to-left script
        "line\nbreak\ttab\r",
    ];
    for text in texts {
        let before = rows(&stack).await;
        round_trip(&mut c, text)
            .await
            .unwrap_or_else(|status| panic!("{text:?} refused: {status:?}"));
        let after = rows(&stack).await;
        assert_eq!(after, [before[0] + 1, before[1] + 1, before[2], before[3]]);
    }
    // Each text is its own name: nothing was normalized into a duplicate.
    let created = i64::try_from(texts.len()).expect("small");
    assert_eq!(rows(&stack).await[..2], [created, created]);
    still_serving(&stack, &mut c).await;
    stack.finish().await;
}

/// NUL is valid UTF-8 and so a valid protobuf string, but PostgreSQL can
/// keep it neither in `text` nor in `jsonb`. Decision: a NUL in any text
/// field is refused up front with INVALID_ARGUMENT naming that field, on
/// both backends alike (SQLite could store it, PostgreSQL cannot); a NUL
/// in an id is NOT_FOUND (or INVALID_ARGUMENT naming the id); a NUL in a
/// token's sub or tenant is UNAUTHENTICATED or served; never INTERNAL.
#[tokio::test]
async fn a_nul_byte_is_invalid_argument_naming_the_field_on_every_backend() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let existing = create_agent(&mut c, agent("Existing Agent")).await;
    let nul = "a\0b".to_owned();
    let overrides = |p: pb::ModelParameters| Some(p);
    let agent_cases: Vec<(&str, pb::Agent, String)> = vec![
        (
            "agent.name",
            pb::Agent {
                name: nul.clone(),
                ..agent("x")
            },
            String::new(),
        ),
        (
            "agent.role",
            pb::Agent {
                role: nul.clone(),
                ..agent("Nul Role")
            },
            String::new(),
        ),
        (
            "agent.goal",
            pb::Agent {
                goal: nul.clone(),
                ..agent("Nul Goal")
            },
            String::new(),
        ),
        (
            "agent.backstory",
            pb::Agent {
                backstory: nul.clone(),
                ..agent("Nul Backstory")
            },
            String::new(),
        ),
        (
            "agent.tools[0]",
            pb::Agent {
                tools: vec![nul.clone()],
                ..agent("Nul Tool")
            },
            String::new(),
        ),
        (
            "agent.llm_overrides.stop[0]",
            pb::Agent {
                llm_overrides: overrides(pb::ModelParameters {
                    stop: vec![nul.clone()],
                    ..Default::default()
                }),
                ..agent("Nul Stop")
            },
            String::new(),
        ),
        (
            "agent.llm_overrides.model_name",
            pb::Agent {
                llm_overrides: overrides(pb::ModelParameters {
                    model_name: Some(nul.clone()),
                    ..Default::default()
                }),
                ..agent("Nul Model")
            },
            String::new(),
        ),
        ("change_description", agent("Nul Description"), nul.clone()),
    ];
    for (field, input, description) in agent_cases {
        refused!(
            stack,
            format!("CreateAgent with a NUL in {field}"),
            Code::InvalidArgument,
            [field],
            c.agents.create_agent(pb::CreateAgentRequest {
                agent: Some(input),
                change_description: description,
                ..Default::default()
            })
        );
    }
    refused!(
        stack,
        "UpdateAgent name with a NUL",
        Code::InvalidArgument,
        ["agent.name"],
        c.agents.update_agent(update_request(
            pb::Agent {
                id: existing.id.clone(),
                name: nul.clone(),
                ..Default::default()
            },
            &["name"],
        ))
    );
    for (field, input) in [
        (
            "provider.name",
            pb::Provider {
                name: nul.clone(),
                ..openai("x")
            },
        ),
        (
            "provider.model_name",
            pb::Provider {
                model_name: nul.clone(),
                ..openai("Nul Model")
            },
        ),
        (
            "provider.base_url",
            pb::Provider {
                base_url: format!("https://llm.test/{nul}"),
                ..openai("Nul Url")
            },
        ),
    ] {
        refused!(
            stack,
            format!("CreateProvider with a NUL in {field}"),
            Code::InvalidArgument,
            [field],
            c.providers.create_provider(pb::CreateProviderRequest {
                provider: Some(input),
                change_description: String::new(),
                ..Default::default()
            })
        );
    }

    // Ids and page-token keys that hold a NUL name nothing.
    let status = c
        .agents
        .get_agent(pb::GetAgentRequest {
            id: "\0".to_owned(),
            show_deleted: false,
        })
        .await
        .expect_err("no such agent");
    assert!(
        status.code() == Code::NotFound
            || (status.code() == Code::InvalidArgument && violations(&status) == ["id"]),
        "GetAgent id NUL: {status:?}"
    );
    let status = c
        .agents
        .list_agent_versions(pb::ListAgentVersionsRequest {
            agent_id: "x\0".to_owned(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect_err("no such agent");
    assert!(
        status.code() == Code::NotFound
            || (status.code() == Code::InvalidArgument && violations(&status) == ["agent_id"]),
        "ListAgentVersions agent_id NUL: {status:?}"
    );
    let forged = registry_service::page::Scope::new(&["acme", "ListAgents"]).token_after("\0");
    match c
        .agents
        .list_agents(pb::ListAgentsRequest {
            page_size: 1,
            page_token: forged,
            ..Default::default()
        })
        .await
    {
        Ok(_) => {}
        Err(status) => assert!(
            status.code() == Code::InvalidArgument && violations(&status) == ["page_token"],
            "ListAgents after a NUL key: {status:?}"
        ),
    }

    // Claims with a NUL: refused at the door, or served; never INTERNAL.
    for (what, token) in [
        ("sub", tests::auth::token("mallory\0", "acme", &["editor"])),
        (
            "tenant",
            tests::auth::token("mallory", "acme\0", &["editor"]),
        ),
    ] {
        let channel = authed(stack.channel().await, Bearer::new(&token));
        let result = AgentServiceClient::new(channel)
            .list_agents(pb::ListAgentsRequest::default())
            .await;
        if let Err(status) = result {
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "NUL in {what}: {status:?}"
            );
        }
    }
    still_serving(&stack, &mut c).await;
    stack.finish().await;
}

/// A verified token still may not choose how large a subject or tenant
/// is, nor put a control, text-direction or invisible character in one:
/// both are written into every row the caller writes. 256 bytes pass and
/// are stored whole; one byte more, an 8 KiB claim (what fits in the 16
/// KiB of headers a call may carry), a line break, a right-to-left
/// override or a zero-width space is UNAUTHENTICATED before any handler
/// runs.
#[tokio::test]
async fn oversized_or_control_character_identities_are_refused_at_the_door() {
    let stack = Stack::start().await;
    let create = |subject: String, tenant: String, name: &'static str| {
        let stack = &stack;
        async move {
            let token = tests::auth::token(&subject, &tenant, &["editor"]);
            let channel = authed(stack.channel().await, Bearer::new(&token));
            AgentServiceClient::new(channel)
                .create_agent(pb::CreateAgentRequest {
                    agent: Some(agent(name)),
                    ..Default::default()
                })
                .await
        }
    };

    // 256 bytes, counted in bytes: 64 four-byte characters.
    let widest_subject = "🤖".repeat(64);
    let widest_tenant = "t".repeat(256);
    let stored = create(widest_subject.clone(), widest_tenant.clone(), "widest")
        .await
        .expect("a 256-byte subject and tenant are accepted")
        .into_inner();
    assert_eq!(stored.created_by, widest_subject);
    let tenant_rows = stack
        .database
        .count(&format!(
            "SELECT COUNT(*) FROM agents WHERE tenant_id = '{widest_tenant}'"
        ))
        .await;
    assert_eq!(tenant_rows, 1, "the 256-byte tenant is stored whole");

    let refusals = [
        (
            "sub",
            format!("{widest_subject}x"),
            "acme".to_owned(),
            "sub is longer than 256 bytes",
        ),
        (
            "tenant",
            "mallory".to_owned(),
            format!("{widest_tenant}x"),
            "tenant is longer than 256 bytes",
        ),
        (
            "sub",
            "m".repeat(8 * 1024),
            "acme".to_owned(),
            "sub is longer than 256 bytes",
        ),
        (
            "tenant",
            "mallory".to_owned(),
            "t".repeat(8 * 1024),
            "tenant is longer than 256 bytes",
        ),
        (
            "sub",
            "mallory\nforged log line".to_owned(),
            "acme".to_owned(),
            "sub holds a control character",
        ),
        (
            "tenant",
            "mallory".to_owned(),
            "acme\u{1b}[2J".to_owned(),
            "tenant holds a control character",
        ),
        (
            "tenant",
            "mallory".to_owned(),
            "acme\u{7f}".to_owned(),
            "tenant holds a control character",
        ),
        (
            "tenant",
            "mallory".to_owned(),
            "\u{202e}emca".to_owned(),
            "tenant holds a text-direction or invisible character",
        ),
        (
            "sub",
            "mall\u{200b}ory".to_owned(),
            "acme".to_owned(),
            "sub holds a text-direction or invisible character",
        ),
    ];
    for (claim, subject, tenant, reason) in refusals {
        let what = format!("{claim} of {} bytes", subject.len().max(tenant.len()));
        let status = refused!(
            stack,
            what,
            Code::Unauthenticated,
            NONE,
            create(subject, tenant, "refused")
        );
        assert!(
            status.message().contains(reason),
            "{what}: {}",
            status.message()
        );
    }
    stack.finish().await;
}

#[tokio::test]
async fn sql_looking_names_are_stored_verbatim_and_the_tables_stay_intact() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let names = [
        "'); DROP TABLE agents; --",
        "\"; DELETE FROM agent_versions; --",
        "' OR '1'='1",
        "%",
        "_",
        "%_%",
        "\\",
        "\\'; SELECT pg_sleep(10); --",
        "*/ UNION SELECT * FROM providers /*",
        "$1",
        "?",
    ];
    let mut ids = Vec::new();
    for name in names {
        let created = create_agent(&mut c, agent(name)).await;
        let read = c
            .agents
            .get_agent(pb::GetAgentRequest {
                id: created.id.clone(),
                show_deleted: false,
            })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(read.name.as_bytes(), name.as_bytes());
        ids.push(created.id);
    }
    let count = i64::try_from(names.len()).expect("small");
    assert_eq!(rows(&stack).await, [count, count, 0, 0], "tables intact");
    // `%` and `_` are names, not patterns: each is taken exactly once.
    for name in ["%", "_", "'); DROP TABLE agents; --"] {
        refused!(
            stack,
            format!("a second {name:?}"),
            Code::AlreadyExists,
            NONE,
            c.agents.create_agent(create_request(agent(name)))
        );
    }
    let listed = c
        .agents
        .list_agents(pb::ListAgentsRequest {
            page_size: 100,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let mut listed_names: Vec<&str> = listed.agents.iter().map(|a| a.name.as_str()).collect();
    let mut expected = names.to_vec();
    listed_names.sort_unstable();
    expected.sort_unstable();
    assert_eq!(listed_names, expected);
    // And a provider named like an injection.
    let provider = create_provider(&mut c, openai("x' OR 1=1; DROP TABLE providers; --")).await;
    assert_eq!(provider.name, "x' OR 1=1; DROP TABLE providers; --");
    assert_eq!(rows(&stack).await, [count, count, 1, 1]);
    still_serving(&stack, &mut c).await;
    stack.finish().await;
}

// ---------------------------------------------------------------------------
// Listing and versions.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn hostile_page_tokens_and_page_sizes_are_invalid_argument() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let first = create_agent(&mut c, agent("Page One")).await;
    let second = create_agent(&mut c, agent("Page Two")).await;
    create_provider(&mut c, openai("Provider One")).await;
    let noise: String = (0..10_240)
        .map(|i| {
            char::from(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[i * 7 % 64],
            )
        })
        .collect();
    let list_agents_token = c
        .agents
        .list_agents(pb::ListAgentsRequest {
            page_size: 1,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .expect("page 1")
        .into_inner()
        .next_page_token;
    assert!(!list_agents_token.is_empty());
    let versions_token = {
        c.agents
            .update_agent(update_request(
                pb::Agent {
                    id: first.id.clone(),
                    temperature: Some(0.9),
                    ..Default::default()
                },
                &["temperature"],
            ))
            .await
            .expect("update");
        c.agents
            .list_agent_versions(pb::ListAgentVersionsRequest {
                agent_id: first.id.clone(),
                page_size: 1,
                page_token: String::new(),
            })
            .await
            .expect("versions page 1")
            .into_inner()
            .next_page_token
    };
    assert!(!versions_token.is_empty());
    // A well-formed token of the right scope whose key is not a version
    // number (forged: tokens are not signed, only scoped).
    let forged = registry_service::page::Scope::new(&["acme", "ListAgentVersions", &first.id])
        .token_after("not-a-number");

    let tokens: [(&str, String); 6] = [
        ("garbage", "garbage".to_owned()),
        ("10 KB of base64url", noise.clone()),
        ("10 KB of '='", "=".repeat(10_240)),
        (
            "JSON that is not a token",
            URL_SAFE_NO_PAD.encode(r#"{"k":1,"s":[]}"#),
        ),
        ("a ListAgentVersions token", versions_token.clone()),
        ("unicode", "🤖\u{202e}\0".to_owned()),
    ];
    for (label, token) in &tokens {
        refused!(
            stack,
            format!("ListAgents with {label}"),
            Code::InvalidArgument,
            ["page_token"],
            c.agents.list_agents(pb::ListAgentsRequest {
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
        );
    }
    for (label, token) in [
        ("a ListAgents token", list_agents_token.clone()),
        ("another agent's versions token", {
            registry_service::page::Scope::new(&["acme", "ListAgentVersions", &second.id])
                .token_after("2")
        }),
        ("a forged key", forged),
        ("10 KB of base64url", noise.clone()),
    ] {
        refused!(
            stack,
            format!("ListAgentVersions with {label}"),
            Code::InvalidArgument,
            ["page_token"],
            c.agents.list_agent_versions(pb::ListAgentVersionsRequest {
                agent_id: first.id.clone(),
                page_size: 1,
                page_token: token,
            })
        );
    }
    refused!(
        stack,
        "ListProviders with a ListAgents token",
        Code::InvalidArgument,
        ["page_token"],
        c.providers.list_providers(pb::ListProvidersRequest {
            page_size: 1,
            page_token: list_agents_token.clone(),
            ..Default::default()
        })
    );
    for size in [-1, -100, i32::MIN] {
        refused!(
            stack,
            format!("ListAgents page_size {size}"),
            Code::InvalidArgument,
            ["page_size"],
            c.agents.list_agents(pb::ListAgentsRequest {
                page_size: size,
                page_token: String::new(),
                ..Default::default()
            })
        );
        refused!(
            stack,
            format!("ListAgentVersions page_size {size}"),
            Code::InvalidArgument,
            ["page_size"],
            c.agents.list_agent_versions(pb::ListAgentVersionsRequest {
                agent_id: first.id.clone(),
                page_size: size,
                page_token: String::new(),
            })
        );
        refused!(
            stack,
            format!("ListProviders page_size {size}"),
            Code::InvalidArgument,
            ["page_size"],
            c.providers.list_providers(pb::ListProvidersRequest {
                page_size: size,
                page_token: String::new(),
                ..Default::default()
            })
        );
    }
    // A huge page size is clamped to 100, not refused.
    let all = c
        .agents
        .list_agents(pb::ListAgentsRequest {
            page_size: i32::MAX,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .expect("clamped")
        .into_inner();
    assert_eq!((all.agents.len(), all.total_size), (2, 2));
    assert!(all.next_page_token.is_empty());
    // The genuine token still works.
    let page2 = c
        .agents
        .list_agents(pb::ListAgentsRequest {
            page_size: i32::MAX,
            page_token: list_agents_token,
            ..Default::default()
        })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(page2.agents.len(), 1);
    still_serving(&stack, &mut c).await;
    stack.finish().await;
}

#[tokio::test]
async fn version_numbers_below_one_are_invalid_argument_and_huge_ones_not_found() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let provider = create_provider(&mut c, openai("Versioned Provider")).await;
    let existing = create_agent(&mut c, agent("Versioned Agent")).await;
    for number in [0, -1, i64::MIN] {
        refused!(
            stack,
            format!("GetAgentVersion {number}"),
            Code::InvalidArgument,
            ["version_number"],
            c.agents.get_agent_version(pb::GetAgentVersionRequest {
                agent_id: existing.id.clone(),
                version_number: number,
            })
        );
        refused!(
            stack,
            format!("RollbackAgent to {number}"),
            Code::InvalidArgument,
            ["version_number"],
            c.agents.rollback_agent(pb::RollbackAgentRequest {
                agent_id: existing.id.clone(),
                version_number: number,
                etag: String::new(),
                change_description: String::new(),
                ..Default::default()
            })
        );
        refused!(
            stack,
            format!("DiffAgentVersions from {number}"),
            Code::InvalidArgument,
            ["from_version"],
            c.agents.diff_agent_versions(pb::DiffAgentVersionsRequest {
                agent_id: existing.id.clone(),
                from_version: number,
                to_version: 1,
            })
        );
        refused!(
            stack,
            format!("DiffAgentVersions to {number}"),
            Code::InvalidArgument,
            ["to_version"],
            c.agents.diff_agent_versions(pb::DiffAgentVersionsRequest {
                agent_id: existing.id.clone(),
                from_version: 1,
                to_version: number,
            })
        );
        refused!(
            stack,
            format!("ResolveAgent at {number}"),
            Code::InvalidArgument,
            ["version_number"],
            c.runtime.resolve_agent(pb::ResolveAgentRequest {
                agent_id: existing.id.clone(),
                version_number: Some(number),
                if_none_match: String::new(),
                label: String::new(),
            })
        );
        refused!(
            stack,
            format!("GetProviderVersion {number}"),
            Code::InvalidArgument,
            ["version_number"],
            c.providers
                .get_provider_version(pb::GetProviderVersionRequest {
                    provider_id: provider.id.clone(),
                    version_number: number,
                })
        );
        refused!(
            stack,
            format!("RollbackProvider to {number}"),
            Code::InvalidArgument,
            ["version_number"],
            c.providers.rollback_provider(pb::RollbackProviderRequest {
                provider_id: provider.id.clone(),
                version_number: number,
                etag: String::new(),
                change_description: String::new(),
                ..Default::default()
            })
        );
    }
    for number in [2, i64::MAX] {
        refused!(
            stack,
            format!("GetAgentVersion {number}"),
            Code::NotFound,
            NONE,
            c.agents.get_agent_version(pb::GetAgentVersionRequest {
                agent_id: existing.id.clone(),
                version_number: number,
            })
        );
        refused!(
            stack,
            format!("RollbackAgent to {number}"),
            Code::NotFound,
            NONE,
            c.agents.rollback_agent(pb::RollbackAgentRequest {
                agent_id: existing.id.clone(),
                version_number: number,
                etag: String::new(),
                change_description: String::new(),
                ..Default::default()
            })
        );
        refused!(
            stack,
            format!("DiffAgentVersions 1..{number}"),
            Code::NotFound,
            NONE,
            c.agents.diff_agent_versions(pb::DiffAgentVersionsRequest {
                agent_id: existing.id.clone(),
                from_version: 1,
                to_version: number,
            })
        );
        refused!(
            stack,
            format!("ResolveAgent at {number}"),
            Code::NotFound,
            NONE,
            c.runtime.resolve_agent(pb::ResolveAgentRequest {
                agent_id: existing.id.clone(),
                version_number: Some(number),
                if_none_match: String::new(),
                label: String::new(),
            })
        );
        refused!(
            stack,
            format!("RollbackProvider to {number}"),
            Code::NotFound,
            NONE,
            c.providers.rollback_provider(pb::RollbackProviderRequest {
                provider_id: provider.id.clone(),
                version_number: number,
                etag: String::new(),
                change_description: String::new(),
                ..Default::default()
            })
        );
    }
    still_serving(&stack, &mut c).await;
    stack.finish().await;
}

/// DESIGN §2: "a BadRequest with one field violation per bad field".
#[tokio::test]
async fn two_bad_version_numbers_give_two_violations() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let existing = create_agent(&mut c, agent("Diffed Agent")).await;
    refused!(
        stack,
        "DiffAgentVersions 0..-1",
        Code::InvalidArgument,
        ["from_version", "to_version"],
        c.agents.diff_agent_versions(pb::DiffAgentVersionsRequest {
            agent_id: existing.id.clone(),
            from_version: 0,
            to_version: -1,
        })
    );
    still_serving(&stack, &mut c).await;
    stack.finish().await;
}

#[tokio::test]
async fn bad_update_masks_and_etags_are_refused_before_anything_is_written() {
    let stack = Stack::start().await;
    let mut c = clients(&stack).await;
    let existing = create_agent(&mut c, agent("Masked Agent")).await;
    let provider = create_provider(&mut c, openai("Masked Provider")).await;
    let renamed = |etag: &str| pb::Agent {
        id: existing.id.clone(),
        name: "Renamed".to_owned(),
        etag: etag.to_owned(),
        ..Default::default()
    };

    // One violation per bad path, named `update_mask.paths[i]`.
    for (paths, fields) in [
        (&["*", "name"][..], &["update_mask.paths[0]"][..]),
        (&["name", "*"], &["update_mask.paths[1]"]),
        (
            &["*", "*"],
            &["update_mask.paths[0]", "update_mask.paths[1]"],
        ),
        (&["nonexistent"], &["update_mask.paths[0]"]),
        (
            &["name", "bogus", "Name"],
            &["update_mask.paths[1]", "update_mask.paths[2]"],
        ),
        (&["llm_overrides.nonexistent"], &["update_mask.paths[0]"]),
        (
            &["llm_overrides.temperature.deeper"],
            &["update_mask.paths[0]"],
        ),
        (&[""], &["update_mask.paths[0]"]),
        (&["Name"], &["update_mask.paths[0]"]),
    ] {
        refused!(
            stack,
            format!("UpdateAgent mask {paths:?}"),
            Code::InvalidArgument,
            fields,
            c.agents.update_agent(update_request(renamed(""), paths))
        );
        refused!(
            stack,
            format!("UpdateProvider mask {paths:?}"),
            Code::InvalidArgument,
            fields,
            c.providers.update_provider(pb::UpdateProviderRequest {
                provider: Some(pb::Provider {
                    id: provider.id.clone(),
                    name: "Renamed".to_owned(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
                change_description: String::new(),
                revoke_replaced_key: false,
                ..Default::default()
            })
        );
    }

    // Paths naming OUTPUT_ONLY fields are ignored (common.proto): a mask of
    // nothing else changes nothing and writes nothing.
    for paths in [
        &["etag"][..],
        &["id", "version"],
        &[
            "create_time",
            "update_time.seconds",
            "created_by",
            "updated_by",
        ],
    ] {
        let before = rows(&stack).await;
        let agent = c
            .agents
            .update_agent(update_request(renamed(""), paths))
            .await
            .unwrap_or_else(|status| panic!("UpdateAgent mask {paths:?}: {status:?}"))
            .into_inner();
        assert_eq!(agent.name, existing.name, "mask {paths:?}");
        assert_eq!(agent.version, existing.version, "mask {paths:?}");
        assert_eq!(rows(&stack).await, before, "mask {paths:?} wrote");
    }
    let before = rows(&stack).await;
    let updated = c
        .providers
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                id: provider.id.clone(),
                name: "Renamed".to_owned(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["api_key_set".to_owned(), "api_key_revision".to_owned()],
            }),
            change_description: String::new(),
            revoke_replaced_key: false,
            ..Default::default()
        })
        .await
        .expect("UpdateProvider with output-only paths")
        .into_inner();
    assert_eq!(updated.name, provider.name);
    assert_eq!(
        rows(&stack).await,
        before,
        "output-only provider paths wrote"
    );

    // Not etags this service issued: INVALID_ARGUMENT, naming the field.
    let not_etags = [
        "not-an-etag",
        "\"\"",
        "W/\"1\"",
        "\"1.0\"",
        "\"99999999999999999999\"",
        "\"0\"",
        "\"-1\"",
        "\"01\"",
        "1",
        " \"1\"",
        "\"1\" ",
        "\0",
        "🤖",
        "\"0x1\"",
    ];
    for etag in not_etags {
        refused!(
            stack,
            format!("UpdateAgent etag {etag:?}"),
            Code::InvalidArgument,
            ["agent.etag"],
            c.agents
                .update_agent(update_request(renamed(etag), &["name"]))
        );
        refused!(
            stack,
            format!("DeleteAgent etag {etag:?}"),
            Code::InvalidArgument,
            ["etag"],
            c.agents.delete_agent(pb::DeleteAgentRequest {
                id: existing.id.clone(),
                etag: etag.to_owned(),
                ..Default::default()
            })
        );
        refused!(
            stack,
            format!("RollbackAgent etag {etag:?}"),
            Code::InvalidArgument,
            ["etag"],
            c.agents.rollback_agent(pb::RollbackAgentRequest {
                agent_id: existing.id.clone(),
                version_number: 1,
                etag: etag.to_owned(),
                change_description: String::new(),
                ..Default::default()
            })
        );
        refused!(
            stack,
            format!("UpdateProvider etag {etag:?}"),
            Code::InvalidArgument,
            ["provider.etag"],
            c.providers.update_provider(pb::UpdateProviderRequest {
                provider: Some(pb::Provider {
                    id: provider.id.clone(),
                    name: "Renamed".to_owned(),
                    etag: etag.to_owned(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["name".to_owned()],
                }),
                change_description: String::new(),
                revoke_replaced_key: false,
                ..Default::default()
            })
        );
        refused!(
            stack,
            format!("DeleteProvider etag {etag:?}"),
            Code::InvalidArgument,
            ["etag"],
            c.providers.delete_provider(pb::DeleteProviderRequest {
                provider_id: provider.id.clone(),
                etag: etag.to_owned(),
                ..Default::default()
            })
        );
    }
    // Etags of versions that are not current: ABORTED.
    for etag in ["\"2\"", "\"9223372036854775807\""] {
        refused!(
            stack,
            format!("UpdateAgent stale etag {etag}"),
            Code::Aborted,
            NONE,
            c.agents
                .update_agent(update_request(renamed(etag), &["name"]))
        );
        refused!(
            stack,
            format!("DeleteAgent stale etag {etag}"),
            Code::Aborted,
            NONE,
            c.agents.delete_agent(pb::DeleteAgentRequest {
                id: existing.id.clone(),
                etag: etag.to_owned(),
                ..Default::default()
            })
        );
    }
    // The genuine etag still works.
    let updated = c
        .agents
        .update_agent(update_request(renamed(&existing.etag), &["name"]))
        .await
        .expect("the current etag")
        .into_inner();
    assert_eq!((updated.name.as_str(), updated.version), ("Renamed", 2));
    still_serving(&stack, &mut c).await;
    stack.finish().await;
}

// ---------------------------------------------------------------------------
// Tokens.
// ---------------------------------------------------------------------------

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn claims() -> serde_json::Value {
    tests::auth::claims("mallory", "acme", &["editor"])
}

fn rs256(claims: &serde_json::Value, header: Header) -> String {
    let key = EncodingKey::from_rsa_pem(include_bytes!("../fixtures/jwt-rs256-test-private.pem"))
        .expect("rsa key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

fn hs256_with(claims: &serde_json::Value, header: Header, secret: &[u8]) -> String {
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).expect("sign")
}

/// Header `header` (any JSON) over `claims`, with `signature` as is.
fn hand_made(header: &serde_json::Value, claims: &serde_json::Value, signature: &str) -> String {
    format!("{}.{}.{signature}", b64(header), b64(claims))
}

#[tokio::test]
async fn hostile_tokens_are_unauthenticated_and_the_registry_keeps_answering() {
    let public_pem = include_str!("../fixtures/jwt-rs256-test-public.pem");
    let dir = tempfile::tempdir().expect("tempdir");
    let public = pki::write(dir.path(), "jwt.pub.pem", public_pem);
    let stack = Stack::start_with(tests::stack::expect_stack_tokens(
        Launch::default().env("JWT_PUBLIC_KEY_FILE", public.display().to_string()),
    ))
    .await;
    let create = |token: String| {
        let stack = &stack;
        async move {
            let channel = authed(stack.channel().await, Bearer::new(&token));
            AgentServiceClient::new(channel)
                .create_agent(create_request(agent("Token Agent")))
                .await
        }
    };

    let genuine = rs256(&claims(), Header::new(Algorithm::RS256));
    let signature = genuine.rsplit('.').next().expect("signature").to_owned();
    let rs_header = |kid: Option<&str>| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        header
    };
    let hs_header = |kid: Option<&str>| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        header
    };
    let attacker = rcgen::KeyPair::generate().expect("P-256 key");
    let point = attacker.public_key_raw();
    let mut with_jwk = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "attacker",
        "jwk": {"kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])}});
    let es_signed = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims(),
        &EncodingKey::from_ec_pem(attacker.serialize_pem().as_bytes()).expect("ec key"),
    )
    .expect("sign");
    let es_signature = es_signed.rsplit('.').next().expect("signature").to_owned();
    with_jwk["jku"] = serde_json::json!("http://127.0.0.1:1/jwks.json");
    let mut stale = claims();
    stale["exp"] = serde_json::json!(1);
    let mut negative = claims();
    negative["exp"] = serde_json::json!(-1);
    let mut textual = claims();
    textual["exp"] = serde_json::json!("tomorrow");
    let mut immature = claims();
    immature["nbf"] = serde_json::json!(now() + 3600);
    let mut no_exp = claims();
    no_exp.as_object_mut().expect("object").remove("exp");
    let mut padded = claims();
    padded["padding"] = serde_json::json!("p".repeat(100 * 1024));
    let mut mid = claims();
    mid["padding"] = serde_json::json!("p".repeat(20 * 1024));
    let mut near_limit = claims();
    near_limit["padding"] = serde_json::json!("p".repeat(8 * 1024));

    let cases: Vec<(&str, String)> = vec![
        (
            "alg none, no signature",
            hand_made(
                &serde_json::json!({"alg": "none", "typ": "JWT"}),
                &claims(),
                "",
            ),
        ),
        (
            "alg none, genuine signature kept",
            hand_made(&serde_json::json!({"alg": "none"}), &claims(), &signature),
        ),
        (
            "alg None",
            hand_made(&serde_json::json!({"alg": "None"}), &claims(), ""),
        ),
        (
            "alg NONE",
            hand_made(&serde_json::json!({"alg": "NONE"}), &claims(), ""),
        ),
        (
            "HS256 with the public key PEM as the secret",
            hs256_with(&claims(), hs_header(None), public_pem.as_bytes()),
        ),
        (
            "HS256 with the trimmed PEM as the secret",
            hs256_with(&claims(), hs_header(None), public_pem.trim().as_bytes()),
        ),
        (
            "forged kid: a path, HS256 with an empty secret",
            hs256_with(&claims(), hs_header(Some("../../../../../dev/null")), b""),
        ),
        (
            "forged kid: SQL, signature of other claims",
            hand_made(
                &serde_json::json!({"alg": "RS256", "kid": "' UNION SELECT 'secret' --"}),
                &claims(),
                rs256(&stale, rs_header(None))
                    .rsplit('.')
                    .next()
                    .expect("signature"),
            ),
        ),
        (
            "forged kid with an embedded attacker jwk and jku",
            hand_made(&with_jwk, &claims(), &es_signature),
        ),
        ("exp in 1970", rs256(&stale, rs_header(None))),
        ("exp negative", rs256(&negative, rs_header(None))),
        ("exp not a number", rs256(&textual, rs_header(None))),
        ("no exp", rs256(&no_exp, rs_header(None))),
        ("nbf an hour ahead", rs256(&immature, rs_header(None))),
        (
            "genuine signature, one claim changed",
            hand_made(
                &serde_json::json!({"alg": "RS256", "typ": "JWT"}),
                &serde_json::json!({"sub": "mallory", "tenant": "other", "roles": ["admin"], "exp": now() + 600}),
                &signature,
            ),
        ),
        (
            "8 KB token, signature of other claims",
            hand_made(
                &serde_json::json!({"alg": "RS256", "typ": "JWT"}),
                &near_limit,
                &signature,
            ),
        ),
        ("two dots only", "..".to_owned()),
        ("not base64", "!!!.???.###".to_owned()),
    ];
    for (what, token) in cases {
        refused!(stack, what, Code::Unauthenticated, NONE, create(token));
    }

    // Past the 16 KiB header list that hyper's HTTP/2 server accepts by
    // default, the call never reaches the registry (so nothing is written):
    // - a little over it, h2 answers the stream with HTTP 431, which tonic
    //   maps to UNKNOWN ("grpc-status header missing, mapped from HTTP
    //   status code 431");
    // - far over it, h2's "way too large" guard ends the connection with
    //   GOAWAY ENHANCE_YOUR_CALM, which tonic maps to RESOURCE_EXHAUSTED.
    let status = refused!(
        stack,
        "20 KB token",
        Code::Unknown,
        NONE,
        create(rs256(&mid, rs_header(None)))
    );
    assert!(status.message().contains("431"), "{}", status.message());
    for (what, token) in [
        ("100 KB token", rs256(&padded, rs_header(None))),
        ("100 KB of garbage", "g".repeat(100 * 1024)),
    ] {
        let status = refused!(stack, what, Code::ResourceExhausted, NONE, create(token));
        assert!(
            status.message().contains("h2 protocol error"),
            "{what}: {}",
            status.message()
        );
    }

    // The genuine token still creates; the registry kept answering.
    let before = rows(&stack).await;
    create(genuine).await.expect("a genuine token is accepted");
    let after = rows(&stack).await;
    assert_eq!(after, [before[0] + 1, before[1] + 1, before[2], before[3]]);
    let logs = stack.logs();
    assert!(!logs.contains("panicked"), "a service panicked:\n{logs}");
    stack.finish().await;
}
