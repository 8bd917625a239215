//! Token key sources: an RS256 public key in PEM, a JWKS of several ES256
//! keys chosen by `kid`, and start-up refusals for missing or conflicting
//! settings.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proto::v1 as pb;
use tests::auth::{Bearer, STACK_AUDIENCE, authed, now};
use tests::stack::{Stack, TestDatabase, expect_stack_tokens};
use tests::{Launch, Process, binary, pki};
use tonic::Code;

fn claims(issuer: &str) -> serde_json::Value {
    serde_json::json!({"sub": "svc", "tenant": "acme", "roles": ["viewer"], "iss": issuer,
        "aud": STACK_AUDIENCE, "iat": now(), "exp": now() + 600})
}

async fn list_with(stack: &Stack, token: &str) -> Result<pb::ListAgentsResponse, tonic::Status> {
    let channel = authed(stack.channel().await, Bearer::new(token));
    pb::agent_service_client::AgentServiceClient::new(channel)
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn an_rs256_public_key_in_pem_verifies_tokens_with_the_configured_issuer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let public = pki::write(
        dir.path(),
        "jwt.pub.pem",
        include_str!("../fixtures/jwt-rs256-test-public.pem"),
    );
    let stack = Stack::start_with(
        Launch::default()
            .env("JWT_PUBLIC_KEY_FILE", public.display().to_string())
            .env("JWT_AUDIENCE", STACK_AUDIENCE)
            .env("JWT_ISSUER", "https://idp.test"),
    )
    .await;
    let key = EncodingKey::from_rsa_pem(include_bytes!("../fixtures/jwt-rs256-test-private.pem"))
        .expect("rsa");
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims("https://idp.test"),
        &key,
    )
    .expect("sign");
    assert!(list_with(&stack, &token).await.is_ok());

    let foreign = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims("https://evil.test"),
        &key,
    )
    .expect("sign");
    assert_eq!(
        list_with(&stack, &foreign)
            .await
            .expect_err("wrong issuer")
            .code(),
        Code::Unauthenticated
    );
    let hs = tests::auth::sign(&claims("https://idp.test"));
    assert_eq!(
        list_with(&stack, &hs)
            .await
            .expect_err("HS256 against RS256")
            .code(),
        Code::Unauthenticated
    );
    stack.finish().await;
}

fn es256_jwk(key: &rcgen::KeyPair, kid: &str) -> serde_json::Value {
    let point = key.public_key_raw();
    assert_eq!(point.len(), 65, "uncompressed P-256 point");
    serde_json::json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    })
}

fn es256_token(key: &rcgen::KeyPair, kid: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("ec key");
    jsonwebtoken::encode(&header, &claims("idp"), &signing).expect("sign")
}

#[tokio::test]
async fn a_jwks_of_es256_keys_picks_the_key_by_kid() {
    let first = rcgen::KeyPair::generate().expect("key");
    let second = rcgen::KeyPair::generate().expect("key");
    let outsider = rcgen::KeyPair::generate().expect("key");
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = serde_json::json!({"keys": [es256_jwk(&first, "k1"), es256_jwk(&second, "k2")]});
    let path = pki::write(dir.path(), "jwks.json", &jwks.to_string());
    let stack = Stack::start_with(
        Launch::default()
            .env("JWT_JWKS_FILE", path.display().to_string())
            .env("JWT_AUDIENCE", STACK_AUDIENCE)
            .env("JWT_ISSUER", "idp"),
    )
    .await;

    assert!(list_with(&stack, &es256_token(&first, "k1")).await.is_ok());
    assert!(list_with(&stack, &es256_token(&second, "k2")).await.is_ok());
    for (token, why) in [
        (es256_token(&first, "k2"), "signed by k1 but claims k2"),
        (
            es256_token(&outsider, "k1"),
            "an outsider's key under a known kid",
        ),
        (es256_token(&first, "k9"), "a forged kid"),
    ] {
        let status = list_with(&stack, &token).await.expect_err(why);
        assert_eq!(status.code(), Code::Unauthenticated, "{why}");
    }
    stack.finish().await;
}

#[tokio::test]
async fn the_registry_will_not_start_without_exactly_one_token_key_source() {
    let database = TestDatabase::fresh().await;
    let registry = binary("registry-service");
    let base = || {
        expect_stack_tokens(Launch::default())
            .env("DATABASE_URL", database.url())
            .arg("--listen")
            .arg("127.0.0.1:0")
    };
    let cases = [
        (base(), "JWT_HS256_SECRET: no token verification key"),
        (
            base().env("JWT_HS256_SECRET", "short"),
            "JWT_HS256_SECRET: an HS256 secret must be at least 32 bytes",
        ),
        (
            base()
                .env(
                    "JWT_HS256_SECRET",
                    "a-secret-that-is-long-enough-0123456789",
                )
                .env("JWT_JWKS_FILE", "/nonexistent.json"),
            "JWT_JWKS_FILE: cannot read",
        ),
    ];
    for (launch, expected) in cases {
        let (status, output) = Process::run_to_exit(&registry, launch).await;
        assert!(!status.success());
        let line = output
            .lines()
            .find(|l| l.starts_with("registry-service: "))
            .unwrap_or_default();
        assert!(line.contains(expected), "expected {expected:?} in {output}");
        assert!(
            !output.contains("a-secret-that-is-long-enough"),
            "the secret is never printed"
        );
    }
    database.drop_database().await;
}

#[tokio::test]
async fn the_token_subcommand_mints_a_token_the_registry_accepts() {
    let secret = "token-subcommand-secret-0123456789abcdef";
    let stack =
        Stack::start_with(expect_stack_tokens(Launch::default()).env("JWT_HS256_SECRET", secret))
            .await;
    let launch = expect_stack_tokens(Launch::default())
        .env("JWT_HS256_SECRET", secret)
        .arg("token")
        .arg("--subject")
        .arg("ops")
        .arg("--tenant")
        .arg("acme")
        .arg("--roles")
        .arg("viewer,editor");
    let (status, output) = Process::run_to_exit(&binary("registry-service"), launch).await;
    assert!(status.success(), "{output}");
    let token = output
        .lines()
        .next()
        .expect("a token line")
        .trim()
        .to_owned();
    assert_eq!(token.split('.').count(), 3);
    let listed = list_with(&stack, &token).await.expect("accepted");
    assert_eq!(listed.total_size, 0);
    stack.finish().await;
}
