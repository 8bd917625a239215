//! Authentication, RBAC and tenant isolation on every registry call, end to
//! end: the real binaries, real tokens, and the method list read from the
//! proto descriptors (not typed by hand).

use prost::Message;
use prost_types::FieldMask;
use proto::v1 as pb;
use registry_service::auth::{Role, allowed_roles};
use tests::auth::{self, STACK_AUDIENCE, STACK_ISSUER};
use tests::stack::Stack;
use tonic::Code;
use tonic::transport::Channel;

/// Every method of the public `agentregistry.v1` services, as
/// `/package.Service/Method`, from the compiled descriptors.
fn public_methods() -> Vec<String> {
    let set =
        prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut methods = Vec::new();
    for file in set
        .file
        .iter()
        .filter(|f| f.package() == "agentregistry.v1")
    {
        for service in &file.service {
            for method in &service.method {
                methods.push(format!(
                    "/agentregistry.v1.{}/{}",
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    methods.sort();
    methods
}

#[test]
fn every_proto_method_is_in_the_role_table() {
    let methods = public_methods();
    assert_eq!(methods.len(), 39, "{methods:?}");
    for method in &methods {
        assert!(
            allowed_roles(method).is_some(),
            "{method} is missing from the role table"
        );
    }
    assert!(
        allowed_roles("/agentregistry.v1.AgentService/Unknown").is_none(),
        "unknown methods are denied"
    );
}

/// The public methods that answer with a stream.
const STREAMING: [&str; 1] = ["WatchChanges"];

async fn call(channel: &Channel, method: &str, payload: Vec<u8>, bearer: Option<&str>) -> Code {
    let mut request = tonic::Request::new(payload);
    if let Some(token) = bearer {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
    }
    // A stream answers its first message (WatchChanges: SYNCED) or fails.
    let answer = if STREAMING.contains(&method.rsplit('/').next().unwrap_or_default()) {
        tests::raw::first_streamed(channel.clone(), method, request)
            .await
            .map(|_| ())
    } else {
        tests::raw::unary(channel.clone(), method, request)
            .await
            .map(|_| ())
    };
    match answer {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Ids of resources of tenant `acme` that the requests name.
struct Fixture {
    agent_id: String,
    provider_id: String,
}

async fn fixture(stack: &Stack, tag: &str) -> Fixture {
    let channel = stack.channel_as("root", "acme", &["admin"]).await;
    let mut providers = pb::provider_service_client::ProviderServiceClient::new(channel.clone());
    let mut agents = pb::agent_service_client::AgentServiceClient::new(channel);
    let provider = providers
        .create_provider(pb::CreateProviderRequest {
            provider: Some(provider_input(&format!("p-{tag}"))),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("fixture provider")
        .into_inner();
    let agent = agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(agent_input(&format!("a-{tag}"), Some(&provider.id))),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("fixture agent")
        .into_inner();
    Fixture {
        agent_id: agent.id,
        provider_id: provider.id,
    }
}

fn provider_input(name: &str) -> pb::Provider {
    pb::Provider {
        name: name.to_owned(),
        provider_type: pb::ProviderType::Anthropic.into(),
        model_name: "claude".to_owned(),
        api_key: "sk-fixture-key-0000".to_owned(),
        ..Default::default()
    }
}

fn agent_input(name: &str, provider_id: Option<&str>) -> pb::Agent {
    pb::Agent {
        name: name.to_owned(),
        role: "Researcher".to_owned(),
        goal: "Find things".to_owned(),
        llm_provider_id: provider_id.map(str::to_owned),
        ..Default::default()
    }
}

/// A meaningful request for `method` against `fixture`; panics for a
/// method it does not know, so a new proto method fails this test until
/// it is covered.
fn request_for(method: &str, f: &Fixture, tag: &str) -> Vec<u8> {
    let name = method.rsplit('/').next().unwrap_or_default();
    let mask = |path: &str| {
        Some(FieldMask {
            paths: vec![path.to_owned()],
        })
    };
    match name {
        "CreateAgent" => pb::CreateAgentRequest {
            agent: Some(agent_input(&format!("new-{tag}"), None)),
            change_description: String::new(),
            ..Default::default()
        }
        .encode_to_vec(),
        "GetAgent" => pb::GetAgentRequest {
            id: f.agent_id.clone(),
            show_deleted: false,
        }
        .encode_to_vec(),
        "ListAgents" => pb::ListAgentsRequest::default().encode_to_vec(),
        "UpdateAgent" => pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: f.agent_id.clone(),
                goal: format!("goal {tag}"),
                ..Default::default()
            }),
            update_mask: mask("goal"),
            change_description: String::new(),
            ..Default::default()
        }
        .encode_to_vec(),
        "DeleteAgent" => pb::DeleteAgentRequest {
            id: f.agent_id.clone(),
            etag: String::new(),
            ..Default::default()
        }
        .encode_to_vec(),
        // The fixture's agent is live: allowed callers get past the role
        // check to FAILED_PRECONDITION (NOT_DELETED).
        "UndeleteAgent" => pb::UndeleteAgentRequest {
            id: f.agent_id.clone(),
            etag: String::new(),
            ..Default::default()
        }
        .encode_to_vec(),
        "PurgeAgent" => pb::PurgeAgentRequest {
            id: f.agent_id.clone(),
            etag: String::new(),
            ..Default::default()
        }
        .encode_to_vec(),
        "ListAgentVersions" => pb::ListAgentVersionsRequest {
            agent_id: f.agent_id.clone(),
            ..Default::default()
        }
        .encode_to_vec(),
        "GetAgentVersion" => pb::GetAgentVersionRequest {
            agent_id: f.agent_id.clone(),
            version_number: 1,
        }
        .encode_to_vec(),
        "DiffAgentVersions" => pb::DiffAgentVersionsRequest {
            agent_id: f.agent_id.clone(),
            from_version: 1,
            to_version: 1,
        }
        .encode_to_vec(),
        "RollbackAgent" => pb::RollbackAgentRequest {
            agent_id: f.agent_id.clone(),
            version_number: 1,
            ..Default::default()
        }
        .encode_to_vec(),
        "CreateProvider" => pb::CreateProviderRequest {
            provider: Some(provider_input(&format!("new-{tag}"))),
            change_description: String::new(),
            ..Default::default()
        }
        .encode_to_vec(),
        "GetProvider" => pb::GetProviderRequest {
            id: f.provider_id.clone(),
            show_deleted: false,
        }
        .encode_to_vec(),
        "ListProviders" => pb::ListProvidersRequest::default().encode_to_vec(),
        "UpdateProvider" => pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                id: f.provider_id.clone(),
                model_name: format!("model-{tag}"),
                ..Default::default()
            }),
            update_mask: mask("model_name"),
            change_description: String::new(),
            revoke_replaced_key: false,
            ..Default::default()
        }
        .encode_to_vec(),
        "DeleteProvider" => pb::DeleteProviderRequest {
            provider_id: f.provider_id.clone(),
            etag: String::new(),
            ..Default::default()
        }
        .encode_to_vec(),
        "UndeleteProvider" => pb::UndeleteProviderRequest {
            provider_id: f.provider_id.clone(),
            etag: String::new(),
            ..Default::default()
        }
        .encode_to_vec(),
        "PurgeProvider" => pb::PurgeProviderRequest {
            provider_id: f.provider_id.clone(),
            etag: String::new(),
            ..Default::default()
        }
        .encode_to_vec(),
        "ListProviderVersions" => pb::ListProviderVersionsRequest {
            provider_id: f.provider_id.clone(),
            ..Default::default()
        }
        .encode_to_vec(),
        "GetProviderVersion" => pb::GetProviderVersionRequest {
            provider_id: f.provider_id.clone(),
            version_number: 1,
        }
        .encode_to_vec(),
        "DiffProviderVersions" => pb::DiffProviderVersionsRequest {
            provider_id: f.provider_id.clone(),
            from_version: 1,
            to_version: 1,
        }
        .encode_to_vec(),
        "RollbackProvider" => pb::RollbackProviderRequest {
            provider_id: f.provider_id.clone(),
            version_number: 1,
            ..Default::default()
        }
        .encode_to_vec(),
        "ResolveAgent" => pb::ResolveAgentRequest {
            agent_id: f.agent_id.clone(),
            version_number: None,
            if_none_match: String::new(),
            label: String::new(),
        }
        .encode_to_vec(),
        "RevokeProviderKey" => pb::RevokeProviderKeyRequest {
            provider_id: f.provider_id.clone(),
            revision: 1,
            reason: String::new(),
            ..Default::default()
        }
        .encode_to_vec(),
        "SetAgentLabel" => pb::SetAgentLabelRequest {
            agent_id: f.agent_id.clone(),
            label: "production".to_owned(),
            version_number: 1,
            ..Default::default()
        }
        .encode_to_vec(),
        "DeleteAgentLabel" => pb::DeleteAgentLabelRequest {
            agent_id: f.agent_id.clone(),
            label: "production".to_owned(),
            ..Default::default()
        }
        .encode_to_vec(),
        "ListAgentLabels" => pb::ListAgentLabelsRequest {
            agent_id: f.agent_id.clone(),
        }
        .encode_to_vec(),
        "ListAgentLabelHistory" => pb::ListAgentLabelHistoryRequest {
            agent_id: f.agent_id.clone(),
            ..Default::default()
        }
        .encode_to_vec(),
        "SetProviderLabel" => pb::SetProviderLabelRequest {
            provider_id: f.provider_id.clone(),
            label: "production".to_owned(),
            version_number: 1,
            ..Default::default()
        }
        .encode_to_vec(),
        "DeleteProviderLabel" => pb::DeleteProviderLabelRequest {
            provider_id: f.provider_id.clone(),
            label: "production".to_owned(),
            ..Default::default()
        }
        .encode_to_vec(),
        "ListProviderLabels" => pb::ListProviderLabelsRequest {
            provider_id: f.provider_id.clone(),
        }
        .encode_to_vec(),
        "ListProviderLabelHistory" => pb::ListProviderLabelHistoryRequest {
            provider_id: f.provider_id.clone(),
            ..Default::default()
        }
        .encode_to_vec(),
        "GetLabelPolicy" => pb::GetLabelPolicyRequest {}.encode_to_vec(),
        "UpdateLabelPolicy" => pb::UpdateLabelPolicyRequest {
            protected_labels: vec!["production".to_owned()],
            ..Default::default()
        }
        .encode_to_vec(),
        "GetKeyStatus" => pb::GetKeyStatusRequest {}.encode_to_vec(),
        "RewrapCredentials" => pb::RewrapCredentialsRequest {
            batch_size: 10,
            max_values: 0,
        }
        .encode_to_vec(),
        "RetireKeyVersion" => pb::RetireKeyVersionRequest { version: 99 }.encode_to_vec(),
        "WatchChanges" => pb::WatchChangesRequest::default().encode_to_vec(),
        "ListAuditEvents" => pb::ListAuditEventsRequest::default().encode_to_vec(),
        other => panic!("no request for {other}: add one to request_for"),
    }
}

/// Who calls, in the matrix.
#[derive(Debug, Clone, Copy)]
enum Identity {
    NoToken,
    Expired,
    BadSignature,
    WrongAudience,
    Role(Role),
    OtherTenant,
    /// The subject the stack lists as a platform operator, with that role.
    Operator,
    /// The same role claimed by a subject the stack does not list.
    UnlistedOperator,
}

fn bearer_for(identity: Identity) -> Option<String> {
    let claims = |tenant: &str, roles: &[&str], aud: &str, exp: u64| serde_json::json!({"sub": "matrix", "tenant": tenant, "roles": roles, "aud": aud, "iss": STACK_ISSUER, "iat": exp - 600, "exp": exp});
    let fresh = auth::now() + 600;
    match identity {
        Identity::NoToken => None,
        Identity::Expired => Some(auth::sign(&claims(
            "acme",
            &["admin", "runtime"],
            STACK_AUDIENCE,
            auth::now() - 3600,
        ))),
        Identity::BadSignature => Some(auth::sign_with(
            &claims("acme", &["admin", "runtime"], STACK_AUDIENCE, fresh),
            b"another-secret-of-sufficient-length-000000",
        )),
        Identity::WrongAudience => Some(auth::sign(&claims(
            "acme",
            &["admin", "runtime"],
            "someone-else",
            fresh,
        ))),
        Identity::Role(role) => Some(auth::sign(&claims(
            "acme",
            &[role.as_str()],
            STACK_AUDIENCE,
            fresh,
        ))),
        Identity::OtherTenant => Some(auth::sign(&claims(
            "globex",
            &["viewer", "editor", "admin", "runtime"],
            STACK_AUDIENCE,
            fresh,
        ))),
        Identity::Operator => Some(auth::token(
            auth::STACK_OPERATOR,
            "ops",
            &["platform-operator"],
        )),
        Identity::UnlistedOperator => Some(auth::sign(&claims(
            "acme",
            &["platform-operator"],
            STACK_AUDIENCE,
            fresh,
        ))),
    }
}

/// Who may call each public method, written out here from the contract
/// (the role comments of the .proto files), not read from the server's
/// table: readers view, editors change agents, admins change providers,
/// editors set labels of both (admins alone protected ones, and the label
/// policy), the runtime resolves, key counts for admins and operators, key
/// changes for operators alone, every tenant role watches its tenant.
const EXPECTED_ROLES: &[(&str, &[&str])] = &[
    ("CreateAgent", &["editor", "admin"]),
    ("GetAgent", &["viewer", "editor", "admin"]),
    ("ListAgents", &["viewer", "editor", "admin"]),
    ("UpdateAgent", &["editor", "admin"]),
    ("DeleteAgent", &["editor", "admin"]),
    ("UndeleteAgent", &["editor", "admin"]),
    ("PurgeAgent", &["admin"]),
    ("ListAgentVersions", &["viewer", "editor", "admin"]),
    ("GetAgentVersion", &["viewer", "editor", "admin"]),
    ("DiffAgentVersions", &["viewer", "editor", "admin"]),
    ("RollbackAgent", &["editor", "admin"]),
    ("SetAgentLabel", &["editor", "admin"]),
    ("DeleteAgentLabel", &["editor", "admin"]),
    ("ListAgentLabels", &["viewer", "editor", "admin"]),
    ("ListAgentLabelHistory", &["viewer", "editor", "admin"]),
    ("CreateProvider", &["admin"]),
    ("GetProvider", &["viewer", "editor", "admin"]),
    ("ListProviders", &["viewer", "editor", "admin"]),
    ("UpdateProvider", &["admin"]),
    ("DeleteProvider", &["admin"]),
    ("UndeleteProvider", &["admin"]),
    ("PurgeProvider", &["admin"]),
    ("ListProviderVersions", &["viewer", "editor", "admin"]),
    ("GetProviderVersion", &["viewer", "editor", "admin"]),
    ("DiffProviderVersions", &["viewer", "editor", "admin"]),
    ("RollbackProvider", &["admin"]),
    ("RevokeProviderKey", &["admin"]),
    ("SetProviderLabel", &["editor", "admin"]),
    ("DeleteProviderLabel", &["editor", "admin"]),
    ("ListProviderLabels", &["viewer", "editor", "admin"]),
    ("ListProviderLabelHistory", &["viewer", "editor", "admin"]),
    ("GetLabelPolicy", &["viewer", "editor", "admin"]),
    ("UpdateLabelPolicy", &["admin"]),
    ("ResolveAgent", &["runtime"]),
    ("GetKeyStatus", &["admin", "platform-operator"]),
    ("RewrapCredentials", &["platform-operator"]),
    ("RetireKeyVersion", &["platform-operator"]),
    ("WatchChanges", &["viewer", "editor", "admin", "runtime"]),
    ("ListAuditEvents", &["admin", "platform-operator"]),
];

/// The roles [`EXPECTED_ROLES`] allows for the method named `name`.
fn expected_roles(name: &str) -> &'static [&'static str] {
    EXPECTED_ROLES
        .iter()
        .find(|(method, _)| *method == name)
        .map(|(_, roles)| *roles)
        .unwrap_or_else(|| panic!("{name} is missing from EXPECTED_ROLES"))
}

/// The code the table says `identity` gets for `method`: `Some(code)` when
/// exact, `None` for "allowed past authentication and authorization".
fn expected(method: &str, identity: Identity) -> Option<Code> {
    let name = method.rsplit('/').next().unwrap_or_default();
    match identity {
        Identity::NoToken
        | Identity::Expired
        | Identity::BadSignature
        | Identity::WrongAudience => Some(Code::Unauthenticated),
        Identity::Role(role) => {
            let allowed = expected_roles(name).contains(&role.as_str());
            if allowed {
                None
            } else {
                Some(Code::PermissionDenied)
            }
        }
        // Key operations only, written out here rather than read from the
        // server's table.
        // (Retiring version 99, which the keyring lacks, gets past
        // authorization and fails on the keyring.)
        Identity::Operator if name == "RetireKeyVersion" => None,
        Identity::Operator if method.contains(".KeyService/") => Some(Code::Ok),
        // And every tenant's audit trail.
        Identity::Operator if name == "ListAuditEvents" => Some(Code::Ok),
        Identity::Operator | Identity::UnlistedOperator => Some(Code::PermissionDenied),
        // A tenant admin reads its own tenant's key counts; rewrap and
        // retire are the platform operator's alone.
        Identity::OtherTenant if name == "GetKeyStatus" => Some(Code::Ok),
        // Its own tenant's changes: a stream that opens.
        Identity::OtherTenant if name == "WatchChanges" => Some(Code::Ok),
        Identity::OtherTenant if method.contains(".KeyService/") => Some(Code::PermissionDenied),
        Identity::OtherTenant => {
            // Creates, the tenant-wide lists and the tenant's own label
            // policy answer; anything naming a resource of acme is
            // NOT_FOUND.
            let tenant_wide = matches!(
                name,
                "ListAgents"
                    | "ListProviders"
                    | "GetLabelPolicy"
                    | "UpdateLabelPolicy"
                    | "ListAuditEvents"
            );
            if name.starts_with("Create") || tenant_wide {
                Some(Code::Ok)
            } else {
                Some(Code::NotFound)
            }
        }
    }
}

#[tokio::test]
async fn every_method_for_every_identity_answers_as_the_role_table_says() {
    let stack = Stack::start().await;
    let channel = stack.channel().await;
    let identities = [
        Identity::NoToken,
        Identity::Expired,
        Identity::BadSignature,
        Identity::WrongAudience,
        Identity::Role(Role::Viewer),
        Identity::Role(Role::Editor),
        Identity::Role(Role::Admin),
        Identity::Role(Role::Runtime),
        Identity::OtherTenant,
        Identity::Operator,
        Identity::UnlistedOperator,
    ];
    let mut checked = 0;
    for (index, identity) in identities.into_iter().enumerate() {
        let bearer = bearer_for(identity);
        for method in public_methods() {
            // Fresh resources per call: deletes must not hide what follows.
            let tag = format!("{index}-{}", method.rsplit('/').next().unwrap_or_default());
            let fixture = fixture(&stack, &tag).await;
            let code = call(
                &channel,
                &method,
                request_for(&method, &fixture, &tag),
                bearer.as_deref(),
            )
            .await;
            match expected(&method, identity) {
                Some(want) => assert_eq!(code, want, "{method} as {identity:?}"),
                // Allowed: OK or a domain answer, never a failure of ours.
                None => assert!(
                    !matches!(
                        code,
                        Code::Unauthenticated
                            | Code::PermissionDenied
                            | Code::Internal
                            | Code::Unknown
                            | Code::Unimplemented
                    ),
                    "{method} as {identity:?} was refused or failed: {code:?}"
                ),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 11 * 39);
    let mut listed: Vec<&str> = EXPECTED_ROLES.iter().map(|(name, _)| *name).collect();
    let mut public: Vec<String> = public_methods()
        .iter()
        .map(|m| m.rsplit('/').next().unwrap_or_default().to_owned())
        .collect();
    listed.sort_unstable();
    public.sort_unstable();
    assert_eq!(
        listed, public,
        "EXPECTED_ROLES names every public method once"
    );
    stack.finish().await;
}

#[tokio::test]
async fn provider_rollback_is_admin_only_and_resolve_is_runtime_only() {
    let stack = Stack::start().await;
    let fixture = fixture(&stack, "rbac").await;
    let admin = stack.channel_as("ada", "acme", &["admin"]).await;
    let editor = stack.channel_as("eddie", "acme", &["editor"]).await;
    let runtime = stack.channel_as("rt", "acme", &["runtime"]).await;

    let mut as_admin = pb::provider_service_client::ProviderServiceClient::new(admin.clone());
    as_admin
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                id: fixture.provider_id.clone(),
                model_name: "claude-2".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["model_name".into()],
            }),
            change_description: String::new(),
            revoke_replaced_key: false,
            ..Default::default()
        })
        .await
        .expect("admin updates");
    let rollback = pb::RollbackProviderRequest {
        provider_id: fixture.provider_id.clone(),
        version_number: 1,
        ..Default::default()
    };
    let status = pb::provider_service_client::ProviderServiceClient::new(editor)
        .rollback_provider(rollback.clone())
        .await
        .expect_err("editor may not roll back providers");
    assert_eq!(status.code(), Code::PermissionDenied);
    let versions = stack
        .database
        .count(&format!(
            "SELECT COUNT(*) FROM provider_versions WHERE provider_id = '{}'",
            fixture.provider_id
        ))
        .await;
    assert_eq!(versions, 2, "the refused rollback wrote nothing");
    let rolled = as_admin
        .rollback_provider(rollback)
        .await
        .expect("admin rolls back")
        .into_inner();
    assert_eq!((rolled.version, rolled.model_name.as_str()), (3, "claude"));

    let resolve = pb::ResolveAgentRequest {
        agent_id: fixture.agent_id.clone(),
        version_number: None,
        if_none_match: String::new(),
        label: String::new(),
    };
    let status = pb::runtime_service_client::RuntimeServiceClient::new(admin)
        .resolve_agent(resolve.clone())
        .await
        .expect_err("admin may not resolve");
    assert_eq!(status.code(), Code::PermissionDenied);
    let resolved = pb::runtime_service_client::RuntimeServiceClient::new(runtime)
        .resolve_agent(resolve)
        .await
        .expect("runtime resolves")
        .into_inner();
    assert_eq!(resolved.api_key, "sk-fixture-key-0000");
    stack.finish().await;
}

