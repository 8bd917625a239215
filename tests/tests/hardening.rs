//! Issue 15, end to end against the real binaries: what an outsider or a
//! tenant admin could do to the service or to the keys before, each shown
//! not to work now. Unknown paths flooded without a token, repeated fields
//! and update masks sized to the message limit, and a stored key redirected
//! to another host.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use proto::v1 as pb;
use tests::stack::Stack;
use tests::{Launch, http_get};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Calls each path in `paths` with an empty message and no token, 32 at a
/// time, and returns every status received (`None` for OK).
async fn call_paths(channel: &Channel, paths: Vec<String>) -> Vec<Option<tonic::Status>> {
    futures_util::stream::iter(paths)
        .map(|path| {
            let channel = channel.clone();
            async move {
                tests::raw::unary(channel, &path, tonic::Request::new(Vec::new()))
                    .await
                    .err()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

fn random_paths(count: usize, length: usize, tag: &str) -> Vec<String> {
    (0..count)
        .map(|i| {
            let head = format!("/flood.{tag}{i}.Svc/M");
            format!("{head}{}", "x".repeat(length.saturating_sub(head.len())))
        })
        .collect()
}

fn metrics_flag(launch: Launch) -> Launch {
    launch.arg("--metrics-listen").arg("127.0.0.1:0")
}

/// 20,000 calls to paths nobody serves, without a token, then 200 with
/// 4 KiB paths: each is UNIMPLEMENTED, neither server's memory or
/// `/metrics` grows with them, and the log gets at most a line a second.
/// Before: UNAUTHENTICATED, two log lines and a metric series per path
/// (RSS +67 MB per 50,000 paths).
#[tokio::test]
async fn a_flood_of_unknown_paths_is_unimplemented_and_grows_neither_memory_nor_metrics() {
    let stack = Stack::launch(
        metrics_flag(Launch::default()),
        metrics_flag(Stack::default_registry()),
    )
    .await;
    tests::health::wait_for_status(stack.channel().await, "", ServingStatus::Serving).await;
    let crypto = stack.crypto.as_ref().expect("crypto running");
    let servers = [
        (
            &stack.registry,
            stack.channel().await,
            stack
                .registry
                .log_field("metrics serving", "listen")
                .expect("registry metrics"),
        ),
        (
            crypto,
            crypto.channel().await,
            crypto
                .log_field("metrics serving", "listen")
                .expect("crypto metrics"),
        ),
    ];
    for (process, channel, metrics) in &servers {
        // A first round lets the allocator and the connection settle.
        let unimplemented = |status: &Option<tonic::Status>| {
            status
                .as_ref()
                .is_some_and(|s| s.code() == Code::Unimplemented)
        };
        // The server answers before it reads the request body; under load
        // the client's hyper now and then reports its own send of that body
        // ("broken pipe") instead of the answer. A client-side race, never
        // a status the server sent: allowed, rarely, and nothing else.
        let client_race = |status: &Option<tonic::Status>| {
            status
                .as_ref()
                .is_some_and(|s| s.code() == Code::Unknown && s.message() == "transport error")
        };
        let warm_up = call_paths(channel, random_paths(2_000, 0, "warm")).await;
        assert!(warm_up.iter().all(|s| unimplemented(s) || client_race(s)));
        let warm_up_races = warm_up.iter().filter(|s| client_race(s)).count();
        let metrics_before = http_get(metrics, "/metrics").await;
        let rss_before = rss_kib(process.pid());
        let started = Instant::now();

        let mut codes = call_paths(channel, random_paths(20_000, 0, "a")).await;
        codes.extend(call_paths(channel, random_paths(200, 4096, "long")).await);
        let seconds = started.elapsed().as_secs();

        assert_eq!(codes.len(), 20_200);
        assert!(
            codes.iter().all(|s| unimplemented(s) || client_race(s)),
            "every unknown path is UNIMPLEMENTED: {:?}",
            codes.iter().find(|s| !unimplemented(s) && !client_race(s))
        );
        let races = codes.iter().filter(|s| client_race(s)).count();
        assert!(races <= 100, "{races} calls lost to the client-side race");
        let rss_after = rss_kib(process.pid());
        assert!(
            rss_after <= rss_before + 5 * 1024,
            "RSS grew from {rss_before} KiB to {rss_after} KiB"
        );
        let metrics_after = http_get(metrics, "/metrics").await;
        assert!(
            !metrics_after.contains("flood."),
            "a flooded path is a label"
        );
        // Every call the server saw, under one label (a call lost to the
        // client-side race above may or may not have reached it).
        let counted: usize = metrics_after
            .lines()
            .find_map(|line| {
                line.strip_prefix(
                    r#"grpc_server_handled_total{grpc_type="unknown",grpc_service="unknown",grpc_method="unknown",grpc_code="Unimplemented"} "#,
                )
            })
            .and_then(|count| count.parse().ok())
            .expect("the unknown calls' series");
        assert!(
            (22_200 - races - warm_up_races..=22_200).contains(&counted),
            "{counted} unknown calls counted:\n{metrics_after}"
        );
        // Series that appear on their own meanwhile (the readiness check's
        // first crypto calls) fit in a few KiB; one series per path would
        // be megabytes.
        assert!(
            metrics_after.len() <= metrics_before.len() + 16 * 1024,
            "/metrics grew from {} to {} bytes",
            metrics_before.len(),
            metrics_after.len()
        );
        let refused_lines = process.output().matches("rpc refused").count() as u64;
        // The warm-up and the flood: at most one INFO line a second, plus
        // the first of each.
        let allowed = seconds + started.elapsed().as_secs() + 4;
        assert!(
            refused_lines <= allowed,
            "{refused_lines} refusal lines in {seconds} s"
        );
        assert!(
            !process.output().contains("flood."),
            "a flooded path was logged"
        );
    }
    // Known methods still work and still need a token.
    let unauthenticated = pb::agent_service_client::AgentServiceClient::new(stack.channel().await)
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    stack.finish().await;
}

fn agent(name: &str) -> pb::Agent {
    pb::Agent {
        name: name.into(),
        role: "Analyst".into(),
        goal: "Analyze".into(),
        backstory: "Expert".into(),
        ..Default::default()
    }
}

/// Creates an agent named `name` that runs on provider `provider_id`;
/// returns its id.
async fn agent_using(
    agents: &mut pb::agent_service_client::AgentServiceClient<tests::auth::Authed>,
    name: &str,
    provider_id: &str,
) -> String {
    agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                llm_provider_id: Some(provider_id.to_owned()),
                ..agent(name)
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("an agent on the provider")
        .into_inner()
        .id
}

fn violations(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    let mut fields: Vec<String> = status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|violation| violation.field)
                .collect()
        })
        .unwrap_or_default();
    fields.sort();
    fields
}

/// Checks `Health/Check` on a channel of its own, one call after another,
/// until `stop` fires; returns the slowest answer.
async fn slowest_health_check(
    channel: Channel,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Duration {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut slowest = Duration::ZERO;
    loop {
        let started = Instant::now();
        let check = health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        tokio::select! {
            answer = check => {
                answer.expect("health answers during the attack");
                slowest = slowest.max(started.elapsed());
            }
            _ = &mut stop => return slowest,
        }
    }
}

/// Repeated fields and update masks as large as the 256 KiB message limit
/// allows: each request is INVALID_ARGUMENT naming the one oversized field,
/// answered in well under a second, while Health/Check on another
/// connection keeps answering at once; the same bombs at the old 4 MiB are
/// OUT_OF_RANGE before anything decodes them. Before: 200,000 tools took
/// 42 s of CPU and a 40,000-path mask over 80,000 stop sequences 44 s, with
/// health stalled meanwhile.
#[tokio::test]
async fn tool_and_mask_bombs_are_refused_at_once_while_health_stays_fast() {
    let stack = Stack::start().await;
    let editor = stack.channel_as("eve", "acme", &["editor", "admin"]).await;
    let mut agents = pb::agent_service_client::AgentServiceClient::new(editor.clone());
    let mut providers = pb::provider_service_client::ProviderServiceClient::new(editor.clone());
    let target = agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(agent("target")),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();

    // Each body just under 256 KiB.
    let tools: Vec<String> = (0..20_000).map(|i| format!("tool-{i}")).collect();
    let stops: Vec<String> = (0..8_000).map(|i| format!("s{i}")).collect();
    let tool_bomb = pb::CreateAgentRequest {
        agent: Some(pb::Agent {
            tools,
            ..agent("bomb")
        }),
        change_description: String::new(),
        ..Default::default()
    };
    let overrides = Some(pb::ModelParameters {
        stop: stops.clone(),
        ..Default::default()
    });
    let mask_bomb = |paths: usize| pb::UpdateAgentRequest {
        agent: Some(pb::Agent {
            id: target.id.clone(),
            llm_overrides: overrides.clone(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["llm_overrides".to_owned(); paths],
        }),
        change_description: String::new(),
        ..Default::default()
    };
    let provider_bomb = pb::CreateProviderRequest {
        provider: Some(pb::Provider {
            name: "bomb".into(),
            provider_type: pb::ProviderType::Openai.into(),
            model_name: "gpt-4".into(),
            default_parameters: Some(pb::ModelParameters {
                stop: stops,
                ..Default::default()
            }),
            ..Default::default()
        }),
        change_description: String::new(),
        ..Default::default()
    };

    let (stop_health, health_stopped) = tokio::sync::oneshot::channel();
    let health = tokio::spawn(slowest_health_check(stack.channel().await, health_stopped));
    let mut slowest_bomb = Duration::ZERO;
    for _ in 0..2 {
        let (mut a, mut b, mut c) = (agents.clone(), agents.clone(), agents.clone());
        let started = Instant::now();
        let (tools, masks, capped_masks, provider) = tokio::join!(
            a.create_agent(tool_bomb.clone()),
            b.update_agent(mask_bomb(8_000)),
            c.update_agent(mask_bomb(64)),
            providers.create_provider(provider_bomb.clone()),
        );
        slowest_bomb = slowest_bomb.max(started.elapsed());
        let tools = tools.expect_err("20,000 tools");
        assert_eq!(tools.code(), Code::InvalidArgument);
        assert_eq!(violations(&tools), ["agent.tools"]);
        let masks = masks.expect_err("8,000 mask paths");
        assert_eq!(masks.code(), Code::InvalidArgument);
        assert_eq!(
            violations(&masks),
            ["agent.llm_overrides.stop", "update_mask.paths"]
        );
        assert!(masks.message().contains("at most 64 paths"), "{masks:?}");
        let capped = capped_masks.expect_err("8,000 stop sequences");
        assert_eq!(capped.code(), Code::InvalidArgument);
        assert_eq!(violations(&capped), ["agent.llm_overrides.stop"]);
        let provider = provider.expect_err("8,000 provider stop sequences");
        assert_eq!(provider.code(), Code::InvalidArgument);
        assert_eq!(violations(&provider), ["provider.default_parameters.stop"]);
    }
    let _ = stop_health.send(());
    let slowest_health = health.await.expect("health task");
    // At the old 4 MiB limit: refused by its length prefix, never decoded.
    let huge = agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                tools: (0..300_000).map(|i| format!("tool-{i}")).collect(),
                ..agent("huge")
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("a 4 MiB tool bomb");
    assert_eq!(huge.code(), Code::OutOfRange, "{huge:?}");
    // Generous for a debug build on two cores shared with other tests (the
    // release figures are in BENCHMARKS.md, `bench abuse`); the attacks
    // took tens of seconds each before, with health stalled as long.
    assert!(
        slowest_bomb < Duration::from_secs(5),
        "slowest round of bombs: {slowest_bomb:?}"
    );
    assert!(
        slowest_health < Duration::from_secs(2),
        "slowest health check during the bombs: {slowest_health:?}"
    );

    // Nothing was written, and a mask naming a path many times applies it
    // once.
    let unchanged = agents
        .get_agent(pb::GetAgentRequest {
            id: target.id.clone(),
            show_deleted: false,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(unchanged.version, 1);
    let repeated = agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: target.id.clone(),
                max_iter: Some(7),
                llm_overrides: Some(pb::ModelParameters {
                    stop: vec!["END".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: [["max_iter", "llm_overrides.stop"]; 32]
                    .concat()
                    .into_iter()
                    .map(String::from)
                    .collect(),
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("64 paths, two distinct")
        .into_inner();
    assert_eq!(repeated.version, 2);
    assert_eq!(repeated.max_iter, Some(7));
    assert_eq!(
        repeated.llm_overrides.map(|o| o.stop),
        Some(vec!["END".to_owned()])
    );
    let versions = agents
        .list_agent_versions(pb::ListAgentVersionsRequest {
            agent_id: target.id.clone(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .expect("versions")
        .into_inner();
    assert_eq!(versions.versions.len(), 2);
    let changed: Vec<String> = versions.versions[0]
        .diff
        .iter()
        .map(|change| change.path.clone())
        .collect();
    assert_eq!(changed, ["llm_overrides.stop", "max_iter"]);
    stack.finish().await;
}

/// An admin who never held a provider's key cannot send it elsewhere:
/// changing `base_url` (or `provider_type`) without a new key is
/// FAILED_PRECONDITION `API_KEY_REQUIRED`, and ResolveAgent still hands
/// the key out with the URL it was stored for. With a new key in the same
/// request the change goes through. Before: the update kept the stored key
/// and ResolveAgent returned it with the attacker's URL.
#[tokio::test]
async fn a_stored_key_cannot_be_redirected_to_another_host() {
    use tonic_types::StatusExt;
    let stack = Stack::start().await;
    let admin = stack.channel_as("mallory", "acme", &["admin"]).await;
    let mut providers = pb::provider_service_client::ProviderServiceClient::new(admin.clone());
    let mut agents = pb::agent_service_client::AgentServiceClient::new(admin);
    let mut runtime = pb::runtime_service_client::RuntimeServiceClient::new(
        stack.channel_as("runner", "acme", &["runtime"]).await,
    );
    let provider = providers
        .create_provider(pb::CreateProviderRequest {
            provider: Some(pb::Provider {
                name: "compatible".into(),
                provider_type: pb::ProviderType::OpenaiCompatible.into(),
                model_name: "llama".into(),
                base_url: "https://llm.internal.example/v1".into(),
                api_key: "sk-bound-to-llm-internal".into(),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create provider")
        .into_inner();
    let agent_id = agent_using(&mut agents, "runner", &provider.id).await;

    let redirect = |paths: &[&str], provider_type: pb::ProviderType, base_url: &str, key: &str| {
        pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                id: provider.id.clone(),
                provider_type: provider_type.into(),
                base_url: base_url.into(),
                api_key: key.into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            }),
            change_description: String::new(),
            revoke_replaced_key: false,
            ..Default::default()
        }
    };
    for attempt in [
        redirect(
            &["base_url"],
            pb::ProviderType::OpenaiCompatible,
            "https://attacker.example/v1",
            "",
        ),
        // Sending a key without naming it in the mask does not count.
        redirect(
            &["base_url"],
            pb::ProviderType::OpenaiCompatible,
            "https://attacker.example/v1",
            "sk-ignored",
        ),
        redirect(
            &["provider_type", "base_url"],
            pb::ProviderType::Openai,
            "",
            "",
        ),
    ] {
        let refused = providers
            .update_provider(attempt)
            .await
            .expect_err("redirect without a key");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        let info = refused.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "API_KEY_REQUIRED");
    }
    let resolved = runtime
        .resolve_agent(pb::ResolveAgentRequest {
            agent_id: agent_id.clone(),
            ..Default::default()
        })
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(
        resolved.provider.expect("provider").base_url,
        "https://llm.internal.example/v1"
    );
    assert_eq!(resolved.api_key, "sk-bound-to-llm-internal");

    // With the new destination's key in the same request, it moves.
    let moved = providers
        .update_provider(redirect(
            &["base_url", "api_key"],
            pb::ProviderType::OpenaiCompatible,
            "https://llm2.internal.example/v1",
            "sk-for-llm2",
        ))
        .await
        .expect("move with a new key")
        .into_inner();
    assert_eq!(moved.version, 2);
    let resolved = runtime
        .resolve_agent(pb::ResolveAgentRequest {
            agent_id,
            ..Default::default()
        })
        .await
        .expect("resolve")
        .into_inner();
    assert_eq!(
        resolved.provider.expect("provider").base_url,
        "https://llm2.internal.example/v1"
    );
    assert_eq!(resolved.api_key, "sk-for-llm2");
    stack.finish().await;
}

fn provider_with_key(name: &str, key: &str) -> pb::CreateProviderRequest {
    pb::CreateProviderRequest {
        provider: Some(pb::Provider {
            name: name.into(),
            provider_type: pb::ProviderType::Openai.into(),
            model_name: "gpt-4".into(),
            api_key: key.into(),
            ..Default::default()
        }),
        change_description: String::new(),
        ..Default::default()
    }
}

/// Key operations act on every tenant's values, so they belong to the
/// platform operator the deployment names, not to any tenant's admin: a
/// tenant admin sees only its own tenant's counts and no check values, and
/// cannot rewrap or retire; a token claiming `platform-operator` for a
/// subject the deployment does not list is refused like any other. Before:
/// a `globex` admin saw `acme`'s counts and check values, rewrapped
/// `acme`'s rows and retired versions for everyone.
#[tokio::test]
async fn key_operations_need_the_platform_operator_not_a_tenant_admin() {
    let stack = Stack::start().await;
    // Ready means the registry has written its key canary: the platform's
    // counts below include it.
    tests::health::wait_for_status(stack.channel().await, "", ServingStatus::Serving).await;
    let acme = stack.channel_as("ada", "acme", &["admin"]).await;
    let globex = stack.channel_as("gil", "globex", &["admin"]).await;
    let pretender = stack
        .channel_as("gil", "globex", &["admin", "platform-operator"])
        .await;
    let operator = stack
        .channel_as(tests::auth::STACK_OPERATOR, "ops", &["platform-operator"])
        .await;
    let mut acme_providers = pb::provider_service_client::ProviderServiceClient::new(acme);
    for name in ["one", "two"] {
        acme_providers
            .create_provider(provider_with_key(name, "sk-acme"))
            .await
            .expect("acme provider");
    }
    pb::provider_service_client::ProviderServiceClient::new(globex.clone())
        .create_provider(provider_with_key("three", "sk-globex"))
        .await
        .expect("globex provider");

    // A provider created with a key stores it twice: in its row and in its
    // version 1 snapshot. The registry's key canary is the platform's.
    for tenant_admin in [globex, pretender] {
        let mut keys = pb::key_service_client::KeyServiceClient::new(tenant_admin);
        let status = keys
            .get_key_status(pb::GetKeyStatusRequest {})
            .await
            .expect("a tenant admin reads its own tenant's counts")
            .into_inner();
        assert_eq!(status.total_values, 2, "{status:?}");
        assert!(
            status.versions.iter().all(|v| v.check_value.is_empty()),
            "{status:?}"
        );
        let rewrap = keys
            .rewrap_credentials(pb::RewrapCredentialsRequest::default())
            .await
            .expect_err("a tenant admin rewraps every tenant's values");
        assert_eq!(rewrap.code(), Code::PermissionDenied);
        let retire = keys
            .retire_key_version(pb::RetireKeyVersionRequest { version: 1 })
            .await
            .expect_err("a tenant admin retires a version for everyone");
        assert_eq!(retire.code(), Code::PermissionDenied);
    }

    let mut keys = pb::key_service_client::KeyServiceClient::new(operator);
    let status = keys
        .get_key_status(pb::GetKeyStatusRequest {})
        .await
        .expect("operator status")
        .into_inner();
    assert_eq!(status.total_values, 7, "{status:?}");
    let active = status
        .versions
        .iter()
        .find(|v| v.active)
        .expect("an active version");
    assert_eq!(active.check_value.len(), 16, "{status:?}");
    // Versions are numbered from 1: 0 is the request's mistake, not a
    // state of the keyring.
    let zero = keys
        .retire_key_version(pb::RetireKeyVersionRequest { version: 0 })
        .await
        .expect_err("version 0");
    assert_eq!(zero.code(), Code::InvalidArgument, "{zero:?}");
    assert_eq!(violations(&zero), ["version"]);
    let rewrapped = keys
        .rewrap_credentials(pb::RewrapCredentialsRequest::default())
        .await
        .expect("the operator rewraps")
        .into_inner();
    assert_eq!(rewrapped.scanned, 7);
    assert_eq!(rewrapped.remaining, 0);
    stack.finish().await;
}

/// A tenant admin's key counts read at most 10,000 of the tenant's stored
/// values (SECURITY.md): a tenant's version snapshots grow with every
/// provider write, and each counted one is a JSON value taken apart, on a
/// connection every tenant's calls share. At the cap the counts are
/// exact; one value more answers FAILED_PRECONDITION
/// `TOO_MANY_STORED_VALUES` for that tenant alone, and the platform
/// operator still counts everything. Before: the count read every
/// snapshot, however many.
#[tokio::test]
async fn a_tenants_key_count_reads_at_most_ten_thousand_values() {
    use tonic_types::StatusExt;

    let stack = Stack::start().await;
    tests::health::wait_for_status(stack.channel().await, "", ServingStatus::Serving).await;
    let acme = stack.channel_as("ada", "acme", &["admin"]).await;
    let globex = stack.channel_as("gil", "globex", &["admin"]).await;
    let operator = stack
        .channel_as(tests::auth::STACK_OPERATOR, "ops", &["platform-operator"])
        .await;
    let provider = pb::provider_service_client::ProviderServiceClient::new(acme.clone())
        .create_provider(provider_with_key("many", "sk-many-versions"))
        .await
        .expect("acme provider")
        .into_inner();
    pb::provider_service_client::ProviderServiceClient::new(globex.clone())
        .create_provider(provider_with_key("few", "sk-few-versions"))
        .await
        .expect("globex provider");
    // Copies of acme's version 1 snapshot (its key included) as versions
    // `from..=to`, as a long history would leave them.
    let copies = |from: u32, to: u32| {
        format!(
            "INSERT INTO provider_versions (provider_id, tenant_id, version_number, action, \
             configuration, diff, change_description, changed_by, create_time) \
             WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i < {to}) \
             SELECT v.provider_id, v.tenant_id, n.i, v.action, v.configuration, v.diff, \
             v.change_description, v.changed_by, v.create_time \
             FROM provider_versions v CROSS JOIN n \
             WHERE v.provider_id = '{}' AND v.version_number = 1",
            provider.id
        )
    };
    let status = async |channel: &tests::auth::Authed| {
        pb::key_service_client::KeyServiceClient::new(channel.clone())
            .get_key_status(pb::GetKeyStatusRequest {})
            .await
    };

    // The row and 9,999 snapshots: 10,000 values, counted exactly.
    assert_eq!(stack.database.execute(&copies(2, 9_999)).await, 9_998);
    let counted = status(&acme).await.expect("at the cap").into_inner();
    assert_eq!(counted.total_values, 10_000, "{counted:?}");
    let by_version: u64 = counted.versions.iter().map(|v| v.stored_values).sum();
    assert_eq!(by_version, 10_000, "{counted:?}");

    // One more: refused, for acme alone.
    assert_eq!(stack.database.execute(&copies(10_000, 10_000)).await, 1);
    let refused = status(&acme).await.expect_err("over the cap");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let info = refused.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "TOO_MANY_STORED_VALUES");
    assert!(
        refused.message().contains("platform operator"),
        "says who can count: {refused:?}"
    );
    let other = status(&globex).await.expect("globex's own counts");
    assert_eq!(other.into_inner().total_values, 2);
    // Every value: acme's 10,001, globex's 2 and the registry's canary.
    let everything = status(&operator).await.expect("the operator counts all");
    assert_eq!(everything.into_inner().total_values, 10_004);
    stack.finish().await;
}

/// Every stored key gets a credential revision, shown on the provider and
/// in diffs; a revoked revision never comes back. Key A (revision 1) is
/// replaced by B (2): a rollback to version 1 restores A, as the platform
/// this replaces did. Then C (3) replaces A with `revoke_replaced_key`: a
/// rollback to version 1 keeps C and its version says why. Revoking the
/// current revision removes the key. Before: a rollback silently restored
/// any rotated-away key, and the diff read `***encrypted***` →
/// `***encrypted***`.
#[tokio::test]
async fn a_revoked_key_revision_never_comes_back_through_rollback() {
    let stack = Stack::start().await;
    let admin = stack.channel_as("ada", "acme", &["admin"]).await;
    let mut providers = pb::provider_service_client::ProviderServiceClient::new(admin.clone());
    let mut agents = pb::agent_service_client::AgentServiceClient::new(admin);
    let mut runtime = pb::runtime_service_client::RuntimeServiceClient::new(
        stack.channel_as("rt", "acme", &["runtime"]).await,
    );
    let provider = providers
        .create_provider(provider_with_key("rotating", "sk-key-a"))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(provider.api_key_revision, 1);
    let agent_id = agent_using(&mut agents, "uses-rotating", &provider.id).await;
    let mut resolve = async || {
        runtime
            .resolve_agent(pb::ResolveAgentRequest {
                agent_id: agent_id.clone(),
                ..Default::default()
            })
            .await
            .expect("resolve")
            .into_inner()
    };
    let replace_key = |key: &str, revoke_replaced_key: bool| pb::UpdateProviderRequest {
        provider: Some(pb::Provider {
            id: provider.id.clone(),
            api_key: key.into(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["api_key".into()],
        }),
        change_description: String::new(),
        revoke_replaced_key,
        ..Default::default()
    };
    let rollback_to = |version_number: i64| pb::RollbackProviderRequest {
        provider_id: provider.id.clone(),
        version_number,
        ..Default::default()
    };

    // v2: B replaces A; the diff names both revisions.
    let v2 = providers
        .update_provider(replace_key("sk-key-b", false))
        .await
        .expect("key b")
        .into_inner();
    assert_eq!((v2.version, v2.api_key_revision), (2, 2));
    let diff = providers
        .diff_provider_versions(pb::DiffProviderVersionsRequest {
            provider_id: provider.id.clone(),
            from_version: 1,
            to_version: 2,
        })
        .await
        .expect("diff")
        .into_inner()
        .changes;
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert_eq!(diff[0].path, "api_key");
    let text =
        |value: &Option<prost_types::Value>| match value.as_ref().and_then(|v| v.kind.clone()) {
            Some(prost_types::value::Kind::StringValue(text)) => text,
            other => panic!("not a string: {other:?}"),
        };
    assert_eq!(text(&diff[0].old_value), "***encrypted, revision 1***");
    assert_eq!(text(&diff[0].new_value), "***encrypted, revision 2***");
    assert_eq!(resolve().await.api_key, "sk-key-b");

    // v3: rollback to v1 restores A, which nobody revoked.
    let v3 = providers
        .rollback_provider(rollback_to(1))
        .await
        .expect("rollback to a")
        .into_inner();
    assert_eq!((v3.version, v3.api_key_revision), (3, 1));
    assert_eq!(resolve().await.api_key, "sk-key-a");

    // v4: C replaces A and revokes it.
    let v4 = providers
        .update_provider(replace_key("sk-key-c", true))
        .await
        .expect("key c")
        .into_inner();
    assert_eq!((v4.version, v4.api_key_revision), (4, 3));

    // v5: rollback to v1 (revision 1, revoked) keeps C.
    let v5 = providers
        .rollback_provider(rollback_to(1))
        .await
        .expect("rollback to a revoked key")
        .into_inner();
    assert_eq!((v5.version, v5.api_key_revision), (5, 3));
    assert_eq!(resolve().await.api_key, "sk-key-c");
    let v5_row = providers
        .get_provider_version(pb::GetProviderVersionRequest {
            provider_id: provider.id.clone(),
            version_number: 5,
        })
        .await
        .expect("v5")
        .into_inner();
    assert!(
        v5_row
            .change_description
            .contains("key revision 1 is revoked: kept key revision 3"),
        "{}",
        v5_row.change_description
    );
    assert!(
        v5_row.diff.iter().all(|change| change.path != "api_key"),
        "{:?}",
        v5_row.diff
    );

    // Revoking B (not current) writes no version; a rollback to v2 then
    // keeps C as well.
    let unchanged = providers
        .revoke_provider_key(pb::RevokeProviderKeyRequest {
            provider_id: provider.id.clone(),
            revision: 2,
            reason: String::new(),
            ..Default::default()
        })
        .await
        .expect("revoke b")
        .into_inner();
    assert_eq!(unchanged.version, 5);
    let v6 = providers
        .rollback_provider(rollback_to(2))
        .await
        .expect("rollback to b")
        .into_inner();
    assert_eq!((v6.version, v6.api_key_revision), (6, 3));
    assert_eq!(resolve().await.api_key, "sk-key-c");

    // Revoking C, the current key, removes it in a new version.
    let v7 = providers
        .revoke_provider_key(pb::RevokeProviderKeyRequest {
            provider_id: provider.id.clone(),
            revision: 3,
            reason: "leaked in a CI log".into(),
            ..Default::default()
        })
        .await
        .expect("revoke c")
        .into_inner();
    assert_eq!(v7.version, 7);
    assert!(!v7.api_key_set);
    assert_eq!(v7.api_key_revision, 0);
    assert_eq!(resolve().await.api_key, "");
    for version_number in [1, 2, 4] {
        let kept = providers
            .rollback_provider(rollback_to(version_number))
            .await
            .expect("rollback")
            .into_inner();
        assert!(
            !kept.api_key_set,
            "v{version_number} brought a revoked key back"
        );
        assert_eq!(resolve().await.api_key, "");
    }
    let missing = providers
        .revoke_provider_key(pb::RevokeProviderKeyRequest {
            provider_id: provider.id.clone(),
            revision: 9,
            reason: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("no revision 9");
    assert_eq!(missing.code(), Code::NotFound);
    // A fourth key is revision 4, usable at once.
    let v11 = providers
        .update_provider(replace_key("sk-key-d", false))
        .await
        .expect("key d")
        .into_inner();
    assert_eq!(v11.api_key_revision, 4);
    assert_eq!(resolve().await.api_key, "sk-key-d");
    stack.finish().await;
}

/// With `PROVIDER_ALLOWED_HOSTS`, a provider's `base_url` must name an
/// allowed host (user information in the URL, the classic way to make a
/// URL look like another host, is refused too), a rollback cannot restore
/// another, and ResolveAgent hands no key to a provider whose host the
/// list does not allow (one stored before the list was set).
#[tokio::test]
async fn keys_go_only_to_the_hosts_the_deployment_allows() {
    use tests::stack::start_registry;
    let open = Stack::start().await;
    let admin_token = tests::auth::token("ada", "acme", &["admin"]);
    let runtime_token = tests::auth::token("rt", "acme", &["runtime"]);
    let on = |channel: Channel, token: &str| {
        tests::auth::authed(channel, tests::auth::Bearer::new(token))
    };
    // Stored while any host was allowed.
    let mut providers = pb::provider_service_client::ProviderServiceClient::new(on(
        open.channel().await,
        &admin_token,
    ));
    let compatible = |name: &str, url: &str| pb::CreateProviderRequest {
        provider: Some(pb::Provider {
            name: name.into(),
            provider_type: pb::ProviderType::OpenaiCompatible.into(),
            model_name: "llama".into(),
            base_url: url.into(),
            api_key: format!("sk-{name}"),
            ..Default::default()
        }),
        change_description: String::new(),
        ..Default::default()
    };
    let elsewhere = providers
        .create_provider(compatible("elsewhere", "https://attacker.example/v1"))
        .await
        .expect("stored without a list")
        .into_inner();
    let mut agents =
        pb::agent_service_client::AgentServiceClient::new(on(open.channel().await, &admin_token));
    let agent_id = agent_using(&mut agents, "sends-elsewhere", &elsewhere.id).await;

    // The same database, served by a registry with a list.
    let listed = start_registry(
        &open.database,
        &open.crypto_endpoint,
        Stack::default_registry().env(
            "PROVIDER_ALLOWED_HOSTS",
            "llm.internal.example,*.openai.azure.com",
        ),
    )
    .await;
    let mut providers = pb::provider_service_client::ProviderServiceClient::new(on(
        listed.channel().await,
        &admin_token,
    ));
    for (name, url) in [
        ("attacker", "https://attacker.example/v1"),
        (
            "userinfo",
            "https://llm.internal.example@attacker.example/v1",
        ),
        (
            "lookalike",
            "https://llm.internal.example.attacker.example/v1",
        ),
    ] {
        let refused = providers
            .create_provider(compatible(name, url))
            .await
            .expect_err(url);
        assert_eq!(refused.code(), Code::InvalidArgument, "{url}");
        assert_eq!(violations(&refused), ["provider.base_url"], "{url}");
    }
    for (name, url) in [
        ("internal", "https://llm.internal.example/v1"),
        ("azure", "https://acme.openai.azure.com/openai"),
    ] {
        providers
            .create_provider(compatible(name, url))
            .await
            .expect(url);
    }
    let resolved = pb::runtime_service_client::RuntimeServiceClient::new(on(
        listed.channel().await,
        &runtime_token,
    ))
    .resolve_agent(pb::ResolveAgentRequest {
        agent_id,
        ..Default::default()
    })
    .await
    .expect_err("a key for a host off the list");
    assert_eq!(resolved.code(), Code::FailedPrecondition);
    assert!(!resolved.message().contains("sk-elsewhere"));
    {
        use tonic_types::StatusExt;
        assert_eq!(
            resolved.get_details_error_info().expect("ErrorInfo").reason,
            "DESTINATION_NOT_ALLOWED"
        );
    }
    // Moving it to an allowed host with a new key is the way out.
    let moved = providers
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                id: elsewhere.id.clone(),
                base_url: "https://llm.internal.example/v2".into(),
                api_key: "sk-internal-2".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["base_url".into(), "api_key".into()],
            }),
            change_description: String::new(),
            revoke_replaced_key: true,
            ..Default::default()
        })
        .await
        .expect("moved")
        .into_inner();
    assert_eq!(moved.version, 2);
    let rollback = providers
        .rollback_provider(pb::RollbackProviderRequest {
            provider_id: elsewhere.id.clone(),
            version_number: 1,
            ..Default::default()
        })
        .await
        .expect_err("a rollback to a host off the list");
    assert_eq!(rollback.code(), Code::FailedPrecondition);
    listed.terminate().await;
    open.finish().await;
}

/// With `REGISTRY_TENANT_CALLS_PER_MINUTE`, a tenant's calls over its rate
/// are refused with RESOURCE_EXHAUSTED, the wait in `RetryInfo`, before
/// any work (a refused CreateAgent writes nothing); every caller of the
/// tenant shares its rate, another tenant has its own, calls refused for
/// their token or role cost nothing, and health checks are no tenant's.
#[tokio::test]
async fn a_tenant_over_its_call_rate_is_refused_before_any_work_and_no_other_tenant_is() {
    use tonic_types::StatusExt;

    // Three calls at once, then one a minute: no call comes back within
    // the test.
    let registry = Stack::default_registry()
        .env("REGISTRY_TENANT_CALLS_PER_MINUTE", "1")
        .env("REGISTRY_TENANT_CALL_BURST", "3");
    let stack = Stack::start_with(registry).await;
    let health = stack.channel().await;
    let viewer = stack.channel_as("vic", "acme", &["viewer"]).await;
    let editor = stack.channel_as("eda", "acme", &["editor"]).await;
    let other_tenant = stack.channel_as("gil", "globex", &["viewer"]).await;
    let list = async |channel: &tests::auth::Authed| {
        pb::agent_service_client::AgentServiceClient::new(channel.clone())
            .list_agents(pb::ListAgentsRequest::default())
            .await
    };

    // Refused by role: not counted.
    for _ in 0..5 {
        let denied = pb::provider_service_client::ProviderServiceClient::new(viewer.clone())
            .create_provider(provider_with_key("p", "sk-denied"))
            .await
            .expect_err("a viewer creates no provider");
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    }
    for call in 0..3 {
        list(&viewer)
            .await
            .unwrap_or_else(|e| panic!("call {call}: {e:?}"));
    }
    let over = list(&viewer).await.expect_err("the fourth call");
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    let info = over.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "TENANT_RATE_LIMITED");
    let retry = over.get_details_retry_info().expect("RetryInfo");
    let delay = retry.retry_delay.expect("a delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(60),
        "one call a minute comes back within a minute: {delay:?}"
    );
    let quota = over.get_details_quota_failure().expect("QuotaFailure");
    assert_eq!(quota.violations[0].subject, "tenant");

    // Another caller of the tenant shares its rate; a refused write
    // writes nothing.
    let refused = pb::agent_service_client::AgentServiceClient::new(editor.clone())
        .create_agent(pb::CreateAgentRequest {
            agent: Some(agent("late")),
            ..Default::default()
        })
        .await
        .expect_err("the tenant's rate is used up");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(stack.database.count("SELECT COUNT(*) FROM agents").await, 0);

    // Another tenant, and health, are unaffected.
    let theirs = list(&other_tenant).await.expect("globex has its own rate");
    assert_eq!(theirs.into_inner().total_size, 0);
    tests::health::wait_for_status(health, "", ServingStatus::Serving).await;
    stack.finish().await;
}

/// Health and reflection answer anyone who can connect, with no token, so
/// what they decode and hold is bounded on both servers: a health request
/// past 1 KiB and a reflection request past 16 KiB are refused before
/// they are decoded, and a service name past 256 bytes is refused. Before,
/// tonic's 4 MiB default let a few connections of Health/Watch streams,
/// each naming a 4 MB service, hold over a gigabyte.
#[tokio::test]
async fn unauthenticated_health_and_reflection_requests_are_bounded() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let stack = Stack::start().await;
    let crypto = stack.crypto.as_ref().expect("crypto-service");
    for process in [&stack.registry, crypto] {
        let channel = process.channel().await;
        let mut health = HealthClient::new(channel.clone());
        let named = |length: usize| HealthCheckRequest {
            service: "s".repeat(length),
        };
        let status = health.watch(named(300)).await.expect_err("a 300-byte name");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let status = health.check(named(300)).await.expect_err("a 300-byte name");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        // Past the request limit (far below tonic's 4 MiB default): refused
        // unread, whatever the call.
        let status = match health.watch(named(64 * 1024)).await {
            Ok(stream) => stream
                .into_inner()
                .message()
                .await
                .expect_err("a 64 KiB request"),
            Err(status) => status,
        };
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        let status = tests::raw::unary(
            channel.clone(),
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            tonic::Request::new(vec![0x0a; 32 * 1024]),
        )
        .await
        .expect_err("a 32 KiB reflection request");
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        // A name of ordinary length is still answered (SERVING, or not yet
        // while the registry's first dependency check runs).
        let answer = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("the server's status")
            .into_inner();
        assert!(
            matches!(
                answer.status(),
                ServingStatus::Serving | ServingStatus::NotServing
            ),
            "{answer:?}"
        );
    }
    stack.finish().await;
}

/// A client that connects and sends nothing, or only the first byte of a
/// preface, is closed after the first-bytes deadline (10 s), on both
/// servers: before, such connections stayed open for good, and enough of
/// them would use up the process's file descriptors. A client that has
/// sent its preface is left to the protocol's own timeouts.
#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_first_bytes_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start().await;
    let crypto = stack
        .crypto
        .as_ref()
        .expect("crypto-service")
        .address
        .clone();
    for address in [stack.registry.address.clone(), crypto] {
        let opened = Instant::now();
        let mut silent = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connect");
        let mut dribbled = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connect");
        dribbled.write_all(b"P").await.expect("one byte");
        let mut spoken = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connect");
        // The HTTP/2 preface and an empty SETTINGS frame.
        spoken
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .expect("preface");
        // Whatever the server sends first (an HTTP/2 server its SETTINGS),
        // then the end.
        let mut sent = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(60), silent.read_to_end(&mut sent))
            .await
            .expect("closed within a minute");
        let waited = opened.elapsed();
        assert!(
            sent.len() < 100,
            "{address}: {} bytes to a silent client ({ended:?})",
            sent.len()
        );
        assert!(
            waited >= Duration::from_secs(9),
            "{address}: closed after {waited:?}, before the deadline"
        );
        let mut sent = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(10), dribbled.read_to_end(&mut sent))
            .await
            .expect("the one-byte client closed by the same deadline");
        assert!(
            sent.len() < 100,
            "{address}: {} bytes to a one-byte client ({ended:?})",
            sent.len()
        );
        // The one that spoke is still open: the server's SETTINGS are there
        // to read, then nothing, and no end.
        let mut answer = vec![0u8; 4096];
        let got = spoken
            .read(&mut answer)
            .await
            .expect("the server's settings");
        assert!(got > 0, "{address}: nothing from the server");
        let open = tokio::time::timeout(Duration::from_millis(200), spoken.read(&mut answer)).await;
        assert!(
            open.is_err() || matches!(open, Ok(Ok(n)) if n > 0),
            "{address}: the connection that spoke was closed: {open:?}"
        );
    }
    stack.finish().await;
}
