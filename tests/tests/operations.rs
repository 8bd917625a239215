//! The pair as operators and meshes see it: readiness that follows the
//! dependencies, liveness, graceful shutdown with calls in flight, metrics,
//! and one trace across both services.

use std::time::Duration;

use proto::v1 as pb;
use sea_orm::{ConnectionTrait, Database, TransactionTrait};
use tests::health::{check, wait_for_status};
use tests::stack::{Stack, TestDatabase, crypto_on_socket, start_registry_on_crypto_socket};
use tests::{Launch, auth, http_get, start_crypto};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn readiness_follows_crypto_service_down_and_back_without_a_registry_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("crypto.sock");
    let crypto = start_crypto(crypto_on_socket(&socket)).await;
    let database = TestDatabase::fresh().await;
    let registry = start_registry_on_crypto_socket(&database, &socket).await;
    let channel = registry.channel().await;
    wait_for_status(channel.clone(), "", ServingStatus::Serving).await;
    assert_eq!(
        check(channel.clone(), "agentregistry.v1.AgentService").await,
        ServingStatus::Serving
    );

    crypto.kill().await;
    wait_for_status(channel.clone(), "", ServingStatus::NotServing).await;
    assert_eq!(
        check(channel.clone(), "agentregistry.v1.ProviderService").await,
        ServingStatus::NotServing
    );
    assert_eq!(
        check(channel.clone(), "liveness").await,
        ServingStatus::Serving,
        "still alive"
    );

    let token = auth::token("ops", "acme", &["admin"]);
    let mut providers = pb::provider_service_client::ProviderServiceClient::new(auth::authed(
        channel.clone(),
        auth::Bearer::new(&token),
    ));
    let request = || pb::CreateProviderRequest {
        provider: Some(pb::Provider {
            name: "after-outage".into(),
            provider_type: pb::ProviderType::Openai.into(),
            model_name: "gpt-4".into(),
            api_key: "sk-outage-0001".into(),
            ..Default::default()
        }),
        change_description: String::new(),
        ..Default::default()
    };
    let status = providers
        .create_provider(request())
        .await
        .expect_err("crypto is down");
    assert_eq!(status.code(), Code::Unavailable);

    let _crypto = start_crypto(crypto_on_socket(&socket)).await;
    wait_for_status(channel.clone(), "", ServingStatus::Serving).await;
    let created = providers
        .create_provider(request())
        .await
        .expect("works again")
        .into_inner();
    assert!(created.api_key_set);
    registry.terminate().await;
    database.drop_database().await;
}