fn not_found<T>(result: Result<tonic::Response<T>, tonic::Status>, what: &str) {
    match result {
        Ok(_) => panic!("{what} succeeded across tenants"),
        Err(status) => assert_eq!(status.code(), Code::NotFound, "{what}: {status:?}"),
    }
}

#[tokio::test]
async fn one_tenant_cannot_touch_another_tenants_resources() {
    let stack = Stack::start().await;
    let theirs = fixture(&stack, "a").await; // tenant acme
    let everything = &["viewer", "editor", "admin", "runtime"];
    let intruder = stack.channel_as("mallory", "globex", everything).await;
    let mut agents = pb::agent_service_client::AgentServiceClient::new(intruder.clone());
    let mut providers = pb::provider_service_client::ProviderServiceClient::new(intruder.clone());
    let mut runtime = pb::runtime_service_client::RuntimeServiceClient::new(intruder);
    let agent_id = theirs.agent_id.clone();
    let provider_id = theirs.provider_id.clone();
    let mask = || {
        Some(FieldMask {
            paths: vec!["goal".into()],
        })
    };

    not_found(
        agents
            .get_agent(pb::GetAgentRequest {
                id: agent_id.clone(),
                show_deleted: false,
            })
            .await,
        "get agent",
    );
    not_found(
        agents
            .list_agent_versions(pb::ListAgentVersionsRequest {
                agent_id: agent_id.clone(),
                ..Default::default()
            })
            .await,
        "list agent versions",
    );
    not_found(
        agents
            .diff_agent_versions(pb::DiffAgentVersionsRequest {
                agent_id: agent_id.clone(),
                from_version: 1,
                to_version: 1,
            })
            .await,
        "diff agent versions",
    );
    let update = pb::UpdateAgentRequest {
        agent: Some(pb::Agent {
            id: agent_id.clone(),
            goal: "pwned".into(),
            ..Default::default()
        }),
        update_mask: mask(),
        change_description: String::new(),
        ..Default::default()
    };
    not_found(agents.update_agent(update).await, "update agent");
    not_found(
        agents
            .rollback_agent(pb::RollbackAgentRequest {
                agent_id: agent_id.clone(),
                version_number: 1,
                ..Default::default()
            })
            .await,
        "rollback agent",
    );
    not_found(
        runtime
            .resolve_agent(pb::ResolveAgentRequest {
                agent_id: agent_id.clone(),
                version_number: None,
                if_none_match: String::new(),
                label: String::new(),
            })
            .await,
        "resolve agent",
    );
    not_found(
        agents
            .delete_agent(pb::DeleteAgentRequest {
                id: agent_id.clone(),
                etag: String::new(),
                ..Default::default()
            })
            .await,
        "delete agent",
    );
    not_found(
        providers
            .get_provider(pb::GetProviderRequest {
                id: provider_id.clone(),
                show_deleted: false,
            })
            .await,
        "get provider",
    );
    not_found(
        providers
            .rollback_provider(pb::RollbackProviderRequest {
                provider_id: provider_id.clone(),
                version_number: 1,
                ..Default::default()
            })
            .await,
        "rollback provider",
    );
    not_found(
        providers
            .delete_provider(pb::DeleteProviderRequest {
                provider_id: provider_id.clone(),
                etag: String::new(),
                ..Default::default()
            })
            .await,
        "delete provider",
    );

    let listed = agents
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        (listed.total_size, listed.agents.len()),
        (0, 0),
        "no other tenant's agents are listed"
    );
    let listed = providers
        .list_providers(pb::ListProvidersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.total_size, 0);

    // Assigning another tenant's provider is refused; the same names are free.
    let status = agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(agent_input("a-a", Some(&provider_id))),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("assign across tenants");
    assert_eq!(status.code(), Code::FailedPrecondition);
    agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(agent_input("a-a", None)),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("names are unique per tenant only");

    // The owner still sees everything unchanged.
    let owner = stack.channel_as("root", "acme", &["viewer"]).await;
    let agent = pb::agent_service_client::AgentServiceClient::new(owner)
        .get_agent(pb::GetAgentRequest {
            id: agent_id,
            show_deleted: false,
        })
        .await
        .expect("owner reads")
        .into_inner();
    assert_eq!((agent.version, agent.goal.as_str()), (1, "Find things"));
    stack.finish().await;
}

