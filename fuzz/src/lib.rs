//! Shared fixtures for the fuzz targets: a fixed keyring, the legacy Fernet
//! key from the Python fixtures, JWT authenticators, the "current" agent and
//! provider an update is applied to, and a generator of JSON values for the
//! diff engine. Every target asserts an invariant and panics when it breaks.

use std::sync::LazyLock;

use arbitrary::{Result, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use crypto_service::keyring::{KeyMaterial, Keyring};
use hmac::{Hmac, KeyInit, Mac};
use registry_service::auth::{Authenticator, Expectations, KeySource};
use registry_service::model::agent::{AgentSpec, CodeExecutionMode};
use registry_service::model::params::ModelParams;
use registry_service::model::provider::{ProviderKind, ProviderSpec};
use serde_json::{Map, Value};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The associated data every `ciphertext` target value is bound to.
pub const AAD: &[u8] = b"tenant-a\x00provider-1\x00api_key";
/// Key versions the fixed keyring holds (the newest encrypts).
pub const KEY_VERSIONS: [u32; 2] = [1, 2];

/// A keyring of two directly given keys (no PBKDF2: cheap to build).
pub static KEYRING: LazyLock<Keyring> = LazyLock::new(|| {
    let versions = KEY_VERSIONS
        .iter()
        .map(|&v| {
            let byte = u8::try_from(v).expect("small version");
            (v, KeyMaterial::Direct(Zeroizing::new([byte; 32])))
        })
        .collect();
    Keyring::new(versions, "fuzz").expect("fixed keyring")
});

/// The Python platform's fixture key (`tests/fixtures/fernet/expected.json`),
/// so the committed seeds are real Python-made tokens.
pub static FERNET_KEY_BYTES: LazyLock<[u8; 32]> = LazyLock::new(|| {
    let fixtures: Value =
        serde_json::from_str(include_str!("../../tests/fixtures/fernet/expected.json"))
            .expect("fixture JSON");
    let text = fixtures
        .pointer("/legacy/fernet_key")
        .and_then(Value::as_str)
        .expect("fixture key");
    URL_SAFE
        .decode(text)
        .expect("fixture key is base64")
        .try_into()
        .expect("32 bytes")
});

/// The HS256 secret of [`HS256`].
pub const HS256_SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret-0123";
/// The issuer [`HS256`] requires.
pub const ISSUER: &str = "https://issuer.test";
/// The audience [`HS256`] requires.
pub const AUDIENCE: &str = "agentregistry";
/// Clock skew [`HS256`] allows.
pub const LEEWAY_SECONDS: u64 = 30;

/// An authenticator for HS256 tokens with issuer and audience checks.
pub static HS256: LazyLock<Authenticator> = LazyLock::new(|| {
    Authenticator::new(
        &KeySource::Hs256(Zeroizing::new(HS256_SECRET.to_vec())),
        Expectations {
            issuer: Some(ISSUER.to_owned()),
            audience: Some(AUDIENCE.to_owned()),
            leeway_seconds: LEEWAY_SECONDS,
            ..Expectations::default()
        },
        "fuzz",
    )
    .expect("HS256 authenticator")
});

/// A throw-away P-256 public key (its private half was discarded).
pub const ES256_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEiJfD5Fu5K4njGOgPwMmI1XoYIsHL
7pPkrw8IfliEKCaeGsZcp92joULWd9XyNvcpcYkVAg1tlMwMCckIpVnB/Q==
-----END PUBLIC KEY-----
";

/// An authenticator for ES256 tokens. No token can pass it: nobody holds
/// the private key, so every acceptance is a bug (e.g. algorithm confusion).
pub static ES256: LazyLock<Authenticator> = LazyLock::new(|| {
    Authenticator::new(
        &KeySource::PublicKeyPem(ES256_PUBLIC_PEM.as_bytes().to_vec()),
        Expectations::default(),
        "fuzz",
    )
    .expect("ES256 authenticator")
});

/// `header.payload.signature` with HS256 over the given JSON bytes.
pub fn sign_hs256(secret: &[u8], header: &[u8], payload: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = hs256(secret, signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// HMAC-SHA256 of `message`.
pub fn hs256(secret: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The agent every `agent_update` input is applied to: every field set to
/// a value other than its default, so resets show in the diff.
pub fn current_agent() -> AgentSpec {
    AgentSpec {
        name: "researcher".into(),
        role: "Senior researcher".into(),
        goal: "Find facts".into(),
        backstory: "Curious".into(),
        tools: vec!["search".into(), "scrape".into()],
        llm_provider_id: Some("0190a5d2-7c1e-7000-8000-000000000001".into()),
        llm_provider_label: Some("production".into()),
        // At most one of label and version may be set (a valid agent holds
        // one): the label is, so every update starts from a valid agent;
        // a mask naming llm_provider_version sets the version beside it.
        llm_provider_version: None,
        llm_overrides: ModelParams {
            temperature: Some(0.3),
            max_tokens: Some(512),
            stop: vec!["END".into()],
            ..ModelParams::default()
        },
        temperature: Some(0.5),
        allow_delegation: false,
        verbose: true,
        cache: false,
        max_iter: 7,
        max_rpm: Some(60),
        max_execution_time: Some(120),
        allow_code_execution: true,
        respect_context_window: false,
        max_retry_limit: 5,
        tool_config: [("search".to_owned(), serde_json::json!({"max_results": 3.0}))].into(),
        function_calling_llm: Some("gpt-4o-mini".into()),
        system_template: Some("You are {role}.".into()),
        prompt_template: Some("Task: {input}".into()),
        response_template: Some("Answer: {output}".into()),
        use_system_prompt: false,
        memory: true,
        reasoning: true,
        max_reasoning_attempts: Some(4),
        multimodal: true,
        code_execution_mode: CodeExecutionMode::Unsafe,
        inject_date: true,
        date_format: "%d.%m.%Y".into(),
        embedder: Some(serde_json::json!({"provider": "ollama"})),
    }
}

/// The provider every `provider_update` input is applied to.
pub fn current_provider() -> ProviderSpec {
    ProviderSpec {
        name: "azure".into(),
        provider_type: ProviderKind::AzureOpenai,
        model_name: "gpt-4o".into(),
        base_url: Some("https://example.openai.azure.com".into()),
        api_version: Some("2024-06-01".into()),
        default_parameters: ModelParams {
            top_p: Some(0.9),
            timeout_seconds: Some(30),
            ..ModelParams::default()
        },
        is_default: true,
        api_key: Some("arc1.1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
        api_key_revision: Some(2),
    }
}

/// Whether a changed snapshot path is covered by one of the mask `paths`:
/// named exactly, or nested under a named path.
pub fn covered(changed: &str, paths: &[String]) -> bool {
    paths.iter().any(|path| {
        changed == path
            || changed
                .strip_prefix(path.as_str())
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Characters object keys are drawn from. No `.`: the diff engine joins
/// nested keys with dots, so a key holding one is ambiguous (a documented
/// limitation of `model::version`, which configuration snapshots never hit).
/// `-`, `!` and ` ` sort before `.`, which keeps path ordering honest.
const KEY_CHARS: &[u8] = b"abcxyz_09-! AZ";

/// An arbitrary JSON value, at most `depth` levels deep, whose object keys
/// are non-empty and free of `.`.
pub fn json(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let choice = if depth == 0 {
        u.int_in_range(0..=4)?
    } else {
        u.int_in_range(0..=6)?
    };
    Ok(match choice {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::from(u.arbitrary::<i64>()?),
        3 => {
            // Finite only: JSON has no NaN or infinity.
            let f: f64 = u.arbitrary()?;
            serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
        }
        4 => Value::String(u.arbitrary()?),
        5 => {
            let len = u.int_in_range(0..=4)?;
            let mut items = Vec::with_capacity(len);
            for _ in 0..len {
                items.push(json(u, depth - 1)?);
            }
            Value::Array(items)
        }
        _ => {
            let len = u.int_in_range(0..=5)?;
            let mut fields = Map::new();
            for _ in 0..len {
                fields.insert(key(u)?, json(u, depth - 1)?);
            }
            Value::Object(fields)
        }
    })
}

fn key(u: &mut Unstructured<'_>) -> Result<String> {
    let len = u.int_in_range(1..=3)?;
    let mut key = String::with_capacity(len);
    for _ in 0..len {
        key.push(char::from(*u.choose(KEY_CHARS)?));
    }
    Ok(key)
}

/// Every reason an authenticator may give; none quotes the token.
pub const AUTH_REASONS: &[&str] = &[
    "malformed token",
    "unknown signing key (kid)",
    "unexpected signing algorithm",
    "token has an empty or malformed sub",
    "token has an empty or malformed tenant",
    "token expired",
    "token not yet valid (nbf)",
    "invalid token signature",
    "token audience is not this registry",
    "token issuer is not trusted",
    "token lacks the exp claim",
    "token lacks the sub claim",
    "token lacks the aud claim",
    "token lacks the iss claim",
    "token lacks a required claim",
    "token claims are not valid JSON",
    "token has a registered claim in the wrong form",
    "token lacks the sub, tenant or roles claims in the right form",
    "token lacks the iat claim (a number): the registry bounds token lifetime",
    "token issued in the future (iat)",
    // DEFAULT_MAX_LIFETIME_SECONDS, the lifetime both authenticators here use.
    "token lifetime (exp - iat) exceeds the 86400 s this registry accepts",
    "invalid token",
];

/// GRPC methods an authorization is checked against, known and unknown.
pub const METHODS: &[&str] = &[
    "/agentregistry.v1.AgentService/GetAgent",
    "/agentregistry.v1.AgentService/CreateAgent",
    "/agentregistry.v1.ProviderService/UpdateProvider",
    "/agentregistry.v1.RuntimeService/ResolveAgent",
    "/agentregistry.v1.KeyService/RetireKeyVersion",
    "/agentregistry.v1.AgentService/NoSuchMethod",
    "",
];

/// Asserts that a token [`HS256`] accepted is a signed `header.payload`
/// whose claims meet every expectation, and that `identity` is read from it.
pub fn assert_acceptable(token: &str, identity: &registry_service::auth::Identity) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted token is not three parts");
    let signature = URL_SAFE_NO_PAD
        .decode(parts[2])
        .expect("accepted signature is base64url");
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    assert_eq!(
        signature,
        hs256(HS256_SECRET, signing_input.as_bytes()),
        "accepted a token not signed with the secret"
    );
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(parts[0])
            .expect("accepted header is base64url"),
    )
    .expect("accepted header is JSON");
    assert_eq!(header["alg"], "HS256", "accepted another algorithm");
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(parts[1])
            .expect("accepted payload is base64url"),
    )
    .expect("accepted payload is JSON");

    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let sub = text("sub").expect("accepted without a string sub");
    let tenant = text("tenant").expect("accepted without a string tenant");
    assert!(!sub.is_empty() && !sub.contains('\0'));
    assert!(!tenant.is_empty() && !tenant.contains('\0'));
    assert_eq!(identity.caller.subject, sub);
    assert_eq!(identity.caller.tenant, tenant);
    // RFC 7519 makes `iss` one string; jsonwebtoken also takes a list that
    // holds the issuer.
    let issuer_ok = match claims.get("iss") {
        Some(Value::String(iss)) => iss == ISSUER,
        Some(Value::Array(isss)) => isss.iter().any(|i| i == ISSUER),
        _ => false,
    };
    assert!(
        issuer_ok,
        "accepted another issuer: {:?}",
        claims.get("iss")
    );
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == AUDIENCE,
        Some(Value::Array(auds)) => auds.iter().any(|a| a == AUDIENCE),
        _ => false,
    };
    assert!(
        audience_ok,
        "accepted another audience: {:?}",
        claims.get("aud")
    );
    let now = now() as f64;
    let leeway = LEEWAY_SECONDS as f64;
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .expect("accepted without a numeric exp");
    assert!(
        exp + leeway + 1.0 >= now,
        "accepted an expired token (exp {exp})"
    );
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64) {
        assert!(nbf <= now + leeway + 1.0, "accepted before nbf {nbf}");
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_f64)
        .expect("accepted without a numeric iat");
    assert!(
        iat <= now + leeway + 1.0,
        "accepted an iat in the future ({iat})"
    );
    let most = registry_service::auth::DEFAULT_MAX_LIFETIME_SECONDS as f64;
    assert!(
        exp - iat <= most,
        "accepted a lifetime over the maximum (exp {exp}, iat {iat})"
    );
    // A roles claim is a list of names or one space-separated string (the
    // form of `scope`; registry_service::auth::claims).
    let roles: Vec<&str> = match claims.get("roles") {
        Some(Value::Array(roles)) => roles.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(roles)) => roles.split_whitespace().collect(),
        _ => Vec::new(),
    };
    for role in &identity.roles {
        assert!(
            roles.contains(&role.as_str()),
            "role {role:?} not in the claims"
        );
    }
}

/// Asserts what `admit` answered for `method` agrees with `verify`.
pub fn assert_admission(authenticator: &Authenticator, method: &str, token: &str) {
    let authorization = format!("Bearer {token}");
    match authenticator.admit(method, Some(&authorization)) {
        Ok(admitted) => {
            let identity = authenticator
                .verify(token.trim())
                .expect("admitted token verifies");
            assert_eq!(identity.caller.subject, admitted.caller.subject);
            let allowed = registry_service::auth::allowed_roles(method)
                .expect("admitted to a method the role table lacks");
            assert!(
                admitted.roles.iter().any(|r| allowed.contains(r)),
                "admitted without a role for {method}"
            );
            assert!(
                admitted.roles.iter().all(|r| identity.roles.contains(r)),
                "admitted with a role the token does not claim"
            );
        }
        Err(status) => assert!(
            matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ),
            "{status:?}"
        ),
    }
}
