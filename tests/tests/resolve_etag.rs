//! Cheap re-resolution: a runtime that sends the etag of its last
//! ResolveAgent answer gets `not_modified`, with no key and no call to
//! crypto-service (its own metrics count the Decrypts), for as long as
//! nothing the answer depends on changed; a new key, a new agent version,
//! a new default provider each give a full answer with a new etag.

use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use proto::v1::provider_service_client::ProviderServiceClient;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use tests::auth::Authed;
use tests::stack::Stack;
use tests::{Launch, http_get};
use tonic::Code;

/// Decrypts crypto-service has answered, from its `/metrics`.
async fn decrypts(metrics: &str) -> u64 {
    let body = http_get(metrics, "/metrics").await;
    let series = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="agentregistry.crypto.v1.CryptoService",grpc_method="Decrypt",grpc_code="OK"}"#;
    tests::metric_value(&body, series)
}

async fn resolve(
    runtime: &mut RuntimeServiceClient<Authed>,
    agent_id: &str,
    if_none_match: &str,
) -> pb::ResolvedAgent {
    runtime
        .resolve_agent(pb::ResolveAgentRequest {
            agent_id: agent_id.to_owned(),
            version_number: None,
            if_none_match: if_none_match.to_owned(),
            label: String::new(),
        })
        .await
        .expect("resolve")
        .into_inner()
}

fn provider(name: &str, key: &str, is_default: bool) -> pb::Provider {
    pb::Provider {
        name: name.to_owned(),
        provider_type: pb::ProviderType::Openai.into(),
        model_name: "gpt-4o".to_owned(),
        api_key: key.to_owned(),
        is_default,
        ..Default::default()
    }
}

#[tokio::test]
async fn an_unchanged_resolution_is_not_modified_without_a_key_or_a_decrypt() {
    // The key canary is written (Encrypt) at start and checked (Decrypt)
    // only an hour later, so every Decrypt counted below is a
    // ResolveAgent's.
    let crypto = Launch::default().arg("--metrics-listen").arg("127.0.0.1:0");
    let registry = Stack::default_registry().env("REGISTRY_HEALTH_INTERVAL_SECONDS", "3600");
    let stack = Stack::launch(crypto, registry).await;
    let metrics = stack
        .crypto
        .as_ref()
        .and_then(|c| c.log_field("metrics serving", "listen"))
        .expect("crypto metrics");
    let channel = stack
        .channel_as("alice", "acme", &["admin", "runtime"])
        .await;
    let mut providers = ProviderServiceClient::new(channel.clone());
    let mut agents = AgentServiceClient::new(channel.clone());
    let mut runtime = RuntimeServiceClient::new(channel);

    let first = providers
        .create_provider(pb::CreateProviderRequest {
            provider: Some(provider("openai", "sk-first", true)),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("provider")
        .into_inner();
    let agent = agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: "analyst".to_owned(),
                role: "Analyst".to_owned(),
                goal: "Analyze".to_owned(),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("agent")
        .into_inner();
    let full = resolve(&mut runtime, &agent.id, "").await;
    assert!(!full.not_modified);
    assert_eq!(full.api_key, "sk-first");
    assert!(!full.etag.is_empty());
    let after_full = decrypts(&metrics).await;
    assert_eq!(after_full, 1, "the full answer's one Decrypt is counted");

    for _ in 0..3 {
        let cached = resolve(&mut runtime, &agent.id, &full.etag).await;
        assert!(cached.not_modified, "{cached:?}");
        assert_eq!(cached.etag, full.etag);
        assert_eq!(cached.api_key, "", "no key in a not_modified answer");
        assert_eq!(cached.agent, None);
        assert_eq!(cached.provider, None);
        assert_eq!(cached.effective, None);
        assert_eq!(
            (cached.agent_version, cached.provider_version),
            (full.agent_version, full.provider_version)
        );
    }
    assert_eq!(
        decrypts(&metrics).await,
        after_full,
        "not_modified answers call crypto-service for nothing"
    );

    // Another etag (stale, foreign or made up) gets the full answer.
    let other = resolve(&mut runtime, &agent.id, "\"1.x.1.1\"").await;
    assert!(!other.not_modified);
    assert_eq!(other.api_key, "sk-first");
    assert_eq!(other.etag, full.etag);

    // A new key: a full answer with the new key and a new etag.
    let mut with_new_key = provider("openai", "sk-second", true);
    with_new_key.id = first.id.clone();
    providers
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(with_new_key),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["api_key".to_owned()],
            }),
            change_description: String::new(),
            revoke_replaced_key: false,
            ..Default::default()
        })
        .await
        .expect("new key");
    let rekeyed = resolve(&mut runtime, &agent.id, &full.etag).await;
    assert!(!rekeyed.not_modified);
    assert_eq!(rekeyed.api_key, "sk-second");
    assert_ne!(rekeyed.etag, full.etag);

    // A new agent version: a full answer.
    agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: agent.id.clone(),
                goal: "Analyze faster".to_owned(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["goal".to_owned()],
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("agent update");
    let updated = resolve(&mut runtime, &agent.id, &rekeyed.etag).await;
    assert!(!updated.not_modified);
    assert_eq!(updated.agent.expect("agent").goal, "Analyze faster");
    assert_ne!(updated.etag, rekeyed.etag);

    // The tenant's default moves to another provider: the agent (which has
    // none of its own) now runs elsewhere, and says so.
    let second = providers
        .create_provider(pb::CreateProviderRequest {
            provider: Some(provider("anthropic", "sk-other", true)),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("second provider")
        .into_inner();
    let moved = resolve(&mut runtime, &agent.id, &updated.etag).await;
    assert!(!moved.not_modified);
    assert_eq!(moved.provider.expect("provider").id, second.id);
    assert_eq!(moved.api_key, "sk-other");

    // An etag longer than any the registry issues is refused unread.
    let status = runtime
        .resolve_agent(pb::ResolveAgentRequest {
            agent_id: agent.id.clone(),
            version_number: None,
            if_none_match: "x".repeat(257),
            label: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);

    let logs = stack.finish().await;
    for key in ["sk-first", "sk-second", "sk-other"] {
        assert!(!logs.contains(key), "{key} in the registry's logs");
    }
}