/// Two credentials on one call are ambiguous (which one does it act as?):
/// refused whichever comes first, while either alone is admitted.
#[tokio::test]
async fn two_authorization_headers_are_unauthenticated_in_either_order() {
    let stack = Stack::start().await;
    let channel = stack.channel().await;
    let viewer = auth::token("vera", "acme", &["viewer"]);
    let admin = auth::token("ada", "globex", &["admin"]);
    let list = |tokens: &[&str]| {
        let mut request = tonic::Request::new(pb::ListAgentsRequest::default().encode_to_vec());
        for token in tokens {
            request.metadata_mut().append(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
        }
        let channel = channel.clone();
        async move {
            tests::raw::unary(
                channel,
                "/agentregistry.v1.AgentService/ListAgents",
                request,
            )
            .await
            .map(|_| ())
            .map_err(|status| status.code())
        }
    };
    assert_eq!(list(&[&viewer]).await, Ok(()));
    assert_eq!(list(&[&admin]).await, Ok(()));
    assert_eq!(list(&[&viewer, &admin]).await, Err(Code::Unauthenticated));
    assert_eq!(list(&[&admin, &viewer]).await, Err(Code::Unauthenticated));
    assert_eq!(list(&[&viewer, &viewer]).await, Err(Code::Unauthenticated));
    stack.finish().await;
}

#[tokio::test]
async fn page_tokens_do_not_cross_tenants() {
    let stack = Stack::start().await;
    for i in 0..3 {
        fixture(&stack, &format!("page{i}")).await;
    }
    let acme = stack.channel_as("root", "acme", &["viewer"]).await;
    let page = pb::agent_service_client::AgentServiceClient::new(acme)
        .list_agents(pb::ListAgentsRequest {
            page_size: 1,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    assert!(!page.next_page_token.is_empty());
    let globex = stack.channel_as("mallory", "globex", &["viewer"]).await;
    let status = pb::agent_service_client::AgentServiceClient::new(globex)
        .list_agents(pb::ListAgentsRequest {
            page_size: 1,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .expect_err("another tenant's token");
    assert_eq!(status.code(), Code::InvalidArgument);
    stack.finish().await;
}

#[tokio::test]
async fn versions_record_the_subject_of_each_change() {
    let stack = Stack::start().await;
    let alice = stack.channel_as("alice", "acme", &["editor"]).await;
    let bob = stack.channel_as("bob", "acme", &["editor"]).await;
    let created = pb::agent_service_client::AgentServiceClient::new(alice)
        .create_agent(pb::CreateAgentRequest {
            agent: Some(agent_input("attributed", None)),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    let mut as_bob = pb::agent_service_client::AgentServiceClient::new(bob);
    let updated = as_bob
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: created.id.clone(),
                goal: "bob's goal".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["goal".into()],
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(
        (updated.created_by.as_str(), updated.updated_by.as_str()),
        ("alice", "bob")
    );
    let history = as_bob
        .list_agent_versions(pb::ListAgentVersionsRequest {
            agent_id: created.id,
            ..Default::default()
        })
        .await
        .expect("history")
        .into_inner();
    let by: Vec<&str> = history
        .versions
        .iter()
        .map(|v| v.changed_by.as_str())
        .collect();
    assert_eq!(by, ["bob", "alice"]);
    stack.finish().await;
}

#[tokio::test]
async fn unsigned_swapped_and_unknown_key_tokens_are_refused() {
    let stack = Stack::start().await;
    let channel = stack.channel().await;
    let method = "/agentregistry.v1.AgentService/ListAgents";
    let payload = pb::ListAgentsRequest::default().encode_to_vec();
    let claims = auth::claims("x", "acme", &["viewer"]);
    let b64 = |v: &serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    assert_eq!(
        call(&channel, method, payload.clone(), Some(&unsigned)).await,
        Code::Unauthenticated
    );

    // An RS256 token where the registry expects HS256.
    let rsa = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!(
        "../fixtures/jwt-rs256-test-private.pem"
    ))
    .expect("rsa key");
    let swapped = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &rsa,
    )
    .expect("sign");
    assert_eq!(
        call(&channel, method, payload.clone(), Some(&swapped)).await,
        Code::Unauthenticated
    );

    let valid = auth::sign(&claims);
    assert_eq!(
        call(&channel, method, payload.clone(), Some(&valid)).await,
        Code::Ok
    );
    let tampered = format!("{}x", valid);
    assert_eq!(
        call(&channel, method, payload.clone(), Some(&tampered)).await,
        Code::Unauthenticated
    );
    let no_tenant = auth::sign(
        &serde_json::json!({"sub": "x", "roles": ["viewer"], "aud": STACK_AUDIENCE, "iss": STACK_ISSUER, "iat": auth::now(), "exp": auth::now() + 600}),
    );
    assert_eq!(
        call(&channel, method, payload.clone(), Some(&no_tenant)).await,
        Code::Unauthenticated
    );

    // JSON text is UTF-8 with valid escapes (RFC 8259; RFC 7519 §7.2): a
    // member the registry does not read must be valid too, in the header and
    // in the claims. The same JSON with a valid string there passes.
    let header = |x: &[u8]| [br#"{"alg":"HS256","typ":"JWT","x":""#, x, br#""}"#].concat();
    let claims_start = format!(
        r#"{{"sub":"x","tenant":"acme","roles":["viewer"],"aud":"{STACK_AUDIENCE}","iss":"{STACK_ISSUER}","iat":{},"exp":{},"x":""#,
        auth::now(),
        auth::now() + 600
    );
    let claims = |x: &[u8]| [claims_start.as_bytes(), x, br#""}"#].concat();
    let valid: &[u8] = b"ok";
    for (what, header, claims, expected) in [
        ("valid", header(valid), claims(valid), Code::Ok),
        (
            "header not UTF-8",
            header(b"\xFF"),
            claims(valid),
            Code::Unauthenticated,
        ),
        (
            "claims not UTF-8",
            header(valid),
            claims(b"\xFF"),
            Code::Unauthenticated,
        ),
        (
            "header lone surrogate",
            header(br"\ud800"),
            claims(valid),
            Code::Unauthenticated,
        ),
        (
            "claims lone surrogate",
            header(valid),
            claims(br"\ud800"),
            Code::Unauthenticated,
        ),
        // RFC 7515 §4.1.11: critical extensions the registry does not
        // understand (it understands none).
        (
            "crit",
            br#"{"alg":"HS256","typ":"JWT","crit":["exp-ext"],"exp-ext":1}"#.to_vec(),
            claims(valid),
            Code::Unauthenticated,
        ),
    ] {
        let token = auth::sign_raw(&header, &claims);
        assert_eq!(
            call(&channel, method, payload.clone(), Some(&token)).await,
            expected,
            "{what}"
        );
    }

    // Health and reflection need no token.
    let health = "/grpc.health.v1.Health/Check";
    let check = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    }
    .encode_to_vec();
    assert_eq!(call(&channel, health, check, None).await, Code::Ok);
    stack.finish().await;
}

/// A token signed with the stack's secret, with `kid` in its header.
fn with_kid(claims: &serde_json::Value, kid: Option<&str>) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(auth::STACK_JWT_SECRET.as_bytes()),
    )
    .expect("sign")
}

/// ListAgents with `token`: the code, and the status message.
async fn list_agents_with(channel: &Channel, token: &str) -> (Code, String) {
    let client = auth::authed(channel.clone(), auth::Bearer::new(token));
    match pb::agent_service_client::AgentServiceClient::new(client)
        .list_agents(pb::ListAgentsRequest::default())
        .await
    {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

#[tokio::test]
async fn outside_development_mode_the_registry_needs_an_audience_and_an_issuer() {
    let database = tests::stack::TestDatabase::fresh().await;
    let registry = tests::binary("registry-service");
    let base = || {
        tests::Launch::default()
            .env("JWT_HS256_SECRET", auth::STACK_JWT_SECRET)
            .env("DATABASE_URL", database.url())
            .arg("--log-format")
            .arg("json")
            .arg("--listen")
            .arg("127.0.0.1:0")
    };
    for (launch, expected) in [
        (base(), "JWT_AUDIENCE: is required"),
        (
            base().env("JWT_AUDIENCE", STACK_AUDIENCE),
            "JWT_ISSUER: is required",
        ),
        (
            base().env("JWT_ISSUER", STACK_ISSUER),
            "JWT_AUDIENCE: is required",
        ),
        (
            base()
                .env("JWT_AUDIENCE", STACK_AUDIENCE)
                .env("JWT_ISSUER", STACK_ISSUER)
                .env("JWT_MAX_TOKEN_LIFETIME_SECONDS", "0"),
            "JWT_MAX_TOKEN_LIFETIME_SECONDS: must be at least 1",
        ),
    ] {
        let (status, output) = tests::Process::run_to_exit(&registry, launch).await;
        assert!(!status.success(), "{expected}: the registry started");
        let line = output
            .lines()
            .find(|l| l.starts_with("registry-service: "))
            .unwrap_or_default();
        assert!(line.contains(expected), "expected {expected:?} in {output}");
    }

    // Development mode starts without them, says so loudly, and takes a
    // token with neither claim.
    let dev = tests::Process::start(
        &registry,
        base().env("REGISTRY_DEV", "true"),
        "registry-service serving",
    )
    .await;
    let warning = dev
        .output()
        .lines()
        .find(|l| l.contains("DEVELOPMENT MODE"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(warning.contains(r#""level":"WARN""#), "{}", dev.output());
    let now = auth::now();
    let bare = auth::sign(
        &serde_json::json!({"sub": "dev", "tenant": "dev", "roles": ["viewer"],
        "iat": now, "exp": now + 600}),
    );
    let channel = dev.channel().await;
    assert_eq!(list_agents_with(&channel, &bare).await.0, Code::Ok);
    dev.terminate().await;
    database.drop_database().await;
}

#[tokio::test]
async fn a_token_living_longer_than_the_maximum_or_without_iat_is_unauthenticated() {
    let stack =
        Stack::start_with(Stack::default_registry().env("JWT_MAX_TOKEN_LIFETIME_SECONDS", "3600"))
            .await;
    let channel = stack.channel().await;
    let now = auth::now();
    let lifetime = |iat: u64, exp: u64| {
        let mut claims = auth::claims("life", "acme", &["viewer"]);
        claims["iat"] = serde_json::json!(iat);
        claims["exp"] = serde_json::json!(exp);
        auth::sign(&claims)
    };
    // Exactly the maximum passes (tests::auth::token lives an hour).
    assert_eq!(
        list_agents_with(&channel, &auth::token("life", "acme", &["viewer"]))
            .await
            .0,
        Code::Ok
    );
    assert_eq!(
        list_agents_with(&channel, &lifetime(now - 60, now + 3540))
            .await
            .0,
        Code::Ok
    );
    let mut no_iat = auth::claims("life", "acme", &["viewer"]);
    no_iat.as_object_mut().expect("object").remove("iat");
    for (what, token, reason) in [
        (
            "a second over the maximum",
            lifetime(now, now + 3601),
            "token lifetime (exp - iat) exceeds the 3600 s this registry accepts",
        ),
        (
            "a year, issued a minute ago",
            lifetime(now - 60, now + 365 * 86_400),
            "token lifetime (exp - iat) exceeds",
        ),
        ("no iat", auth::sign(&no_iat), "token lacks the iat claim"),
        (
            "issued an hour from now",
            lifetime(now + 3600, now + 3700),
            "token issued in the future (iat)",
        ),
    ] {
        let (code, message) = list_agents_with(&channel, &token).await;
        assert_eq!(code, Code::Unauthenticated, "{what}: {message}");
        assert!(message.contains(reason), "{what}: {message}");
    }

    // The token subcommand will not mint what the registry would refuse.
    let mint = |ttl: &str| {
        Stack::default_registry()
            .env("JWT_MAX_TOKEN_LIFETIME_SECONDS", "3600")
            .args([
                "token",
                "--subject",
                "ops",
                "--tenant",
                "acme",
                "--roles",
                "viewer",
            ])
            .arg("--ttl-seconds")
            .arg(ttl)
    };
    let registry = tests::binary("registry-service");
    let (status, output) = tests::Process::run_to_exit(&registry, mint("3601")).await;
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("JWT_MAX_TOKEN_LIFETIME_SECONDS"),
        "{output}"
    );
    let (status, output) = tests::Process::run_to_exit(&registry, mint("3600")).await;
    assert!(status.success(), "{output}");
    let minted = output.lines().next().unwrap_or_default().trim();
    assert_eq!(list_agents_with(&channel, minted).await.0, Code::Ok);
    stack.finish().await;
}

#[tokio::test]
async fn a_token_naming_an_unknown_kid_is_refused_with_one_key_configured() {
    let claims = auth::claims("kid", "acme", &["viewer"]);
    let stack = Stack::start().await;
    let channel = stack.channel().await;
    assert_eq!(
        list_agents_with(&channel, &with_kid(&claims, None)).await.0,
        Code::Ok
    );
    for kid in ["other", "", "../../etc/passwd"] {
        let (code, message) = list_agents_with(&channel, &with_kid(&claims, Some(kid))).await;
        assert_eq!(code, Code::Unauthenticated, "kid {kid:?}: {message}");
        assert_eq!(message, "unknown signing key (kid)", "kid {kid:?}");
    }
    stack.finish().await;

    // With JWT_KEY_ID the single key has a name: that kid passes, another
    // does not, and the token subcommand puts it in the header.
    let named = Stack::default_registry().env("JWT_KEY_ID", "registry-2026");
    let stack = Stack::start_with(named.clone()).await;
    let channel = stack.channel().await;
    assert_eq!(
        list_agents_with(&channel, &with_kid(&claims, Some("registry-2026")))
            .await
            .0,
        Code::Ok
    );
    assert_eq!(
        list_agents_with(&channel, &with_kid(&claims, Some("registry-2025")))
            .await
            .0,
        Code::Unauthenticated
    );
    let (status, output) = tests::Process::run_to_exit(
        &tests::binary("registry-service"),
        named.args([
            "token",
            "--subject",
            "ops",
            "--tenant",
            "acme",
            "--roles",
            "viewer",
        ]),
    )
    .await;
    assert!(status.success(), "{output}");
    let minted = output.lines().next().unwrap_or_default().trim().to_owned();
    let header = jsonwebtoken::decode_header(&minted).expect("a JWT");
    assert_eq!(header.kid.as_deref(), Some("registry-2026"));
    assert_eq!(list_agents_with(&channel, &minted).await.0, Code::Ok);
    stack.finish().await;
}
