//! Tokens from a real OpenID provider: npm `oidc-provider`
//! (tests/node/oidc_provider.mjs) serves discovery, its JWKS and a token
//! endpoint over HTTPS with a certificate from this test's own CA. The
//! registry is given only the issuer URL and that CA: it discovers the
//! JWKS, verifies client-credentials access tokens, reads the tenant from
//! a namespaced claim and the roles from `realm_access.roles` through a
//! role map, follows a key rotation at the provider without a restart,
//! fetches at most once per interval under a flood of unknown kids, and
//! refuses another issuer's tokens.
//!
//! Needs `node` and tests/node's packages (`bash scripts/node-tools`;
//! scripts/test runs it). Without them this test fails (it never skips).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use proto::v1 as pb;
use tests::auth::{Bearer, authed};
use tests::pki::{self, Authority};
use tests::stack::{Stack, TestDatabase};
use tests::{Launch, Process, START_DEADLINE, binary};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tonic::Code;

/// The audience (RFC 8707 resource indicator) tokens are issued for.
const RESOURCE: &str = "https://registry.agentregistry.test";
/// Where the provider puts the tenant: a claim name with slashes and dots.
const TENANT_CLAIM: &str = "https://agentregistry.test/tenant";
/// The shortest time between two JWKS fetches the registry is given.
const MIN_REFRESH: Duration = Duration::from_secs(2);

/// The provider's clients: id, secret, tenant, IdP roles.
const CLIENTS: &[(&str, &str, &str, &str)] = &[
    ("acme-admin", "acme-admin-secret", "acme", "registry-admin"),
    (
        "acme-reader",
        "acme-reader-secret",
        "acme",
        "registry-reader",
    ),
    (
        "globex-admin",
        "globex-admin-secret",
        "globex",
        "registry-admin",
    ),
];

/// One running oidc-provider and what it needs.
struct Provider {
    process: Process,
    issuer: String,
    ca: PathBuf,
    /// Token requests answered so far.
    tokens: std::sync::atomic::AtomicUsize,
}

impl Provider {
    /// Starts the provider over `dir`'s certificate and keys file (shared
    /// by every provider started over the same `dir`).
    async fn start(dir: &Path, authority: &Authority) -> Self {
        let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
        assert!(
            node_dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed in {}: run `bash scripts/node-tools` (scripts/test does)",
            node_dir.display()
        );
        let issued = authority.loopback_server();
        let cert = pki::write(dir, &format!("idp-{}.pem", random_tag()), &issued.cert_pem);
        let key = pki::write(dir, &format!("idp-{}.key", random_tag()), &issued.key_pem);
        let ca = pki::write(dir, "idp-ca.pem", &authority.cert_pem());
        let mut launch = Launch::default()
            .arg(node_dir.join("oidc_provider.mjs").display().to_string())
            .args(["--cert", &cert.display().to_string()])
            .args(["--key", &key.display().to_string()])
            .args([
                "--keys-file",
                &dir.join("idp-keys.json").display().to_string(),
            ])
            .args(["--resource", RESOURCE]);
        for (id, secret, tenant, roles) in CLIENTS {
            launch = launch.args(["--client", &format!("{id}:{secret}:{tenant}:{roles}")]);
        }
        let process = Process::start(Path::new("node"), launch, "oidc provider serving").await;
        let issuer = format!("https://{}", process.address);
        Self {
            process,
            issuer,
            ca,
            tokens: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A client-credentials access token for `client`, over HTTPS.
    async fn token(&self, client: &str) -> String {
        let (_, secret, _, _) = CLIENTS
            .iter()
            .find(|(id, ..)| *id == client)
            .expect("a configured client");
        let form = format!(
            "grant_type=client_credentials&resource={}",
            RESOURCE.replace(':', "%3A").replace('/', "%2F")
        );
        let basic = STANDARD.encode(format!("{client}:{secret}"));
        let body = https_post(&self.process.address, &self.ca, "/token", &basic, form).await;
        self.tokens
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let answer: serde_json::Value = serde_json::from_slice(&body).expect("token JSON");
        answer["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {answer}"))
            .to_owned()
    }

    /// How many times the JWKS was fetched so far, as far as this test
    /// has read the provider's output.
    fn jwks_fetches(&self) -> usize {
        self.requests("/jwks")
    }

    /// The JWKS fetches made until now, every one of them: the provider
    /// logs requests in order, so once this test has read the log line of
    /// a token request made now, it has read every fetch before it.
    async fn jwks_fetches_settled(&self) -> usize {
        self.token(CLIENTS[0].0).await;
        let tokens = self.tokens.load(std::sync::atomic::Ordering::SeqCst);
        let deadline = Instant::now() + START_DEADLINE;
        while self.requests("/token") < tokens {
            assert!(Instant::now() < deadline, "the provider's log stalls");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.jwks_fetches()
    }

    /// Requests for `path` in the provider's output read so far.
    fn requests(&self, path: &str) -> usize {
        self.process
            .output()
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line).is_ok_and(|value| {
                    value.pointer("/fields/message").and_then(|m| m.as_str()) == Some("request")
                        && value.pointer("/fields/path").and_then(|p| p.as_str()) == Some(path)
                })
            })
            .count()
    }
}

