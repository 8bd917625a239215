//! Tokens for tests: HS256 tokens signed with the stack's secret, and a
//! client interceptor that sends one as `authorization: Bearer …`.

use jsonwebtoken::{EncodingKey, Header};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The HS256 secret the test stack's registry verifies tokens with.
pub const STACK_JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef-0123456789";
/// The audience the test stack's registry requires.
pub const STACK_AUDIENCE: &str = "agentregistry-test";
/// The one token subject the test stack's registry lets hold the
/// `platform-operator` role.
pub const STACK_OPERATOR: &str = "platform-ops";
/// The issuer the test stack's registry requires.
pub const STACK_ISSUER: &str = "https://issuer.agentregistry.test";

/// Seconds since the epoch.
pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A valid token for `subject` in `tenant` with `roles`.
pub fn token(subject: &str, tenant: &str, roles: &[&str]) -> String {
    sign(&claims(subject, tenant, roles))
}

/// The claims of [`token`]: the stack's audience and issuer, issued now,
/// valid an hour.
pub fn claims(subject: &str, tenant: &str, roles: &[&str]) -> serde_json::Value {
    let now = now();
    serde_json::json!({
        "sub": subject,
        "tenant": tenant,
        "roles": roles,
        "aud": STACK_AUDIENCE,
        "iss": STACK_ISSUER,
        "iat": now,
        "exp": now + 3600,
    })
}

/// `claims` signed with the stack's secret.
pub fn sign(claims: &serde_json::Value) -> String {
    sign_with(claims, STACK_JWT_SECRET.as_bytes())
}

/// `claims` signed (HS256) with `secret`.
pub fn sign_with(claims: &serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign token")
}

/// An HS256 token over exactly these header and claims bytes (which need
/// not be JSON, nor UTF-8), signed with the stack's secret.
pub fn sign_raw(header: &[u8], claims: &[u8]) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let signing_input = format!("{}.{}", b64(header), b64(claims));
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_secret(STACK_JWT_SECRET.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .expect("sign token");
    format!("{signing_input}.{signature}")
}

/// Sends a bearer token with every call (or none).
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Sends `token`.
    pub fn new(token: &str) -> Self {
        Self(Some(
            format!("Bearer {token}").parse().expect("ascii token"),
        ))
    }

    /// Sends no authorization header.
    pub fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel that authenticates every call.
pub type Authed = InterceptedService<Channel, Bearer>;

/// `channel` with `bearer` on every call.
pub fn authed(channel: Channel, bearer: Bearer) -> Authed {
    InterceptedService::new(channel, bearer)
}
