//! "What ran last Tuesday": each agent version records the provider (and
//! the provider's version) it was written against, and resolving that
//! agent version reproduces the provider's configuration of that time —
//! with the provider's current key, never an older one, and never sent to
//! a destination the key was not stored for.

use prost_types::FieldMask;
use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use proto::v1::provider_service_client::ProviderServiceClient;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use tests::auth::Authed;
use tests::stack::Stack;
use tonic::Code;
use tonic_types::StatusExt;

struct Clients {
    agents: AgentServiceClient<Authed>,
    providers: ProviderServiceClient<Authed>,
    runtime: RuntimeServiceClient<Authed>,
}

impl Clients {
    async fn resolve(
        &mut self,
        id: &str,
        version: Option<i64>,
    ) -> Result<pb::ResolvedAgent, tonic::Status> {
        self.runtime
            .resolve_agent(pb::ResolveAgentRequest {
                agent_id: id.to_owned(),
                version_number: version,
                if_none_match: String::new(),
                label: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    async fn update_provider(&mut self, provider: pb::Provider, paths: &[&str]) -> pb::Provider {
        self.providers
            .update_provider(pb::UpdateProviderRequest {
                provider: Some(provider),
                update_mask: Some(FieldMask {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                }),
                change_description: String::new(),
                revoke_replaced_key: false,
                ..Default::default()
            })
            .await
            .expect("update provider")
            .into_inner()
    }

    async fn create_provider(&mut self, name: &str, key: &str) -> pb::Provider {
        self.providers
            .create_provider(pb::CreateProviderRequest {
                provider: Some(pb::Provider {
                    name: name.to_owned(),
                    provider_type: pb::ProviderType::Openai.into(),
                    model_name: "gpt-4".to_owned(),
                    api_key: key.to_owned(),
                    is_default: true,
                    ..Default::default()
                }),
                change_description: String::new(),
                ..Default::default()
            })
            .await
            .expect("create provider")
            .into_inner()
    }

    async fn create_agent(&mut self, name: &str, provider_id: Option<&str>) -> pb::Agent {
        self.agents
            .create_agent(pb::CreateAgentRequest {
                agent: Some(pb::Agent {
                    name: name.to_owned(),
                    role: "Analyst".to_owned(),
                    goal: "Analyze".to_owned(),
                    llm_provider_id: provider_id.map(str::to_owned),
                    ..Default::default()
                }),
                change_description: String::new(),
                ..Default::default()
            })
            .await
            .expect("create agent")
            .into_inner()
    }
}

/// The model and the provider version a resolution ran on, and its key.
fn ran_on(resolved: &pb::ResolvedAgent) -> (String, i64, String) {
    let provider = resolved.provider.as_ref().expect("provider");
    assert_eq!(provider.version, resolved.provider_version);
    (
        provider.model_name.clone(),
        resolved.provider_version,
        resolved.api_key.clone(),
    )
}

#[tokio::test]
async fn an_old_agent_version_resolves_with_the_provider_of_its_time_and_the_current_key() {
    let stack = Stack::start().await;
    let channel = stack
        .channel_as("alice", "acme", &["admin", "runtime"])
        .await;
    let mut c = Clients {
        agents: AgentServiceClient::new(channel.clone()),
        providers: ProviderServiceClient::new(channel.clone()),
        runtime: RuntimeServiceClient::new(channel),
    };
    let provider = c.create_provider("openai", "sk-resolve-one").await;
    let agent = c.create_agent("analyst", Some(&provider.id)).await;

    // Provider v2 changes the model; agent v2 is written against it.
    c.update_provider(
        pb::Provider {
            id: provider.id.clone(),
            model_name: "gpt-4o".to_owned(),
            ..Default::default()
        },
        &["model_name"],
    )
    .await;
    c.agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: agent.id.clone(),
                goal: "Analyze faster".to_owned(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["goal".to_owned()],
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("agent v2");

    let v1 = c.resolve(&agent.id, Some(1)).await.expect("v1");
    assert_eq!(
        ran_on(&v1),
        ("gpt-4".to_owned(), 1, "sk-resolve-one".to_owned())
    );
    assert_eq!(
        v1.effective.expect("effective").model_name.as_deref(),
        Some("gpt-4")
    );
    let v2 = c.resolve(&agent.id, Some(2)).await.expect("v2");
    assert_eq!(
        ran_on(&v2),
        ("gpt-4o".to_owned(), 2, "sk-resolve-one".to_owned())
    );
    let now = c.resolve(&agent.id, None).await.expect("current");
    assert_eq!(
        ran_on(&now),
        ("gpt-4o".to_owned(), 2, "sk-resolve-one".to_owned())
    );

    // A new key (provider v3): old agent versions get it, never the old one.
    c.update_provider(
        pb::Provider {
            id: provider.id.clone(),
            api_key: "sk-resolve-two".to_owned(),
            ..Default::default()
        },
        &["api_key"],
    )
    .await;
    let v1 = c.resolve(&agent.id, Some(1)).await.expect("v1 again");
    assert_eq!(
        ran_on(&v1),
        ("gpt-4".to_owned(), 1, "sk-resolve-two".to_owned())
    );

    // The provider moves to another destination (with a key for it): the
    // current key is for that destination only, so agent versions written
    // against the old one are refused, and the current one runs there.
    c.update_provider(
        pb::Provider {
            id: provider.id.clone(),
            base_url: "https://proxy.example.com/v1".to_owned(),
            api_key: "sk-resolve-three".to_owned(),
            ..Default::default()
        },
        &["base_url", "api_key"],
    )
    .await;
    for version in [1, 2] {
        let status = c
            .resolve(&agent.id, Some(version))
            .await
            .expect_err("the old destination is refused");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        let reason = status.get_details_error_info().map(|info| info.reason);
        assert_eq!(reason.as_deref(), Some("DESTINATION_CHANGED"));
        assert!(!status.message().contains("sk-resolve"));
    }
    let now = c.resolve(&agent.id, None).await.expect("current");
    assert_eq!(now.api_key, "sk-resolve-three");
    assert_eq!(
        now.provider.expect("provider").base_url,
        "https://proxy.example.com/v1"
    );

    // An agent without a provider runs on the tenant's default: its
    // version records which one. After the default moves, the pinned
    // version still resolves against the provider it was written with; the
    // floating one against the new default.
    let floating = c.create_agent("floating", None).await;
    let second = c.create_provider("second", "sk-resolve-four").await;
    let pinned = c.resolve(&floating.id, Some(1)).await.expect("pinned");
    let pinned_provider = pinned.provider.expect("provider");
    assert_eq!(pinned_provider.id, provider.id);
    assert_eq!(pinned.api_key, "sk-resolve-three");
    let current = c.resolve(&floating.id, None).await.expect("floating");
    assert_eq!(current.provider.expect("provider").id, second.id);
    assert_eq!(current.api_key, "sk-resolve-four");

    let logs = stack.finish().await;
    assert!(!logs.contains("sk-resolve"), "a key in the logs");
}