#[tokio::test]
async fn sigterm_lets_in_flight_calls_finish_refuses_new_ones_and_exits_zero() {
    let registry_launch = Stack::default_registry()
        .arg("--metrics-listen")
        .arg("127.0.0.1:0")
        .arg("--drain-seconds")
        .arg("30")
        .env("DATABASE_TIMEOUT_SECONDS", "60");
    let stack = Stack::launch(Launch::default(), registry_launch).await;
    let metrics = stack
        .registry
        .log_field("metrics serving", "listen")
        .expect("metrics address");
    let channel = stack.channel_as("ops", "acme", &["editor"]).await;
    let mut agents = pb::agent_service_client::AgentServiceClient::new(channel);
    let agent = agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: "draining".into(),
                role: "r".into(),
                goal: "g".into(),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();

    // Hold a lock the updates need (SQLite's write lock, or the agent's row
    // on PostgreSQL) so they wait inside the registry.
    let db = Database::connect(stack.database.url())
        .await
        .expect("connect");
    let lock = db
        .begin_with_options(sea_orm::TransactionOptions {
            sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await
        .expect("write lock");
    if stack.database.is_postgres() {
        lock.execute_unprepared(&format!(
            "SELECT id FROM agents WHERE id = '{}' FOR UPDATE",
            agent.id
        ))
        .await
        .expect("row lock");
    }
    let mut in_flight = Vec::new();
    for i in 0..4 {
        let mut agents = agents.clone();
        let id = agent.id.clone();
        in_flight.push(tokio::spawn(async move {
            agents
                .update_agent(pb::UpdateAgentRequest {
                    agent: Some(pb::Agent {
                        id,
                        goal: format!("goal {i}"),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["goal".into()],
                    }),
                    change_description: String::new(),
                    ..Default::default()
                })
                .await
        }));
    }
    let gauge = r#"grpc_server_in_flight{grpc_type="unary",grpc_service="agentregistry.v1.AgentService",grpc_method="UpdateAgent"} 4"#;
    let seen = tokio::time::timeout(DEADLINE, async {
        while !http_get(&metrics, "/metrics").await.contains(gauge) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(seen.is_ok(), "four updates never showed as in flight");

    stack.registry.signal("TERM");
    let address = stack.registry.address.clone();
    let refused = tokio::time::timeout(DEADLINE, async {
        loop {
            let endpoint =
                tonic::transport::Endpoint::from_shared(format!("http://{address}")).expect("url");
            if endpoint.connect().await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "new connections are refused while draining"
    );

    lock.rollback().await.expect("release the lock");
    for call in in_flight {
        let updated = call
            .await
            .expect("task")
            .expect("the in-flight update completes");
        assert!(updated.into_inner().version >= 2);
    }
    let (status, output) = stack.registry.wait().await;
    assert!(status.success(), "exit {status:?}\n{output}");
    assert!(output.contains("registry-service stopped"));
    // An orderly stop is not an error: alerts on error lines must not fire
    // at every deploy.
    let errors: Vec<&str> = output
        .lines()
        .filter(|line| line.contains(r#""level":"ERROR""#))
        .collect();
    assert!(
        errors.is_empty(),
        "errors logged by a graceful stop: {errors:#?}"
    );
    drop(db);
    if let Some(crypto) = stack.crypto {
        crypto.terminate().await;
    }
    stack.database.drop_database().await;
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_code_with_latency_and_dependencies() {
    let metrics_flag = |launch: Launch| launch.arg("--metrics-listen").arg("127.0.0.1:0");
    let stack = Stack::launch(
        metrics_flag(Launch::default()),
        metrics_flag(Stack::default_registry()),
    )
    .await;
    // Ready means the registry has written its key canary (one Encrypt), so
    // the counts below are exact.
    wait_for_status(stack.channel().await, "", ServingStatus::Serving).await;
    let channel = stack.channel_as("ops", "acme", &["admin"]).await;
    let mut providers = pb::provider_service_client::ProviderServiceClient::new(channel);
    for i in 0..3 {
        providers
            .create_provider(pb::CreateProviderRequest {
                provider: Some(pb::Provider {
                    name: format!("metered-{i}"),
                    provider_type: pb::ProviderType::Openai.into(),
                    model_name: "gpt-4".into(),
                    api_key: format!("sk-metered-{i}"),
                    ..Default::default()
                }),
                change_description: String::new(),
                ..Default::default()
            })
            .await
            .expect("create");
    }
    let missing = providers
        .get_provider(pb::GetProviderRequest {
            id: "01900000-0000-7000-8000-000000000000".into(),
            show_deleted: false,
        })
        .await;
    assert_eq!(missing.expect_err("missing").code(), Code::NotFound);
    let mut agents = pb::agent_service_client::AgentServiceClient::new(
        stack.channel_as("ops", "acme", &["admin"]).await,
    );
    agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: "metered".into(),
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
    // One agent write: on SQLite a group commit of one; PostgreSQL has none.
    let groups = if stack.database.is_postgres() { 0 } else { 1 };

    let registry_metrics = stack
        .registry
        .log_field("metrics serving", "listen")
        .expect("registry metrics");
    let text = http_get(&registry_metrics, "/metrics").await;
    for series in [
        r#"grpc_server_handled_total{grpc_type="unary",grpc_service="agentregistry.v1.ProviderService",grpc_method="CreateProvider",grpc_code="OK"} 3"#,
        r#"grpc_server_handled_total{grpc_type="unary",grpc_service="agentregistry.v1.ProviderService",grpc_method="GetProvider",grpc_code="NotFound"} 1"#,
        r#"grpc_server_started_total{grpc_type="unary",grpc_service="agentregistry.v1.ProviderService",grpc_method="CreateProvider"} 3"#,
        r#"grpc_server_handling_seconds_count{grpc_type="unary",grpc_service="agentregistry.v1.ProviderService",grpc_method="CreateProvider"} 3"#,
        r#"grpc_server_handling_seconds_bucket{grpc_type="unary",grpc_service="agentregistry.v1.ProviderService",grpc_method="CreateProvider",le="60"} 3"#,
        r#"grpc_client_handled_total{grpc_type="unary",grpc_service="agentregistry.crypto.v1.CryptoService",grpc_method="Encrypt",grpc_code="OK"} 4"#,
        r#"grpc_client_handling_seconds_bucket{grpc_type="unary",grpc_service="agentregistry.crypto.v1.CryptoService",grpc_method="Encrypt",le="#,
        r#"registry_dependency_up{dependency="database"} 1"#,
        r#"registry_db_pool_connections{state="idle"}"#,
        &format!("registry_sqlite_group_commit_writes_count {groups}\n"),
        &format!(r#"registry_sqlite_group_commit_writes_bucket{{le="1"}} {groups}"#),
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    let crypto_metrics = stack
        .crypto
        .as_ref()
        .and_then(|c| c.log_field("metrics serving", "listen"))
        .expect("crypto metrics");
    let text = http_get(&crypto_metrics, "/metrics").await;
    assert!(
        text.contains(r#"grpc_server_handled_total{grpc_type="unary",grpc_service="agentregistry.crypto.v1.CryptoService",grpc_method="Encrypt",grpc_code="OK"} 4"#),
        "{text}"
    );
    stack.finish().await;
}

/// A protective limit of zero would switch the protection off (no call
/// admitted, or a deadline of nothing): both servers refuse it when they
/// start, naming the setting, instead of quietly raising it.
#[tokio::test]
async fn grpc_limits_below_their_minimum_stop_both_servers_at_start() {
    for binary in ["registry-service", "crypto-service"] {
        for setting in [
            "GRPC_REQUEST_TIMEOUT_SECONDS",
            "GRPC_CONCURRENCY_PER_CONNECTION",
            "GRPC_MAX_CONCURRENT_STREAMS",
            "GRPC_KEEPALIVE_TIMEOUT_SECONDS",
        ] {
            let launch = Launch::default().env(setting, "0");
            let (status, output) =
                tests::Process::run_to_exit(&tests::binary(binary), launch).await;
            assert!(!status.success(), "{binary} started with {setting}=0");
            let flag = setting
                .trim_start_matches("GRPC_")
                .to_lowercase()
                .replace('_', "-");
            assert!(
                output.contains(&format!("--{flag}")) && output.contains("'0'"),
                "{binary}: {setting}=0 is refused by name: {output}"
            );
        }
    }
}