/// The registry's settings for tokens from `provider`: only the issuer and
/// its CA locate the keys; the claims are mapped.
fn registry_for(provider: &Provider) -> Launch {
    Launch::default()
        .env("REGISTRY_OIDC_ISSUER", &provider.issuer)
        .env("REGISTRY_OIDC_CA_FILE", provider.ca.display().to_string())
        .env("JWT_AUDIENCE", RESOURCE)
        .env(
            "REGISTRY_TENANT_CLAIM",
            format!("/{}", TENANT_CLAIM.replace('~', "~0").replace('/', "~1")),
        )
        .env("REGISTRY_ROLES_CLAIMS", "realm_access.roles")
        .env(
            "REGISTRY_ROLE_MAP",
            "registry-admin=admin,registry-reader=viewer",
        )
        .env(
            "REGISTRY_JWKS_MIN_REFRESH_SECONDS",
            MIN_REFRESH.as_secs().to_string(),
        )
        // No scheduled fetch during the test: every fetch counted is one
        // an unknown kid caused.
        .env("REGISTRY_JWKS_REFRESH_SECONDS", "3600")
}

#[tokio::test]
async fn provider_tokens_pass_by_mapped_roles_and_a_key_rotation_needs_no_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let authority = Authority::new("oidc-test-ca");
    let provider = Provider::start(dir.path(), &authority).await;
    let stack = Stack::start_with(
        registry_for(&provider)
            .arg("--metrics-listen")
            .arg("127.0.0.1:0"),
    )
    .await;
    assert_eq!(
        provider.jwks_fetches_settled().await,
        1,
        "one fetch at start-up"
    );

    // Roles from realm_access.roles through the role map; the tenant from
    // the namespaced claim.
    let admin = provider.token("acme-admin").await;
    let reader = provider.token("acme-reader").await;
    let globex = provider.token("globex-admin").await;
    let created = agents(&stack, &admin)
        .await
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: "oidc-agent".to_owned(),
                role: "Researcher".to_owned(),
                goal: "Find things".to_owned(),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("registry-admin maps to admin, which may create agents")
        .into_inner();
    let listed = list(&stack, &reader).await.expect("registry-reader reads");
    assert_eq!(
        ids(&listed),
        vec![created.id.clone()],
        "acme sees its agent"
    );
    let refused = agents(&stack, &reader)
        .await
        .delete_agent(pb::DeleteAgentRequest {
            id: created.id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("registry-reader maps to viewer, which may not delete");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let other_tenant = list(&stack, &globex).await.expect("globex reads");
    assert!(ids(&other_tenant).is_empty(), "globex sees none of acme's");

    // The provider rotates its signing key while the registry serves.
    let old_kid = kid(&admin);
    provider.process.signal("USR2");
    provider.process.wait_for_log("keys rotated", 1).await;
    let rotated = provider.token("acme-reader").await;
    assert_ne!(
        kid(&rotated),
        old_kid,
        "the new token is signed by a new key"
    );
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        match list(&stack, &rotated).await {
            Ok(listed) => {
                assert_eq!(ids(&listed), vec![created.id.clone()]);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                assert!(
                    Instant::now() < deadline,
                    "a token of the rotated key is still refused: {status:?}"
                );
                // Refused only while the last fetch is under the minimum
                // interval old: wait for the registry's own clock.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // The old key left the provider's JWKS, so it left the registry's too.
    let gone = list(&stack, &admin).await.expect_err("old key removed");
    assert_eq!(gone.code(), Code::Unauthenticated);
    assert_eq!(gone.message(), "unknown signing key (kid)");

    // A flood of tokens naming random kids: every one refused, and the
    // provider asked at most once per minimum interval.
    let before = provider.jwks_fetches_settled().await;
    let started = Instant::now();
    let forged: Vec<String> = (0..64).map(|_| forged_token(&rotated)).collect();
    let channel = stack.channel().await;
    while started.elapsed() < MIN_REFRESH * 3 {
        let calls = forged.iter().map(|token| list_on(channel.clone(), token));
        for answer in futures_util::future::join_all(calls).await {
            let status = answer.expect_err("a random kid is refused");
            assert_eq!(status.code(), Code::Unauthenticated);
        }
    }
    let elapsed = started.elapsed();
    // Each refused call waited for the fetch it caused: all are logged.
    let fetched = provider.jwks_fetches_settled().await - before;
    let allowed = (elapsed.as_secs_f64() / MIN_REFRESH.as_secs_f64()).floor() as usize + 1;
    assert!(
        (1..=allowed).contains(&fetched),
        "{fetched} JWKS fetches in {elapsed:?}; at least one and at most {allowed} expected"
    );

    // Another issuer signing with the very same key is still refused.
    let elsewhere = Provider::start(dir.path(), &authority).await;
    let foreign = elsewhere.token("acme-admin").await;
    assert_eq!(kid(&foreign), kid(&rotated), "same key, other issuer");
    let status = list(&stack, &foreign).await.expect_err("another issuer");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "token issuer is not trusted");

    // The registry's own count of its fetches agrees with the provider's.
    let metrics_address = stack
        .registry
        .log_field("metrics serving", "listen")
        .expect("metrics address");
    let scrape = tests::http_get(&metrics_address, "/metrics").await;
    let fetches = |trigger: &str| -> usize {
        scrape
            .lines()
            .filter(|line| {
                line.starts_with("registry_jwks_fetches_total{")
                    && line.contains(&format!("trigger=\"{trigger}\""))
                    && line.contains("outcome=\"ok\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as usize
    };
    assert_eq!(fetches("start-up"), 1, "{scrape}");
    assert_eq!(
        fetches("start-up") + fetches("unknown-kid"),
        provider.jwks_fetches_settled().await,
        "{scrape}"
    );
    assert!(
        scrape.contains("registry_dependency_up{dependency=\"identity-provider\"} 1"),
        "{scrape}"
    );

    let logs = stack.finish().await;
    for token in [&admin, &reader, &rotated, &foreign] {
        let signature = token.rsplit('.').next().expect("signature");
        assert!(!logs.contains(signature), "a token reached the log");
    }
}

#[tokio::test]
async fn a_jwks_url_without_discovery_is_refetched_on_schedule_and_a_fixed_tenant_holds_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let authority = Authority::new("oidc-test-ca");
    let provider = Provider::start(dir.path(), &authority).await;
    let stack = Stack::start_with(
        Launch::default()
            .env("REGISTRY_JWKS_URL", format!("{}/jwks", provider.issuer))
            .env("REGISTRY_OIDC_CA_FILE", provider.ca.display().to_string())
            .env("JWT_ISSUER", &provider.issuer)
            .env("JWT_AUDIENCE", RESOURCE)
            .env("REGISTRY_FIXED_TENANT", "shared")
            .env("REGISTRY_ROLES_CLAIMS", "realm_access.roles")
            .env(
                "REGISTRY_ROLE_MAP",
                "registry-admin=admin,registry-reader=viewer",
            )
            .env("REGISTRY_JWKS_MIN_REFRESH_SECONDS", "1")
            .env("REGISTRY_JWKS_REFRESH_SECONDS", "1"),
    )
    .await;
    let requests = provider.process.output();
    assert!(
        !requests.contains("openid-configuration"),
        "no discovery with a JWKS URL"
    );
    // With no token at all, the keys are fetched again every second.
    let deadline = Instant::now() + START_DEADLINE;
    while provider.jwks_fetches() < 3 {
        assert!(Instant::now() < deadline, "no scheduled JWKS fetches");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Tokens naming different tenants land in the one fixed tenant.
    let globex = provider.token("globex-admin").await;
    let acme = provider.token("acme-reader").await;
    let created = agents(&stack, &globex)
        .await
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: "shared-agent".to_owned(),
                role: "Researcher".to_owned(),
                goal: "Find things".to_owned(),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("admin creates")
        .into_inner();
    let listed = list(&stack, &acme).await.expect("viewer lists");
    assert_eq!(ids(&listed), vec![created.id]);
    stack.finish().await;
}

#[tokio::test]
async fn the_registry_does_not_start_without_the_providers_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let authority = Authority::new("oidc-test-ca");
    let provider = Provider::start(dir.path(), &authority).await;
    let database = TestDatabase::fresh().await;
    let base = || {
        registry_for(&provider)
            .env("DATABASE_URL", database.url())
            .arg("--listen")
            .arg("127.0.0.1:0")
    };
    let unused_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let cases = [
        (
            base().env("REGISTRY_OIDC_ISSUER", format!("{}/", provider.issuer)),
            "REGISTRY_OIDC_ISSUER: the discovery document names issuer",
        ),
        (
            base().env(
                "REGISTRY_OIDC_CA_FILE",
                pki::write(dir.path(), "other-ca.pem", &Authority::new("x").cert_pem())
                    .display()
                    .to_string(),
            ),
            "REGISTRY_OIDC_ISSUER: OIDC discovery failed",
        ),
        (
            base().env(
                "REGISTRY_OIDC_ISSUER",
                format!("https://127.0.0.1:{unused_port}"),
            ),
            "cannot connect",
        ),
        (
            base().env(
                "REGISTRY_OIDC_ISSUER",
                provider.issuer.replace("https://", "http://"),
            ),
            "REGISTRY_OIDC_ISSUER: ",
        ),
        (
            base().env("JWT_ISSUER", "https://someone-else.test"),
            "JWT_ISSUER: ",
        ),
        (
            base().env("REGISTRY_ROLE_MAP", "registry-admin=owner"),
            "REGISTRY_ROLE_MAP: ",
        ),
        (
            base().env("REGISTRY_FIXED_TENANT", "acme"),
            "REGISTRY_FIXED_TENANT: conflicts with REGISTRY_TENANT_CLAIM",
        ),
        (
            base()
                .env("REGISTRY_TENANT_CLAIM", "")
                .env("REGISTRY_FIXED_TENANT", "acme\nforged"),
            "REGISTRY_FIXED_TENANT: holds a control character",
        ),
        (
            base()
                .env("REGISTRY_TENANT_CLAIM", "")
                .env("REGISTRY_FIXED_TENANT", "t".repeat(257)),
            "REGISTRY_FIXED_TENANT: is longer than 256 bytes",
        ),
        (
            base().env(
                "JWT_HS256_SECRET",
                "a-secret-that-is-long-enough-0123456789",
            ),
            "conflicts with REGISTRY_OIDC_ISSUER",
        ),
    ];
    for (launch, expected) in cases {
        let (status, output) = Process::run_to_exit(&binary("registry-service"), launch).await;
        assert!(!status.success(), "started: {output}");
        let line = output
            .lines()
            .find(|l| l.starts_with("registry-service: "))
            .unwrap_or_default();
        assert!(line.contains(expected), "expected {expected:?} in {output}");
    }
    database.drop_database().await;
}

async fn agents(
    stack: &Stack,
    token: &str,
) -> pb::agent_service_client::AgentServiceClient<tests::auth::Authed> {
    pb::agent_service_client::AgentServiceClient::new(authed(
        stack.channel().await,
        Bearer::new(token),
    ))
}

async fn list(stack: &Stack, token: &str) -> Result<pb::ListAgentsResponse, tonic::Status> {
    list_on(stack.channel().await, token).await
}

async fn list_on(
    channel: tonic::transport::Channel,
    token: &str,
) -> Result<pb::ListAgentsResponse, tonic::Status> {
    pb::agent_service_client::AgentServiceClient::new(authed(channel, Bearer::new(token)))
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .map(tonic::Response::into_inner)
}

fn ids(listed: &pb::ListAgentsResponse) -> Vec<String> {
    listed.agents.iter().map(|a| a.id.clone()).collect()
}

/// The `kid` of a token's header.
fn kid(token: &str) -> String {
    let header = token.split('.').next().expect("header");
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url"))
            .expect("JSON header");
    header["kid"].as_str().expect("a kid").to_owned()
}

/// `genuine` with its header's kid replaced by a random one (the signature
/// no longer matters: the kid is looked up first).
fn forged_token(genuine: &str) -> String {
    let mut parts = genuine.splitn(2, '.');
    let _header = parts.next();
    let rest = parts.next().expect("payload and signature");
    let header = serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": random_tag()});
    format!(
        "{}.{rest}",
        URL_SAFE_NO_PAD.encode(header.to_string().as_bytes())
    )
}

fn random_tag() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("random");
    hex::encode(bytes)
}

/// POSTs a form to `https://address/path` with HTTP basic authentication,
/// trusting only `ca`; returns the body of a 200 answer.
async fn https_post(address: &str, ca: &Path, path: &str, basic: &str, form: String) -> Vec<u8> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA cert")).expect("CA added");
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the provider");
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            ServerName::try_from(host.to_owned()).expect("server name"),
            tcp,
        )
        .await
        .expect("TLS to the provider");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("HTTP handshake");
    let driver = tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, address)
        .header(hyper::header::AUTHORIZATION, format!("Basic {basic}"))
        .header(
            hyper::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(Full::new(Bytes::from(form)))
        .expect("request");
    let response = tokio::time::timeout(START_DEADLINE, sender.send_request(request))
        .await
        .expect("an answer within the deadline")
        .expect("a response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    driver.abort();
    assert_eq!(
        status,
        hyper::StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&body)
    );
    body
}
